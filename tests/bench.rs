//! `forkc bench` against the real forkd: every workload, bounded, every reply verified.

mod common;

use std::time::{Duration, Instant};

use common::{Forkd, forkc};

/// A number anywhere in the report (at the top level or under `latency_ms`); the report must
/// be valid JSON.
fn json_number(json: &str, key: &str) -> f64 {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("invalid JSON ({e}): {json}"));
    value
        .get(key)
        .or_else(|| value["latency_ms"].get(key))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{key} in {json}"))
}

fn bench(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--connect", addr, "bench", "--json"];
    all.extend_from_slice(args);
    forkc(&all, b"")
}

#[test]
fn every_workload_runs_to_its_bound_with_no_error() {
    let server = Forkd::start(&[]);
    let addr = server.addrs[0].clone();
    for workload in ["churn", "persistent", "pipelined"] {
        let (code, out, err) = bench(
            &addr,
            &[
                "--workload",
                workload,
                "--connections",
                "3",
                "--requests",
                "900",
                "--size",
                "100",
            ],
        );
        assert_eq!(code, 0, "{workload}: {err}");
        assert_eq!(json_number(&out, "requests"), 900.0, "{out}");
        assert!(out.contains("\"errors\":{}"), "{out}");
        assert!(
            json_number(&out, "p50") > 0.0 && json_number(&out, "max") >= json_number(&out, "p99")
        );
        let opened = json_number(&out, "connections_opened");
        if workload == "churn" {
            assert_eq!(opened, 900.0, "{out}");
        } else {
            assert_eq!(opened, 3.0, "{out}");
        }
    }
}

#[test]
fn without_a_bound_it_stops_after_10000_requests() {
    let server = Forkd::start(&[]);
    let (code, out, _) = bench(&server.addrs[0], &[]);
    assert_eq!(code, 0);
    assert_eq!(json_number(&out, "requests"), 10000.0);
}

#[test]
fn a_duration_bounds_the_run() {
    let server = Forkd::start(&[]);
    let started = Instant::now();
    let (code, out, _) = bench(
        &server.addrs[0],
        &["--duration", "0.5", "--connections", "2"],
    );
    assert_eq!(code, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(json_number(&out, "seconds") >= 0.5, "{out}");
}

#[test]
fn wrong_replies_are_counted_and_fail_the_run() {
    let server = Forkd::start(&["--handler", "frame-exec", "--", "sh", "-c", "cat; printf x"]);
    let (code, out, err) = bench(
        &server.addrs[0],
        &["--requests", "20", "--connections", "1"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"mismatch\":"), "{out}");
    assert_eq!(err.trim(), "forkc: failed requests: 1");
}

#[test]
fn hold_keeps_its_connections_open_for_the_duration() {
    let server = Forkd::start(&[]);
    let addr = server.addrs[0].clone();
    let holder = std::thread::spawn(move || {
        bench(
            &addr,
            &[
                "--workload",
                "hold",
                "--connections",
                "25",
                "--duration",
                "2",
            ],
        )
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut most = 0;
    while Instant::now() < deadline {
        most = most.max(server.children().len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, _) = holder.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(most, 25, "children while held");
    assert_eq!(json_number(&out, "connections_opened"), 25.0);
}

#[test]
fn the_json_report_stays_json_whatever_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let (_, addr) = common::unix_addr(dir.path(), "we\"ird\\name.sock");
    let _server = Forkd::start(&["--listen", &addr]);
    let (code, out, err) = bench(&addr, &["--requests", "20", "--connections", "1"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["address"], addr.as_str());
    assert_eq!(json_number(&out, "requests"), 20.0);
}
