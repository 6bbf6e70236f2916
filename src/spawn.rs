//! Starting a program: [`spawn`] with posix_spawn, for the supervisor (the new process shares
//! its parent's memory until it execs, a vfork-style clone, so nothing of the supervisor is
//! copied and the caller waits only until the exec), and [`spawn_tied`], for a program a
//! worker runs per request, which must not outlive that worker.
//!
//! The program gets what a fresh process expects: its own process group, an empty signal
//! mask (the supervisor blocks the signals it reads from its signalfd), default dispositions
//! (SIGPIPE above all, which the supervisor ignores), the descriptors it is given as 0, 1 and 2
//! and nothing else (every descriptor forkd opens is close-on-exec).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::signals::HANDLED;

/// Starts `argv` (its first element found through the PATH of `env`, as execvp would, when
/// it names no directory) with exactly the environment `env` and `stdio` as its descriptors
/// 0, 1 and 2. The error is posix_spawn's: for a program that is not there or cannot be run,
/// the exec's.
pub(crate) fn spawn(
    argv: &[OsString],
    env: &[(OsString, OsString)],
    stdio: [RawFd; 3],
) -> io::Result<Pid> {
    let path = c_string(locate(&argv[0], env)?.as_os_str())?;
    let argv = argv
        .iter()
        .map(|a| c_string(a))
        .collect::<io::Result<Vec<_>>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut entry = k.clone().into_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            CString::new(entry).map_err(|_| nul_error())
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut actions = PosixSpawnFileActions::init()?;
    for (target, fd) in stdio.into_iter().enumerate() {
        actions.add_dup2(fd, target as RawFd)?;
    }
    let pid = posix_spawn(path.as_c_str(), &actions, &fresh_process()?, &argv, &envp)?;
    Ok(pid)
}

/// Own process group, empty mask, default dispositions for SIGPIPE and the handled signals.
fn fresh_process() -> io::Result<PosixSpawnAttr> {
    let mut attributes = PosixSpawnAttr::init()?;
    let mut defaults = SigSet::empty();
    defaults.add(Signal::SIGPIPE);
    HANDLED.iter().for_each(|s| defaults.add(*s));
    attributes.set_pgroup(Pid::from_raw(0))?;
    attributes.set_sigmask(&SigSet::empty())?;
    attributes.set_sigdefault(&defaults)?;
    attributes.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    Ok(attributes)
}

/// Starts `command` (as [`crate::handler::program::Launch::command`] makes it, its stdio
/// set) in a process group of its own, for a program that must end with the thread that
/// starts it: it is killed (SIGKILL, PR_SET_PDEATHSIG) when that thread ends, so a worker killed at
/// `--max-lifetime` or at the end of the grace period takes its program with it. That needs
/// code between fork and exec, hence std's `Command` (which also empties the signal mask and
/// restores SIGPIPE) rather than posix_spawn.
pub(crate) fn spawn_tied(mut command: std::process::Command) -> io::Result<Pid> {
    let parent = std::process::id() as libc::pid_t;
    command.process_group(0);
    // SAFETY: between fork and exec the closure calls only prctl, getppid and kill, which are
    // async-signal-safe, and touches no memory but the copied `parent`.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody will send the signal.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The caller waits for it by pid; dropping `Child` neither waits nor kills.
    Ok(Pid::from_raw(child.id() as libc::pid_t))
}

/// Where `program` is: itself if it names a directory, else the first executable file of
/// that name in the PATH of `env`.
pub(crate) fn locate(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        // What execvp would have said.
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| nul_error())
}

fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "an argument or variable holds a NUL byte",
    )
}
