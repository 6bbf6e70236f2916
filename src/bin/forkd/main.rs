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
        // Everything a start checks before binding has been checked.
        let _ = writeln!(std::io::stdout(), "ok");
        return ExitCode::SUCCESS;
    }
    let mut server = forkd::Server::from_config(config, service.clone());
    // SIGUSR2 runs the file now at this path: the path as at start, not /proc/self/exe
    // (which names the old file, deleted once a package replaced it).
    if let Ok(program) = std::env::current_exe() {
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
