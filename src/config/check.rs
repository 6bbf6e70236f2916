//! Whether a configuration can be served: every setting that would doom every connection is
//! refused here, before anything is bound, with one line naming the setting at fault.

use std::time::Duration;

use super::*;

/// Frames of up to `max_frame` a protocol-v1 worker holds at once: the request being
/// received, the buffer it outgrows while growing, and the reply.
pub(crate) const FRAMES_HELD_BY_HANDLER: u64 = 3;

/// Descriptors a frame-exec worker needs below its limit: its own (the standard three, the
/// log's, its connection) and, per program, three pipes, a pidfd and the spawn's own pipe.
const FRAME_EXEC_DESCRIPTORS: u64 = 16;

/// Address space a worker's allocator takes beyond the bytes it hands out.
const ALLOCATOR_SLACK: u64 = 16 << 20;

impl Config {
    /// Whether this configuration can be served with `service`: `Err` is one line naming the
    /// setting at fault. Durations are in range, a program to run is there, resource limits
    /// can be set and leave room for a frame; binding, users and files are checked when
    /// serving starts.
    pub fn check(&self, service: &Service) -> Result<(), String> {
        let (frames_held, program) = match service {
            Service::Echo => (FRAMES_HELD_BY_HANDLER, None),
            Service::Exec(program) => (0, Some(program)),
            // The program's input and its output besides the request and the reply.
            Service::FrameExec(program) => (FRAMES_HELD_BY_HANDLER + 2, Some(program)),
        };
        self.check_settings(frames_held)?;
        // A name that does not resolve would end the start after binding; said now instead.
        crate::privilege::resolve(self.user.as_deref(), self.group.as_deref())?;
        if let Some(program) = program {
            check_program(program)?;
        }
        if let (Service::FrameExec(_), Some(n)) = (service, self.limits.open_files)
            && n < FRAME_EXEC_DESCRIPTORS
        {
            return Err(format!(
                "--rlimit-nofile {n} would fail every request of frame-exec: a worker opens \
                 pipes for each program, at least {FRAME_EXEC_DESCRIPTORS}"
            ));
        }
        self.check_model(service)
    }

    /// What every server needs, whatever serves its connections. `frames_held`: how many
    /// frames of up to `max_frame` bytes a worker may hold at once (0 for a handler that does
    /// not speak protocol v1), for the room `--rlimit-as` must leave.
    pub(crate) fn check_settings(&self, frames_held: u64) -> Result<(), String> {
        if self.listen.is_empty() && !self.inetd && !sockets_offered() {
            return Err(NO_ADDRESS.to_string());
        }
        self.check_values(frames_held)
    }

    /// [`Config::check_settings`] but for where connections come from, which a reload judges
    /// against the sockets it has (systemd's included).
    pub(crate) fn check_values(&self, frames_held: u64) -> Result<(), String> {
        if self.max_children == 0 {
            return Err("--max-children must be at least 1".to_string());
        }
        if self.inetd && !self.listen.is_empty() {
            return Err("--inetd serves descriptor 0 and cannot also --listen".to_string());
        }
        if self.inetd && self.pidfile.is_some() {
            return Err(
                "--pidfile cannot apply to --inetd: a forkd runs per connection".to_string(),
            );
        }
        if self.socket_mode > 0o777 {
            return Err(format!(
                "--socket-mode {:o} is not permission bits (0 to 777)",
                self.socket_mode
            ));
        }
        self.check_durations()?;
        if self.max_frame == 0 {
            return Err("--max-frame 0 would refuse every request: at least 1".into());
        }
        if self.max_frame > MAX_FRAME {
            return Err(format!(
                "--max-frame {} is more than 1G, the largest frame forkd takes",
                self.max_frame
            ));
        }
        self.check_limits(frames_held)
    }

    fn check_durations(&self) -> Result<(), String> {
        // --grace 0 means no grace period; the other limits are turned off by None.
        check_setting("--grace", Some(self.grace), true)?;
        check_setting("--idle-timeout", self.idle_timeout, false)?;
        check_setting("--max-lifetime", self.max_lifetime, false)?;
        check_setting("--defer-accept", self.defer_accept, false)?;
        if self.proxy_timeout.is_zero() || self.proxy_timeout > MAX_PROXY_TIMEOUT {
            return Err(format!(
                "--proxy-timeout {}s: a balancer's header must be given 1 ms to 1 h",
                self.proxy_timeout.as_secs_f64()
            ));
        }
        if self.print_port
            && !self.listen.is_empty()
            && self
                .listen
                .iter()
                .all(|a| matches!(a, crate::addr::Addr::Unix(_)))
        {
            return Err("--print-port prints TCP ports, and every --listen is unix:".into());
        }
        if let Some(drop) = self.early_drop
            && drop.start >= self.max_children
        {
            return Err(format!(
                "--early-drop {drop}: START must be below --max-children ({})",
                self.max_children
            ));
        }
        if let Some(wait) = self.defer_accept {
            if !cfg!(target_os = "linux") {
                return Err(
                    "--defer-accept is Linux's TCP_DEFER_ACCEPT: not on this system".into(),
                );
            }
            // The kernel counts it in SYN-ACK retransmissions; an hour is far past any.
            if wait > Duration::from_secs(3600) {
                return Err(format!("--defer-accept {wait:?} is more than 1h"));
            }
        }
        if let Some(penalty) = &self.admission.penalty {
            penalty.check()?;
            if self.inetd {
                return Err(
                    "--penalty remembers sources across connections, and under --inetd \
                            each connection has a forkd of its own"
                        .into(),
                );
            }
        }
        check_setting("--rate", self.admission.rate.map(|r| r.per), false)
    }

    /// Limits a worker could not set, or that leave no room for a frame, doom every
    /// connection: refused now rather than per connection.
    fn check_limits(&self, frames_held: u64) -> Result<(), String> {
        use nix::sys::resource::{Resource, getrlimit};
        // Only a process that keeps root may raise a hard limit.
        let may_raise = nix::unistd::geteuid().is_root() && self.user.is_none();
        let limits = [
            (
                "--rlimit-as",
                Resource::RLIMIT_AS,
                self.limits.address_space,
            ),
            (
                "--rlimit-cpu",
                Resource::RLIMIT_CPU,
                self.limits.cpu_seconds,
            ),
            (
                "--rlimit-nofile",
                Resource::RLIMIT_NOFILE,
                self.limits.open_files,
            ),
        ];
        for (flag, resource, value) in limits {
            let Some(value) = value else { continue };
            // A worker needs its standard descriptors and its connection, and some CPU.
            let least = if resource == Resource::RLIMIT_NOFILE {
                4
            } else {
                1
            };
            if value < least {
                return Err(format!(
                    "{flag} {value} would fail every connection: at least {least}"
                ));
            }
            let (_, hard) = getrlimit(resource).map_err(|e| format!("{flag}: {e}"))?;
            let ceiling = match resource {
                // The kernel's own ceiling, for root too.
                Resource::RLIMIT_NOFILE if may_raise => nr_open(),
                _ if may_raise => u64::MAX,
                _ => hard,
            };
            if value > ceiling {
                return Err(format!(
                    "{flag} {value} is above the hard limit of {ceiling} a worker may set"
                ));
            }
        }
        if let (1.., Some(limit)) = (frames_held, self.limits.address_space) {
            // The frames a worker holds, on top of what a process maps from the start (the
            // supervisor's own size, which a fresh worker shares) and room for the
            // allocator's own arenas.
            let mapped = mapped_bytes();
            let needed = mapped
                .saturating_add(frames_held * u64::from(self.max_frame))
                .saturating_add(ALLOCATOR_SLACK);
            if limit < needed {
                // A figure in whole MiB with a MiB to spare: what a process maps varies by a
                // few pages from one start to the next.
                let suggested = (needed >> 20) + 2;
                return Err(format!(
                    "--rlimit-as {limit} leaves no room for a --max-frame {} request and its \
                     reply (a worker maps {} MiB from the start): raise --rlimit-as to at \
                     least {suggested}M or lower --max-frame",
                    self.max_frame,
                    mapped >> 20
                ));
            }
        }
        Ok(())
    }

    /// What the isolation model cannot honour; the sandbox's paths, and its parts where it
    /// is required. `service`: Echo for any handler that serves in-process.
    pub(crate) fn check_model(&self, service: &Service) -> Result<(), String> {
        if let Some(sandbox) = &self.sandbox {
            sandbox.check(matches!(service, Service::Echo))?;
        }
        if self.model == Model::Fork {
            return Ok(());
        }
        let limits = self.limits;
        let refused = [
            (
                self.max_lifetime.is_some(),
                "--max-lifetime",
                "a thread cannot be killed safely",
            ),
            (
                limits.address_space.is_some(),
                "--rlimit-as",
                "resource limits are per process",
            ),
            (
                limits.cpu_seconds.is_some(),
                "--rlimit-cpu",
                "resource limits are per process",
            ),
            (
                limits.open_files.is_some(),
                "--rlimit-nofile",
                "resource limits are per process",
            ),
            (
                limits.nice.is_some(),
                "--nice",
                "priority is per process here",
            ),
            (
                self.sandbox.is_some(),
                "--sandbox",
                "a thread shares forkd's own process, which it cannot confine",
            ),
            (
                matches!(service, Service::Exec(_)),
                "--handler exec",
                "it replaces the process serving the connection",
            ),
        ];
        match refused.iter().find(|(given, _, _)| *given) {
            Some((_, flag, why)) => Err(format!("{flag} cannot apply to --model thread: {why}")),
            None => Ok(()),
        }
    }
}

/// A duration setting: in range, and not 0 unless `zero_allowed` (where `None` is how a
/// limit is turned off, a 0 would end everything at once).
fn check_setting(flag: &str, value: Option<Duration>, zero_allowed: bool) -> Result<(), String> {
    let Some(value) = value else { return Ok(()) };
    check_duration(value).map_err(|why| format!("{flag} {value:?} {why}"))?;
    if value.is_zero() && !zero_allowed {
        return Err(format!("{flag} of 0: None turns the limit off"));
    }
    Ok(())
}

/// A program that is not there, or that cannot be run, would fail every connection.
fn check_program(program: &Program) -> Result<(), String> {
    let Some(name) = program.argv.first() else {
        return Err("no program to run: give it after --".to_string());
    };
    check_setting("--request-timeout", program.request_timeout, false)?;
    let env = crate::handler::program::launch(program, &[]).env;
    let found = crate::spawn::locate(name, &env)
        .ok()
        .filter(|path| crate::spawn::is_executable(path));
    found.ok_or_else(|| {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.to_string_lossy().contains('/') {
            format!(
                "cannot run {}: not an executable file",
                name.to_string_lossy()
            )
        } else {
            format!(
                "cannot run {}: no executable of that name on PATH ({path})",
                name.to_string_lossy()
            )
        }
    })?;
    Ok(())
}

/// /proc/sys/fs/nr_open: the most descriptors any process may have.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The bytes this process maps now (/proc/self/statm, first field, in pages).
fn mapped_bytes() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    pages
        * nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_model_refuses_what_it_cannot_honour() {
        let base = Config {
            listen: vec![":1".parse().unwrap()],
            model: Model::Thread,
            ..Config::default()
        };
        assert!(base.check(&Service::Echo).is_ok());
        let lifetime = Config {
            max_lifetime: Some(Duration::from_secs(1)),
            ..base.clone()
        };
        let e = lifetime.check(&Service::Echo).unwrap_err();
        assert!(e.starts_with("--max-lifetime"), "{e}");
        let e = base
            .check(&Service::Exec(Program::new(["cat"])))
            .unwrap_err();
        assert!(e.starts_with("--handler exec"), "{e}");
    }
}
