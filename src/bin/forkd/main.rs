//! forkd, the daemon: parse the command line into the library's configuration, serve it, and
//! turn any start-up failure into one line and an exit status.

// The doc comments of the clap definitions are --help text, where `[::1]:7000` is an
// address, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

#[path = "../shared/args.rs"]
mod args;
mod cli;
mod file;

use std::io::Write;
use std::process::ExitCode;

/// A worker's first allocations from memory of its own (forkd::WorkerAllocator says why).
#[global_allocator]
static ALLOCATOR: forkd::WorkerAllocator = forkd::WorkerAllocator;

fn main() -> ExitCode {
    // Under inetd, descriptor 2 may be the connection itself: before anything can be said on
    // it (a bad flag, a refused setting), it must point elsewhere.
    if std::env::args_os().any(|a| a == "--inetd") {
        forkd::protect_inetd_stderr();
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (config, service, intent) = match cli::parse(argv.clone()) {
        Ok(parsed) => parsed,
        Err(stop) => return stop.finish("forkd"),
    };
    // `inetd = true` in a --config file: from here on. (A bad file is reported before this is
    // known, so inetd.conf lines give --inetd themselves.)
    if config.inetd {
        forkd::protect_inetd_stderr();
    }
    if intent == cli::Intent::Check {
        // Everything a start checks before binding has been checked. The forkd this one is
        // to replace in place also learns that this one can take it over.
        let takes_over = match std::env::var_os(forkd::UPGRADE_CHECK_ENV) {
            Some(_) => format!(" upgrade-state={}", forkd::UPGRADE_STATE_VERSION),
            None => String::new(),
        };
        let _ = writeln!(std::io::stdout(), "ok{takes_over}");
        return ExitCode::SUCCESS;
    }
    let mut server = forkd::Server::from_config(config, service.clone());
    if let Some(program) = invoked_as(&argv[0]) {
        server = server.upgrade_in_place(program, argv[1..].to_vec());
    }
    // With a file, SIGHUP reads it again (and the command line, which still overrides it).
    if cli::has_config_file(&argv) {
        server = server.on_reload(move || {
            let (config, now) = cli::reparse(&argv)?;
            if now != service {
                return Err("the handler or its program changed: that takes a restart".into());
            }
            Ok(config)
        });
    }
    match server.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            // Always on stderr, where whoever started forkd looks (the library has logged it
            // to syslog too if that is where the rest of the log goes).
            args::say_error("forkd", &line.to_string());
            ExitCode::from(1)
        }
    }
}

/// The path forkd was started by, for SIGUSR2 to run the file there then: as given (made
/// absolute), or as found on PATH. Not /proc/self/exe, which names the file itself: through
/// a symbolic link switched to a new version, or after a package replaced the file, that is
/// the old one.
fn invoked_as(argv0: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    let given = std::path::Path::new(argv0);
    if given.components().count() > 1 {
        return std::path::absolute(given).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(given))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::path::absolute(found).ok())
        .or_else(|| std::env::current_exe().ok())
}
