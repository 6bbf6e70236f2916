//! The idle clock of a protocol-v1 conversation, kept by the kernel's socket timeouts.
//!
//! Reading: a complete request must arrive within `--idle-timeout` of the last reply, however
//! it is split across reads. Writing: a batch of replies must be taken in full by the peer
//! within `--idle-timeout` of its first write, however slowly the peer reads (a reader that
//! takes 8 KiB every few seconds would otherwise renew a per-write timeout forever).
//!
//! Both deadlines are absolute. The kernel's timeout (SO_RCVTIMEO, SO_SNDTIMEO) is set to
//! what is left only when it is stale by more than a tenth of the limit, so the usual frame,
//! read or written in one call, costs no extra system call; a wait the kernel ends early is
//! resumed, never taken for expiry.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::conn::Stream;
use crate::isolation::tally::Counter;

/// The connection with its idle clock.
pub(crate) struct IdleClock {
    pub(crate) stream: Stream,
    idle: Option<Duration>,
    /// When a complete request must have arrived (set after each reply).
    read_deadline: Option<Instant>,
    /// When the replies being written must have been taken (set at the first write of a
    /// batch, cleared by `flush` once the batch is written).
    write_deadline: Option<Instant>,
    read_timeout_set: Option<Duration>,
    write_timeout_set: Option<Duration>,
    /// Where the bytes read and written are counted.
    tally: Option<&'static Counter>,
}

impl IdleClock {
    /// `preset`: the timeout the socket came with from its listener (both directions).
    /// `tally`: where to count the bytes read and written.
    pub(crate) fn new(
        stream: Stream,
        idle: Option<Duration>,
        preset: Option<Duration>,
        tally: Option<&'static Counter>,
    ) -> Self {
        IdleClock {
            stream,
            idle,
            read_deadline: None,
            write_deadline: None,
            read_timeout_set: preset,
            write_timeout_set: preset,
            tally,
        }
    }

    /// Starts the wait for the next request.
    pub(crate) fn start_idle(&mut self) {
        self.read_deadline = self.idle.map(|idle| Instant::now() + idle);
    }
}

/// Runs `io` (one read or one write on `stream`) so that it ends by `deadline`: the kernel's
/// timeout (given through `set`, and remembered in `timeout_set`) is refreshed to what is
/// left when the one given last is stale, and a wait the kernel ends early is resumed;
/// `TimedOut` once the deadline has passed.
fn within<T>(
    deadline: Instant,
    idle: Duration,
    timeout_set: &mut Option<Duration>,
    stream: &mut Stream,
    set: fn(&Stream, Option<Duration>) -> io::Result<()>,
    mut io: impl FnMut(&mut Stream) -> io::Result<T>,
) -> io::Result<T> {
    let slack = idle / 10;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let stale = timeout_set.is_none_or(|t| t > left + slack || t + slack < left);
        if stale {
            set(stream, Some(left))?;
            *timeout_set = Some(left);
        }
        match io(stream) {
            // Woken before the deadline (a timeout set for an earlier, longer wait): wait
            // for what is left.
            Err(e) if is_timeout(&e) => *timeout_set = None,
            other => return other,
        }
    }
}

/// A timeout shows as EAGAIN (or ETIMEDOUT) on a blocking socket.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for IdleClock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = match (self.read_deadline, self.idle) {
            (Some(deadline), Some(idle)) => within(
                deadline,
                idle,
                &mut self.read_timeout_set,
                &mut self.stream,
                Stream::set_read_timeout,
                |stream| stream.read(buf),
            ),
            _ => self.stream.read(buf),
        };
        if let (Ok(n), Some(tally)) = (&read, self.tally) {
            tally.add_read(*n);
        }
        read
    }
}

impl Write for IdleClock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = match self.idle {
            Some(idle) => {
                let deadline = *self
                    .write_deadline
                    .get_or_insert_with(|| Instant::now() + idle);
                within(
                    deadline,
                    idle,
                    &mut self.write_timeout_set,
                    &mut self.stream,
                    Stream::set_write_timeout,
                    |stream| stream.write(buf),
                )
            }
            None => self.stream.write(buf),
        };
        if let (Ok(n), Some(tally)) = (&written, self.tally) {
            tally.add_written(*n);
        }
        written
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(first) => self.write(first),
            None => Ok(0),
        }
    }

    /// The batch is written: the next write starts a new deadline.
    fn flush(&mut self) -> io::Result<()> {
        self.write_deadline = None;
        Ok(())
    }
}
