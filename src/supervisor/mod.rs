//! The supervisor: one thread, one poll loop over the listeners, the signal descriptor,
//! rejected connections draining and programs' stderr.
//!
//! It accepts, decides admission before any worker starts, starts a worker per admitted
//! connection through the [`Isolation`](crate::isolation::Isolation) it was given, collects
//! workers as they end, ends those that outlive `--max-lifetime`, and shuts down on
//! SIGTERM/SIGINT with a grace period. At `--max-children` it either leaves the listeners out
//! of the poll set (`--overload defer`: new connections wait in the kernel's backlog) or keeps
//! accepting to reject (`--overload reject`). It never reads client data; the only bytes it
//! writes to a client are a best-effort ERROR frame when it turns a connection away.
//!
//! Its parts: [`startup`] (from a configuration to a running loop; [`startup_code`], the code
//! it keeps mapped once it serves), this module (the loop:
//! accept, admit, start, reap), [`workers`] (the table of what runs, and lifetimes),
//! [`shutdown`], [`poll`] (the poll set) and [`throttle`] (bounded repeated log lines).

mod headers;
mod lines;
mod own_memory;
mod poll;
mod reload;
mod shutdown;
mod startup;
pub(crate) mod startup_code;
mod throttle;
mod upgrade;
mod workers;

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

pub use reload::ReloadSource;
pub(crate) use startup::{Start, run};
pub use upgrade::CHECK_ENV;
pub(crate) use upgrade::UpgradePlan;

use crate::admission::{Admission, Refusal};
use crate::cidr::Cidr;
use crate::config::{Config, Overload};
use crate::conn::{Connection, Peer, Who};
use crate::drain::Drains;
use crate::early_drop::{Dice, EarlyDrop};
use crate::frame::{ErrorCode, Frame};
use crate::handler::{ProtocolSettings, Work};
use crate::isolation::child::ChildSetup;
use crate::isolation::tally::{Slot, Tally};
use crate::isolation::{Ended, Isolation, Job, NotStarted, WorkerId};
use crate::listen::Listener;
use crate::logging::quote;
use crate::notify::Notifier;
use crate::penalty::Offence;
use crate::relay::Relays;
use crate::signals::Signals;
use headers::{Failure, HeaderWaits, Outcome};
use lines::{Active, ActiveField, Bytes, log_end};
use poll::{PollSet, Ready, poll_timeout};
use throttle::{LogThrottle, RejectLog};
use workers::{WorkerRecord, Workers};

/// Connections accepted from one listener per wake-up, so one busy listener cannot starve
/// the others or the signals.
const ACCEPT_BATCH: usize = 32;

/// How long the listeners rest after accept() ran out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where a connection came from.
#[derive(Clone, Copy)]
enum Origin {
    /// The listener at this index of the supervisor's list.
    Listener(usize),
    /// A listener a reload has closed since (the connection was waiting for its PROXY header).
    Removed,
    Inetd,
}

struct Supervisor {
    /// The configuration being served, as a reload compares a new one with it.
    config: Config,
    /// Where SIGHUP gets a new configuration; `None`: SIGHUP only reopens the log.
    reload_source: Option<ReloadSource>,
    /// The supervisor's own descriptors a worker closes, but for the listeners.
    own_fds: Vec<RawFd>,
    /// What SIGUSR2 execs; `None`: no upgrade in place.
    upgrade_plan: Option<UpgradePlan>,
    /// The new binary's `--check`, while it runs.
    upgrade_check: Option<upgrade::Check>,
    /// The pidfile's descriptor and path, handed to the next image at an upgrade.
    pidfile: Option<(RawFd, String)>,
    /// The owner of Unix socket files forkd creates (`--user`, `--group`).
    socket_owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    listeners: Vec<Listener>,
    /// The listeners' names for log lines, made once.
    listener_names: Vec<String>,
    signals: Signals,
    poll: PollSet,
    /// On the heap: a worker reads it, and the supervisor itself lives on a stack workers do
    /// not inherit (isolation/stacks.rs).
    work: Box<Work>,
    settings: ProtocolSettings,
    max_children: usize,
    overload: Overload,
    grace: Duration,
    workers: Workers,
    admission: Admission,
    drains: Drains,
    /// Connections from `--proxy-from` networks until their PROXY header is read.
    headers: HeaderWaits,
    /// What [`HeaderWaits`] settled, kept from one wake-up to the next.
    settled: Vec<Outcome>,
    proxy_from: Vec<Cidr>,
    proxy_timeout: Duration,
    /// The stderr pipes of programs.
    relays: Relays,
    /// Descriptors opened since start that a new worker process must close, kept from one
    /// start to the next.
    close_in_child: Vec<RawFd>,
    /// Set after accept() failed for lack of resources: the listeners rest until then.
    accept_resume_at: Option<Instant>,
    accept_failures: LogThrottle,
    rejects: RejectLog,
    accepted_total: u64,
    at_limit: bool,
    notifier: Option<Notifier>,
    /// The level of the start and stop lines (debug under inetd).
    lifecycle: log::Level,
    /// `--inetd`: the one connection is served in this process.
    inetd: bool,
    /// What a worker gets, for the connection `--inetd` serves in this process.
    in_place: ChildSetup,
    /// `--max-lifetime`, which under `--inetd` means a forked worker after all.
    max_lifetime: Option<Duration>,
    /// The bytes of each protocol-v1 conversation, for its `end` line.
    tally: Option<Tally>,
    early_drop: Option<EarlyDrop>,
    dice: Dice,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &Config,
        listeners: Vec<Listener>,
        signals: Signals,
        work: Work,
        settings: ProtocolSettings,
        isolation: Box<dyn Isolation>,
        notifier: Option<Notifier>,
        lifecycle: log::Level,
        in_place: ChildSetup,
    ) -> Supervisor {
        let tally = work.is_framed().then(Tally::new);
        let listener_fds: Vec<RawFd> = listeners.iter().map(|l| l.as_fd().as_raw_fd()).collect();
        Supervisor {
            config: config.clone(),
            reload_source: None,
            own_fds: in_place
                .supervisor_fds
                .iter()
                .copied()
                .filter(|fd| !listener_fds.contains(fd))
                .collect(),
            socket_owner: None,
            upgrade_plan: None,
            upgrade_check: None,
            pidfile: None,
            listener_names: listeners.iter().map(Listener::local_name).collect(),
            listeners,
            signals,
            poll: PollSet::default(),
            // Sources are counted for --per-source, and for TCPCONNNUM where a program sees it.
            admission: Admission::new(config.admission.clone(), work.counts_sources()),
            work: Box::new(work),
            settings,
            max_children: config.max_children as usize,
            overload: config.overload,
            grace: config.grace,
            workers: Workers::new(isolation, config.max_lifetime),
            drains: Drains::default(),
            headers: HeaderWaits::default(),
            settled: Vec::new(),
            proxy_from: config.proxy_from.clone(),
            proxy_timeout: config.proxy_timeout,
            relays: Relays::default(),
            close_in_child: Vec::new(),
            accept_resume_at: None,
            accept_failures: LogThrottle::default(),
            rejects: RejectLog::default(),
            accepted_total: 0,
            at_limit: false,
            notifier,
            lifecycle,
            inetd: config.inetd,
            in_place,
            max_lifetime: config.max_lifetime,
            tally,
            early_drop: config.early_drop,
            dice: Dice::new(),
        }
    }

    /// The descriptors a new worker closes: the supervisor's own and its listeners, in order.
    fn supervisor_fds(&self) -> Vec<RawFd> {
        let listeners = self.listeners.iter().map(|l| l.as_fd().as_raw_fd());
        let mut fds: Vec<RawFd> = self.own_fds.iter().copied().chain(listeners).collect();
        fds.sort_unstable();
        fds
    }

    /// For systemd's STATUS=.
    fn status(&self) -> String {
        format!(
            "{} active of {} children",
            self.workers.len(),
            self.max_children
        )
    }

    /// Tells systemd the service is ready.
    fn ready(&mut self) {
        let status = self.status();
        if let Some(n) = &mut self.notifier {
            n.ready(status);
        }
    }

    /// SIGUSR1: one line with what the supervisor is doing.
    fn log_status(&self) {
        log::info!(
            "status signal=SIGUSR1 pid={} active={} accepted={} draining={} proxy_headers={} relays={} listen={}",
            std::process::id(),
            self.active(),
            self.accepted_total,
            self.drains.count(),
            self.headers.len(),
            self.relays.count(),
            quote(&self.listener_names.join(","))
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

    /// Slots taken: workers, and connections from balancers whose header is on its way (each
    /// becomes a worker, so under `--overload defer` it holds a slot already).
    fn occupied(&self) -> usize {
        self.workers.len() + self.headers.len()
    }

    fn active(&self) -> Active {
        Active(self.workers.len(), self.max_children)
    }

    fn active_field(&self) -> ActiveField {
        ActiveField::unless_inetd(self.inetd, self.workers.len(), self.max_children)
    }

    /// A byte-count slot for a conversation about to start, and its settings counting there.
    fn settings_with_tally(&mut self) -> (Option<Slot>, ProtocolSettings) {
        let taken = self.tally.as_mut().and_then(Tally::take);
        let settings = ProtocolSettings {
            tally: taken.map(|(_, counter)| counter),
            ..self.settings
        };
        (taken.map(|(slot, _)| slot), settings)
    }

    /// The main loop; returns once shutdown is complete, or when there is nothing left to
    /// serve (no listener, no child: the `--inetd` case).
    fn serve(&mut self) {
        loop {
            if self.listeners.is_empty() && self.workers.len() == 0 && self.headers.is_empty() {
                self.relays.finish_all();
                log::log!(
                    self.lifecycle,
                    "stop served={} killed=0 refused=0",
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
            self.workers.enforce_lifetimes(now);
            self.poll_upgrade(now);
            self.rejects.flush_if_due(now);
            self.note_limit();
            let below_limit = self.occupied() < self.max_children;
            let accepting = self.accept_resume_at.is_none()
                && (below_limit || self.overload == Overload::Reject);
            let ready = self.wait(accepting, self.next_timer());
            self.service_io(&ready);
            if ready.signals {
                let signals = self.signals.drain();
                let stop = stop_signal(&signals);
                if signals.contains(Signal::SIGHUP) {
                    let log = crate::logging::reopen();
                    log::info!("status signal=SIGHUP log={log}");
                    self.reload();
                    self.after_reload();
                }
                if signals.contains(Signal::SIGUSR1) {
                    self.log_status();
                }
                self.reap();
                if let Some(sig) = stop {
                    self.shut_down(sig);
                    return;
                }
                // After the stop and the reap: what was read from the signal descriptor is
                // acted on before an exec could lose it.
                if signals.contains(Signal::SIGUSR2) {
                    self.begin_upgrade();
                }
                self.poll_upgrade(Instant::now());
            }
            for index in 0..self.listeners.len() {
                if self.poll.listener_ready(index) {
                    self.accept_from(index);
                }
            }
        }
    }

    /// Reads what draining sockets and stderr relays have; closes draining sockets past their
    /// deadline (also when nothing was readable).
    fn service_io(&mut self, ready: &Ready) {
        if !self.drains.is_empty() {
            self.drains.service(&ready.drains, Instant::now());
        }
        if !self.headers.is_empty() {
            let mut settled = std::mem::take(&mut self.settled);
            self.headers
                .service(&ready.headers, Instant::now(), &mut settled);
            self.settle(&mut settled);
            self.settled = settled;
        }
        if !ready.relays.is_empty() {
            self.relays.service(&ready.relays);
        }
    }

    /// The earliest moment the loop has something to do without an event.
    fn next_timer(&self) -> Option<Instant> {
        [
            self.accept_resume_at,
            self.drains.next_deadline(),
            self.headers.next_deadline(),
            self.workers.next_timer(),
            self.upgrade_deadline(),
            self.rejects.flush_due(),
            self.notifier.as_ref().and_then(Notifier::due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One poll over the signals, the listeners (if `accepting`), draining sockets, headers
    /// on their way and stderr relays.
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
        self.headers
            .fds()
            .for_each(|fd| poll.push_watching_hangup(fd));
        let headers_end = poll.fds.len();
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
            headers: poll.ready_or_hung_up_in(drains_end..headers_end),
            relays: poll.ready_in(headers_end..poll.fds.len()),
        }
    }

    /// Logs the moments the child limit is reached and left, so the log shows when
    /// connections were waiting in the backlog (or being turned away).
    fn note_limit(&mut self) {
        let at_limit = self.occupied() >= self.max_children;
        if at_limit != self.at_limit {
            self.at_limit = at_limit;
            let accepting = match (at_limit, self.overload) {
                (false, _) => "resumed",
                (true, Overload::Defer) => "paused",
                (true, Overload::Reject) => "rejecting",
            };
            // Reaching the limit is news for whoever watches warnings; leaving it is not.
            let level = if at_limit {
                log::Level::Warn
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "status active={} accepting={accepting}",
                self.active()
            );
        }
    }

    fn accept_from(&mut self, index: usize) {
        for _ in 0..ACCEPT_BATCH {
            let at_limit = self.occupied() >= self.max_children;
            if at_limit && self.overload == Overload::Defer {
                return;
            }
            match self.listeners[index].accept() {
                Ok(conn) => self.take(conn, Origin::Listener(index), at_limit),
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
            // A Unix socket's path may hold spaces or `=`.
            Origin::Listener(index) => quote(&self.listener_names[index]),
            Origin::Removed => "removed".to_string(),
            Origin::Inetd => "inetd".to_string(),
        }
    }

    /// A new connection: to admission at once, or, from a `--proxy-from` balancer, once its
    /// PROXY header is read (and admission sees the client it names).
    fn take(&mut self, conn: Connection, origin: Origin, at_limit: bool) {
        if !self.is_from_balancer(&conn) {
            return self.admit(conn, origin, at_limit);
        }
        let deadline = Instant::now() + self.proxy_timeout;
        let mut settled = std::mem::take(&mut self.settled);
        self.headers.add(conn, origin, deadline, &mut settled);
        self.settle(&mut settled);
        self.settled = settled;
    }

    fn is_from_balancer(&self, conn: &Connection) -> bool {
        match conn.peer {
            Peer::Tcp(addr) => self.proxy_from.iter().any(|net| net.contains(addr.ip())),
            Peer::Unix { .. } => false,
        }
    }

    /// Connections whose header is settled: admission for those with one, a refusal for the
    /// rest. The limit is judged now, as the worker would start now.
    fn settle(&mut self, settled: &mut Vec<Outcome>) {
        for outcome in settled.drain(..) {
            match outcome {
                Outcome::Ready(conn, origin) => {
                    let at_limit = self.workers.len() >= self.max_children;
                    self.admit(conn, origin, at_limit)
                }
                Outcome::Failed(conn, origin, failure) => {
                    self.without_header(conn, origin, failure)
                }
            }
        }
    }

    /// A connection from a balancer without a usable PROXY header: an ERROR (best effort),
    /// the lingering close of any refusal, and a `reject` line, bounded per second as every
    /// refusal is. One closed before a whole header (a balancer's TCP health check, mostly)
    /// is closed with a debug line only.
    fn without_header(&mut self, conn: Connection, origin: Origin, failure: Failure) {
        let (code, why) = match failure {
            Failure::Closed => {
                log::debug!(
                    "reject peer={} listen={} reason=proxy-header error=\"closed before a PROXY header\"",
                    conn.who(),
                    self.origin(origin)
                );
                return;
            }
            Failure::Invalid(why) => (ErrorCode::Denied, why),
            Failure::TimedOut => (
                ErrorCode::Timeout,
                format!("no PROXY header in {}s", self.proxy_timeout.as_secs_f64()),
            ),
            Failure::Evicted => (
                ErrorCode::Busy,
                format!(
                    "{} connections waiting for a PROXY header",
                    headers::MAX_WAITING
                ),
            ),
        };
        let refusal = Refusal {
            code,
            reason: "proxy-header",
            message: format!("PROXY protocol header expected: {why}"),
        };
        self.refuse(conn, origin, refusal, Some(&why));
    }

    /// Admission, then a child, or a rejection.
    fn admit(&mut self, conn: Connection, listen: Origin, at_limit: bool) {
        match self.admission.check(&conn.peer, Instant::now()) {
            Err(refusal) => self.reject(conn, listen, refusal),
            Ok(()) if at_limit => {
                // Admitted, and so charged a rate token, then refused all the same.
                self.admission.refund(&conn.peer);
                let refusal = Refusal {
                    code: ErrorCode::Busy,
                    reason: "overload",
                    message: format!("server at its limit of {} connections", self.max_children),
                };
                self.reject(conn, listen, refusal)
            }
            Ok(()) if self.dropped_early() => {
                self.admission.refund(&conn.peer);
                let refusal = Refusal {
                    code: ErrorCode::Busy,
                    reason: "early-drop",
                    message: format!(
                        "server busy: {} of {} connections",
                        self.workers.len(),
                        self.max_children
                    ),
                };
                self.reject(conn, listen, refusal)
            }
            Ok(()) => self.start(conn, listen),
        }
    }

    /// `--early-drop`: whether this connection is one the slope refuses.
    fn dropped_early(&mut self) -> bool {
        let Some(drop) = self.early_drop else {
            return false;
        };
        let chance = drop.chance(self.workers.len(), self.max_children);
        chance > 0 && self.dice.roll(chance)
    }

    fn reject(&mut self, conn: Connection, listen: Origin, refusal: Refusal) {
        self.refuse(conn, listen, refusal, None);
    }

    /// A `reject` line (bounded per second), with ` error=` when there is more to say than
    /// the reason word, then the ERROR frame and the lingering close.
    fn refuse(&mut self, conn: Connection, listen: Origin, refusal: Refusal, error: Option<&str>) {
        let now = Instant::now();
        if self.rejects.admit_line(now) {
            let error = error
                .map(|e| format!(" error={}", quote(e)))
                .unwrap_or_default();
            log::warn!(
                "reject peer={} listen={} reason={} code={}{error}{}",
                conn.who(),
                self.origin(listen),
                refusal.reason,
                refusal.code as u16,
                self.active_field()
            );
        }
        let error = Frame::error(refusal.code, &refusal.message);
        self.drains.reject(conn.stream, &error, now);
    }

    /// Starts a worker for an admitted connection.
    fn start(&mut self, mut conn: Connection, listen: Origin) {
        // --max-lifetime needs a supervisor outside the conversation to end it (and what it
        // started): then the worker is forked as from a listener.
        if matches!(listen, Origin::Inetd) && !self.work.is_program() && self.max_lifetime.is_none()
        {
            return self.serve_here(conn);
        }
        conn.from_source = self
            .admission
            .source_of(&conn.peer)
            .map_or(1, |s| self.admission.connections_from(&s) + 1);
        // The shared tables' memfds: a worker has their memory mapped, and no use for them.
        let close = || {
            self.drains
                .raw_fds()
                .into_iter()
                .chain(self.headers.raw_fds())
                .chain(crate::isolation::groups::table_fd())
                .chain(self.tally.as_ref().and_then(Tally::fd))
                .chain(self.relays.raw_fds())
        };
        // Rewritten only when it changed: after a fork each page the supervisor writes is a
        // copy-on-write fault while the child lives, and the list is the same from one
        // connection to the next unless sockets are draining or programs relaying.
        if !self.close_in_child.iter().copied().eq(close()) {
            let fresh: Vec<RawFd> = close().collect();
            self.close_in_child = fresh;
        }
        let (peer, via) = (conn.peer.clone(), conn.proxied.as_ref().map(|p| p.via));
        let (slot, settings) = self.settings_with_tally();
        let job = Job {
            work: &self.work,
            settings,
            close: &self.close_in_child,
        };
        let started = self.workers.start(conn, &job, slot);
        if let (Err(_), Some(tally), Some(slot)) = (&started, &mut self.tally, slot) {
            tally.give_back(slot);
        }
        match started {
            Ok(started) => {
                self.accepted_total += 1;
                let record = self.workers.get(&started.id).expect("just recorded");
                self.admission.started(&record.peer);
                // Asked first: with -q the line is off, and naming the listener allocates.
                if log::log_enabled!(target: crate::logging::CONNECTION, log::Level::Info) {
                    log::info!(
                        target: crate::logging::CONNECTION,
                        "accept peer={} {} listen={}{}",
                        record.who(),
                        started.id,
                        self.origin(listen),
                        self.active_field()
                    );
                }
                if let (Some(stderr), WorkerId::Process(pid)) = (started.stderr, started.id) {
                    self.relays.add(stderr, pid);
                }
                self.notify_status();
            }
            Err(NotStarted::Refused { what, error, conn }) => self.cannot_start(conn, what, error),
            // Bounded per second as refusals are: a program gone makes every connection fail.
            Err(NotStarted::Lost { reason }) => {
                if self.rejects.admit_line(Instant::now()) {
                    log::error!(
                        "error peer={} reason={}{}",
                        Who(&peer, via),
                        quote(&reason),
                        self.active_field()
                    );
                }
            }
        }
    }

    /// `--inetd`: the connection is served in this process, which inetd forked for it
    /// already; a second fork would only cost. This process becomes what a worker would be
    /// (default signals, its limits) and logs the same `accept` and `end` lines. A program
    /// (`-- PROGRAM`) is still started, as a program replaces whatever serves the connection.
    fn serve_here(&mut self, conn: Connection) {
        self.accepted_total += 1;
        let (slot, settings) = self.settings_with_tally();
        let record = WorkerRecord {
            peer: conn.peer.clone(),
            via: conn.proxied.as_ref().map(|p| p.via),
            started: Instant::now(),
            tally: slot,
            outlived: false,
            lifetime_ends: None,
        };
        let pid = format!("pid={}", std::process::id());
        log::info!(
            target: crate::logging::CONNECTION,
            "accept peer={} {pid} listen=inetd",
            record.who()
        );
        let code = crate::isolation::child::serve_here(conn, &self.work, settings, &self.in_place);
        let bytes = Bytes::of(&mut self.tally, &record);
        log_end(
            false,
            &record,
            &pid,
            Ended::Exit(code),
            bytes,
            ActiveField(None),
        );
    }

    /// No worker for this connection (`what` failed): ERROR 4, best effort, and a line
    /// (bounded per second as every refusal is). Its rate token is given back.
    fn cannot_start(&mut self, conn: Connection, what: &str, error: String) {
        let now = Instant::now();
        self.admission.refund(&conn.peer);
        if self.rejects.admit_line(now) {
            log::error!(
                "reject peer={} reason={what} code=4 error={}{}",
                conn.who(),
                quote(&error),
                self.active_field()
            );
        }
        let frame = Frame::error(ErrorCode::Busy, "server cannot start a process");
        self.drains.reject(conn.stream, &frame, now);
    }

    /// After a SIGHUP: reopening the log and reloading ran start-up's code again (parsing,
    /// binding), which is mapped again, and in the fork model left free heap, which each
    /// fork would copy: both go back, as before serving.
    fn after_reload(&self) {
        if self.inetd {
            return;
        }
        startup_code::forget();
        if self.config.model == crate::config::Model::Fork {
            crate::isolation::lean::trim_heap();
        }
    }

    /// Collects every worker that has ended, without blocking.
    fn reap(&mut self) {
        let mut any = false;
        let work = &self.work;
        let admission = &mut self.admission;
        let relays = &mut self.relays;
        let max = self.max_children;
        let inetd = self.inetd;
        let tally = &mut self.tally;
        self.workers.collect(|active, id, record, how| {
            admission.ended(&record.peer);
            if let Some(offence) = Offence::of(how, record.outlived, work.is_program())
                && let Some(fields) = admission.penalise(&record.peer, offence, Instant::now())
            {
                log::warn!("status peer={} {fields}", record.who());
            }
            if let WorkerId::Process(pid) = id {
                relays.finish(pid);
            }
            let active = ActiveField::unless_inetd(inetd, active, max);
            let bytes = Bytes::of(tally, &record);
            log_end(work.is_program(), &record, &id, how, bytes, active);
            any = true;
        });
        if any {
            self.notify_status();
        }
    }
}

/// The signal among `signals` that asks forkd to stop, if any.
fn stop_signal(signals: &nix::sys::signal::SigSet) -> Option<Signal> {
    [Signal::SIGTERM, Signal::SIGINT]
        .into_iter()
        .find(|s| signals.contains(*s))
}
