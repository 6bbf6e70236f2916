//! Start-up: from a configuration to a supervisor serving it. Takes the listeners (bound,
//! inherited from systemd, or the one `--inetd` connection), sets the options accepted
//! sockets inherit, takes the signals, writes the pidfile, drops privileges, logs the start
//! line, picks the isolation model, and hands over to the loop.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use super::{Origin, Supervisor};
use crate::activation;
use crate::config::{Config, Model, NO_ADDRESS};
use crate::handler::{ProtocolSettings, Work};
use crate::isolation::child::ChildSetup;
use crate::isolation::{Fork, Isolation, Threads};
use crate::listen::{self, Listener};
use crate::notify::Notifier;
use crate::pidfile::Pidfile;
use crate::privilege;
use crate::sandbox::Prepared;
use crate::signals::Signals;
use crate::upgrade::{Handover, handed};

/// Serves `config` with `work` until SIGTERM/SIGINT (or, with `--inetd`, until its connection
/// ends), then cleans up. Errors are the start-up failures, as one line each.
///
/// What a start is given besides the configuration and the handler.
pub(crate) struct Start {
    /// The listening sockets systemd passed ([`crate::activation::take`]), taken before
    /// anything else was opened.
    pub handed_over: Option<Vec<Listener>>,
    /// Where SIGHUP gets a new configuration.
    pub reload: Option<super::ReloadSource>,
    /// What SIGUSR2 execs.
    pub upgrade: Option<super::UpgradePlan>,
    /// The state the previous image handed over, when this start is an upgrade in place.
    pub upgraded: Option<Handover>,
}

pub(crate) fn run(config: &Config, work: Work, start: Start) -> Result<(), String> {
    let Start {
        handed_over,
        reload,
        upgrade,
        mut upgraded,
    } = start;
    let identity = privilege::resolve(config.user.as_deref(), config.group.as_deref())?;
    let socket_owner = identity.as_ref().map(|id| (id.uid, id.gid));
    // Taken first, while still root (so it may live in /run): a second instance is refused
    // before it binds anything. At an upgrade, the lock held all along is taken over.
    let pidfile = match upgraded.as_mut().and_then(|u| u.pidfile.take()) {
        Some((fd, path)) => Some(Pidfile::adopt(handed(fd)?, Path::new(&path))?),
        None => config.pidfile.as_deref().map(Pidfile::take).transpose()?,
    };
    let notifier = match upgraded.as_ref() {
        Some(state) => state.notify_socket.clone().and_then(Notifier::to),
        None => Notifier::from_env(),
    };
    let (listeners, inetd_connection) = if let Some(state) = &upgraded {
        (adopt_listeners(state)?, None)
    } else if config.inetd {
        (Vec::new(), Some(activation::take_inetd_connection()?))
    } else if let Some(inherited) = handed_over {
        if !config.listen.is_empty() {
            activation::check_agreement(&inherited, &config.listen)?;
        }
        (inherited, None)
    } else if config.listen.is_empty() {
        return Err(NO_ADDRESS.to_string());
    } else {
        let socket_file = listen::SocketFile {
            mode: config.socket_mode,
            owner: socket_owner,
        };
        let bound = listen::bind_all(&config.listen, config.backlog, socket_file)
            .map_err(|e| e.to_string())?;
        (bound, None)
    };
    let cleanup = |listeners: &[Listener], e: String| {
        listeners.iter().for_each(Listener::remove_socket_file);
        e
    };
    let mut listeners = listeners;
    if let Err(e) = listen::pass_on_all(&mut listeners, config, work.is_program()) {
        return Err(cleanup(&listeners, e));
    }
    if let Some(conn) = &inetd_connection {
        listen::configure_accepted(&conn.stream, config.keepalive)
            .map_err(|e| format!("--inetd: socket options: {e}"))?;
    }
    let signals = Signals::install()
        .map_err(|e| cleanup(&listeners, format!("cannot install signal handlers: {e}")))?;
    // After an upgrade the process serves as whom it dropped to before.
    if let Some(id) = identity.as_ref().filter(|_| upgraded.is_none()) {
        privilege::drop_to(id).map_err(|e| cleanup(&listeners, e))?;
        // The check at start ran as root: the program must be runnable by whom it runs as.
        if let Some(program) = work.program() {
            let runnable = program.path_os().and_then(|path| {
                nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(Into::into)
            });
            if let Err(e) = runnable {
                let why = format!(
                    "cannot run {} as the user it serves as: {e}",
                    program.name()
                );
                return Err(cleanup(&listeners, why));
            }
        }
    }
    let names: Vec<String> = listeners.iter().map(Listener::local_name).collect();
    // Under inetd every connection starts a forkd: what it says at start is detail, not news.
    let at_start = |level| {
        if config.inetd {
            log::Level::Debug
        } else {
            level
        }
    };
    let lifecycle = at_start(log::Level::Info);
    log::log!(
        lifecycle,
        "start version={} pid={} listen={} handler={} max_children={} max_frame={} grace={}s user={} uid={}{}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        if config.inetd {
            "inetd".to_string()
        } else {
            crate::logging::quote(&names.join(","))
        },
        work.name(),
        config.max_children,
        config.max_frame,
        config.grace.as_secs_f64(),
        user_name(nix::unistd::Uid::effective()),
        nix::unistd::Uid::effective(),
        proxy_fields(config),
    );
    // Printed once, at the first start: an upgrade in place is the same server.
    if config.print_port && upgraded.is_none() {
        print_ports(&listeners);
    }
    if nix::unistd::Uid::effective().is_root() {
        // Under inetd (whose configuration names the user) repeated for every connection.
        log::log!(
            at_start(log::Level::Warn),
            "start user=root reason=\"serving as root: use --user to drop privileges\""
        );
    }
    // After the signals are set up (which resets every disposition first): the sandbox may
    // install a handler; and after the privilege drop, so that its paths are opened as the
    // user that serves.
    let sandbox = match &config.sandbox {
        Some(sandbox) => Some(std::sync::Arc::new(
            Prepared::new(sandbox, work.confined()).map_err(|e| cleanup(&listeners, e))?,
        )),
        None => None,
    };
    if let Some(sandbox) = &sandbox
        && config.model == Model::Fork
        && !config.inetd
    {
        sandbox
            .confine_supervisor()
            .map_err(|e| cleanup(&listeners, e))?;
    }
    if let Some(sandbox) = &sandbox {
        let level = if sandbox.is_partial() {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(at_start(level), "sandbox {sandbox}");
    }
    let mut supervisor_fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    supervisor_fds.extend(signals.raw_fds());
    supervisor_fds.extend(notifier.as_ref().map(Notifier::raw_fd));
    supervisor_fds.extend(pidfile.as_ref().map(Pidfile::raw_fd));
    // In order: a worker closes consecutive numbers with one system call.
    supervisor_fds.sort_unstable();
    let setup = ChildSetup {
        supervisor_fds,
        limits: config.limits,
        keepalive: config.keepalive,
        sandbox,
    };
    let isolation: Box<dyn Isolation> = match config.model {
        Model::Fork => {
            crate::isolation::fault::report_stack_overflows();
            Box::new(Fork::new(setup.clone()))
        }
        Model::Thread => Box::new(Threads::new(signals.waker(), config.keepalive)),
    };
    let settings = ProtocolSettings {
        tally: None,
        max_frame: config.max_frame,
        idle_timeout: config.idle_timeout,
    };
    let mut supervisor = Supervisor::new(
        config, listeners, signals, work, settings, isolation, notifier, lifecycle, setup,
    );
    // Under inetd a forkd serves one connection: nothing to reload or upgrade.
    supervisor.reload_source = reload.filter(|_| !config.inetd);
    supervisor.upgrade_plan = upgrade.filter(|_| !config.inetd);
    supervisor.socket_owner = socket_owner;
    supervisor.pidfile = pidfile
        .as_ref()
        .map(|p| (p.raw_fd(), p.path().display().to_string()));
    if let Some(state) = upgraded {
        supervisor.adopt(state);
    }
    if let Some(conn) = inetd_connection {
        supervisor.take(conn, Origin::Inetd, false);
    }
    supervisor.ready();
    // Only where workers are forked: inetd's one conversation was served above, and the
    // thread model copies nothing.
    if config.model == Model::Fork && !config.inetd {
        crate::isolation::lean::ready_to_serve();
        // The supervisor and its loop move to a stack workers do not inherit, so that what
        // the loop writes between forks is not copy-on-write (isolation/stacks.rs).
        crate::isolation::stacks::run_on_own_stack(move || {
            let mut supervisor = supervisor;
            supervisor.serve();
        });
    } else {
        // (The fork model's ready_to_serve does this too, at the right moment among its
        // steps.) Under inetd the process ends with its one conversation.
        if !config.inetd {
            super::startup_code::forget();
        }
        supervisor.serve();
    }
    drop(pidfile);
    Ok(())
}

/// The name of the user `uid`, or the number where it has none.
fn user_name(uid: nix::unistd::Uid) -> String {
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// `--print-port`: each TCP port once, a line each, on stdout. A stdout nobody reads must not
/// hold up the start for long: the write waits at most a second for room.
fn print_ports(listeners: &[Listener]) {
    use std::io::Write;
    use std::os::fd::AsFd;
    let mut ports: Vec<u16> = Vec::new();
    for port in listeners.iter().filter_map(Listener::port) {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let text: String = ports.iter().map(|p| format!("{p}\n")).collect();
    let stdout = std::io::stdout();
    let mut ready = [nix::poll::PollFd::new(
        stdout.as_fd(),
        nix::poll::PollFlags::POLLOUT,
    )];
    let written = match nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(1000u16)) {
        Ok(1) => stdout
            .lock()
            .write_all(text.as_bytes())
            .and_then(|()| stdout.lock().flush()),
        Ok(_) => Err(std::io::ErrorKind::TimedOut.into()),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = written {
        log::warn!(
            "status print_port={} reason={}",
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            crate::logging::quote(&format!("stdout: {e}"))
        );
    }
}

/// ` proxy_from=NET,... proxy_timeout=Ns` for the start line, when balancers are trusted.
fn proxy_fields(config: &Config) -> String {
    if config.proxy_from.is_empty() {
        return String::new();
    }
    let nets: Vec<String> = config.proxy_from.iter().map(ToString::to_string).collect();
    format!(
        " proxy_from={} proxy_timeout={}s",
        nets.join(","),
        config.proxy_timeout.as_secs_f64()
    )
}

/// The listeners the previous image handed over, as they were.
fn adopt_listeners(state: &Handover) -> Result<Vec<Listener>, String> {
    state
        .listeners
        .iter()
        .map(|l| {
            let bound_for = l.bound_for.as_deref().and_then(|a| a.parse().ok());
            Listener::adopted(
                handed(l.fd)?,
                bound_for,
                l.name.clone(),
                l.handed_over,
                l.owned_path.as_ref().map(PathBuf::from),
            )
        })
        .collect()
}
