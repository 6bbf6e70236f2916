//! Programs forkd runs: one per connection (the exec handler: PROGRAM serves the connection on
//! its stdin and stdout, with the UCSPI environment, exactly as under tcpserver; no framing)
//! or one per request (frame-exec). This module builds what such a program is started with;
//! [`crate::spawn`] starts it.

use std::ffi::OsString;

use crate::config::Program;

/// A program to run for a connection: its arguments (the first names it, as for execvp) and
/// its whole environment.
pub(crate) struct Launch {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// The program as a `Command`, with exactly this environment.
    pub fn command(self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).env_clear().envs(self.env);
        cmd
    }
}

/// The whole environment of `program` for a connection with the UCSPI variables `ucspi`:
/// forkd's own (with --env-clear only its PATH), then the UCSPI variables, then --env, each
/// replacing a variable of the same name.
fn environment(program: &Program, ucspi: &[(String, String)]) -> Vec<(OsString, OsString)> {
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
pub(crate) fn launch(program: &Program, ucspi: &[(String, String)]) -> Launch {
    Launch {
        argv: program.argv.clone(),
        env: environment(program, ucspi),
    }
}
