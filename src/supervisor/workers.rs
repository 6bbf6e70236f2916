//! The worker table: one record per connection being served, whatever the isolation model,
//! and the lifetimes of those records.
//!
//! Why one table: counting (`active=N/MAX`), per-source accounting, `end` lines and
//! `--max-lifetime` are the same for a process and a thread; only starting, collecting and
//! ending differ, and those are the [`Isolation`]'s. The table is the supervisor's single
//! source of truth for what is running.

use std::collections::{BTreeSet, VecDeque};
use std::hash::RandomState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::own_memory::OwnMemory;
use crate::conn::{Connection, Peer, Who};
use crate::isolation::tally::Slot;
use crate::isolation::{
    ChildUpdate, Ended, Isolation, Job, NotStarted, Running, Started, Termination, WorkerId,
};

/// Between the SIGTERM and the SIGKILL for a worker past `--max-lifetime`.
const LIFETIME_KILL_DELAY: Duration = Duration::from_secs(1);

/// The records by worker, in memory a forked worker does not inherit (written at every
/// connection, read by no worker: see `own_memory`).
type Records = hashbrown::HashMap<WorkerId, WorkerRecord, RandomState, OwnMemory>;

/// A connection being served.
pub(super) struct WorkerRecord {
    pub peer: Peer,
    /// The load balancer it came through, when a PROXY header named the client.
    pub via: Option<SocketAddr>,
    pub started: Instant,
    /// Where its bytes are counted, for a protocol-v1 conversation.
    pub tally: Option<Slot>,
    /// Whether forkd ended it at `--max-lifetime`.
    pub outlived: bool,
    /// When `--max-lifetime` (as it was when the worker started) ends it.
    pub lifetime_ends: Option<Instant>,
}

impl WorkerRecord {
    /// The peer for a log line: `CLIENT` or `CLIENT via=BALANCER`.
    pub(super) fn who(&self) -> Who<'_> {
        Who(&self.peer, self.via)
    }
}

pub(super) struct Workers {
    isolation: Box<dyn Isolation>,
    table: Records,
    max_lifetime: Option<Duration>,
    /// Workers with a lifetime, by the moment it ends: the first is the next to outlive it.
    /// Entries leave when the worker is collected, so this is as small as the table.
    lifetimes: BTreeSet<(Instant, WorkerId)>,
    /// Workers sent SIGTERM for their lifetime, with the moment SIGKILL follows.
    kills_due: VecDeque<(Instant, WorkerId, Instant)>,
}

impl Workers {
    pub(super) fn new(isolation: Box<dyn Isolation>, max_lifetime: Option<Duration>) -> Workers {
        Workers {
            isolation,
            table: Records::with_hasher_in(RandomState::new(), OwnMemory),
            max_lifetime,
            lifetimes: BTreeSet::new(),
            kills_due: VecDeque::new(),
        }
    }

    /// A reload: workers started from now on get `max_lifetime` and `update`; those running
    /// keep the lifetime they started with.
    pub(super) fn reconfigure(&mut self, max_lifetime: Option<Duration>, update: &ChildUpdate) {
        self.max_lifetime = max_lifetime;
        self.isolation.reconfigure(update);
    }

    /// The worker processes and their records (an upgrade hands them over).
    pub(super) fn records(&self) -> impl Iterator<Item = (i32, &WorkerRecord)> {
        self.table.iter().filter_map(|(id, record)| match id {
            WorkerId::Process(pid) => Some((pid.as_raw(), record)),
            _ => None,
        })
    }

    /// A worker process the previous image of this process started (an upgrade in place).
    /// One that was past its lifetime already gets its SIGKILL a moment from now.
    pub(super) fn adopt(&mut self, pid: i32, record: WorkerRecord) {
        let id = WorkerId::Process(nix::unistd::Pid::from_raw(pid));
        if let Some(ends) = record.lifetime_ends {
            self.lifetimes.insert((ends, id));
        }
        if record.outlived {
            self.isolation.asked_before(id);
            self.kills_due
                .push_back((Instant::now() + LIFETIME_KILL_DELAY, id, record.started));
        }
        self.table.insert(id, record);
    }

    /// The peers being served, for counting them afresh.
    pub(super) fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.table.values().map(|r| &r.peer)
    }

    /// Connections being served.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Starts a worker for `conn` and records it, with the slot its bytes are counted in.
    pub(super) fn start(
        &mut self,
        conn: Connection,
        job: &Job<'_>,
        tally: Option<Slot>,
    ) -> Result<Started, NotStarted> {
        let peer = conn.peer.clone();
        let via = conn.proxied.as_ref().map(|p| p.via);
        let started = self.isolation.start(conn, job)?;
        let now = Instant::now();
        let lifetime_ends = self.max_lifetime.map(|lifetime| now + lifetime);
        if let Some(ends) = lifetime_ends {
            self.lifetimes.insert((ends, started.id));
        }
        let record = WorkerRecord {
            peer,
            via,
            started: now,
            tally,
            outlived: false,
            lifetime_ends,
        };
        self.table.insert(started.id, record);
        Ok(started)
    }

    /// The record of a running worker.
    pub(super) fn get(&self, id: &WorkerId) -> Option<&WorkerRecord> {
        self.table.get(id)
    }

    /// Calls `ended` for every worker that has ended since the last call, with its record
    /// (removed from the table) and the number still running.
    pub(super) fn collect(&mut self, ended: impl FnMut(usize, WorkerId, WorkerRecord, Ended)) {
        let mut table = Table {
            table: &mut self.table,
            lifetimes: &mut self.lifetimes,
            ended,
        };
        self.isolation.collect(&mut table);
    }

    /// SIGTERM to workers past `--max-lifetime`, SIGKILL to those still there a moment
    /// later. A process can be ended whatever it is doing, even spinning inside its handler:
    /// the reason to fork.
    pub(super) fn enforce_lifetimes(&mut self, now: Instant) {
        while let Some(&(ends, id)) = self.lifetimes.first() {
            if ends > now {
                break;
            }
            self.lifetimes.pop_first();
            let Some(record) = self.table.get_mut(&id) else {
                continue;
            };
            record.outlived = true;
            let started = record.started;
            self.isolation.terminate(id, Termination::Ask);
            log::warn!(
                "status {id} peer={} action=SIGTERM reason=max-lifetime age={:.3}s",
                self.table[&id].who(),
                started.elapsed().as_secs_f64()
            );
            self.kills_due
                .push_back((now + LIFETIME_KILL_DELAY, id, started));
        }
        while let Some(&(due, id, started)) = self.kills_due.front() {
            if due > now {
                break;
            }
            self.kills_due.pop_front();
            // Ids are reused: only the worker that started then.
            let Some(record) = self.table.get(&id).filter(|r| r.started == started) else {
                continue;
            };
            let who = record.who().to_string();
            self.isolation.terminate(id, Termination::Force);
            log::warn!(
                "status {id} peer={who} action=SIGKILL reason=max-lifetime age={:.3}s",
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// The next moment [`Workers::enforce_lifetimes`] has something to do.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let next_expiry = self.lifetimes.first().map(|(ends, _)| *ends);
        let next_kill = self.kills_due.front().map(|(t, _, _)| *t);
        next_expiry.into_iter().chain(next_kill).min()
    }

    /// Ends every worker that can be ended, waits for them, and calls `ended` for each.
    /// Returns how many were killed.
    pub(super) fn kill_all(
        &mut self,
        ended: impl FnMut(usize, WorkerId, WorkerRecord, Ended),
    ) -> usize {
        let ids: Vec<WorkerId> = self.table.keys().copied().collect();
        let killed: Vec<WorkerId> = ids
            .into_iter()
            .filter(|id| self.isolation.terminate(*id, Termination::Force))
            .collect();
        let mut table = Table {
            table: &mut self.table,
            lifetimes: &mut self.lifetimes,
            ended,
        };
        for id in &killed {
            if let Some(how) = self.isolation.wait(*id) {
                table.ended(*id, how);
            }
        }
        killed.len()
    }
}

/// The table as the isolation reports to it.
struct Table<'a, F> {
    table: &'a mut Records,
    lifetimes: &'a mut BTreeSet<(Instant, WorkerId)>,
    ended: F,
}

impl<F: FnMut(usize, WorkerId, WorkerRecord, Ended)> Running for Table<'_, F> {
    fn contains(&self, id: WorkerId) -> bool {
        self.table.contains_key(&id)
    }

    fn ids(&self) -> Vec<WorkerId> {
        self.table.keys().copied().collect()
    }

    fn ended(&mut self, id: WorkerId, how: Ended) {
        if let Some(record) = self.table.remove(&id) {
            if let Some(ends) = record.lifetime_ends {
                self.lifetimes.remove(&(ends, id));
            }
            (self.ended)(self.table.len(), id, record, how);
        }
    }
}
