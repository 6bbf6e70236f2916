//! The exec handler: PROGRAM serves the connection, on its stdin and stdout, with the UCSPI
//! environment, exactly as under tcpserver. No framing: the program owns the protocol. Its
//! stderr is the pipe the supervisor relays into the log.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use super::{Handler, Launch, Outcome};
use crate::cli::Program;
use crate::conn::Connection;

pub struct Exec {
    pub program: Program,
}

/// The whole environment of `program` for a connection with the UCSPI variables `ucspi`:
/// forkd's own (with --env-clear only its PATH), then the UCSPI variables, then --env, each
/// replacing a variable of the same name.
pub fn environment(program: &Program, ucspi: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = if program.env_clear {
        std::env::var_os("PATH")
            .map(|path| ("PATH".into(), path))
            .into_iter()
            .collect()
    } else {
        std::env::vars_os().collect()
    };
    let set = ucspi.iter().chain(&program.env);
    for (key, value) in set.map(|(k, v)| (OsString::from(k), OsString::from(v))) {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    env
}

/// `program` for a connection with the UCSPI variables `ucspi`, its environment as
/// [`environment`] says. Shared by exec and frame-exec.
pub fn launch(program: &Program, ucspi: &[(String, String)]) -> Launch {
    Launch {
        argv: program.argv.clone(),
        env: environment(program, ucspi),
    }
}

impl Handler for Exec {
    /// Becomes the program in this process: for an embedder that forks its own children. forkd
    /// itself starts the program from [`Handler::program_for`].
    fn serve(&self, conn: Connection) -> Outcome {
        let mut cmd = launch(&self.program, &crate::ucspi::environment(&conn)).command();
        let socket = conn.stream.as_raw_fd();
        // The socket becomes stdin and stdout (dup2 clears close-on-exec on the copies).
        for target in [0, 1] {
            if unsafe { libc::dup2(socket, target) } < 0 {
                log::error!(
                    "error peer={} pid={} reason=\"dup2: {}\"",
                    conn.peer,
                    std::process::id(),
                    std::io::Error::last_os_error()
                );
                return Outcome::Failed;
            }
        }
        crate::signals::default_sigpipe();
        let err = cmd.exec();
        log::error!(
            "error peer={} pid={} reason={}",
            conn.peer,
            std::process::id(),
            crate::logging::quote(&format!(
                "cannot run {}: {err}",
                self.program.argv[0].to_string_lossy()
            ))
        );
        Outcome::Failed
    }

    fn execs(&self) -> bool {
        true
    }

    fn program_for(&self, conn: &Connection) -> Option<Launch> {
        Some(launch(&self.program, &crate::ucspi::environment(conn)))
    }
}
