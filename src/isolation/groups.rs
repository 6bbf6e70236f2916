//! The process groups of programs workers run per request (frame-exec), in memory the
//! supervisor shares with every worker, so that a worker ended from outside (`--max-lifetime`,
//! the end of the grace period) takes its program's whole group with it: the program is tied
//! to its worker (PR_SET_PDEATHSIG), but what the program started is not.
//!
//! One slot per running program: the worker's thread id (a worker process's pid) and the
//! program's group. A worker fills a slot before its program runs and empties it once the
//! program is reaped; the supervisor reads them when it ends a worker, and empties what a
//! worker left when it collects it. Slots are atomics in one `MAP_SHARED` mapping made before
//! the first fork; nothing here allocates or locks, in any process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

struct Slot {
    worker: AtomicI32,
    group: AtomicI32,
}

static TABLE: OnceLock<super::Shared<Slot>> = OnceLock::new();

/// The slots, empty before [`prepare`].
fn slots() -> &'static [Slot] {
    TABLE.get().map_or(&[], |t| t.slots)
}

/// Slots at most: 512 KiB of table, each scanned when a worker ends. Past this many workers
/// running programs at once, the programs of the others are still tied to their workers
/// (PR_SET_PDEATHSIG) but what they started is not tracked.
const MAX_SLOTS: usize = 65_536;

/// Makes the shared slots, room for `workers` programs at once (one per worker, up to
/// [`MAX_SLOTS`]). Once, in the supervisor, before any worker starts; later calls keep the
/// first table.
pub(crate) fn prepare(workers: usize) {
    // SAFETY: a slot is two atomics, all zero an empty slot; shared, so a forked worker's
    // writes reach the supervisor.
    TABLE.get_or_init(|| unsafe { super::shared_table(workers.clamp(1, MAX_SLOTS)) });
}

/// Takes over the table the previous image made (an upgrade in place), which its workers
/// still fill: their programs' groups are ended with them as before.
pub(crate) fn adopt(fd: std::os::fd::RawFd) {
    // SAFETY: the memfd of a table of slots, made by [`prepare`] in the previous image.
    TABLE.get_or_init(|| unsafe { super::map_table(fd) });
}

/// The table's memfd, for the next image; `None` when there is no table.
pub(crate) fn table_fd() -> Option<std::os::fd::RawFd> {
    TABLE.get().map(|t| t.fd).filter(|fd| *fd >= 0)
}

/// The calling worker thread's id (a worker process's pid).
fn me() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// In a worker: its program's group is `group` until [`program_ended`].
pub(crate) fn program_started(group: Pid) {
    let me = me();
    let slots = slots();
    for slot in slots {
        if slot
            .worker
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.group.store(group.as_raw(), Ordering::Release);
            return;
        }
    }
}

/// In a worker: its program was reaped.
pub(crate) fn program_ended() {
    release(me());
}

/// Empties the slot of `worker`, if it has one.
fn release(worker: i32) {
    for slot in slots() {
        if slot.worker.load(Ordering::Acquire) == worker {
            slot.group.store(0, Ordering::Release);
            slot.worker.store(0, Ordering::Release);
        }
    }
}

/// In the supervisor, while `worker` is alive: sends `signal` to the group of the program it
/// runs, if any, and returns that group (checked: see [`signal_group`]), for a later signal
/// once the worker is gone and the check can no longer be made.
/// The group of the program `worker` runs, if it has one and it checks out (see
/// [`signal_group`]), without signalling it.
pub(crate) fn program_of(worker: i32) -> Option<i32> {
    slots()
        .iter()
        .filter(|slot| slot.worker.load(Ordering::Acquire) == worker)
        .map(|slot| slot.group.load(Ordering::Acquire))
        .find(|group| *group > 1 && leads_group_under(*group, worker))
}

pub(crate) fn signal_program_of(worker: i32, signal: Signal) -> Option<i32> {
    let mut signalled = None;
    for slot in slots() {
        if slot.worker.load(Ordering::Acquire) == worker {
            let group = slot.group.load(Ordering::Acquire);
            if signal_group(group, worker, signal) {
                signalled = Some(group);
            }
        }
    }
    signalled
}

/// Sends `signal` to process group `group` if it is what a slot may name: the group a child
/// of `parent` leads (so `parent` must be alive: a dead worker's children have another
/// parent). Whether it was sent. A slot is memory every worker can write (a worker taken over, or a
/// program that ptraced it, could name group 1, which is every process, or any other): the
/// supervisor signals nothing it has not checked.
fn signal_group(group: i32, parent: i32, signal: Signal) -> bool {
    group > 1 && leads_group_under(group, parent) && killpg(Pid::from_raw(group), signal).is_ok()
}

/// Whether process `pid` leads its own process group and is a child of `parent`, as
/// /proc/PID/stat says (`pid (comm) state ppid pgrp ...`; comm may hold anything, so the
/// fields are read after its last parenthesis).
fn leads_group_under(pid: i32, parent: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = after.split_whitespace().skip(1);
    let ppid = fields.next().and_then(|f| f.parse::<i32>().ok());
    let pgrp = fields.next().and_then(|f| f.parse::<i32>().ok());
    ppid == Some(parent) && pgrp == Some(pid)
}

/// In the supervisor, once `worker` is collected: forgets its slot (a worker killed while
/// its program ran never emptied it).
pub(crate) fn worker_ended(worker: i32) {
    release(worker);
}

/// In the supervisor, at the very end: kills every program group still registered (the
/// thread model, whose workers cannot be killed one by one).
pub(crate) fn kill_all_programs() {
    // In the thread model a program is the supervisor's own child.
    let supervisor = std::process::id() as i32;
    for slot in slots() {
        signal_group(
            slot.group.load(Ordering::Acquire),
            supervisor,
            Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::process::CommandExt;

    #[test]
    fn only_a_group_a_child_leads_is_signalled() {
        let child = std::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        assert!(leads_group_under(pid, me));
        // Not under another parent, not a group it does not lead, not group 1.
        assert!(!leads_group_under(pid, 1));
        assert!(!leads_group_under(me, me));
        signal_group(1, me, Signal::SIGCONT);
        signal_group(pid, me, Signal::SIGKILL);
        let mut child = child;
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
