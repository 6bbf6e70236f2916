//! Upgrade in place on SIGUSR2: the binary now at forkd's path replaces the running image in
//! the same process, as nginx and HAProxy upgrade, but without a second process: same pid,
//! the listening sockets never closed (so no connection is refused), the children kept
//! (they are still this process's children, and the new image is told who they are).
//!
//! First the configuration is read again (with a reload source) and must change nothing only a
//! restart can. Then the new binary is asked whether it would serve it and can take this
//! server over (`PROGRAM --check ARGS` must say `upgrade-state=N` for this image's state
//! format), as a child in a group of its own watched from the poll loop, at most
//! [`CHECK_TIME`]: the supervisor does not wait for it. Then ended workers are collected, the
//! state goes into a memfd ([`crate::upgrade`]), the descriptors it names lose close-on-exec,
//! and the process execs. If anything before the exec fails, or the exec does, the old image
//! goes on serving and says why; the new one logs `upgrade=done`.

use nix::unistd::Pid;
use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::workers::WorkerRecord;
use super::{Origin, Supervisor};
use crate::conn::{Connection, Stream};
use crate::logging::quote;
use crate::upgrade::{Handover, ListenerState, WorkerState, handed, keep_across_exec};

/// How long the new binary's `--check` may take.
const CHECK_TIME: Duration = Duration::from_secs(10);

/// Set for the `--check` of an upgrade: the sockets systemd passed at start are in use and no
/// longer offered, so a configuration without an address is not an error then; and the
/// check says which state format it takes over (`upgrade-state=N`).
pub const CHECK_ENV: &str = "FORKD_UPGRADE_CHECK";

/// What SIGUSR2 runs: the program (its path as at start, so the file now there) and the
/// arguments after the program name.
pub struct UpgradePlan {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Starts `PROGRAM --check ARGS` in a process group of its own, its output into `stdout`
/// and `stderr`, by the supervisor's spawn (which a supervisor under its workers' seccomp
/// filter makes through its gate, handing the check the secret: it runs under that filter).
fn spawn_check(
    plan: &UpgradePlan,
    stdout: &std::fs::File,
    stderr: &std::fs::File,
) -> std::io::Result<Pid> {
    let c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| std::io::Error::other("a NUL in an argument"))
    };
    let program = c(plan.program.as_os_str().as_bytes())?;
    // --check first: after a `--`, it would be the program's argument.
    let mut argv = vec![program.clone(), c(b"--check")?];
    for arg in &plan.args {
        argv.push(c(arg.as_bytes())?);
    }
    let mut env = environment(&[format!("{CHECK_ENV}=1")])?;
    let gate = crate::sandbox::hand_down();
    env.extend(gate.as_ref().map(|(_, entry)| entry.clone()));
    let null = std::fs::File::open("/dev/null")?;
    let argv: Vec<&std::ffi::CStr> = argv.iter().map(CString::as_c_str).collect();
    let env: Vec<&std::ffi::CStr> = env.iter().map(CString::as_c_str).collect();
    let started = crate::spawn::start(
        &program,
        &argv,
        &env,
        [null.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
        None,
    );
    // The check has exec'd (or failed to): the secret's descriptor is closed here.
    drop(gate);
    started
}

/// This process's environment with `extra` entries added, for an exec.
fn environment(extra: &[String]) -> std::io::Result<Vec<CString>> {
    let entry = |pair: Vec<u8>| {
        CString::new(pair).map_err(|_| std::io::Error::other("a NUL in the environment"))
    };
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        let mut pair = key.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        env.push(entry(pair)?);
    }
    for pair in extra {
        env.push(entry(pair.clone().into_bytes())?);
    }
    Ok(env)
}

/// The new binary's `--check`, running in a process group of its own.
pub(super) struct Check {
    child: Pid,
    deadline: Instant,
    /// Its standard output and error, in memory: a check that writes a lot cannot block
    /// on a pipe nobody reads yet.
    stdout: std::fs::File,
    stderr: std::fs::File,
}

impl Check {
    /// Ends the check and whatever it started, and reaps it.
    fn end(&mut self) {
        let _ = nix::sys::signal::killpg(self.child, nix::sys::signal::Signal::SIGKILL);
    }

    /// Reaps it: its exit status.
    fn status(&self) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let reaped = unsafe { libc::waitpid(self.child.as_raw(), &mut status, 0) };
        (reaped == self.child.as_raw()).then(|| std::process::ExitStatus::from_raw(status))
    }

    /// What it wrote to `file`, the first 4 KiB.
    fn said(file: &mut std::fs::File) -> String {
        use std::io::Seek;
        let mut text = String::new();
        if file.rewind().is_ok() {
            let _ = file.take(4096).read_to_string(&mut text);
        }
        text
    }
}

impl Supervisor {
    /// SIGUSR2: starts checking the new binary.
    pub(super) fn begin_upgrade(&mut self) {
        let refuse = |why: &str| {
            log::error!(
                "status signal=SIGUSR2 upgrade=refused reason={}",
                quote(why)
            );
        };
        let Some(plan) = &self.upgrade_plan else {
            return refuse("this server was not started to be upgraded in place");
        };
        if self.upgrade_check.is_some() {
            return refuse("an upgrade is being checked already");
        }
        if self.config.model != crate::config::Model::Fork {
            return refuse("threads cannot outlive the image that runs them: restart instead");
        }
        // What a restart would change, an upgrade would not: said now, not found later.
        if let Some(source) = self.reload_source.as_mut() {
            let new = crate::isolation::stacks::on_calling_stack(source);
            match new.and_then(|new| super::reload::restart_only(&self.config, &new)) {
                Ok(()) => {}
                Err(why) => return refuse(&why),
            }
        }
        let output = |name| crate::upgrade::memfd(name, libc::MFD_CLOEXEC).map(std::fs::File::from);
        let (stdout, stderr) = match (output(c"forkd-check-out"), output(c"forkd-check-err")) {
            (Ok(out), Ok(err)) => (out, err),
            (Err(e), _) | (_, Err(e)) => return refuse(&e),
        };
        match spawn_check(plan, &stdout, &stderr) {
            Ok(child) => {
                log::info!(
                    "status signal=SIGUSR2 upgrade=checking program={}",
                    quote(&plan.program.display().to_string())
                );
                self.upgrade_check = Some(Check {
                    child,
                    deadline: Instant::now() + CHECK_TIME,
                    stdout,
                    stderr,
                });
            }
            Err(e) => refuse(&format!("{}: {e}", plan.program.display())),
        }
    }

    /// Shutdown: a check still running is ended (and reaped), not left behind.
    pub(super) fn abandon_upgrade(&mut self) {
        if let Some(mut check) = self.upgrade_check.take() {
            check.end();
            let _ = check.status();
        }
    }

    /// When the check must have ended.
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        self.upgrade_check.as_ref().map(|c| c.deadline)
    }

    /// Whether the check has ended (it is reaped here, before the workers are); then the
    /// upgrade goes ahead, or is refused with what the check said.
    pub(super) fn poll_upgrade(&mut self, now: Instant) {
        let Some(check) = &mut self.upgrade_check else {
            return;
        };
        // Asked without reaping: while the check is a zombie its group's id cannot be reused,
        // so what it left running in its group can be ended by that id.
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let pid = check.child;
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let exited = !matches!(waitid(Id::Pid(pid), flags), Ok(WaitStatus::StillAlive));
        if !exited && check.deadline > now {
            return;
        }
        check.end();
        let status = match check.status() {
            Some(status) if exited => status,
            _ => {
                self.upgrade_check = None;
                log::error!(
                    "status signal=SIGUSR2 upgrade=refused reason={}",
                    quote(&format!("--check took over {}s", CHECK_TIME.as_secs()))
                );
                return;
            }
        };
        let (out, err) = (
            Check::said(&mut check.stdout),
            Check::said(&mut check.stderr),
        );
        self.upgrade_check = None;
        let said: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            // Under --sandbox's filter, which the check inherits: a binary that cannot take
            // the secret before main (not a forkd, or one without the gate) is stopped by it.
            let filtered =
                crate::sandbox::filters_this_process() && status.signal() == Some(libc::SIGSYS);
            let hint = if filtered {
                " (stopped by --sandbox's system call filter, which it inherits: restart instead)"
            } else {
                ""
            };
            log::error!(
                "status signal=SIGUSR2 upgrade=refused reason={}",
                quote(&format!(
                    "--check failed ({status}){hint}: {}",
                    said.join(" / ")
                ))
            );
            return;
        }
        let takes_over = format!("upgrade-state={}", crate::upgrade::STATE_VERSION);
        if !out.split_whitespace().any(|word| word == takes_over) {
            log::error!(
                "status signal=SIGUSR2 upgrade=refused reason={}",
                quote(&format!(
                    "the new binary's --check did not say {takes_over}: it could not take \
                     this server over (restart instead)"
                ))
            );
            return;
        }
        if let Err(why) = self.exec_upgrade() {
            log::error!(
                "status signal=SIGUSR2 upgrade=refused reason={}",
                quote(&why)
            );
            self.ready();
        }
    }

    /// Hands the state over and execs the new image; returns only if that failed, with the
    /// descriptors as they were.
    fn exec_upgrade(&mut self) -> Result<(), String> {
        // Workers that have ended are collected (and logged) by this image: their SIGCHLD may
        // have been read already, and would not come again to the next.
        self.reap();
        let plan = self.upgrade_plan.as_ref().expect("checked");
        let state = self.handover();
        let memfd: OwnedFd = state.write()?;
        let mut fds = state.fds();
        fds.push(memfd.as_raw_fd());
        let c = |bytes: &[u8]| CString::new(bytes).map_err(|_| "a NUL in argv".to_string());
        let program = c(plan.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in &plan.args {
            argv.push(c(arg.as_bytes())?);
        }
        let mut env = environment(&[format!("{}={}", crate::upgrade::ENV, memfd.as_raw_fd())])
            .map_err(|e| e.to_string())?;
        // Under the workers' seccomp filter, which the new image inherits: the secret too.
        let gate = crate::sandbox::hand_down();
        env.extend(gate.as_ref().map(|(_, entry)| entry.clone()));
        if let Some(n) = &mut self.notifier {
            n.reloading();
        }
        log::info!(
            "status signal=SIGUSR2 upgrade=exec program={} workers={} listeners={}",
            quote(&plan.program.display().to_string()),
            state.workers.len(),
            state.listeners.len()
        );
        keep_across_exec(&fds, true);
        let error = exec(&program, &argv, &env);
        keep_across_exec(&fds, false);
        drop(gate);
        Err(format!("exec {}: {error}", plan.program.display()))
    }

    /// What the next image must know, its descriptors still this image's.
    fn handover(&self) -> Handover {
        let now = Instant::now();
        Handover {
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerState {
                    fd: l.as_raw_fd(),
                    bound_for: l.bound_for().map(ToString::to_string),
                    name: l.systemd_name().map(str::to_string),
                    handed_over: l.handed_over(),
                    owned_path: l.owned_path().map(|p| p.display().to_string()),
                })
                .collect(),
            workers: self
                .workers
                .records()
                .map(|(pid, record)| WorkerState {
                    pid,
                    peer: record.peer.clone(),
                    via: record.via,
                    age: now.saturating_duration_since(record.started),
                    // One already asked to end is due its SIGKILL, not a second SIGTERM.
                    lifetime_left: record
                        .lifetime_ends
                        .filter(|_| !record.outlived)
                        .map(|ends| ends.saturating_duration_since(now)),
                    outlived: record.outlived,
                    tally_slot: record.tally.map(|slot| slot.index()),
                })
                .collect(),
            relays: self.relays.pipes(),
            drains: self.drains.raw_fds(),
            headers: self.headers.raw_fds_and_origins(),
            pidfile: self.pidfile.clone(),
            notify_socket: self.notifier.as_ref().map(|n| n.path().to_string()),
            accepted_total: self.accepted_total,
            from_version: env!("CARGO_PKG_VERSION").to_string(),
            tally_table: self.tally.as_ref().and_then(|t| t.fd()),
            groups_table: crate::isolation::groups::table_fd(),
            penalties: self.admission.sentences(now),
            buckets: self.admission.buckets(now),
        }
    }
}

impl Supervisor {
    /// The new image: takes over what the previous one handed over (its listeners and
    /// pidfile are taken at start), binds what the configuration now names besides, and
    /// says the upgrade is done.
    pub(super) fn adopt(&mut self, state: Handover) {
        let now = Instant::now();
        let workers = state.workers.len();
        // The byte counts of conversations started before go on in the same table.
        let counted: Vec<u32> = state.workers.iter().filter_map(|w| w.tally_slot).collect();
        if let Some(fd) = state.tally_table {
            match self.tally.take() {
                Some(fresh) => {
                    fresh.discard();
                    self.tally = Some(crate::isolation::tally::Tally::adopt(fd, &counted));
                }
                // Nothing here counts bytes: the table is not kept open.
                None => drop(handed(fd)),
            }
        }
        let adopted_tally = self.tally.is_some() && state.tally_table.is_some();
        for worker in state.workers {
            if !is_my_child(worker.pid) {
                log::warn!(
                    "status signal=SIGUSR2 pid={} reason=\"handed over, but not a child of this process\"",
                    worker.pid
                );
                continue;
            }
            self.admission.started(&worker.peer);
            let record = WorkerRecord {
                peer: worker.peer,
                via: worker.via,
                started: now.checked_sub(worker.age).unwrap_or(now),
                tally: worker
                    .tally_slot
                    .filter(|_| adopted_tally)
                    .map(crate::isolation::tally::Slot::at),
                outlived: worker.outlived,
                lifetime_ends: worker.lifetime_left.map(|left| now + left),
            };
            self.workers.adopt(worker.pid, record);
        }
        for (fd, pid) in state.relays {
            if let Ok(pipe) = handed(fd) {
                self.relays.add(pipe, nix::unistd::Pid::from_raw(pid));
            }
        }
        for fd in state.drains {
            if let Some(stream) = handed(fd).ok().and_then(|fd| Stream::from_socket(fd).ok()) {
                self.drains.adopt(stream, now);
            }
        }
        for (fd, index) in state.headers {
            let Some(stream) = handed(fd).ok().and_then(|fd| Stream::from_socket(fd).ok()) else {
                continue;
            };
            let Ok(conn) = Connection::accepted(stream) else {
                continue;
            };
            let origin = index
                .filter(|i| *i < self.listeners.len())
                .map_or(Origin::Removed, Origin::Listener);
            self.headers.adopt(conn, origin, now + self.proxy_timeout);
        }
        self.accepted_total = state.accepted_total;
        self.admission.restore_sentences(&state.penalties, now);
        self.admission.restore_buckets(&state.buckets, now);
        // A worker that ended while the exec ran has a SIGCHLD pending for this image; one
        // that ended before may not: collected now either way.
        self.reap();
        self.listen_as_configured();
        log::info!(
            "status signal=SIGUSR2 upgrade=done from_version={} version={} workers={workers} listeners={}",
            state.from_version,
            env!("CARGO_PKG_VERSION"),
            self.listeners.len()
        );
    }
}

/// Whether `pid` is a child of this process (alive or not yet reaped): a state naming any
/// other must not have it signalled.
fn is_my_child(pid: i32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    pid > 0 && waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags).is_ok()
}

/// execve, through the gate where the supervisor runs under its workers' seccomp filter (a
/// trapped execve would be made again from the signal handler, and the new image would start
/// with SIGSYS blocked). Returns only on failure.
fn exec(program: &CString, argv: &[CString], env: &[CString]) -> nix::errno::Errno {
    let (argv, envp) = (
        crate::spawn::null_terminated(argv),
        crate::spawn::null_terminated(env),
    );
    let args = [
        program.as_ptr() as usize,
        argv.as_ptr() as usize,
        envp.as_ptr() as usize,
        0,
        0,
    ];
    // SAFETY: execve reads the NUL-terminated strings and the null-terminated arrays, alive
    // for the call.
    match unsafe { crate::sandbox::through_gate(libc::SYS_execve, args) } {
        Some(error) => nix::errno::Errno::from_raw(-error as i32),
        None => {
            // SAFETY: as above.
            unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            nix::errno::Errno::last()
        }
    }
}
