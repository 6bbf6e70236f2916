//! Starting a program with posix_spawn: the new process shares its parent's memory until it
//! execs (a vfork-style clone), so nothing of the supervisor is copied, and the caller waits
//! only until the exec. Every program forkd starts, from either isolation model, starts here
//! or with the same state (see `child::spawn_program` for the forking path with limits).
//!
//! The program gets what a fresh process expects: its own process group, an empty signal
//! mask (the supervisor blocks the signals it reads from its signalfd), default dispositions
//! (SIGPIPE above all, which the supervisor ignores), the descriptors it is given as 0, 1 and 2
//! and nothing else (every descriptor forkd opens is close-on-exec).
//! Rust's `Command` would leave the supervisor's signal mask in place, hence this module.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

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
    let path = locate(&argv[0], env)?;
    let path = c_string(path.as_os_str())?;
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
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);

    let actions = FileActions::new()?;
    for (target, fd) in stdio.into_iter().enumerate() {
        let target = target as libc::c_int;
        check(unsafe { libc::posix_spawn_file_actions_adddup2(actions.ptr(), fd, target) })?;
    }
    let attributes = Attributes::new()?;
    let mut pid: libc::pid_t = 0;
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            actions.ptr(),
            attributes.ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    })?;
    Ok(Pid::from_raw(pid))
}

/// Where `program` is: itself if it names a directory, else the first executable file of
/// that name in the PATH of `env`.
fn locate(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
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

fn is_executable(path: &Path) -> bool {
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

fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// posix_spawn's functions return the error number instead of setting errno.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

struct FileActions(Box<MaybeUninit<libc::posix_spawn_file_actions_t>>);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        let mut actions = Box::new(MaybeUninit::uninit());
        check(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
        Ok(FileActions(actions))
    }

    fn ptr(&self) -> *mut libc::posix_spawn_file_actions_t {
        self.0.as_ptr().cast_mut()
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        unsafe { libc::posix_spawn_file_actions_destroy(self.ptr()) };
    }
}

/// Own process group, empty mask, default dispositions for SIGPIPE and the handled signals.
struct Attributes(Box<MaybeUninit<libc::posix_spawnattr_t>>);

impl Attributes {
    fn new() -> io::Result<Attributes> {
        let mut attributes = Box::new(MaybeUninit::uninit());
        check(unsafe { libc::posix_spawnattr_init(attributes.as_mut_ptr()) })?;
        let attributes = Attributes(attributes);
        let mut defaults = nix::sys::signal::SigSet::empty();
        defaults.add(nix::sys::signal::Signal::SIGPIPE);
        HANDLED.iter().for_each(|s| defaults.add(*s));
        let empty = nix::sys::signal::SigSet::empty();
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        unsafe {
            check(libc::posix_spawnattr_setpgroup(attributes.ptr(), 0))?;
            check(libc::posix_spawnattr_setsigmask(
                attributes.ptr(),
                empty.as_ref(),
            ))?;
            check(libc::posix_spawnattr_setsigdefault(
                attributes.ptr(),
                defaults.as_ref(),
            ))?;
            check(libc::posix_spawnattr_setflags(
                attributes.ptr(),
                flags as libc::c_short,
            ))?;
        }
        Ok(attributes)
    }

    fn ptr(&self) -> *mut libc::posix_spawnattr_t {
        self.0.as_ptr().cast_mut()
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        unsafe { libc::posix_spawnattr_destroy(self.ptr()) };
    }
}
