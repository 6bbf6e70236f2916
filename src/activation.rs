//! What forkd is handed instead of binding: systemd's listening sockets (LISTEN_PID,
//! LISTEN_FDS, LISTEN_FDNAMES, as sd_listen_fds(3) describes), or, with `--inetd`, the one
//! connection on descriptor 0.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::addr::Addr;
use crate::conn::{Connection, Peer, Stream};
use crate::listen::Listener;

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// Takes the sockets systemd passed, and clears the variables so no program started later
/// mistakes them for its own. `None` when there are none for this process.
pub fn take() -> Result<Option<Vec<Listener>>, String> {
    if !crate::config::sockets_offered() {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count: RawFd = count
        .parse::<u16>()
        .ok()
        .map(RawFd::from)
        .ok_or_else(|| format!("LISTEN_FDS={count} is not a count of descriptors"))?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    // SAFETY: forkd is single-threaded here; nothing else reads the environment meanwhile.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let passed = SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count;
    // Every one must be an open socket before any is taken: a count larger than what was
    // passed must not make forkd own (and close) descriptors that are not systemd's.
    if let Some(fd) = passed.clone().find(|fd| !is_socket(*fd)) {
        return Err(format!(
            "LISTEN_FDS={count}, but descriptor {fd} is not an open socket"
        ));
    }
    let mut listeners = Vec::new();
    for (i, fd) in passed.enumerate() {
        // SAFETY: systemd hands these descriptors to this process, which owns them from now on.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names.get(i).filter(|n| !n.is_empty()).cloned();
        let listener = Listener::inherited(owned, name)
            .map_err(|e| format!("descriptor {fd} from systemd: {e}"))?;
        listeners.push(listener);
    }
    Ok(Some(listeners))
}

/// Whether `fd` is open and a socket.
fn is_socket(fd: RawFd) -> bool {
    status(fd).is_some_and(|status| status.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// What fstat says of `fd`; `None` for a descriptor that is not open. Raw: a BorrowedFd must
/// not stand for a descriptor that may be closed.
fn status(fd: RawFd) -> Option<libc::stat> {
    let mut status = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer it is given, which is large enough; a
    // descriptor that is not open fails with EBADF.
    let rc = unsafe { libc::fstat(fd, status.as_mut_ptr()) };
    // SAFETY: fstat succeeded, so it filled the buffer.
    (rc == 0).then(|| unsafe { status.assume_init() })
}

/// With `--listen` also given, the inherited sockets must be exactly those addresses
/// (`:PORT` standing for 0.0.0.0:PORT and [::]:PORT).
pub fn check_agreement(inherited: &[Listener], asked: &[Addr]) -> Result<(), String> {
    let mut want: Vec<String> = asked
        .iter()
        .flat_map(|a| match a {
            Addr::AnyIp(port) => vec![format!("0.0.0.0:{port}"), format!("[::]:{port}")],
            other => vec![other.to_string()],
        })
        .collect();
    let mut have: Vec<String> = inherited.iter().map(Listener::address).collect();
    want.sort();
    have.sort();
    if want == have {
        Ok(())
    } else {
        Err(format!(
            "systemd passed sockets for {} but --listen asks for {}",
            have.join(","),
            want.join(",")
        ))
    }
}

/// inetd hands a "nowait" service the socket as descriptors 0, 1 and 2: when stderr is that
/// connection, point it at /dev/null before anything (an error at start, the log's own
/// fallback, a panic message) can write into the conversation. A stderr of its own (the
/// journal's stream under systemd's Accept=yes, a file) is kept. Call as early as possible.
pub fn protect_inetd_stderr() {
    if stderr_is_the_connection() {
        let _ = point_at_dev_null(&[2]);
    }
}

/// Whether descriptor 2 is the very socket on descriptor 0 (the same device and inode).
fn stderr_is_the_connection() -> bool {
    let identity = |fd| status(fd).map(|stat| (stat.st_dev, stat.st_ino));
    let connection = identity(0);
    is_socket(2) && connection.is_some() && connection == identity(2)
}

/// Makes each of `targets` a duplicate of /dev/null.
fn point_at_dev_null(targets: &[RawFd]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in targets {
        // SAFETY: dup2 onto one of the standard descriptors, which forkd never owns as a
        // Rust object (the inetd connection was duplicated away from 0 first).
        unsafe { libc::dup2(null.as_raw_fd(), *target) };
    }
    Ok(())
}

/// The connection inetd (or systemd with Accept=yes and StandardInput=socket) left on
/// descriptor 0. Descriptors 0 and 1 then point at /dev/null, so nothing but the handler
/// writes to the peer.
pub fn take_inetd_connection() -> Result<Connection, String> {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getpeername};
    // SAFETY: duplicates descriptor 0 (raw: it may be closed, and then this fails with
    // EBADF; a BorrowedFd must not stand for a closed descriptor).
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    let fd = nix::errno::Errno::result(fd).map_err(|e| format!("--inetd: descriptor 0: {e}"))?;
    // SAFETY: a fresh duplicate, owned here alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer_addr: SockaddrStorage = getpeername(fd)
        .map_err(|e| format!("--inetd: descriptor 0 is not a connected socket: {e}"))?;
    let (stream, peer) = match peer_addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            let stream = std::net::TcpStream::from(owned);
            let peer = stream.peer_addr().map_err(|e| format!("--inetd: {e}"))?;
            (Stream::Tcp(stream), Peer::Tcp(peer))
        }
        Some(AddressFamily::Unix) => {
            let stream = std::os::unix::net::UnixStream::from(owned);
            let peer = Peer::of_unix(&stream);
            (Stream::Unix(stream), peer)
        }
        other => return Err(format!("--inetd: unsupported address family {other:?}")),
    };
    let targets: &[RawFd] = if stderr_is_the_connection() {
        &[0, 1, 2]
    } else {
        &[0, 1]
    };
    point_at_dev_null(targets).map_err(|e| format!("--inetd: /dev/null: {e}"))?;
    Ok(Connection::new(stream, peer, None))
}
