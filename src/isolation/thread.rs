//! The thread model: a thread per connection, in the supervisor's process, with the same
//! handlers. For comparison with the fork model (docs/fork-vs-thread.md).
//!
//! A thread cannot be killed safely, so what needs killing or per-process limits
//! (`--max-lifetime`, `--rlimit-*`, `--nice`) and the exec handler, which replaces the process,
//! are refused at start (see [`crate::config::Config::check`]). A thread reports its end on a
//! channel and wakes the supervisor's poll loop by raising SIGCHLD, as a child's end would.
//! The programs a thread starts (frame-exec) are its own to wait for: this model never reaps
//! a process.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender, channel};

use super::{Ended, Isolation, Job, NotStarted, Running, Started, Termination, WorkerId};
use crate::conn::Connection;
use crate::handler::Outcome;
use crate::listen::{ACCEPTED_SOCKETS_INHERIT, configure_accepted};
use crate::signals::Waker;

/// Threads serving connections.
pub(crate) struct Threads {
    next_id: u64,
    done_tx: Sender<(u64, i32)>,
    done_rx: Receiver<(u64, i32)>,
    waker: Waker,
    keepalive: bool,
}

impl Threads {
    pub(crate) fn new(waker: Waker, keepalive: bool) -> Threads {
        let (done_tx, done_rx) = channel();
        Threads {
            next_id: 1,
            done_tx,
            done_rx,
            waker,
            keepalive,
        }
    }
}

impl Isolation for Threads {
    fn start(&mut self, conn: Connection, job: &Job<'_>) -> Result<Started, NotStarted> {
        let id = self.next_id;
        self.next_id += 1;
        let work = job.work.clone();
        let settings = job.settings;
        let done = self.done_tx.clone();
        let waker = self.waker;
        let keepalive = self.keepalive;
        let started = std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    if !ACCEPTED_SOCKETS_INHERIT
                        && configure_accepted(&conn.stream, keepalive).is_err()
                    {
                        return Outcome::Failed;
                    }
                    work.serve(conn, settings)
                }));
                let code = super::exit_status(outcome);
                let _ = done.send((id, code));
                waker.wake();
            });
        match started {
            Ok(_) => Ok(Started {
                id: WorkerId::Thread(id),
                stderr: None,
            }),
            // The thread's closure owned the connection: the peer sees a plain close.
            Err(e) => Err(NotStarted::Lost {
                reason: format!("cannot start a thread: {e}"),
            }),
        }
    }

    fn collect(&mut self, running: &mut dyn Running) {
        for (id, code) in self.done_rx.try_iter() {
            running.ended(WorkerId::Thread(id), Ended::Exit(code));
        }
    }

    fn terminate(&mut self, _id: WorkerId, _how: Termination) -> bool {
        false
    }

    /// A thread ends with the process: there is nothing to wait for.
    fn wait(&mut self, _id: WorkerId) -> Option<Ended> {
        None
    }

    /// Threads do not cross an upgrade (the thread model refuses one).
    fn asked_before(&mut self, _id: WorkerId) {}

    /// A thread closes no descriptor and sets no limit: only keepalive applies.
    fn reconfigure(&mut self, update: &super::ChildUpdate) {
        self.keepalive = update.keepalive;
    }
}
