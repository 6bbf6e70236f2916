//! Writing log lines to standard error without ever waiting for whoever reads it.
//!
//! Descriptor 2 is shared with the process that started forkd and with every child, so forkd
//! does not set O_NONBLOCK on it (that would change it for all of them). Instead it writes
//! through a path of its own that cannot block: `send(MSG_DONTWAIT)` on a socket (the journal),
//! a second, non-blocking open of the same pipe, FIFO or terminal through /proc, or, where
//! /proc is missing, a zero-timeout poll before each write. Regular files never block and are
//! written as they are. A line that cannot be written now is reported as not written, for
//! the caller to count.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

const STDERR: RawFd = 2;

/// Where stderr lines go, chosen once at start and inherited by children.
pub(super) enum Sink {
    /// A socket: each line is one non-blocking send.
    Socket,
    /// A pipe, FIFO or terminal opened again, non-blocking, for forkd alone: once for the
    /// supervisor, once for its workers. Two descriptions, so that what a worker does to the
    /// status flags of its own (clear O_NONBLOCK, say) cannot make the supervisor wait.
    Reopened { own: OwnedFd, workers: OwnedFd },
    /// Something that could not be opened again: poll for room, then write.
    Polled,
    /// A regular file (or anything whose type is unknown): writes do not wait for a reader.
    Plain,
}

impl Sink {
    pub(super) fn open() -> Sink {
        // SAFETY: descriptor 2 stays open for the life of the process (forkd never closes it;
        // under inetd it is pointed at /dev/null, never closed), and the borrow ends here.
        let stderr = unsafe { BorrowedFd::borrow_raw(STDERR) };
        let Ok(stat) = nix::sys::stat::fstat(stderr) else {
            return Sink::Plain;
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode & libc::S_IFMT);
        if kind == SFlag::S_IFSOCK {
            return Sink::Socket;
        }
        if kind == SFlag::S_IFREG {
            return Sink::Plain;
        }
        let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let reopen = || nix::fcntl::open("/proc/self/fd/2", flags, Mode::empty());
        match (reopen(), reopen()) {
            (Ok(own), Ok(workers)) => Sink::Reopened { own, workers },
            _ => Sink::Polled,
        }
    }

    /// The descriptor lines are written to.
    pub(super) fn raw_fd(&self) -> RawFd {
        match self {
            Sink::Reopened { own, .. } => own.as_raw_fd(),
            Sink::Socket | Sink::Polled | Sink::Plain => STDERR,
        }
    }

    /// Writes one line (at most one write or send, so lines of different processes do not
    /// interleave). Returns false when it was not written because nobody is reading.
    pub(super) fn write(&self, line: &[u8]) -> bool {
        let result = match self {
            Sink::Socket => {
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: `line` is a live slice; send reads at most `line.len()` bytes from it.
                let sent = unsafe { libc::send(STDERR, line.as_ptr().cast(), line.len(), flags) };
                Errno::result(sent).map(drop)
            }
            Sink::Reopened { own, .. } => write_once(own.as_raw_fd(), line),
            Sink::Polled => {
                if !room_now() {
                    return false;
                }
                write_once(STDERR, line)
            }
            Sink::Plain => write_once(STDERR, line),
        };
        !matches!(result, Err(Errno::EAGAIN))
    }
}

fn write_once(fd: RawFd, line: &[u8]) -> nix::Result<()> {
    // SAFETY: `fd` is descriptor 2 or a descriptor this sink owns; both outlive the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    loop {
        match nix::unistd::write(fd, line) {
            Err(Errno::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

fn room_now() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // SAFETY: as in `Sink::open`, descriptor 2 is never closed.
    let stderr = unsafe { BorrowedFd::borrow_raw(STDERR) };
    let mut fds = [PollFd::new(stderr, PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLOUT))
}
