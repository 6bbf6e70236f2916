//! The frame-exec handler: protocol v1 outside, a program per request inside. For each DATA
//! frame the child runs PROGRAM with the payload on stdin and answers a DATA frame holding its
//! stdout. A non-zero exit or a signal answers ERROR 8 with the status and the start of stderr;
//! a program past `--request-timeout` is killed (its whole process group) and answered ERROR 7;
//! output larger than `--max-frame` is ERROR 8, never a truncated DATA frame. The program's
//! stderr lines are logged, tagged with its pid.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use super::{FramedHandler, NewFramed, Reply};
use crate::config::Program;
use crate::conn::Connection;
use crate::frame::ErrorCode;
use crate::relay::LineSplitter;

/// How much of a failing program's stderr goes into the ERROR 8 message.
const STDERR_IN_ERROR: usize = 512;

/// Makes the runner of each connection.
pub(crate) struct NewRunner {
    program: Program,
    /// Output beyond this is ERROR 8, never a truncated DATA frame.
    max_output: usize,
}

impl NewRunner {
    pub(crate) fn new(program: Program, max_output: u32) -> NewRunner {
        NewRunner {
            program,
            max_output: max_output as usize,
        }
    }
}

impl NewFramed for NewRunner {
    fn new_handler(&self, conn: &Connection) -> Box<dyn FramedHandler> {
        Box::new(Runner {
            program: self.program.clone(),
            max_output: self.max_output,
            conn_env: crate::ucspi::environment(conn),
            peer: conn.who().to_string(),
        })
    }
}

struct Runner {
    program: Program,
    max_output: usize,
    conn_env: Vec<(String, String)>,
    peer: String,
}

impl FramedHandler for Runner {
    fn request(&mut self, payload: &[u8], mut reply: Reply<'_>) {
        // The answers to earlier requests do not wait for this program.
        if reply.flush_earlier().is_err() {
            return reply.error(ErrorCode::HandlerFailed, "peer gone");
        }
        let result = self.run(payload);
        if let Err(failure) = &result {
            log::warn!(
                "error peer={} pid={} code={} reason={}",
                self.peer,
                std::process::id(),
                failure.0 as u16,
                crate::logging::quote(&failure.1)
            );
        }
        match result {
            Ok(stdout) => reply.data(&stdout),
            Err((code, message)) => reply.error(code, &message),
        }
    }
}

impl Runner {
    fn run(&self, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        let launch = super::program::launch(&self.program, &self.conn_env);
        let cannot = |e: io::Error| {
            (
                ErrorCode::HandlerFailed,
                format!("cannot run {}: {e}", self.program.argv[0].to_string_lossy()),
            )
        };
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
        let (stdin_read, stdin_write) = pipe().map_err(cannot)?;
        let (stdout_read, stdout_write) = pipe().map_err(cannot)?;
        let (stderr_read, stderr_write) = pipe().map_err(cannot)?;
        // Its own process group (so a timeout kills whatever it started too), an empty signal
        // mask and default dispositions, whichever thread starts it; killed if this worker
        // is (a worker ended at --max-lifetime or at the end of the grace period).
        let mut command = launch.command();
        command
            .stdin(stdin_read)
            .stdout(stdout_write)
            .stderr(stderr_write);
        let pid = crate::spawn::spawn_tied(command).map_err(cannot)?;
        // Known to the supervisor while it runs: a worker ended from outside takes the
        // program's whole group with it.
        crate::isolation::groups::program_started(pid);
        let run = Run::new(
            pid,
            [stdin_write, stdout_read, stderr_read],
            payload.to_vec(),
            self.max_output,
            self.program.request_timeout,
        );
        let result = run.finish();
        crate::isolation::groups::program_ended();
        result
    }
}

/// One running program and what it has said so far.
struct Run {
    pid: Pid,
    /// Readable once the program has exited (a pidfd; `None` where the kernel has none).
    exited: Option<OwnedFd>,
    stdin: Option<File>,
    input: Vec<u8>,
    written: usize,
    stdout: Option<File>,
    stderr: Option<File>,
    output: Vec<u8>,
    error_start: Vec<u8>,
    error_lines: LineSplitter,
    max: usize,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

type Failure = (ErrorCode, String);

/// What one poll found ready.
#[derive(Default)]
struct Ready {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    exited: bool,
}

/// A descriptor that becomes readable when `pid` exits (pidfd_open, Linux 5.3); `None` where
/// the kernel has none: then the end of the program's output is the end of its pipes.
fn pidfd(pid: Pid) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a descriptor just opened for this process alone (close-on-exec, as pidfds are).
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How the program ended.
enum Status {
    Exit(i32),
    Signal(Signal),
}

impl Run {
    fn new(
        pid: Pid,
        [stdin, stdout, stderr]: [OwnedFd; 3],
        input: Vec<u8>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Run {
        for end in [&stdin, &stdout, &stderr] {
            crate::fds::set_nonblocking(end);
        }
        Run {
            pid,
            exited: pidfd(pid),
            stdin: Some(File::from(stdin)),
            input,
            written: 0,
            stdout: Some(File::from(stdout)),
            stderr: Some(File::from(stderr)),
            output: Vec::new(),
            error_start: Vec::new(),
            error_lines: LineSplitter::new(pid),
            max,
            timeout,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// The program's status once it has ended, without blocking. What is left of its process
    /// group (a child that closed its output, or ignored it) is killed first, while the
    /// program is still unreaped and its pid, the group's id, cannot be reused.
    fn try_wait(&mut self) -> Result<Option<Status>, Failure> {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match waitid(Id::Pid(self.pid), peek) {
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(self.fail_io(io::Error::from(e))),
            }
        }
        let _ = killpg(self.pid, Signal::SIGKILL);
        loop {
            return match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Ok(Some(Status::Exit(code))),
                Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(Status::Signal(sig))),
                Ok(WaitStatus::StillAlive) => Ok(None),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => Err(self.fail_io(io::Error::from(e))),
            };
        }
    }

    /// Feeds stdin, collects stdout and stderr, waits; the DATA payload or the ERROR.
    fn finish(mut self) -> Result<Vec<u8>, Failure> {
        if self.input.is_empty() {
            self.stdin = None;
        }
        while self.stdout.is_some() || self.stderr.is_some() {
            let left = self.time_left()?;
            let ready = self.poll(left);
            if ready.stdin {
                self.write_input();
            }
            if ready.stdout {
                self.read_output()?;
            }
            if ready.stderr {
                self.read_errors();
            }
            if ready.exited {
                self.drain_after_exit()?;
            }
        }
        self.error_lines.finish();
        let status = loop {
            if let Some(status) = self.try_wait()? {
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
        match status {
            Status::Exit(0) => Ok(self.output),
            Status::Exit(code) => Err((
                ErrorCode::HandlerFailed,
                with_stderr(format!("exit status {code}")),
            )),
            Status::Signal(sig) => Err((
                ErrorCode::HandlerFailed,
                with_stderr(format!("killed by signal {}", sig.as_str())),
            )),
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

    /// Which of stdin (writable), stdout and stderr (readable) are ready, and whether the
    /// program has exited.
    fn poll(&self, left: Option<Duration>) -> Ready {
        let mut fds = Vec::with_capacity(4);
        let mut slots = [None; 4];
        let wanted = [
            (self.stdin.as_ref().map(AsFd::as_fd), PollFlags::POLLOUT),
            (self.stdout.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
            (self.stderr.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
            (self.exited.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
        ];
        for (slot, (fd, flags)) in slots.iter_mut().zip(wanted) {
            if let Some(fd) = fd {
                *slot = Some(fds.len());
                fds.push(PollFd::new(fd, flags));
            }
        }
        let timeout = match left {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis().saturating_add(1).min(60_000) as u32)
                .unwrap_or(PollTimeout::MAX),
        };
        if nix::poll::poll(&mut fds, timeout).is_err() {
            return Ready::default();
        }
        let ready = |slot: Option<usize>| {
            slot.is_some_and(|i| fds[i].revents().is_some_and(|r| !r.is_empty()))
        };
        Ready {
            stdin: ready(slots[0]),
            stdout: ready(slots[1]),
            stderr: ready(slots[2]),
            exited: ready(slots[3]),
        }
    }

    /// The program has exited: what it wrote is in the pipes. Take that and stop waiting for
    /// an end of file a background child holding a pipe would decide: the reply is what the
    /// program wrote before it exited ([`Run::try_wait`], next, kills what is left of its
    /// group).
    fn drain_after_exit(&mut self) -> Result<(), Failure> {
        self.stdin = None;
        while self.stdout.is_some() && self.read_output()? > 0 {}
        // Bounded: a background child may write to stderr without end.
        for _ in 0..64 {
            if self.stderr.is_none() || self.read_errors() == 0 {
                break;
            }
        }
        self.stdout = None;
        self.stderr = None;
        self.exited = None;
        Ok(())
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

    /// Reads stdout once; the bytes read (0 at its end or when nothing is there).
    fn read_output(&mut self) -> Result<usize, Failure> {
        let Some(stdout) = &mut self.stdout else {
            return Ok(0);
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
                return Ok(n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.stdout = None,
        }
        Ok(0)
    }

    /// Reads stderr once; the bytes read (0 at its end or when nothing is there).
    fn read_errors(&mut self) -> usize {
        let Some(stderr) = &mut self.stderr else {
            return 0;
        };
        let mut buf = [0u8; 8192];
        match stderr.read(&mut buf) {
            Ok(0) => self.stderr = None,
            Ok(n) => {
                let room = STDERR_IN_ERROR.saturating_sub(self.error_start.len());
                self.error_start.extend_from_slice(&buf[..n.min(room)]);
                self.error_lines.feed(&buf[..n]);
                return n;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.stderr = None,
        }
        0
    }

    /// Kills the program's process group and reaps the program.
    fn kill(&mut self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
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
