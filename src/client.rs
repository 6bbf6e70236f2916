//! The client side of protocol v1, for forkc and the tests: connect to any `--listen` form and
//! exchange frames.

use std::fmt;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::addr::Addr;
use crate::conn::Stream;
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

/// An ERROR frame from the server, for humans.
pub struct ServerError {
    pub code: u16,
    pub message: String,
}

impl ServerError {
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
