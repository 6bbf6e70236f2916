//! The supervisor: one thread, one poll loop over the listeners and the signal pipe.
//!
//! It accepts, forks a child per connection, reaps children on SIGCHLD, and shuts down on
//! SIGTERM/SIGINT with a grace period. At `--max-children` it leaves the listeners out of the
//! poll set, so new connections wait in the kernel's backlog and nothing is refused. It never
//! reads client data; the only bytes it writes to a client are a best-effort ERROR frame when
//! it cannot fork.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::child::{self, EXIT_PANIC};
use crate::cli::Config;
use crate::conn::{Connection, Peer};
use crate::frame::{ErrorCode, Frame};
use crate::handler::{self, Handler, ProtocolSettings};
use crate::listen::{self, Listener};
use crate::pidfile::Pidfile;
use crate::signals::SignalPipe;

/// Connections accepted from one listener per wake-up, so one busy listener cannot starve
/// the others or the signal pipe.
const ACCEPT_BATCH: usize = 32;

/// How long the listeners rest after accept() ran out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds, writes the pidfile, serves until SIGTERM/SIGINT, cleans up. Errors are the start-up
/// failures, as one line each.
pub fn run(config: &Config) -> Result<(), String> {
    let listeners = listen::bind_all(&config.listen, config.backlog).map_err(|e| e.to_string())?;
    let cleanup_listeners =
        |listeners: &[Listener]| listeners.iter().for_each(Listener::remove_socket_file);
    let signals = match SignalPipe::install() {
        Ok(s) => s,
        Err(e) => {
            cleanup_listeners(&listeners);
            return Err(format!("cannot install signal handlers: {e}"));
        }
    };
    let pidfile = match config.pidfile.as_deref().map(Pidfile::write).transpose() {
        Ok(p) => p,
        Err(e) => {
            cleanup_listeners(&listeners);
            return Err(e);
        }
    };
    let handler = handler::build(
        config.handler,
        ProtocolSettings {
            max_frame: config.max_frame,
        },
    );
    let names: Vec<String> = listeners.iter().map(Listener::local_name).collect();
    log::info!(
        "start version={} pid={} listen={} handler={} max_children={} max_frame={} grace={}s",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        names.join(","),
        config.handler.as_str(),
        config.max_children,
        config.max_frame,
        config.grace.as_secs_f64()
    );
    let mut supervisor = Supervisor::new(config, listeners, signals, handler);
    supervisor.serve();
    if let Some(p) = pidfile {
        p.remove();
    }
    Ok(())
}

struct ChildRecord {
    peer: Peer,
    started: Instant,
}

/// How a child ended.
enum Ended {
    Exit(i32),
    Signal(Signal, bool),
}

struct Supervisor {
    listeners: Vec<Listener>,
    signals: SignalPipe,
    handler: Box<dyn Handler>,
    max_children: usize,
    grace: Duration,
    children: HashMap<Pid, ChildRecord>,
    /// Descriptors a child closes: the listeners and the signal pipe.
    supervisor_fds: Vec<RawFd>,
    /// Set after accept() failed for lack of resources: the listeners rest until then.
    accept_resume_at: Option<Instant>,
    accept_failures: LogThrottle,
    accepted_total: u64,
    at_limit: bool,
}

impl Supervisor {
    fn new(
        config: &Config,
        listeners: Vec<Listener>,
        signals: SignalPipe,
        handler: Box<dyn Handler>,
    ) -> Supervisor {
        let mut supervisor_fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
        supervisor_fds.extend(signals.raw_fds());
        Supervisor {
            listeners,
            signals,
            handler,
            max_children: config.max_children as usize,
            grace: config.grace,
            children: HashMap::new(),
            supervisor_fds,
            accept_resume_at: None,
            accept_failures: LogThrottle::default(),
            accepted_total: 0,
            at_limit: false,
        }
    }

    fn active(&self) -> String {
        format!("{}/{}", self.children.len(), self.max_children)
    }

    /// The main loop; returns once shutdown is complete.
    fn serve(&mut self) {
        loop {
            let now = Instant::now();
            if self.accept_resume_at.is_some_and(|t| t <= now) {
                self.accept_resume_at = None;
            }
            self.note_limit();
            let accepting =
                self.children.len() < self.max_children && self.accept_resume_at.is_none();
            let timeout = self
                .accept_resume_at
                .map(|t| t.saturating_duration_since(now));
            let (signalled, ready) = match self.wait(accepting, timeout) {
                Some(r) => r,
                None => continue,
            };
            if signalled {
                for sig in self.signals.drain() {
                    if matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
                        self.reap();
                        self.shut_down(sig);
                        return;
                    }
                }
                self.reap();
            }
            for index in ready {
                self.accept_from(index);
            }
        }
    }

    /// One poll. Returns whether the signal pipe is readable and which listeners are, or
    /// `None` if poll was interrupted or timed out.
    fn wait(&self, accepting: bool, timeout: Option<Duration>) -> Option<(bool, Vec<usize>)> {
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if accepting {
            fds.extend(
                self.listeners
                    .iter()
                    .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
            );
        }
        match nix::poll::poll(&mut fds, poll_timeout(timeout)) {
            Ok(0) | Err(Errno::EINTR) => return None,
            Ok(_) => {}
            Err(e) => {
                // poll only fails on EINTR, EINVAL or ENOMEM; rest rather than spin.
                log::error!("status reason=\"poll: {e}\"");
                std::thread::sleep(ACCEPT_BACKOFF);
                return None;
            }
        }
        let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let signalled = readable(&fds[0]);
        let ready = fds[1..]
            .iter()
            .enumerate()
            .filter(|(_, fd)| readable(fd))
            .map(|(i, _)| i)
            .collect();
        Some((signalled, ready))
    }

    /// Logs the moments the child limit is reached and left, so the log shows when
    /// connections were waiting in the backlog.
    fn note_limit(&mut self) {
        let at_limit = self.children.len() >= self.max_children;
        if at_limit != self.at_limit {
            self.at_limit = at_limit;
            let accepting = if at_limit { "paused" } else { "resumed" };
            log::info!("status active={} accepting={accepting}", self.active());
        }
    }

    fn accept_from(&mut self, index: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.children.len() >= self.max_children {
                return;
            }
            match self.listeners[index].accept() {
                Ok(conn) => self.spawn(conn, index),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer gave up between the handshake and accept(): nothing to serve.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    self.accept_failed(index, e);
                    return;
                }
            }
        }
    }

    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or anything else
    /// unexpected: rest the listeners for a moment instead of spinning on a listener that
    /// stays readable, and log at most once a second with a count.
    fn accept_failed(&mut self, index: usize, e: io::Error) {
        self.accept_resume_at = Some(Instant::now() + ACCEPT_BACKOFF);
        if let Some(count) = self.accept_failures.hit() {
            log::warn!(
                "status listen={} reason={} failures={count} backoff_ms={}",
                self.listeners[index].local_name(),
                crate::logging::quote(&format!("accept: {e}")),
                ACCEPT_BACKOFF.as_millis()
            );
        }
    }

    fn spawn(&mut self, conn: Connection, index: usize) {
        let peer = conn.peer.clone();
        match child::spawn(conn, &self.supervisor_fds, self.handler.as_ref()) {
            Ok(pid) => {
                self.accepted_total += 1;
                self.children.insert(
                    pid,
                    ChildRecord {
                        peer: peer.clone(),
                        started: Instant::now(),
                    },
                );
                log::info!(
                    "accept peer={peer} pid={pid} listen={} active={}",
                    self.listeners[index].local_name(),
                    self.active()
                );
            }
            Err((e, conn)) => {
                log::error!(
                    "reject peer={peer} reason=\"fork: {e}\" active={}",
                    self.active()
                );
                // Best effort, never blocking the loop: the peer learns why it is dropped.
                let mut stream = conn.stream;
                if stream.set_nonblocking(true).is_ok() {
                    let _ = Frame::error(ErrorCode::Busy, "server cannot start a process")
                        .write_to(&mut stream);
                }
            }
        }
    }

    /// Reaps every child that has exited, without blocking.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.ended(pid, Ended::Exit(code)),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    self.ended(pid, Ended::Signal(sig, core))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("status reason=\"waitpid: {e}\"");
                    return;
                }
            }
        }
    }

    fn ended(&mut self, pid: Pid, how: Ended) {
        let Some(record) = self.children.remove(&pid) else {
            return;
        };
        let duration = record.started.elapsed().as_secs_f64();
        let active = self.active();
        let peer = record.peer;
        match how {
            Ended::Exit(EXIT_PANIC) => log::warn!(
                "end peer={peer} pid={pid} status=exit:{EXIT_PANIC} reason=panic duration={duration:.3}s active={active}"
            ),
            Ended::Exit(code) => log::info!(
                "end peer={peer} pid={pid} status=exit:{code} duration={duration:.3}s active={active}"
            ),
            Ended::Signal(sig, core) => log::warn!(
                "end peer={peer} pid={pid} status=signal:{} core={} duration={duration:.3}s active={active}",
                sig.as_str(),
                if core { "yes" } else { "no" }
            ),
        }
    }

    /// Stops accepting, lets children finish for the grace period, kills the rest.
    fn shut_down(&mut self, sig: Signal) {
        for listener in self.listeners.drain(..) {
            listener.remove_socket_file();
        }
        log::info!(
            "stop signal={} active={} grace={}s",
            sig.as_str(),
            self.active(),
            self.grace.as_secs_f64()
        );
        let deadline = Instant::now() + self.grace;
        while !self.children.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some((true, _)) = self.wait(false, Some(left)) {
                let again = self
                    .signals
                    .drain()
                    .into_iter()
                    .find(|s| matches!(s, Signal::SIGTERM | Signal::SIGINT));
                self.reap();
                if let Some(again) = again {
                    log::info!("stop signal={} grace=ended", again.as_str());
                    break;
                }
            }
        }
        let killed = self.children.len();
        for pid in self.children.keys() {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        while !self.children.is_empty() {
            match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => self.ended(pid, Ended::Exit(code)),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    self.ended(pid, Ended::Signal(sig, core))
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        log::info!("stop served={} killed={killed}", self.accepted_total);
    }
}

fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        // Round up: a sub-millisecond remainder must not become a busy zero timeout.
        Some(d) => {
            let ms = d.as_millis().saturating_add(1).min(i32::MAX as u128) as u32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Lets a repeated log line out at most once a second, with the count of occurrences since.
#[derive(Default)]
struct LogThrottle {
    last: Option<Instant>,
    count: u64,
}

impl LogThrottle {
    /// Counts an occurrence; returns the count to log when a line is due.
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !due {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}
