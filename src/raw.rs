//! The system calls on a forked worker's path, made directly rather than through the C
//! library: the fork's return, the child's setup (mask, stderr, descriptors, process group),
//! a connection's reads and writes, the idle clock, and the exit.
//!
//! Why: a child inherits no page-table entries for code, so each 64 KiB window of code it runs
//! is a page fault in every child, and the C library's wrappers for these calls lie in five to
//! seven windows of its own. Made here, they lie in the window of forkd's code the child runs
//! anyway (src/bin/forkd/child-path.ld). A conversation's first clock readings are system
//! calls, not the vDSO's, for the same reason: the vDSO's page and the C library's wrapper are
//! two faults, against a few system calls a short connection makes (`monotonic`). Linux on
//! x86_64 and aarch64; elsewhere, the C library's functions.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::time::Duration;

/// A system call with up to six arguments: its result, or a negative errno.
///
/// # Safety
///
/// As for the system call itself: pointers among `args` must be what it expects.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[inline(always)]
pub(crate) unsafe fn syscall(nr: libc::c_long, args: [usize; 6]) -> isize {
    let result: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller vouches for the call; the registers the kernel clobbers are declared.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!(
            "svc #0",
            in("x8") nr,
            inlateout("x0") args[0] => result,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            options(nostack),
        );
    }
    result
}

/// As above, through the C library's `syscall` where there is no direct call.
///
/// # Safety
///
/// As above.
#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) unsafe fn syscall(nr: libc::c_long, args: [usize; 6]) -> isize {
    // SAFETY: as above.
    let raw = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if raw < 0 {
        -(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as isize)
    } else {
        raw as isize
    }
}

/// A system call's raw result (a negative errno on failure) as the value or the errno.
pub(crate) fn result(raw: isize) -> nix::Result<usize> {
    usize::try_from(raw).map_err(|_| nix::errno::Errno::from_raw(-raw as i32))
}

/// A system call's result as `io::Result`.
#[cfg(target_os = "linux")]
fn checked(raw: isize) -> io::Result<usize> {
    result(raw).map_err(io::Error::from)
}

/// A C library call's result as `io::Result` (-1 and errno for a failure).
#[cfg(not(target_os = "linux"))]
fn from_libc(result: isize) -> io::Result<usize> {
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// Closes `fd`, whose owner will never close it (a child copy's supervisor descriptors).
pub(crate) fn close(fd: RawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: close takes no pointer; the caller owns the number.
    unsafe {
        syscall(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
    }
    #[cfg(not(target_os = "linux"))]
    // SAFETY: as above.
    unsafe {
        libc::close(fd);
    }
}

/// Closes every descriptor from `first` to `last`, whose owners will never close them: with
/// one close_range (Linux 5.9) where the kernel and the sandbox's filter allow it, else one
/// by one.
pub(crate) fn close_range(first: RawFd, last: RawFd) {
    if first == last {
        return close(first);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: close_range takes no pointer; the caller owns every number in the range.
    if unsafe {
        syscall(
            libc::SYS_close_range,
            [first as usize, last as usize, 0, 0, 0, 0],
        )
    } == 0
    {
        return;
    }
    for fd in first..=last {
        close(fd);
    }
}

/// Makes `to` a copy of `from` (dup2: nothing to do when they are the same).
pub(crate) fn dup2(from: RawFd, to: RawFd) {
    if from == to {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: dup3 takes no pointer.
    unsafe {
        syscall(libc::SYS_dup3, [from as usize, to as usize, 0, 0, 0, 0]);
    }
    #[cfg(not(target_os = "linux"))]
    // SAFETY: as above.
    unsafe {
        libc::dup2(from, to);
    }
}

/// Makes this process the leader of a process group of its own.
pub(crate) fn own_process_group() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpgid takes no pointer.
    unsafe {
        syscall(libc::SYS_setpgid, [0; 6]);
    }
    #[cfg(not(target_os = "linux"))]
    // SAFETY: as above.
    unsafe {
        libc::setpgid(0, 0);
    }
}

/// Empties this thread's signal mask.
pub(crate) fn unblock_all_signals() {
    // The kernel's sigset is 64 bits on x86_64 and aarch64 (its size is the call's fourth
    // argument); elsewhere (MIPS has 128) the C library knows it.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        let empty: u64 = 0;
        // SAFETY: the kernel reads the set from a live local and writes no old set.
        unsafe {
            syscall(
                libc::SYS_rt_sigprocmask,
                [
                    libc::SIG_SETMASK as usize,
                    (&raw const empty) as usize,
                    0,
                    std::mem::size_of::<u64>(),
                    0,
                    0,
                ],
            );
        }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        // SAFETY: an all-zero sigset_t is the empty set; nothing is written back.
        let empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
    }
}

/// The calling thread's thread pointer (x86_64: the control block's first word, its own
/// address; aarch64: the thread register): it tells a process's threads apart, and glibc's
/// per-thread offsets (`__rseq_offset`) are relative to it. 0 on other architectures.
pub(crate) fn thread_pointer() -> usize {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        let pointer: usize;
        // SAFETY: reads the thread control block's first word, its own address.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) pointer, options(nostack, readonly, preserves_flags));
        }
        pointer
    }
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    {
        let pointer: usize;
        // SAFETY: reads the thread register; no memory is touched.
        unsafe {
            std::arch::asm!("mrs {}, tpidr_el0", out(reg) pointer, options(nostack, nomem, preserves_flags));
        }
        pointer
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    0
}

/// Ends this process at once with `code`: no atexit handler, no destructor, no flush.
pub(crate) fn exit(code: i32) -> ! {
    #[cfg(target_os = "linux")]
    // SAFETY: exit_group does not return.
    unsafe {
        syscall(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]);
    }
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// One read from socket `fd` (recv without flags, as std's streams make it) into `buf`, which
/// need not be initialized: the kernel writes the bytes whose count it returns.
pub(crate) fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`; no address is asked for.
    unsafe {
        checked(syscall(
            libc::SYS_recvfrom,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        ))
    }
    #[cfg(not(target_os = "linux"))]
    // SAFETY: as above.
    unsafe {
        from_libc(libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))
    }
}

/// One write to socket `fd`, without SIGPIPE for a peer gone (send with MSG_NOSIGNAL, as
/// std's TcpStream makes it).
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: the kernel reads `buf.len()` bytes from `buf`; no address is given.
    unsafe {
        checked(syscall(
            libc::SYS_sendto,
            [
                fd as usize,
                buf.as_ptr() as usize,
                buf.len(),
                libc::MSG_NOSIGNAL as usize,
                0,
                0,
            ],
        ))
    }
    #[cfg(not(target_os = "linux"))]
    // SAFETY: as above. (No MSG_NOSIGNAL everywhere: forkd ignores SIGPIPE.)
    unsafe {
        from_libc(libc::send(fd, buf.as_ptr().cast(), buf.len(), 0))
    }
}

/// `buf` as room for a read.
///
/// # Safety
///
/// Nothing may write an uninitialized value through the result: `buf` is still `[u8]` to
/// its owner. A [`recv`] into it only has the kernel write bytes.
pub(crate) unsafe fn as_room(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: same layout; the caller keeps the bytes initialized (above).
    unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// The monotonic clock (CLOCK_MONOTONIC, as std's `Instant`), as time since its origin:
/// read by system call (`direct`), which runs nothing outside forkd's own code, or through
/// the C library and the vDSO, which makes no system call but is two pages of code for a new
/// worker to fault in (the C library's wrapper and the vDSO) the first time.
pub(crate) fn monotonic(direct: bool) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    let read = direct && {
        // SAFETY: the kernel writes one timespec into a live local.
        let done = unsafe {
            syscall(
                libc::SYS_clock_gettime,
                [
                    libc::CLOCK_MONOTONIC as usize,
                    (&raw mut now) as usize,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
        done == 0
    };
    #[cfg(not(target_os = "linux"))]
    let read = {
        let _ = direct;
        false
    };
    if !read {
        // Also where the system call is refused (by a seccomp policy of someone else's,
        // which the vDSO never has to pass): a clock stuck at zero would keep every idle
        // deadline away.
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn send_and_recv_carry_bytes_and_errors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        assert_eq!(send(b.as_raw_fd(), b"ping").unwrap(), 4);
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).unwrap(), 4);
        a.write_all(b"pong").unwrap();
        // SAFETY: only recv writes through it.
        let room = unsafe { as_room(&mut buf) };
        assert_eq!(recv(b.as_raw_fd(), room).unwrap(), 4);
        assert_eq!(&buf[..4], b"pong");
        drop(a);
        // The peer is gone: EPIPE as an error, not a SIGPIPE that ends the test.
        let gone = send(b.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::BrokenPipe);
        let mut room = [MaybeUninit::uninit(); 8];
        assert_eq!(
            recv(-1, &mut room).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn the_clock_moves_forward_with_std_instant() {
        let before = monotonic(true);
        let instant = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = monotonic(false) - before;
        assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
        assert!(
            elapsed <= instant.elapsed() + Duration::from_millis(5),
            "{elapsed:?}"
        );
    }

    #[test]
    fn dup2_copies_and_close_closes() {
        let (a, _b) = UnixStream::pair().unwrap();
        let spare = UnixStream::pair().unwrap().0;
        let target = spare.as_raw_fd();
        dup2(a.as_raw_fd(), target);
        // SAFETY: fcntl reads the descriptor's flags only.
        let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        assert!(open(target));
        let inode = |fd| {
            // SAFETY: all-zero bytes are a valid libc::stat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes into a live local.
            let done = unsafe { libc::fstat(fd, &mut st) };
            assert_eq!(done, 0);
            st.st_ino
        };
        assert_eq!(inode(target), inode(a.as_raw_fd()));
        let spare_fd = std::os::fd::IntoRawFd::into_raw_fd(spare);
        close(spare_fd);
        assert!(!open(spare_fd));
    }
}
