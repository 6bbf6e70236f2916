//! forkd's command line: the clap definitions, turned into one plain [`Config`]. Nothing else
//! in forkd reads argv.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};
use log::LevelFilter;
use syslog::Facility;

use crate::addr::Addr;
use crate::admission::{Cidr, Policy, Rate, Rule, SourcePrefix};
use crate::child::ChildLimits;
use crate::handler::HandlerName;
use crate::logging::{LogOptions, Target};

const EXAMPLES: &str = "\
Examples:
  Echo on loopback, logging to the terminal:
    forkd --listen 127.0.0.1:7000 --log stderr
  Every address, IPv4 and IPv6, plus a Unix socket, at most 200 children:
    forkd --listen :7000 --listen unix:/run/forkd.sock --max-children 200
  Talk to it:
    forkc --connect 127.0.0.1:7000 send hello
    forkc --connect 127.0.0.1:7000 ping";

#[derive(Parser, Debug)]
#[command(
    name = "forkd",
    version,
    about = "A process-per-connection server: one forked child per connection, answering \
             length-prefixed frames (protocol v1).",
    after_help = EXAMPLES
)]
struct Cli {
    /// Address to listen on, repeatable: 127.0.0.1:7000, [::1]:7000, :7000 (every address,
    /// IPv4 and IPv6) or unix:/path/to.sock. Port 0 lets the kernel choose; the start line
    /// logs the port bound. Not needed under systemd socket activation or with --inetd.
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
    model: crate::model::Model,

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
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs,
          help_heading = "Programs")]
    request_timeout: Duration,

    /// Children alive at once. At the limit new connections wait in the kernel's backlog.
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_children: u32,

    /// Length of the kernel's queue of connections not yet accepted (capped by
    /// net.core.somaxconn).
    #[arg(long, value_name = "N", default_value_t = 1024, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(1..))]
    backlog: i32,

    /// Largest payload accepted in a frame; a bigger header gets ERROR 1. Takes K, M, G
    /// suffixes (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_bytes)]
    max_frame: u32,

    /// On SIGTERM or SIGINT, how long children may finish their conversations before they are
    /// killed. A second signal ends the wait at once.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    grace: Duration,

    /// A child that receives no complete frame for this long (counted from its last reply;
    /// partial bytes do not count) answers ERROR 7 and closes. 0 turns it off.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs,
          help_heading = "Limits")]
    idle_timeout: Duration,

    /// End a child older than this whatever it is doing: SIGTERM, then SIGKILL a second
    /// later. Off by default.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, help_heading = "Limits")]
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
          value_parser = clap::value_parser!(u32).range(1..))]
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

    /// At most N new connections per SECS seconds per source (a token bucket, e.g. 20/1);
    /// more get ERROR 6, without a fork.
    #[arg(long, value_name = "N/SECS", help_heading = "Admission")]
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

    /// Address-space limit of each child (RLIMIT_AS), K, M, G suffixes.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes_u64, help_heading = "Children")]
    rlimit_as: Option<u64>,

    /// CPU seconds each child may use (RLIMIT_CPU); then the kernel sends SIGXCPU.
    #[arg(long, value_name = "SECS", help_heading = "Children")]
    rlimit_cpu: Option<u64>,

    /// Open descriptors each child may have (RLIMIT_NOFILE).
    #[arg(long, value_name = "N", help_heading = "Children")]
    rlimit_nofile: Option<u64>,

    /// Scheduling priority of each child, -20 (first) to 19 (last).
    #[arg(long, value_name = "N", allow_negative_numbers = true, help_heading = "Children",
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: Option<i32>,

    /// Once the listeners are bound, drop to this user (its primary group unless --group,
    /// no supplementary groups) before accepting anything.
    #[arg(long, value_name = "NAME", help_heading = "Children")]
    user: Option<String>,

    /// Once the listeners are bound, drop to this group.
    #[arg(long, value_name = "NAME", help_heading = "Children")]
    group: Option<String>,

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
    log: Target,

    /// Syslog facility: daemon, user, local0 ... local7, and the others of syslog(3).
    #[arg(long, value_name = "NAME", default_value = "daemon", value_parser = parse_facility)]
    syslog_facility: Facility,

    /// The syslog socket to send to, instead of the system's (/dev/log).
    #[arg(long, value_name = "PATH")]
    syslog_socket: Option<PathBuf>,

    /// Write the supervisor's pid here; removed on exit.
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,

    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log detail (-q warnings and errors only, -qq errors only).
    #[arg(short, long, action = ArgAction::Count)]
    quiet: u8,
}

/// A program to run per connection or per request, and what its environment gets.
#[derive(Clone, Debug)]
pub struct Program {
    pub argv: Vec<std::ffi::OsString>,
    pub env_clear: bool,
    pub env: Vec<(String, String)>,
    /// frame-exec's per-request limit; `None`: off.
    pub request_timeout: Option<Duration>,
}

/// What happens to a connection arriving at --max-children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Overload {
    Defer,
    Reject,
}

/// Everything forkd was asked to do, checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<Addr>,
    pub handler: HandlerName,
    pub inetd: bool,
    pub model: crate::model::Model,
    /// For the exec and frame-exec handlers.
    pub program: Option<Program>,
    pub max_children: u32,
    pub backlog: i32,
    pub max_frame: u32,
    pub grace: Duration,
    /// `None`: off.
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub admission: Policy,
    pub overload: Overload,
    pub child_limits: ChildLimits,
    pub user: Option<String>,
    pub group: Option<String>,
    pub keepalive: bool,
    pub log: LogOptions,
    pub pidfile: Option<PathBuf>,
}

/// The clap command, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// A command line that does not run the program.
#[derive(Debug)]
pub enum Stop {
    /// `--help` or `--version`: print this and exit 0.
    Print(String),
    /// A bad command line: this one line, then exit 2.
    Invalid(String),
}

impl Stop {
    /// Prints what is due and gives the exit status.
    pub fn finish(self, program: &str) -> std::process::ExitCode {
        match self {
            Stop::Print(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Stop::Invalid(line) => {
                eprintln!("{program}: {line}");
                std::process::ExitCode::from(2)
            }
        }
    }
}

/// Parses argv (the program name first).
pub fn parse<I, T>(args: I) -> Result<Config, Stop>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(clap_error)?;
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
        (Some(h @ (HandlerName::Echo | HandlerName::Fault)), false) => {
            return Err(Stop::Invalid(format!(
                "a PROGRAM after -- runs with --handler exec or frame-exec, not --handler {}",
                h.as_str()
            )));
        }
        (Some(h), _) => h,
    };
    let program = (!cli.program.is_empty()).then(|| Program {
        argv: cli.program,
        env_clear: cli.env_clear,
        env: cli.env,
        request_timeout: Some(cli.request_timeout).filter(|d| !d.is_zero()),
    });
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => LevelFilter::Info,
        (1, _) => LevelFilter::Debug,
        (_, 0) => LevelFilter::Trace,
        (_, 1) => LevelFilter::Warn,
        (_, _) => LevelFilter::Error,
    };
    let config = Config {
        listen: cli.listen,
        handler,
        inetd: cli.inetd,
        model: cli.model,
        program,
        max_children: cli.max_children,
        backlog: cli.backlog,
        max_frame: cli.max_frame,
        grace: cli.grace,
        idle_timeout: Some(cli.idle_timeout).filter(|d| !d.is_zero()),
        max_lifetime: cli.max_lifetime,
        admission: Policy {
            rules,
            per_source: cli.per_source,
            source_prefix: cli.per_source_prefix,
            rate: cli.rate,
        },
        overload: cli.overload,
        child_limits: ChildLimits {
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
        },
        pidfile: cli.pidfile,
    };
    crate::model::check(&config).map_err(Stop::Invalid)?;
    Ok(config)
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

/// Help and version are printed whole; any other clap error becomes one line, its first
/// paragraph, which names the flag and the problem (usage and tips are dropped).
pub fn clap_error(e: clap::Error) -> Stop {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Stop::Print(text),
        _ => {
            let paragraph: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            Stop::Invalid(
                paragraph
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string(),
            )
        }
    }
}

/// A byte count that fits a frame's 32-bit length field (see [`parse_bytes_u64`]).
pub fn parse_bytes(s: &str) -> Result<u32, String> {
    let n = parse_bytes_u64(s)?;
    u32::try_from(n).map_err(|_| format!("'{s}' is more than {} bytes", u32::MAX))
}

/// `1048576`, `64K`, `1M`, `1G` (powers of 1024; `KiB`, `MiB`, `GiB` too).
pub fn parse_bytes_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("'{s}': unit must be K, M or G")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too many bytes"))
}

/// Seconds, whole or fractional: `10`, `0.5`.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("'{s}' is not a number of seconds"))
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
        parse(argv).unwrap()
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
        assert_eq!(c.handler, HandlerName::Echo);
        assert_eq!(c.log.target, Target::Syslog);
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
    fn zero_idle_timeout_is_off() {
        assert_eq!(
            run(&["--listen", ":1", "--idle-timeout", "0"]).idle_timeout,
            None
        );
    }

    #[test]
    fn verbosity() {
        assert_eq!(run(&["--listen", ":1", "-v"]).log.level, LevelFilter::Debug);
        assert_eq!(
            run(&["--listen", ":1", "-vv"]).log.level,
            LevelFilter::Trace
        );
        assert_eq!(run(&["--listen", ":1", "-q"]).log.level, LevelFilter::Warn);
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

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("64K"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("3g"), Ok(3 << 30));
        assert!(parse_bytes("4G").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("").is_err());
    }
}
