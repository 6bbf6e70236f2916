//! The sandbox of each connection (`--sandbox`): what a conversation taken over by an attacker
//! can still reach.
//!
//! A worker that serves its connection in-process (echo, an embedder's handler) gets, after
//! the fork and before the first byte from its client:
//!
//! 1. no_new_privs (nothing it execs can gain privileges);
//! 2. a Landlock domain ([`landlock`]): every filesystem access the kernel mediates denied
//!    but for the declared paths, every TCP bind and connect denied, and no signal or
//!    abstract Unix socket reaching outside its own domain (the supervisor, the other
//!    workers);
//! 3. a seccomp filter ([`seccomp`]): the system calls a protocol session needs, and the rest
//!    refused with EPERM and named once in the log ([`trap`]); calls that change credentials
//!    kill the worker instead, since code that ignores a failed setuid carries on with the
//!    privileges it meant to drop.
//!
//! A program (`-- PROGRAM`, and the programs of frame-exec, whose worker is confined as they
//! are) gets the first two, plus read and execute rights on itself, its `#!` interpreter and
//! the dynamic loader they name, and read rights on the library directories. No seccomp: what
//! a program needs is not known.
//!
//! Everything is prepared once, in the supervisor at start ([`Prepared::new`]: the ruleset's
//! descriptor, the compiled filters); each child applies it with a handful of system calls
//! that allocate nothing ([`Prepared::apply`]), so that a vfork-style child can too.

#[cfg(target_os = "linux")]
mod capabilities;
#[cfg(target_os = "linux")]
pub(crate) mod gate;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
mod trap;

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Makes system call `nr` through the gate when this process is a supervisor under its
/// workers' filter ([`gate`]): the raw result. `None` otherwise: make the call as usual.
///
/// # Safety
///
/// As for the system call itself: pointers among `args` must be what it expects.
pub(crate) unsafe fn through_gate(nr: libc::c_long, args: [usize; 5]) -> Option<isize> {
    #[cfg(target_os = "linux")]
    if gate::armed() {
        // SAFETY: the caller vouches for the call.
        return Some(unsafe { gate::call(nr, args) });
    }
    let _ = (nr, args);
    None
}

/// Starts a process sharing this one's memory until it execs, through the gate where this
/// process is a supervisor under its workers' filter ([`gate::spawn_sharing_memory`]): the
/// raw result. `None` otherwise: clone as usual.
///
/// # Safety
///
/// As [`gate::spawn_sharing_memory`].
pub(crate) unsafe fn spawn_through_gate(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack_top: *mut u8,
    arg: *mut libc::c_void,
) -> Option<isize> {
    #[cfg(target_os = "linux")]
    if gate::armed() {
        // SAFETY: the caller vouches for the stack, the function and its argument.
        return Some(unsafe { gate::spawn_sharing_memory(child, stack_top, arg) });
    }
    let _ = (child, stack_top, arg);
    None
}

/// Whether this process runs under its workers' filter, with the gate's secret.
pub(crate) fn filters_this_process() -> bool {
    #[cfg(target_os = "linux")]
    return gate::armed() && gate::filtered();
    #[cfg(not(target_os = "linux"))]
    false
}

/// For an image this supervisor execs (an upgrade, its check) under its workers' filter: a
/// descriptor holding the secret, to be closed once the exec is done, and the environment
/// entry naming it ([`gate::hand_down`]). `None` where there is no such filter.
pub(crate) fn hand_down() -> Option<(OwnedFd, std::ffi::CString)> {
    #[cfg(target_os = "linux")]
    return gate::hand_down();
    #[cfg(not(target_os = "linux"))]
    None
}

/// Whether this image runs under the seccomp filter of the supervisor image that exec'd it
/// (an upgrade in place, its check), whose SIGSYS handler it installed before `main`.
pub(crate) fn under_predecessors_filter() -> bool {
    #[cfg(target_os = "linux")]
    return gate::inherited_across_exec();
    #[cfg(not(target_os = "linux"))]
    false
}

/// The metadata of `path` (of a symbolic link itself unless `follow`), from a descriptor
/// opened for it (`O_PATH`) rather than by path: under the workers' seccomp filter, which
/// answers a path's stat with EACCES, the supervisor's `O_PATH` open is trapped and made
/// again through the gate. For the supervisor's own checks (its pidfile, a stale socket
/// file, the sandbox's paths at a reload).
pub(crate) fn path_metadata(path: &Path, follow: bool) -> std::io::Result<std::fs::Metadata> {
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | nofollow)
        .open(path)?
        .metadata()
}

/// What `--sandbox` asks of each worker; see the module documentation of what it confines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Refuse to start where a part of the sandbox is missing (`--sandbox=required`), rather
    /// than apply what the kernel offers and say what is missing.
    pub required: bool,
    /// Files and directories (and what is beneath them) the worker may read, list and run.
    pub read: Vec<PathBuf>,
    /// Files and directories the worker may also write, create in and remove from (not
    /// execute: what it writes, it cannot run).
    pub write: Vec<PathBuf>,
}

impl Sandbox {
    /// A sandbox with no path open to the worker, applied as far as the kernel allows.
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// Refuse to serve where any part is missing.
    pub fn required(mut self) -> Sandbox {
        self.required = true;
        self
    }

    /// Lets the worker read `path` (and everything beneath a directory).
    pub fn read(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read.push(path.into());
        self
    }

    /// Lets the worker read and write `path` (and everything beneath a directory).
    pub fn write(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.write.push(path.into());
        self
    }

    /// Whether it can be applied here as asked: every declared path is there, and with
    /// `required` every part is available. `in_process`: whether workers serve in-process
    /// (and so get seccomp too).
    pub(crate) fn check(&self, in_process: bool) -> Result<(), String> {
        self.check_with(Support::probe(), in_process)
    }

    /// [`Sandbox::check`] against what was found already.
    fn check_with(&self, support: Support, in_process: bool) -> Result<(), String> {
        for (flag, paths) in [
            ("--sandbox-read", &self.read),
            ("--sandbox-write", &self.write),
        ] {
            for path in paths {
                if let Err(e) = path_metadata(path, true) {
                    return Err(format!("{flag} {}: {e}", path.display()));
                }
            }
        }
        let missing = support.missing(in_process);
        if self.required && !missing.is_empty() {
            return Err(format!(
                "--sandbox=required: this system lacks {}",
                missing.join(", ")
            ));
        }
        Ok(())
    }
}

/// Who the workers are, for what they are allowed.
pub(crate) enum Confined<'a> {
    /// Workers serving in-process: Landlock and seccomp.
    Handler,
    /// Programs (and the frame-exec workers that start them): Landlock, with the rights
    /// `program` needs to be executed; `None` for a program not found at start.
    Programs(Option<&'a Path>),
}

/// The parts of the sandbox and the kernel each needs, in the order the start line names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    NoNewPrivs,
    LandlockFiles,
    LandlockTcp,
    LandlockScopes,
    /// Connecting to a Unix socket by path; for programs (a handler cannot make a socket).
    LandlockUnix,
    /// The allow list, for handlers.
    Seccomp,
    /// The guard against reaching other processes' limits and scheduling, for programs.
    SeccompGuard,
}

impl Part {
    const ALL: [Part; 7] = [
        Part::NoNewPrivs,
        Part::LandlockFiles,
        Part::LandlockTcp,
        Part::LandlockScopes,
        Part::LandlockUnix,
        Part::Seccomp,
        Part::SeccompGuard,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::NoNewPrivs => "no_new_privs",
            Part::LandlockFiles => "landlock-files",
            Part::LandlockTcp => "landlock-tcp",
            Part::LandlockScopes => "landlock-scopes",
            Part::LandlockUnix => "landlock-unix",
            Part::Seccomp => "seccomp",
            Part::SeccompGuard => "seccomp-guard",
        }
    }

    /// What a kernel needs for it, when it lacks it.
    fn needs(self) -> &'static str {
        match self {
            Part::NoNewPrivs => "Linux",
            Part::LandlockFiles => "Landlock, Linux 5.13",
            Part::LandlockTcp => "Landlock ABI 4, Linux 6.7",
            Part::LandlockScopes => "Landlock ABI 6, Linux 6.12",
            Part::LandlockUnix => "Landlock ABI 9, Linux 7.1",
            Part::Seccomp | Part::SeccompGuard => "seccomp filters",
        }
    }

    /// Whether it applies to workers serving in-process (`true`) or to programs.
    fn applies(self, in_process: bool) -> bool {
        match self {
            Part::Seccomp => in_process,
            Part::LandlockUnix | Part::SeccompGuard => !in_process,
            _ => true,
        }
    }
}

/// What this kernel offers, found once at start.
#[derive(Clone, Copy, Debug)]
struct Support {
    /// The Landlock ABI version; 0 without Landlock.
    landlock_abi: i32,
    /// seccomp filters with the actions the filters use.
    seccomp: bool,
    /// Whether a probe was refused with EPERM: a seccomp filter forkd itself runs under
    /// (systemd's SystemCallFilter=, say) hides what the kernel has.
    refused: bool,
}

impl Support {
    #[cfg(target_os = "linux")]
    fn probe() -> Support {
        let landlock_abi = landlock::abi();
        let landlock_refused =
            landlock_abi == 0 && nix::errno::Errno::last() == nix::errno::Errno::EPERM;
        let seccomp = seccomp::available();
        let seccomp_refused = !seccomp && nix::errno::Errno::last() == nix::errno::Errno::EPERM;
        Support {
            landlock_abi,
            seccomp,
            refused: landlock_refused || seccomp_refused,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn probe() -> Support {
        Support {
            landlock_abi: 0,
            seccomp: false,
            refused: false,
        }
    }

    fn has(self, part: Part) -> bool {
        match part {
            Part::NoNewPrivs => cfg!(target_os = "linux"),
            Part::LandlockFiles => self.landlock_abi >= 1,
            Part::LandlockTcp => self.landlock_abi >= 4,
            Part::LandlockScopes => self.landlock_abi >= 6,
            Part::LandlockUnix => self.landlock_abi >= 9,
            Part::Seccomp | Part::SeccompGuard => self.seccomp,
        }
    }

    /// The parts that apply to these workers.
    fn parts(in_process: bool) -> impl Iterator<Item = Part> {
        Part::ALL.into_iter().filter(move |p| p.applies(in_process))
    }

    /// The parts that apply and this kernel lacks, each with what it needs.
    fn missing(self, in_process: bool) -> Vec<String> {
        let mut missing: Vec<String> = Support::parts(in_process)
            .filter(|p| !self.has(*p))
            .map(|p| format!("{} ({})", p.name(), p.needs()))
            .collect();
        if self.refused {
            missing.push(
                "and a seccomp filter forkd runs under refuses seccomp or landlock calls \
                 (under systemd: allow them in SystemCallFilter=)"
                    .into(),
            );
        }
        missing
    }
}

/// A sandbox ready to be applied in each new worker.
pub(crate) struct Prepared {
    /// The Landlock ruleset (close-on-exec); `None` where the kernel has no Landlock.
    ruleset: Option<OwnedFd>,
    /// The seccomp filter: the allow list for handlers, the guard for programs.
    #[cfg(target_os = "linux")]
    filter: Option<seccomp::Filter>,
    /// The allow list with the supervisor's gate, for [`Prepared::confine_supervisor`]; taken
    /// (and erased) when installed.
    #[cfg(target_os = "linux")]
    supervisor_filter: std::sync::Mutex<Option<seccomp::Filter>>,
    /// Whether the supervisor holds capabilities (root, say) that a worker must give up.
    drop_capabilities: bool,
    /// What the kernel offered, and to whom, for the start line.
    support: Support,
    in_process: bool,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prepared({self})")
    }
}

/// The start line's fields: `for=handler applied="..."` and, if any, `missing="..."`.
impl fmt::Display for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let applied: Vec<&str> = Support::parts(self.in_process)
            .filter(|p| self.support.has(*p))
            .map(Part::name)
            .collect();
        write!(
            f,
            "for={} applied={}",
            if self.in_process {
                "handler"
            } else {
                "programs"
            },
            crate::logging::quote(&applied.join(" "))
        )?;
        let missing = self.support.missing(self.in_process);
        if !missing.is_empty() {
            write!(f, " missing={}", crate::logging::quote(&missing.join(", ")))?;
        }
        Ok(())
    }
}

impl Prepared {
    /// Builds the ruleset and the filters for `who`, in the supervisor at start. With seccomp,
    /// installs the handler that turns a refused call into EPERM and a log line, in this
    /// process, so that every worker forked from it has it.
    pub(crate) fn new(sandbox: &Sandbox, who: Confined<'_>) -> Result<Prepared, String> {
        let in_process = matches!(who, Confined::Handler);
        let support = Support::probe();
        sandbox.check_with(support, in_process)?;
        #[cfg(target_os = "linux")]
        {
            let ruleset = if support.landlock_abi >= 1 {
                let exec = match who {
                    Confined::Programs(program) => landlock::needed_to_exec(program),
                    Confined::Handler => landlock::Exec::default(),
                };
                Some(landlock::ruleset(&sandbox.read, &sandbox.write, &exec)?)
            } else {
                None
            };
            let filter = match (support.seccomp, in_process) {
                (false, _) => None,
                (true, true) => {
                    trap::install()?;
                    Some(seccomp::filter(false)?)
                }
                (true, false) => Some(seccomp::guard()?),
            };
            let supervisor_filter = match (support.seccomp && gate::AVAILABLE, in_process) {
                (true, true) => Some(seccomp::filter(true)?),
                _ => None,
            };
            Ok(Prepared {
                ruleset,
                filter,
                supervisor_filter: std::sync::Mutex::new(supervisor_filter),
                drop_capabilities: capabilities::held(),
                support,
                in_process,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = who;
            Ok(Prepared {
                ruleset: None,
                drop_capabilities: false,
                support,
                in_process,
            })
        }
    }

    /// The ruleset's descriptor, which a forked worker closes once confined: the supervisor
    /// goes on restricting new workers with it, and rules a worker added (seccomp or not, a
    /// program's worker has none) would reach them. A program loses it at exec.
    pub(crate) fn ruleset_fd(&self) -> Option<std::os::fd::RawFd> {
        self.ruleset.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether a part the kernel offers is missing: the start line is then a warning.
    pub(crate) fn is_partial(&self) -> bool {
        !self.support.missing(self.in_process).is_empty()
    }

    /// Puts the supervisor itself under the workers' allow list, with its gate
    /// ([`gate`]), so that each worker inherits the filter at fork instead of installing its
    /// own. For in-process workers of the fork model only (a program must not inherit it,
    /// and under inetd the one process would hold the secret). Whether it did: where the
    /// kernel or the architecture has no gate, workers install the filter themselves.
    pub(crate) fn confine_supervisor(&self) -> Result<bool, String> {
        #[cfg(target_os = "linux")]
        {
            let taken = self
                .supervisor_filter
                .lock()
                .ok()
                .and_then(|mut f| f.take());
            let Some(mut filter) = taken else {
                return Ok(false);
            };
            if gate::inherited_across_exec() {
                // An upgrade in place: the filter and its secret are the previous image's,
                // which this image took before main. Not dumpable again (exec resets it).
                filter.erase();
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
                return Ok(true);
            }
            if !gate::open() {
                return Ok(false);
            }
            // no_new_privs, which a filter needs, and not dumpable: no process of the same
            // user may read the supervisor's memory or its calls' arguments (/proc/PID/mem,
            // /proc/PID/syscall), where the secret could be found. Workers inherit both.
            // SAFETY: prctl with integer arguments.
            let no_new_privs = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            // SAFETY: prctl with integer arguments.
            let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            if no_new_privs != 0 || not_dumpable != 0 {
                return Err(format!(
                    "--sandbox: no_new_privs: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let installed = filter.install_sealed();
            gate::clear_stack();
            gate::clear_registers();
            installed.map_err(|e| format!("--sandbox: seccomp filter: {e}"))?;
            gate::installed(gate::filters_in_force());
            Ok(true)
        }
        #[cfg(not(target_os = "linux"))]
        Ok(false)
    }

    /// Whether workers inherit the allow list from the supervisor (which installed it, or
    /// runs under its predecessor's): a worker's copy of the answer is the supervisor's.
    pub(crate) fn inherits_filter(&self) -> bool {
        #[cfg(target_os = "linux")]
        return gate::filtered();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Confines the calling process: no_new_privs, the Landlock domain, the seccomp filter,
    /// in that order (each later step needs the earlier). Only system calls, no allocation:
    /// safe in a vfork-style child. The error names the step that failed.
    pub(crate) fn apply(&self) -> Result<(), (&'static str, nix::errno::Errno)> {
        #[cfg(target_os = "linux")]
        {
            use nix::errno::Errno;
            // A supervisor under the workers' filter has no_new_privs, which fork keeps.
            if !self.inherits_filter() {
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return Err(("no_new_privs", Errno::last()));
                }
            }
            if self.drop_capabilities {
                let may_exec = !(self.in_process && self.filter.is_some());
                capabilities::drop_all(may_exec).map_err(|e| ("capabilities", e))?;
            }
            if let Some(ruleset) = &self.ruleset {
                landlock::restrict_self(ruleset.as_raw_fd()).map_err(|e| ("landlock", e))?;
            }
            if let Some(filter) = &self.filter
                && !self.inherits_filter()
            {
                filter.install().map_err(|e| ("seccomp", e))?;
            }
        }
        Ok(())
    }
}
