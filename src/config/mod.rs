//! What a server is asked to do, as plain data: where it listens, its limits, its admission
//! rules, how each connection is isolated, and where it logs.
//!
//! These are the domain types. The `forkd` command line turns arguments into a [`Config`];
//! an embedder builds one through [`crate::Server`]'s methods or by hand. Nothing here knows
//! about argv: a configuration read from elsewhere is the same value. [`Config::check`] says
//! whether a value is coherent before anything is bound.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
pub use syslog::Facility;

use crate::addr::Addr;
pub use crate::cidr::Cidr;
pub use crate::early_drop::EarlyDrop;
use crate::frame::DEFAULT_MAX_FRAME;
pub use crate::penalty::{DEFAULT_PENALTY_MAX, Penalty};
pub use crate::sandbox::Sandbox;

mod check;
mod units;

pub(crate) use check::FRAMES_HELD_BY_HANDLER;
pub(crate) use units::check_duration;
pub use units::{MAX_DURATION, MAX_FRAME, parse_bytes, parse_bytes_u64, parse_secs};

/// Everything a server is asked to do, apart from the handler itself.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to bind. Empty is allowed only with [`Config::inetd`] or when sockets are
    /// handed over by systemd (`LISTEN_FDS`).
    pub listen: Vec<Addr>,
    /// Serve the one connection on descriptor 0 (as inetd, xinetd "nowait" or systemd
    /// `Accept=yes` hand it over), then return.
    pub inetd: bool,
    /// How each connection is isolated.
    pub model: Model,
    /// Connections served at once.
    pub max_children: u32,
    /// Length of the kernel's queue of connections not yet accepted.
    pub backlog: i32,
    /// Permission bits of the Unix socket files forkd creates (owned by [`Config::user`] and
    /// [`Config::group`] when set).
    pub socket_mode: u32,
    /// Largest frame payload accepted from a peer (protocol-v1 handlers).
    pub max_frame: u32,
    /// On SIGTERM or SIGINT, how long running conversations may go on.
    pub grace: Duration,
    /// How long a protocol-v1 conversation may wait for a complete request; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// A worker older than this is ended whatever it is doing; `None`: never.
    pub max_lifetime: Option<Duration>,
    /// Who is admitted.
    pub admission: Policy,
    /// Networks of trusted load balancers (`--proxy-from`): a TCP connection from one of them
    /// must begin with a PROXY protocol header (version 1 or 2), and the client the header
    /// names is the connection's peer for admission, logs and the environment. Connections
    /// from elsewhere are direct, and nothing they send is read as a header.
    pub proxy_from: Vec<Cidr>,
    /// How long a connection from [`Config::proxy_from`] may take to send its header.
    pub proxy_timeout: Duration,
    /// What a connection arriving at [`Config::max_children`] gets.
    pub overload: Overload,
    /// Random early drop below the limit (`START:PERCENT`, as sshd's MaxStartups).
    pub early_drop: Option<EarlyDrop>,
    /// Resource limits of each worker process.
    pub limits: Limits,
    /// Confine each worker process (`--sandbox`): Landlock, seccomp, no_new_privs.
    pub sandbox: Option<Sandbox>,
    /// The user to serve as, once the listeners are bound.
    pub user: Option<String>,
    /// The group to serve as, once the listeners are bound.
    pub group: Option<String>,
    /// SO_KEEPALIVE on accepted TCP connections.
    pub keepalive: bool,
    /// TCP listeners hand a connection over only once its first bytes have arrived
    /// (TCP_DEFER_ACCEPT, Linux), so a client that connects and says nothing costs no worker;
    /// one still silent after this long is handed over all the same. `None`: at once.
    pub defer_accept: Option<Duration>,
    /// Where the log goes.
    pub log: LogOptions,
    /// Where to write the supervisor's pid; removed on exit.
    pub pidfile: Option<PathBuf>,
    /// Once listening, write each TCP port bound to standard output, one line each (a port
    /// shared by an IPv4 and an IPv6 listener once): how a script learns the port the kernel
    /// chose for port 0, as with tcpserver's `-1`.
    pub print_port: bool,
}

impl Default for Config {
    /// No address, 64 connections, 1 MiB frames, 10 s grace, 60 s idle limit, fork model,
    /// log to stderr at info.
    fn default() -> Config {
        Config {
            listen: Vec::new(),
            inetd: false,
            model: Model::Fork,
            max_children: 64,
            backlog: 1024,
            socket_mode: 0o666,
            max_frame: DEFAULT_MAX_FRAME,
            grace: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(60)),
            max_lifetime: None,
            defer_accept: None,
            admission: Policy::default(),
            proxy_from: Vec::new(),
            proxy_timeout: DEFAULT_PROXY_TIMEOUT,
            overload: Overload::Defer,
            early_drop: None,
            limits: Limits::default(),
            sandbox: None,
            user: None,
            group: None,
            keepalive: true,
            log: LogOptions::default(),
            pidfile: None,
            print_port: false,
        }
    }
}

/// `--proxy-timeout`'s default.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `--proxy-timeout`: a balancer sends its header as the connection opens.
pub const MAX_PROXY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Said when a server has nowhere to take connections from.
pub const NO_ADDRESS: &str = "no address to listen on: give --listen ADDR, or --inetd, or start under systemd socket activation";

/// Whether systemd passed sockets to this very process (`LISTEN_PID`, `LISTEN_FDS`): then a
/// configuration needs no address of its own.
pub(crate) fn sockets_offered() -> bool {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    // Any count but 0 is an offer; one that is not a sane count is refused when taken.
    for_us
        && std::env::var("LISTEN_FDS")
            .ok()
            .is_some_and(|n| !n.trim_start_matches('0').is_empty())
}

/// The handlers forkd itself offers; an embedder's own handler is given to
/// [`crate::Server::framed`] or [`crate::Server::stream`] instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// Protocol v1: DATA comes back as the same DATA, PING as PONG.
    Echo,
    /// The program serves the raw connection on its stdin and stdout, with the UCSPI
    /// environment, as under tcpserver.
    Exec(Program),
    /// Protocol v1, with the program run once per DATA frame: the payload on its stdin, its
    /// stdout the DATA reply.
    FrameExec(Program),
}

impl Service {
    /// The name `--handler` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Exec(_) => "exec",
            Service::FrameExec(_) => "frame-exec",
        }
    }
}

/// A program to run per connection or per request, and what its environment gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program (found on PATH when it names no directory) and its arguments.
    pub argv: Vec<OsString>,
    /// Start from an empty environment (PATH kept) instead of the server's.
    pub env_clear: bool,
    /// Variables added after the UCSPI ones, replacing any of the same name.
    pub env: Vec<(String, String)>,
    /// frame-exec: a program still running after this long is killed and the request answered
    /// with ERROR 7; `None`: no limit.
    pub request_timeout: Option<Duration>,
}

impl Program {
    /// `argv` with the server's environment and a 30 s request limit.
    pub fn new<I, S>(argv: I) -> Program
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Program {
            argv: argv.into_iter().map(Into::into).collect(),
            env_clear: false,
            env: Vec::new(),
            request_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// How each connection is isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// One forked process per connection: a crash, a leak or a hang ends with its process,
    /// and the supervisor can kill it whatever it is doing.
    Fork,
    /// One thread per connection, in the supervisor's process: cheaper, but a fault in one
    /// conversation can end them all, and a thread cannot be killed.
    Thread,
}

/// What happens to a connection arriving at [`Config::max_children`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Overload {
    /// It waits in the kernel's backlog until a worker ends.
    Defer,
    /// It is answered ERROR 4 at once.
    Reject,
}

/// Resource limits of each worker process (`--rlimit-*`, `--nice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS, bytes.
    pub address_space: Option<u64>,
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: Option<u64>,
    /// Scheduling priority, -20 to 19.
    pub nice: Option<i32>,
}

/// Admission settings: decided per connection before any worker starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// `--allow` and `--deny` in order; the first match wins, no match admits.
    pub rules: Vec<Rule>,
    /// Connections at once from one source.
    pub per_source: Option<u32>,
    /// What makes one source.
    pub source_prefix: SourcePrefix,
    /// New connections per period from one source.
    pub rate: Option<Rate>,
    /// Refusal for a while of sources whose conversations crashed, broke the protocol or
    /// timed out (`--penalty`).
    pub penalty: Option<Penalty>,
}

/// One `--allow` or `--deny`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Admit (`true`) or refuse with ERROR 5.
    pub allow: bool,
    /// The addresses it matches.
    pub net: Cidr,
}

/// `--rate N/DURATION`: at most N new connections per DURATION from one source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Connections per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("'{s}' is not a rate: expected N/DURATION, as in 20/1 or 600/1m");
        let (n, period) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("'{s}': the count must be at least 1"));
        }
        let per = parse_secs(period).map_err(|why| format!("'{s}': the period {why}"))?;
        if per.is_zero() {
            return Err(format!("'{s}': the period must be at least 1 ms"));
        }
        Ok(Rate { count, per })
    }
}

/// `--per-source-prefix V4:V6`: how many leading bits of an address make one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePrefix {
    /// Bits of an IPv4 address.
    pub v4: u8,
    /// Bits of an IPv6 address.
    pub v6: u8,
}

impl Default for SourcePrefix {
    fn default() -> Self {
        SourcePrefix { v4: 32, v6: 128 }
    }
}

impl FromStr for SourcePrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<SourcePrefix, String> {
        let bad = || format!("'{s}' is not V4:V6 prefix lengths, as in 32:128 or 24:64");
        let (v4, v6) = s.split_once(':').ok_or_else(bad)?;
        let v4: u8 = v4.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let v6: u8 = v6.parse().ok().filter(|p| *p <= 128).ok_or_else(bad)?;
        Ok(SourcePrefix { v4, v6 })
    }
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// The system log: /dev/log, or the socket --syslog-socket names.
    Syslog,
    /// Standard error, one line per event.
    Stderr,
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogTarget::Syslog => "syslog",
            LogTarget::Stderr => "stderr",
        })
    }
}

/// How the log is set up.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Where lines go.
    pub target: LogTarget,
    /// The syslog facility.
    pub facility: Facility,
    /// The syslog socket; `None` means the system's (/dev/log).
    pub syslog_socket: Option<PathBuf>,
    /// The least severe level logged.
    pub level: LevelFilter,
    /// Whether each connection's routine lines (`accept`, and `end` when it ended well) are
    /// logged; `-q` leaves them out and keeps the rest.
    pub connections: bool,
}

impl Default for LogOptions {
    /// Standard error, facility daemon, info and above.
    fn default() -> LogOptions {
        LogOptions {
            target: LogTarget::Stderr,
            facility: Facility::LOG_DAEMON,
            syslog_socket: None,
            level: LevelFilter::Info,
            connections: true,
        }
    }
}
