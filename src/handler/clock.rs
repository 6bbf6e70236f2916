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
//! resumed, never taken for expiry. Moments are read from the monotonic clock by system call
//! (`crate::raw::monotonic`, which says why), as durations since its origin, and a reading is
//! used again until a read or write returns: the deadline set after a reply and the wait for
//! the next request share one reading, the write deadline and the write another (two a
//! request, where each deadline and each wait read the clock before).

use std::io::{self, Write};
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::raw::{self, monotonic};

use crate::conn::Stream;
use crate::isolation::tally::Counter;

/// The connection with its idle clock.
pub(crate) struct IdleClock {
    /// Closed when the clock is dropped (see its Drop).
    pub(crate) stream: ManuallyDrop<Stream>,
    idle: Option<Duration>,
    /// When a complete request must have arrived (set after each reply).
    read_deadline: Option<Duration>,
    /// When the replies being written must have been taken (set at the first write of a
    /// batch, cleared by `flush` once the batch is written).
    write_deadline: Option<Duration>,
    read_timeout_set: Option<Duration>,
    write_timeout_set: Option<Duration>,
    /// Where the bytes read and written are counted.
    tally: Option<&'static Counter>,
    /// The clock as read since the last read or write returned (nothing has waited since).
    now: Option<Duration>,
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
            stream: ManuallyDrop::new(stream),
            idle,
            read_deadline: None,
            write_deadline: None,
            read_timeout_set: preset,
            write_timeout_set: preset,
            tally,
            now: None,
        }
    }

    /// Starts the wait for the next request.
    pub(crate) fn start_idle(&mut self) {
        self.read_deadline = self.idle.map(|idle| now(&mut self.now) + idle);
    }
}

/// The clock's reading in `now`, read first if nothing is there.
fn now(now: &mut Option<Duration>) -> Duration {
    *now.get_or_insert_with(monotonic)
}

/// Runs `io` (one read or one write on `stream`) so that it ends by `deadline`: the kernel's
/// timeout (given through `set`, and remembered in `timeout_set`) is refreshed to what is
/// left when the one given last is stale, and a wait the kernel ends early is resumed;
/// `TimedOut` once the deadline has passed.
fn within<T>(
    deadline: Duration,
    idle: Duration,
    reading: &mut Option<Duration>,
    timeout_set: &mut Option<Duration>,
    stream: &mut Stream,
    set: fn(&Stream, Option<Duration>) -> io::Result<()>,
    mut io: impl FnMut(&mut Stream) -> io::Result<T>,
) -> io::Result<T> {
    let slack = idle / 10;
    loop {
        let left = deadline.saturating_sub(now(reading));
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let stale = timeout_set.is_none_or(|t| t > left + slack || t + slack < left);
        if stale {
            set(stream, Some(left))?;
            *timeout_set = Some(left);
        }
        let done = io(stream);
        *reading = None;
        match done {
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

impl Drop for IdleClock {
    fn drop(&mut self) {
        // The socket is closed by system call, as it is read and written (crate::raw): the C
        // library's close would be one more page of code for each worker to fault in. The
        // stream owns nothing else.
        raw::close(self.stream.as_raw_fd());
    }
}

impl IdleClock {
    /// One read into `room`, which need not be initialized (the kernel writes what it
    /// returns): the decoder reads into its buffer's unused capacity.
    pub(crate) fn read_into(&mut self, room: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        let read = match (self.read_deadline, self.idle) {
            (Some(deadline), Some(idle)) => within(
                deadline,
                idle,
                &mut self.now,
                &mut self.read_timeout_set,
                &mut self.stream,
                Stream::set_read_timeout,
                |stream| raw::recv(stream.as_raw_fd(), room),
            ),
            _ => {
                self.now = None;
                raw::recv(self.stream.as_raw_fd(), room)
            }
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
                let reading = &mut self.now;
                let deadline = *self
                    .write_deadline
                    .get_or_insert_with(|| now(reading) + idle);
                within(
                    deadline,
                    idle,
                    &mut self.now,
                    &mut self.write_timeout_set,
                    &mut self.stream,
                    Stream::set_write_timeout,
                    |stream| stream.write(buf),
                )
            }
            None => {
                self.now = None;
                self.stream.write(buf)
            }
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
