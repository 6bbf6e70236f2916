//! The exec handler: the child becomes PROGRAM, with the connection on stdin and stdout and
//! the UCSPI environment, exactly as under tcpserver. No framing: the program owns the
//! protocol. Its stderr is the pipe the supervisor relays into the log.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::{Handler, Outcome};
use crate::cli::Program;
use crate::conn::Connection;

pub struct Exec {
    pub program: Program,
}

/// The command for `program` with a connection's UCSPI variables (`ucspi`): with --env-clear
/// an empty environment but PATH, then the UCSPI variables, then --env (which may override
/// them). Shared by exec and frame-exec.
pub fn command(program: &Program, ucspi: &[(String, String)]) -> Command {
    let mut cmd = Command::new(&program.argv[0]);
    cmd.args(&program.argv[1..]);
    if program.env_clear {
        let path = std::env::var_os("PATH");
        cmd.env_clear();
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
    }
    cmd.envs(ucspi.iter().map(|(k, v)| (k, v)));
    cmd.envs(program.env.iter().map(|(k, v)| (k, v)));
    cmd
}

impl Handler for Exec {
    fn serve(&self, conn: Connection) -> Outcome {
        let mut cmd = command(&self.program, &crate::ucspi::environment(&conn));
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
        // SIG_IGN survives exec: give the program the default SIGPIPE a fresh process has.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
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
}
