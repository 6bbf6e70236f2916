//! A protocol-v1 conversation: read requests, answer each in order, end cleanly.
//!
//! The session owns everything the protocol says regardless of handler: PING is answered with
//! PONG carrying the same payload; a frame a client may not send, an oversize header, an
//! unknown kind, a stream cut inside a frame or a peer idle past `--idle-timeout` is answered
//! with an ERROR frame, logged, and the connection closed so that the ERROR still reaches the
//! peer. A [`FramedHandler`] only decides what a DATA request gets.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use super::Outcome;
use super::clock::IdleClock;
use super::framed::{FramedHandler, Reply, append_error, write_out};
use crate::conn::Connection;
use crate::frame::{Decoder, ErrorCode, Kind, header};
use crate::isolation::tally::Counter;
use crate::logging::quote;

/// Settings every protocol-v1 conversation shares, taken when it starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProtocolSettings {
    pub max_frame: u32,
    /// How long a complete request may take to arrive after the last reply; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// Where this conversation counts the bytes it reads and writes, for its `end` line.
    pub tally: Option<&'static Counter>,
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
        proxied,
        ..
    } = conn;
    // What the socket came with from its listener, if it is the idle limit.
    let preset = timeout.filter(|t| Some(*t) == settings.idle_timeout);
    let mut timed = IdleClock::new(stream, settings.idle_timeout, preset, settings.tally);
    let mut decoder = Decoder::new(settings.max_frame);
    let mut out: Vec<u8> = Vec::new();
    // The clock starts at connect, then again after each batch of replies.
    timed.start_idle();
    let failure = 'conversation: loop {
        let mut answered = false;
        loop {
            let (kind, payload) = match decoder.decode_borrowed() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'conversation Failure::Protocol(e.code(), e.to_string()),
            };
            answered = true;
            match kind {
                Kind::Data => {
                    let reply = Reply::new(&mut out, &mut timed);
                    let answered =
                        panic::catch_unwind(AssertUnwindSafe(|| handler.request(payload, reply)));
                    if let Err(panic) = answered {
                        // The dropped Reply answered ERROR 8: it and the replies before it
                        // reach the peer before the panic goes on to end the worker.
                        let _ = write_out(&mut timed, &mut out);
                        timed.stream.close_after_error();
                        panic::resume_unwind(panic);
                    }
                }
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
            break if timed_out(&e) {
                Failure::SlowReader
            } else {
                Failure::Io("write", e)
            };
        }
        // The clock starts again after a reply, also when the start of the next request came
        // with the last one; bytes of a partial frame alone do not reset it.
        if answered {
            timed.start_idle();
        }
        match decoder.read_uninit(|room| timed.read_into(room)) {
            Ok(0) => match decoder.finish() {
                // A half-close at a frame boundary: every reply was written before this read.
                Ok(()) => return Outcome::Clean,
                Err(e) => break Failure::Protocol(e.code(), e.to_string()),
            },
            Ok(_) => {}
            // A reset between frames, every request answered, ends the conversation as a
            // close does: the peer chose how to hang up. A balancer's health checks hang up
            // so, every few seconds, and must not fill the log with errors.
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionReset && decoder.finish().is_ok() =>
            {
                return Outcome::Clean;
            }
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
    let outcome = match &failure {
        Failure::Protocol(ErrorCode::Timeout, _) | Failure::SlowReader => Outcome::TimedOut,
        Failure::Protocol(..) => Outcome::Broken,
        Failure::Io(..) => Outcome::Failed,
    };
    let reason = match failure {
        Failure::Protocol(code, reason) => {
            // The replies to the requests before the error go out first, then the ERROR.
            append_error(&mut out, code, &reason);
            let sent = write_out(&mut timed, &mut out);
            timed.stream.close_after_error();
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
        Failure::SlowReader => {
            // A peer that does not read would not read an ERROR frame either.
            let idle = settings.idle_timeout.unwrap_or_default();
            let reason = format!("idle timeout: reply not taken in {}s", idle.as_secs_f64());
            format!(
                "code={} reason={} error_frame=undelivered",
                ErrorCode::Timeout as u16,
                quote(&reason)
            )
        }
        Failure::Io(op, e) => format!("reason={}", quote(&format!("{op}: {e}"))),
    };
    let who = crate::conn::Who(&peer, proxied.as_ref().map(|p| p.via));
    log::warn!("error peer={who} pid={} {reason}", std::process::id());
    outcome
}

enum Failure {
    Protocol(ErrorCode, String),
    /// The peer did not take a reply in full within the idle limit.
    SlowReader,
    Io(&'static str, io::Error),
}

/// A read timeout shows as EAGAIN (or ETIMEDOUT) on a blocking socket.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
