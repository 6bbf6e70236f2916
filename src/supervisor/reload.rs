//! Reload on SIGHUP: a new [`Config`] from the server's reload source (the daemon re-reads its
//! command line and `--config` file; an embedder gives a function) applied to the running
//! supervisor. Conversations already running are untouched; what changes applies to the
//! connections accepted after it: admission rules, limits, rates and penalties, timeouts,
//! the trusted balancers, the children's resource limits, the log, and the listeners (an
//! address added is bound, one removed is closed, one kept keeps its socket and its backlog).
//!
//! All or nothing: a configuration that does not validate, names a setting that only a restart
//! can change (the user, the model, the sandbox...), or has an address that cannot be bound
//! is refused with one line saying why, and the old one goes on serving. Under systemd the
//! reload is framed by RELOADING=1 and READY=1.

use super::{Origin, Supervisor};
use crate::admission::Refusal;
use crate::config::{Config, FRAMES_HELD_BY_HANDLER};
use crate::frame::ErrorCode;
use crate::isolation::ChildUpdate;
use crate::listen::{self, Listener};
use crate::logging::quote;

/// Where a reload gets its configuration: called on each SIGHUP.
pub type ReloadSource = Box<dyn FnMut() -> Result<Config, String>>;

impl Supervisor {
    /// SIGHUP: applies the reload source's configuration, or says why not.
    pub(super) fn reload(&mut self) {
        let Some(source) = self.reload_source.as_mut() else {
            return;
        };
        if let Some(n) = &mut self.notifier {
            n.reloading();
        }
        // An embedder's source may start a process: see isolation/stacks.rs.
        let config = crate::isolation::stacks::on_calling_stack(source);
        match config.and_then(|config| self.apply(config)) {
            Ok(summary) => log::info!("status signal=SIGHUP reload=applied {summary}"),
            Err(why) => log::error!("status signal=SIGHUP reload=refused reason={}", quote(&why)),
        }
        self.ready();
    }

    /// After an upgrade in place: the listeners the configuration names now, which the file
    /// may have changed since the last reload (the adopted ones are those the old image had).
    pub(super) fn listen_as_configured(&mut self) {
        if let Err(why) = self.apply(self.config.clone()) {
            log::warn!(
                "status signal=SIGUSR2 listen={} reason={}",
                quote(&self.listener_names.join(",")),
                quote(&why)
            );
        }
    }

    /// Applies `new`; `Err` (nothing changed) for a configuration that cannot be.
    fn apply(&mut self, new: Config) -> Result<String, String> {
        restart_only(&self.config, &new)?;
        let frames_held = if self.work.is_framed() {
            FRAMES_HELD_BY_HANDLER
        } else {
            0
        };
        new.check_values(frames_held)?;
        if new.listen.is_empty() && !self.listeners.iter().any(Listener::handed_over) {
            return Err(crate::config::NO_ADDRESS.to_string());
        }
        let added = self.bind_added(&new)?;
        if let Err(why) = crate::logging::reconfigure(&new.log) {
            added.iter().for_each(Listener::remove_socket_file);
            return Err(why);
        }
        // Nothing fails from here on. The listeners kept take the new options (the added
        // ones have them already).
        self.remove_listeners(&new);
        if let Err(why) = listen::pass_on_all(&mut self.listeners, &new, self.work.is_program()) {
            log::warn!("status reason={}", quote(&why));
        }
        self.listeners.extend(added);
        self.listener_names = self.listeners.iter().map(Listener::local_name).collect();
        let counts_sources = self.work.counts_sources();
        self.admission
            .reconfigure(new.admission.clone(), counts_sources, self.workers.peers());
        let update = ChildUpdate {
            supervisor_fds: self.supervisor_fds(),
            limits: new.limits,
            keepalive: new.keepalive,
        };
        self.workers.reconfigure(new.max_lifetime, &update);
        self.max_children = new.max_children as usize;
        self.overload = new.overload;
        self.early_drop = new.early_drop;
        self.grace = new.grace;
        self.proxy_from = new.proxy_from.clone();
        self.proxy_timeout = new.proxy_timeout;
        self.settings.max_frame = new.max_frame;
        self.settings.idle_timeout = new.idle_timeout;
        let summary = format!(
            "listen={} max_children={} max_frame={} idle_timeout={}",
            quote(&self.listener_names.join(",")),
            new.max_children,
            new.max_frame,
            new.idle_timeout.map_or(0.0, |d| d.as_secs_f64())
        );
        self.config = new;
        self.notify_status();
        Ok(summary)
    }

    /// Binds the addresses `new` names that no listener serves yet, with `new`'s options.
    fn bind_added(&self, new: &Config) -> Result<Vec<Listener>, String> {
        let added: Vec<crate::addr::Addr> = new
            .listen
            .iter()
            .filter(|addr| !self.listeners.iter().any(|l| l.bound_for() == Some(addr)))
            .cloned()
            .collect();
        let socket_file = listen::SocketFile {
            mode: new.socket_mode,
            owner: self.socket_owner,
        };
        let mut bound =
            listen::bind_all(&added, new.backlog, socket_file).map_err(|e| e.to_string())?;
        if let Err(why) = listen::pass_on_all(&mut bound, new, self.work.is_program()) {
            bound.iter().for_each(Listener::remove_socket_file);
            return Err(why);
        }
        Ok(bound)
    }

    /// Closes the listeners bound for addresses `new` no longer names (systemd's stay): the
    /// connections in their backlogs are answered ERROR 9, as at a shutdown.
    fn remove_listeners(&mut self, new: &Config) {
        let removed = |l: &Listener| l.bound_for().is_some_and(|addr| !new.listen.contains(addr));
        for index in 0..self.listeners.len() {
            if removed(&self.listeners[index]) {
                let message = format!("{} is no longer served", self.listener_names[index]);
                self.refuse_backlog_of(index, || Refusal {
                    code: ErrorCode::ShuttingDown,
                    reason: "reload",
                    message: message.clone(),
                });
            }
        }
        // Connections waiting for a PROXY header name their listener by index: renumbered.
        let mut next = 0;
        let renumbered: Vec<Option<usize>> = self
            .listeners
            .iter()
            .map(|l| {
                (!removed(l)).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        self.headers.renumber(|origin| match origin {
            Origin::Listener(index) => renumbered[index].map_or(Origin::Removed, Origin::Listener),
            other => other,
        });
        let (kept, gone): (Vec<Listener>, Vec<Listener>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| !removed(l));
        self.listeners = kept;
        gone.iter().for_each(Listener::remove_socket_file);
    }
}

/// What only a restart can change: settings fixed when serving began (who serves, how
/// connections are isolated, the sandbox prepared at start), named in the refusal.
pub(super) fn restart_only(old: &Config, new: &Config) -> Result<(), String> {
    let differ = [
        ("--user", old.user != new.user),
        ("--group", old.group != new.group),
        ("--model", old.model != new.model),
        ("--inetd", old.inetd != new.inetd),
        ("--pidfile", old.pidfile != new.pidfile),
        ("--sandbox", old.sandbox != new.sandbox),
    ];
    let changed: Vec<&str> = differ
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(flag, _)| *flag)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} changed: that takes a restart",
        changed.join(", ")
    ))
}
