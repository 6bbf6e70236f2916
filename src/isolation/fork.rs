//! The fork model: a process per connection. A forked child runs the handler
//! ([`child`]); a program (the exec handler) is started directly, with posix_spawn
//! where no limit needs a fork. Either is the leader of its own process group.
//!
//! Reaping is by known pid: a wait that only peeks (`WNOWAIT`) names the next ended child,
//! which is reaped if it is one of ours (in the supervisor's worker table). A process this
//! model did not start (an embedder's own child) is never reaped here; while one is waiting,
//! ours are reaped one by one.

use std::collections::HashMap;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use super::child::{self, ChildSetup};
use super::{Ended, Isolation, Job, NotStarted, Running, Started, Termination, WorkerId};
use crate::conn::Connection;

/// Processes serving connections.
pub(crate) struct Fork {
    setup: ChildSetup,
    /// Workers asked to end (SIGTERM at `--max-lifetime`) and not yet collected, with the
    /// group of the program each was running, checked while the worker was alive.
    asked: HashMap<Pid, Option<i32>>,
}

impl Fork {
    /// `setup`: what every child gets; its descriptors are the supervisor's from the start.
    pub(crate) fn new(setup: ChildSetup) -> Fork {
        Fork {
            setup,
            asked: HashMap::new(),
        }
    }

    /// Reaps `pid`, which has ended. A worker that was asked to end may have left members of
    /// its process group (or of its program's) that ignored the SIGTERM: they get the SIGKILL
    /// now, before the reap, while the worker's pid (their group's id) cannot be reused.
    fn reap_ended(&mut self, pid: Pid) -> Option<Ended> {
        if let Some(program) = self.asked.remove(&pid) {
            let _ = killpg(pid, Signal::SIGKILL);
            // The group named when the worker was alive: a number not reused while the group has
            // a member. Its leader (the program) died with the worker (PR_SET_PDEATHSIG); a
            // live process of that number means the group emptied and the number went to
            // another, whose group this is not.
            if let Some(group) = program
                && !std::path::Path::new(&format!("/proc/{group}")).exists()
            {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
        }
        reap(pid, Some(WaitPidFlag::WNOHANG))
    }

    /// The exec handler's program for `conn`, its stderr a pipe for the supervisor to relay.
    fn start_program(
        &mut self,
        program: &crate::handler::program::Prepared,
        conn: Connection,
    ) -> Result<Started, NotStarted> {
        let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pipe) => pipe,
            Err(e) => {
                return Err(NotStarted::Refused {
                    what: "pipe",
                    error: e.to_string(),
                    conn,
                });
            }
        };
        // The write end is the program's now; when the program ends, the relay sees EOF.
        match child::spawn_program(program, conn, &self.setup, write) {
            Ok(pid) => Ok(Started {
                id: WorkerId::Process(pid),
                stderr: Some(read),
            }),
            // The connection is closed: no ERROR frame, the program owns the protocol.
            Err(e) => Err(NotStarted::Lost {
                reason: format!("cannot run {}: {e}", program.name()),
            }),
        }
    }
}

/// Whether `pid` has ended, without reaping it.
fn has_ended(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        return match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(_) => true,
            Err(Errno::EINTR) => continue,
            // ECHILD: reaped by someone else; reaping it reports that.
            Err(_) => true,
        };
    }
}

/// Reaps `pid` if it has ended (or, without WNOHANG, once it has).
fn reap(pid: Pid, flags: Option<WaitPidFlag>) -> Option<Ended> {
    let ended = reap_status(pid, flags);
    if ended.is_some() {
        super::groups::worker_ended(pid.as_raw());
    }
    ended
}

fn reap_status(pid: Pid, flags: Option<WaitPidFlag>) -> Option<Ended> {
    loop {
        return match waitpid(pid, flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(Ended::Exit(code)),
            Ok(WaitStatus::Signaled(_, sig, core)) => Some(Ended::Signal(sig, core)),
            Ok(WaitStatus::StillAlive) => None,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                // ECHILD: someone else reaped it; it is gone all the same.
                log::error!("status pid={pid} reason=\"waitpid: {e}\"");
                Some(Ended::Exit(-1))
            }
        };
    }
}

impl Isolation for Fork {
    fn start(&mut self, conn: Connection, job: &Job<'_>) -> Result<Started, NotStarted> {
        if let Some(program) = job.work.program() {
            return self.start_program(program, conn);
        }
        // SAFETY: the fork model runs in a single-threaded supervisor: `Server::serve`
        // requires it of the embedder, forkd's own supervisor starts no thread, and the
        // thread model never reaches this isolation.
        match unsafe { child::fork_worker(conn, &self.setup, job) } {
            Ok(pid) => Ok(Started {
                id: WorkerId::Process(pid),
                stderr: None,
            }),
            Err((e, conn)) => Err(NotStarted::Refused {
                what: "fork",
                error: e.to_string(),
                conn,
            }),
        }
    }

    fn collect(&mut self, running: &mut dyn Running) {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let next = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => status.pid(),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("status reason=\"waitid: {e}\"");
                    return;
                }
            };
            match next {
                Some(pid) if running.contains(WorkerId::Process(pid)) => {
                    if let Some(how) = self.reap_ended(pid) {
                        running.ended(WorkerId::Process(pid), how);
                    }
                }
                // Not ours, and it stays first in line: ask each of ours instead.
                _ => {
                    for id in running.ids() {
                        if let WorkerId::Process(pid) = id
                            && has_ended(pid)
                            && let Some(how) = self.reap_ended(pid)
                        {
                            running.ended(id, how);
                        }
                    }
                    return;
                }
            }
        }
    }

    fn terminate(&mut self, id: WorkerId, how: Termination) -> bool {
        let WorkerId::Process(pid) = id else {
            return false;
        };
        let signal = match how {
            Termination::Ask => Signal::SIGTERM,
            Termination::Force => Signal::SIGKILL,
        };
        // A program the worker runs per request has a group of its own: signalled first, while
        // the worker is alive and the group can be checked to be its child's.
        let program = super::groups::signal_program_of(pid.as_raw(), signal);
        if how == Termination::Ask {
            self.asked.insert(pid, program);
        }
        // The group is the worker's pid, and the worker is not reaped yet, so the id cannot
        // have been reused. A child that has not reached its setpgid yet has no group: then
        // the process itself.
        if killpg(pid, signal).is_err() {
            let _ = kill(pid, signal);
        }
        true
    }

    fn wait(&mut self, id: WorkerId) -> Option<Ended> {
        let WorkerId::Process(pid) = id else {
            return None;
        };
        self.asked.remove(&pid);
        reap(pid, None)
    }

    fn asked_before(&mut self, id: WorkerId) {
        if let WorkerId::Process(pid) = id {
            self.asked
                .insert(pid, super::groups::program_of(pid.as_raw()));
        }
    }

    fn reconfigure(&mut self, update: &super::ChildUpdate) {
        self.setup.supervisor_fds = update.supervisor_fds.clone();
        self.setup.limits = update.limits;
        self.setup.keepalive = update.keepalive;
    }
}
