//! The descriptors of one poll, kept from poll to poll: after a fork every heap page the
//! supervisor writes is a copy-on-write fault, so the loop does not allocate per connection.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// What one poll reported. Ready listeners are read from the poll set itself, so the
/// common wake-up (a signal, a connection) allocates nothing.
#[derive(Default)]
pub(super) struct Ready {
    pub signals: bool,
    pub drains: Vec<usize>,
    /// Connections waiting for a PROXY header that poll reported, and whether their peer hung
    /// up (or reset).
    pub headers: Vec<(usize, bool)>,
    pub relays: Vec<usize>,
}

/// The descriptors of one poll, in a buffer kept from poll to poll: after a fork every heap
/// page the supervisor writes is a copy-on-write fault, so the loop does not allocate per
/// connection. Order: the signal descriptor, the listeners (while accepting), draining
/// sockets, connections waiting for a PROXY header, stderr relays.
#[derive(Default)]
pub(super) struct PollSet {
    pub fds: Vec<libc::pollfd>,
    pub listeners: usize,
}

impl PollSet {
    pub(super) fn push(&mut self, fd: BorrowedFd<'_>) {
        self.push_for(fd, libc::POLLIN);
    }

    /// For input and for the peer's end of the stream (POLLRDHUP), which SO_RCVLOWAT cannot
    /// hold back: once a peer has closed, poll reports the socket at every call, and only
    /// this bit tells that from new bytes.
    pub(super) fn push_watching_hangup(&mut self, fd: BorrowedFd<'_>) {
        self.push_for(fd, libc::POLLIN | libc::POLLRDHUP);
    }

    fn push_for(&mut self, fd: BorrowedFd<'_>, events: libc::c_short) {
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        });
    }

    pub(super) fn readable(&self, index: usize) -> bool {
        self.fds[index].revents != 0
    }

    /// Whether listener `index` has a connection waiting.
    pub(super) fn listener_ready(&self, index: usize) -> bool {
        index < self.listeners && self.readable(1 + index)
    }

    /// The readable entries of `range`, as indices from its start, each with whether its peer
    /// hung up or reset (POLLRDHUP, POLLHUP, POLLERR).
    pub(super) fn ready_or_hung_up_in(&self, range: std::ops::Range<usize>) -> Vec<(usize, bool)> {
        const HUNG_UP: libc::c_short = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
        let start = range.start;
        range
            .filter(|i| self.readable(*i))
            .map(|i| (i - start, self.fds[i].revents & HUNG_UP != 0))
            .collect()
    }

    /// The readable entries of `range`, as indices from its start.
    pub(super) fn ready_in(&self, range: std::ops::Range<usize>) -> Vec<usize> {
        let start = range.start;
        range
            .filter(|i| self.readable(*i))
            .map(|i| i - start)
            .collect()
    }
}

/// poll()'s timeout in milliseconds, -1 for none.
pub(super) fn poll_timeout(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        // Round up: a sub-millisecond remainder must not become a busy zero timeout.
        Some(d) => d.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int,
    }
}
