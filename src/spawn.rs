//! Starting a program: [`start`], for the supervisor, with a vfork-style clone (the new
//! process shares its parent's memory until it execs, so nothing of the supervisor is copied
//! and the caller waits only until the exec; posix_spawn where there is no clone), and
//! [`spawn_tied`], for a program a worker runs per request, which must not outlive that
//! worker.
//!
//! The program gets what a fresh process expects: its own process group, an empty signal
//! mask (the supervisor blocks the signals it reads from its signalfd), default dispositions
//! (SIGPIPE above all, which the supervisor ignores), the descriptors it is given as 0, 1 and 2
//! and nothing else (every descriptor forkd opens is close-on-exec).

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::ffi::CStr;
use std::ffi::{OsStr, OsString};
use std::io;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use crate::signals::HANDLED;

/// Starts the program at `path` with the arguments `argv` and exactly the environment
/// `envp` (`KEY=value` entries), `stdio` as its descriptors 0, 1 and 2, confined by
/// `sandbox` if given. The error is the exec's for a program that is not there or cannot be
/// run.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use vfork::start;

/// The program started by a vfork-style clone of our own rather than glibc's posix_spawn,
/// whose child sets every one of the 64 signal dispositions (two system calls each, whatever
/// the attributes say) before the exec: about 40 µs per program on the machine measured in
/// docs/performance.md. Dispositions that are not the default in forkd are known (SIGPIPE
/// ignored, the fault handlers for SIGSEGV and SIGBUS, and the handled signals where they
/// have handlers), so the child resets just those.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod vfork {
    use std::ffi::CStr;
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicI32, Ordering};

    use nix::errno::Errno;
    use nix::unistd::Pid;

    use crate::sandbox::Prepared;
    use crate::signals::HANDLED;

    /// The child's own stack; it only makes system calls, so a small one will do.
    const STACK: usize = 32 * 1024;

    /// What the child needs, prepared by the parent: it must not allocate.
    struct Plan<'a> {
        path: *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        stdio: [RawFd; 3],
        /// Signals whose disposition the child sets back to the default.
        reset: [libc::c_int; 3 + HANDLED.len()],
        /// The errno of the step that failed, written by the child before it exits.
        error: AtomicI32,
        sandbox: Option<&'a Prepared>,
    }

    pub(crate) fn start(
        path: &CStr,
        argv: &[&CStr],
        envp: &[&CStr],
        stdio: [RawFd; 3],
        sandbox: Option<&Prepared>,
    ) -> io::Result<Pid> {
        let argv_ptrs = super::null_terminated(argv);
        let envp_ptrs = super::null_terminated(envp);
        let mut reset = [libc::SIGPIPE; 3 + HANDLED.len()];
        reset[1] = libc::SIGSEGV;
        reset[2] = libc::SIGBUS;
        for (slot, signal) in reset[3..].iter_mut().zip(HANDLED) {
            *slot = signal as libc::c_int;
        }
        let plan = Plan {
            path: path.as_ptr(),
            argv: argv_ptrs.as_ptr(),
            envp: envp_ptrs.as_ptr(),
            stdio,
            reset,
            error: AtomicI32::new(0),
            sandbox,
        };
        let mut stack = Vec::<u8>::with_capacity(STACK);
        // The stack grows down from its end, which must be 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + STACK) & !15;

        // No signal may run a handler of ours in the child, which shares our memory: all are
        // blocked across the clone, and the child unblocks them only after resetting the
        // dispositions that have handlers.
        let mut saved = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset fills the set it is given; pthread_sigmask reads `all` and writes
        // the previous mask into `saved`, which is read only after that.
        let saved = unsafe {
            let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigfillset(all.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), saved.as_mut_ptr());
            saved.assume_init()
        };
        let arg = &plan as *const Plan as *mut libc::c_void;
        // A supervisor under its workers' seccomp filter spawns through its gate.
        // SAFETY: CLONE_VFORK suspends this thread until the child exec'd or exited, so
        // `plan`, the arguments and the stack outlive the child's use of them; the child runs
        // only `child`, which makes system calls and writes nothing but `plan.error`.
        let gated = unsafe { crate::sandbox::spawn_through_gate(child, top as *mut u8, arg) };
        let pid = match gated {
            Some(result) if result < 0 => {
                Errno::from_raw(-result as i32).set();
                -1
            }
            Some(pid) => pid as libc::pid_t,
            // SAFETY: the same vfork-style clone without the gate: CLONE_VFORK suspends this
            // thread until the child exec'd or exited, so `plan`, the arguments and the stack
            // outlive the child's use of them; the child runs only `child`, which makes system
            // calls and writes nothing but `plan.error`.
            None => unsafe {
                libc::clone(
                    child,
                    top as *mut libc::c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    arg,
                )
            },
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
        drop(stack);
        if pid < 0 {
            return Err(clone_error);
        }
        let pid = Pid::from_raw(pid);
        match plan.error.load(Ordering::Acquire) {
            0 => Ok(pid),
            errno => {
                // The child has exited already (it failed before its exec): collect it.
                let _ = nix::sys::wait::waitpid(pid, None);
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }

    /// The child, on its own stack in the parent's memory: own process group, the stdio
    /// descriptors, default dispositions, an empty mask, exec. Nothing here allocates or
    /// takes a lock.
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the parent's `plan`, alive while the parent is suspended.
        let plan = unsafe { &*(arg as *const Plan) };
        let fail = |plan: &Plan| -> ! {
            plan.error.store(
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
                Ordering::Release,
            );
            // SAFETY: _exit runs nothing of the parent's (no atexit handler, no flush).
            unsafe { libc::_exit(127) }
        };
        // SAFETY: every call below is a system call on this process's own descriptors,
        // dispositions and mask, with arguments prepared by the parent.
        unsafe {
            if libc::setpgid(0, 0) != 0 {
                fail(plan);
            }
            // A source below 3 could be overwritten by an earlier dup2: move it up first.
            let mut stdio = plan.stdio;
            for fd in stdio.iter_mut() {
                if *fd < 3 {
                    *fd = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
                    if *fd < 0 {
                        fail(plan);
                    }
                }
            }
            // dup2 onto another number leaves the copy without close-on-exec.
            for (target, fd) in stdio.into_iter().enumerate() {
                if libc::dup2(fd, target as libc::c_int) < 0 {
                    fail(plan);
                }
            }
            for signal in plan.reset {
                libc::signal(signal, libc::SIG_DFL);
            }
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Last: the sandbox makes system calls only, and the steps above need none of it.
            if let Some(Err((_, errno))) = plan.sandbox.map(Prepared::apply) {
                errno.set();
                fail(plan);
            }
            let args = [
                plan.path as usize,
                plan.argv as usize,
                plan.envp as usize,
                0,
                0,
            ];
            match crate::sandbox::through_gate(libc::SYS_execve, args) {
                Some(error) => Errno::from_raw(-error as i32).set(),
                None => {
                    libc::execve(plan.path, plan.argv, plan.envp);
                }
            }
        }
        fail(plan)
    }
}

/// The pointers of `strings` and a null after them: an argv or envp for exec.
pub(crate) fn null_terminated<S: AsRef<std::ffi::CStr>>(strings: &[S]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ref().as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn start(
    path: &CStr,
    argv: &[&CStr],
    envp: &[&CStr],
    stdio: [RawFd; 3],
    sandbox: Option<&crate::sandbox::Prepared>,
) -> io::Result<Pid> {
    if sandbox.is_some() {
        // The sandbox needs code between fork and exec, which posix_spawn has no room for;
        // and there is no Landlock or seccomp outside Linux.
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let mut actions = PosixSpawnFileActions::init()?;
    for (target, fd) in stdio.into_iter().enumerate() {
        actions.add_dup2(fd, target as RawFd)?;
    }
    Ok(posix_spawn(path, &actions, &fresh_process()?, argv, envp)?)
}

/// Own process group, empty mask, default dispositions for SIGPIPE and the handled signals.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
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
