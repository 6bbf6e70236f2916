//! What happens in a child between fork() and the end of its connection.
//!
//! The child closes what belongs to the supervisor (listeners, the signal pipe), restores
//! default signal dispositions and an empty mask, leaves the supervisor's process group, runs
//! the handler and leaves with `_exit`: it never unwinds or returns into the supervisor's code,
//! and a panic in the handler ends this child only.

use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

use crate::conn::Connection;
use crate::handler::{Handler, Outcome};
use crate::listen::configure_accepted;
use crate::signals;

/// Exit status of a child whose peer finished cleanly.
pub const EXIT_CLEAN: i32 = 0;
/// Exit status of a child whose conversation ended on a protocol or I/O error (logged by it).
pub const EXIT_FAILED: i32 = 1;
/// Exit status of a child whose handler panicked (logged by it).
pub const EXIT_PANIC: i32 = 101;

/// Forks a child to serve `conn`. In the supervisor: the child's pid (the supervisor's copy of
/// the connection is closed), or the fork error with the connection handed back so the caller
/// can still tell the peer. In the child: never returns.
///
/// `supervisor_fds` are the descriptors the child must not keep.
pub fn spawn(
    conn: Connection,
    supervisor_fds: &[RawFd],
    handler: &dyn Handler,
) -> Result<Pid, (Errno, Connection)> {
    debug_assert_single_threaded();
    // SAFETY: the supervisor is single-threaded (asserted above in debug builds), so the
    // child is a full copy with no lock held by a vanished thread.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => run_child(conn, supervisor_fds, handler),
        Err(e) => Err((e, conn)),
    }
}

fn run_child(conn: Connection, supervisor_fds: &[RawFd], handler: &dyn Handler) -> ! {
    signals::reset_for_child();
    // An in-process handler writes to a socket its peer may have closed: it should see EPIPE,
    // as Rust code expects, not die of SIGPIPE.
    let _ = signals::ignore_sigpipe();
    for fd in supervisor_fds {
        // The supervisor's objects are never dropped here (the child ends in _exit), so
        // closing the raw descriptors cannot double-close.
        unsafe { libc::close(*fd) };
    }
    // Out of the supervisor's process group: a Ctrl-C at the terminal reaches the supervisor,
    // which then grants the grace period, instead of killing every conversation at once.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if let Err(e) = configure_accepted(&conn.stream) {
        log::error!(
            "error peer={} pid={} reason=\"socket options: {e}\"",
            conn.peer,
            std::process::id()
        );
        exit(EXIT_FAILED);
    }
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| handler.serve(conn)));
    exit(match outcome {
        Ok(Outcome::Clean) => EXIT_CLEAN,
        Ok(Outcome::Failed) => EXIT_FAILED,
        Err(_) => EXIT_PANIC,
    })
}

fn exit(code: i32) -> ! {
    // _exit: no atexit handlers, no destructors of state copied from the supervisor.
    unsafe { libc::_exit(code) }
}

/// fork() in a process with other threads copies only the calling one; locks the others held
/// stay locked forever in the child. forkd's supervisor must never have a second thread.
fn debug_assert_single_threaded() {
    #[cfg(all(debug_assertions, target_os = "linux"))]
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let threads = tasks.count();
        debug_assert_eq!(threads, 1, "the supervisor must be single-threaded at fork");
    }
}
