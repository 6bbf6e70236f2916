//! Shutdown on SIGTERM or SIGINT: stop accepting, give running conversations the grace
//! period, end the rest. A second SIGTERM or SIGINT ends the grace period at once.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Supervisor;

impl Supervisor {
    /// Stops accepting, lets workers finish for the grace period, kills the rest.
    pub(super) fn shut_down(&mut self, sig: Signal) {
        for listener in self.listeners.drain(..) {
            listener.remove_socket_file();
        }
        self.drains.clear();
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
        while self.workers.len() > 0 {
            let now = Instant::now();
            if deadline <= now {
                break;
            }
            self.workers.enforce_lifetimes(now);
            let until = [Some(deadline), self.next_timer()]
                .into_iter()
                .flatten()
                .min();
            if self.wait(false, until).signals {
                let signals = self.signals.drain();
                let again = [Signal::SIGTERM, Signal::SIGINT]
                    .into_iter()
                    .find(|s| signals.contains(*s));
                self.reap();
                if let Some(again) = again {
                    log::info!("stop signal={} grace=ended", again.as_str());
                    break;
                }
            }
        }
        let remaining = self.workers.len();
        let work = self.work.clone();
        let admission = &mut self.admission;
        let killed = self.workers.kill_all(|active, id, record, how| {
            admission.ended(&record.peer);
            super::log_end(&work, active, self.max_children, &record, id, how);
        });
        if remaining > killed {
            // A thread cannot be killed: leaving ends the process, and every thread with it.
            log::warn!(
                "stop threads={} reason=\"grace over: threads end with the process\"",
                remaining - killed
            );
        }
        self.relays.finish_all();
        log::log!(
            self.lifecycle,
            "stop served={} killed={killed}",
            self.accepted_total
        );
    }
}
