//! The framed handler API: a handler answers one request payload at a time, the library owns
//! the protocol around it.
//!
//! A [`Reply`] is taken by value and spent by answering, so every request gets exactly one
//! answer, in order; one dropped unanswered answers ERROR 8 for the handler. Replies are
//! appended to an output buffer that the library writes when no further complete request is
//! waiting, so the answers to pipelined requests leave in one write.

use std::io::{self, Write};

use crate::conn::Connection;
use crate::frame::{ErrorCode, HEADER_LEN, Kind, header};

/// Answers protocol-v1 requests; one value per connection, so it may keep state across the
/// requests of a conversation.
///
/// ```
/// use forkd::{FramedHandler, Reply};
///
/// /// Answers each request with the number of requests seen so far.
/// struct Counter(u64);
///
/// impl FramedHandler for Counter {
///     fn request(&mut self, _payload: &[u8], reply: Reply<'_>) {
///         self.0 += 1;
///         reply.data(self.0.to_string().as_bytes());
///     }
/// }
/// ```
pub trait FramedHandler {
    /// Answers the DATA request `payload` through `reply`: with [`Reply::data`],
    /// [`Reply::data_with`] or [`Reply::error`]. A panic here ends the conversation (and,
    /// under the fork model, only this connection's process).
    fn request(&mut self, payload: &[u8], reply: Reply<'_>);
}

/// Makes the [`FramedHandler`] for each connection, in the process or thread that serves it.
///
/// Implemented for every `Fn(&Connection) -> H` closure, so a server is given
/// `|_conn| MyHandler::default()`, or a closure that looks at the peer.
pub trait NewFramed: Send + Sync + 'static {
    /// The handler for `conn`.
    fn new_handler(&self, conn: &Connection) -> Box<dyn FramedHandler>;
}

impl<F, H> NewFramed for F
where
    F: Fn(&Connection) -> H + Send + Sync + 'static,
    H: FramedHandler + 'static,
{
    fn new_handler(&self, conn: &Connection) -> Box<dyn FramedHandler> {
        Box::new(self(conn))
    }
}

/// The answer to one request, to be given exactly once.
pub struct Reply<'a> {
    out: &'a mut Vec<u8>,
    sink: &'a mut dyn Write,
    answered: bool,
}

impl<'a> Reply<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>, sink: &'a mut dyn Write) -> Reply<'a> {
        Reply {
            out,
            sink,
            answered: false,
        }
    }

    /// Answers with a DATA frame holding `payload`.
    pub fn data(self, payload: &[u8]) {
        // One allocation for header and payload: every heap page a new process writes is
        // a copy-on-write fault, so no growing by steps.
        self.out.reserve(HEADER_LEN + payload.len());
        self.data_with(|p| p.extend_from_slice(payload));
    }

    /// Answers with a DATA frame whose payload `fill` writes: straight into the output
    /// buffer, with no copy of its own.
    pub fn data_with(mut self, fill: impl FnOnce(&mut Payload<'_>)) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0; HEADER_LEN]);
        fill(&mut Payload {
            out: self.out,
            start: start + HEADER_LEN,
        });
        let len = self.out.len() - start - HEADER_LEN;
        if u32::try_from(len).is_err() {
            self.out.truncate(start);
            self.answered = true;
            return append_error(
                self.out,
                ErrorCode::HandlerFailed,
                "reply longer than 4 GiB cannot be framed",
            );
        }
        self.out[start..start + HEADER_LEN].copy_from_slice(&header(Kind::Data, len));
        self.answered = true;
    }

    /// Answers with an ERROR frame; the conversation goes on.
    pub fn error(mut self, code: ErrorCode, message: &str) {
        append_error(self.out, code, message);
        self.answered = true;
    }

    /// Sends the replies to earlier requests now, before this one is answered: for a handler
    /// about to take long over this request. Replies are otherwise sent together once no
    /// complete request is waiting.
    pub fn flush_earlier(&mut self) -> io::Result<()> {
        write_out(self.sink, self.out)
    }
}

impl Drop for Reply<'_> {
    fn drop(&mut self) {
        if !self.answered {
            append_error(
                self.out,
                ErrorCode::HandlerFailed,
                "the handler gave no reply",
            );
        }
    }
}

/// The payload of a DATA reply being written in place.
pub struct Payload<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl Payload<'_> {
    /// Appends bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Appends one byte.
    pub fn push(&mut self, byte: u8) {
        self.out.push(byte);
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Extend<u8> for Payload<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.out.extend(bytes);
    }
}

impl Write for Payload<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends an ERROR frame: the code, then the message.
pub(crate) fn append_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&header(Kind::Error, 2 + message.len()));
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
}

/// Writes everything in `out`, retrying short writes and EINTR, and empties it.
pub(crate) fn write_out(sink: &mut dyn Write, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    // flush() ends the batch: the idle clock times each batch of replies as a whole.
    let written = sink.write_all(out).and_then(|()| sink.flush());
    out.clear();
    written
}
