//! Descriptor hygiene at start: whatever forkd inherited beyond stdin, stdout and stderr
//! (from a careless parent, or systemd's listening sockets) becomes close-on-exec, so a program
//! run per connection sees descriptors 0, 1 and 2 and nothing else.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

/// Marks every open descriptor from 3 up close-on-exec.
pub fn cloexec_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is gone by now: fcntl fails on it, harmlessly.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = fcntl(borrowed, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(borrowed, FcntlArg::F_SETFD(flags));
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
