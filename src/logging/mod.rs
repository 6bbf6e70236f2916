//! The log: syslog or stderr, one line per event, the same words in both.
//!
//! The vocabulary is `start`, `accept`, `reject`, `end`, `status`, `stop` (and `error` for a
//! conversation a child ended on a protocol or I/O error), each followed by `key=value` fields,
//! so that one grep answers "who connected, what ran, how did it end".
//!
//! The logger is a plain `log::Log` with no thread of its own, so the supervisor stays
//! single-threaded and fork-safe. Children inherit it; every line carries the pid of the
//! process that wrote it.
//!
//! Logging never waits: the syslog socket is non-blocking and stderr is written through
//! [`stderr::Sink`]. A line the sink cannot take now (a syslog daemon that stopped reading,
//! a pipe nobody drains) is dropped and counted, and the next line that gets through is
//! preceded by `status log_dropped=N`, so the gap is visible where it happened.

pub(crate) mod emergency;
mod stderr;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use log::{Level, Log, Metadata, Record};
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

/// Lines dropped by one process. Children inherit the count with the logger: the pid says
/// whose it is, so a child never reports the supervisor's drops as its own.
#[derive(Default)]
struct Dropped {
    pid: u32,
    lines: u64,
}

struct State {
    backend: Backend,
    stderr: stderr::Sink,
    dropped: Dropped,
}

struct Logger {
    state: Mutex<State>,
    /// The least severe level logged, as `LevelFilter as usize`: a reload may change it.
    level: AtomicUsize,
    connections: AtomicBool,
}

/// The log target of a connection's routine lines (`accept`, `end` with an exit status),
/// which [`crate::config::LogOptions::connections`] turns off.
pub(crate) const CONNECTION: &str = "forkd::connection";

/// Installs the process-wide logger and returns where lines go. With syslog asked for and no
/// syslog socket reachable (a container without /dev/log), says so once on stderr and logs to
/// stderr instead.
pub(crate) fn init(options: LogOptions) -> Target {
    let stderr = stderr::Sink::open();
    let backend = match options.target {
        Target::Stderr => Backend::Stderr,
        Target::Syslog => match connect_syslog(&options) {
            Ok(writer) => Backend::Syslog {
                writer,
                options: options.clone(),
            },
            Err(reason) => {
                let priority = if stderr_is_journal() { "<4>" } else { "" };
                stderr.write(
                    format!(
                        "{priority}{PROGRAM}: syslog unavailable ({reason}); logging to stderr\n"
                    )
                    .as_bytes(),
                );
                Backend::Stderr
            }
        },
    };
    let target = match backend {
        Backend::Syslog { .. } => Target::Syslog,
        Backend::Stderr => Target::Stderr,
    };
    let logger = Logger {
        state: Mutex::new(State {
            backend,
            stderr,
            dropped: Dropped::default(),
        }),
        level: AtomicUsize::new(options.level as usize),
        connections: AtomicBool::new(options.connections),
    };
    // A second init (tests in one process) keeps the first logger.
    let logger: &'static Logger = Box::leak(Box::new(logger));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(options.level);
        let _ = INSTALLED.set(logger);
        let state = logger.lock();
        state.direct_emergency_lines();
        let for_workers = match &state.stderr {
            stderr::Sink::Reopened { own, workers } => {
                use std::os::fd::AsRawFd;
                SUPERVISOR_STDERR.store(own.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
                workers.as_raw_fd()
            }
            stderr::Sink::Socket => STDERR_SOCKET,
            stderr::Sink::Polled | stderr::Sink::Plain => -1,
        };
        WORKER_STDERR.store(for_workers, std::sync::atomic::Ordering::Relaxed);
        let journal = matches!(state.stderr, stderr::Sink::Socket) && stderr_is_journal();
        STDERR_IS_JOURNAL.store(journal, std::sync::atomic::Ordering::Relaxed);
    } else {
        // The process has a logger already (an embedder's): give back the descriptors this
        // one opened.
        let mut state = logger.lock();
        state.backend = Backend::Stderr;
        state.stderr = stderr::Sink::Plain;
    }
    target
}

static INSTALLED: std::sync::OnceLock<&'static Logger> = std::sync::OnceLock::new();

/// Whether stderr is systemd's journal stream: then a line's level goes in front of it as
/// `<N>` (sd-daemon(3)), which journald takes for its priority, and forkd's name and pid are
/// left to journald, which adds them itself.
static STDERR_IS_JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether standard error is systemd's journal stream: systemd sets JOURNAL_STREAM to the
/// device and inode of the stream it connects to stderr, and descriptor 2 is still that
/// stream only if they match (a shell may have redirected it). A line written there may then
/// start with its priority (`<3>` for an error, sd-daemon(3)).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// What a worker does to its stderr: -1 nothing (a regular file never blocks), the log's
/// non-blocking descriptor for a pipe or terminal, or [`STDERR_SOCKET`].
static WORKER_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The supervisor's own description of a reopened stderr, which a worker replaces with the
/// workers' one (under the same number, where its logger writes).
static SUPERVISOR_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Stderr is a socket (the journal's): it cannot be opened a second time.
const STDERR_SOCKET: i32 = -2;

/// In a worker process: descriptor 2 stops blocking, so what writes to stderr directly
/// (Rust's "memory allocation failed" or stack-overflow message, a handler's `eprintln!`)
/// cannot hold the worker when nobody reads; such a write fails instead (for `eprintln!`, a
/// panic: the request is answered ERROR 8 and logged). A pipe or terminal is replaced by the
/// workers' non-blocking description of it. A socket gets O_NONBLOCK on the description it
/// shares with the supervisor, which writes to it with non-blocking sends whatever the flags
/// say.
pub(crate) fn nonblocking_stderr_for_worker() {
    let fd = WORKER_STDERR.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        // Both are open descriptors of this process; descriptor 2, which no Rust object owns,
        // becomes a copy of the workers' description.
        crate::raw::dup2(fd, 2);
    } else if fd == STDERR_SOCKET {
        // SAFETY: F_GETFL/F_SETFL only read and set descriptor 2's status flags.
        unsafe {
            let flags = libc::fcntl(2, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(2, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
    }
}

/// In a sandboxed worker: the supervisor's own description of a stderr pipe or terminal,
/// which the worker inherited under the number its logger writes to, is replaced there by
/// the workers' one. A worker taken over then holds nothing whose flags (O_NONBLOCK) the
/// supervisor depends on. (It can still clear the flag on the description the workers share,
/// and make other workers wait on a full pipe: reopening the pipe per worker would prevent
/// that, at about 30 µs a worker; syslog and the journal are not open to it.)
pub(crate) fn release_supervisor_stderr() {
    let fd = WORKER_STDERR.load(std::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let own = SUPERVISOR_STDERR.load(std::sync::atomic::Ordering::Relaxed);
    // Both are open descriptors of this process; the logger that owns `own` is leaked at start
    // and never dropped (a worker ends in _exit), so the number stays its.
    crate::raw::dup2(fd, own);
}

/// Connects to the syslog socket afresh (SIGHUP), for a syslog daemon that was restarted or
/// a socket that moved. Returns what happened, for the log line that follows.
pub(crate) fn reopen() -> &'static str {
    let Some(logger) = INSTALLED.get() else {
        return "none";
    };
    let mut state = logger.lock();
    match &mut state.backend {
        Backend::Stderr => "stderr",
        Backend::Syslog { writer, options } => match connect_syslog(options) {
            Ok(fresh) => {
                *writer = fresh;
                state.direct_emergency_lines();
                "syslog-reconnected"
            }
            Err(_) => "syslog-unreachable",
        },
    }
}

/// A reload: the log goes where `options` say from the next line on. A syslog socket that
/// cannot be reached refuses the change (the log stays where it was) rather than falling back
/// to stderr as a start does. Without forkd's logger (an embedder's), nothing to do.
pub(crate) fn reconfigure(options: &LogOptions) -> Result<(), String> {
    let Some(logger) = INSTALLED.get() else {
        return Ok(());
    };
    let backend = match options.target {
        Target::Stderr => Backend::Stderr,
        Target::Syslog => Backend::Syslog {
            writer: connect_syslog(options).map_err(|why| format!("syslog: {why}"))?,
            options: options.clone(),
        },
    };
    let mut state = logger.lock();
    state.backend = backend;
    state.direct_emergency_lines();
    drop(state);
    logger
        .level
        .store(options.level as usize, Ordering::Relaxed);
    logger
        .connections
        .store(options.connections, Ordering::Relaxed);
    log::set_max_level(options.level);
    Ok(())
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
    let writer = result.map_err(|e| match &options.syslog_socket {
        Some(path) => format!("{}: {e}", path.display()),
        None => format!("/dev/log: {e}"),
    })?;
    // A syslog daemon that stops reading must not stop forkd: sends that would wait fail
    // with EAGAIN instead, and the line is counted as dropped.
    crate::fds::set_nonblocking(&socket_of(&writer.backend));
    Ok(writer)
}

/// The socket a syslog backend sends on.
fn socket_of(backend: &LoggerBackend) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    match backend {
        LoggerBackend::Unix(socket) => socket.as_fd(),
        LoggerBackend::UnixStream(socket) => socket.get_ref().as_fd(),
        LoggerBackend::Udp(socket, _) => socket.as_fd(),
        LoggerBackend::Tcp(socket) => socket.get_ref().as_fd(),
    }
}

fn is_would_block(error: &syslog::Error) -> bool {
    match error {
        syslog::Error::Write(e) | syslog::Error::Io(e) => {
            e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
        }
        _ => false,
    }
}

/// `forkd[PID]: line`, with `error: `, `warning: ` or `debug: ` before lines of those levels
/// (not when the line's event word says it already: `error peer=...` at level error); to the
/// journal, `<N>line`.
fn stderr_line(level: Level, message: &str) -> String {
    if STDERR_IS_JOURNAL.load(std::sync::atomic::Ordering::Relaxed) {
        let priority = match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        return format!("<{priority}>{message}\n");
    }
    let word = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "",
        Level::Debug | Level::Trace => "debug",
    };
    let said = message
        .strip_prefix(word)
        .is_some_and(|rest| rest.starts_with(' '));
    let prefix = if word.is_empty() || said {
        String::new()
    } else {
        format!("{word}: ")
    };
    format!("{PROGRAM}[{}]: {prefix}{message}\n", std::process::id())
}

fn send_syslog(writer: &mut SyslogWriter, level: Level, message: &str) -> syslog::Result<()> {
    use std::os::fd::AsRawFd;
    // Children inherit the writer: stamp each line with the pid of the process that sends it.
    writer.formatter.pid = std::process::id();
    match &writer.backend {
        LoggerBackend::UnixStream(stream) => {
            return send_local(
                stream.get_ref().as_raw_fd(),
                &writer.formatter,
                level,
                message,
                true,
            );
        }
        // Not the crate's send, which waits or not as the socket's O_NONBLOCK says: workers
        // share that flag (the socket's description) and could clear it.
        LoggerBackend::Unix(socket) => {
            return send_local(socket.as_raw_fd(), &writer.formatter, level, message, false);
        }
        LoggerBackend::Udp(..) | LoggerBackend::Tcp(..) => {}
    }
    match level {
        Level::Error => writer.err(message),
        Level::Warn => writer.warning(message),
        Level::Info => writer.info(message),
        Level::Debug | Level::Trace => writer.debug(message),
    }
}

/// A line to a local syslog socket, in one send that never waits (`MSG_DONTWAIT`, whatever
/// the socket's flags). A stream socket gets each line whole and NUL-terminated: the crate's
/// own path buffers pieces, and a send that would wait then leaves half a line behind to go
/// out later, garbling the stream and the count of lines dropped. A line this short is taken
/// whole or not at all.
fn send_local(
    socket: std::os::fd::RawFd,
    formatter: &Formatter3164,
    level: Level,
    message: &str,
    stream: bool,
) -> syslog::Result<()> {
    use syslog::{LogFormat, Severity};
    let severity = match level {
        Level::Error => Severity::LOG_ERR,
        Level::Warn => Severity::LOG_WARNING,
        Level::Info => Severity::LOG_INFO,
        Level::Debug | Level::Trace => Severity::LOG_DEBUG,
    };
    let mut line = Vec::with_capacity(message.len() + 64);
    formatter.format(&mut line, severity, message)?;
    if stream {
        line.push(0);
    }
    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
    match nix::sys::socket::send(socket, &line, flags) {
        Ok(n) if n == line.len() => Ok(()),
        // Part of a line went out: the stream's framing is lost; what follows is garbled
        // until the next connection (SIGHUP, or a restarted daemon).
        Ok(_) => Ok(()),
        Err(e) => Err(syslog::Error::Write(std::io::Error::from(e))),
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let level = self.level.load(Ordering::Relaxed);
        metadata.level() as usize <= level
            && (self.connections.load(Ordering::Relaxed) || metadata.target() != CONNECTION)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let mut state = self.lock();
        let pid = std::process::id();
        if state.dropped.pid != pid {
            state.dropped = Dropped { pid, lines: 0 };
        }
        if state.dropped.lines > 0 {
            let note = format!("status log_dropped={}", state.dropped.lines);
            if !state.write(Level::Warn, &note) {
                state.dropped.lines += 1;
                return;
            }
            state.dropped.lines = 0;
        }
        if !state.write(record.level(), &message) {
            state.dropped.lines += 1;
        }
    }

    fn flush(&self) {}
}

impl Logger {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl State {
    /// Points [`emergency`] lines at where this logger's lines go now.
    fn direct_emergency_lines(&self) {
        use std::os::fd::AsRawFd;
        match &self.backend {
            Backend::Stderr => emergency::direct(self.stderr.raw_fd(), None),
            Backend::Syslog { writer, options } => {
                let fd = socket_of(&writer.backend).as_raw_fd();
                emergency::direct(fd, Some(options.facility as i32 | libc::LOG_ERR));
            }
        }
    }

    /// Writes one line; false when it had to be dropped because the sink is not reading.
    fn write(&mut self, level: Level, message: &str) -> bool {
        let State {
            backend, stderr, ..
        } = self;
        match backend {
            Backend::Stderr => stderr.write(stderr_line(level, message).as_bytes()),
            Backend::Syslog { writer, options } => match send_syslog(writer, level, message) {
                Ok(()) => true,
                Err(e) if is_would_block(&e) => false,
                Err(_) => {
                    // The syslog daemon restarted (a connected datagram socket then points at
                    // a dead socket): reconnect once; if that fails too, keep the line on
                    // stderr.
                    let resent = connect_syslog(options).ok().and_then(|mut fresh| {
                        send_syslog(&mut fresh, level, message).ok()?;
                        Some(fresh)
                    });
                    match resent {
                        Some(fresh) => {
                            *writer = fresh;
                            self.direct_emergency_lines();
                            true
                        }
                        None => stderr.write(stderr_line(level, message).as_bytes()),
                    }
                }
            },
        }
    }
}

/// Makes a panic a log line (then the panic goes on as usual). In a child this is how a
/// handler's panic reaches syslog before the child exits.
pub(crate) fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" location={}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        log::error!(
            "panic pid={} reason={}{location}",
            std::process::id(),
            quote(&message)
        );
    }));
}

/// Quotes a value for a `key=value` field when it holds spaces, quotes, `=`, a backslash or a
/// control character, as a Rust string literal.
pub(crate) fn quote(value: &str) -> String {
    // A control character (NUL, TAB, CR, ESC...) is escaped too: raw, it would split the line
    // into records of a sink's own (a NUL ends a journald or syslog record) or drive a
    // terminal.
    let plain = |c: char| !matches!(c, ' ' | '"' | '=' | '\\') && !c.is_control();
    if !value.is_empty() && value.chars().all(plain) {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn a_value_that_could_break_its_line_or_field_is_quoted() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x\0<0>forged"), "\"x\\0<0>forged\"");
        assert_eq!(quote("tab\there"), "\"tab\\there\"");
        assert_eq!(quote("\u{1b}[31m"), "\"\\u{1b}[31m\"");
    }
}
