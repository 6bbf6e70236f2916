//! Descriptor hygiene at start: whatever forkd inherited beyond stdin, stdout and stderr
//! (from a careless parent, or systemd's listening sockets) becomes close-on-exec, so a program
//! run per connection sees descriptors 0, 1 and 2 and nothing else.

use std::os::fd::{AsFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Marks every open descriptor from 3 up close-on-exec: one close_range(2) on Linux 5.11 and
/// later, else each descriptor /proc/self/fd lists.
pub fn cloexec_inherited() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only sets the flag
        // on the descriptors of the range that are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            )
        };
        if rc == 0 {
            return;
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD and F_SETFD only read and set the descriptor's flags. The calls are
        // raw because the listing's own descriptor is among `fds` and closed by now (it fails
        // with EBADF, harmlessly): a BorrowedFd must not stand for a closed descriptor.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Adds O_NONBLOCK to a descriptor's status flags (keeping the others).
pub fn set_nonblocking(fd: &impl AsFd) {
    if let Ok(flags) = fcntl(fd.as_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags));
    }
}
