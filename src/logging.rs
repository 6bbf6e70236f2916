//! The log: syslog or stderr, one line per event, the same words in both.
//!
//! The vocabulary is `start`, `accept`, `reject`, `end`, `status`, `stop` (and `error` for a
//! conversation a child ended on a protocol or I/O error), each followed by `key=value` fields,
//! so that one grep answers "who connected, what ran, how did it end".
//!
//! The logger is a plain `log::Log` with no thread of its own, so the supervisor stays
//! single-threaded and fork-safe. Children inherit it; every line carries the pid of the
//! process that wrote it.

use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Formatter3164, LoggerBackend};

use crate::config::LogOptions;
pub(crate) use crate::config::LogTarget as Target;

const PROGRAM: &str = "forkd";

type SyslogWriter = syslog::Logger<LoggerBackend, Formatter3164>;

enum Backend {
    Syslog {
        writer: SyslogWriter,
        options: LogOptions,
    },
    Stderr,
}

struct Logger {
    backend: Mutex<Backend>,
    level: LevelFilter,
}

/// Installs the process-wide logger and returns where lines go. With syslog asked for and no
/// syslog socket reachable (a container without /dev/log), says so once on stderr and logs to
/// stderr instead.
pub(crate) fn init(options: LogOptions) -> Target {
    let backend = match options.target {
        Target::Stderr => Backend::Stderr,
        Target::Syslog => match connect_syslog(&options) {
            Ok(writer) => Backend::Syslog {
                writer,
                options: options.clone(),
            },
            Err(reason) => {
                write_stderr(&format!(
                    "{PROGRAM}: syslog unavailable ({reason}); logging to stderr\n"
                ));
                Backend::Stderr
            }
        },
    };
    let target = match backend {
        Backend::Syslog { .. } => Target::Syslog,
        Backend::Stderr => Target::Stderr,
    };
    let logger = Logger {
        backend: Mutex::new(backend),
        level: options.level,
    };
    // A second init (tests in one process) keeps the first logger.
    let logger: &'static Logger = Box::leak(Box::new(logger));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(options.level);
        let _ = INSTALLED.set(logger);
    }
    target
}

static INSTALLED: std::sync::OnceLock<&'static Logger> = std::sync::OnceLock::new();

/// Connects to the syslog socket afresh (SIGHUP), for a syslog daemon that was restarted or
/// a socket that moved. Returns what happened, for the log line that follows.
pub(crate) fn reopen() -> &'static str {
    let Some(logger) = INSTALLED.get() else {
        return "none";
    };
    let mut backend = match logger.backend.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    match &mut *backend {
        Backend::Stderr => "stderr",
        Backend::Syslog { writer, options } => match connect_syslog(options) {
            Ok(fresh) => {
                *writer = fresh;
                "syslog-reconnected"
            }
            Err(_) => "syslog-unreachable",
        },
    }
}

fn connect_syslog(options: &LogOptions) -> Result<SyslogWriter, String> {
    let formatter = Formatter3164 {
        facility: options.facility,
        // Local syslog sockets take no hostname, as with syslog(3).
        hostname: None,
        process: PROGRAM.to_string(),
        pid: std::process::id(),
    };
    let result = match &options.syslog_socket {
        Some(path) => syslog::unix_custom(formatter, path),
        None => syslog::unix(formatter),
    };
    result.map_err(|e| match &options.syslog_socket {
        Some(path) => format!("{}: {e}", path.display()),
        None => format!("/dev/log: {e}"),
    })
}

fn write_stderr(line: &str) {
    // One write per line, so lines from the supervisor and its children do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn stderr_line(level: Level, message: &str) -> String {
    let prefix = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug | Level::Trace => "debug: ",
    };
    format!("{PROGRAM}[{}]: {prefix}{message}\n", std::process::id())
}

fn send_syslog(writer: &mut SyslogWriter, level: Level, message: &str) -> syslog::Result<()> {
    // Children inherit the writer: stamp each line with the pid of the process that sends it.
    writer.formatter.pid = std::process::id();
    match level {
        Level::Error => writer.err(message),
        Level::Warn => writer.warning(message),
        Level::Info => writer.info(message),
        Level::Debug | Level::Trace => writer.debug(message),
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let mut backend = match self.backend.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &mut *backend {
            Backend::Stderr => write_stderr(&stderr_line(record.level(), &message)),
            Backend::Syslog { writer, options } => {
                if send_syslog(writer, record.level(), &message).is_ok() {
                    return;
                }
                // The syslog daemon restarted (a connected datagram socket then points at a
                // dead socket): reconnect once; if that fails too, keep the line on stderr.
                let resent = connect_syslog(options).ok().and_then(|mut fresh| {
                    send_syslog(&mut fresh, record.level(), &message).ok()?;
                    Some(fresh)
                });
                match resent {
                    Some(fresh) => *writer = fresh,
                    None => write_stderr(&stderr_line(record.level(), &message)),
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Makes a panic a log line (then the panic goes on as usual). In a child this is how a
/// handler's panic reaches syslog before the child exits.
pub(crate) fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        log::error!(
            "panic pid={} reason={:?}{location}",
            std::process::id(),
            message
        );
    }));
}

/// Quotes a value for a `key=value` field when it holds spaces or quotes.
pub(crate) fn quote(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '"', '=', '\\']) {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}
