//! Soak: minutes of mixed good and hostile traffic against a real forkd on loopback, with the
//! supervisor's RSS, descriptors and children sampled at start, during, and at the end.
//!
//! Run with `scripts/soak [--seconds N]` (it builds in release mode first). Bounded in time
//! and in connections; stops by itself; talks to 127.0.0.0/8 only.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forkd::Stream;
use forkd::frame::{Frame, FrameReader, Kind};

/// The traffic mix, one kind per worker.
#[derive(Clone, Copy, Debug)]
enum Traffic {
    /// Ten requests and a clean half-close; every reply checked.
    Conversation,
    /// 100 frames pipelined, then the replies.
    Pipelined,
    /// Random bytes, then close or reset.
    Garbage,
    /// Half a frame, then a half-close.
    HalfFrame,
    /// A whole frame, then an abortive close (RST).
    Reset,
    /// From a denied address: ERROR 5 expected.
    Denied,
    /// Faster than --rate allows from one address: some ERROR 6 expected.
    Flood,
    /// One byte a second: cut off by --idle-timeout.
    Slowloris,
}

/// Each worker's source addresses: a `127.X.0.` prefix cycled over 250 hosts, so --rate and
/// --per-source meet only the traffic aimed at them; a full address stays fixed.
const MIX: [(Traffic, &str); 10] = [
    (Traffic::Conversation, "127.11.0."),
    (Traffic::Conversation, "127.12.0."),
    (Traffic::Pipelined, "127.13.0."),
    (Traffic::Garbage, "127.14.0."),
    (Traffic::HalfFrame, "127.15.0."),
    (Traffic::Reset, "127.16.0."),
    (Traffic::Denied, "127.0.0.66"),
    (Traffic::Flood, "127.0.0.77"),
    (Traffic::Slowloris, "127.18.0."),
    (Traffic::Slowloris, "127.19.0."),
];

fn source_for(prefix: &str, n: u64) -> String {
    if prefix.ends_with('.') {
        format!("{prefix}{}", 1 + n % 250)
    } else {
        prefix.to_string()
    }
}

/// A hard cap on connections per worker, whatever the duration.
const MAX_CONNECTIONS_PER_WORKER: u64 = 200_000;

#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    good_ok: AtomicU64,
    good_failed: AtomicU64,
    good_refused: AtomicU64,
    errors_by_code: Mutex<[u64; 10]>,
}

#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    children: usize,
    zombies: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = flag(&args, "--seconds").unwrap_or(180);
    let forkd = flag::<String>(&args, "--forkd").unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/forkd").to_string()
    });
    let (mut server, addr) = start_forkd(&forkd);
    let pid = server.id() as i32;
    std::thread::sleep(Duration::from_millis(300));
    let start = sample(pid);
    let peak = Arc::new(Mutex::new(start));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let workers: Vec<_> = MIX
        .iter()
        .enumerate()
        .map(|(i, (traffic, source))| {
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            let (traffic, source) = (*traffic, source.to_string());
            std::thread::spawn(move || {
                let mut noise = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                for n in 0..MAX_CONNECTIONS_PER_WORKER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tally.connections.fetch_add(1, Ordering::Relaxed);
                    run(
                        traffic,
                        &source_for(&source, n),
                        addr,
                        &tally,
                        &mut noise,
                        n,
                    );
                }
            })
        })
        .collect();

    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = sample(pid);
        let mut p = peak.lock().unwrap();
        p.rss_kib = p.rss_kib.max(now.rss_kib);
        p.fds = p.fds.max(now.fds);
        p.children = p.children.max(now.children);
        p.zombies = p.zombies.max(now.zombies);
        if last_report.elapsed() >= Duration::from_secs(30) {
            eprintln!(
                "soak: {}s left, {} connections, rss {} KiB, fds {}, children {}",
                deadline.saturating_duration_since(Instant::now()).as_secs(),
                tally.connections.load(Ordering::Relaxed),
                now.rss_kib,
                now.fds,
                now.children
            );
            last_report = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    // Let the last children end (idle timeout 2 s, drains 1 s).
    let settle = Instant::now() + Duration::from_secs(10);
    while sample(pid).children > 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = sample(pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = server.wait().unwrap();

    let peak = *peak.lock().unwrap();
    let codes = *tally.errors_by_code.lock().unwrap();
    println!("soak: {seconds} s of mixed traffic against {addr}");
    println!();
    println!("| supervisor | start | peak | end |");
    println!("|---|---|---|---|");
    println!(
        "| RSS (KiB) | {} | {} | {} |",
        start.rss_kib, peak.rss_kib, end.rss_kib
    );
    println!(
        "| descriptors | {} | {} | {} |",
        start.fds, peak.fds, end.fds
    );
    println!(
        "| children | {} | {} | {} |",
        start.children, peak.children, end.children
    );
    println!(
        "| zombies | {} | {} | {} |",
        start.zombies, peak.zombies, end.zombies
    );
    println!();
    println!(
        "connections: {}; good conversations: {} ok, {} refused by a limit, {} failed; \
         ERROR frames received by code: {}",
        tally.connections.load(Ordering::Relaxed),
        tally.good_ok.load(Ordering::Relaxed),
        tally.good_refused.load(Ordering::Relaxed),
        tally.good_failed.load(Ordering::Relaxed),
        (1..10)
            .filter(|c| codes[*c] > 0)
            .map(|c| format!("{c}={}", codes[c]))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("forkd exit: {status}");
    let healthy = tally.good_failed.load(Ordering::Relaxed) == 0
        && end.children == 0
        && end.zombies == 0
        && end.fds == start.fds
        && status.success();
    if !healthy {
        eprintln!("soak: FAILED");
        std::process::exit(1);
    }
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// The hardened command line of docs/security.md, on a kernel-chosen loopback port.
fn start_forkd(path: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(path)
        .args(["--listen", "127.0.0.1:0", "--log", "stderr", "-q"])
        .args(["--max-children", "128", "--idle-timeout", "2"])
        .args([
            "--max-lifetime",
            "60",
            "--per-source",
            "32",
            "--rate",
            "50/1",
        ])
        .args(["--deny", "127.0.0.66", "--overload", "reject"])
        .args([
            "--rlimit-as",
            "512M",
            "--rlimit-nofile",
            "64",
            "--max-frame",
            "64K",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {path}: {e} (run scripts/soak)"));
    let pid = child.id();
    // -q hides the start line: find the port from the socket table.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(port) = listening_port(pid) {
            return (child, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            panic!("forkd did not start listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of the listening socket of `pid`, from /proc.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(String::from)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // State 0A is LISTEN.
        if cols.get(3) == Some(&"0A") && inodes.iter().any(|i| cols.get(9) == Some(&i.as_str())) {
            u16::from_str_radix(cols[1].rsplit(':').next()?, 16).ok()
        } else {
            None
        }
    })
}

fn sample(pid: i32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let (mut children, mut zombies) = (0, 0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        if f.next().and_then(|p| p.parse::<i32>().ok()) == Some(pid) {
            children += 1;
            zombies += usize::from(state == "Z");
        }
    }
    Sample {
        rss_kib,
        fds,
        children,
        zombies,
    }
}

fn next(noise: &mut u64) -> u64 {
    *noise ^= *noise >> 12;
    *noise ^= *noise << 25;
    *noise ^= *noise >> 27;
    noise.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Reads frames until EOF, counting ERROR codes.
fn read_errors(reader: &mut FrameReader<Stream>, tally: &Tally) {
    while let Ok(Some(frame)) = reader.next_frame() {
        if let Some((code, _)) = frame.error_parts() {
            tally.errors_by_code.lock().unwrap()[usize::from(code).min(9)] += 1;
        }
    }
}

fn run(traffic: Traffic, source: &str, addr: SocketAddr, tally: &Tally, noise: &mut u64, n: u64) {
    let (Ok(source), SocketAddr::V4(target)) = (source.parse(), addr) else {
        unreachable!("IPv4 loopback only")
    };
    let Ok(s) = forkd::client::connect_from(source, target, Duration::from_secs(10)) else {
        std::thread::sleep(Duration::from_millis(10));
        return;
    };
    let mut reader = FrameReader::new(Stream::Tcp(s), 1 << 20);
    match traffic {
        Traffic::Conversation | Traffic::Pipelined => {
            let count = if matches!(traffic, Traffic::Pipelined) {
                100
            } else {
                10
            };
            match conversation(&mut reader, n, count, matches!(traffic, Traffic::Pipelined)) {
                Ok(()) => tally.good_ok.fetch_add(1, Ordering::Relaxed),
                // Refused by a limit (busy, rate): the server said so, as it should.
                Err(Some(code)) => {
                    tally.errors_by_code.lock().unwrap()[usize::from(code).min(9)] += 1;
                    tally.good_refused.fetch_add(1, Ordering::Relaxed)
                }
                Err(None) => tally.good_failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        Traffic::Garbage => {
            let len = (next(noise) % 4096) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next(noise) as u8).collect();
            let _ = reader.get_mut().write_all(&bytes);
            let _ = reader.get_mut().shutdown(Shutdown::Write);
            read_errors(&mut reader, tally);
        }
        Traffic::HalfFrame => {
            let frame = Frame::new(Kind::Data, vec![b'h'; 100]).encode();
            let cut = 1 + (next(noise) as usize % (frame.len() - 1));
            let _ = reader.get_mut().write_all(&frame[..cut]);
            let _ = reader.get_mut().shutdown(Shutdown::Write);
            read_errors(&mut reader, tally);
        }
        Traffic::Reset => {
            let _ = reader
                .get_mut()
                .write_all(&Frame::new(Kind::Data, vec![b'r'; 500]).encode());
            let Stream::Tcp(s) = reader.into_inner() else {
                unreachable!()
            };
            forkd::client::reset(s);
        }
        Traffic::Denied | Traffic::Flood => {
            let _ = reader
                .get_mut()
                .write_all(&Frame::new(Kind::Data, b"let me in".to_vec()).encode());
            let _ = reader.get_mut().shutdown(Shutdown::Write);
            read_errors(&mut reader, tally);
        }
        Traffic::Slowloris => {
            let frame = Frame::new(Kind::Data, vec![b's'; 50]).encode();
            for b in frame {
                if reader.get_mut().write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            read_errors(&mut reader, tally);
        }
    }
}

/// `count` requests, one at a time or pipelined, each reply checked byte for byte. Err with
/// the code when a limit refused the connection, Err(None) for any other failure.
fn conversation(
    reader: &mut FrameReader<Stream>,
    n: u64,
    count: u64,
    pipelined: bool,
) -> Result<(), Option<u16>> {
    let payload = |i: u64| format!("{n}:{i}").into_bytes();
    if pipelined {
        let batch: Vec<u8> = (0..count)
            .flat_map(|i| Frame::new(Kind::Data, payload(i)).encode())
            .collect();
        // A refused peer may see its write fail; the ERROR is still there to read.
        let _ = reader.get_mut().write_all(&batch);
    }
    for i in 0..count {
        if !pipelined {
            let _ = forkd::frame::write_frame(reader.get_mut(), Kind::Data, &payload(i));
        }
        match reader.next_frame() {
            Ok(Some(f)) if f.kind == Kind::Data && f.payload == payload(i) => {}
            Ok(Some(f)) if i == 0 => {
                return match f.error_parts() {
                    Some((code @ (4 | 6), _)) => Err(Some(code)),
                    _ => Err(None),
                };
            }
            _ => return Err(None),
        }
    }
    let _ = reader.get_mut().shutdown(Shutdown::Write);
    match reader.next_frame() {
        Ok(None) => Ok(()),
        _ => Err(None),
    }
}
