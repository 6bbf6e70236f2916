//! Signals as bytes on a self-pipe, so the supervisor's one poll loop sees them.
//!
//! The handler only writes the signal number to a non-blocking pipe (async-signal-safe); all
//! the work happens in the loop. Children undo all of it before running their handler.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The signals the supervisor handles through the pipe: SIGCHLD (reap), SIGTERM and SIGINT
/// (shut down), SIGHUP (reconnect to syslog), SIGUSR1 (log a status line).
pub const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

static PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(number: libc::c_int) {
    let saved = Errno::last_raw();
    let fd = PIPE_WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = number as u8;
        // A full pipe already holds a wake-up; losing this byte loses nothing.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    Errno::set_raw(saved);
}

/// The read end of the self-pipe, with the handlers installed.
pub struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalPipe {
    /// Creates the pipe (close-on-exec, non-blocking) and installs the handlers. SIGPIPE is
    /// ignored: a peer that went away is an EPIPE to handle, not a reason to die.
    pub fn install() -> nix::Result<SignalPipe> {
        default_dispositions();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        PIPE_WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
            SigSet::empty(),
        );
        for sig in HANDLED {
            unsafe { signal::sigaction(sig, &action)? };
        }
        ignore_sigpipe()?;
        Ok(SignalPipe { read, write })
    }

    /// Every signal that arrived since the last call, in order, without blocking.
    pub fn drain(&self) -> Vec<Signal> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => got.extend(
                    buf[..n]
                        .iter()
                        .filter_map(|b| Signal::try_from(i32::from(*b)).ok()),
                ),
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        got
    }

    /// A handle that wakes the poll loop from another thread.
    pub fn waker(&self) -> Waker {
        Waker {
            fd: self.write.as_raw_fd(),
        }
    }

    /// Both descriptors, for a child to close.
    pub fn raw_fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }
}

/// Wakes the supervisor's poll loop (a zero byte on the signal pipe, which is no signal).
#[derive(Clone, Copy, Debug)]
pub struct Waker {
    fd: RawFd,
}

impl Waker {
    pub fn wake(&self) {
        let byte = 0u8;
        // A full pipe already holds a wake-up.
        unsafe { libc::write(self.fd, (&byte as *const u8).cast(), 1) };
    }
}

impl AsFd for SignalPipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

pub fn ignore_sigpipe() -> nix::Result<()> {
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map(drop)
}

/// Once, at start: the default disposition for every signal, real-time ones included,
/// whatever forkd inherited (a `nohup` ignores SIGHUP, say), so that children start from the
/// defaults and only need to undo what [`SignalPipe::install`] sets. (The C library keeps two
/// real-time signals for itself; what forkd inherited for those stays.)
fn default_dispositions() {
    for number in 1..=libc::SIGRTMAX() {
        if number == libc::SIGKILL || number == libc::SIGSTOP {
            continue;
        }
        unsafe { libc::signal(number, libc::SIG_DFL) };
    }
}

/// In a new child: default dispositions for the signals the supervisor handles and an empty
/// mask; every other signal is at its default already. SIGPIPE stays ignored: an in-process
/// handler should see EPIPE, as Rust code expects, and the exec handler restores the default
/// itself before exec.
pub fn reset_for_child() {
    PIPE_WRITE_FD.store(-1, Ordering::Relaxed);
    for sig in HANDLED {
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    }
    let _ = signal::sigprocmask(
        signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
}
