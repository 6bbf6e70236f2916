//! Handlers: what is done with one connection. A handler knows nothing of fork, threads, the
//! supervisor or the listeners.
//!
//! Two levels, as Python's socketserver has request handlers:
//!
//! - a [`FramedHandler`] answers protocol-v1 requests one payload at a time; the library reads
//!   and writes the frames, answers PING, enforces `max_frame` and the idle limit, and sends
//!   the replies to pipelined requests together;
//! - a [`StreamHandler`] gets the [`Connection`] itself and does what it likes with it.
//!
//! forkd's own handlers are built on the same seams: echo and frame-exec are framed handlers;
//! exec (a program per connection) is started by the isolation model itself, since the
//! program replaces whatever would serve the connection.

mod clock;
mod echo;
mod frame_exec;
mod framed;
pub(crate) mod program;
mod session;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;

pub use framed::{FramedHandler, NewFramed, Payload, Reply};
pub(crate) use session::ProtocolSettings;
pub use stream::StreamHandler;

use crate::config::Service;
use crate::conn::Connection;
use crate::sandbox::Confined;

/// How a conversation ended; a worker process's exit status says it to the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The peer finished cleanly (for protocol v1: closed or reset at a frame boundary, every
    /// reply sent).
    Clean,
    /// An I/O error ended it (a reset inside a frame, say), or the handler returned an error;
    /// the worker has logged why.
    Failed,
    /// The peer broke the protocol (ERROR 1, 2 or 3 sent); logged.
    Broken,
    /// The peer sent no complete request, or did not take a reply, within the idle limit
    /// (ERROR 7); logged.
    TimedOut,
}

/// What a worker does with a connection: the service the server was given, resolved.
#[derive(Clone)]
pub(crate) enum Work {
    /// Protocol v1, with a handler made per connection; `name` for the start line.
    Framed {
        name: &'static str,
        new: Arc<dyn NewFramed>,
        /// Whether the handler passes the UCSPI environment on (TCPCONNNUM needs counting).
        environment: bool,
        /// frame-exec: the program run per request, as found on PATH at start (`None` if it
        /// was not), for the rights the sandbox gives its worker.
        runs: Option<Option<PathBuf>>,
    },
    /// The connection itself, to an embedder's handler.
    Stream(Arc<dyn StreamHandler>),
    /// A program serves the connection: started by the isolation model, not run in a worker.
    Program(Arc<program::Prepared>),
}

impl Work {
    /// Whether the handler speaks protocol v1 (and so holds frames of up to `max_frame`).
    pub(crate) fn is_framed(&self) -> bool {
        matches!(self, Work::Framed { .. })
    }

    /// Whether a worker runs a program per request (frame-exec), whose process group must end
    /// with the worker.
    pub(crate) fn runs_programs(&self) -> bool {
        matches!(self, Work::Framed { runs: Some(_), .. })
    }

    /// Who its workers are, for what the sandbox lets them do.
    pub(crate) fn confined(&self) -> Confined<'_> {
        match self {
            Work::Framed {
                runs: Some(program),
                ..
            } => Confined::Programs(program.as_deref()),
            Work::Program(program) => {
                Confined::Programs(program.path_os().ok().map(std::path::Path::new))
            }
            Work::Framed { .. } | Work::Stream(_) => Confined::Handler,
        }
    }

    /// forkd's own handlers; frame-exec's output is bounded by `max_frame`.
    /// An error for a program whose arguments or environment hold a NUL byte.
    pub(crate) fn of(service: &Service, max_frame: u32) -> std::io::Result<Work> {
        Ok(match service {
            Service::Echo => Work::Framed {
                name: "echo",
                new: Arc::new(|_: &Connection| echo::Echo),
                environment: false,
                runs: None,
            },
            Service::Exec(program) => {
                Work::Program(Arc::new(program::Prepared::new(program.clone())?))
            }
            Service::FrameExec(program) => Work::Framed {
                name: "frame-exec",
                new: Arc::new(frame_exec::NewRunner::new(program.clone(), max_frame)),
                environment: true,
                runs: Some(program::locate(program)),
            },
        })
    }

    /// Its name in the start line.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Work::Framed { name, .. } => name,
            Work::Stream(_) => "stream",
            Work::Program(_) => "exec",
        }
    }

    /// Serves `conn` to its end in this process or thread. A program is not served here.
    pub(crate) fn serve(&self, conn: Connection, settings: ProtocolSettings) -> Outcome {
        match self {
            Work::Framed { new, .. } => {
                let mut handler = new.new_handler(&conn);
                session::serve(conn, settings, &mut *handler)
            }
            Work::Stream(handler) => stream::serve(&**handler, conn),
            Work::Program(_) => unreachable!("a program is started, not served in a worker"),
        }
    }

    /// The program to start for connections, for the exec handler.
    pub(crate) fn program(&self) -> Option<&program::Prepared> {
        match self {
            Work::Program(p) => Some(p),
            _ => None,
        }
    }

    /// Whether a program serves the connection: then the exit status is the program's.
    pub(crate) fn is_program(&self) -> bool {
        matches!(self, Work::Program(_))
    }

    /// Whether connections per source must be counted for the environment (TCPCONNNUM).
    pub(crate) fn counts_sources(&self) -> bool {
        matches!(
            self,
            Work::Program(_)
                | Work::Framed {
                    environment: true,
                    ..
                }
        )
    }
}
