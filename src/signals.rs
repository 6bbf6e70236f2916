//! Signals as a readable descriptor, so the supervisor's one poll loop sees them.
//!
//! On Linux the handled signals are blocked and read from a signalfd: no handler ever runs, so
//! a child's exit costs the supervisor no signal delivery, and a new child has nothing to undo
//! but the mask. Elsewhere a handler writes the signal number to a non-blocking self-pipe
//! (async-signal-safe) and a new child restores the default dispositions. Either way all the
//! work happens in the loop.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::sys::signal::{self, SigHandler, SigSet, Signal};

/// The signals the supervisor handles: SIGCHLD (reap), SIGTERM and SIGINT (shut down), SIGHUP
/// (reconnect to syslog, reload), SIGUSR1 (log a status line), SIGUSR2 (upgrade in place).
pub const HANDLED: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The handled signals, readable as a descriptor.
pub struct Signals {
    source: imp::Source,
}

impl Signals {
    /// Starts taking the handled signals through a descriptor (close-on-exec, non-blocking).
    /// SIGPIPE is ignored: a peer that went away is an EPIPE to handle, not a reason to die.
    pub fn install() -> nix::Result<Signals> {
        default_dispositions();
        let source = imp::Source::install()?;
        ignore_sigpipe()?;
        Ok(Signals { source })
    }

    /// Every handled signal that arrived since the last call, without blocking.
    pub fn drain(&self) -> SigSet {
        self.source.drain()
    }

    /// A handle that wakes the poll loop from another thread.
    pub fn waker(&self) -> Waker {
        Waker
    }

    /// The descriptors behind it, for a child to close.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.source.raw_fds()
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.source.as_fd()
    }
}

/// Wakes the supervisor's poll loop from a worker thread that has finished: it raises SIGCHLD,
/// which to the supervisor means "a worker ended, reap".
#[derive(Clone, Copy, Debug)]
pub struct Waker;

impl Waker {
    pub fn wake(&self) {
        let _ = signal::kill(nix::unistd::getpid(), Signal::SIGCHLD);
    }
}

pub fn ignore_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler; nothing runs in signal context.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map(drop)
}

/// Before exec: SIG_IGN survives exec, so a program would inherit the ignored SIGPIPE.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler.
    let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Once, at start: the default disposition for every signal, real-time ones included,
/// whatever forkd inherited (a `nohup` ignores SIGHUP, say), so that children start from the
/// defaults. (The C library keeps two real-time signals for itself; what forkd inherited for
/// those stays.)
fn default_dispositions() {
    // An image a supervisor under --sandbox's filter exec'd keeps the SIGSYS handler it
    // installed before main: the filter traps this image's own calls too.
    let keep = crate::sandbox::under_predecessors_filter().then_some(libc::SIGSYS);
    for number in 1..=libc::SIGRTMAX() {
        if number == libc::SIGKILL || number == libc::SIGSTOP || Some(number) == keep {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler; numbers the kernel refuses fail harmlessly.
        unsafe { libc::signal(number, libc::SIG_DFL) };
    }
}

/// In a new child: the state a program expects, default dispositions for the handled signals
/// and an empty mask. SIGPIPE stays ignored: an in-process handler should see EPIPE, as Rust
/// code expects, and the exec handler restores the default itself before exec.
pub fn reset_for_child() {
    imp::reset_dispositions();
    crate::raw::unblock_all_signals();
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    use nix::sys::signalfd::{SfdFlags, SignalFd};

    pub struct Source(SignalFd);

    impl Source {
        /// Blocks the handled signals (the supervisor is still single-threaded, so every
        /// thread started later inherits the mask) and opens a signalfd for them.
        pub fn install() -> nix::Result<Source> {
            let mut set = SigSet::empty();
            super::HANDLED.iter().for_each(|s| set.add(*s));
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
            let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
            Ok(Source(fd))
        }

        /// One read takes every pending signal: the handled signals are standard ones, of
        /// which at most one each is pending, fewer than the buffer holds; one arriving after
        /// the read makes the descriptor readable again for the next poll.
        pub fn drain(&self) -> SigSet {
            const ROOM: usize = 8;
            const _: () = assert!(super::HANDLED.len() < ROOM);
            let mut got = SigSet::empty();
            let mut infos = [std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit(); ROOM];
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let buffer = infos.as_mut_ptr().cast();
            // SAFETY: reads at most the buffer's size into it; the kernel writes whole
            // signalfd_siginfo records, and only the `n / size` written are read below.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buffer, ROOM * size) };
            // EAGAIN (nothing pending) or an error: nothing read. EINTR cannot happen
            // without handlers.
            let records = if n > 0 { n as usize / size } else { 0 };
            for info in &infos[..records] {
                // SAFETY: the first `records` entries were written by the read above.
                let info = unsafe { info.assume_init_ref() };
                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                    got.add(sig);
                }
            }
            got
        }

        pub fn raw_fds(&self) -> Vec<RawFd> {
            vec![self.0.as_raw_fd()]
        }

        pub fn as_fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }

    /// The dispositions were never changed: nothing to undo.
    pub fn reset_dispositions() {}
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicI32, Ordering};

    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

    static PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(number: libc::c_int) {
        let saved = Errno::last_raw();
        let fd = PIPE_WRITE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = number as u8;
            // A full pipe already holds a wake-up; losing this byte loses nothing.
            // SAFETY: write is async-signal-safe and reads one byte from a live local.
            unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        }
        Errno::set_raw(saved);
    }

    pub struct Source {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Source {
        pub fn install() -> nix::Result<Source> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
            PIPE_WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
            let action = SigAction::new(
                SigHandler::Handler(on_signal),
                SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
                SigSet::empty(),
            );
            for sig in super::HANDLED {
                // SAFETY: `on_signal` is async-signal-safe (an atomic load and a write).
                unsafe { signal::sigaction(sig, &action)? };
            }
            Ok(Source { read, write })
        }

        pub fn drain(&self) -> SigSet {
            let mut got = SigSet::empty();
            let mut buf = [0u8; 64];
            loop {
                match nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(Errno::EAGAIN) => break,
                    Ok(n) => buf[..n]
                        .iter()
                        .filter_map(|b| Signal::try_from(i32::from(*b)).ok())
                        .for_each(|s| got.add(s)),
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            got
        }

        pub fn raw_fds(&self) -> Vec<RawFd> {
            vec![self.read.as_raw_fd(), self.write.as_raw_fd()]
        }

        pub fn as_fd(&self) -> BorrowedFd<'_> {
            self.read.as_fd()
        }
    }

    pub fn reset_dispositions() {
        PIPE_WRITE_FD.store(-1, Ordering::Relaxed);
        for sig in super::HANDLED {
            // SAFETY: SIG_DFL installs no handler.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        }
    }
}
