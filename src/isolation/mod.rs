//! How a connection is isolated: the seam between the supervisor and the workers that serve
//! connections.
//!
//! Why a trait: the supervisor's job (accept, admit, count, time, log, shut down) is the same
//! whether a connection gets a forked process or a thread; only starting a worker, learning
//! that it ended and ending it differ. So [`Isolation`] has exactly those three operations,
//! and the supervisor keeps one table of workers keyed by [`WorkerId`] and never asks which
//! model it runs. Each implementation collects only the workers it started: the fork model
//! reaps its own pids (never `waitpid(-1)` blindly, so a program a thread started is left to
//! that thread), the thread model reads its threads' reports.
//!
//! A worker process and everything it starts form one process group, whose id is the
//! worker's pid, so [`Isolation::terminate`] ends them together.

pub(crate) mod arena;
pub(crate) mod child;
pub(crate) mod fault;
mod fork;
pub(crate) mod groups;
pub(crate) mod lean;
pub(crate) mod stacks;
pub(crate) mod tally;
mod thread;

use std::fmt;
use std::os::fd::{OwnedFd, RawFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub(crate) use fork::Fork;
pub(crate) use thread::Threads;

use crate::conn::Connection;
use crate::handler::{Outcome, ProtocolSettings, Work};

/// Exit status of a worker whose peer finished cleanly.
pub(crate) const EXIT_CLEAN: i32 = 0;
/// Exit status of a worker whose conversation ended on an I/O error (logged by it).
pub(crate) const EXIT_FAILED: i32 = 1;
/// Exit status of a worker whose peer broke the protocol (logged by it).
pub(crate) const EXIT_BROKEN: i32 = 2;
/// Exit status of a worker whose peer went silent past the idle limit (logged by it).
pub(crate) const EXIT_TIMED_OUT: i32 = 3;
/// Exit status of a worker whose handler panicked (logged by it).
pub(crate) const EXIT_PANIC: i32 = 101;

/// The exit status a worker reports for how its conversation ended, or for a panic.
pub(crate) fn exit_status(outcome: std::thread::Result<Outcome>) -> i32 {
    match outcome {
        Ok(Outcome::Clean) => EXIT_CLEAN,
        Ok(Outcome::Failed) => EXIT_FAILED,
        Ok(Outcome::Broken) => EXIT_BROKEN,
        Ok(Outcome::TimedOut) => EXIT_TIMED_OUT,
        Err(_) => EXIT_PANIC,
    }
}

/// Who serves a connection: a process (and its group) or a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum WorkerId {
    Process(Pid),
    Thread(u64),
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerId::Process(pid) => write!(f, "pid={pid}"),
            WorkerId::Thread(id) => write!(f, "thread={id}"),
        }
    }
}

/// How a worker ended: an exit status (threads report the status a process would have), or
/// the signal that killed the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Exit(i32),
    Signal(Signal, bool),
}

/// What a new worker needs besides its connection.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub work: &'a Work,
    pub settings: ProtocolSettings,
    /// Supervisor descriptors opened since start (draining sockets, stderr relays) that a new
    /// process must close; the ones held from the start are known to the isolation.
    pub close: &'a [RawFd],
}

/// A worker that started.
pub(crate) struct Started {
    pub id: WorkerId,
    /// A program's stderr, for the supervisor to relay into the log.
    pub stderr: Option<OwnedFd>,
}

/// Why no worker started.
pub(crate) enum NotStarted {
    /// Nothing could be started (`what` failed); the connection is handed back so that the
    /// peer can still be told.
    Refused {
        what: &'static str,
        error: String,
        conn: Connection,
    },
    /// The connection was closed in the attempt; `reason` says why, for the log.
    Lost { reason: String },
}

/// How hard to end a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    /// SIGTERM: the worker may finish what it is doing.
    Ask,
    /// SIGKILL.
    Force,
}

/// A way to isolate connections: see the module documentation.
pub(crate) trait Isolation {
    /// Starts a worker serving `conn`.
    fn start(&mut self, conn: Connection, job: &Job<'_>) -> Result<Started, NotStarted>;

    /// Reports to `workers` each worker that ended since the last call, without blocking.
    /// `workers` is the caller's table: the isolation keeps no second one, so that starting
    /// and collecting write to no memory but the table's (after a fork every page the
    /// supervisor writes is a copy-on-write fault).
    fn collect(&mut self, workers: &mut dyn Running);

    /// Ends worker `id` and everything it started, as far as the model can: a process group
    /// can be signalled; a thread cannot be stopped from outside (false).
    fn terminate(&mut self, id: WorkerId, how: Termination) -> bool;

    /// Waits for worker `id` to end, after [`Termination::Force`]; `None` for a worker that
    /// cannot be waited for (a thread ends with the process).
    fn wait(&mut self, id: WorkerId) -> Option<Ended>;

    /// What workers started from now on get (a reload); running ones keep what they had.
    fn reconfigure(&mut self, update: &ChildUpdate);

    /// Worker `id` was asked to end by the previous image of this process (an upgrade in
    /// place): what it started is ended with it when it is collected, as if asked here.
    fn asked_before(&mut self, id: WorkerId);
}

/// What a reload changes for the workers it starts next.
pub(crate) struct ChildUpdate {
    /// The supervisor's descriptors a new worker closes: its listeners changed.
    pub supervisor_fds: Vec<std::os::fd::RawFd>,
    pub limits: crate::config::Limits,
    pub keepalive: bool,
}

/// The workers the supervisor knows to be running, as [`Isolation::collect`] reports to them.
pub(crate) trait Running {
    /// Whether `id` is one of them.
    fn contains(&self, id: WorkerId) -> bool;
    /// All of them.
    fn ids(&self) -> Vec<WorkerId>;
    /// Worker `id` has ended.
    fn ended(&mut self, id: WorkerId, how: Ended);
}

/// A table of `T`s in memory shared with every process forked after this call, and with
/// the next image of this process at an upgrade in place: a memfd, mapped `MAP_SHARED` and
/// never unmapped. `Shared::fd` is what the next image maps again.
pub(crate) struct Shared<T: 'static> {
    pub slots: &'static [T],
    /// The memfd (close-on-exec until an upgrade hands it over); -1 for an empty table.
    pub fd: std::os::fd::RawFd,
}

/// A new table of `count` zeroed `T`s; empty if the memory cannot be had.
///
/// # Safety
///
/// All-zero bytes must be a valid `T` (atomics are), and `T` must be usable from several
/// processes at once through shared memory (atomics, not locks or pointers).
pub(crate) unsafe fn shared_table<T>(count: usize) -> Shared<T> {
    let Ok(fd) = crate::upgrade::memfd(c"forkd-table", libc::MFD_CLOEXEC) else {
        return Shared { slots: &[], fd: -1 };
    };
    let bytes = count * std::mem::size_of::<T>();
    if nix::unistd::ftruncate(&fd, bytes as libc::off_t).is_err() {
        return Shared { slots: &[], fd: -1 };
    }
    // SAFETY: the caller's promise about T, passed on.
    unsafe { map_table(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
}

/// The table in memfd `fd`, as the previous image of this process made it (an upgrade in
/// place): the same memory its workers still write to. Empty if it cannot be mapped.
///
/// # Safety
///
/// As [`shared_table`], and `fd` must be such a table's memfd, owned from now on by the table.
pub(crate) unsafe fn map_table<T>(fd: std::os::fd::RawFd) -> Shared<T> {
    let empty = Shared { slots: &[], fd: -1 };
    // SAFETY: fstat on a descriptor; the struct is filled by the call.
    let size = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 {
            return empty;
        }
        stat.st_size as usize
    };
    let count = size / std::mem::size_of::<T>().max(1);
    if count == 0 {
        return empty;
    }
    // SAFETY: a shared mapping of the whole memfd, which the caller says holds valid Ts;
    // never unmapped, so the slice lives for the process.
    unsafe {
        let memory = libc::mmap(
            std::ptr::null_mut(),
            count * std::mem::size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if memory == libc::MAP_FAILED {
            return empty;
        }
        // Close-on-exec until an upgrade hands it over.
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Shared {
            slots: std::slice::from_raw_parts(memory.cast::<T>(), count),
            fd,
        }
    }
}
