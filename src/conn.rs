//! One accepted connection: its stream (TCP or Unix) and who is on the other end.
//!
//! Handlers see only these types, whatever listener the connection came from.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A connected stream socket.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection, over IPv4 or IPv6.
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
}

impl Stream {
    /// A connected socket of either family, as a descriptor handed over.
    pub(crate) fn from_socket(fd: OwnedFd) -> io::Result<Stream> {
        use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};
        let family = getsockname::<SockaddrStorage>(fd.as_raw_fd())?.family();
        match family {
            Some(AddressFamily::Unix) => Ok(Stream::Unix(UnixStream::from(fd))),
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                Ok(Stream::Tcp(TcpStream::from(fd)))
            }
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }
    }

    /// Shuts down the read side, the write side or both (`shutdown(2)`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// A second handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// How long a read may block; `None`: forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// How long a write may block; `None`: forever.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(timeout),
            Stream::Unix(s) => s.set_write_timeout(timeout),
        }
    }

    /// Non-blocking mode on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Ends a conversation that an ERROR frame closed, so that the ERROR reaches the peer.
    ///
    /// Closing a socket whose receive buffer still holds unread bytes makes the kernel send a
    /// reset, and a reset can destroy the ERROR frame before the peer reads it. So: shut down
    /// the write side (the peer sees the ERROR, then EOF), then read and discard what the peer
    /// still sends, for at most `DRAIN_TIME` and `DRAIN_BYTES`; its owner then closes it.
    pub(crate) fn close_after_error(&mut self) {
        const DRAIN_TIME: Duration = Duration::from_secs(1);
        const DRAIN_BYTES: usize = 64 * 1024;
        let _ = self.set_nonblocking(false);
        if self.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + DRAIN_TIME;
        let mut scratch = [0u8; 8192];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
}

// One recv, one send, as std's streams make them, but without the C library's wrappers, whose
// code a forked worker would fault in (crate::raw).
impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: only the kernel writes through it, bytes.
        crate::raw::recv(self.as_raw_fd(), unsafe { crate::raw::as_room(buf) })
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::raw::send(self.as_raw_fd(), buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl From<Stream> for OwnedFd {
    fn from(stream: Stream) -> OwnedFd {
        match stream {
            Stream::Tcp(s) => s.into(),
            Stream::Unix(s) => s.into(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address and port.
    Tcp(SocketAddr),
    /// A Unix-socket peer, with its credentials where the kernel gives them.
    Unix {
        /// The client's process id.
        pid: Option<i32>,
        /// The client's user id.
        uid: Option<u32>,
        /// The client's group id.
        gid: Option<u32>,
    },
}

impl Peer {
    /// The credentials of the process on the other end of a Unix socket.
    pub(crate) fn of_unix(stream: &UnixStream) -> Peer {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
            if let Ok(cred) = getsockopt(stream, PeerCredentials) {
                return Peer::Unix {
                    pid: Some(cred.pid()),
                    uid: Some(cred.uid()),
                    gid: Some(cred.gid()),
                };
            }
        }
        let _ = stream;
        Peer::Unix {
            pid: None,
            uid: None,
            gid: None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix { pid, uid, gid } => {
                write!(f, "unix")?;
                let mut sep = ':';
                for (name, value) in [
                    ("pid", pid.map(i64::from)),
                    ("uid", uid.map(i64::from)),
                    ("gid", gid.map(i64::from)),
                ] {
                    if let Some(v) = value {
                        write!(f, "{sep}{name}={v}")?;
                        sep = ',';
                    }
                }
                Ok(())
            }
        }
    }
}

/// An accepted connection, as a handler receives it: the stream, and who is on the other end.
///
/// It reads and writes as the socket does ([`Read`] and [`Write`] are implemented on it), so a
/// [`StreamHandler`](crate::StreamHandler) can use it as any byte stream.
#[derive(Debug)]
pub struct Connection {
    pub(crate) stream: Stream,
    pub(crate) peer: Peer,
    /// Connections from the same source being served now, this one included (TCPCONNNUM).
    pub(crate) from_source: u32,
    /// The read and write timeout the socket already has (from its listener), if any.
    pub(crate) timeout: Option<Duration>,
    /// Set when a load balancer named the client in a PROXY protocol header (boxed: a
    /// connection is moved often, and most are direct).
    pub(crate) proxied: Option<Box<Proxied>>,
}

/// What a PROXY protocol header said of a connection that came through a load balancer
/// (`--proxy-from`): the connection's [`Peer`] is then the client the header named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proxied {
    /// The balancer's own address: the socket's peer.
    pub via: SocketAddr,
    /// The address the client connected to, on the balancer.
    pub destination: SocketAddr,
}

/// A connection's peer as its log lines name it: `CLIENT`, or `CLIENT via=BALANCER` when a
/// PROXY header named the client.
pub(crate) struct Who<'a>(pub(crate) &'a Peer, pub(crate) Option<SocketAddr>);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(via) => write!(f, "{} via={via}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Connection {
    /// A connection as accept() would give it, from its stream (an upgrade in place hands
    /// over connections still waiting for a PROXY header).
    pub(crate) fn accepted(stream: Stream) -> io::Result<Connection> {
        let peer = match &stream {
            Stream::Tcp(s) => Peer::Tcp(s.peer_addr()?),
            Stream::Unix(s) => Peer::of_unix(s),
        };
        Ok(Connection::new(stream, peer, None))
    }

    /// A connection just accepted: `timeout` is the one its listener passed on, if any.
    pub(crate) fn new(stream: Stream, peer: Peer, timeout: Option<Duration>) -> Connection {
        Connection {
            stream,
            peer,
            from_source: 1,
            timeout,
            proxied: None,
        }
    }

    /// Who is on the other end: behind a load balancer, the client its PROXY header named.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The load balancer the connection came through and what its PROXY header said, when
    /// one did (`--proxy-from`).
    pub fn proxied(&self) -> Option<Proxied> {
        self.proxied.as_deref().copied()
    }

    /// The peer for a log line: `CLIENT` or `CLIENT via=BALANCER`.
    pub(crate) fn who(&self) -> Who<'_> {
        Who(&self.peer, self.proxied.as_ref().map(|p| p.via))
    }

    /// The local address of a TCP connection: the address the client connected to, or the
    /// balancer did (see [`Connection::proxied`]).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        use nix::sys::socket::{SockaddrStorage, getsockname};
        let storage: SockaddrStorage = getsockname(self.stream.as_raw_fd()).ok()?;
        if let Some(v4) = storage.as_sockaddr_in() {
            return Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
        }
        storage
            .as_sockaddr_in6()
            .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
    }

    /// The path of the Unix socket a local client connected to.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        use nix::sys::socket::{SockaddrStorage, getsockname};
        let storage: SockaddrStorage = getsockname(self.stream.as_raw_fd()).ok()?;
        storage.as_unix_addr()?.path().map(|p| p.to_path_buf())
    }

    /// The socket itself, for what [`Read`] and [`Write`] do not cover (timeouts, shutdown).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The socket itself, mutably.
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
