//! The fields a connection's log lines share (` active=N/MAX`, ` bytes_in= bytes_out=`) and
//! the `end` line itself, written alike whether a worker was collected, killed at shutdown or
//! served in this process under `--inetd`.

use crate::isolation::tally::Tally;
use crate::isolation::{EXIT_PANIC, Ended};

use super::workers::WorkerRecord;

/// Connections being served out of the limit, `active=N/MAX` in log lines.
pub(super) struct Active(pub(super) usize, pub(super) usize);

impl std::fmt::Display for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// The ` bytes_in=N bytes_out=N` fields of an `end` line: what a protocol-v1 conversation read
/// from its peer and wrote to it. None for a program or a stream handler, whose bytes forkd
/// does not carry.
pub(super) struct Bytes(Option<(u64, u64)>);

impl Bytes {
    /// The counts of `record`'s slot, which is free again.
    pub(super) fn of(tally: &mut Option<Tally>, record: &WorkerRecord) -> Bytes {
        Bytes(
            tally
                .as_mut()
                .zip(record.tally)
                .map(|(t, slot)| t.give_back(slot)),
        )
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((read, written)) => write!(f, " bytes_in={read} bytes_out={written}"),
            None => Ok(()),
        }
    }
}

/// The ` active=N/MAX` field of a connection's lines; none under `--inetd`, where a forkd
/// serves its one connection and a count would say nothing.
pub(super) struct ActiveField(pub(super) Option<Active>);

impl ActiveField {
    /// `active` of `max`, unless under `--inetd`.
    pub(super) fn unless_inetd(inetd: bool, active: usize, max: usize) -> ActiveField {
        ActiveField((!inetd).then_some(Active(active, max)))
    }
}

impl std::fmt::Display for ActiveField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(active) => write!(f, " active={active}"),
            None => Ok(()),
        }
    }
}

/// The `end` line for a worker: a process (`pid=N`) or a thread (`thread=N`).
pub(super) fn log_end(
    is_program: bool,
    record: &WorkerRecord,
    who: &dyn std::fmt::Display,
    how: Ended,
    bytes: Bytes,
    active: ActiveField,
) {
    let duration = record.started.elapsed().as_secs_f64();
    let peer = record.who();
    match how {
        Ended::Exit(EXIT_PANIC) if !is_program => log::warn!(
            "end peer={peer} {who} status=exit:{EXIT_PANIC} reason=panic duration={duration:.3}s{bytes}{active}"
        ),
        Ended::Exit(code) => log::info!(
            target: crate::logging::CONNECTION,
            "end peer={peer} {who} status=exit:{code} duration={duration:.3}s{bytes}{active}"
        ),
        Ended::Signal(sig, core) => log::warn!(
            "end peer={peer} {who} status=signal:{} core={} duration={duration:.3}s{bytes}{active}",
            sig.as_str(),
            if core { "yes" } else { "no" }
        ),
    }
}
