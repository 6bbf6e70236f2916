//! Siege: forkd under the attacks docs/security.md names, each measured by what it does to
//! well-behaved clients. A real forkd (release build) on loopback; per scenario, attackers
//! from one address and good clients from others, for a bounded window; then a table row.
//!
//! | scenario | attack |
//! |---|---|
//! | `baseline` | none: the good clients alone, every line logged (to stderr, discarded) |
//! | `slowloris` | 200 connections from one address, each dribbling a frame at one byte a second |
//! | `slowloris-per-source` | the same against `--per-source 8` |
//! | `slow-readers` | 64 clients that ask for 16 MiB and take it at 640 KiB/s (25 s a reply) |
//! | `stuck-log` | a syslog socket that stopped reading (its queue full from the start) |
//! | `flood-one` | 1,000 dribbling connections from one address, `--idle-timeout 3` |
//! | `flood-one-penalty` | the same with `--penalty timeout=60s` |
//! | `flood-one-early-drop` | the same with `--early-drop 16:30` |
//! | `flood-many` | 1,000 dribbling connections from 1,000 addresses, `--idle-timeout 3 --per-source 8 --overload reject` |
//! | `flood-many-penalty` | the same with `--penalty timeout=60s` |
//! | `flood-many-early-drop` | the same with `--early-drop 16:30` |
//! | `flood-many-netblock` | the same with `--penalty timeout=60s --per-source-prefix 24:64` (the 1,000 addresses are four /24s) |
//!
//! Good clients: two threads, each one conversation (connect, echo 64 bytes, close) after
//! another, a conversation that takes over 3 s counted as failed. Every server runs with
//! `--max-children 64 --idle-timeout 5` (3 for the floods).
//!
//! Run with `scripts/siege [--seconds N] [--forkd PATH] [SCENARIO...]` (it builds in release
//! mode first; `--forkd` measures another build, an older one say).
//! Bounded in time and connections; stops by itself; talks to 127.0.0.0/8 only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use forkd::frame::{Frame, Kind};

const GOOD_TIMEOUT: Duration = Duration::from_secs(3);
const SCENARIOS: [&str; 12] = [
    "baseline",
    "slowloris",
    "slowloris-per-source",
    "slow-readers",
    "stuck-log",
    "flood-one",
    "flood-one-penalty",
    "flood-one-early-drop",
    "flood-many",
    "flood-many-penalty",
    "flood-many-early-drop",
    "flood-many-netblock",
];

/// Dribbling connections of the flood scenarios.
const FLOOD: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(20)
        .clamp(2, 600);
    let forkd = args
        .iter()
        .position(|a| a == "--forkd")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/forkd").into());
    let forkd = forkd.as_str();
    let chosen: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| args.iter().any(|a| a == s))
        .collect();
    let chosen = if chosen.is_empty() {
        SCENARIOS.to_vec()
    } else {
        chosen
    };
    let window = Duration::from_secs(seconds);
    println!("siege: {seconds} s per scenario; good clients: 2 threads of one-echo conversations");
    println!();
    println!(
        "| scenario | good conversations | failed | p50 ms | p99 ms | children at the end | attack | supervisor CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for scenario in chosen {
        let row = run(forkd, scenario, window);
        println!(
            "| {scenario} | {} | {} | {:.2} | {:.2} | {} | {} | {:.2} |",
            row.good.ok,
            row.good.failed,
            row.good.p50,
            row.good.p99,
            row.children,
            row.attack,
            row.cpu
        );
    }
}

struct Row {
    good: GoodTally,
    attack: String,
    cpu: f64,
    /// The supervisor's children as the window closes, the attack still on.
    children: usize,
}

fn run(forkd: &str, scenario: &str, window: Duration) -> Row {
    let dir = std::env::temp_dir().join(format!("forkd-siege-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The floods are measured as the attacks they stand for were: with a 3 s idle limit.
    let idle = if scenario.starts_with("flood-") {
        "3"
    } else {
        "5"
    };
    let mut args: Vec<String> = ["--max-children", "64", "--idle-timeout", idle, "-q"]
        .map(String::from)
        .to_vec();
    let mut syslog = None;
    if scenario.starts_with("flood-many") {
        args.extend(["--per-source", "8", "--overload", "reject"].map(String::from));
    }
    if scenario.ends_with("-penalty") || scenario.ends_with("-netblock") {
        args.extend(["--penalty", "timeout=60s"].map(String::from));
    }
    if scenario.ends_with("-netblock") {
        args.extend(["--per-source-prefix", "24:64"].map(String::from));
    }
    if scenario.ends_with("-early-drop") {
        args.extend(["--early-drop", "16:30"].map(String::from));
    }
    match scenario {
        "slowloris-per-source" => args.extend(["--per-source", "8"].map(String::from)),
        "slow-readers" => args.extend(["--max-frame", "20M"].map(String::from)),
        // Every accept and end line logged, as in stuck-log, but to a sink that takes them.
        "baseline" => args.retain(|a| a != "-q"),
        "stuck-log" => {
            let path = dir.join("log.sock");
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).unwrap();
            fill(&path);
            args.extend(["--log".into(), "syslog".into()]);
            args.extend(["--syslog-socket".into(), path.display().to_string()]);
            // Not quiet: every accept and end line is one more the sink cannot take.
            args.retain(|a| a != "-q");
            syslog = Some(socket);
        }
        _ => {}
    }
    if syslog.is_none() {
        args.extend(["--log", "stderr"].map(String::from));
    }
    let (mut server, addr) = start(forkd, &args);
    let pid = server.id() as i32;
    let cpu_before = cpu_seconds(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let attackers = attack(scenario, addr, &stop);
    // Let the attack take hold before the good clients come.
    std::thread::sleep(Duration::from_secs(2).min(window / 4));
    let good = good_clients(addr, window, &stop);
    let children = children_of(pid);
    stop.store(true, Ordering::Relaxed);
    let attack = attackers.join().unwrap();
    let cpu = cpu_seconds(pid) - cpu_before;
    let stopped = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = server.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = server.wait();
    let attack = if syslog.is_some() {
        format!(
            "{attack}; stopped {:.2} s after SIGTERM",
            stopped.elapsed().as_secs_f64()
        )
    } else {
        attack
    };
    drop(syslog);
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        good,
        attack,
        cpu,
        children,
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: i32) -> usize {
    let parent = format!(" {pid} ");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // After "pid (comm) state": the parent pid.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| format!(" {p} ")))
                .is_some_and(|p| p == parent)
        })
        .count()
}

/// Fills the datagram socket's queue until a send would wait.
fn fill(path: &std::path::Path) {
    let sender = UnixDatagram::unbound().unwrap();
    sender.connect(path).unwrap();
    sender.set_nonblocking(true).unwrap();
    for _ in 0..100_000 {
        if sender.send(b"filler").is_err() {
            return;
        }
    }
}

fn start(forkd: &str, args: &[String]) -> (Child, SocketAddr) {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(forkd)
        .args(["--listen", &addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {forkd}: {e} (run scripts/siege)"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "forkd did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// Connects from the loopback address `source`.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let target = match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("loopback IPv4 only"),
    };
    forkd::client::connect_from(source.into(), target, GOOD_TIMEOUT)
}

/// Starts the attack of `scenario`; the handle gives a summary once `stop` is set.
fn attack(
    scenario: &str,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<String> {
    let stop = Arc::clone(stop);
    match scenario {
        "slowloris" | "slowloris-per-source" => {
            std::thread::spawn(move || slowloris(addr, &stop, &[[127, 0, 0, 2]], 200))
        }
        s if s.starts_with("flood-one") => {
            std::thread::spawn(move || slowloris(addr, &stop, &[[127, 0, 0, 2]], FLOOD))
        }
        s if s.starts_with("flood-many") => {
            // 127.1.0.1 onwards: another address for each connection.
            let sources: Vec<[u8; 4]> = (0..FLOOD)
                .map(|i| [127, 1, (i / 250) as u8, (i % 250 + 1) as u8])
                .collect();
            std::thread::spawn(move || slowloris(addr, &stop, &sources, FLOOD))
        }
        "slow-readers" => std::thread::spawn(move || slow_readers(addr, &stop, 64)),
        "stuck-log" => std::thread::spawn(|| "a syslog socket that reads nothing".to_string()),
        _ => std::thread::spawn(|| "none".to_string()),
    }
}

/// `count` connections, the i-th from `sources[i % len]`, each sending a frame one byte a
/// second; a closed one is opened again. Counts how many the server cut off or refused.
fn slowloris(addr: SocketAddr, stop: &AtomicBool, sources: &[[u8; 4]], count: usize) -> String {
    let frame = Frame::new(Kind::Data, vec![b'x'; 100]).encode();
    let mut conns: Vec<Option<(TcpStream, usize)>> = (0..count).map(|_| None).collect();
    let (mut opened, mut cut) = (0u64, 0u64);
    let mut tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (i, slot) in conns.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if slot.is_none()
                && let Ok(s) = connect_from(sources[i % sources.len()], addr)
            {
                let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                opened += 1;
                *slot = Some((s, 0));
            }
        }
        if tick.elapsed() >= Duration::from_secs(1) {
            tick = Instant::now();
            for slot in conns.iter_mut() {
                let Some((stream, sent)) = slot else { continue };
                let byte = frame[*sent % frame.len()];
                if stream.write_all(&[byte]).is_err() || peer_closed(stream) {
                    cut += 1;
                    *slot = None;
                } else {
                    *sent += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let from = match sources.len() {
        1 => "one address".to_string(),
        n => format!("{n} addresses"),
    };
    format!("{count} dribbling connections from {from}; {opened} opened, {cut} cut off or refused")
}

/// Whether the server has closed (or answered on) `stream`, without waiting.
fn peer_closed(stream: &mut TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut byte = [0u8; 64];
    let closed =
        !matches!(stream.read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = stream.set_nonblocking(false);
    closed
}

/// `count` clients from 127.0.0.4 that each ask for a 16 MiB echo (far more than the socket
/// buffers hold) and take it at 128 KiB every 200 ms: every write of the reply makes some
/// progress, and a whole reply takes 25 s. A client whose connection ends starts again.
/// Whether they still hold workers shows in the supervisor's children.
fn slow_readers(addr: SocketAddr, stop: &Arc<AtomicBool>, count: usize) -> String {
    let started = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (stop, started) = (Arc::clone(stop), Arc::clone(&started));
            std::thread::spawn(move || {
                let request = Frame::new(Kind::Data, vec![7u8; 16 << 20]).encode();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect_from([127, 0, 0, 4], addr) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    started.fetch_add(1, Ordering::Relaxed);
                    let writer = s.try_clone().map(|mut w| {
                        let request = request.clone();
                        std::thread::spawn(move || {
                            let _ = w.write_all(&request);
                        })
                    });
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = vec![0u8; 128 << 10];
                    let mut last_read = Instant::now() - Duration::from_secs(3);
                    while !stop.load(Ordering::Relaxed) {
                        if last_read.elapsed() < Duration::from_millis(200) {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        last_read = Instant::now();
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    if let Ok(w) = writer {
                        let _ = w.join();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    format!(
        "{count} readers of 16 MiB replies at 640 KiB/s; {} requests",
        started.load(Ordering::Relaxed)
    )
}

#[derive(Default, Clone)]
struct GoodTally {
    ok: u64,
    failed: u64,
    p50: f64,
    p99: f64,
}

/// Two threads of one-echo conversations from 127.0.0.3 and 127.0.0.5 for `window`.
fn good_clients(addr: SocketAddr, window: Duration, stop: &Arc<AtomicBool>) -> GoodTally {
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + window;
    let threads: Vec<_> = [[127, 0, 0, 3], [127, 0, 0, 5]]
        .into_iter()
        .map(|source| {
            let (failed, latencies, stop) = (
                Arc::clone(&failed),
                Arc::clone(&latencies),
                Arc::clone(stop),
            );
            std::thread::spawn(move || {
                let payload = vec![b'g'; 64];
                for _ in 0..1_000_000 {
                    if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let began = Instant::now();
                    match converse(source, addr, &payload) {
                        Ok(()) if began.elapsed() <= GOOD_TIMEOUT => {
                            latencies.lock().unwrap().push(began.elapsed())
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    GoodTally {
        ok: latencies.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn converse(source: [u8; 4], addr: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut s = connect_from(source, addr)?;
    s.set_read_timeout(Some(GOOD_TIMEOUT))?;
    s.set_write_timeout(Some(GOOD_TIMEOUT))?;
    s.write_all(&Frame::new(Kind::Data, payload.to_vec()).encode())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let expected = Frame::new(Kind::Data, payload.to_vec()).encode();
    if reply == expected {
        Ok(())
    } else {
        Err(std::io::Error::other("wrong reply"))
    }
}

/// User and system CPU seconds of `pid` (not its children).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}
