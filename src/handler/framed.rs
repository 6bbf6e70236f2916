//! A protocol-v1 conversation: read requests, answer each in order, end cleanly.
//!
//! The session owns everything the protocol says regardless of handler: PING is answered with
//! PONG carrying the same payload; a frame a client may not send, an oversize header, an
//! unknown kind, a stream cut inside a frame or a peer idle past `--idle-timeout` is answered
//! with an ERROR frame, logged, and the connection closed so that the ERROR still reaches the
//! peer. A [`Responder`] only decides what a DATA request gets.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::{Outcome, ProtocolSettings};
use crate::conn::{Connection, Stream};
use crate::frame::{ErrorCode, Frame, FrameReader, Kind, ReadError, write_frame};
use crate::logging::quote;

/// The answer to one DATA request.
pub enum Reply {
    Data(Vec<u8>),
    /// An ERROR for this request only; the conversation goes on.
    Error(ErrorCode, String),
}

/// What a handler does with the payload of each DATA frame.
pub trait Responder {
    fn on_data(&mut self, payload: Vec<u8>) -> Reply;
}

/// Runs the conversation to its end.
pub fn serve(
    conn: Connection,
    settings: ProtocolSettings,
    responder: &mut dyn Responder,
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
    let timed = IdleClock {
        stream,
        deadline: None,
        idle: settings.idle_timeout,
        timeout_set: preset,
    };
    let mut reader = FrameReader::new(timed, settings.max_frame);
    let failure = loop {
        // The clock starts after the last reply; bytes of a partial frame do not reset it.
        reader.get_mut().deadline = settings.idle_timeout.map(|idle| Instant::now() + idle);
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            // A half-close at a frame boundary: every reply was written before this read.
            Ok(None) => return Outcome::Clean,
            Err(ReadError::Protocol(e)) => break Failure::Protocol(e.code(), e.to_string()),
            Err(ReadError::Io(e)) if timed_out(&e) => {
                let idle = settings.idle_timeout.unwrap_or_default();
                break Failure::Protocol(
                    ErrorCode::Timeout,
                    format!("idle timeout: no complete frame in {}s", idle.as_secs_f64()),
                );
            }
            Err(ReadError::Io(e)) => break Failure::Io("read", e),
        };
        let written = match frame.kind {
            Kind::Data => match responder.on_data(frame.payload) {
                Reply::Data(payload) => write_frame(reader.get_mut(), Kind::Data, &payload),
                Reply::Error(code, message) => {
                    Frame::error(code, &message).write_to(reader.get_mut())
                }
            },
            Kind::Ping => write_frame(reader.get_mut(), Kind::Pong, &frame.payload),
            Kind::Error | Kind::Pong => {
                break Failure::Protocol(
                    ErrorCode::UnknownKind,
                    format!(
                        "kind 0x{:02x} ({}) is not a request",
                        frame.kind as u8,
                        frame.kind.name()
                    ),
                );
            }
        };
        if let Err(e) = written {
            break Failure::Io("write", e);
        }
    };
    let reason = match failure {
        Failure::Protocol(code, reason) => {
            let mut stream: Stream = reader.into_inner().stream;
            let sent = Frame::error(code, &reason).write_to(&mut stream);
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
