//! The UCSPI environment that tcpserver and s6-tcpserver give a program: who is connected,
//! on which local address. forkd never looks names up (as `tcpserver -H -R`), so the
//! host-name variables are never set.

use crate::conn::{Connection, Peer};

/// The variables for `conn`, in a fixed order.
pub fn environment(conn: &Connection) -> Vec<(String, String)> {
    match &conn.peer {
        Peer::Tcp(remote) => {
            let mut env = vec![("PROTO".to_string(), "TCP".to_string())];
            if let Some(local) = conn.local_addr() {
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
