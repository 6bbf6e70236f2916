//! The UCSPI environment that tcpserver and s6-tcpserver give a program: who is connected,
//! on which local address. forkd never looks names up (as `tcpserver -H -R`), so the
//! host-name variables are never set.
//!
//! Behind a load balancer (`--proxy-from`), the variables say what they would for a direct
//! connection, as s6-networking's proxy-server makes them: TCPREMOTEIP/PORT are the client the
//! PROXY header named and TCPLOCALIP/PORT the address it connected to, on the balancer. The
//! balancer's own connection is in PROXYREMOTEIP/PORT (the balancer) and PROXYLOCALIP/PORT
//! (forkd's side).

use std::net::SocketAddr;

use crate::conn::{Connection, Peer};

/// The variables for `conn`, in a fixed order.
pub fn environment(conn: &Connection) -> Vec<(String, String)> {
    match &conn.peer {
        Peer::Tcp(remote) => {
            let mut env = vec![("PROTO".to_string(), "TCP".to_string())];
            let socket_local = conn.local_addr();
            let proxied = conn.proxied();
            let local = proxied.map(|p| p.destination).or(socket_local);
            push_address(&mut env, "TCPLOCAL", local);
            push_address(&mut env, "TCPREMOTE", Some(*remote));
            env.push(("TCPCONNNUM".into(), conn.from_source.to_string()));
            if let Some(proxied) = proxied {
                push_address(&mut env, "PROXYREMOTE", Some(proxied.via));
                push_address(&mut env, "PROXYLOCAL", socket_local);
            }
            env
        }
        Peer::Unix { uid, gid, .. } => {
            let mut env = vec![("PROTO".to_string(), "IPC".to_string())];
            if let Some(path) = conn.local_path().map(|p| p.display().to_string()) {
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

/// `{PREFIX}IP` and `{PREFIX}PORT` for `addr`, if known.
fn push_address(env: &mut Vec<(String, String)>, prefix: &str, addr: Option<SocketAddr>) {
    if let Some(addr) = addr {
        env.push((format!("{prefix}IP"), addr.ip().to_string()));
        env.push((format!("{prefix}PORT"), addr.port().to_string()));
    }
}
