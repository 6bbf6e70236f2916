//! How a connection is isolated: a forked process (the default, see [`crate::child`]) or a
//! thread of the supervisor's process (`--model thread`), with the same handlers.
//!
//! A thread cannot be killed safely, so what needs killing or per-process limits
//! (`--max-lifetime`, `--rlimit-*`, `--nice`) and the exec handler, which replaces the process,
//! are refused at start with `--model thread`. A thread reports its end on a channel and wakes
//! the supervisor's poll loop by raising SIGCHLD, as a child's end would.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::child::{EXIT_CLEAN, EXIT_FAILED, EXIT_PANIC};
use crate::cli::Config;
use crate::conn::Connection;
use crate::handler::{Handler, HandlerName, Outcome};
use crate::listen::{ACCEPTED_SOCKETS_INHERIT, configure_accepted};
use crate::signals::Waker;

/// `--model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// One forked process per connection.
    Fork,
    /// One thread per connection, in the supervisor's process.
    Thread,
}

/// The flags `--model thread` cannot honour, with why; `Err` names the first one given.
pub fn check(config: &Config) -> Result<(), String> {
    if config.model == Model::Fork {
        return Ok(());
    }
    let limits = config.child_limits;
    let refused = [
        (
            config.max_lifetime.is_some(),
            "--max-lifetime",
            "a thread cannot be killed safely",
        ),
        (
            limits.address_space.is_some(),
            "--rlimit-as",
            "resource limits are per process",
        ),
        (
            limits.cpu_seconds.is_some(),
            "--rlimit-cpu",
            "resource limits are per process",
        ),
        (
            limits.open_files.is_some(),
            "--rlimit-nofile",
            "resource limits are per process",
        ),
        (
            limits.nice.is_some(),
            "--nice",
            "priority is per process here",
        ),
        (
            config.handler == HandlerName::Exec,
            "--handler exec",
            "it replaces the process serving the connection",
        ),
    ];
    match refused.iter().find(|(given, _, _)| *given) {
        Some((_, flag, why)) => Err(format!("{flag} cannot apply to --model thread: {why}")),
        None => Ok(()),
    }
}

/// Threads serving connections.
pub struct Threads {
    next_id: u64,
    done_tx: Sender<(u64, i32)>,
    done_rx: Receiver<(u64, i32)>,
    waker: Waker,
    keepalive: bool,
}

impl Threads {
    pub fn new(waker: Waker, keepalive: bool) -> Threads {
        let (done_tx, done_rx) = channel();
        Threads {
            next_id: 1,
            done_tx,
            done_rx,
            waker,
            keepalive,
        }
    }

    /// Starts a thread serving `conn`; its number. If the thread cannot start, the connection
    /// is dropped with it.
    pub fn spawn(&mut self, conn: Connection, handler: &Arc<dyn Handler>) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let handler = Arc::clone(handler);
        let done = self.done_tx.clone();
        let waker = self.waker;
        let keepalive = self.keepalive;
        std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    if !ACCEPTED_SOCKETS_INHERIT
                        && configure_accepted(&conn.stream, keepalive).is_err()
                    {
                        return Outcome::Failed;
                    }
                    handler.serve(conn)
                }));
                let code = match outcome {
                    Ok(Outcome::Clean) => EXIT_CLEAN,
                    Ok(Outcome::Failed) => EXIT_FAILED,
                    Err(_) => EXIT_PANIC,
                };
                let _ = done.send((id, code));
                waker.wake();
            })
            .map(|_| id)
    }

    /// Threads that have finished since the last call: (number, exit-status equivalent).
    pub fn finished(&self) -> Vec<(u64, i32)> {
        self.done_rx.try_iter().collect()
    }
}
