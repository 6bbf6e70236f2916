//! A protocol-v1 conversation: read requests, answer each in order, end cleanly.
//!
//! The session owns everything the protocol says regardless of handler: PING is answered with
//! PONG carrying the same payload; a frame a client may not send, an oversize header, an
//! unknown kind, a stream cut inside a frame or a peer idle past `--idle-timeout` is answered
//! with an ERROR frame, logged, and the connection closed so that the ERROR still reaches the
//! peer. A [`FramedHandler`] only decides what a DATA request gets.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::Outcome;
use super::framed::{FramedHandler, Reply, append_error, write_out};
use crate::conn::{Connection, Stream};
use crate::frame::{Decoder, ErrorCode, Kind, header};
use crate::logging::quote;

/// Settings every protocol-v1 conversation shares, taken when it starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProtocolSettings {
    pub max_frame: u32,
    /// How long a complete request may take to arrive after the last reply; `None`: forever.
    pub idle_timeout: Option<Duration>,
}

/// Runs the conversation to its end: every complete request in what has arrived is answered,
/// the answers leave in one write, and only then does the session read (and wait) again.
pub(crate) fn serve(
    conn: Connection,
    settings: ProtocolSettings,
    handler: &mut dyn FramedHandler,
) -> Outcome {
    let Connection {
        stream,
        peer,
        timeout,
        ..
    } = conn;
    // What the socket came with from its listener, if it is the idle limit.
    let preset = timeout.filter(|t| Some(*t) == settings.idle_timeout);
    if let Some(idle) = settings.idle_timeout
        && preset.is_none()
    {
        // A peer that takes no reply for this long is as idle as one that sends nothing.
        let _ = stream.set_write_timeout(Some(idle));
    }
    let mut timed = IdleClock {
        stream,
        deadline: None,
        idle: settings.idle_timeout,
        timeout_set: preset,
    };
    let mut decoder = Decoder::new(settings.max_frame);
    let mut out: Vec<u8> = Vec::new();
    let failure = 'conversation: loop {
        loop {
            let (kind, payload) = match decoder.decode_borrowed() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'conversation Failure::Protocol(e.code(), e.to_string()),
            };
            match kind {
                Kind::Data => handler.request(payload, Reply::new(&mut out, &mut timed)),
                Kind::Ping => {
                    out.extend_from_slice(&header(Kind::Pong, payload.len()));
                    out.extend_from_slice(payload);
                }
                Kind::Error | Kind::Pong => {
                    break 'conversation Failure::Protocol(
                        ErrorCode::UnknownKind,
                        format!(
                            "kind 0x{:02x} ({}) is not a request",
                            kind as u8,
                            kind.name()
                        ),
                    );
                }
            }
        }
        if let Err(e) = write_out(&mut timed, &mut out) {
            break Failure::Io("write", e);
        }
        // The clock starts after the last reply; bytes of a partial frame do not reset it.
        if decoder.buffered() == 0 {
            timed.deadline = settings.idle_timeout.map(|idle| Instant::now() + idle);
        }
        match decoder.read_from(&mut timed) {
            Ok(0) => match decoder.finish() {
                // A half-close at a frame boundary: every reply was written before this read.
                Ok(()) => return Outcome::Clean,
                Err(e) => break Failure::Protocol(e.code(), e.to_string()),
            },
            Ok(_) => {}
            Err(e) if timed_out(&e) => {
                let idle = settings.idle_timeout.unwrap_or_default();
                break Failure::Protocol(
                    ErrorCode::Timeout,
                    format!("idle timeout: no complete frame in {}s", idle.as_secs_f64()),
                );
            }
            Err(e) => break Failure::Io("read", e),
        }
    };
    let reason = match failure {
        Failure::Protocol(code, reason) => {
            // The replies to the requests before the error go out first, then the ERROR.
            append_error(&mut out, code, &reason);
            let mut stream: Stream = timed.stream;
            let sent = write_out(&mut stream, &mut out);
            stream.close_after_error();
            format!(
                "code={} reason={}{}",
                code as u16,
                quote(&reason),
                if sent.is_ok() {
                    ""
                } else {
                    " error_frame=undelivered"
                }
            )
        }
        Failure::Io(op, e) => format!("reason={}", quote(&format!("{op}: {e}"))),
    };
    log::info!("error peer={peer} pid={} {reason}", std::process::id());
    Outcome::Failed
}

enum Failure {
    Protocol(ErrorCode, String),
    Io(&'static str, io::Error),
}

/// A read timeout shows as EAGAIN (or ETIMEDOUT) on a blocking socket.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The connection with the idle clock: no read waits (much) past `deadline`.
struct IdleClock {
    stream: Stream,
    deadline: Option<Instant>,
    idle: Option<Duration>,
    /// The read timeout last given to the kernel.
    timeout_set: Option<Duration>,
}

impl Read for IdleClock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let (Some(deadline), Some(idle)) = (self.deadline, self.idle) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // The kernel's timeout is refreshed only when it runs more than a tenth of the idle
            // limit past what is left: a frame that arrives in one read (the usual case) costs
            // no extra system call, and a dribbling peer is cut off within 10% of the limit.
            let stale = self.timeout_set.is_none_or(|set| set > left + idle / 10);
            if stale {
                self.stream.set_read_timeout(Some(left))?;
                self.timeout_set = Some(left);
            }
        }
        self.stream.read(buf)
    }
}

impl Write for IdleClock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
