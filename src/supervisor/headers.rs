//! Connections from `--proxy-from` networks whose PROXY protocol header has not arrived in
//! full: a bounded table in the supervisor's poll set, as draining sockets are, so a balancer
//! slow to send its header (or one that sends none) never holds up the loop.
//!
//! Nothing past the header is read. The socket is peeked at, and only once
//! [`proxy::parse`](crate::proxy::parse) finds a whole header are exactly its bytes consumed:
//! what follows is the client's and reaches the handler untouched. While a header is
//! incomplete, SO_RCVLOWAT is raised to the length it needs at least, so poll() reports the
//! socket again only once that many bytes are there: the loop neither spins on bytes it has
//! seen nor keeps a buffer per connection. A peer that closes or resets mid-header is
//! reported at every poll whatever SO_RCVLOWAT says; POLLRDHUP tells it apart, and it is
//! closed at once. A header is at most [`MAX_V2`](crate::proxy::MAX_V2) bytes, within any
//! receive buffer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use nix::sys::socket::{MsgFlags, recv};

use super::Origin;
use crate::conn::{Connection, Peer, Proxied};
use crate::proxy::{self, Header, MAX_V2, Parsed};

/// Connections waiting for a header at once; past this the one waiting longest is closed.
/// Under `--overload defer` they count against `--max-children` as well.
pub(crate) const MAX_WAITING: usize = 1024;

struct Waiting {
    conn: Connection,
    origin: Origin,
    deadline: Instant,
    /// Whether SO_RCVLOWAT was raised, to be put back before a worker reads.
    raised_lowat: bool,
}

/// Why a connection from a balancer is closed without being served.
pub(super) enum Failure {
    /// Its first bytes are not a PROXY header; why.
    Invalid(String),
    /// It closed (or reset) before a whole header: a balancer's plain TCP health check.
    Closed,
    /// No whole header by `--proxy-timeout`.
    TimedOut,
    /// The table was full and it had waited longest.
    Evicted,
}

/// A connection whose header is settled, one way or the other.
pub(super) enum Outcome {
    /// Its header is read: the connection's peer is now the client it names.
    Ready(Connection, Origin),
    /// No usable header.
    Failed(Connection, Origin, Failure),
}

#[derive(Default)]
pub(super) struct HeaderWaits {
    list: Vec<Waiting>,
}

/// What one look at a socket found.
enum Step {
    /// The header is incomplete; wait for this many bytes in all.
    Wait(Option<usize>),
    Done(Header),
    Failed(Failure),
}

impl HeaderWaits {
    /// Reads `conn`'s header if it has arrived already (a balancer sends it with the
    /// connection's first segment), else keeps `conn` until it has or `deadline` passes. A
    /// connection that has to make room (the table is full) is returned as failed.
    pub(super) fn add(
        &mut self,
        conn: Connection,
        origin: Origin,
        deadline: Instant,
        settled: &mut Vec<Outcome>,
    ) {
        let mut waiting = Waiting {
            conn,
            origin,
            deadline,
            raised_lowat: false,
        };
        if let Some(outcome) = look(&mut waiting) {
            return settled.push(outcome.finish(waiting));
        }
        if self.list.len() >= MAX_WAITING {
            let oldest = self.list.remove(0);
            settled.push(Outcome::Failed(
                oldest.conn,
                oldest.origin,
                Failure::Evicted,
            ));
        }
        self.list.push(waiting);
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The sockets to poll, in the order [`HeaderWaits::service`] takes indices in.
    pub(super) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.list.iter().map(|w| w.conn.stream.as_fd())
    }

    /// Each waiting socket and the index of its listener (an upgrade hands them over).
    pub(super) fn raw_fds_and_origins(&self) -> Vec<(RawFd, Option<usize>)> {
        self.list
            .iter()
            .map(|w| {
                let index = match w.origin {
                    Origin::Listener(index) => Some(index),
                    _ => None,
                };
                (w.conn.stream.as_raw_fd(), index)
            })
            .collect()
    }

    /// Takes over a connection the previous image was reading a header from.
    pub(super) fn adopt(&mut self, conn: Connection, origin: Origin, deadline: Instant) {
        if self.list.len() < MAX_WAITING {
            self.list.push(Waiting {
                conn,
                origin,
                deadline,
                raised_lowat: true,
            });
        }
    }

    /// Descriptors a new worker must close.
    pub(super) fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.list.iter().map(|w| w.conn.stream.as_raw_fd())
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|w| w.deadline).min()
    }

    /// Looks at the sockets at `ready` (indices into [`HeaderWaits::fds`], each with whether
    /// its peer hung up) and at those past their deadline; what is settled leaves the table
    /// for `settled`.
    pub(super) fn service(
        &mut self,
        ready: &[(usize, bool)],
        now: Instant,
        settled: &mut Vec<Outcome>,
    ) {
        let mut steps: Vec<Option<Step>> = Vec::with_capacity(self.list.len());
        steps.resize_with(self.list.len(), || None);
        for &(i, hung_up) in ready {
            steps[i] = look(&mut self.list[i]);
            // What has come is all that will: a header still short of it never completes,
            // and the socket would be reported again at every poll.
            if steps[i].is_none() && hung_up {
                steps[i] = Some(Step::Failed(Failure::Closed));
            }
        }
        let mut kept = Vec::with_capacity(self.list.len());
        for (waiting, step) in self.list.drain(..).zip(steps) {
            match step {
                Some(step) => settled.push(step.finish(waiting)),
                None if waiting.deadline <= now => settled.push(Outcome::Failed(
                    waiting.conn,
                    waiting.origin,
                    Failure::TimedOut,
                )),
                None => kept.push(waiting),
            }
        }
        self.list = kept;
    }

    /// Names each waiting connection's origin anew (a reload renumbered the listeners).
    pub(super) fn renumber(&mut self, new: impl Fn(Origin) -> Origin) {
        for waiting in &mut self.list {
            waiting.origin = new(waiting.origin);
        }
    }

    /// Every waiting connection, leaving the table (shutdown).
    pub(super) fn take_all(&mut self) -> Vec<(Connection, Origin)> {
        self.list.drain(..).map(|w| (w.conn, w.origin)).collect()
    }
}

impl Step {
    /// The outcome for a settled step.
    fn finish(self, mut waiting: Waiting) -> Outcome {
        match self {
            Step::Failed(failure) => Outcome::Failed(waiting.conn, waiting.origin, failure),
            Step::Done(header) => {
                if waiting.raised_lowat
                    && let Err(e) = set_rcvlowat(&waiting.conn, 1)
                {
                    let why = format!("SO_RCVLOWAT: {e}");
                    return Outcome::Failed(waiting.conn, waiting.origin, Failure::Invalid(why));
                }
                apply(&mut waiting.conn, header);
                Outcome::Ready(waiting.conn, waiting.origin)
            }
            Step::Wait(_) => unreachable!("a waiting step is not settled"),
        }
    }
}

/// Looks at what `waiting` has received: `None` while its header is incomplete (SO_RCVLOWAT
/// then says how much more to wait for), else what was found.
fn look(waiting: &mut Waiting) -> Option<Step> {
    match peek_header(&waiting.conn) {
        Step::Wait(Some(need)) => {
            // Without it poll() would report the bytes already seen at once, again and again.
            match set_rcvlowat(&waiting.conn, need) {
                Ok(()) => {
                    waiting.raised_lowat = true;
                    None
                }
                Err(e) => Some(Step::Failed(Failure::Invalid(format!("SO_RCVLOWAT: {e}")))),
            }
        }
        Step::Wait(None) => None,
        settled => Some(settled),
    }
}

/// Peeks at the socket; once a whole header is there, consumes exactly its bytes.
fn peek_header(conn: &Connection) -> Step {
    let fd = conn.stream.as_raw_fd();
    let mut scratch = [0u8; MAX_V2];
    let peeked = match receive(fd, &mut scratch, MsgFlags::MSG_PEEK) {
        Ok(0) => return Step::Failed(Failure::Closed),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            return Step::Failed(Failure::Closed);
        }
        Err(e) => return Step::Failed(Failure::Invalid(format!("reading: {e}"))),
    };
    match proxy::parse(&scratch[..peeked]) {
        Parsed::Need(need) => Step::Wait(Some(need)),
        Parsed::Invalid(why) => Step::Failed(Failure::Invalid(why)),
        Parsed::Done { length, header } => {
            // The bytes are queued already: this takes them, and not one more.
            let mut taken = 0;
            while taken < length {
                match receive(fd, &mut scratch[taken..length], MsgFlags::empty()) {
                    Ok(0) => return Step::Failed(Failure::Closed),
                    Ok(n) => taken += n,
                    Err(e) => return Step::Failed(Failure::Invalid(format!("reading: {e}"))),
                }
            }
            Step::Done(header)
        }
    }
}

/// SO_RCVLOWAT: the bytes that must be queued before poll() says the socket is readable.
/// (nix has no wrapper for it.)
fn set_rcvlowat(conn: &Connection, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the connection's, open for the call; the value is a c_int
    // that lives across it, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            conn.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// recv(2) without blocking, retried on EINTR.
fn receive(fd: RawFd, buf: &mut [u8], flags: MsgFlags) -> io::Result<usize> {
    loop {
        match recv(fd, buf, flags | MsgFlags::MSG_DONTWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// What a header says, applied: the client it names becomes the peer.
fn apply(conn: &mut Connection, header: Header) {
    let (
        Header::Proxied {
            source,
            destination,
        },
        Peer::Tcp(via),
    ) = (header, &conn.peer)
    else {
        // LOCAL, UNKNOWN, AF_UNSPEC: the balancer's own connection, served as direct.
        return;
    };
    conn.proxied = Some(Box::new(Proxied {
        via: *via,
        destination,
    }));
    conn.peer = Peer::Tcp(source);
}
