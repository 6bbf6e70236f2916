//! Programs forkd runs: one per connection (the exec handler: PROGRAM serves the connection on
//! its stdin and stdout, with the UCSPI environment, exactly as under tcpserver; no framing)
//! or one per request (frame-exec). This module builds what such a program is started with;
//! [`crate::spawn`] starts it.

use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;

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

/// Where `program` is, as its environment's PATH finds it now; `None` if it is not there.
pub(crate) fn locate(program: &Program) -> Option<std::path::PathBuf> {
    crate::spawn::locate(&program.argv[0], &environment(program, &[])).ok()
}

/// `program` for a connection with the UCSPI variables `ucspi`, its environment as
/// [`environment`] says. Shared by exec and frame-exec.
pub(crate) fn launch(program: &Program, ucspi: &[(String, String)]) -> Launch {
    Launch {
        argv: program.argv.clone(),
        env: environment(program, ucspi),
    }
}

/// The exec handler's program, prepared once for every connection: found on PATH, its
/// arguments and the environment entries that do not change from one connection to the
/// next, already in the form exec takes. A connection adds only its UCSPI variables.
pub(crate) struct Prepared {
    pub(crate) program: Program,
    /// Where the program is; `None` if it was not found at start (each start then says so).
    path: Option<CString>,
    argv: Vec<CString>,
    /// `KEY=value` entries of forkd's environment (PATH alone with --env-clear), with the
    /// key, minus those --env replaces.
    inherited: Vec<(OsString, CString)>,
    /// --env's entries, with their keys: they replace UCSPI variables too.
    set: Vec<(OsString, CString)>,
}

impl Prepared {
    /// `program` prepared; an argument or variable holding a NUL byte is an error.
    pub(crate) fn new(program: Program) -> std::io::Result<Prepared> {
        let env = environment(&program, &[]);
        let path = locate(&program)
            .map(|p| c_string(p.as_os_str().as_bytes()))
            .transpose()?;
        let argv = program
            .argv
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<std::io::Result<_>>()?;
        let set: Vec<(OsString, CString)> = program
            .env
            .iter()
            .map(|(k, v)| Ok((OsString::from(k), entry(k.as_bytes(), v.as_bytes())?)))
            .collect::<std::io::Result<_>>()?;
        let inherited = env
            .iter()
            .filter(|(k, _)| !set.iter().any(|(key, _)| key == k))
            .map(|(k, v)| Ok((k.clone(), entry(k.as_bytes(), v.as_bytes())?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Prepared {
            program,
            path,
            argv,
            inherited,
            set,
        })
    }

    /// The program's name, for messages.
    pub(crate) fn name(&self) -> String {
        self.program.argv[0].to_string_lossy().into_owned()
    }

    /// Where the program is, or why it cannot be started.
    pub(crate) fn path(&self) -> std::io::Result<&CStr> {
        // What execvp would have said.
        self.path
            .as_deref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
    }

    /// [`Prepared::path`] as a path.
    pub(crate) fn path_os(&self) -> std::io::Result<&std::ffi::OsStr> {
        Ok(std::ffi::OsStr::from_bytes(self.path()?.to_bytes()))
    }

    pub(crate) fn argv(&self) -> Vec<&CStr> {
        self.argv.iter().map(CString::as_c_str).collect()
    }

    /// The UCSPI variables `ucspi` as entries (those --env replaces left out).
    pub(crate) fn connection_entries(
        &self,
        ucspi: &[(String, String)],
    ) -> std::io::Result<Vec<CString>> {
        ucspi
            .iter()
            .filter(|(k, _)| !self.set.iter().any(|(key, _)| key == k.as_str()))
            .map(|(k, v)| entry(k.as_bytes(), v.as_bytes()))
            .collect()
    }

    /// The whole environment for a connection whose UCSPI entries are `conn`: forkd's
    /// (without the variables the connection or --env replace), the connection's, --env's.
    pub(crate) fn envp<'a>(
        &'a self,
        ucspi: &[(String, String)],
        conn: &'a [CString],
    ) -> Vec<&'a CStr> {
        self.inherited
            .iter()
            .filter(|(k, _)| !ucspi.iter().any(|(key, _)| k == key.as_str()))
            .map(|(_, e)| e.as_c_str())
            .chain(conn.iter().map(CString::as_c_str))
            .chain(self.set.iter().map(|(_, e)| e.as_c_str()))
            .collect()
    }
}

fn entry(key: &[u8], value: &[u8]) -> std::io::Result<CString> {
    let mut bytes = Vec::with_capacity(key.len() + 1 + value.len());
    bytes.extend_from_slice(key);
    bytes.push(b'=');
    bytes.extend_from_slice(value);
    c_string(&bytes)
}

fn c_string(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument or variable holds a NUL byte",
        )
    })
}
