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
//! resumed, never taken for expiry. Moments are durations since the monotonic clock's origin,
//! and a reading is used again until a read or write returns: the deadline set after a reply
//! and the wait for the next request share one reading, the write deadline and the write
//! another (two a request, where each deadline and each wait read the clock before). A
//! conversation's first readings are system calls, later ones the vDSO's (`crate::raw::
//! monotonic` says why): a short conversation runs no code outside the worker's own pages,
//! a long one makes no system call for the time.

use std::io::{self, Write};
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::raw;

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
    clock: Clock,
}

/// The clock's readings for one conversation.
#[derive(Default)]
struct Clock {
    /// The reading taken since the last read or write returned (nothing has waited since).
    reading: Option<Duration>,
    /// How many readings were taken.
    taken: u32,
}

/// Readings by system call before the vDSO's: a churn connection (one request) takes three.
const DIRECT_READINGS: u32 = 8;

impl Clock {
    /// The reading, taken first if there is none.
    fn now(&mut self) -> Duration {
        if let Some(reading) = self.reading {
            return reading;
        }
        let direct = self.taken < DIRECT_READINGS;
        self.taken = self.taken.saturating_add(1);
        *self.reading.insert(raw::monotonic(direct))
    }

    /// A read or write returned: time may have passed.
    fn waited(&mut self) {
        self.reading = None;
    }
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
            clock: Clock::default(),
        }
    }

    /// Starts the wait for the next request.
    pub(crate) fn start_idle(&mut self) {
        self.read_deadline = self.idle.map(|idle| self.clock.now() + idle);
    }
}

/// Runs `io` (one read or one write on `stream`) so that it ends by `deadline`: the kernel's
/// timeout (given through `set`, and remembered in `timeout_set`) is refreshed to what is
/// left when the one given last is stale, and a wait the kernel ends early is resumed;
/// `TimedOut` once the deadline has passed.
fn within<T>(
    deadline: Duration,
    idle: Duration,
    clock: &mut Clock,
    timeout_set: &mut Option<Duration>,
    stream: &mut Stream,
    set: fn(&Stream, Option<Duration>) -> io::Result<()>,
    mut io: impl FnMut(&mut Stream) -> io::Result<T>,
) -> io::Result<T> {
    let slack = idle / 10;
    loop {
        let left = deadline.saturating_sub(clock.now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let stale = timeout_set.is_none_or(|t| t > left + slack || t + slack < left);
        if stale {
            set(stream, Some(left))?;
            *timeout_set = Some(left);
        }
        let done = io(stream);
        clock.waited();
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
                &mut self.clock,
                &mut self.read_timeout_set,
                &mut self.stream,
                Stream::set_read_timeout,
                |stream| raw::recv(stream.as_raw_fd(), room),
            ),
            _ => {
                self.clock.waited();
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
                let clock = &mut self.clock;
                let deadline = *self
                    .write_deadline
                    .get_or_insert_with(|| clock.now() + idle);
                within(
                    deadline,
                    idle,
                    &mut self.clock,
                    &mut self.write_timeout_set,
                    &mut self.stream,
                    Stream::set_write_timeout,
                    |stream| stream.write(buf),
                )
            }
            None => {
                self.clock.waited();
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
