//! The frame-exec handler: protocol v1 outside, a program per request inside. For each DATA
//! frame the child runs PROGRAM with the payload on stdin and answers a DATA frame holding its
//! stdout. A non-zero exit or a signal answers ERROR 8 with the status and the start of stderr;
//! a program past `--request-timeout` is killed (its whole process group) and answered ERROR 7;
//! output larger than `--max-frame` is ERROR 8, never a truncated DATA frame. The program's
//! stderr lines are logged, tagged with its pid.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::framed::{self, Reply, Responder};
use super::{Handler, Outcome, ProtocolSettings};
use crate::cli::Program;
use crate::conn::Connection;
use crate::frame::ErrorCode;
use crate::relay::LineSplitter;

/// How much of a failing program's stderr goes into the ERROR 8 message.
const STDERR_IN_ERROR: usize = 512;

pub struct FrameExec {
    pub settings: ProtocolSettings,
    pub program: Program,
}

impl Handler for FrameExec {
    fn serve(&self, conn: Connection) -> Outcome {
        let mut runner = Runner {
            handler: self,
            conn_env: crate::ucspi::environment(&conn),
            peer: conn.peer.to_string(),
        };
        framed::serve(conn, self.settings, &mut runner)
    }
}

struct Runner<'a> {
    handler: &'a FrameExec,
    conn_env: Vec<(String, String)>,
    peer: String,
}

impl Responder for Runner<'_> {
    fn on_data(&mut self, payload: Vec<u8>) -> Reply {
        let program = &self.handler.program;
        let mut cmd = super::exec::launch(program, &self.conn_env).command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever it started too.
            .process_group(0);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Reply::Error(
                    ErrorCode::HandlerFailed,
                    format!("cannot run {}: {e}", program.argv[0].to_string_lossy()),
                );
            }
        };
        let max = self.handler.settings.max_frame as usize;
        let result = Run::new(child, payload, max, program.request_timeout).finish();
        if let Err(failure) = &result {
            log::info!(
                "error peer={} pid={} reason={}",
                self.peer,
                std::process::id(),
                crate::logging::quote(&failure.1)
            );
        }
        match result {
            Ok(stdout) => Reply::Data(stdout),
            Err((code, message)) => Reply::Error(code, message),
        }
    }
}

/// One running program and what it has said so far.
struct Run {
    child: Child,
    pid: Pid,
    stdin: Option<ChildStdin>,
    input: Vec<u8>,
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    output: Vec<u8>,
    error_start: Vec<u8>,
    error_lines: LineSplitter,
    max: usize,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

type Failure = (ErrorCode, String);

impl Run {
    fn new(mut child: Child, input: Vec<u8>, max: usize, timeout: Option<Duration>) -> Run {
        let pid = Pid::from_raw(child.id() as i32);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        if let Some(s) = &stdin {
            crate::fds::set_nonblocking(s);
        }
        if let Some(s) = &stdout {
            crate::fds::set_nonblocking(s);
        }
        if let Some(s) = &stderr {
            crate::fds::set_nonblocking(s);
        }
        Run {
            child,
            pid,
            stdin,
            input,
            written: 0,
            stdout,
            stderr,
            output: Vec::new(),
            error_start: Vec::new(),
            error_lines: LineSplitter::new(pid),
            max,
            timeout,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// Feeds stdin, collects stdout and stderr, waits; the DATA payload or the ERROR.
    fn finish(mut self) -> Result<Vec<u8>, Failure> {
        if self.input.is_empty() {
            self.stdin = None;
        }
        while self.stdout.is_some() || self.stderr.is_some() {
            let left = self.time_left()?;
            let (want_in, want_out, want_err) = self.poll(left);
            if want_in {
                self.write_input();
            }
            if want_out {
                self.read_output()?;
            }
            if want_err {
                self.read_errors();
            }
        }
        self.error_lines.finish();
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| self.fail_io(e))? {
                break status;
            }
            self.time_left()?;
            std::thread::sleep(Duration::from_millis(2));
        };
        let stderr = String::from_utf8_lossy(&self.error_start)
            .trim()
            .to_string();
        let with_stderr = |head: String| {
            if stderr.is_empty() {
                head
            } else {
                format!("{head}: {stderr}")
            }
        };
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(self.output),
            (Some(code), _) => Err((
                ErrorCode::HandlerFailed,
                with_stderr(format!("exit status {code}")),
            )),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
                Err((
                    ErrorCode::HandlerFailed,
                    with_stderr(format!("killed by signal {name}")),
                ))
            }
            (None, None) => Err((ErrorCode::HandlerFailed, "ended oddly".to_string())),
        }
    }

    /// Time before the deadline, or the timeout failure (the program killed and reaped).
    fn time_left(&mut self) -> Result<Option<Duration>, Failure> {
        let Some(deadline) = self.deadline else {
            return Ok(None);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return Ok(Some(left));
        }
        self.kill();
        let secs = self.timeout.unwrap_or_default().as_secs_f64();
        Err((
            ErrorCode::Timeout,
            format!("program ran longer than {secs}s (--request-timeout) and was killed"),
        ))
    }

    /// Which of stdin (writable), stdout and stderr (readable) are ready.
    fn poll(&self, left: Option<Duration>) -> (bool, bool, bool) {
        let mut fds = Vec::with_capacity(3);
        let mut slots = [None; 3];
        if let Some(s) = &self.stdin {
            slots[0] = Some(fds.len());
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(s) = &self.stdout {
            slots[1] = Some(fds.len());
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if let Some(s) = &self.stderr {
            slots[2] = Some(fds.len());
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        let timeout = match left {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis().saturating_add(1).min(60_000) as u32)
                .unwrap_or(PollTimeout::MAX),
        };
        if nix::poll::poll(&mut fds, timeout).is_err() {
            return (false, false, false);
        }
        let ready = |slot: Option<usize>| {
            slot.is_some_and(|i| fds[i].revents().is_some_and(|r| !r.is_empty()))
        };
        (ready(slots[0]), ready(slots[1]), ready(slots[2]))
    }

    fn write_input(&mut self) {
        let Some(stdin) = &mut self.stdin else { return };
        match stdin.write(&self.input[self.written..]) {
            Ok(n) => {
                self.written += n;
                if self.written == self.input.len() {
                    // Close: the program sees the end of its input.
                    self.stdin = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EPIPE: the program does not read its input; that is its business.
            Err(_) => self.stdin = None,
        }
    }

    fn read_output(&mut self) -> Result<(), Failure> {
        let Some(stdout) = &mut self.stdout else {
            return Ok(());
        };
        let mut buf = [0u8; 16 * 1024];
        match stdout.read(&mut buf) {
            Ok(0) => self.stdout = None,
            Ok(n) => {
                self.output.extend_from_slice(&buf[..n]);
                if self.output.len() > self.max {
                    self.kill();
                    return Err((
                        ErrorCode::HandlerFailed,
                        format!("program output exceeds --max-frame ({} bytes)", self.max),
                    ));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.stdout = None,
        }
        Ok(())
    }

    fn read_errors(&mut self) {
        let Some(stderr) = &mut self.stderr else {
            return;
        };
        let mut buf = [0u8; 8192];
        match stderr.read(&mut buf) {
            Ok(0) => self.stderr = None,
            Ok(n) => {
                let room = STDERR_IN_ERROR.saturating_sub(self.error_start.len());
                self.error_start.extend_from_slice(&buf[..n.min(room)]);
                self.error_lines.feed(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.stderr = None,
        }
    }

    /// Kills the program's process group and reaps the program.
    fn kill(&mut self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        let _ = self.child.wait();
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
    }

    fn fail_io(&mut self, e: io::Error) -> Failure {
        self.kill();
        (
            ErrorCode::HandlerFailed,
            format!("waiting for the program: {e}"),
        )
    }
}
