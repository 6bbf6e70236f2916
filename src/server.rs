//! [`Server`]: the embedding API's entry point. It holds a [`Config`] and a handler, and
//! serves until SIGTERM or SIGINT, exactly as the `forkd` daemon does (the daemon is one user
//! of this type).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::Addr;
use crate::config::{
    Cidr, Config, Limits, LogOptions, Model, Overload, Rate, Rule, Sandbox, Service,
};
use crate::handler::{NewFramed, StreamHandler, Work};

/// A forking (or threaded) server: where it listens, its limits, and its handler.
///
/// Built by chaining methods on [`Server::new`] (or from a whole [`Config`] with
/// [`Server::from_config`]), then run with [`Server::serve`]:
///
/// ```no_run
/// use forkd::{FramedHandler, Reply, Server};
///
/// struct Upper;
///
/// impl FramedHandler for Upper {
///     fn request(&mut self, payload: &[u8], reply: Reply<'_>) {
///         reply.data(&payload.to_ascii_uppercase());
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     Server::new()
///         .listen("127.0.0.1:7000".parse()?)
///         .max_children(32)
///         .framed(|_conn: &forkd::Connection| Upper)
///         .serve()?;
///     Ok(())
/// }
/// ```
pub struct Server {
    config: Config,
    handler: Handler,
    reload: Option<crate::supervisor::ReloadSource>,
    upgrade: Option<crate::supervisor::UpgradePlan>,
}

/// The handler a server was given.
enum Handler {
    Builtin(Service),
    Custom(Work),
}

/// Why a server could not start: one line naming what failed and on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Default for Server {
    fn default() -> Server {
        Server::new()
    }
}

impl Server {
    /// A server with [`Config::default`] (no address yet, fork model, 64 connections) and
    /// the echo handler.
    pub fn new() -> Server {
        Server::from_config(Config::default(), Service::Echo)
    }

    /// A server for a whole configuration and one of forkd's own handlers (as the daemon's
    /// command line builds it). [`Server::framed`] or [`Server::stream`] replace the handler.
    pub fn from_config(config: Config, service: Service) -> Server {
        Server {
            config,
            reload: None,
            upgrade: None,
            handler: Handler::Builtin(service),
        }
    }

    /// Serves each connection with a protocol-v1 handler that `new` makes per connection.
    pub fn framed(mut self, new: impl NewFramed) -> Server {
        self.handler = Handler::Custom(Work::Framed {
            name: "framed",
            new: Arc::new(new),
            environment: false,
            runs: None,
        });
        self
    }

    /// Serves each connection with `handler`, which gets the connection itself.
    pub fn stream(mut self, handler: impl StreamHandler) -> Server {
        self.handler = Handler::Custom(Work::Stream(Arc::new(handler)));
        self
    }

    /// Adds an address to listen on (repeatable).
    pub fn listen(mut self, addr: Addr) -> Server {
        self.config.listen.push(addr);
        self
    }

    /// Connections served at once (default 64).
    pub fn max_children(mut self, n: u32) -> Server {
        self.config.max_children = n;
        self
    }

    /// What a connection arriving at the limit gets (default: it waits in the backlog).
    pub fn overload(mut self, overload: Overload) -> Server {
        self.config.overload = overload;
        self
    }

    /// A process or a thread per connection (default: a process).
    pub fn model(mut self, model: Model) -> Server {
        self.config.model = model;
        self
    }

    /// Largest request payload accepted (default 1 MiB); a larger header gets ERROR 1.
    pub fn max_frame(mut self, bytes: u32) -> Server {
        self.config.max_frame = bytes;
        self
    }

    /// How long a conversation may wait for a complete request (default 60 s; `None`: no
    /// limit). Past it the peer gets ERROR 7 and the connection closes.
    pub fn idle_timeout(mut self, limit: Option<Duration>) -> Server {
        self.config.idle_timeout = limit;
        self
    }

    /// End a worker older than this, whatever it is doing (fork model only).
    pub fn max_lifetime(mut self, limit: Option<Duration>) -> Server {
        self.config.max_lifetime = limit;
        self
    }

    /// On SIGTERM or SIGINT, how long running conversations may go on (default 10 s).
    pub fn grace(mut self, grace: Duration) -> Server {
        self.config.grace = grace;
        self
    }

    /// Admits clients from `net` (rules are checked in the order given; the first match wins).
    pub fn allow(mut self, net: Cidr) -> Server {
        self.config.admission.rules.push(Rule { allow: true, net });
        self
    }

    /// Refuses clients from `net` with ERROR 5, before any worker starts.
    pub fn deny(mut self, net: Cidr) -> Server {
        self.config.admission.rules.push(Rule { allow: false, net });
        self
    }

    /// Trusts the load balancers in `net`: their connections begin with a PROXY protocol
    /// header, and the client it names is the peer ([`crate::Connection::peer`]) for rules,
    /// limits and logs. The balancer is in [`crate::Connection::proxied`].
    pub fn proxy_from(mut self, net: Cidr) -> Server {
        self.config.proxy_from.push(net);
        self
    }

    /// At most `n` connections at once from one source.
    pub fn per_source(mut self, n: u32) -> Server {
        self.config.admission.per_source = Some(n);
        self
    }

    /// At most `rate.count` new connections per `rate.per` from one source.
    pub fn rate(mut self, rate: Rate) -> Server {
        self.config.admission.rate = Some(rate);
        self
    }

    /// Refuses, for a while, sources whose conversations crashed, broke the protocol or timed
    /// out (see [`crate::config::Penalty`]).
    pub fn penalty(mut self, penalty: crate::config::Penalty) -> Server {
        self.config.admission.penalty = Some(penalty);
        self
    }

    /// Makes SIGHUP a reload: `source` is called for the new configuration, which applies to
    /// connections accepted from then on (admission, limits, timeouts, the log, the listeners;
    /// running conversations keep theirs). An `Err`, an invalid configuration or a change
    /// only a restart can make (user, model, sandbox) is refused and logged, and the server
    /// goes on as it was. The handler stays the one the server was built with. Without a
    /// source, SIGHUP only reconnects the log. A process `source` starts must exec or exit,
    /// never return into the supervisor's code.
    pub fn on_reload(mut self, source: impl FnMut() -> Result<Config, String> + 'static) -> Server {
        self.reload = Some(Box::new(source));
        self
    }

    /// Makes SIGUSR2 an upgrade in place: `program` (the file at that path when the signal
    /// comes) is run with `args` and `--check`, and if that succeeds, execs with `args` in
    /// this very process, taking over its listeners, children and pidfile. The program must
    /// be one that serves with [`Server`] (the `forkd` daemon passes its own path and
    /// command line). Not with the thread model, whose threads cannot outlive the image.
    pub fn upgrade_in_place(mut self, program: PathBuf, args: Vec<std::ffi::OsString>) -> Server {
        self.upgrade = Some(crate::supervisor::UpgradePlan { program, args });
        self
    }

    /// Resource limits of each worker process.
    pub fn limits(mut self, limits: Limits) -> Server {
        self.config.limits = limits;
        self
    }

    /// Where and how much to log (default: stderr, info).
    pub fn log(mut self, log: LogOptions) -> Server {
        self.config.log = log;
        self
    }

    /// Confines each worker process before it reads a byte (see [`Sandbox`]): no_new_privs,
    /// Landlock and, for a handler of the embedder's, seccomp. The handler declares the paths
    /// it needs with [`Sandbox::read`] and [`Sandbox::write`]; anything else on the
    /// filesystem, every new socket, exec and fork are refused to it.
    ///
    /// With a handler of the embedder's, the seccomp filter is installed on the serving
    /// process itself once it starts serving, and workers inherit it: code of the embedder's
    /// that runs there afterwards (a reload source, say) has its calls outside the workers'
    /// list trapped and made again, and cannot start a program (posix_spawn is refused); an
    /// upgrade in place runs the new image under the same filter (docs/security.md, "The
    /// supervisor carries the filter").
    ///
    /// ```no_run
    /// # use forkd::{Sandbox, Server};
    /// let server = Server::new()
    ///     .sandbox(Sandbox::new().read("/usr/share/zoneinfo").write("/var/spool/upper"));
    /// ```
    pub fn sandbox(mut self, sandbox: Sandbox) -> Server {
        self.config.sandbox = Some(sandbox);
        self
    }

    /// Drop to this user once the listeners are bound.
    pub fn user(mut self, name: impl Into<String>) -> Server {
        self.config.user = Some(name.into());
        self
    }

    /// Write the supervisor's pid to `path` while serving.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Server {
        self.config.pidfile = Some(path.into());
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration, for the settings without a method of their own.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Whether the configuration is coherent (see [`Config::check`]), without serving.
    pub fn check(&self) -> Result<(), Error> {
        match &self.handler {
            Handler::Builtin(service) => self.config.check(service),
            Handler::Custom(work) => self
                .config
                .check_settings(if work.is_framed() {
                    crate::config::FRAMES_HELD_BY_HANDLER
                } else {
                    0
                })
                .and_then(|()| self.config.check_model(&Service::Echo)),
        }
        .map_err(Error)
    }

    /// Binds, drops privileges and serves until SIGTERM or SIGINT, then gives running
    /// conversations the grace period and returns. With [`Config::inetd`], serves the one
    /// connection on descriptor 0 and returns when it ends.
    ///
    /// Installs forkd's logger unless the process already has one, and a panic hook that
    /// logs panics. The calling process must be single-threaded under the fork model: a
    /// fork copies only the calling thread. Workers are forked with the clone system call,
    /// not the C library's fork: `pthread_atfork` handlers do not run in them. Under the fork
    /// model (x86_64 Linux, not [`Config::inetd`]) the supervisor serves on a stack of its
    /// own, which workers do not inherit; they run on the stack this was called on, as does the
    /// reload source. Other code of yours that the supervisor runs (a logger, a `Drop`) must
    /// not start a process with a `Command` that forks (docs/library.md says which do).
    pub fn serve(self) -> Result<(), Error> {
        self.check()?;
        let Server {
            config,
            handler,
            reload,
            upgrade,
        } = self;
        // The previous image's state, when this start is an upgrade in place: taken (and its
        // variable removed) before anything copies the environment for programs.
        let upgraded = crate::upgrade::take().map_err(Error)?;
        let work = match handler {
            Handler::Builtin(service) => Work::of(&service, config.max_frame)
                .map_err(|e| Error(format!("the program: {e}")))?,
            Handler::Custom(work) => work,
        };
        if config.inetd {
            crate::activation::protect_inetd_stderr();
        }
        crate::fds::cloexec_inherited();
        // Before forkd opens a descriptor of its own (log, pidfile, notify socket): a count
        // larger than what systemd passed must not find forkd's own sockets there.
        let handed_over = if config.inetd || upgraded.is_some() {
            None
        } else {
            crate::activation::take().map_err(Error)?
        };
        crate::isolation::lean::prepare_allocator();

        // After an upgrade in place, the table the old image's workers still fill.
        let groups_table = upgraded.as_ref().and_then(|u| u.groups_table);
        if work.runs_programs() {
            if let Some(fd) = groups_table {
                crate::isolation::groups::adopt(fd);
            }
            crate::isolation::groups::prepare(config.max_children as usize);
        } else if let Some(fd) = groups_table {
            // SAFETY: the handed-over memfd, owned by nothing else here: closed unused.
            unsafe { libc::close(fd) };
        }
        let target = crate::logging::init(config.log.clone());
        crate::logging::log_panics();
        let start = crate::supervisor::Start {
            handed_over,
            reload,
            upgrade,
            upgraded,
        };
        crate::supervisor::run(&config, work, start).map_err(|line| {
            if target == crate::logging::Target::Syslog {
                log::error!("stop reason={}", crate::logging::quote(&line));
            }
            Error(line)
        })
    }
}
