//! forkd's command line: the clap definitions, turned into the library's [`Config`] and
//! [`Service`]. Nothing else in forkd reads argv; the library never sees it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};
use forkd::Addr;
use forkd::config::{
    Cidr, Config, Facility, Limits, LogOptions, LogTarget, Model, Overload, Policy, Program, Rate,
    Rule, Sandbox, Service, SourcePrefix, parse_bytes, parse_bytes_u64, parse_secs,
};
use log::LevelFilter;

use super::args::{Stop, clap_error, negative_values_named};

/// The handlers `--handler` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HandlerName {
    /// Answers DATA with the same DATA, PING with PONG.
    Echo,
    /// Runs PROGRAM with the connection on stdin and stdout and the UCSPI environment, as
    /// tcpserver does: the program owns the protocol.
    Exec,
    /// Speaks protocol v1 and runs PROGRAM once per DATA frame: the payload on its stdin, its
    /// stdout the DATA reply.
    FrameExec,
}

impl HandlerName {
    fn as_str(self) -> &'static str {
        match self {
            HandlerName::Echo => "echo",
            HandlerName::Exec => "exec",
            HandlerName::FrameExec => "frame-exec",
        }
    }
}

/// How much of the sandbox `--sandbox` insists on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SandboxLevel {
    /// What the kernel offers; the start line says what is missing.
    BestEffort,
    /// Every part, or no start.
    Required,
}

/// How every duration and size is written: in --help after the options, and in forkd(8).
pub const UNITS: &str = "\
Durations (--grace, --idle-timeout, --max-lifetime, --request-timeout, --rate) are seconds
(30, 0.5) or take units (250ms, 5m, 1h 30m), from 1 ms to 365 days; 0 turns a limit off.
Sizes (--max-frame, --rlimit-as) are bytes or take units (64KiB, 10M, 1G).";

/// What each example does, and the commands: in --help, and as forkd(8)'s EXAMPLES.
pub const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "Echo on loopback, logging to the terminal:",
        &["forkd --listen 127.0.0.1:7000 --log stderr"],
    ),
    (
        "Every address, IPv4 and IPv6, plus a Unix socket, at most 200 children:",
        &["forkd --listen :7000 --listen unix:/run/forkd/forkd.sock --max-children 200"],
    ),
    (
        "A program per connection, as tcpserver runs it:",
        &["forkd --listen :7000 --max-children 40 -- /usr/bin/cat"],
    ),
    (
        "Talk to it:",
        &[
            "forkc --connect 127.0.0.1:7000 send hello",
            "forkc --connect 127.0.0.1:7000 ping",
        ],
    ),
];

#[derive(Parser, Debug)]
#[command(
    name = "forkd",
    version,
    about = "A process-per-connection server: one forked child per connection, answering \
             length-prefixed frames (protocol v1)."
)]
struct Cli {
    /// Address to listen on, repeatable: 127.0.0.1:7000, [::1]:7000, :7000 (every address,
    /// IPv4 and IPv6), [::]:7000 (every IPv6 address, IPv6 only) or unix:/path/to.sock. Port
    /// 0 lets the kernel choose; the start line logs the port bound (see --print-port). Not
    /// needed under systemd socket activation or with --inetd.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<Addr>,

    /// What each child does with its connection [default: echo, or exec when a PROGRAM
    /// follows --].
    #[arg(long, value_enum, value_name = "NAME")]
    handler: Option<HandlerName>,

    /// How each connection is isolated: its own forked process, or a thread of forkd's
    /// process (for comparison; a thread cannot be killed, so --max-lifetime, --rlimit-*,
    /// --nice and --handler exec are refused with it).
    #[arg(long, value_enum, value_name = "fork|thread", default_value = "fork")]
    model: Model,

    /// Serve the one connection on descriptor 0, as inetd, xinetd ("nowait") or systemd
    /// (Accept=yes) hand it over, then exit.
    #[arg(long, conflicts_with_all = ["listen", "pidfile"])]
    inetd: bool,

    /// The program for --handler exec or frame-exec, and its arguments.
    #[arg(last = true, value_name = "PROGRAM [ARGS]...")]
    program: Vec<std::ffi::OsString>,

    /// Start PROGRAM with an empty environment (PATH kept), plus the UCSPI variables and --env.
    #[arg(long, help_heading = "Programs")]
    env_clear: bool,

    /// Add K=V to PROGRAM's environment; repeatable.
    #[arg(long, value_name = "K=V", value_parser = parse_env, help_heading = "Programs")]
    env: Vec<(String, String)>,

    /// frame-exec: a program still running after this long is killed and the request answered
    /// with ERROR 7. 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = parse_secs,
          help_heading = "Programs")]
    request_timeout: Duration,

    /// Children alive at once. At the limit new connections wait in the kernel's backlog.
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true,
          value_parser = super::args::whole(1u32, None))]
    max_children: u32,

    /// Length of the kernel's queue of connections not yet accepted (capped by
    /// net.core.somaxconn).
    #[arg(long, value_name = "N", default_value_t = 1024, allow_negative_numbers = true,
          value_parser = super::args::whole(1i32, None))]
    backlog: i32,

    /// Permission bits of a Unix socket forkd creates, in octal, as systemd's SocketMode=. With
    /// --user or --group the socket file is theirs.
    #[arg(long, value_name = "MODE", default_value = "0666", value_parser = parse_mode)]
    socket_mode: u32,

    /// Largest payload accepted in a frame; a bigger header gets ERROR 1. Takes K, M, G
    /// suffixes (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_bytes)]
    max_frame: u32,

    /// On SIGTERM or SIGINT, how long children may finish their conversations before they are
    /// killed. A second signal ends the wait at once.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_secs)]
    grace: Duration,

    /// A child that receives no complete frame for this long (counted from its last reply;
    /// partial bytes do not count) answers ERROR 7 and closes; so does one whose peer does not
    /// take a reply in full for this long. 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "60", value_parser = parse_secs,
          help_heading = "Limits")]
    idle_timeout: Duration,

    /// End a child older than this whatever it is doing: SIGTERM, then SIGKILL a second
    /// later. Off by default (or 0).
    #[arg(long, value_name = "DURATION", value_parser = parse_secs, help_heading = "Limits")]
    max_lifetime: Option<Duration>,

    /// Admit clients from this address or network (10.0.0.0/8, 2001:db8::/32, 127.0.0.1).
    /// Repeatable; --allow and --deny are checked in command-line order, the first match
    /// wins, and an address no rule matches is admitted.
    #[arg(long, value_name = "CIDR", help_heading = "Admission")]
    allow: Vec<Cidr>,

    /// Refuse clients from this address or network with ERROR 5, without a fork.
    #[arg(long, value_name = "CIDR", help_heading = "Admission")]
    deny: Vec<Cidr>,

    /// At most N children at once per source; more get ERROR 4, without a fork.
    #[arg(long, value_name = "N", help_heading = "Admission",
          value_parser = super::args::whole(1u32, None))]
    per_source: Option<u32>,

    /// Leading bits of an IPv4:IPv6 address that make one source, for --per-source and
    /// --rate: 24:64 counts a /24 or a /64 as one client.
    #[arg(
        long,
        value_name = "V4:V6",
        default_value = "32:128",
        help_heading = "Admission"
    )]
    per_source_prefix: SourcePrefix,

    /// At most N new connections per DURATION per source (a token bucket, e.g. 20/1 or
    /// 5/500ms); more get ERROR 6, without a fork.
    #[arg(long, value_name = "N/DURATION", help_heading = "Admission")]
    rate: Option<Rate>,

    /// At --max-children: defer leaves new connections in the kernel's backlog until a child
    /// exits; reject answers them ERROR 4 at once.
    #[arg(
        long,
        value_enum,
        value_name = "defer|reject",
        default_value = "defer",
        help_heading = "Admission"
    )]
    overload: Overload,

    /// Random early drop, as sshd's MaxStartups: from START children running, refuse a new
    /// connection (ERROR 4) with probability PERCENT, rising linearly to 100% at
    /// --max-children, instead of a cliff at the limit.
    #[arg(long, value_name = "START:PERCENT", help_heading = "Admission")]
    early_drop: Option<forkd::config::EarlyDrop>,

    /// Refuse a source (ERROR 5) for a while after its conversations end badly, as sshd's
    /// PerSourcePenalties: crash (a child killed by a signal, or a panic), error (a protocol
    /// error), timeout (--idle-timeout or --max-lifetime), e.g. crash=90s,error=5s,timeout=10s.
    /// Penalties add up per --per-source-prefix network, to --penalty-max.
    #[arg(long, value_name = "KIND=DURATION,...", help_heading = "Admission")]
    penalty: Option<forkd::config::Penalty>,

    /// The most a source's penalties add up to.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_secs,
          requires = "penalty", help_heading = "Admission")]
    penalty_max: Duration,

    /// Never penalise clients in this network (health checkers, say). Repeatable.
    #[arg(
        long,
        value_name = "CIDR",
        requires = "penalty",
        help_heading = "Admission"
    )]
    penalty_exempt: Vec<Cidr>,

    /// A trusted load balancer's address or network (HAProxy, nginx stream): a TCP connection
    /// from it must begin with a PROXY protocol header, version 1 or 2, and the client the
    /// header names is the one rules, limits, logs (peer=CLIENT via=BALANCER) and the
    /// environment see. Repeatable. Connections from elsewhere are direct: what they send is
    /// never read as a header.
    #[arg(long, value_name = "CIDR", help_heading = "Admission")]
    proxy_from: Vec<Cidr>,

    /// How long a connection from --proxy-from may take to send its header (1 ms to 1h);
    /// then it is closed with ERROR 7 and logged.
    #[arg(long, value_name = "DURATION", default_value = "5", value_parser = parse_secs,
          requires = "proxy_from", help_heading = "Admission")]
    proxy_timeout: Duration,

    /// Address-space limit of each child (RLIMIT_AS), K, M, G suffixes.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes_u64, help_heading = "Children")]
    rlimit_as: Option<u64>,

    /// CPU seconds each child may use (RLIMIT_CPU); then the kernel sends SIGXCPU.
    #[arg(long, value_name = "SECS", help_heading = "Children",
          value_parser = super::args::whole(1u64, None))]
    rlimit_cpu: Option<u64>,

    /// Open descriptors each child may have (RLIMIT_NOFILE).
    #[arg(long, value_name = "N", help_heading = "Children")]
    rlimit_nofile: Option<u64>,

    /// Scheduling priority of each child, -20 (first) to 19 (last).
    #[arg(long, value_name = "N", allow_negative_numbers = true, help_heading = "Children",
          value_parser = super::args::whole(-20i32, Some(19)))]
    nice: Option<i32>,

    /// Once the listeners are bound, drop to this user (its primary group unless --group,
    /// no supplementary groups) before accepting anything.
    #[arg(long, value_name = "NAME", help_heading = "Children")]
    user: Option<String>,

    /// Once the listeners are bound, drop to this group.
    #[arg(long, value_name = "NAME", help_heading = "Children")]
    group: Option<String>,

    /// Hand a TCP connection to a child only once its first bytes have arrived
    /// (TCP_DEFER_ACCEPT), waiting at most this long (1s to 1h; 0 or unset: at once): a client
    /// that connects and says nothing costs no fork. For protocols where the client speaks
    /// first, as protocol v1's does.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs, help_heading = "Children")]
    defer_accept: Option<Duration>,

    /// Confine each child before it reads a byte: no_new_privs and no capabilities, a Landlock
    /// domain (no file but --sandbox-read/--sandbox-write, no TCP bind or connect, no signal
    /// outside it) and, for echo, a seccomp filter (no new socket, exec or fork: refused with
    /// EPERM, logged once per child). A program gets the first two, with read and execute on
    /// itself and read on its libraries, and a filter that keeps it from other processes'
    /// limits and scheduling. The start line says what the kernel allowed; =required refuses
    /// to start where any part is missing.
    #[arg(long, value_enum, value_name = "required", num_args = 0..=1, require_equals = true,
          default_missing_value = "best-effort", help_heading = "Sandbox")]
    sandbox: Option<SandboxLevel>,

    /// With --sandbox: a file or directory (and what is beneath it) children may read, list
    /// and execute. Repeatable; held open from the start, whatever the path names later.
    #[arg(
        long,
        value_name = "PATH",
        requires = "sandbox",
        help_heading = "Sandbox"
    )]
    sandbox_read: Vec<PathBuf>,

    /// With --sandbox: a file or directory children may also write, create in and remove
    /// from (not execute). Repeatable.
    #[arg(
        long,
        value_name = "PATH",
        requires = "sandbox",
        help_heading = "Sandbox"
    )]
    sandbox_write: Vec<PathBuf>,

    /// Do not set SO_KEEPALIVE on accepted TCP connections (set by default, so a peer that
    /// vanished is noticed even without --idle-timeout).
    #[arg(long, help_heading = "Children")]
    no_keepalive: bool,

    /// Where the log goes. Without a reachable syslog socket forkd says so and uses stderr.
    #[arg(
        long,
        value_enum,
        value_name = "syslog|stderr",
        default_value = "syslog"
    )]
    log: LogTarget,

    /// Syslog facility: daemon, user, local0 ... local7, and the others of syslog(3).
    #[arg(long, value_name = "NAME", default_value = "daemon", value_parser = parse_facility)]
    syslog_facility: Facility,

    /// The syslog socket to send to, instead of the system's (/dev/log).
    #[arg(long, value_name = "PATH")]
    syslog_socket: Option<PathBuf>,

    /// Write the supervisor's pid here; removed on exit.
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,

    /// Read settings from FILE, TOML whose keys are the long flag names (listen = [":7000"],
    /// max-children = 64, idle-timeout = "30s", program = ["cmd", "arg"]); a flag on the command
    /// line overrides the file's key. SIGHUP reads both again and applies them to new
    /// connections (docs/operations.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the command line and its --config file as a start would (addresses, limits, the
    /// program on PATH, the user and group) without serving: print ok and exit 0, or the
    /// error and exit 2, as sshd -t and nginx -t do. A reload (SIGHUP) and an upgrade in place
    /// (SIGUSR2) check the same way themselves and refuse what fails.
    #[arg(long)]
    check: bool,

    /// Once listening, write each TCP port bound to stdout, one line each: how a script
    /// learns the port the kernel chose for --listen 127.0.0.1:0 (as tcpserver -1).
    #[arg(long)]
    print_port: bool,

    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log detail: -q leaves out each connection's accept and end lines (start, stop and
    /// everything that went wrong stay), -qq logs errors only.
    #[arg(short, long, action = ArgAction::Count)]
    quiet: u8,
}

/// Octal permission bits: `660`, `0660` or `0o660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal mode from 0 to 0777"))
}

/// The clap command, as parsed and for man pages and completions (examples/package-docs.rs).
pub fn command() -> clap::Command {
    let after = format!("{UNITS}\n\n{}", super::args::examples_text(EXAMPLES));
    negative_values_named(Cli::command().after_help(after))
}

/// What the command line asks: to serve, or only to check what serving would take.
#[derive(Debug, PartialEq, Eq)]
pub enum Intent {
    Serve,
    Check,
}

/// Parses argv (the program name first) into what to serve, with which handler, and whether
/// to serve it or only check it.
pub fn parse<I, T>(args: I) -> Result<(Config, Service, Intent), Stop>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    parse_as(args, false)
}

/// Whether this is the `--check` of an upgrade in place (SIGUSR2), run by the forkd to be
/// replaced.
fn upgrading() -> bool {
    std::env::var_os(forkd::UPGRADE_CHECK_ENV).is_some()
}

/// [`parse`] again at a reload (SIGHUP), for the configuration the file now holds.
pub fn reparse(args: &[std::ffi::OsString]) -> Result<(Config, Service), String> {
    match parse_as(args.to_vec(), true) {
        Ok((config, service, _)) => Ok((config, service)),
        Err(Stop::Invalid(why)) => Err(why),
        Err(Stop::Print(_)) => Err("--help or --version is not a configuration".into()),
    }
}

fn parse_as<I, T>(args: I, reloading: bool) -> Result<(Config, Service, Intent), Stop>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = with_config_file(args.into_iter().map(Into::into).collect())?;
    let matches = command().try_get_matches_from(argv).map_err(clap_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
    let rules = rules_in_order(&matches);
    let handler = match (cli.handler, cli.program.is_empty()) {
        (None, true) => HandlerName::Echo,
        (None, false) => HandlerName::Exec,
        (Some(h @ (HandlerName::Exec | HandlerName::FrameExec)), true) => {
            return Err(Stop::Invalid(format!(
                "--handler {} needs a PROGRAM after --, as in: forkd --handler {0} -- /usr/bin/cat",
                h.as_str()
            )));
        }
        (Some(h @ HandlerName::Echo), false) => {
            return Err(Stop::Invalid(format!(
                "a PROGRAM after -- runs with --handler exec or frame-exec, not --handler {}",
                h.as_str()
            )));
        }
        (Some(h), _) => h,
    };
    let program = || Program {
        argv: cli.program.clone(),
        env_clear: cli.env_clear,
        env: cli.env.clone(),
        request_timeout: Some(cli.request_timeout).filter(|d| !d.is_zero()),
    };
    let service = match handler {
        HandlerName::Echo => Service::Echo,
        HandlerName::Exec => Service::Exec(program()),
        HandlerName::FrameExec => Service::FrameExec(program()),
    };
    // -q leaves out each connection's routine lines; -qq everything but errors.
    let level = match (cli.verbose, cli.quiet) {
        (0, 0 | 1) => LevelFilter::Info,
        (1, _) => LevelFilter::Debug,
        (_, 0) => LevelFilter::Trace,
        (_, _) => LevelFilter::Error,
    };
    let config = Config {
        listen: cli.listen,
        inetd: cli.inetd,
        model: cli.model,
        max_children: cli.max_children,
        backlog: cli.backlog,
        socket_mode: cli.socket_mode,
        max_frame: cli.max_frame,
        grace: cli.grace,
        idle_timeout: Some(cli.idle_timeout).filter(|d| !d.is_zero()),
        max_lifetime: cli.max_lifetime.filter(|d| !d.is_zero()),
        defer_accept: cli.defer_accept.filter(|d| !d.is_zero()),
        admission: Policy {
            rules,
            per_source: cli.per_source,
            source_prefix: cli.per_source_prefix,
            rate: cli.rate,
            penalty: cli.penalty.map(|penalty| forkd::config::Penalty {
                max: cli.penalty_max,
                exempt: cli.penalty_exempt,
                ..penalty
            }),
        },
        proxy_from: cli.proxy_from,
        proxy_timeout: cli.proxy_timeout,
        overload: cli.overload,
        early_drop: cli.early_drop,
        limits: Limits {
            address_space: cli.rlimit_as,
            cpu_seconds: cli.rlimit_cpu,
            open_files: cli.rlimit_nofile,
            nice: cli.nice,
        },
        user: cli.user,
        group: cli.group,
        keepalive: !cli.no_keepalive,
        log: LogOptions {
            target: cli.log,
            facility: cli.syslog_facility,
            syslog_socket: cli.syslog_socket,
            level,
            connections: cli.quiet == 0,
        },
        pidfile: cli.pidfile,
        print_port: cli.print_port,
        sandbox: cli.sandbox.map(|level| Sandbox {
            required: level == SandboxLevel::Required,
            read: cli.sandbox_read,
            write: cli.sandbox_write,
        }),
    };
    match config.check(&service) {
        // Under socket activation at a reload, the sockets systemd passed are in use and no
        // longer offered: whether there is an address is the supervisor's to judge.
        Err(e) if e == forkd::config::NO_ADDRESS && (reloading || upgrading()) => {}
        checked => checked.map_err(Stop::Invalid)?,
    }
    let intent = if cli.check {
        Intent::Check
    } else {
        Intent::Serve
    };
    Ok((config, service, intent))
}

/// Whether argv names a `--config` file.
pub fn has_config_file(argv: &[std::ffi::OsString]) -> bool {
    config_file(argv).is_some()
}

/// The file `--config FILE` (or `--config=FILE`) names, before any `--`.
fn config_file(argv: &[std::ffi::OsString]) -> Option<PathBuf> {
    let options = argv.split(|a| a == "--").next().unwrap_or(&[]);
    options.iter().enumerate().find_map(|(i, a)| {
        let a = a.to_str()?;
        match a.strip_prefix("--config") {
            Some("") => options.get(i + 1).map(PathBuf::from),
            Some(rest) => rest.strip_prefix('=').map(PathBuf::from),
            None => None,
        }
    })
}

/// argv with the settings of `--config FILE` (if given) before the command line's own, less
/// those the command line gives itself.
fn with_config_file(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, Stop> {
    let Some(path) = config_file(&argv) else {
        return Ok(argv);
    };
    let command = command();
    let settings = super::file::read(&path, &command).map_err(Stop::Invalid)?;
    let given = given_on_command_line(&argv, &command);
    let mut merged = argv[..1].to_vec();
    let mut program = None;
    for setting in settings.into_iter().filter(|s| !given.contains(&s.key)) {
        if setting.key == "program" {
            program = Some(setting.args);
        } else {
            merged.extend(setting.args);
        }
    }
    merged.extend_from_slice(&argv[1..]);
    if let Some(program) = program {
        // After the command line's own bare `--`, if it ends with one.
        if merged.last().is_none_or(|last| last != "--") {
            merged.push("--".into());
        }
        merged.extend(program);
    }
    Ok(merged)
}

/// The long names of the flags `argv` gives (`program` when it has `--`), and of those they
/// conflict with: `-v` on the command line sets aside the file's `quiet`, `--inetd` its
/// `listen`.
fn given_on_command_line(argv: &[std::ffi::OsString], command: &clap::Command) -> Vec<String> {
    let given = named_on_command_line(argv, command);
    let named: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| given.iter().any(|g| g == l)))
        .collect();
    // A conflict is declared on one side only (`verbose` names `quiet`): both are asked.
    let conflicts = |a: &clap::Arg, b: &clap::Arg| {
        let declared = |x: &clap::Arg, y: &clap::Arg| {
            command
                .get_arg_conflicts_with(x)
                .iter()
                .any(|c| c.get_id() == y.get_id())
        };
        declared(a, b) || declared(b, a)
    };
    let conflicting = command
        .get_arguments()
        .filter(|key| named.iter().any(|flag| conflicts(key, flag)))
        .filter_map(|key| key.get_long().map(str::to_string));
    conflicting.chain(given.iter().cloned()).collect()
}

/// The long names of the flags `argv` gives (`program` when it has `--`).
fn named_on_command_line(argv: &[std::ffi::OsString], command: &clap::Command) -> Vec<String> {
    let mut given = Vec::new();
    for (i, arg) in argv.iter().enumerate().skip(1) {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            // A `--` with nothing after it names no program: the file's stands.
            if i + 1 < argv.len() {
                given.push("program".to_string());
            }
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            given.push(long.split('=').next().unwrap_or(long).to_string());
        } else if let Some(shorts) = arg.strip_prefix('-') {
            let long_of = |c: char| {
                command
                    .get_arguments()
                    .find(|a| a.get_short() == Some(c))
                    .and_then(|a| a.get_long())
                    .map(str::to_string)
            };
            given.extend(shorts.chars().filter_map(long_of));
        }
    }
    given
}

/// --allow and --deny as one list in command-line order, since the first match wins.
fn rules_in_order(matches: &ArgMatches) -> Vec<Rule> {
    let mut indexed: Vec<(usize, Rule)> = Vec::new();
    for (id, allow) in [("allow", true), ("deny", false)] {
        if let (Some(indices), Some(nets)) = (matches.indices_of(id), matches.get_many::<Cidr>(id))
        {
            indexed.extend(
                indices
                    .zip(nets)
                    .map(|(i, net)| (i, Rule { allow, net: *net })),
            );
        }
    }
    indexed.sort_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, rule)| rule).collect()
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not K=V")),
    }
}

fn parse_facility(s: &str) -> Result<Facility, String> {
    s.parse()
        .map_err(|()| format!("'{s}' is not a syslog facility (daemon, user, local0 ... local7)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Config {
        let mut argv = vec!["forkd"];
        argv.extend_from_slice(args);
        parse(argv).unwrap().0
    }

    fn invalid(args: &[&str]) -> String {
        let mut argv = vec!["forkd"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Err(Stop::Invalid(s)) => s,
            _ => panic!("accepted {args:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["--listen", ":7000"]);
        assert_eq!(c.max_children, 64);
        assert_eq!(c.backlog, 1024);
        assert_eq!(c.max_frame, 1 << 20);
        assert_eq!(c.grace, Duration::from_secs(10));
        assert_eq!(c.log.target, LogTarget::Syslog);
        assert_eq!(c.log.facility as u32, Facility::LOG_DAEMON as u32);
        assert_eq!(c.log.level, LevelFilter::Info);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.max_lifetime, None);
        assert_eq!(c.overload, Overload::Defer);
        assert!(c.keepalive);
        assert!(c.admission.rules.is_empty());
        assert_eq!(c.admission.source_prefix, SourcePrefix { v4: 32, v6: 128 });
    }

    #[test]
    fn allow_and_deny_keep_command_line_order() {
        let c = run(&[
            "--listen",
            ":1",
            "--deny",
            "10.0.0.1",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "0.0.0.0/0",
        ]);
        let order: Vec<(bool, String)> = c
            .admission
            .rules
            .iter()
            .map(|r| (r.allow, r.net.to_string()))
            .collect();
        assert_eq!(
            order,
            vec![
                (false, "10.0.0.1/32".to_string()),
                (true, "10.0.0.0/8".to_string()),
                (false, "0.0.0.0/0".to_string())
            ]
        );
    }

    #[test]
    fn counts_out_of_range_are_said_in_words() {
        for (args, wanted) in [
            (
                &["--max-children", "0"][..],
                "'--max-children <N>': must be at least 1",
            ),
            (
                &["--max-children", "99999999999"][..],
                "must be from 1 to 4294967295",
            ),
            (
                &["--nice", "20"][..],
                "'--nice <N>': must be from -20 to 19",
            ),
            (&["--backlog", "many"][..], "'many' is not a whole number"),
        ] {
            let line = invalid(args);
            assert!(
                line.contains(wanted) && !line.contains(".."),
                "{args:?}: {line}"
            );
        }
    }

    #[test]
    fn defer_accept_is_whole_seconds_up_to_an_hour() {
        assert_eq!(
            run(&["--listen", ":1", "--defer-accept", "5s"]).defer_accept,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            run(&["--listen", ":1", "--defer-accept", "0"]).defer_accept,
            None
        );
        assert!(invalid(&["--listen", ":1", "--defer-accept", "2h"]).contains("--defer-accept"));
    }

    #[test]
    fn zero_idle_timeout_is_off() {
        assert_eq!(
            run(&["--listen", ":1", "--idle-timeout", "0"]).idle_timeout,
            None
        );
    }

    /// `args` after `--config FILE`, FILE holding `toml`.
    fn with_file(toml: &str, args: &[&str]) -> Result<(Config, Service, Intent), Stop> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forkd.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec![
            "forkd".to_string(),
            "--config".into(),
            path.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        parse(argv)
    }

    fn file_error(toml: &str) -> String {
        match with_file(toml, &[]) {
            Err(Stop::Invalid(line)) => line,
            _ => panic!("accepted {toml:?}"),
        }
    }

    #[test]
    fn a_config_file_takes_the_long_flag_names() {
        let toml = r#"
listen = ["127.0.0.1:7000", "unix:/run/x.sock"]
max-children = 8
idle-timeout = "30s"
grace = 2.5
no-keepalive = true
inetd = false
quiet = 1
deny = ["10.0.0.0/8"]
allow = "10.1.0.0/16"
sandbox = true
handler = "frame-exec"
program = ["tr", "a-z", "A-Z"]
"#;
        let (c, service, _) = with_file(toml, &[]).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_children, 8);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.grace, Duration::from_millis(2500));
        assert!(!c.keepalive);
        assert!(!c.log.connections);
        assert!(c.sandbox.is_some_and(|s| !s.required));
        // The file's order: deny before allow.
        let allows: Vec<bool> = c.admission.rules.iter().map(|r| r.allow).collect();
        assert_eq!(allows, [false, true]);
        let Service::FrameExec(program) = service else {
            panic!("{service:?}")
        };
        assert_eq!(program.argv, ["tr", "a-z", "A-Z"]);
    }

    #[test]
    fn the_command_line_overrides_the_file_key_by_key() {
        let toml = "listen = [\"127.0.0.1:7000\", \"[::1]:7000\"]\nmax-children = 8\nquiet = 1\nprogram = [\"cat\"]\n";
        let (c, service, _) = with_file(
            toml,
            &[
                "--max-children",
                "9",
                "--listen",
                ":7001",
                "-v",
                "--",
                "tac",
            ],
        )
        .unwrap();
        assert_eq!(c.max_children, 9);
        // A repeatable flag replaces the file's list.
        assert_eq!(c.listen, vec![":7001".parse::<Addr>().unwrap()]);
        // -v on the command line drops the file's quiet (they conflict as flags).
        assert_eq!(c.log.level, LevelFilter::Debug);
        let Service::Exec(program) = service else {
            panic!("{service:?}")
        };
        assert_eq!(program.argv, ["tac"]);
        // And -q the file's verbose, though only verbose declares the conflict; --inetd
        // sets aside the file's listen; a bare -- keeps the file's program.
        let toml = "listen = [\":1\"]\nverbose = 1\nprogram = [\"cat\"]\n";
        let (c, service, _) = with_file(toml, &["-q", "--"]).unwrap();
        assert!(!c.log.connections);
        assert!(matches!(&service, Service::Exec(p) if p.argv == ["cat"]));
        let (c, _, _) = with_file("listen = [\":1\"]\n", &["--inetd"]).unwrap();
        assert!(c.inetd && c.listen.is_empty());
    }

    #[test]
    fn a_bad_file_is_one_line_with_the_file_the_line_and_the_key() {
        for (toml, line, says) in [
            (
                "listen = [\":1\"]\nmax-children = 0\n",
                2,
                "max-children: must be at least 1",
            ),
            (
                "listen = [\":1\"]\n\nmax-childs = 3\n",
                3,
                "max-childs: not a setting of forkd",
            ),
            ("listen = [\":1\"\nmax-children = 3\n", 2, ""),
            (
                "log = \"file\"\n",
                1,
                "log: 'file' is not one of syslog, stderr",
            ),
            (
                "idle-timeout = \"2 fortnights\"\n",
                1,
                "idle-timeout: '2 fortnights' is not a duration",
            ),
            ("listen = 7000\n", 1, "listen: "),
            (
                "max-children = [1, 2]\n",
                1,
                "max-children: takes one value",
            ),
            (
                "no-keepalive = \"yes\"\n",
                1,
                "no-keepalive: expects true or false",
            ),
            (
                "check = true\n",
                1,
                "check: --check is for the command line",
            ),
            ("program = []\n", 1, "program: an empty program"),
            (
                "max-children = 8.0\n",
                1,
                "max-children: '8.0' is not a whole number",
            ),
            ("\nmax-children = 99999999999999999999\n", 2, ""),
        ] {
            let error = file_error(toml);
            assert!(
                error.contains(&format!("forkd.toml:{line}: {says}")),
                "{toml:?}: {error}"
            );
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        // Not a regular file: a FIFO would hold up a reload in the supervisor's loop.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = fifo.display().to_string();
        let refused = parse(["forkd", "--config", fifo.as_str()]);
        assert!(matches!(refused, Err(Stop::Invalid(e)) if e.contains("not a regular file")));
        let missing = parse(["forkd", "--config", "/nonexistent/forkd.toml"]);
        assert!(
            matches!(missing, Err(Stop::Invalid(e)) if e.contains("--config /nonexistent/forkd.toml"))
        );
    }

    #[test]
    fn verbosity() {
        assert_eq!(run(&["--listen", ":1", "-v"]).log.level, LevelFilter::Debug);
        assert_eq!(
            run(&["--listen", ":1", "-vv"]).log.level,
            LevelFilter::Trace
        );
        let quiet = run(&["--listen", ":1", "-q"]).log;
        assert_eq!((quiet.level, quiet.connections), (LevelFilter::Info, false));
        assert!(run(&["--listen", ":1"]).log.connections);
        assert_eq!(
            run(&["--listen", ":1", "-qq"]).log.level,
            LevelFilter::Error
        );
    }

    #[test]
    fn bad_values_name_the_flag_on_one_line() {
        for (args, flag) in [
            (&["--listen", "nowhere"][..], "--listen"),
            (
                &["--listen", ":1", "--max-children", "0"][..],
                "--max-children",
            ),
            (&["--listen", ":1", "--max-frame", "5X"][..], "--max-frame"),
            (&["--listen", ":1", "--grace", "soon"][..], "--grace"),
            (&["--listen", ":1", "--log", "file"][..], "--log"),
            (
                &["--listen", ":1", "--syslog-facility", "kitchen"][..],
                "--syslog-facility",
            ),
            (&["--listen", ":1", "--bogus"][..], "--bogus"),
            (&["--listen", ":1", "--allow", "10.0.0.0/40"][..], "--allow"),
            (&["--listen", ":1", "--rate", "fast"][..], "--rate"),
            (
                &["--listen", ":1", "--per-source-prefix", "24"][..],
                "--per-source-prefix",
            ),
            (&["--listen", ":1", "--nice", "-30"][..], "--nice"),
            (&["--listen", ":1", "--overload", "drop"][..], "--overload"),
            (
                &["--listen", ":1", "--rlimit-as", "lots"][..],
                "--rlimit-as",
            ),
            (&["--handler", "frame-exec"][..], "PROGRAM"),
            (&["--handler", "echo", "--", "cat"][..], "PROGRAM"),
            (&["--inetd", "--listen", ":1"][..], "--inetd"),
            (&["--listen", ":1", "--env", "novalue"][..], "--env"),
        ] {
            let msg = invalid(args);
            assert!(msg.contains(flag), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}
