//! Rejected connections on their way out.
//!
//! A peer usually sends its first request right after connecting, and closing a socket with
//! unread input makes the kernel send a reset that can destroy the ERROR frame written just
//! before. So a rejected connection gets its ERROR (non-blocking, best effort), a half-close,
//! and stays in the supervisor's poll set for a short drain of what the peer still sends,
//! bounded in time, in bytes and in the number of sockets draining at once. Nothing here ever
//! blocks the supervisor.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use crate::conn::Stream;
use crate::frame::Frame;

/// How long a rejected connection may take to close its side.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How much of a rejected peer's input is read and thrown away at most.
const DRAIN_BYTES: usize = 64 * 1024;
/// Sockets draining at once; past this the oldest is closed outright.
pub(crate) const MAX_DRAINING: usize = 128;

struct Draining {
    stream: Stream,
    deadline: Instant,
    drained: usize,
}

#[derive(Default)]
pub struct Drains {
    list: Vec<Draining>,
}

impl Drains {
    /// Sends `error` without blocking, half-closes, and keeps the socket to drain.
    pub fn reject(&mut self, mut stream: Stream, error: &Frame, now: Instant) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        // One write of a few dozen bytes into an empty socket buffer: whole, or not at all.
        let _ = stream.write(&error.encode());
        if stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        if self.list.len() >= MAX_DRAINING {
            self.list.remove(0);
        }
        self.list.push(Draining {
            stream,
            deadline: now + DRAIN_TIME,
            drained: 0,
        });
    }

    /// A socket the previous image was draining (an upgrade in place), drained afresh.
    pub fn adopt(&mut self, stream: Stream, now: Instant) {
        if self.list.len() < MAX_DRAINING && stream.set_nonblocking(true).is_ok() {
            self.list.push(Draining {
                stream,
                deadline: now + DRAIN_TIME,
                drained: 0,
            });
        }
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The sockets to poll for input, in the order [`Drains::service`] takes indices in.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.list.iter().map(|d| d.stream.as_fd())
    }

    /// Descriptors a new child must close.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.list.iter().map(|d| d.stream.as_raw_fd()).collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|d| d.deadline).min()
    }

    /// Reads and discards from the sockets at `ready` (indices into [`Drains::fds`]); closes
    /// those that reached EOF, an error, their byte budget or their deadline.
    pub fn service(&mut self, ready: &[usize], now: Instant) {
        let mut done = vec![false; self.list.len()];
        for &i in ready {
            done[i] = drain_some(&mut self.list[i]);
        }
        let mut index = 0;
        self.list.retain(|d| {
            let keep = !done[index] && d.deadline > now;
            index += 1;
            keep
        });
    }

    /// Closes every draining socket (shutdown).
    pub fn clear(&mut self) {
        self.list.clear();
    }
}

/// Reads what is there without blocking; true when the socket is finished with.
fn drain_some(d: &mut Draining) -> bool {
    let mut scratch = [0u8; 8192];
    loop {
        match d.stream.read(&mut scratch) {
            Ok(0) => return true,
            Ok(n) => {
                d.drained += n;
                if d.drained >= DRAIN_BYTES {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}
