//! Upgrade in place: what one image of the supervisor hands the next across `execve`, in the
//! same process. The descriptors themselves cross the exec (their close-on-exec flag cleared
//! just before it); this is the description that goes with them, as JSON in a memfd whose
//! number the new image finds in `FORKD_UPGRADE_FD`: each listener and what it was bound for,
//! each running worker (pid, peer, age, lifetime left), the stderr pipes of programs, sockets
//! draining and connections waiting for a PROXY header, the pidfile, systemd's notification
//! socket, and the penalties being served and rate buckets.
//!
//! Times cross as durations (an `Instant` means nothing to another image). The tables shared
//! with workers (bytes per conversation, programs' process groups) are memfds: the new image
//! maps the same memory the old image's workers go on writing to.

use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cidr::Cidr;
use crate::conn::Peer;
use crate::penalty::Offence;

/// The variable that names the state's descriptor in the new image.
pub(crate) const ENV: &str = "FORKD_UPGRADE_FD";

/// The version of the state's format. A new binary's `--check` says which it takes over
/// (`upgrade-state=N` on its standard output); one that does not say this one is refused
/// before the exec, as it could not take the running server over.
pub const STATE_VERSION: u32 = 1;

/// A listening socket and what it was bound for.
pub(crate) struct ListenerState {
    pub fd: RawFd,
    pub bound_for: Option<String>,
    pub name: Option<String>,
    pub handed_over: bool,
    pub owned_path: Option<String>,
}

/// A worker running when the upgrade began.
pub(crate) struct WorkerState {
    pub pid: i32,
    pub peer: Peer,
    pub via: Option<SocketAddr>,
    pub age: Duration,
    pub lifetime_left: Option<Duration>,
    pub outlived: bool,
    /// Its slot in the byte-count table (a protocol-v1 conversation).
    pub tally_slot: Option<u32>,
}

/// Everything the next image takes over.
#[derive(Default)]
pub(crate) struct Handover {
    pub listeners: Vec<ListenerState>,
    pub workers: Vec<WorkerState>,
    /// Programs' stderr pipes: (read end, the program's pid).
    pub relays: Vec<(RawFd, i32)>,
    /// Rejected connections still draining.
    pub drains: Vec<RawFd>,
    /// Connections from balancers whose header has not come: (socket, listener index).
    pub headers: Vec<(RawFd, Option<usize>)>,
    pub pidfile: Option<(RawFd, String)>,
    pub notify_socket: Option<String>,
    pub accepted_total: u64,
    /// The version that handed over, for the log.
    pub from_version: String,
    /// The memfds of the tables shared with workers: byte counts and programs' groups.
    pub tally_table: Option<RawFd>,
    pub groups_table: Option<RawFd>,
    /// `--penalty` sentences being served: the source, its last offence, the time left.
    pub penalties: Vec<(Cidr, Offence, Duration)>,
    /// `--rate` buckets: the source, its tokens, how long since they were counted.
    pub buckets: Vec<(Cidr, f64, Duration)>,
}

impl Handover {
    /// Every descriptor the state names, to be kept open across the exec.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.listeners.iter().map(|l| l.fd).collect();
        fds.extend(self.relays.iter().map(|(fd, _)| *fd));
        fds.extend(&self.drains);
        fds.extend(self.headers.iter().map(|(fd, _)| *fd));
        fds.extend(self.pidfile.as_ref().map(|(fd, _)| *fd));
        fds.extend(self.tally_table);
        fds.extend(self.groups_table);
        fds
    }

    fn to_json(&self) -> Value {
        json!({
            "state_version": STATE_VERSION,
            "from_version": self.from_version,
            "accepted_total": self.accepted_total,
            "tally_table": self.tally_table,
            "groups_table": self.groups_table,
            "notify_socket": self.notify_socket,
            "pidfile": self.pidfile.as_ref().map(|(fd, path)| json!({"fd": fd, "path": path})),
            "listeners": self.listeners.iter().map(|l| json!({
                "fd": l.fd,
                "bound_for": l.bound_for,
                "name": l.name,
                "handed_over": l.handed_over,
                "owned_path": l.owned_path,
            })).collect::<Vec<_>>(),
            "workers": self.workers.iter().map(|w| json!({
                "pid": w.pid,
                "peer": peer_json(&w.peer),
                "via": w.via.map(|v| v.to_string()),
                "age_ms": w.age.as_millis() as u64,
                "lifetime_left_ms": w.lifetime_left.map(|d| d.as_millis() as u64),
                "outlived": w.outlived,
                "tally_slot": w.tally_slot,
            })).collect::<Vec<_>>(),
            "relays": self.relays.iter().map(|(fd, pid)| json!([fd, pid])).collect::<Vec<_>>(),
            "drains": self.drains,
            "headers": self.headers.iter().map(|(fd, index)| json!([fd, index])).collect::<Vec<_>>(),
            "penalties": self.penalties.iter().map(|(source, offence, left)| {
                json!([source.to_string(), offence.to_string(), left.as_millis() as u64])
            }).collect::<Vec<_>>(),
            "buckets": self.buckets.iter().map(|(source, tokens, age)| {
                json!([source.to_string(), tokens, age.as_millis() as u64])
            }).collect::<Vec<_>>(),
        })
    }

    fn from_json(v: &Value) -> Result<Handover, String> {
        let bad = |what: &str| format!("upgrade state: {what}");
        if v["state_version"].as_u64() != Some(u64::from(STATE_VERSION)) {
            return Err(bad("a format this forkd does not take over"));
        }
        let fd = |v: &Value| {
            v.as_i64()
                .map(|n| n as RawFd)
                .ok_or_else(|| bad("descriptor"))
        };
        let text = |v: &Value| v.as_str().map(str::to_string);
        let array = |key: &str| v[key].as_array().cloned().unwrap_or_default();
        let mut state = Handover {
            from_version: text(&v["from_version"]).unwrap_or_default(),
            accepted_total: v["accepted_total"].as_u64().unwrap_or(0),
            notify_socket: text(&v["notify_socket"]),
            tally_table: v["tally_table"].as_i64().map(|n| n as RawFd),
            groups_table: v["groups_table"].as_i64().map(|n| n as RawFd),
            ..Handover::default()
        };
        if v["pidfile"].is_object() {
            let path = text(&v["pidfile"]["path"]).ok_or_else(|| bad("pidfile"))?;
            state.pidfile = Some((fd(&v["pidfile"]["fd"])?, path));
        }
        for l in array("listeners") {
            state.listeners.push(ListenerState {
                fd: fd(&l["fd"])?,
                bound_for: text(&l["bound_for"]),
                name: text(&l["name"]),
                handed_over: l["handed_over"].as_bool().unwrap_or(false),
                owned_path: text(&l["owned_path"]),
            });
        }
        for w in array("workers") {
            let ms = |key: &str| w[key].as_u64().map(Duration::from_millis);
            state.workers.push(WorkerState {
                pid: w["pid"].as_i64().ok_or_else(|| bad("worker pid"))? as i32,
                peer: peer_of(&w["peer"]).ok_or_else(|| bad("worker peer"))?,
                via: text(&w["via"]).and_then(|v| v.parse().ok()),
                age: ms("age_ms").unwrap_or_default(),
                lifetime_left: ms("lifetime_left_ms"),
                outlived: w["outlived"].as_bool().unwrap_or(false),
                tally_slot: w["tally_slot"].as_u64().map(|n| n as u32),
            });
        }
        for r in array("relays") {
            let pid = r[1].as_i64().ok_or_else(|| bad("relay pid"))? as i32;
            state.relays.push((fd(&r[0])?, pid));
        }
        for d in array("drains") {
            state.drains.push(fd(&d)?);
        }
        for h in array("headers") {
            state
                .headers
                .push((fd(&h[0])?, h[1].as_u64().map(|i| i as usize)));
        }
        for p in array("penalties") {
            let source = p[0].as_str().and_then(|s| s.parse().ok());
            let offence = p[1].as_str().and_then(Offence::named);
            let left = p[2].as_u64().map(Duration::from_millis);
            if let (Some(source), Some(offence), Some(left)) = (source, offence, left) {
                state.penalties.push((source, offence, left));
            }
        }
        for b in array("buckets") {
            let source = b[0].as_str().and_then(|s| s.parse().ok());
            let (tokens, age) = (b[1].as_f64(), b[2].as_u64().map(Duration::from_millis));
            if let (Some(source), Some(tokens), Some(age)) = (source, tokens, age) {
                state.buckets.push((source, tokens, age));
            }
        }
        // Each descriptor is taken over once, by one owner: a state naming one twice would
        // have it closed under another.
        let mut fds = state.fds();
        fds.sort_unstable();
        if fds.windows(2).any(|w| w[0] == w[1]) || fds.iter().any(|fd| *fd < 3) {
            return Err(bad("a descriptor named twice, or a standard one"));
        }
        Ok(state)
    }

    /// Writes the state into a memfd that survives the exec; its descriptor.
    pub(crate) fn write(&self) -> Result<OwnedFd, String> {
        let mut file = std::fs::File::from(memfd(c"forkd-upgrade", 0)?);
        file.write_all(self.to_json().to_string().as_bytes())
            .and_then(|()| file.rewind())
            .map_err(|e| format!("memfd: {e}"))?;
        Ok(file.into())
    }
}

/// An anonymous file in memory (`memfd_create`) with `flags` (MFD_CLOEXEC or 0).
pub(crate) fn memfd(name: &std::ffi::CStr, flags: libc::c_uint) -> Result<OwnedFd, String> {
    // SAFETY: a name and flags; the descriptor returned, if any, is new and ours.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if raw < 0 {
        return Err(format!("memfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// In a new image: the state the previous one handed over, if this start is an upgrade
/// (`FORKD_UPGRADE_FD` set, and removed here so no program inherits it).
pub(crate) fn take() -> Result<Option<Handover>, String> {
    let Some(number) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    // SAFETY: the supervisor is single-threaded at start.
    unsafe { std::env::remove_var(ENV) };
    let raw: RawFd = number
        .to_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{ENV}={number:?} is not a descriptor"))?;
    let mut file = std::fs::File::from(handed(raw).map_err(|e| format!("{ENV}: {e}"))?);
    let mut text = String::new();
    // Bounded: a state is a few hundred bytes per worker.
    Read::by_ref(&mut file)
        .take(64 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("upgrade state: {e}"))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("upgrade state: {e}"))?;
    Handover::from_json(&value).map(Some)
}

/// Descriptor `fd`, which the previous image handed over and the state names, taken as this
/// image's own: checked to be open first (a number that is not must not become an OwnedFd).
pub(crate) fn handed(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD on any number only asks.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("descriptor {fd} was not handed over"));
    }
    // SAFETY: open, and handed to this image alone by the state that names it, once (a state
    // naming a descriptor twice is refused when read).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clears (`keep`) or sets close-on-exec on `fds`.
pub(crate) fn keep_across_exec(fds: &[RawFd], keep: bool) {
    for fd in fds {
        // SAFETY: F_SETFD on the supervisor's own open descriptors.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, if keep { 0 } else { libc::FD_CLOEXEC }) };
    }
}

fn peer_json(peer: &Peer) -> Value {
    match peer {
        Peer::Tcp(addr) => json!({ "tcp": addr.to_string() }),
        Peer::Unix { pid, uid, gid } => json!({ "unix": { "pid": pid, "uid": uid, "gid": gid } }),
    }
}

fn peer_of(v: &Value) -> Option<Peer> {
    if let Some(addr) = v["tcp"].as_str() {
        return addr.parse().ok().map(Peer::Tcp);
    }
    let unix = &v["unix"];
    unix.is_object().then(|| Peer::Unix {
        pid: unix["pid"].as_i64().map(|n| n as i32),
        uid: unix["uid"].as_u64().map(|n| n as u32),
        gid: unix["gid"].as_u64().map(|n| n as u32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_its_text() {
        let state = Handover {
            listeners: vec![ListenerState {
                fd: 3,
                bound_for: Some(":7000".into()),
                name: Some("web \"one\"".into()),
                handed_over: false,
                owned_path: Some("/run/forkd/a b.sock".into()),
            }],
            workers: vec![WorkerState {
                pid: 42,
                peer: Peer::Tcp("[2001:db8::1]:5".parse().unwrap()),
                via: Some("10.0.0.1:9".parse().unwrap()),
                age: Duration::from_millis(1500),
                lifetime_left: Some(Duration::from_secs(3)),
                outlived: true,
                tally_slot: Some(4),
            }],
            relays: vec![(7, 43)],
            drains: vec![8],
            headers: vec![(9, Some(0)), (10, None)],
            pidfile: Some((5, "/run/forkd.pid".into())),
            notify_socket: Some("@sd".into()),
            accepted_total: 99,
            from_version: "0.1.0".into(),
            tally_table: Some(11),
            groups_table: None,
            penalties: vec![(
                "192.0.2.0/24".parse().unwrap(),
                Offence::Timeout,
                Duration::from_millis(2500),
            )],
            buckets: vec![("10.0.0.1".parse().unwrap(), 0.5, Duration::from_millis(40))],
        };
        let back = Handover::from_json(&state.to_json()).unwrap();
        assert_eq!(back.to_json(), state.to_json());
        assert_eq!(back.fds(), vec![3, 7, 8, 9, 10, 5, 11]);
    }
}
