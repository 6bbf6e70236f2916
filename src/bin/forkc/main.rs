//! forkc, the protocol-v1 client: send payloads and print the replies, or ping.

// The doc comments of the clap definitions are --help text, where `[::1]:7000` is an
// address, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

#[path = "../shared/args.rs"]
mod args;
mod cli;

use std::io::{self, BufRead, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::FromArgMatches;

use forkd::client::{ServerError, connect};
use forkd::frame::{Frame, FrameReader, Kind, write_frame};
use forkd::{Addr, Stream};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let parsed = cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return args::clap_error(e).finish("forkc"),
    };
    let Some(addr) = cli.connect.clone() else {
        eprintln!("forkc: --connect ADDR is required");
        return ExitCode::from(2);
    };
    if let Command::Bench {
        workload,
        connections,
        requests,
        duration,
        size,
        depth,
        json,
    } = &cli.command
    {
        use std::io::IsTerminal;
        let report = forkd::client::bench::run(forkd::client::bench::BenchConfig {
            addr,
            workload: *workload,
            connections: *connections as usize,
            requests: match (requests, duration) {
                (None, None) => Some(10_000),
                (r, _) => *r,
            },
            duration: *duration,
            size: *size as usize,
            depth: *depth as usize,
            timeout: cli.timeout,
            progress: !json && io::stderr().is_terminal(),
        });
        print!(
            "{}",
            if *json {
                report.json() + "\n"
            } else {
                report.text()
            }
        );
        if report.error_count() > 0 {
            eprintln!("forkc: failed requests: {}", report.error_count());
            return ExitCode::from(1);
        }
        return ExitCode::SUCCESS;
    }
    let result = connect(&addr, cli.timeout).and_then(|stream| match &cli.command {
        Command::Send {
            payloads,
            files,
            raw,
        } => send(stream, payloads, files, *raw, cli.max_frame),
        Command::Ping { count } => ping(stream, &addr, *count, cli.max_frame),
        Command::Bench { .. } => unreachable!("bench connects by itself"),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("forkc: {line}");
            ExitCode::from(1)
        }
    }
}

/// Payloads from the command line, `-` standing for the lines of stdin, then each file whole
/// (`-`: all of stdin).
fn payloads<'a>(
    args: &'a [String],
    files: &'a [std::path::PathBuf],
) -> impl Iterator<Item = Result<Vec<u8>, String>> + 'a {
    let from_args = args
        .iter()
        .flat_map(|arg| -> Box<dyn Iterator<Item = io::Result<Vec<u8>>>> {
            if arg == "-" {
                Box::new(io::stdin().lock().split(b'\n'))
            } else {
                Box::new(std::iter::once(Ok(arg.as_bytes().to_vec())))
            }
        })
        .map(|line| line.map_err(|e| format!("reading stdin: {e}")));
    let from_files = files.iter().map(|path| {
        let whole = if path.as_os_str() == "-" {
            let mut all = Vec::new();
            io::Read::read_to_end(&mut io::stdin().lock(), &mut all).map(|_| all)
        } else {
            std::fs::read(path)
        };
        whole.map_err(|e| format!("{}: {e}", path.display()))
    });
    from_args.chain(from_files)
}

/// Writes every request from one thread while this one reads replies, so any number of
/// pipelined frames flows without either side's buffers filling up; then half-closes, and the
/// server's EOF after the last reply ends the conversation.
fn send(
    stream: Stream,
    args: &[String],
    files: &[std::path::PathBuf],
    raw: bool,
    max_frame: u32,
) -> Result<(), String> {
    let from_stdin = args.iter().filter(|a| *a == "-").count()
        + files.iter().filter(|f| f.as_os_str() == "-").count();
    if from_stdin > 1 {
        return Err("stdin can be read once: give - or --file - once".to_string());
    }
    let mut writer = clone(&stream)?;
    let (args, files) = (args.to_vec(), files.to_vec());
    // Ok(sent), or Err((whether the input failed, why)).
    let sender = std::thread::spawn(move || -> Result<u64, (bool, String)> {
        let mut sent = 0u64;
        for payload in payloads(&args, &files) {
            let payload = match payload {
                Ok(payload) => payload,
                Err(why) => {
                    // What was sent is still answered; the server sees the end and closes.
                    let _ = writer.shutdown(Shutdown::Write);
                    return Err((true, why));
                }
            };
            write_frame(&mut writer, Kind::Data, &payload)
                .map_err(|e| (false, format!("sending: {e}")))?;
            sent += 1;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| (false, format!("half-closing: {e}")))?;
        Ok(sent)
    });
    let mut reader = FrameReader::new(stream, max_frame);
    let mut out = io::stdout().lock();
    let mut received = 0u64;
    let read_result = loop {
        match reader.next_frame() {
            Ok(Some(frame)) if frame.kind == Kind::Data => {
                received += 1;
                out.write_all(&frame.payload)
                    .and_then(|()| if raw { Ok(()) } else { out.write_all(b"\n") })
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("writing stdout: {e}"))?;
            }
            Ok(Some(frame)) => break Err(unexpected(&frame)),
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("reading reply: {e}")),
        }
    };
    let sent = sender
        .join()
        .map_err(|_| "sender thread panicked".to_string())?;
    // A payload that could not be read explains itself; otherwise the server's ERROR explains
    // a failed send better than the EPIPE it caused.
    if let Err((true, why)) = sent {
        return Err(why);
    }
    read_result?;
    let sent = sent.map_err(|(_, why)| why)?;
    if received != sent {
        return Err(format!(
            "connection closed by server after {received} of {sent} replies"
        ));
    }
    Ok(())
}

fn ping(stream: Stream, addr: &Addr, count: u64, max_frame: u32) -> Result<(), String> {
    let mut reader = FrameReader::new(stream, max_frame);
    let mut times = Vec::new();
    for seq in 1..=count {
        let payload = seq.to_be_bytes();
        let started = Instant::now();
        write_frame(reader.get_mut(), Kind::Ping, &payload).map_err(|e| format!("sending: {e}"))?;
        let reply = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err("connection closed by server before PONG".to_string()),
            Err(e) => return Err(format!("reading reply: {e}")),
        };
        let rtt = started.elapsed();
        if reply.kind != Kind::Pong {
            return Err(unexpected(&reply));
        }
        if reply.payload != payload {
            return Err(format!("PONG payload differs from PING's (seq={seq})"));
        }
        println!("pong from {addr} seq={seq} time={:.3} ms", ms(rtt));
        times.push(rtt);
    }
    if count > 1 {
        let total: Duration = times.iter().sum();
        println!(
            "{count} pings, min/avg/max = {:.3}/{:.3}/{:.3} ms",
            ms(*times.iter().min().expect("count > 1")),
            ms(total) / count as f64,
            ms(*times.iter().max().expect("count > 1"))
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unexpected(frame: &Frame) -> String {
    match ServerError::from_frame(frame) {
        Some(e) => e.to_string(),
        None => format!("unexpected {} frame from server", frame.kind.name()),
    }
}

fn clone(stream: &Stream) -> Result<Stream, String> {
    stream
        .try_clone()
        .map_err(|e| format!("cannot share the connection: {e}"))
}
