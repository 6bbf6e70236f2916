//! forkd, the daemon: parse the command line, set up the log, hand over to the supervisor,
//! and turn any start-up failure into one line and an exit status.

use std::process::ExitCode;

use forkd::cli;
use forkd::logging::{self, Target};

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args_os()) {
        Ok(config) => config,
        Err(stop) => return stop.finish("forkd"),
    };
    if config.listen.is_empty() && !config.inetd && !forkd::activation::offered() {
        return cli::Stop::Invalid(forkd::supervisor::NO_ADDRESS.to_string()).finish("forkd");
    }
    if config.inetd {
        forkd::activation::protect_inetd_stderr();
    }
    forkd::fds::cloexec_inherited();
    forkd::child::prepare_allocator();
    let target = logging::init(config.log.clone());
    logging::log_panics();
    match forkd::supervisor::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            // Always on stderr, where whoever started forkd looks; in syslog too if that is
            // where the rest of the log goes.
            eprintln!("forkd: {line}");
            if target == Target::Syslog {
                log::error!("stop reason={}", logging::quote(&line));
            }
            ExitCode::from(1)
        }
    }
}
