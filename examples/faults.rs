//! The fault-injection server, for tests and the fork-versus-thread comparison: a framed
//! handler that echoes, except that a DATA payload naming a fault commits it.
//!
//! | payload          | what the handler does                              |
//! |------------------|----------------------------------------------------|
//! | `panic`          | panics                                             |
//! | `abort`          | aborts the process (SIGABRT)                       |
//! | `stack-overflow` | recurses until the stack overflows (SIGSEGV)       |
//! | `spin`           | loops forever without reading or writing           |
//! | `spin-deaf`      | ignores SIGTERM, then loops forever                |
//! | `leak MIB`       | allocates and touches MIB mebibytes, never frees, answers `leaked MIB` |
//! | `open PATH`      | opens PATH for reading                             |
//! | `connect HOST:PORT` | opens a TCP connection to HOST:PORT             |
//! | `exec PROGRAM`   | runs PROGRAM (no arguments) and waits for it       |
//! | `setuid UID`     | sets its user id to UID                            |
//! | `block-log`      | makes every descriptor it holds blocking (clears O_NONBLOCK), the log's included |
//!
//! The last four answer `ok` or `denied: ERRNO` (`denied: EACCES`, `denied: EPERM`): what a
//! conversation taken over by an attacker could reach, with and without `--sandbox`.
//!
//! It takes forkd's own flags (`--listen`, `--model`, `--max-lifetime`, `--rlimit-*`,
//! `--sandbox`, `--log`, ...), parsed by forkd's command-line code, and serves with the
//! library:
//!
//! ```sh
//! cargo run --release --example faults -- --listen 127.0.0.1:7000 --log stderr --sandbox
//! ```

#[path = "../src/bin/shared/args.rs"]
mod args;
#[path = "../src/bin/forkd/cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../src/bin/forkd/file.rs"]
mod file;

use std::hint::black_box;
use std::process::ExitCode;

use forkd::{Connection, FramedHandler, Reply, Server, Service};

#[derive(Default)]
struct Faults {
    leaked: Vec<Vec<u8>>,
}

impl FramedHandler for Faults {
    fn request(&mut self, payload: &[u8], reply: Reply<'_>) {
        match payload {
            b"panic" => panic!("fault handler asked to panic"),
            b"abort" => std::process::abort(),
            b"stack-overflow" => reply.data(recurse(black_box(1)).to_string().as_bytes()),
            b"spin" => spin(),
            b"spin-deaf" => {
                // SAFETY: no handler is installed, only the disposition changed.
                let _ = unsafe {
                    nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGTERM,
                        nix::sys::signal::SigHandler::SigIgn,
                    )
                };
                spin()
            }
            other => {
                let text = std::str::from_utf8(other).unwrap_or("");
                let (command, argument) = text.split_once(' ').unwrap_or((text, ""));
                match command {
                    "leak" => self.leak(argument.as_bytes(), reply),
                    "open" => reply.data(reached(std::fs::File::open(argument)).as_bytes()),
                    "connect" => {
                        reply.data(reached(std::net::TcpStream::connect(argument)).as_bytes())
                    }
                    "exec" => reply.data(reached(run(argument)).as_bytes()),
                    "block-log" => {
                        block_descriptors();
                        reply.data(b"ok")
                    }
                    "setuid" => {
                        let uid = nix::unistd::Uid::from_raw(argument.parse().unwrap_or(0));
                        let set = nix::unistd::setuid(uid).map_err(std::io::Error::from);
                        reply.data(reached(set).as_bytes())
                    }
                    _ => reply.data(payload),
                }
            }
        }
    }
}

impl Faults {
    fn leak(&mut self, mib: &[u8], reply: Reply<'_>) {
        let Some(mib) = std::str::from_utf8(mib)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return reply.data(b"leak needs a number of MiB");
        };
        // Touch every page so the memory is really resident, not just reserved.
        self.leaked.push(vec![0xa5; mib << 20]);
        reply.data(format!("leaked {mib}").as_bytes());
    }
}

/// Clears O_NONBLOCK on descriptors 0 to 63: what a conversation taken over would do to make
/// whoever shares a log descriptor's description wait on a full pipe.
fn block_descriptors() {
    for fd in 0..64 {
        // SAFETY: F_GETFL/F_SETFL only read and set the status flags of a descriptor, if open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
}

/// `ok`, or `denied: ERRNO` with the error's name.
fn reached<T>(attempt: std::io::Result<T>) -> String {
    match attempt {
        Ok(_) => "ok".to_string(),
        Err(e) => match e.raw_os_error() {
            Some(errno) => format!("denied: {:?}", nix::errno::Errno::from_raw(errno)),
            None => format!("denied: {e}"),
        },
    }
}

/// Runs `program` and waits for it. Its standard descriptors are pipes, not /dev/null, whose
/// opening the sandbox would refuse before the exec is tried.
fn run(program: &str) -> std::io::Result<std::process::ExitStatus> {
    use std::process::Stdio;
    std::process::Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .status()
}

fn spin() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 512]);
    if frame[0] == 0 {
        return 0;
    }
    recurse(black_box(depth + 1)) + frame[511]
}

fn main() -> ExitCode {
    let (config, service, intent) = match cli::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(stop) => return stop.finish("faults"),
    };
    if intent == cli::Intent::Check {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    if service != Service::Echo {
        eprintln!("faults: serves its own handler; --handler and PROGRAM do not apply");
        return ExitCode::from(2);
    }
    let server = Server::from_config(config, service).framed(|_: &Connection| Faults::default());
    match server.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faults: {e}");
            ExitCode::from(1)
        }
    }
}
