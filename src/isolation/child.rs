//! The process that serves a connection: a forked child running the handler, or a program.
//!
//! A forked child closes what belongs to the supervisor (listeners, the signal descriptor,
//! rejected connections still draining), restores default signal dispositions and an empty
//! mask, leaves the supervisor's process group, applies its resource limits, runs the handler
//! and leaves with `_exit`: it never unwinds or returns into the supervisor's code, and a panic
//! in the handler ends this child only.
//!
//! A program (the exec handler) is started without forking the supervisor where possible
//! (posix_spawn: the new process shares the supervisor's memory only until it execs), and
//! gets the same: its own process group, an empty mask, default signals, the limits, no
//! descriptor but its connection and stderr (every supervisor descriptor is close-on-exec).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

use super::{EXIT_FAILED, Job, exit_status};
use crate::config::Limits;
use crate::conn::Connection;
use crate::handler::program::Prepared as PreparedProgram;
use crate::listen::{ACCEPTED_SOCKETS_INHERIT, configure_accepted};
use crate::sandbox::Prepared;
use crate::signals;

/// Applies `limits` to this process. Soft and hard limits are set alike, so a handler cannot
/// raise them again; the CPU hard limit is one second above the soft one, so the kernel sends
/// SIGXCPU first and SIGKILL only to a process that ignores it.
fn apply_limits(limits: &Limits) -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    let set = |flag: &str, resource, soft: u64, hard: u64| {
        setrlimit(resource, soft, hard).map_err(|e| format!("{flag} {soft}: {e}"))
    };
    if let Some(bytes) = limits.address_space {
        set("--rlimit-as", Resource::RLIMIT_AS, bytes, bytes)?;
    }
    if let Some(secs) = limits.cpu_seconds {
        set(
            "--rlimit-cpu",
            Resource::RLIMIT_CPU,
            secs,
            secs.saturating_add(1),
        )?;
    }
    if let Some(n) = limits.open_files {
        set("--rlimit-nofile", Resource::RLIMIT_NOFILE, n, n)?;
    }
    if let Some(nice) = limits.nice {
        // setpriority is absolute, unlike nice(2); -1 is a valid result, so check errno.
        // SAFETY: a plain system call on this process; no memory is passed.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc == -1 {
            return Err(format!("--nice {nice}: {}", Errno::last()));
        }
    }
    Ok(())
}

/// Everything the supervisor hands every child besides its connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChildSetup {
    /// Descriptors the child must not keep: listeners and the signal descriptor.
    pub supervisor_fds: Vec<RawFd>,
    pub limits: Limits,
    pub keepalive: bool,
    /// `--sandbox`, prepared at start; applied last, right before serving (or the exec).
    pub sandbox: Option<Arc<Prepared>>,
}

/// Applies `setup`'s sandbox to this process, a new worker or a program's child: the error is
/// the line to log.
fn confine(setup: &ChildSetup) -> Result<(), String> {
    let Some(sandbox) = &setup.sandbox else {
        return Ok(());
    };
    crate::logging::release_supervisor_stderr();
    // Not dumpable: a program it starts cannot ptrace it (Landlock allows ptrace within a
    // domain), nor can another process of the user. (Not for a program's vfork-style child,
    // which shares the supervisor's memory, and so this flag; a program's exec resets it.)
    // A supervisor under the workers' filter is not dumpable itself, and fork keeps that.
    if !sandbox.inherits_filter() {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    sandbox
        .apply()
        .map_err(|(step, e)| format!("--sandbox: {step}: {e}"))
}

/// Forks a child to serve `conn` with `job`'s work. In the supervisor: the child's pid (the
/// supervisor's copy of the connection is closed), or the fork error with the connection
/// handed back so the caller can still tell the peer. In the child: never returns.
///
/// # Safety
///
/// The calling process must be single-threaded: a fork copies only the calling thread, and a
/// lock another thread held (the allocator's, the logger's) would stay held in the child.
pub(crate) unsafe fn fork_worker(
    conn: Connection,
    setup: &ChildSetup,
    job: &Job<'_>,
) -> Result<Pid, (Errno, Connection)> {
    debug_assert_single_threaded();
    // Copied out of the serving loop's frames, which a child does not have (see stacks.rs).
    let job = *job;
    super::stacks::on_calling_stack(move || {
        // SAFETY: the caller guarantees a single-threaded process (asserted above in debug
        // builds), so the child is a full copy with no lock held by a vanished thread.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => Ok(child),
            Ok(ForkResult::Child) => run_child(conn, setup, &job),
            Err(e) => Err((e, conn)),
        }
    })
}

/// Forks this process with the clone system call alone, not the C library's fork, whose
/// bookkeeping (for other threads, which the supervisor never has, and for the handlers
/// registered with `pthread_atfork`, which do not run) writes pages of the C library's and
/// the dynamic loader's data in the child: copy-on-write faults on every connection. Measured
/// on churn: 3.5 faults and 8% of the CPU a connection costs (supervisor and child), A/B in
/// alternating rounds. The kernel writes the child's thread id where the C library keeps it,
/// as for glibc's fork. Through the sandbox's gate where the supervisor runs under its
/// workers' seccomp filter; the C library's fork where the kernel does not say where the
/// thread id is kept.
///
/// # Safety
///
/// As [`fork_worker`]: a single-threaded process.
unsafe fn fork() -> nix::Result<ForkResult> {
    let Some(tid_address) = thread_id_address() else {
        // SAFETY: the caller guarantees a single-threaded process.
        return unsafe { nix::unistd::fork() };
    };
    let flags = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as usize;
    // clone's arguments: flags, stack, parent's tid, then the child's tid and the TLS in the
    // order of the architecture.
    #[cfg(target_arch = "x86_64")]
    let args = [flags, 0, 0, tid_address, 0];
    #[cfg(not(target_arch = "x86_64"))]
    let args = [flags, 0, 0, 0, tid_address];
    // SAFETY: a fork of a single-threaded process, whose child only writes its thread id
    // where the C library keeps it.
    let result = match unsafe { crate::sandbox::through_gate(libc::SYS_clone, args) } {
        Some(result) => result,
        None => {
            // SAFETY: as above.
            unsafe { crate::raw::syscall(libc::SYS_clone, [args[0], 0, 0, args[3], args[4], 0]) }
        }
    };
    Ok(match crate::raw::result(result)? {
        0 => ForkResult::Child,
        pid => ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        },
    })
}

/// Where the C library keeps this thread's id (the kernel's clear_child_tid address), asked
/// once; `None` where the kernel does not say (`PR_GET_TID_ADDRESS` needs
/// CONFIG_CHECKPOINT_RESTORE).
fn thread_id_address() -> Option<usize> {
    /// `PR_GET_TID_ADDRESS`, which the libc crate names on some systems only.
    const PR_GET_TID_ADDRESS: libc::c_int = 40;
    static ADDRESS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let mut address: usize = 0;
        // SAFETY: the kernel writes one pointer at `address`.
        let known = unsafe { libc::prctl(PR_GET_TID_ADDRESS, &raw mut address, 0, 0, 0) } == 0;
        (known && address != 0).then_some(address)
    })
}

/// Starts `program` to serve `conn` (on its stdin and stdout), with `stderr` as its
/// descriptor 2. The program's pid, or why it could not be started (it was not found, say).
///
/// Without resource limits this is a posix_spawn ([`crate::spawn`]): nothing of the supervisor
/// is copied. Limits must be set between fork and exec, so with any of them the supervisor
/// forks as for any child.
pub(crate) fn spawn_program(
    program: &PreparedProgram,
    conn: Connection,
    setup: &ChildSetup,
    stderr: OwnedFd,
) -> io::Result<Pid> {
    if !ACCEPTED_SOCKETS_INHERIT {
        configure_accepted(&conn.stream, setup.keepalive)?;
    }
    let ucspi = crate::ucspi::environment(&conn);
    let limits = setup.limits;
    if limits == Limits::default() {
        let socket = conn.stream.as_raw_fd();
        let entries = program.connection_entries(&ucspi)?;
        return crate::spawn::start(
            program.path()?,
            &program.argv(),
            &program.envp(&ucspi, &entries),
            [socket, socket, stderr.as_raw_fd()],
            setup.sandbox.as_deref(),
        );
    }
    let socket = OwnedFd::from(conn.stream);
    // The program found on PATH at start, as without limits; argv[0] as given.
    let launch = crate::handler::program::launch(&program.program, &ucspi);
    let mut command = std::process::Command::new(program.path_os()?);
    command
        .arg0(&launch.argv[0])
        .args(&launch.argv[1..])
        .env_clear()
        .envs(launch.env);
    command
        .stdout(socket.try_clone()?)
        .stdin(socket)
        .stderr(stderr)
        .process_group(0);
    let sandbox = setup.sandbox.clone();
    // SAFETY: runs in the forked child before exec; only system calls (and a message
    // formatted on failure, in a copy of a single-threaded supervisor).
    unsafe {
        command.pre_exec(move || {
            signals::reset_for_child();
            signals::default_sigpipe();
            apply_limits(&limits).map_err(io::Error::other)?;
            match &sandbox {
                Some(sandbox) => sandbox.apply().map_err(|(_, e)| e.into()),
                None => Ok(()),
            }
        });
    }
    // std forks here: on the stack the child inherits (isolation/stacks.rs).
    let child = super::stacks::on_calling_stack(move || command.spawn())?;
    // Not waited for through `child`: the supervisor reaps every child with waitpid.
    Ok(Pid::from_raw(child.id() as i32))
}

/// The runs of consecutive numbers in `fds`, in their order, as (first, last).
fn runs(fds: impl Iterator<Item = RawFd>) -> impl Iterator<Item = (RawFd, RawFd)> {
    let mut fds = fds.peekable();
    std::iter::from_fn(move || {
        let first = fds.next()?;
        let mut last = first;
        while fds.next_if_eq(&(last + 1)).is_some() {
            last += 1;
        }
        Some((first, last))
    })
}

/// Ends a worker at once if its setup panics: unwinding would go on into the supervisor's
/// frames in the child, and drop the supervisor's state there (its worker table, which a
/// child sees empty). The handler's own panics are caught before this.
struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        exit(EXIT_FAILED)
    }
}

fn run_child(conn: Connection, setup: &ChildSetup, job: &Job<'_>) -> ! {
    let _never_unwinds = ExitOnUnwind;
    super::arena::enter_worker();
    signals::reset_for_child();
    crate::logging::nonblocking_stderr_for_worker();
    // The supervisor's objects owning these descriptors are never dropped here (the child
    // ends in _exit), so closing them cannot double-close or close a reused number. They are
    // kept in order, and consecutive numbers go in one system call.
    for (first, last) in runs(setup.supervisor_fds.iter().chain(job.close).copied()) {
        crate::raw::close_range(first, last);
    }
    // Out of the supervisor's process group: a Ctrl-C at the terminal reaches the supervisor,
    // which then grants the grace period, instead of killing every conversation at once.
    crate::raw::own_process_group();
    let prepared = apply_limits(&setup.limits)
        .and_then(|()| {
            if ACCEPTED_SOCKETS_INHERIT {
                return Ok(());
            }
            configure_accepted(&conn.stream, setup.keepalive)
                .map_err(|e| format!("socket options: {e}"))
        })
        .and_then(|()| {
            let confined = confine(setup);
            if let Some(fd) = setup.sandbox.as_ref().and_then(|s| s.ruleset_fd()) {
                // The ruleset's owner (the supervisor's `Prepared`) is never dropped in this
                // child, which ends in _exit: no double close, no reused number.
                crate::raw::close(fd);
            }
            confined
        });
    if let Err(reason) = prepared {
        log::error!(
            "error peer={} pid={} reason={}",
            conn.who(),
            std::process::id(),
            crate::logging::quote(&reason)
        );
        exit(EXIT_FAILED);
    }
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| job.work.serve(conn, job.settings)));
    exit(exit_status(outcome))
}

/// Serves `conn` in this process, as a forked child would but without the fork (`--inetd`,
/// where inetd forked this process for the connection): default signals and an empty mask,
/// the resource limits and the sandbox. Returns the exit status a child would have had.
pub(crate) fn serve_here(
    conn: Connection,
    work: &crate::handler::Work,
    settings: crate::handler::ProtocolSettings,
    setup: &ChildSetup,
) -> i32 {
    signals::reset_for_child();
    crate::logging::nonblocking_stderr_for_worker();
    if let Err(reason) = apply_limits(&setup.limits).and_then(|()| confine(setup)) {
        log::error!(
            "error peer={} pid={} reason={}",
            conn.who(),
            std::process::id(),
            crate::logging::quote(&reason)
        );
        return EXIT_FAILED;
    }
    exit_status(panic::catch_unwind(AssertUnwindSafe(|| {
        work.serve(conn, settings)
    })))
}

/// Leaves without running an atexit handler or a destructor of the state copied from the
/// supervisor, which this process does not own.
fn exit(code: i32) -> ! {
    crate::raw::exit(code)
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

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn consecutive_descriptors_make_one_run() {
        let all = |fds: &[i32]| runs(fds.iter().copied()).collect::<Vec<_>>();
        assert_eq!(all(&[]), []);
        assert_eq!(all(&[5, 6, 7]), [(5, 7)]);
        assert_eq!(all(&[3, 5, 6, 9]), [(3, 3), (5, 6), (9, 9)]);
        // Out of order: still every number, in fewer merges.
        assert_eq!(all(&[7, 5, 6]), [(7, 7), (5, 6)]);
    }
}
