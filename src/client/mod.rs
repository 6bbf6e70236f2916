//! The client side of protocol v1, for forkc, tests and embedders testing their own servers:
//! connect to any `--listen` form and exchange frames; [`bench`](mod@bench) is the load generator behind
//! `forkc bench`.

pub mod bench;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::Stream;
use crate::addr::Addr;
use crate::frame::{ErrorCode, Frame};

/// Connects to `addr` (`:PORT` means this machine), with `timeout` on the connect and on every
/// later read and write, and TCP_NODELAY so requests leave at once.
pub fn connect(addr: &Addr, timeout: Duration) -> Result<Stream, String> {
    let target = addr.connect_target();
    let fail = |e: std::io::Error| format!("cannot connect to {target}: {e}");
    let stream = match &target {
        Addr::Ip(sa) => {
            let s = TcpStream::connect_timeout(sa, timeout).map_err(fail)?;
            s.set_nodelay(true).map_err(fail)?;
            Stream::Tcp(s)
        }
        Addr::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(fail)?),
        Addr::AnyIp(_) => unreachable!("connect_target resolves :PORT"),
    };
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    Ok(stream)
}

/// Connects to an IPv4 `target` from the local address `source` (any of 127.0.0.0/8 on
/// loopback), so that one machine can play many clients for per-source limits and rules.
pub fn connect_from(
    source: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(source, 0)),
    )?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(target))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Closes with SO_LINGER 0, so the kernel sends a reset instead of FIN: the way a crashed or
/// impatient client leaves.
pub fn reset(stream: TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &stream,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// The IPv4 address of an `Addr`, for [`connect_from`].
pub fn ipv4_target(addr: &Addr) -> Option<SocketAddrV4> {
    match addr.connect_target() {
        Addr::Ip(SocketAddr::V4(v4)) => Some(v4),
        _ => None,
    }
}

/// An ERROR frame from the server, for humans.
pub struct ServerError {
    /// The ERROR code (see [`crate::frame::ErrorCode`]).
    pub code: u16,
    /// The server's message.
    pub message: String,
}

impl ServerError {
    /// The error an ERROR frame carries; `None` for other frames.
    pub fn from_frame(frame: &Frame) -> Option<ServerError> {
        let (code, message) = frame.error_parts()?;
        Some(ServerError { code, message })
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = ErrorCode::from_u16(self.code)
            .map(ErrorCode::name)
            .unwrap_or("unknown code");
        write!(f, "server error {} ({name}): {}", self.code, self.message)
    }
}
