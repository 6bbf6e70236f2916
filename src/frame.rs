//! Protocol v1 on the wire: frames, their kinds, ERROR codes, the decoder and the writer.
//!
//! A frame is a 4-byte big-endian payload length N, a 1-byte kind, then N payload bytes.
//! The [`Decoder`] keeps leftover bytes between reads (a header may arrive split, and one read
//! may hold the end of one frame and the start of the next), and judges a header as soon as
//! its five bytes are in: an oversize length or an unknown kind is reported before any of the
//! payload is read or allocated. See docs/protocol.md.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;

/// Bytes in a frame header: length (4) + kind (1).
pub const HEADER_LEN: usize = 5;

/// Default bound on a payload: 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// How much the decoder asks the kernel for at least, per read: at first a little, since most
/// conversations are a few small frames and every page a new child writes costs a page fault
/// (a 512-byte buffer comes from the allocator's per-thread cache; 4 KiB means a trip into
/// the arena and a zeroed page: measured, 3 faults more per connection). Doubled each time a
/// read fills what was asked (the peer pipelines), up to [`READ_CHUNK_MAX`].
const READ_CHUNK_FIRST: usize = 512;
const READ_CHUNK_MAX: usize = 4 * 1024;

/// Most bytes asked of the kernel in one read, however large the frame being received: the
/// buffer grows with what arrives, never with what a header announces.
const READ_MAX: usize = 64 * 1024;

/// A buffer larger than this is given back once everything in it has been decoded, so one
/// large frame does not pin its memory for the rest of a long conversation.
const KEEP_IDLE_BUFFER: usize = 256 * 1024;

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A request (client to server) or its reply (server to client).
    Data = 0x01,
    /// An error: a 2-byte code, then a UTF-8 message.
    Error = 0x02,
    /// A liveness check; answered with PONG carrying the same payload.
    Ping = 0x03,
    /// The answer to PING.
    Pong = 0x04,
}

impl Kind {
    /// The kind a header byte names; `None` for a byte protocol v1 does not define.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            0x01 => Some(Kind::Data),
            0x02 => Some(Kind::Error),
            0x03 => Some(Kind::Ping),
            0x04 => Some(Kind::Pong),
            _ => None,
        }
    }

    /// Its name in upper case, as docs/protocol.md writes it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Data => "DATA",
            Kind::Error => "ERROR",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
        }
    }
}

/// The code at the start of an ERROR payload (2 bytes, big-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// A header announced more than the server's `max_frame`.
    FrameTooLarge = 1,
    /// A kind byte that is not defined, or a kind a client may not send.
    UnknownKind = 2,
    /// The stream ended inside a frame.
    TruncatedFrame = 3,
    /// The server is at a limit (connections, per source) or cannot start a worker.
    Busy = 4,
    /// An admission rule refused the client.
    Denied = 5,
    /// The client opened connections faster than `--rate` allows.
    RateLimited = 6,
    /// No complete request in the idle limit, or a program ran out of time.
    Timeout = 7,
    /// The handler could not answer this request.
    HandlerFailed = 8,
    /// The server is stopping.
    ShuttingDown = 9,
}

impl ErrorCode {
    /// Every code, in order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownKind,
        ErrorCode::TruncatedFrame,
        ErrorCode::Busy,
        ErrorCode::Denied,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::HandlerFailed,
        ErrorCode::ShuttingDown,
    ];

    /// The code for a number on the wire; `None` for an undefined one.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == code)
    }

    /// Short name, as used in documentation and by forkc.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnknownKind => "unknown kind",
            ErrorCode::TruncatedFrame => "truncated frame",
            ErrorCode::Busy => "busy",
            ErrorCode::Denied => "denied",
            ErrorCode::RateLimited => "rate limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::HandlerFailed => "handler failed",
            ErrorCode::ShuttingDown => "shutting down",
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: Kind,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame of `kind` holding `payload`.
    pub fn new(kind: Kind, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            payload: payload.into(),
        }
    }

    /// An ERROR frame: the code, then the message as UTF-8.
    pub fn error(code: ErrorCode, message: &str) -> Frame {
        let mut payload = Vec::with_capacity(2 + message.len());
        payload.extend_from_slice(&(code as u16).to_be_bytes());
        payload.extend_from_slice(message.as_bytes());
        Frame::new(Kind::Error, payload)
    }

    /// The code and message of an ERROR frame; `None` for other kinds or a payload too short
    /// to hold a code.
    pub fn error_parts(&self) -> Option<(u16, String)> {
        if self.kind != Kind::Error || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }

    /// Writes the frame (see [`write_frame`]).
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        write_frame(w, self.kind, &self.payload)
    }

    /// The whole frame as bytes, header included.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.payload.len());
        bytes.extend_from_slice(&header(self.kind, self.payload.len()));
        bytes.extend_from_slice(&self.payload);
        bytes
    }
}

/// The 5-byte header for a payload of `len` bytes.
///
/// Panics if `len` does not fit the 4-byte length field; callers bound payloads by
/// `--max-frame`, which is a `u32`.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("payload length fits in 32 bits");
    let l = len.to_be_bytes();
    [l[0], l[1], l[2], l[3], kind as u8]
}

/// Writes one frame in a single writev where the kernel takes it whole, looping on short
/// writes and EINTR until every byte is out.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, kind: Kind, payload: &[u8]) -> io::Result<()> {
    if u32::try_from(payload.len()).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "payload longer than 4 GiB cannot be framed",
        ));
    }
    let head = header(kind, payload.len());
    let mut slices = [IoSlice::new(&head), IoSlice::new(payload)];
    let mut rest: &mut [IoSlice] = &mut slices;
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a byte stream is not valid protocol v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A header announced a payload longer than the limit.
    TooLarge {
        /// The length announced.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A header carried a kind byte that protocol v1 does not define.
    UnknownKind(u8),
    /// The stream ended inside a frame: `have` of `want` bytes had arrived.
    Truncated {
        /// Bytes of the frame that arrived.
        have: usize,
        /// Bytes the frame needed.
        want: usize,
    },
}

impl DecodeError {
    /// The ERROR code that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownKind(_) => ErrorCode::UnknownKind,
            DecodeError::Truncated { .. } => ErrorCode::TruncatedFrame,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame too large: {len} bytes announced, limit {max}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown kind 0x{k:02x}"),
            DecodeError::Truncated { have, want } => {
                write!(
                    f,
                    "truncated frame: stream ended after {have} of {want} bytes"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A push decoder: bytes go in (by [`Decoder::extend`] or [`Decoder::read_from`]), whole
/// frames come out of [`Decoder::decode`].
///
/// Memory follows bytes received: a read asks for at most 64 KiB, and the buffer grows
/// geometrically as bytes arrive, whatever length a header announces. A read from a socket of
/// forkd's own goes straight into the buffer's unused capacity; a read from any other
/// [`Read`] gets room zeroed first (once: bytes stay initialized for later reads).
#[derive(Debug)]
pub struct Decoder {
    /// `buf[start..end]` is received and not yet decoded; `buf[end..]` is initialized room
    /// (earlier reads' bytes or zeroes), and the capacity beyond it is room not yet written.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: u32,
    read_chunk: usize,
}

impl Decoder {
    /// A decoder that refuses payloads longer than `max_frame`.
    pub fn new(max_frame: u32) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame,
            read_chunk: READ_CHUNK_FIRST,
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Adds received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.reserve_room(bytes.len());
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(bytes);
        self.end += bytes.len();
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the reason the stream is
    /// invalid. A header is judged as soon as it is complete, before its payload arrives.
    pub fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        Ok(self
            .decode_borrowed()?
            .map(|(kind, payload)| Frame::new(kind, payload)))
    }

    /// As [`Decoder::decode`], with the payload borrowed from the decoder's buffer instead of
    /// copied out of it.
    pub fn decode_borrowed(&mut self) -> Result<Option<(Kind, &[u8])>, DecodeError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if len > self.max_frame {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let kind = Kind::from_byte(avail[4]).ok_or(DecodeError::UnknownKind(avail[4]))?;
        let total = HEADER_LEN + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let first = self.start + HEADER_LEN;
        self.start += total;
        Ok(Some((kind, &self.buf[first..self.start])))
    }

    /// What an end of stream means now: `Ok(())` at a frame boundary, else the truncation.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let avail = &self.buf[self.start..self.end];
        let want = if have >= HEADER_LEN {
            HEADER_LEN + u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize
        } else {
            HEADER_LEN
        };
        Err(DecodeError::Truncated { have, want })
    }

    /// One read from `r` straight into the buffer, retrying EINTR. Returns the byte count;
    /// 0 means end of stream. Asks for what the current frame still needs or the read chunk,
    /// whichever is more, and never more than 64 KiB, so a large frame arrives in few reads
    /// and an announced length alone costs nothing.
    pub fn read_from<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<usize> {
        let want = self.next_read();
        self.reserve_room(want);
        if self.buf.len() < self.end + want {
            // A reader may look at what it is given: it gets initialized bytes.
            self.buf.resize(self.end + want, 0);
        }
        let room = &mut self.buf[self.end..self.end + want];
        let result = retrying_interrupts(|| r.read(room));
        self.received(result, want)
    }

    /// As [`Decoder::read_from`], with `read` given the buffer's room as it is, not zeroed:
    /// for reads by system call, where the kernel writes what it returns. `read` must have
    /// written the bytes whose count it returns (forkd's sockets: `crate::raw::recv`).
    pub(crate) fn read_uninit(
        &mut self,
        mut read: impl FnMut(&mut [MaybeUninit<u8>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let want = self.next_read();
        self.reserve_room(want);
        self.buf.truncate(self.end);
        let room = &mut self.buf.spare_capacity_mut()[..want];
        let result = retrying_interrupts(|| read(room));
        if let Ok(n) = result {
            assert!(n <= want, "a read returned more than it was given room for");
            // SAFETY: `read` wrote the n bytes after `end` (its contract).
            unsafe { self.buf.set_len(self.end + n) };
        }
        self.received(result, want)
    }

    /// How much the next read asks for: what the current frame still needs or the read
    /// chunk, whichever is more, and never more than 64 KiB.
    fn next_read(&self) -> usize {
        self.missing_for_current_frame()
            .max(self.read_chunk)
            .min(READ_MAX)
    }

    /// Counts the bytes a read of `want` placed after `end`, and doubles the read chunk when
    /// the read filled what it asked for (the peer pipelines).
    fn received(&mut self, result: io::Result<usize>, want: usize) -> io::Result<usize> {
        let n = *result.as_ref().unwrap_or(&0);
        self.end += n;
        if n == want {
            self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
        }
        result
    }

    /// Bytes still missing for the frame at the head of the buffer (0 if unknown yet or the
    /// header is out of bounds, which `decode` reports).
    fn missing_for_current_frame(&self) -> usize {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return 0;
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if len > self.max_frame {
            return 0;
        }
        (HEADER_LEN + len as usize).saturating_sub(avail.len())
    }

    /// Makes capacity for `more` bytes from `end`: moves undecoded bytes to the front, gives
    /// back a large idle buffer, and grows (at least doubling) when the room is still short.
    /// Writes nothing into the room.
    fn reserve_room(&mut self, more: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.capacity() > KEEP_IDLE_BUFFER {
                self.buf = Vec::new();
            }
        } else if self.start > 0 && self.buf.capacity() - self.end < more {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = self.end + more;
        if self.buf.capacity() < needed {
            // Doubling, but never past the end of the frame being received when its length
            // is known: a frame of N bytes costs N bytes of buffer, not 2N.
            let frame_end = self.end + self.missing_for_current_frame();
            let grown = needed.max(self.buf.capacity().saturating_mul(2).min(frame_end));
            self.buf.reserve_exact(grown - self.buf.len());
        }
    }
}

/// Runs `read` again while it is interrupted by a signal.
fn retrying_interrupts(mut read: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match read() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Why reading the next frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not valid protocol v1.
    Protocol(DecodeError),
    /// Reading failed.
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Protocol(e) => e.fmt(f),
            ReadError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

/// A [`Decoder`] bound to a byte stream.
pub struct FrameReader<R> {
    inner: R,
    decoder: Decoder,
}

impl<R: Read> FrameReader<R> {
    /// Frames from `inner`, payloads bounded by `max_frame`.
    pub fn new(inner: R, max_frame: u32) -> FrameReader<R> {
        FrameReader {
            inner,
            decoder: Decoder::new(max_frame),
        }
    }

    /// The next frame; `Ok(None)` when the stream ends at a frame boundary.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode().map_err(ReadError::Protocol)? {
                return Ok(Some(frame));
            }
            if self
                .decoder
                .read_from(&mut self.inner)
                .map_err(ReadError::Io)?
                == 0
            {
                return self
                    .decoder
                    .finish()
                    .map(|()| None)
                    .map_err(ReadError::Protocol);
            }
        }
    }

    /// The byte stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The byte stream, mutably (to write replies on it).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The byte stream; bytes buffered and not yet decoded are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out `data` in reads, recording how much each read asked for.
    struct Recording<'a> {
        data: &'a [u8],
        asked: Vec<usize>,
    }

    impl Read for Recording<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked.push(buf.len());
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_sizes(stream: &[u8]) -> (usize, Vec<usize>) {
        let mut src = Recording {
            data: stream,
            asked: Vec::new(),
        };
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        let mut frames = 0;
        while d.read_from(&mut src).unwrap() > 0 {
            while d.decode().unwrap().is_some() {
                frames += 1;
            }
        }
        (frames, src.asked)
    }

    #[test]
    fn reads_start_small_and_grow_while_the_peer_keeps_them_full() {
        let one = Frame::new(Kind::Data, vec![1u8; 59]).encode();
        assert_eq!(read_sizes(&one), (1, vec![512, 512]));

        let many: Vec<u8> = (0..100).flat_map(|_| one.clone()).collect();
        let (frames, asked) = read_sizes(&many);
        assert_eq!(frames, 100);
        assert_eq!(asked[..5], [512, 1024, 2048, 4096, 4096]);
    }

    #[test]
    fn memory_follows_bytes_received_not_the_length_announced() {
        let mut d = Decoder::new(64 << 20);
        // A header announcing 64 MiB, then 10 bytes of it.
        let mut bytes = header(Kind::Data, 64 << 20).to_vec();
        bytes.extend([7u8; 10]);
        let mut src = Recording {
            data: &bytes,
            asked: Vec::new(),
        };
        while d.read_from(&mut src).unwrap() > 0 {
            assert!(d.decode().unwrap().is_none());
        }
        assert!(
            d.buf.capacity() <= 2 * READ_MAX,
            "{} bytes held",
            d.buf.capacity()
        );
        assert!(src.asked.iter().all(|&n| n <= READ_MAX), "{:?}", src.asked);

        // 1 MiB arriving in 1 KiB pieces: the buffer stays within twice what is held.
        let frame = Frame::new(Kind::Data, vec![3u8; 1 << 20]).encode();
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        for piece in frame.chunks(1024) {
            let mut src = Recording {
                data: piece,
                asked: Vec::new(),
            };
            while d.read_from(&mut src).unwrap() > 0 {
                assert!(d.buf.capacity() <= 2 * d.buffered() + 2 * READ_MAX);
            }
        }
        assert_eq!(d.decode().unwrap().unwrap().payload.len(), 1 << 20);
        // Decoded and idle: a large buffer is given back at the next read.
        d.extend(&[]);
        assert!(d.buf.capacity() <= KEEP_IDLE_BUFFER);
    }

    fn decode_all(bytes: &[u8], max: u32) -> Result<Vec<Frame>, DecodeError> {
        let mut d = Decoder::new(max);
        d.extend(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.decode()? {
            out.push(f);
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn header_is_big_endian_length_then_kind() {
        assert_eq!(header(Kind::Data, 0x0102_0304), [1, 2, 3, 4, 0x01]);
        assert_eq!(
            Frame::new(Kind::Ping, b"hi".to_vec()).encode(),
            [0, 0, 0, 2, 3, b'h', b'i']
        );
    }

    #[test]
    fn error_frame_carries_code_and_message() {
        let f = Frame::error(ErrorCode::UnknownKind, "no");
        assert_eq!(f.payload, [0, 2, b'n', b'o']);
        assert_eq!(f.error_parts(), Some((2, "no".to_string())));
        assert_eq!(Frame::new(Kind::Data, vec![0, 2]).error_parts(), None);
    }

    #[test]
    fn split_header_and_leftover_bytes() {
        let mut bytes = Frame::new(Kind::Data, b"abc".to_vec()).encode();
        bytes.extend(Frame::new(Kind::Ping, Vec::new()).encode());
        let mut d = Decoder::new(16);
        let mut frames = Vec::new();
        for b in &bytes {
            d.extend(std::slice::from_ref(b));
            while let Some(f) = d.decode().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::new(Kind::Data, b"abc".to_vec()),
                Frame::new(Kind::Ping, vec![])
            ]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversize_header_is_rejected_before_payload() {
        let mut d = Decoder::new(10);
        d.extend(&[0, 0, 0, 11, 1]);
        assert_eq!(d.decode(), Err(DecodeError::TooLarge { len: 11, max: 10 }));
        assert_eq!(
            decode_all(&header(Kind::Data, 10), 10).unwrap_err().code(),
            { ErrorCode::TruncatedFrame }
        );
    }

    #[test]
    fn unknown_kind_is_rejected_at_header() {
        assert_eq!(
            decode_all(&[0, 0, 0, 0, 9], 10),
            Err(DecodeError::UnknownKind(9))
        );
    }

    #[test]
    fn truncation_reports_have_and_want() {
        assert_eq!(
            decode_all(&[0, 0], 10),
            Err(DecodeError::Truncated { have: 2, want: 5 })
        );
        assert_eq!(
            decode_all(&[0, 0, 0, 3, 1, b'a'], 10),
            Err(DecodeError::Truncated { have: 6, want: 8 })
        );
    }

    /// A reader that hands out at most `step` bytes per read and fails with EINTR between.
    struct Dribble {
        bytes: Vec<u8>,
        pos: usize,
        step: usize,
        interrupt: bool,
    }

    impl Read for Dribble {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(out.len()).min(self.bytes.len() - self.pos);
            out[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn reader_survives_short_reads_and_eintr() {
        let frames: Vec<Frame> = (0..50)
            .map(|i| Frame::new(Kind::Data, vec![i as u8; i * 7]))
            .collect();
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut r = FrameReader::new(
            Dribble {
                bytes,
                pos: 0,
                step: 3,
                interrupt: false,
            },
            1024,
        );
        let mut got = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
    }

    /// A writer that takes at most `step` bytes per call and fails with EINTR between.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        interrupt: bool,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len());
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_survives_short_writes_and_eintr() {
        let mut w = Trickle {
            out: Vec::new(),
            step: 2,
            interrupt: false,
        };
        write_frame(&mut w, Kind::Data, b"hello").unwrap();
        write_frame(&mut w, Kind::Pong, b"").unwrap();
        assert_eq!(
            w.out,
            [0, 0, 0, 5, 1, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0, 4]
        );
    }
}
