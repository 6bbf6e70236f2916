//! forkd: a process-per-connection server, as a library.
//!
//! A single-threaded supervisor binds the listeners, accepts, decides admission, and starts
//! one worker per connection: a forked process by default, so that a crash, a leak or a hang
//! in one conversation ends with its process while every other connection carries on. The
//! supervisor collects workers as they end, enforces limits, logs one line per event, and on
//! SIGTERM gives running conversations a grace period.
//!
//! Three questions stay apart, as in Python's socketserver: where connections come from
//! ([`Config::listen`], inetd, systemd socket activation), what is done with one (a
//! [`FramedHandler`] or a [`StreamHandler`]), and how it is isolated ([`Model`]).
//!
//! A server in ten lines (see `examples/uppercase.rs` and docs/library.md):
//!
//! ```no_run
//! use forkd::{FramedHandler, Reply, Server};
//!
//! struct Upper;
//!
//! impl FramedHandler for Upper {
//!     fn request(&mut self, payload: &[u8], reply: Reply<'_>) {
//!         reply.data(&payload.to_ascii_uppercase());
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     Server::new().listen("127.0.0.1:7000".parse()?).framed(|_: &forkd::Connection| Upper).serve()?;
//!     Ok(())
//! }
//! ```
//!
//! The wire format is protocol v1 ([`frame`]); [`client`] speaks it from the other end.

#![warn(missing_docs)]

pub mod addr;
pub mod client;
pub mod config;
pub mod frame;

mod activation;
mod admission;
mod cidr;
mod conn;
mod drain;
mod early_drop;
mod fds;
mod handler;
mod isolation;
mod listen;
mod logging;
mod notify;
mod penalty;
mod pidfile;
mod privilege;
mod proxy;
mod raw;
mod relay;
mod sandbox;
mod server;
mod signals;
mod spawn;
mod supervisor;
mod ucspi;
mod upgrade;

pub use activation::protect_inetd_stderr;
pub use addr::Addr;
pub use config::{Config, Model, Sandbox, Service};
pub use conn::{Connection, Peer, Proxied, Stream};
pub use handler::{FramedHandler, NewFramed, Payload, Reply, StreamHandler};
pub use isolation::arena::WorkerAllocator;
pub use logging::stderr_is_journal;
pub use server::{Error, Server};
pub use supervisor::CHECK_ENV as UPGRADE_CHECK_ENV;
pub use upgrade::STATE_VERSION as UPGRADE_STATE_VERSION;
