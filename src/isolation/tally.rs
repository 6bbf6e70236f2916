//! The bytes each protocol-v1 conversation read from its peer and wrote to it, for the `end`
//! line: counters in memory the supervisor shares with every worker (`MAP_SHARED`, made before
//! the first fork), one slot per running worker. The supervisor hands a worker a zeroed slot
//! when it starts it and reads the slot when it collects the worker, so the figures are there
//! however the worker ended (a crash included: they count up to its last read or write).
//! Nothing a worker does here allocates or locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's counts.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counter {
    pub(crate) fn add_read(&self, bytes: usize) {
        self.read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Slots at most (1 MiB of table). Past this many conversations at once, the others' `end`
/// lines go without their byte counts.
const MAX_SLOTS: usize = 65_536;

/// The supervisor's side: the shared slots and which are free.
pub(crate) struct Tally {
    slots: &'static [Counter],
    /// The table's memfd, handed to the next image at an upgrade in place.
    fd: std::os::fd::RawFd,
    /// Slots given back, to be taken again first.
    free: Vec<u32>,
    /// Slots below this have been handed out at least once.
    fresh_from: u32,
}

/// A slot handed to a worker.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot(u32);

impl Slot {
    /// Its place in the table, for the next image at an upgrade.
    pub(crate) fn index(self) -> u32 {
        self.0
    }

    /// The slot at `index` of an adopted table (see [`Tally::adopt`]).
    pub(crate) fn at(index: u32) -> Slot {
        Slot(index)
    }
}

impl Tally {
    /// Room for [`MAX_SLOTS`] conversations at once, whatever `--max-children` is now or
    /// becomes at a reload: pages of the table are only touched as slots are used. An empty
    /// table if the memory cannot be had.
    pub(crate) fn new() -> Tally {
        // SAFETY: a counter is two atomics, all zero a zero count; shared, so a forked
        // worker's counts reach the supervisor.
        let table = unsafe { super::shared_table::<Counter>(MAX_SLOTS) };
        Tally {
            free: Vec::new(),
            fresh_from: 0,
            slots: table.slots,
            fd: table.fd,
        }
    }

    /// The table the previous image made (an upgrade in place), `in_use` the slots of the
    /// workers it handed over, whose counts go on in it.
    pub(crate) fn adopt(fd: std::os::fd::RawFd, in_use: &[u32]) -> Tally {
        // SAFETY: the memfd of a table of counters, made by [`Tally::new`] before the exec.
        let table = unsafe { super::map_table::<Counter>(fd) };
        let mut in_use = in_use.to_vec();
        in_use.sort_unstable();
        let fresh_from = in_use.last().map_or(0, |i| i + 1);
        let fresh_from = fresh_from.min(table.slots.len() as u32);
        Tally {
            free: (0..fresh_from)
                .rev()
                .filter(|i| in_use.binary_search(i).is_err())
                .collect(),
            fresh_from,
            slots: table.slots,
            fd: table.fd,
        }
    }

    /// Gives the table up for the one an upgrade handed over: its memory unmapped and its
    /// memfd closed (workers started before had none of it).
    pub(crate) fn discard(self) {
        if self.fd < 0 {
            return;
        }
        // SAFETY: the mapping and the memfd are this table's own, and nothing else refers to
        // them: the table is consumed, and no worker was given a slot in it.
        unsafe {
            libc::munmap(
                self.slots.as_ptr().cast_mut().cast(),
                std::mem::size_of_val(self.slots),
            );
            libc::close(self.fd);
        }
    }

    /// The table's memfd, for the next image; `None` when the table is empty.
    pub(crate) fn fd(&self) -> Option<std::os::fd::RawFd> {
        (self.fd >= 0).then_some(self.fd)
    }

    /// A zeroed slot for a worker about to start, and its counter; `None` when all are taken.
    pub(crate) fn take(&mut self) -> Option<(Slot, &'static Counter)> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if (self.fresh_from as usize) < self.slots.len() => {
                self.fresh_from += 1;
                self.fresh_from - 1
            }
            None => return None,
        };
        let counter = &self.slots[index as usize];
        counter.read.store(0, Ordering::Relaxed);
        counter.written.store(0, Ordering::Relaxed);
        Some((Slot(index), counter))
    }

    /// The bytes read and written through `slot`, which is free again.
    pub(crate) fn give_back(&mut self, slot: Slot) -> (u64, u64) {
        let counter = &self.slots[slot.0 as usize];
        self.free.push(slot.0);
        (
            counter.read.load(Ordering::Relaxed),
            counter.written.load(Ordering::Relaxed),
        )
    }
}
