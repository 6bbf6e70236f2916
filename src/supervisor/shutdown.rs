//! Shutdown on SIGTERM or SIGINT: stop accepting, give running conversations the grace
//! period, end the rest. A second SIGTERM or SIGINT ends the grace period at once.
//!
//! Connections the kernel already completed but forkd had not accepted (the backlog) would be
//! reset when the listener closes. They are accepted and answered ERROR 9 "shutting down"
//! with the lingering close of any refusal, so every client learns why; the stop line counts
//! them as `refused=`, with connections from balancers whose PROXY header has not come.
//! Sockets systemd handed over are left alone: systemd keeps them open, and their backlog is
//! served by the next instance.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Origin, Supervisor};
use crate::admission::Refusal;
use crate::frame::ErrorCode;

/// Connections taken from one listener's backlog at shutdown, at most: bounded, so a flood
/// arriving during shutdown cannot keep it from finishing.
const BACKLOG_REFUSED_MAX: usize = 4096;

impl Supervisor {
    /// Stops accepting, lets workers finish for the grace period, kills the rest.
    pub(super) fn shut_down(&mut self, sig: Signal) {
        self.abandon_upgrade();
        let refused = self.refuse_backlog();
        for listener in self.listeners.drain(..) {
            listener.remove_socket_file();
        }
        self.rejects
            .flush_if_due(Instant::now() + Duration::from_secs(3600));
        let status = format!("stopping, {}", self.status());
        if let Some(n) = &mut self.notifier {
            n.stopping(status);
        }
        log::log!(
            self.lifecycle,
            "stop signal={} active={} grace={}s",
            sig.as_str(),
            self.active(),
            self.grace.as_secs_f64()
        );
        let deadline = Instant::now() + self.grace;
        while self.workers.len() > 0 || !self.drains.is_empty() {
            let now = Instant::now();
            if deadline <= now {
                break;
            }
            self.workers.enforce_lifetimes(now);
            let until = [Some(deadline), self.next_timer()]
                .into_iter()
                .flatten()
                .min();
            let ready = self.wait(false, until);
            self.service_io(&ready);
            if ready.signals {
                let again = super::stop_signal(&self.signals.drain());
                self.reap();
                if let Some(again) = again {
                    log::info!("stop signal={} grace=ended", again.as_str());
                    break;
                }
            }
        }
        let remaining = self.workers.len();
        let is_program = self.work.is_program();
        let (max, inetd) = (self.max_children, self.inetd);
        let admission = &mut self.admission;
        let tally = &mut self.tally;
        let killed = self.workers.kill_all(|active, id, record, how| {
            admission.ended(&record.peer);
            let active = super::lines::ActiveField::unless_inetd(inetd, active, max);
            let bytes = super::lines::Bytes::of(tally, &record);
            super::lines::log_end(is_program, &record, &id, how, bytes, active);
        });
        if remaining > killed {
            // A thread cannot be killed: leaving ends the process, and every thread with it.
            log::warn!(
                "stop threads={} reason=\"grace over: threads end with the process\"",
                remaining - killed
            );
        }
        // Programs run per request by workers that could not be killed one by one (threads).
        crate::isolation::groups::kill_all_programs();
        self.relays.finish_all();
        self.drains.clear();
        log::log!(
            self.lifecycle,
            "stop served={} killed={killed} refused={refused}",
            self.accepted_total
        );
    }

    /// Answers ERROR 9 to the connections waiting in the backlogs of forkd's own listeners,
    /// and to those whose PROXY header is still on its way; returns how many.
    fn refuse_backlog(&mut self) -> usize {
        let waiting = self.headers.take_all();
        let mut refused = waiting.len();
        for (conn, origin) in waiting {
            self.reject(conn, origin, shutting_down());
        }
        for index in 0..self.listeners.len() {
            if !self.listeners[index].handed_over() {
                refused += self.refuse_backlog_of(index, shutting_down);
            }
        }
        refused
    }
}

impl Supervisor {
    /// Answers `refusal` to the connections waiting in listener `index`'s backlog, at most
    /// [`BACKLOG_REFUSED_MAX`] (a flood arriving meanwhile cannot keep this going); how many.
    pub(super) fn refuse_backlog_of(
        &mut self,
        index: usize,
        refusal: impl Fn() -> Refusal,
    ) -> usize {
        let mut refused = 0;
        for _ in 0..BACKLOG_REFUSED_MAX {
            let conn = match self.listeners[index].accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(_) => break,
            };
            refused += 1;
            self.reject(conn, Origin::Listener(index), refusal());
        }
        refused
    }
}

fn shutting_down() -> Refusal {
    Refusal {
        code: ErrorCode::ShuttingDown,
        reason: "shutdown",
        message: "server shutting down".to_string(),
    }
}
