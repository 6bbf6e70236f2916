//! The supervisor: one thread, one poll loop over the listeners, the signal descriptor and
//! rejected connections draining.
//!
//! It accepts, decides admission before any fork, forks a child per admitted connection, reaps
//! children on SIGCHLD, ends children that outlive `--max-lifetime`, and shuts down on
//! SIGTERM/SIGINT with a grace period. At `--max-children` it either leaves the listeners out
//! of the poll set (`--overload defer`: new connections wait in the kernel's backlog) or keeps
//! accepting to reject (`--overload reject`). It never reads client data; the only bytes it
//! writes to a client are a best-effort ERROR frame when it turns a connection away.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::activation;
use crate::admission::{Admission, Refusal};
use crate::child::{self, ChildSetup, EXIT_PANIC};
use crate::cli::{Config, Overload};
use crate::conn::{Connection, Peer};
use crate::drain::Drains;
use crate::frame::{ErrorCode, Frame};
use crate::handler::{self, Handler, HandlerName, ProtocolSettings};
use crate::listen::{self, Listener};
use crate::logging::quote;
use crate::model::{Model, Threads};
use crate::notify::Notifier;
use crate::pidfile::Pidfile;
use crate::privilege;
use crate::relay::Relays;
use crate::signals::Signals;

/// Connections accepted from one listener per wake-up, so one busy listener cannot starve
/// the others or the signals.
const ACCEPT_BATCH: usize = 32;

/// How long the listeners rest after accept() ran out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Between the SIGTERM and the SIGKILL for a child past `--max-lifetime`.
const LIFETIME_KILL_DELAY: Duration = Duration::from_secs(1);

/// `reject` lines logged per second at most; the rest are counted in a summary line.
const REJECT_LINES_PER_SEC: u32 = 20;

/// Takes its listeners (bound, inherited from systemd, or the one `--inetd` connection),
/// drops privileges, writes the pidfile, serves until SIGTERM/SIGINT (or, with `--inetd`,
/// until its connection ends), cleans up. Errors are the start-up failures, as one line each.
pub fn run(config: &Config) -> Result<(), String> {
    let identity = privilege::resolve(config.user.as_deref(), config.group.as_deref())?;
    let notifier = Notifier::from_env();
    let (listeners, inetd_connection) = if config.inetd {
        (Vec::new(), Some(activation::take_inetd_connection()?))
    } else if let Some(inherited) = activation::take()? {
        if !config.listen.is_empty() {
            activation::check_agreement(&inherited, &config.listen)?;
        }
        (inherited, None)
    } else if config.listen.is_empty() {
        return Err(NO_ADDRESS.to_string());
    } else {
        let bound = listen::bind_all(&config.listen, config.backlog).map_err(|e| e.to_string())?;
        (bound, None)
    };
    let cleanup = |listeners: &[Listener], e: String| {
        listeners.iter().for_each(Listener::remove_socket_file);
        e
    };
    let mut listeners = listeners;
    // A program run by the exec handler owns its socket: no timeouts for it.
    let timeout = config
        .idle_timeout
        .filter(|_| config.handler != HandlerName::Exec);
    let refused = listeners.iter_mut().find_map(|listener| {
        let set = listener.pass_on_options(config.keepalive, timeout);
        set.err()
            .map(|e| format!("cannot set options on {}: {e}", listener.local_name()))
    });
    if let Some(e) = refused {
        return Err(cleanup(&listeners, e));
    }
    if let Some(conn) = &inetd_connection {
        listen::configure_accepted(&conn.stream, config.keepalive)
            .map_err(|e| format!("--inetd: socket options: {e}"))?;
    }
    let signals = Signals::install()
        .map_err(|e| cleanup(&listeners, format!("cannot install signal handlers: {e}")))?;
    // The pidfile is written while still root, so it may live in /run.
    let pidfile = config
        .pidfile
        .as_deref()
        .map(Pidfile::write)
        .transpose()
        .map_err(|e| cleanup(&listeners, e))?;
    if let Some(id) = &identity {
        privilege::drop_to(id).map_err(|e| cleanup(&listeners, e))?;
    }
    let handler = handler::build(
        config.handler,
        ProtocolSettings {
            max_frame: config.max_frame,
            idle_timeout: config.idle_timeout,
        },
        config.program.as_ref(),
    );
    let names: Vec<String> = listeners.iter().map(Listener::local_name).collect();
    // Under inetd every connection starts a forkd: its start line is detail, not news.
    let lifecycle = if config.inetd {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    log::log!(
        lifecycle,
        "start version={} pid={} listen={} handler={} max_children={} max_frame={} grace={}s user={}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        if config.inetd {
            "inetd".to_string()
        } else {
            names.join(",")
        },
        config.handler.as_str(),
        config.max_children,
        config.max_frame,
        config.grace.as_secs_f64(),
        nix::unistd::Uid::effective(),
    );
    if nix::unistd::Uid::effective().is_root() {
        log::warn!("start user=root reason=\"serving as root: use --user to drop privileges\"");
    }
    let mut supervisor = Supervisor::new(config, listeners, signals, handler, notifier, lifecycle);
    if let Some(conn) = inetd_connection {
        supervisor.admit(conn, Origin::Inetd, false);
    }
    let status = supervisor.status();
    if let Some(n) = &mut supervisor.notifier {
        n.ready(status);
    }
    supervisor.serve();
    if let Some(p) = pidfile {
        p.remove();
    }
    Ok(())
}

/// Said when forkd has nowhere to take connections from.
pub const NO_ADDRESS: &str = "no address to listen on: give --listen ADDR, or --inetd, or start under systemd socket activation";

/// Where a connection came from.
#[derive(Clone, Copy)]
enum Origin {
    Listener(usize),
    Inetd,
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

/// What one poll reported. Ready listeners are read from the poll set itself, so the
/// common wake-up (a signal, a connection) allocates nothing.
#[derive(Default)]
struct Ready {
    signals: bool,
    drains: Vec<usize>,
    relays: Vec<usize>,
}

/// The descriptors of one poll, in a buffer kept from poll to poll: after a fork every heap
/// page the supervisor writes is a copy-on-write fault, so the loop does not allocate per
/// connection. Order: the signal descriptor, the listeners (while accepting), draining
/// sockets, stderr relays.
#[derive(Default)]
struct PollSet {
    fds: Vec<libc::pollfd>,
    listeners: usize,
}

impl PollSet {
    fn push(&mut self, fd: BorrowedFd<'_>) {
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }

    fn readable(&self, index: usize) -> bool {
        self.fds[index].revents != 0
    }

    /// Whether listener `index` has a connection waiting.
    fn listener_ready(&self, index: usize) -> bool {
        index < self.listeners && self.readable(1 + index)
    }

    /// The readable entries of `range`, as indices from its start.
    fn ready_in(&self, range: std::ops::Range<usize>) -> Vec<usize> {
        let start = range.start;
        range
            .filter(|i| self.readable(*i))
            .map(|i| i - start)
            .collect()
    }
}

/// Who serves a connection, for log lines: a child process or a thread.
#[derive(Clone, Copy)]
enum Worker {
    Process(Pid),
    Thread(u64),
}

impl std::fmt::Display for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Worker::Process(pid) => write!(f, "pid={pid}"),
            Worker::Thread(id) => write!(f, "thread={id}"),
        }
    }
}

/// Connections being served out of the limit, `active=N/MAX` in log lines.
struct Active(usize, usize);

impl std::fmt::Display for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

struct Supervisor {
    listeners: Vec<Listener>,
    /// The listeners' names for log lines, made once.
    listener_names: Vec<String>,
    signals: Signals,
    poll: PollSet,
    handler: Arc<dyn Handler>,
    max_children: usize,
    overload: Overload,
    grace: Duration,
    max_lifetime: Option<Duration>,
    children: HashMap<Pid, ChildRecord>,
    /// `--model thread`: the threads, and the connections they serve by thread number.
    threads: Option<Threads>,
    thread_workers: HashMap<u64, ChildRecord>,
    /// Living children by start time, when `--max-lifetime` is set: the first is the next to
    /// outlive it. Entries leave when the child is reaped, so this is as small as `children`.
    lifetimes: BTreeSet<(Instant, Pid)>,
    /// Children sent SIGTERM for their lifetime, with the moment SIGKILL follows.
    kills_due: VecDeque<(Instant, Pid, Instant)>,
    admission: Admission,
    drains: Drains,
    /// The stderr pipes of exec'd programs.
    relays: Relays,
    setup: ChildSetup,
    /// Set after accept() failed for lack of resources: the listeners rest until then.
    accept_resume_at: Option<Instant>,
    accept_failures: LogThrottle,
    rejects: RejectLog,
    accepted_total: u64,
    at_limit: bool,
    notifier: Option<Notifier>,
    /// The level of the start and stop lines (debug under inetd).
    lifecycle: log::Level,
}

impl Supervisor {
    fn new(
        config: &Config,
        listeners: Vec<Listener>,
        signals: Signals,
        handler: Box<dyn Handler>,
        notifier: Option<Notifier>,
        lifecycle: log::Level,
    ) -> Supervisor {
        let threads = (config.model == Model::Thread)
            .then(|| Threads::new(signals.waker(), config.keepalive));
        let mut supervisor_fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
        supervisor_fds.extend(signals.raw_fds());
        supervisor_fds.extend(notifier.as_ref().map(Notifier::raw_fd));
        Supervisor {
            listener_names: listeners.iter().map(Listener::local_name).collect(),
            listeners,
            signals,
            poll: PollSet::default(),
            handler: Arc::from(handler),
            max_children: config.max_children as usize,
            overload: config.overload,
            grace: config.grace,
            max_lifetime: config.max_lifetime,
            children: HashMap::new(),
            threads,
            thread_workers: HashMap::new(),
            lifetimes: BTreeSet::new(),
            kills_due: VecDeque::new(),
            // Sources are counted for --per-source, and for TCPCONNNUM where a program sees it.
            admission: Admission::new(
                config.admission.clone(),
                matches!(config.handler, HandlerName::Exec | HandlerName::FrameExec),
            ),
            drains: Drains::default(),
            relays: Relays::default(),
            setup: ChildSetup {
                supervisor_fds,
                limits: config.child_limits,
                keepalive: config.keepalive,
            },
            accept_resume_at: None,
            accept_failures: LogThrottle::default(),
            rejects: RejectLog::default(),
            accepted_total: 0,
            at_limit: false,
            notifier,
            lifecycle,
        }
    }

    /// For systemd's STATUS=.
    fn status(&self) -> String {
        format!(
            "{} active of {} children",
            self.workers(),
            self.max_children
        )
    }

    /// SIGUSR1: one line with what the supervisor is doing.
    fn log_status(&self) {
        log::info!(
            "status signal=SIGUSR1 pid={} active={} accepted={} draining={} relays={} listen={}",
            std::process::id(),
            self.active(),
            self.accepted_total,
            self.drains.count(),
            self.relays.count(),
            self.listener_names.join(",")
        );
    }

    /// Tells systemd the status if it changed (throttled by the notifier).
    fn notify_status(&mut self) {
        if self.notifier.is_none() {
            return;
        }
        let status = self.status();
        if let Some(n) = &mut self.notifier {
            n.status(status, Instant::now());
        }
    }

    /// Connections being served: child processes and threads.
    fn workers(&self) -> usize {
        self.children.len() + self.thread_workers.len()
    }

    fn active(&self) -> Active {
        Active(self.workers(), self.max_children)
    }

    /// The main loop; returns once shutdown is complete, or when there is nothing left to
    /// serve (no listener, no child: the `--inetd` case).
    fn serve(&mut self) {
        loop {
            if self.listeners.is_empty() && self.workers() == 0 {
                self.relays.finish_all();
                log::log!(
                    self.lifecycle,
                    "stop served={} killed=0",
                    self.accepted_total
                );
                return;
            }
            let now = Instant::now();
            if let Some(n) = &mut self.notifier {
                n.flush(now);
            }
            if self.accept_resume_at.is_some_and(|t| t <= now) {
                self.accept_resume_at = None;
            }
            self.enforce_lifetimes(now);
            self.rejects.flush_if_due(now);
            self.note_limit();
            let below_limit = self.workers() < self.max_children;
            let accepting = self.accept_resume_at.is_none()
                && (below_limit || self.overload == Overload::Reject);
            let ready = self.wait(accepting, self.next_timer());
            // Also with nothing readable: draining sockets past their deadline close here.
            if !self.drains.is_empty() {
                self.drains.service(&ready.drains, Instant::now());
            }
            if !ready.relays.is_empty() {
                self.relays.service(&ready.relays);
            }
            if ready.signals {
                let signals = self.signals.drain();
                let stop = [Signal::SIGTERM, Signal::SIGINT]
                    .into_iter()
                    .find(|s| signals.contains(*s));
                if signals.contains(Signal::SIGHUP) {
                    let log = crate::logging::reopen();
                    log::info!("status signal=SIGHUP log={log}");
                }
                if signals.contains(Signal::SIGUSR1) {
                    self.log_status();
                }
                self.reap();
                if let Some(sig) = stop {
                    self.shut_down(sig);
                    return;
                }
            }
            for index in 0..self.listeners.len() {
                if self.poll.listener_ready(index) {
                    self.accept_from(index);
                }
            }
        }
    }

    /// The earliest moment the loop has something to do without an event.
    fn next_timer(&self) -> Option<Instant> {
        [
            self.accept_resume_at,
            self.drains.next_deadline(),
            self.lifetimes
                .first()
                .zip(self.max_lifetime)
                .map(|((started, _), lifetime)| *started + lifetime),
            self.kills_due.front().map(|(t, _, _)| *t),
            self.rejects.flush_due(),
            self.notifier.as_ref().and_then(Notifier::due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One poll over the signals, the listeners (if `accepting`) and draining sockets.
    fn wait(&mut self, accepting: bool, until: Option<Instant>) -> Ready {
        let poll = &mut self.poll;
        poll.fds.clear();
        poll.push(self.signals.as_fd());
        poll.listeners = if accepting { self.listeners.len() } else { 0 };
        if accepting {
            self.listeners.iter().for_each(|l| poll.push(l.as_fd()));
        }
        self.drains.fds().for_each(|fd| poll.push(fd));
        let drains_end = poll.fds.len();
        self.relays.fds().for_each(|fd| poll.push(fd));
        let timeout = until.map(|t| t.saturating_duration_since(Instant::now()));
        // SAFETY: every descriptor in the set is owned by `self` and open for the call.
        let n = unsafe {
            libc::poll(
                poll.fds.as_mut_ptr(),
                poll.fds.len() as libc::nfds_t,
                poll_timeout(timeout),
            )
        };
        if n <= 0 {
            poll.listeners = 0;
            match Errno::last() {
                _ if n == 0 => {}
                Errno::EINTR => {}
                e => {
                    // poll fails only on EINTR, EINVAL or ENOMEM; rest rather than spin.
                    log::error!("status reason=\"poll: {e}\"");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
            return Ready::default();
        }
        let listeners_end = 1 + poll.listeners;
        Ready {
            signals: poll.readable(0),
            drains: poll.ready_in(listeners_end..drains_end),
            relays: poll.ready_in(drains_end..poll.fds.len()),
        }
    }

    /// Logs the moments the child limit is reached and left, so the log shows when
    /// connections were waiting in the backlog (or being turned away).
    fn note_limit(&mut self) {
        let at_limit = self.workers() >= self.max_children;
        if at_limit != self.at_limit {
            self.at_limit = at_limit;
            let accepting = match (at_limit, self.overload) {
                (false, _) => "resumed",
                (true, Overload::Defer) => "paused",
                (true, Overload::Reject) => "rejecting",
            };
            log::info!("status active={} accepting={accepting}", self.active());
        }
    }

    fn accept_from(&mut self, index: usize) {
        for _ in 0..ACCEPT_BATCH {
            let at_limit = self.workers() >= self.max_children;
            if at_limit && self.overload == Overload::Defer {
                return;
            }
            match self.listeners[index].accept() {
                Ok(conn) => self.admit(conn, Origin::Listener(index), at_limit),
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
                quote(&format!("accept: {e}")),
                ACCEPT_BACKOFF.as_millis()
            );
        }
    }

    /// Where a connection came from, named only when a log line needs it: the accept path
    /// allocates nothing, since every page it writes after a fork is a copy-on-write fault.
    fn origin(&self, origin: Origin) -> String {
        match origin {
            Origin::Listener(index) => self.listener_names[index].clone(),
            Origin::Inetd => "inetd".to_string(),
        }
    }

    /// Admission, then a child, or a rejection.
    fn admit(&mut self, conn: Connection, listen: Origin, at_limit: bool) {
        let now = Instant::now();
        let verdict = self.admission.check(&conn.peer, now).and_then(|()| {
            if at_limit {
                Err(Refusal {
                    code: ErrorCode::Busy,
                    reason: "overload",
                    message: format!("server at its limit of {} connections", self.max_children),
                })
            } else {
                Ok(())
            }
        });
        match verdict {
            Ok(()) => self.spawn(conn, listen),
            Err(refusal) => self.reject(conn, listen, refusal),
        }
    }

    fn reject(&mut self, conn: Connection, listen: Origin, refusal: Refusal) {
        let now = Instant::now();
        if self.rejects.admit_line(now) {
            log::info!(
                "reject peer={} listen={} reason={} code={} active={}",
                conn.peer,
                self.origin(listen),
                refusal.reason,
                refusal.code as u16,
                self.active()
            );
        }
        let error = Frame::error(refusal.code, &refusal.message);
        self.drains.reject(conn.stream, &error, now);
    }

    fn spawn(&mut self, mut conn: Connection, listen: Origin) {
        let peer = conn.peer.clone();
        conn.from_source = self
            .admission
            .source_of(&peer)
            .map_or(1, |s| self.admission.connections_from(&s) + 1);
        if self.threads.is_some() {
            self.spawn_thread(conn, listen);
            return;
        }
        if let Some(program) = self.handler.program_for(&conn) {
            self.spawn_program(program, conn, listen);
            return;
        }
        let mut not_for_child = self.drains.raw_fds();
        not_for_child.extend(self.relays.raw_fds());
        match child::spawn(conn, &self.setup, &not_for_child, &*self.handler) {
            Ok(pid) => self.child_started(pid, peer, listen),
            Err((e, conn)) => self.cannot_start(conn, "fork", e.to_string()),
        }
    }

    /// The exec handler's program for `conn`, its stderr a pipe relayed into the log.
    fn spawn_program(&mut self, program: handler::Launch, conn: Connection, listen: Origin) {
        let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pipe) => pipe,
            Err(e) => return self.cannot_start(conn, "pipe", e.to_string()),
        };
        let peer = conn.peer.clone();
        let name = program.argv[0].to_string_lossy().into_owned();
        // The write end is the program's now; when the program ends, the relay sees EOF.
        match child::spawn_program(program, conn, &self.setup, write) {
            Ok(pid) => {
                self.relays.add(read, pid);
                self.child_started(pid, peer, listen);
            }
            // The connection is closed: no ERROR frame, the program owns the protocol.
            Err(e) => log::error!(
                "error peer={peer} reason={} active={}",
                quote(&format!("cannot run {name}: {e}")),
                self.active()
            ),
        }
    }

    /// Records and logs a child process serving `peer`.
    fn child_started(&mut self, pid: Pid, peer: Peer, listen: Origin) {
        let record = self.started(peer, Worker::Process(pid), listen);
        if self.max_lifetime.is_some() {
            self.lifetimes.insert((record.started, pid));
        }
        self.children.insert(pid, record);
        self.notify_status();
    }

    /// A worker is serving `peer`: count it and log it; its record, for the caller to store
    /// (then tell systemd, which counts the stored records).
    fn started(&mut self, peer: Peer, who: Worker, listen: Origin) -> ChildRecord {
        self.accepted_total += 1;
        self.admission.started(&peer);
        let record = ChildRecord {
            peer,
            started: Instant::now(),
        };
        // Counted before the record is stored: the worker it is about is active too.
        log::info!(
            "accept peer={} {who} listen={} active={}/{}",
            record.peer,
            self.origin(listen),
            self.workers() + 1,
            self.max_children
        );
        record
    }

    /// No process for this connection (`what` failed): ERROR 4, best effort, and a line.
    fn cannot_start(&mut self, conn: Connection, what: &str, error: String) {
        log::error!(
            "reject peer={} reason={what} code=4 error={} active={}",
            conn.peer,
            quote(&error),
            self.active()
        );
        let frame = Frame::error(ErrorCode::Busy, "server cannot start a process");
        self.drains.reject(conn.stream, &frame, Instant::now());
    }

    fn spawn_thread(&mut self, conn: Connection, listen: Origin) {
        let peer = conn.peer.clone();
        let threads = self.threads.as_mut().expect("thread model");
        match threads.spawn(conn, &self.handler) {
            Ok(id) => {
                let record = self.started(peer, Worker::Thread(id), listen);
                self.thread_workers.insert(id, record);
                self.notify_status();
            }
            // The thread's closure owned the connection: the peer sees a plain close.
            Err(e) => log::error!(
                "reject peer={peer} reason=thread code=4 error={} active={}",
                quote(&e.to_string()),
                self.active()
            ),
        }
    }

    /// Whether `pid` is still the child that started at `started` (pids are reused).
    fn is_child(&self, pid: Pid, started: Instant) -> bool {
        self.children
            .get(&pid)
            .is_some_and(|c| c.started == started)
    }

    /// SIGTERM to children past `--max-lifetime`, SIGKILL to those still there a moment
    /// later. A process can be ended whatever it is doing, even spinning inside its handler:
    /// the reason to fork.
    fn enforce_lifetimes(&mut self, now: Instant) {
        let Some(lifetime) = self.max_lifetime else {
            return;
        };
        while let Some(&(started, pid)) = self.lifetimes.first() {
            if started + lifetime > now {
                break;
            }
            self.lifetimes.pop_first();
            let _ = kill(pid, Signal::SIGTERM);
            log::warn!(
                "status pid={pid} peer={} action=SIGTERM reason=max-lifetime age={:.3}s",
                self.children[&pid].peer,
                started.elapsed().as_secs_f64()
            );
            self.kills_due
                .push_back((now + LIFETIME_KILL_DELAY, pid, started));
        }
        while let Some(&(due, pid, started)) = self.kills_due.front() {
            if due > now {
                break;
            }
            self.kills_due.pop_front();
            if !self.is_child(pid, started) {
                continue;
            }
            let _ = kill(pid, Signal::SIGKILL);
            log::warn!(
                "status pid={pid} peer={} action=SIGKILL reason=max-lifetime age={:.3}s",
                self.children[&pid].peer,
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// Reaps every child that has exited, and every thread that has ended, without blocking.
    fn reap(&mut self) {
        let finished = self
            .threads
            .as_ref()
            .map(Threads::finished)
            .unwrap_or_default();
        for (id, code) in finished {
            if let Some(record) = self.thread_workers.remove(&id) {
                self.admission.ended(&record.peer);
                self.log_end(&record, Worker::Thread(id), Ended::Exit(code));
                self.notify_status();
            }
        }
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
        self.lifetimes.remove(&(record.started, pid));
        self.admission.ended(&record.peer);
        self.log_end(&record, Worker::Process(pid), how);
        self.notify_status();
    }

    /// The `end` line for a child process (`who` is `pid=N`) or a thread (`thread=N`).
    fn log_end(&self, record: &ChildRecord, who: Worker, how: Ended) {
        let duration = record.started.elapsed().as_secs_f64();
        let active = self.active();
        let peer = &record.peer;
        match how {
            Ended::Exit(EXIT_PANIC) if !self.handler.execs() => log::warn!(
                "end peer={peer} {who} status=exit:{EXIT_PANIC} reason=panic duration={duration:.3}s active={active}"
            ),
            Ended::Exit(code) => log::info!(
                "end peer={peer} {who} status=exit:{code} duration={duration:.3}s active={active}"
            ),
            Ended::Signal(sig, core) => log::warn!(
                "end peer={peer} {who} status=signal:{} core={} duration={duration:.3}s active={active}",
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
        self.drains.clear();
        self.rejects
            .flush_if_due(Instant::now() + Duration::from_secs(3600));
        let status = format!("stopping, {}", self.status());
        if let Some(n) = &mut self.notifier {
            n.stopping(status);
        }
        log::log!(
            self.lifecycle,
            "stop signal={} active={} grace={}s",
            sig.as_str(),
            self.active(),
            self.grace.as_secs_f64()
        );
        let deadline = Instant::now() + self.grace;
        while self.workers() > 0 {
            let now = Instant::now();
            if deadline <= now {
                break;
            }
            self.enforce_lifetimes(now);
            let until = [Some(deadline), self.next_timer()]
                .into_iter()
                .flatten()
                .min();
            if self.wait(false, until).signals {
                let signals = self.signals.drain();
                let again = [Signal::SIGTERM, Signal::SIGINT]
                    .into_iter()
                    .find(|s| signals.contains(*s));
                self.reap();
                if let Some(again) = again {
                    log::info!("stop signal={} grace=ended", again.as_str());
                    break;
                }
            }
        }
        let killed = self.children.len();
        if !self.thread_workers.is_empty() {
            // A thread cannot be killed: leaving ends the process, and every thread with it.
            log::warn!(
                "stop threads={} reason=\"grace over: threads end with the process\"",
                self.thread_workers.len()
            );
        }
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
        self.relays.finish_all();
        log::log!(
            self.lifecycle,
            "stop served={} killed={killed}",
            self.accepted_total
        );
    }
}

/// poll()'s timeout in milliseconds, -1 for none.
fn poll_timeout(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        // Round up: a sub-millisecond remainder must not become a busy zero timeout.
        Some(d) => d.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int,
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

/// At most [`REJECT_LINES_PER_SEC`] `reject` lines a second; the rest are counted and
/// reported in one `reject suppressed=N` line when the second is over, never dropped silently.
#[derive(Default)]
struct RejectLog {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl RejectLog {
    /// Whether this rejection gets its own line.
    fn admit_line(&mut self, now: Instant) -> bool {
        self.flush_if_due(now);
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(1) {
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines < REJECT_LINES_PER_SEC {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// When the summary of suppressed lines is due, if any are pending.
    fn flush_due(&self) -> Option<Instant> {
        if self.suppressed == 0 {
            return None;
        }
        self.window_start.map(|s| s + Duration::from_secs(1))
    }

    fn flush_if_due(&mut self, now: Instant) {
        if self.flush_due().is_some_and(|due| due <= now) {
            log::info!(
                "reject suppressed={} reason=\"more than {REJECT_LINES_PER_SEC} rejections in 1s\"",
                self.suppressed
            );
            self.suppressed = 0;
            self.window_start = None;
            self.lines = 0;
        }
    }
}
