//! Listening sockets: bind TCP (IPv4, IPv6, both) and Unix listeners, accept from them, and
//! set the options an accepted socket gets.
//!
//! Listeners are non-blocking (the supervisor polls them) and close-on-exec. A Unix socket
//! file left by a dead forkd is replaced; one that a live server still answers on is not.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrLike,
    SockaddrStorage, sockopt,
};

use crate::addr::Addr;
use crate::conn::{Connection, Peer, Stream};

/// A bound, listening socket.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    /// The socket file forkd made and removes at exit (inherited sockets are not forkd's).
    owned_path: Option<PathBuf>,
    /// The name systemd gave the socket (LISTEN_FDNAMES), for the log.
    name: Option<String>,
    /// Handed over by systemd, which keeps it open after forkd exits: connections waiting
    /// in its backlog are the next instance's to serve.
    handed_over: bool,
    /// The read and write timeout its accepted sockets come with (see
    /// [`Listener::pass_on_options`]).
    passed_timeout: Option<Duration>,
    /// The `--listen` address it was bound for (`:7000` binds two), so that a reload keeps
    /// the listeners of the addresses it still names; `None` for a socket handed over.
    bound_for: Option<Addr>,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Why a `--listen` address could not be set up.
#[derive(Debug)]
pub struct BindError {
    pub addr: String,
    pub reason: String,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.reason)
    }
}

impl std::error::Error for BindError {}

/// Binds every address. `:PORT` becomes two listeners, IPv4 and IPv6 (IPv6-only, so the two
/// do not collide); where the machine has no IPv6 the IPv4 one serves alone.
/// On error, listeners already bound are closed and their socket files removed.
/// Who a Unix socket file forkd creates belongs to, and its permission bits.
#[derive(Clone, Copy, Debug)]
pub struct SocketFile {
    /// Permission bits, as systemd's SocketMode= (default 0666).
    pub mode: u32,
    /// The `--user`/`--group` to own it, so the served user can connect to its own socket.
    pub owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

pub fn bind_all(
    addrs: &[Addr],
    backlog: i32,
    socket_file: SocketFile,
) -> Result<Vec<Listener>, BindError> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let err = |reason: String| BindError {
            addr: addr.to_string(),
            reason,
        };
        let result = match addr {
            Addr::Ip(sa) => bind_tcp(*sa, backlog).map(|l| vec![l]).map_err(errno_text),
            Addr::AnyIp(port) => bind_any(*port, backlog),
            Addr::Unix(path) => bind_unix(path, backlog, socket_file).map(|l| vec![l]),
        };
        match result {
            Ok(mut bound) => {
                for listener in &mut bound {
                    listener.bound_for = Some(addr.clone());
                }
                listeners.append(&mut bound)
            }
            Err(reason) => {
                listeners.iter().for_each(Listener::remove_socket_file);
                return Err(err(reason));
            }
        }
    }
    Ok(listeners)
}

fn bind_any(port: u16, backlog: i32) -> Result<Vec<Listener>, String> {
    let v4 =
        bind_tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), backlog).map_err(errno_text)?;
    // With port 0 the kernel picked one for IPv4: ask for the same on IPv6.
    let port = match &v4.socket {
        Socket::Tcp(l) => l.local_addr().map(|a| a.port()).unwrap_or(port),
        Socket::Unix(_) => port,
    };
    match bind_tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), backlog) {
        Ok(v6) => Ok(vec![v4, v6]),
        Err(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL) => {
            log::warn!("status listen=[::]:{port} ipv6=unavailable serving=ipv4-only");
            Ok(vec![v4])
        }
        Err(e) => Err(format!("[::]:{port}: {}", e.desc())),
    }
}

fn bind_tcp(addr: SocketAddr, backlog: i32) -> Result<Listener, Errno> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // SO_REUSEADDR: a restarted forkd binds again at once, whatever is left in TIME_WAIT.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(a) => {
            socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?;
        }
        SocketAddr::V6(a) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
        }
    }
    listen(&fd, backlog)?;
    Ok(Listener {
        socket: Socket::Tcp(TcpListener::from(fd)),
        owned_path: None,
        name: None,
        handed_over: false,
        bound_for: None,
        passed_timeout: None,
    })
}

fn bind_unix(path: &Path, backlog: i32, file: SocketFile) -> Result<Listener, String> {
    remove_stale_socket(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno_text)?;
    let sockaddr = socket::UnixAddr::new(path).map_err(errno_text)?;
    // The mode is set through the umask at creation, not by chmod afterwards: a chmod by
    // path could be redirected through a symbolic link planted in a shared directory.
    let umask = nix::sys::stat::Mode::from_bits_truncate((!file.mode & 0o777) as libc::mode_t);
    let previous = nix::sys::stat::umask(umask);
    let bound = socket::bind(fd.as_raw_fd(), &sockaddr);
    nix::sys::stat::umask(previous);
    bound.map_err(errno_text)?;
    let listener = Listener {
        socket: Socket::Unix(UnixListener::from(fd)),
        owned_path: Some(path.to_path_buf()),
        name: None,
        handed_over: false,
        bound_for: None,
        passed_timeout: None,
    };
    // lchown: a link put in the socket's place is changed itself, never its target.
    let owned = match file.owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(|e| format!("cannot give the socket file to uid {uid}: {e}")),
        None => Ok(()),
    };
    if let Err(e) = owned.and_then(|()| listen(&listener, backlog).map_err(errno_text)) {
        listener.remove_socket_file();
        return Err(e);
    }
    Ok(listener)
}

/// A socket file nobody answers on is left from a forkd that died: remove it. A live one, or
/// anything that is not a socket, is an error: forkd never deletes what it did not make.
fn remove_stale_socket(path: &Path) -> Result<(), String> {
    let meta = match crate::sandbox::path_metadata(path, false) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_socket() {
        return Err("path exists and is not a socket".to_string());
    }
    match UnixStream::connect(path) {
        Ok(_) => Err("another server is listening on this socket".to_string()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| format!("removing stale socket: {e}"))
        }
        Err(e) => Err(format!("checking existing socket: {e}")),
    }
}

fn listen(fd: &impl AsFd, backlog: i32) -> Result<(), Errno> {
    // libc directly: the kernel caps the backlog at net.core.somaxconn itself.
    // SAFETY: listen on a descriptor the caller owns; no memory is passed.
    let rc = unsafe { libc::listen(fd.as_fd().as_raw_fd(), backlog) };
    Errno::result(rc).map(drop)
}

fn errno_text(e: Errno) -> String {
    e.desc().to_string()
}

impl Listener {
    /// Takes over a listening socket inherited from systemd (made non-blocking here).
    pub fn inherited(fd: OwnedFd, name: Option<String>) -> Result<Listener, String> {
        let family = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .map_err(errno_text)?
            .family();
        let listening = socket::getsockopt(&fd, sockopt::AcceptConn).map_err(errno_text)?;
        let socket_type = socket::getsockopt(&fd, sockopt::SockType).map_err(errno_text)?;
        if socket_type != SockType::Stream || !listening {
            return Err(
                "not a listening stream socket (for Accept=yes run forkd --inetd with \
                 StandardInput=socket)"
                    .to_string(),
            );
        }
        let socket = match family {
            Some(AddressFamily::Inet | AddressFamily::Inet6) => Socket::Tcp(TcpListener::from(fd)),
            Some(AddressFamily::Unix) => Socket::Unix(UnixListener::from(fd)),
            other => return Err(format!("unsupported address family {other:?}")),
        };
        let listener = Listener {
            socket,
            owned_path: None,
            name,
            handed_over: true,
            bound_for: None,
            passed_timeout: None,
        };
        match &listener.socket {
            Socket::Tcp(l) => l.set_nonblocking(true),
            Socket::Unix(l) => l.set_nonblocking(true),
        }
        .map_err(|e| e.to_string())?;
        Ok(listener)
    }

    /// The TCP port as bound (the one the kernel chose, for port 0); `None` for a Unix socket.
    pub fn port(&self) -> Option<u16> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Socket::Unix(_) => None,
        }
    }

    /// The address as bound (with the port the kernel chose for port 0), in `--listen` form.
    pub fn address(&self) -> String {
        match &self.socket {
            Socket::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("?({e})")),
            Socket::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            {
                Some(path) => format!("unix:{}", path.display()),
                None => "unix:(unnamed)".to_string(),
            },
        }
    }

    /// The address, and systemd's name for the socket where it has one: for the log.
    pub fn local_name(&self) -> String {
        match &self.name {
            Some(name) => format!("{}(name={name})", self.address()),
            None => self.address(),
        }
    }

    /// Accepts one connection (the socket close-on-exec), or `WouldBlock`.
    pub fn accept(&self) -> io::Result<Connection> {
        if let Some(accepted) = self.accept_through_gate() {
            return accepted;
        }
        match &self.socket {
            Socket::Tcp(l) => {
                let (stream, addr) = l.accept()?;
                let timeout = self.passed_timeout;
                Ok(Connection::new(
                    Stream::Tcp(stream),
                    Peer::Tcp(addr),
                    timeout,
                ))
            }
            Socket::Unix(l) => {
                let (stream, _) = l.accept()?;
                let peer = Peer::of_unix(&stream);
                Ok(Connection::new(Stream::Unix(stream), peer, None))
            }
        }
    }

    /// [`Listener::accept`] for a supervisor under its workers' seccomp filter
    /// (`--sandbox`), which refuses accept but through the gate: `None` elsewhere.
    fn accept_through_gate(&self) -> Option<io::Result<Connection>> {
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let listener = match &self.socket {
            Socket::Tcp(l) => l.as_raw_fd(),
            Socket::Unix(l) => l.as_raw_fd(),
        };
        let args = [
            listener as usize,
            &raw mut address as usize,
            &raw mut length as usize,
            libc::SOCK_CLOEXEC as usize,
            0,
        ];
        // SAFETY: accept4 writes at most `length` bytes at `address`, and the length back.
        let result = unsafe { crate::sandbox::through_gate(libc::SYS_accept4, args) }?;
        if result < 0 {
            return Some(Err(io::Error::from_raw_os_error(-result as i32)));
        }
        // SAFETY: accept4 returned a new descriptor, which nothing else owns.
        let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(result as RawFd) };
        Some(match &self.socket {
            Socket::Tcp(_) => {
                // SAFETY: the kernel wrote `length` bytes of a socket address at `address`.
                let peer = unsafe {
                    socket::SockaddrStorage::from_raw((&raw const address).cast(), Some(length))
                };
                let peer = peer.and_then(|p| match (p.as_sockaddr_in(), p.as_sockaddr_in6()) {
                    (Some(v4), _) => Some(SocketAddr::V4((*v4).into())),
                    (_, Some(v6)) => Some(SocketAddr::V6((*v6).into())),
                    _ => None,
                });
                match peer {
                    Some(addr) => Ok(Connection::new(
                        Stream::Tcp(std::net::TcpStream::from(socket)),
                        Peer::Tcp(addr),
                        self.passed_timeout,
                    )),
                    None => Err(io::Error::other("accept4: not an internet address")),
                }
            }
            Socket::Unix(_) => {
                let stream = std::os::unix::net::UnixStream::from(socket);
                let peer = Peer::of_unix(&stream);
                Ok(Connection::new(Stream::Unix(stream), peer, None))
            }
        })
    }

    /// The name systemd gave the socket, if it did.
    pub fn systemd_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The socket file forkd made for it (and removes at exit).
    pub fn owned_path(&self) -> Option<&Path> {
        self.owned_path.as_deref()
    }

    /// Takes over a listener the previous image of this process handed over at an upgrade
    /// in place, as it was.
    pub(crate) fn adopted(
        fd: OwnedFd,
        bound_for: Option<Addr>,
        name: Option<String>,
        handed_over: bool,
        owned_path: Option<PathBuf>,
    ) -> Result<Listener, String> {
        let mut listener = Listener::inherited(fd, name)?;
        listener.bound_for = bound_for;
        listener.handed_over = handed_over;
        listener.owned_path = owned_path;
        Ok(listener)
    }

    /// The `--listen` address it was bound for; `None` for a socket systemd handed over.
    pub fn bound_for(&self) -> Option<&Addr> {
        self.bound_for.as_ref()
    }

    /// Whether systemd handed the socket over (and keeps it after forkd exits).
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// Removes the socket file of a Unix listener. Failing (forkd dropped to a user that may
    /// not write the directory) is logged, not fatal.
    pub fn remove_socket_file(&self) {
        if let Some(path) = &self.owned_path
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!(
                "stop listen=unix:{} reason={}",
                path.display(),
                crate::logging::quote(&format!("cannot remove socket file: {e}"))
            );
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Whether a socket accepted from a listener that went through [`Listener::pass_on_options`]
/// already has every option [`configure_accepted`] sets: Linux copies TCP_NODELAY and
/// SO_KEEPALIVE from the listener and leaves O_NONBLOCK behind, so a child there sets nothing.
pub const ACCEPTED_SOCKETS_INHERIT: bool = cfg!(target_os = "linux");

impl Listener {
    /// Sets on the listener the options its accepted sockets should have, once, where the
    /// kernel copies them on accept (see [`ACCEPTED_SOCKETS_INHERIT`]): system calls saved in
    /// every child. `timeout`, for protocol-v1 handlers, is `--idle-timeout` as the read and
    /// write timeout (a program run by the exec handler must not get one); accepted
    /// connections then say they have it ([`Connection::timeout`]). Linux copies socket
    /// options to TCP connections only, not to Unix ones.
    pub fn pass_on_options(
        &mut self,
        keepalive: bool,
        timeout: Option<Duration>,
        defer_accept: Option<Duration>,
    ) -> io::Result<()> {
        if let Socket::Tcp(l) = &self.socket {
            socket::setsockopt(l, sockopt::TcpNoDelay, &true)?;
            socket::setsockopt(l, sockopt::KeepAlive, &keepalive)?;
            // Set also when off (0), so that a reload turning it off reaches a kept listener.
            #[cfg(target_os = "linux")]
            {
                let wait = defer_accept.unwrap_or_default();
                // Whole seconds, rounded up: the kernel's unit.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
                // SAFETY: a plain setsockopt on our listener with an int it reads.
                let rc = unsafe {
                    libc::setsockopt(
                        l.as_raw_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_DEFER_ACCEPT,
                        (&secs as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = defer_accept;
            if ACCEPTED_SOCKETS_INHERIT {
                // Zero is no timeout: a reload turning it off clears what a kept listener had.
                let t = timeout.unwrap_or_default();
                let tv = nix::sys::time::TimeVal::new(
                    t.as_secs() as libc::time_t,
                    t.subsec_micros() as libc::suseconds_t,
                );
                socket::setsockopt(l, sockopt::ReceiveTimeout, &tv)?;
                socket::setsockopt(l, sockopt::SendTimeout, &tv)?;
                self.passed_timeout = timeout;
            }
        }
        Ok(())
    }
}

/// Sets `config`'s options on each of `listeners` ([`Listener::pass_on_options`]); the first
/// that failed, named. `program`: a program run by the exec handler owns its socket, so no
/// timeout is passed on to it.
pub(crate) fn pass_on_all(
    listeners: &mut [Listener],
    config: &crate::config::Config,
    program: bool,
) -> Result<(), String> {
    let timeout = config.idle_timeout.filter(|_| !program);
    let mut first = Ok(());
    for listener in listeners {
        let set = listener.pass_on_options(config.keepalive, timeout, config.defer_accept);
        if let (Err(e), Ok(())) = (set, &first) {
            first = Err(format!(
                "cannot set options on {}: {e}",
                listener.local_name()
            ));
        }
    }
    first
}

/// Options for a connected socket: blocking mode (the handler reads and writes blocking) and,
/// for TCP, TCP_NODELAY so a small reply leaves at once instead of waiting on Nagle's
/// algorithm, and SO_KEEPALIVE (unless `--no-keepalive`) so a peer that vanished without a
/// word is eventually noticed. Set in the child, so the supervisor's accept path stays short,
/// and only where the listener could not pass them on.
pub fn configure_accepted(stream: &Stream, keepalive: bool) -> io::Result<()> {
    // Linux's accept4 never passes the listener's O_NONBLOCK on; elsewhere it may.
    if !cfg!(target_os = "linux") {
        stream.set_nonblocking(false)?;
    }
    if let Stream::Tcp(s) = stream {
        s.set_nodelay(true)?;
        socket::setsockopt(s, sockopt::KeepAlive, &keepalive).map_err(io::Error::from)?;
    }
    Ok(())
}
