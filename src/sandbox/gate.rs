//! The supervisor's way through the filter its workers inherit.
//!
//! Installing a seccomp filter costs the kernel a fixed amount per process (it translates and
//! compiles the program, and frees it at exit), more than the rest of a short connection's
//! cost on some machines; a filter inherited at fork costs nothing. So where it can, the
//! supervisor installs the workers' filter on itself before serving, and every worker forked
//! from it is confined from its first instruction.
//!
//! The supervisor still needs what its workers must not have (accept, fork, kill, sockets).
//! The filter allows any call whose otherwise unused sixth argument carries a 64-bit secret,
//! and only the supervisor knows it:
//!
//! - the secret lives in one page of `memfd_secret` memory (Linux 5.14), which no other
//!   process can read, not even through `/proc/PID/mem` or ptrace, and which a child does
//!   not get at fork (`MADV_DONTFORK`); where the kernel has no `memfd_secret`, in a page the
//!   kernel empties in every child at fork (`MADV_WIPEONFORK`). It is read into the sixth
//!   argument's register inside the assembly that makes the call, which clears that
//!   register again before any other instruction runs, in the supervisor and, after a fork,
//!   in the child;
//! - the filter is compiled with a placeholder, which is replaced by the secret in the
//!   program handed to the kernel; that copy is zeroed once installed, and the stack the
//!   replacement ran on is cleared;
//! - calls the supervisor makes through libraries (glibc's fork, the syslog socket, the
//!   listeners a reload adds) are trapped like a worker's and made again here, with the
//!   secret, by the SIGSYS handler ([`super::trap`]), which tells the supervisor from a
//!   worker by a flag in a page the kernel empties at fork: in a worker it reads zero.
//!
//! A worker that guesses has one try per call, each refused and logged; 2^64 values.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

/// The value the filter is compiled with, replaced by the secret before it is installed.
/// Chosen so that neither half is a value a filter compares with otherwise (a system call
/// number, a flag, a small constant).
pub(super) const PLACEHOLDER: u64 = 0x9e37_79b9_7f4a_7c15;

/// A page the kernel empties in every child at fork: a flag, nonzero in the supervisor
/// (whether it holds the secret), then the secret itself where there is no `memfd_secret`.
/// Null where there is no gate.
static PAGE: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());

/// Where the secret is: a `memfd_secret` page, or the second word of [`PAGE`].
static SECRET: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());

/// Whether this architecture has the gate.
pub(super) const AVAILABLE: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Makes the secret, filled by the kernel (or, in an image a gated supervisor exec'd, taken
/// from it before `main`: [`take_handed`]). `false` where the kernel cannot (no
/// `MADV_WIPEONFORK` before Linux 4.14).
pub(super) fn open() -> bool {
    if armed() {
        return true;
    }
    let Some(secret) = pages() else {
        return false;
    };
    // SAFETY: getrandom writes at most 8 bytes at `secret`, in its page; read back with
    // volatile reads so the value is not kept in a register or on the stack.
    let filled = (0..8).any(|_| unsafe {
        libc::getrandom(secret.cast(), 8, 0) == 8 && std::ptr::read_volatile(secret) != 0
    });
    if filled {
        arm();
    }
    filled
}

/// Sets the flag that this process holds the secret.
fn arm() {
    // SAFETY: PAGE is live once `pages` made it.
    unsafe { std::ptr::write_volatile(PAGE.load(Ordering::Relaxed), 1) };
}

/// Forgets the secret: zeroes it and the flag.
fn disarm() {
    // SAFETY: both are live once `pages` made them.
    unsafe {
        std::ptr::write_volatile(SECRET.load(Ordering::Relaxed), 0);
        std::ptr::write_volatile(PAGE.load(Ordering::Relaxed), 0);
    }
}

/// An anonymous private page.
fn anonymous_page() -> Option<*mut libc::c_void> {
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (page != libc::MAP_FAILED).then_some(page)
}

/// A page of `memfd_secret` memory that a child does not get at fork; `None` where the
/// kernel has none (or refuses it).
fn secret_page() -> Option<*mut u64> {
    // SAFETY: memfd_secret with no flags; the descriptor is closed below, the mapping kept.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, 0) } as libc::c_int;
    if fd < 0 {
        return None;
    }
    // SAFETY: a shared mapping of the descriptor just made, sized first; then it is closed.
    let page = unsafe {
        let sized = libc::ftruncate(fd, 4096) == 0;
        let page = sized.then(|| {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        });
        libc::close(fd);
        page.filter(|p| *p != libc::MAP_FAILED)?
    };
    // SAFETY: `page` is the mapping just made.
    if unsafe { libc::madvise(page, 4096, libc::MADV_DONTFORK) } != 0 {
        // SAFETY: unmapping the mapping made above, which nothing refers to.
        unsafe { libc::munmap(page, 4096) };
        return None;
    }
    Some(page.cast())
}

/// The flag's page and the secret's place, made once: the secret's place.
fn pages() -> Option<*mut u64> {
    if !AVAILABLE {
        return None;
    }
    let made = SECRET.load(Ordering::Relaxed);
    if !made.is_null() {
        return Some(made);
    }
    let page = anonymous_page()?;
    // SAFETY: `page` is the mapping just made, 4096 bytes.
    if unsafe { libc::madvise(page, 4096, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: unmapping the mapping made above, which nothing refers to.
        unsafe { libc::munmap(page, 4096) };
        return None;
    }
    let page = page.cast::<u64>();
    // SAFETY: the second word of the page.
    let secret = secret_page().unwrap_or_else(|| unsafe { page.add(1) });
    PAGE.store(page, Ordering::Relaxed);
    SECRET.store(secret, Ordering::Relaxed);
    Some(secret)
}

/// The environment variable naming the descriptor from which an image a gated supervisor
/// exec'd (an upgrade, its check) takes the secret.
const HANDED: &std::ffi::CStr = c"FORKD_GATE_FD";

/// How many filters this process runs under once its own is installed (0: none of ours).
static FILTERS: AtomicU32 = AtomicU32::new(0);

/// Whether this image runs under the filter of the image that exec'd it, whose secret it took.
static UNDER_HANDED_FILTER: AtomicBool = AtomicBool::new(false);

/// Notes that the filter is installed: `filters` is now the number this process runs under.
pub(super) fn installed(filters: u32) {
    FILTERS.store(filters, Ordering::Relaxed);
}

/// Whether this process installed the filter, or runs under its predecessor's.
pub(super) fn filtered() -> bool {
    FILTERS.load(Ordering::Relaxed) > 0
}

/// Whether the filter this process runs under is its predecessor's, with the secret handed
/// down: then it installs none of its own.
pub(super) fn inherited_across_exec() -> bool {
    UNDER_HANDED_FILTER.load(Ordering::Relaxed)
}

/// The number of seccomp filters this process runs under, from /proc/self/status.
pub(super) fn filters_in_force() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Seccomp_filters:"))?;
            line["Seccomp_filters:".len()..].trim().parse().ok()
        })
        .unwrap_or(0)
}

/// For an image this supervisor is about to exec (an upgrade, its check), which will run
/// under the same filter: the environment entry naming a descriptor (not close-on-exec, to
/// be closed once the exec is done) that holds the secret and the number of filters, written
/// straight from the page. `None` where this process is not under a filter of its own.
pub(crate) fn hand_down() -> Option<(std::os::fd::OwnedFd, std::ffi::CString)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let filters = FILTERS.load(Ordering::Relaxed);
    if !armed() || !filtered() {
        return None;
    }
    // SAFETY: memfd_create with a valid name; the descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"forkd-gate".as_ptr(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor nothing else owns.
    let file = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let secret = SECRET.load(Ordering::Relaxed);
    // SAFETY: 8 bytes from the live secret, 4 from a local.
    let written = unsafe {
        libc::pwrite(fd, secret.cast(), 8, 0) == 8
            && libc::pwrite(fd, (&raw const filters).cast(), 4, 8) == 4
    };
    if !written {
        return None;
    }
    let entry = format!("{}={}", HANDED.to_str().ok()?, file.as_raw_fd());
    Some((file, std::ffi::CString::new(entry).ok()?))
}

/// Before `main`, in every program linking forkd: an image a gated supervisor exec'd takes
/// the secret from the descriptor it was handed, and, if it runs under that filter (as many
/// filters as the handing image said, and the filter refuses a call the secret lets through),
/// installs the SIGSYS handler through the gate (the filter refuses rt_sigaction on SIGSYS
/// otherwise, and the first trapped call would kill it). Without the variable it does nothing
/// but look.
extern "C" fn take_handed() {
    // SAFETY: before main, single-threaded: nothing changes the environment meanwhile.
    let value = unsafe { libc::getenv(HANDED.as_ptr()) };
    if value.is_null() {
        return;
    }
    // Not dumpable first (exec made it dumpable again; the filter allows this one prctl).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: getenv's result is a NUL-terminated string in the environment.
    let fd: Option<libc::c_int> = unsafe { std::ffi::CStr::from_ptr(value) }
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok());
    // SAFETY: as above; the variable is not handed further.
    unsafe { libc::unsetenv(HANDED.as_ptr()) };
    let (Some(fd), Some(secret)) = (fd, pages()) else {
        return;
    };
    let mut filters: u32 = 0;
    // SAFETY: reads 8 bytes into the secret's page and 4 into a local, then closes the
    // descriptor, which this process was handed for this alone.
    let read = unsafe {
        let read = libc::pread(fd, secret.cast(), 8, 0) == 8
            && libc::pread(fd, (&raw mut filters).cast(), 4, 8) == 4;
        libc::close(fd);
        read
    };
    if read && filters > 0 && filters_in_force() == filters {
        arm();
        if opens_the_filter() {
            FILTERS.store(filters, Ordering::Relaxed);
            UNDER_HANDED_FILTER.store(true, Ordering::Relaxed);
            super::trap::install_through_gate();
            return;
        }
    }
    // Not under that filter: the value is no secret of a filter here; a filter installed
    // later gets a fresh one.
    disarm();
}

/// Whether the filter in force is one the secret opens: it answers a path's access with
/// EACCES to a caller without the secret, and lets the caller with it through. (A filter of
/// someone else's, with a descriptor of theirs, would not.)
fn opens_the_filter() -> bool {
    let root = c"/".as_ptr() as usize;
    // SAFETY: faccessat reads the path; the sixth argument is zero.
    let without = unsafe {
        libc::syscall(
            libc::SYS_faccessat,
            libc::AT_FDCWD,
            root,
            libc::F_OK,
            0,
            0,
            0,
        )
    };
    let refused = without == -1 && nix::errno::Errno::last() == nix::errno::Errno::EACCES;
    let args = [libc::AT_FDCWD as usize, root, libc::F_OK as usize, 0, 0];
    // SAFETY: as above, with the secret.
    refused && unsafe { call(libc::SYS_faccessat, args) } == 0
}

#[used]
#[unsafe(link_section = ".init_array")]
static TAKE_HANDED: extern "C" fn() = take_handed;

/// Whether this process holds the secret: the supervisor after [`open`], never a worker (its
/// flag was emptied at fork, and the secret's page is not there). Async-signal-safe.
pub(crate) fn armed() -> bool {
    let page = PAGE.load(Ordering::Relaxed);
    // SAFETY: a non-null PAGE points at the live page made by `pages`, never unmapped (and
    // present in a child, emptied).
    !page.is_null() && unsafe { std::ptr::read_volatile(page) } != 0
}

/// Replaces the placeholder's halves in `program` with the secret's. The count of
/// replacements, which is the same for both halves in a program that compares with it.
/// Volatile reads and writes, one instruction at a time: the secret passes through general
/// registers only, which [`clear_registers`] empties afterwards.
#[inline(never)]
pub(super) fn seal(program: &mut [libc::sock_filter]) -> (usize, usize) {
    let page = SECRET.load(Ordering::Relaxed);
    if !armed() {
        return (0, 0);
    }
    let (mut low, mut high) = (0, 0);
    for instruction in program.iter_mut() {
        let placeholder_low = PLACEHOLDER as u32;
        let placeholder_high = (PLACEHOLDER >> 32) as u32;
        if instruction.k == placeholder_low {
            // SAFETY: the secret is live (see `armed`); the read is not kept beyond this store.
            unsafe {
                std::ptr::write_volatile(&mut instruction.k, std::ptr::read_volatile(page) as u32)
            };
            low += 1;
        } else if instruction.k == placeholder_high {
            // SAFETY: as above.
            unsafe {
                std::ptr::write_volatile(
                    &mut instruction.k,
                    (std::ptr::read_volatile(page) >> 32) as u32,
                )
            };
            high += 1;
        }
    }
    (low, high)
}

/// Zeroes `program` in place, with writes the compiler keeps.
pub(super) fn erase(program: &mut [libc::sock_filter]) {
    for instruction in program.iter_mut() {
        // SAFETY: a write to an element of the slice.
        unsafe { std::ptr::write_volatile(&mut instruction.k, 0) };
    }
}

/// Clears the stack below the caller's frame, where the secret's copies made while sealing
/// the program may remain.
#[inline(never)]
pub(super) fn clear_stack() {
    let mut area = [0u8; 32 * 1024];
    for byte in area.iter_mut() {
        // SAFETY: a write to an element of the local array.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    std::hint::black_box(&area);
}

/// Empties the registers a function may leave values in (the general ones a call does not
/// preserve, and the vector registers), which a fork would copy into every worker.
#[inline(never)]
pub(super) fn clear_registers() {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: only zeroes registers, each declared clobbered.
        unsafe {
            std::arch::asm!(
                "xor eax, eax", "xor ecx, ecx", "xor edx, edx", "xor esi, esi",
                "xor edi, edi", "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d",
                "xor r11d, r11d",
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack, nomem),
            );
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is there; every vector register is declared clobbered.
            unsafe {
                std::arch::asm!(
                    "vzeroall",
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack, nomem),
                );
            }
        } else {
            // SAFETY: SSE2 is part of x86_64; every register is declared clobbered.
            unsafe {
                std::arch::asm!(
                    "xorps xmm0, xmm0", "xorps xmm1, xmm1", "xorps xmm2, xmm2",
                    "xorps xmm3, xmm3", "xorps xmm4, xmm4", "xorps xmm5, xmm5",
                    "xorps xmm6, xmm6", "xorps xmm7, xmm7", "xorps xmm8, xmm8",
                    "xorps xmm9, xmm9", "xorps xmm10, xmm10", "xorps xmm11, xmm11",
                    "xorps xmm12, xmm12", "xorps xmm13, xmm13", "xorps xmm14, xmm14",
                    "xorps xmm15, xmm15",
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                    out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                    out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                    out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                    options(nostack, nomem),
                );
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: only zeroes registers, each declared clobbered.
    unsafe {
        std::arch::asm!(
            "mov x0, xzr", "mov x1, xzr", "mov x2, xzr", "mov x3, xzr", "mov x4, xzr",
            "mov x5, xzr", "mov x6, xzr", "mov x7, xzr", "mov x8, xzr", "mov x9, xzr",
            "mov x10, xzr", "mov x11, xzr", "mov x12, xzr", "mov x13, xzr", "mov x14, xzr",
            "mov x15, xzr", "mov x16, xzr", "mov x17, xzr",
            "movi v0.16b, #0", "movi v1.16b, #0", "movi v2.16b, #0", "movi v3.16b, #0",
            "movi v4.16b, #0", "movi v5.16b, #0", "movi v6.16b, #0", "movi v7.16b, #0",
            "movi v16.16b, #0", "movi v17.16b, #0", "movi v18.16b, #0", "movi v19.16b, #0",
            "movi v20.16b, #0", "movi v21.16b, #0", "movi v22.16b, #0", "movi v23.16b, #0",
            "movi v24.16b, #0", "movi v25.16b, #0", "movi v26.16b, #0", "movi v27.16b, #0",
            "movi v28.16b, #0", "movi v29.16b, #0", "movi v30.16b, #0", "movi v31.16b, #0",
            out("x0") _, out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
            out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _,
            out("x17") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v16") _, out("v17") _, out("v18") _,
            out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _,
            out("v29") _, out("v30") _, out("v31") _,
            options(nostack, nomem),
        );
    }
}

/// Makes system call `nr` with `args` and the secret: what the filter lets the supervisor
/// do. The raw result (a negative errno on failure). Async-signal-safe.
///
/// # Safety
///
/// As for the system call itself: pointers among `args` must be what it expects. Only a
/// process that is [`armed`] may call it: in a worker the secret's page is not there.
pub(crate) unsafe fn call(nr: libc::c_long, args: [usize; 5]) -> isize {
    let page = SECRET.load(Ordering::Relaxed);
    let result: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller vouches for the call; r9, the sixth argument, is loaded from the
    // page and cleared again inside the block, so the secret stays in no other register and
    // in no memory.
    unsafe {
        std::arch::asm!(
            "mov r9, qword ptr [{page}]",
            "syscall",
            "xor r9d, r9d",
            page = in(reg) page,
            inlateout("rax") nr as isize => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            out("r9") _,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as the x86_64 block: x5, the sixth argument, is loaded and cleared inside.
    unsafe {
        std::arch::asm!(
            "ldr x5, [{page}]",
            "svc #0",
            "mov x5, xzr",
            page = in(reg) page,
            in("x8") nr,
            inlateout("x0") args[0] => result,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            out("x5") _,
            options(nostack),
        );
    }
    // Never reached: AVAILABLE is false, no gate is opened.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (nr, args, page);
        result = -(libc::ENOSYS as isize);
    }
    result
}

/// Starts `child(arg)` on `stack_top` in a process sharing this one's memory until it execs
/// (`CLONE_VM | CLONE_VFORK`, as posix_spawn does), through the gate: a spawn the filter
/// refuses otherwise. The child's pid, or a negative errno. The child runs `child` and
/// leaves with its result through `exit`; it must exec or `_exit` before that.
///
/// # Safety
///
/// `stack_top` must be the 16-byte aligned top of memory the child may use as its stack
/// until it execs; `child` must be safe to run there with `arg`; the caller is suspended
/// until the child execs or exits, and should have every signal blocked.
pub(crate) unsafe fn spawn_sharing_memory(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack_top: *mut u8,
    arg: *mut libc::c_void,
) -> isize {
    let page = SECRET.load(Ordering::Relaxed);
    let flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as usize;
    let result: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller vouches for the stack and the function. The child starts after the
    // system call on `stack_top`, clears r9 (the secret) first, calls `child(arg)` (r12 and
    // r13 hold them across the call) and exits; it never returns into this function's frame.
    unsafe {
        std::arch::asm!(
            "mov r9, qword ptr [{page}]",
            "syscall",
            "xor r9d, r9d",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            page = in(reg) page,
            inlateout("rax") libc::SYS_clone as isize => result,
            in("rdi") flags,
            in("rsi") stack_top,
            in("rdx") 0usize,
            in("r10") 0usize,
            in("r8") 0usize,
            in("r12") arg,
            in("r13") child,
            out("r9") _,
            out("rcx") _,
            out("r11") _,
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as the x86_64 block; x20 and x21 hold the argument and the function across
    // the call.
    unsafe {
        std::arch::asm!(
            "ldr x5, [{page}]",
            "svc #0",
            "mov x5, xzr",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x20",
            "blr x21",
            "mov x8, #93",
            "svc #0",
            "brk #0",
            "2:",
            page = in(reg) page,
            in("x8") libc::SYS_clone,
            inlateout("x0") flags => result,
            in("x1") stack_top,
            in("x2") 0usize,
            in("x3") 0usize,
            in("x4") 0usize,
            in("x20") arg,
            in("x21") child,
            out("x5") _,
        );
    }
    // Never reached: AVAILABLE is false, no gate is opened.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (child, stack_top, arg, page, flags);
        result = -(libc::ENOSYS as isize);
    }
    result
}
