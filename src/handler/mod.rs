//! Handlers: what a child does with one connection. A handler knows nothing of fork, the
//! supervisor or the listeners; it gets a [`Connection`] and reports how the conversation
//! ended.

pub mod echo;
pub mod exec;
pub mod fault;
pub mod frame_exec;
pub mod framed;

use crate::cli::Program;
use crate::conn::Connection;

/// How a conversation ended; the child's exit status says it to the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer finished at a frame boundary and got every reply.
    Clean,
    /// A protocol or I/O error ended it; the child has logged why.
    Failed,
}

/// Serves one connection. Shared by every thread under `--model thread`.
pub trait Handler: Send + Sync {
    fn serve(&self, conn: Connection) -> Outcome;

    /// Whether the connection is served by another program: then the exit status is the
    /// program's, and its stderr is relayed into the log.
    fn execs(&self) -> bool {
        false
    }

    /// For a handler that [`execs`](Handler::execs): the program to run for `conn`; the
    /// caller gives it the connection as stdin and stdout. The supervisor starts it directly
    /// (posix_spawn where it can: nothing of the supervisor's memory is copied) instead of
    /// forking a child that would exec.
    fn program_for(&self, _conn: &Connection) -> Option<Launch> {
        None
    }
}

/// A program to run for a connection: its arguments (the first names it, as for execvp) and
/// its whole environment.
pub struct Launch {
    pub argv: Vec<std::ffi::OsString>,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Launch {
    /// The program as a `Command`, with exactly this environment.
    pub fn command(self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).env_clear().envs(self.env);
        cmd
    }
}

/// The handlers `--handler` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerName {
    /// Answers DATA with the same DATA, PING with PONG.
    Echo,
    /// Runs PROGRAM with the connection on stdin and stdout and the UCSPI environment, as
    /// tcpserver does: the program owns the protocol.
    Exec,
    /// Speaks protocol v1 and runs PROGRAM once per DATA frame: the payload on its stdin, its
    /// stdout the DATA reply.
    FrameExec,
    /// Echo that commits a fault on request (panic, abort, stack overflow, spin, leak): for
    /// tests and benchmarks only, so it stays out of --help.
    #[value(hide = true)]
    Fault,
}

impl HandlerName {
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerName::Echo => "echo",
            HandlerName::Exec => "exec",
            HandlerName::FrameExec => "frame-exec",
            HandlerName::Fault => "fault",
        }
    }
}

/// Settings every protocol-v1 handler shares.
#[derive(Clone, Copy, Debug)]
pub struct ProtocolSettings {
    pub max_frame: u32,
    /// How long a complete request may take to arrive after the last reply; `None`: forever.
    pub idle_timeout: Option<std::time::Duration>,
}

/// The handler a name stands for. The command line guarantees a program for exec and
/// frame-exec.
pub fn build(
    name: HandlerName,
    settings: ProtocolSettings,
    program: Option<&Program>,
) -> Box<dyn Handler> {
    let program = || program.expect("a PROGRAM for this handler").clone();
    match name {
        HandlerName::Echo => Box::new(echo::Echo { settings }),
        HandlerName::Fault => Box::new(fault::Fault { settings }),
        HandlerName::Exec => Box::new(exec::Exec { program: program() }),
        HandlerName::FrameExec => Box::new(frame_exec::FrameExec {
            settings,
            program: program(),
        }),
    }
}
