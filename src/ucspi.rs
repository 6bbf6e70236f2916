//! The UCSPI environment that tcpserver and s6-tcpserver give a program: who is connected,
//! on which local address. forkd never looks names up (as `tcpserver -H -R`), so the
//! host-name variables are never set.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use nix::sys::socket::{SockaddrStorage, getsockname};

use crate::conn::{Connection, Peer};

/// The variables for `conn`, in a fixed order.
pub fn environment(conn: &Connection) -> Vec<(String, String)> {
    match &conn.peer {
        Peer::Tcp(remote) => {
            let mut env = vec![("PROTO".to_string(), "TCP".to_string())];
            if let Some(local) = local_ip_addr(conn) {
                env.push(("TCPLOCALIP".into(), local.ip().to_string()));
                env.push(("TCPLOCALPORT".into(), local.port().to_string()));
            }
            env.push(("TCPREMOTEIP".into(), remote.ip().to_string()));
            env.push(("TCPREMOTEPORT".into(), remote.port().to_string()));
            env.push(("TCPCONNNUM".into(), conn.from_source.to_string()));
            env
        }
        Peer::Unix { uid, gid, .. } => {
            let mut env = vec![("PROTO".to_string(), "IPC".to_string())];
            if let Some(path) = local_unix_path(conn) {
                env.push(("IPCLOCALPATH".into(), path));
            }
            if let Some(uid) = uid {
                env.push(("IPCREMOTEEUID".into(), uid.to_string()));
            }
            if let Some(gid) = gid {
                env.push(("IPCREMOTEEGID".into(), gid.to_string()));
            }
            env
        }
    }
}

fn local_ip_addr(conn: &Connection) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    let storage: SockaddrStorage = getsockname(conn.stream.as_fd().as_raw_fd()).ok()?;
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
}

fn local_unix_path(conn: &Connection) -> Option<String> {
    use std::os::fd::AsRawFd;
    let storage: SockaddrStorage = getsockname(conn.stream.as_fd().as_raw_fd()).ok()?;
    storage
        .as_unix_addr()?
        .path()
        .map(|p| p.display().to_string())
}
