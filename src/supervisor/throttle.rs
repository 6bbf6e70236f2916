//! Log lines that repeat under load, let out at a bounded rate and counted, never dropped
//! silently.

use std::time::{Duration, Instant};

/// `reject` lines logged per second at most; the rest are counted in a summary line.
const REJECT_LINES_PER_SEC: u32 = 20;

/// Lets a repeated log line out at most once a second, with the count of occurrences since.
#[derive(Default)]
pub(super) struct LogThrottle {
    last: Option<Instant>,
    count: u64,
}

impl LogThrottle {
    /// Counts an occurrence; returns the count to log when a line is due.
    pub(super) fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !due {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// At most [`REJECT_LINES_PER_SEC`] `reject` lines a second; the rest are counted and
/// reported in one `reject suppressed=N` line when the second is over, never dropped silently.
#[derive(Default)]
pub(super) struct RejectLog {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl RejectLog {
    /// Whether this rejection gets its own line.
    pub(super) fn admit_line(&mut self, now: Instant) -> bool {
        self.flush_if_due(now);
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(1) {
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines < REJECT_LINES_PER_SEC {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// When the summary of suppressed lines is due, if any are pending.
    pub(super) fn flush_due(&self) -> Option<Instant> {
        if self.suppressed == 0 {
            return None;
        }
        self.window_start.map(|s| s + Duration::from_secs(1))
    }

    pub(super) fn flush_if_due(&mut self, now: Instant) {
        if self.flush_due().is_some_and(|due| due <= now) {
            log::warn!(
                "reject suppressed={} reason=\"more than {REJECT_LINES_PER_SEC} rejections in 1s\"",
                self.suppressed
            );
            self.suppressed = 0;
            self.window_start = None;
            self.lines = 0;
        }
    }
}
