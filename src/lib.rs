//! forkd: a process-per-connection server.
//!
//! A single-threaded supervisor ([`supervisor`]) binds the listeners ([`listen`]), forks one
//! child per accepted connection ([`child`]), and the child runs a [`handler`] that speaks
//! protocol v1 ([`frame`]). The supervisor never reads or writes client data itself.
//! Three questions stay apart: where connections come from (`listen`), what is done with one
//! (`handler`), and how it is isolated (`child`: a forked process).

pub mod activation;
pub mod addr;
pub mod admission;
pub mod bench;
pub mod child;
pub mod cli;
pub mod client;
pub mod conn;
pub mod drain;
pub mod fds;
pub mod forkc_cli;
pub mod frame;
pub mod handler;
pub mod listen;
pub mod logging;
pub mod model;
pub mod notify;
pub mod pidfile;
pub mod privilege;
pub mod relay;
pub mod signals;
pub mod spawn;
pub mod supervisor;
pub mod ucspi;
