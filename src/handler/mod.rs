//! Handlers: what a child does with one connection. A handler knows nothing of fork, the
//! supervisor or the listeners; it gets a [`Connection`] and reports how the conversation
//! ended.

pub mod echo;
pub mod fault;
pub mod framed;

use crate::conn::Connection;

/// How a conversation ended; the child's exit status says it to the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer finished at a frame boundary and got every reply.
    Clean,
    /// A protocol or I/O error ended it; the child has logged why.
    Failed,
}

/// Serves one connection.
pub trait Handler {
    fn serve(&self, conn: Connection) -> Outcome;
}

/// The handlers `--handler` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerName {
    /// Answers DATA with the same DATA, PING with PONG.
    Echo,
    /// Echo that commits a fault on request (panic, abort, stack overflow, spin, leak): for
    /// tests and benchmarks only, so it stays out of --help.
    #[value(hide = true)]
    Fault,
}

impl HandlerName {
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerName::Echo => "echo",
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

/// The handler a name stands for.
pub fn build(name: HandlerName, settings: ProtocolSettings) -> Box<dyn Handler> {
    match name {
        HandlerName::Echo => Box::new(echo::Echo { settings }),
        HandlerName::Fault => Box::new(fault::Fault { settings }),
    }
}
