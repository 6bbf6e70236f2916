//! The stream handler API: the connection itself, as Python's `BaseRequestHandler` gets it.

use std::io;

use super::Outcome;
use crate::conn::Connection;
use crate::logging::quote;

/// Serves a whole connection: reads, writes, and returns when the conversation is over. The
/// connection is closed when it returns. One value serves every connection (under the thread
/// model, from many threads at once), so per-connection state lives in `handle`'s locals.
///
/// Implemented for every `Fn(&mut Connection) -> io::Result<()>` closure.
///
/// ```
/// use std::io::Write;
/// use forkd::{Connection, StreamHandler};
///
/// /// Greets the client by address and closes.
/// struct Hello;
///
/// impl StreamHandler for Hello {
///     fn handle(&self, conn: &mut Connection) -> std::io::Result<()> {
///         let greeting = format!("hello, {}\r\n", conn.peer());
///         conn.write_all(greeting.as_bytes())
///     }
/// }
/// ```
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves `conn`. An error is logged (`error peer=… reason=…`) and the worker ends with
    /// status 1; `Ok` ends it with status 0.
    fn handle(&self, conn: &mut Connection) -> io::Result<()>;
}

impl<F> StreamHandler for F
where
    F: Fn(&mut Connection) -> io::Result<()> + Send + Sync + 'static,
{
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        self(conn)
    }
}

/// Runs `handler` on `conn` and logs how it failed, if it did.
pub(crate) fn serve(handler: &dyn StreamHandler, mut conn: Connection) -> Outcome {
    match handler.handle(&mut conn) {
        Ok(()) => Outcome::Clean,
        Err(e) => {
            log::warn!(
                "error peer={} pid={} reason={}",
                conn.who(),
                std::process::id(),
                quote(&e.to_string())
            );
            Outcome::Failed
        }
    }
}
