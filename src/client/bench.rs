//! `forkc bench`: a load generator for protocol v1 against any address.
//!
//! Workloads: `churn` (connect, one request, reply, close: the cost of a connection),
//! `persistent` (C connections sending requests back to back), `pipelined` (each sending K
//! requests per write, with at most two such batches unanswered), `hold` (N idle connections, to measure memory). Every run is bounded
//! by a request count or a duration. Every reply is checked byte for byte: each request
//! carries its own sequence number. Latencies go into an HdrHistogram (microseconds).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::Stream;
use crate::addr::Addr;
use crate::client::connect;
use crate::frame::{Frame, FrameReader, HEADER_LEN, Kind, header, write_frame};

/// What the load looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Connect, one request, close: the cost of a connection.
    Churn,
    /// One connection each, request and reply in turn.
    Persistent,
    /// One connection each, `depth` requests per write, replies read as they come.
    Pipelined,
    /// Open connections and keep them, idle: the cost of a held connection.
    Hold,
}

impl Workload {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::Persistent => "persistent",
            Workload::Pipelined => "pipelined",
            Workload::Hold => "hold",
        }
    }
}

/// A load to generate.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server.
    pub addr: Addr,
    /// The kind of load.
    pub workload: Workload,
    /// Client threads, each with its own connection at a time.
    pub connections: usize,
    /// Total requests (all connections together); with `duration`, whichever ends first.
    pub requests: Option<u64>,
    /// How long to run; with `requests`, whichever ends first.
    pub duration: Option<Duration>,
    /// Bytes of each request payload.
    pub size: usize,
    /// Requests per write for the pipelined load.
    pub depth: usize,
    /// Limit on every connect, read and write.
    pub timeout: Duration,
    /// Show progress on stderr.
    pub progress: bool,
}

/// What a run measured.
pub struct Report {
    /// The load it ran.
    pub config: BenchConfig,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Requests answered and verified.
    pub requests: u64,
    /// Connections opened.
    pub connections: u64,
    /// Payload bytes sent and received back.
    pub bytes: u64,
    /// Failures by kind, with their counts.
    pub errors: BTreeMap<String, u64>,
    /// Request latencies, in microseconds.
    pub latency: Histogram<u64>,
}

/// State the workers share.
struct Shared {
    config: BenchConfig,
    issued: AtomicU64,
    deadline: Option<Instant>,
    stop: AtomicBool,
    done: AtomicU64,
    connections: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Takes the next request's sequence number, or `None` when the run is over.
    fn ticket(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.config.requests {
            Some(max) if n >= max => None,
            _ => Some(n),
        }
    }

    fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().unwrap().entry(kind.into()).or_insert(0) += 1;
    }
}

/// The request with sequence number `seq`: the number, then filler up to `size` bytes.
fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.resize(size.max(8), b'.');
    p.truncate(size.max(8));
    p
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Runs the workload to its bound.
pub fn run(config: BenchConfig) -> Report {
    let shared = Arc::new(Shared {
        deadline: config.duration.map(|d| Instant::now() + d),
        config: config.clone(),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });
    let started = Instant::now();
    let progress = config.progress.then(|| {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || report_progress(&shared, started))
    });
    let workers: Vec<_> = (0..config.connections)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || match shared.config.workload {
                Workload::Churn => churn(&shared),
                Workload::Persistent => persistent(&shared),
                Workload::Pipelined => pipelined(&shared),
                Workload::Hold => hold(&shared),
            })
        })
        .collect();
    let mut latency = new_histogram();
    for w in workers {
        if let Ok(h) = w.join() {
            let _ = latency.add(&h);
        }
    }
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let requests = shared.done.load(Ordering::Relaxed);
    let size = config.size.max(8) as u64;
    Report {
        elapsed,
        requests,
        connections: shared.connections.load(Ordering::Relaxed),
        bytes: requests * size * 2,
        errors: shared.errors.lock().unwrap().clone(),
        latency,
        config,
    }
}

fn report_progress(shared: &Shared, started: Instant) {
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let secs = started.elapsed().as_secs_f64();
        let done = shared.done.load(Ordering::Relaxed);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{:>7.1}s {:>10} requests {:>10.0}/s {:>8} connections ",
            secs,
            done,
            done as f64 / secs.max(0.001),
            shared.connections.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(std::io::stderr());
}

fn open(shared: &Shared) -> Option<FrameReader<Stream>> {
    match connect(&shared.config.addr, shared.config.timeout) {
        Ok(stream) => {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            Some(FrameReader::new(stream, u32::MAX))
        }
        Err(_) => {
            shared.error("connect");
            None
        }
    }
}

/// Reads one reply and checks it is the DATA echo of `expected`.
fn check_reply(shared: &Shared, reader: &mut FrameReader<Stream>, expected: &[u8]) -> bool {
    match reader.next_frame() {
        Ok(Some(f)) if f.kind == Kind::Data && f.payload == expected => true,
        Ok(Some(f)) => {
            match Frame::error_parts(&f) {
                Some((code, _)) => shared.error(format!("error-frame-{code}")),
                None => shared.error("mismatch"),
            }
            false
        }
        Ok(None) => {
            shared.error("eof");
            false
        }
        Err(_) => {
            shared.error("io");
            false
        }
    }
}

/// One request and its checked reply; the latency from `started` is recorded on success.
fn exchange(
    shared: &Shared,
    reader: &mut FrameReader<Stream>,
    seq: u64,
    started: Instant,
    h: &mut Histogram<u64>,
) -> bool {
    let request = payload(seq, shared.config.size);
    if write_frame(reader.get_mut(), Kind::Data, &request).is_err() {
        shared.error("io");
        return false;
    }
    if !check_reply(shared, reader, &request) {
        return false;
    }
    let _ = h.record(started.elapsed().as_micros() as u64);
    shared.done.fetch_add(1, Ordering::Relaxed);
    true
}

/// A connection per request; the latency includes the connect.
fn churn(shared: &Shared) -> Histogram<u64> {
    let mut h = new_histogram();
    while let Some(seq) = shared.ticket() {
        let started = Instant::now();
        if let Some(mut reader) = open(shared) {
            exchange(shared, &mut reader, seq, started, &mut h);
            let _ = reader.get_mut().shutdown(Shutdown::Write);
        }
    }
    h
}

fn persistent(shared: &Shared) -> Histogram<u64> {
    let mut h = new_histogram();
    if let Some(mut reader) = open(shared) {
        while let Some(seq) = shared.ticket() {
            if !exchange(shared, &mut reader, seq, Instant::now(), &mut h) {
                break;
            }
        }
    }
    h
}

/// A writer sends `depth` requests in one write, then the next `depth`, with at most two
/// such batches unanswered (a bounded channel of send times blocks it); this thread reads the
/// replies in order as they come.
fn pipelined(shared: &Shared) -> Histogram<u64> {
    let mut h = new_histogram();
    let Some(mut reader) = open(shared) else {
        return h;
    };
    let Ok(mut writer) = reader.get_ref().try_clone() else {
        shared.error("io");
        return h;
    };
    let depth = shared.config.depth.max(1);
    // Tickets of the batch being written sit in the channel before its write: with room for
    // two batches, a full channel always holds a batch already written, whose replies drain it.
    let (tx, rx) = sync_channel::<(u64, Instant)>(2 * depth);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let size = shared.config.size;
            let mut batch = Vec::with_capacity(depth * (HEADER_LEN + size.max(8)));
            'run: loop {
                batch.clear();
                for _ in 0..depth {
                    let Some(seq) = shared.ticket() else { break };
                    if tx.send((seq, Instant::now())).is_err() {
                        break 'run;
                    }
                    let request = payload(seq, size);
                    batch.extend_from_slice(&header(Kind::Data, request.len()));
                    batch.extend_from_slice(&request);
                }
                if batch.is_empty() || writer.write_all(&batch).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(Shutdown::Write);
        });
        for (seq, sent) in rx {
            if !check_reply(shared, &mut reader, &payload(seq, shared.config.size)) {
                break;
            }
            let _ = h.record(sent.elapsed().as_micros() as u64);
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    });
    h
}

/// Opens a connection, checks it answers, keeps it idle until the run is over.
fn hold(shared: &Shared) -> Histogram<u64> {
    let mut h = new_histogram();
    let Some(mut reader) = open(shared) else {
        return h;
    };
    let seq = shared.connections.load(Ordering::Relaxed);
    exchange(shared, &mut reader, seq, Instant::now(), &mut h);
    while !shared.stop.load(Ordering::Relaxed)
        && shared.deadline.is_some_and(|d| Instant::now() < d)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

impl Report {
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Failed requests of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report for a terminal.
    pub fn text(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "workload {} against {}: {} connections, {} B requests, {:.3} s\n\
             requests {}  requests/s {:.1}  connections/s {:.1}  MB/s {:.2}\n\
             latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n\
             errors {errors}\n",
            self.config.workload.as_str(),
            self.config.addr,
            self.config.connections,
            self.config.size.max(8),
            self.elapsed.as_secs_f64(),
            self.requests,
            self.rate(self.requests),
            self.rate(self.connections),
            self.rate(self.bytes) / 1e6,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
        )
    }

    /// The report as one JSON object (serde_json: every string escaped, an address with a
    /// quote or backslash included).
    pub fn json(&self) -> String {
        let errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({
            "workload": self.config.workload.as_str(),
            "address": self.config.addr.to_string(),
            "connections": self.config.connections,
            "size": self.config.size.max(8),
            "seconds": self.elapsed.as_secs_f64(),
            "requests": self.requests,
            "requests_per_sec": self.rate(self.requests),
            "connections_opened": self.connections,
            "connections_per_sec": self.rate(self.connections),
            "mb_per_sec": self.rate(self.bytes) / 1e6,
            "latency_ms": {
                "p50": self.ms(0.5),
                "p90": self.ms(0.9),
                "p99": self.ms(0.99),
                "p99_9": self.ms(0.999),
                "max": self.latency.max() as f64 / 1000.0,
            },
            "errors": errors,
        })
        .to_string()
    }
}
