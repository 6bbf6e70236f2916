//! forkc against the real forkd: send, stdin payloads, ping, and its errors.

mod common;

use std::net::TcpListener;

use common::{Forkd, forkc, forkc_bytes, unix_addr};

#[test]
fn send_prints_each_reply_on_its_own_line() {
    let server = Forkd::start(&[]);
    let addr = server.addrs[0].clone();
    let (code, out, err) = forkc(&["--connect", &addr, "send", "hello", "", "world"], b"");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "hello\n\nworld\n");
}

#[test]
fn dash_reads_payloads_from_stdin_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, unix) = unix_addr(dir.path(), "c.sock");
    let _server = Forkd::start(&["--listen", &unix]);
    let lines: String = (0..500).map(|i| format!("line {i}\n")).collect();
    let (code, out, err) = forkc(
        &["--connect", &unix, "send", "first", "-"],
        lines.as_bytes(),
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, format!("first\n{lines}"));
}

#[test]
fn ping_prints_round_trip_times() {
    let server = Forkd::start(&["--listen", "[::1]:0"]);
    let addr = server.addrs[0].clone();
    let (code, out, err) = forkc(&["--connect", &addr, "ping", "--count", "3"], b"");
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert!(
            line.starts_with(&format!("pong from {addr} seq={}", i + 1)),
            "{line}"
        );
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(lines[3].starts_with("3 pings, min/avg/max = "), "{out}");
}

#[test]
fn an_error_frame_is_a_message_and_exit_1() {
    let server = Forkd::start(&["--max-frame", "4"]);
    let addr = server.addrs[0].clone();
    let (code, out, err) = forkc(&["--connect", &addr, "send", "ok", "too long"], b"");
    assert_eq!(code, 1);
    assert_eq!(out, "ok\n");
    assert!(
        err.starts_with("forkc: server error 1 (frame too large): "),
        "{err}"
    );
}

#[test]
fn a_refused_connection_is_a_message_and_exit_1() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = forkc(&["--connect", &addr, "ping"], b"");
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!("forkc: cannot connect to {addr}: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    for args in [
        &["send", "x"][..],
        &["--connect", "nowhere", "ping"][..],
        &["--connect", ":1", "ping", "--count", "0"][..],
        &["--connect", ":1", "send"][..],
    ] {
        let (code, _, err) = forkc(args, b"");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("forkc: "), "{err}");
    }
}

#[test]
fn files_and_raw_output_are_binary_safe() {
    let server = Forkd::start(&[]);
    let addr = server.addrs[0].clone();
    let dir = tempfile::tempdir().unwrap();
    // Every byte value, newlines and invalid UTF-8 included.
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let path = dir.path().join("payload.bin");
    std::fs::write(&path, &binary).unwrap();
    let file = common::path_str(&path);
    let (code, out, _) = forkc_bytes(&["--connect", &addr, "send", "--file", &file, "--raw"], b"");
    assert_eq!(code, 0);
    assert_eq!(out, binary, "one frame, echoed byte for byte");
    // `--file -` is all of stdin as one frame; arguments go first, each reply on a line.
    let (code, out, _) = forkc_bytes(
        &["--connect", &addr, "send", "first", "--file", "-"],
        b"two\nlines",
    );
    assert_eq!((code, out.as_slice()), (0, &b"first\ntwo\nlines\n"[..]));
    // A file that is not there: forkc says which, and fails.
    let (code, out, err) = forkc(
        &["--connect", &addr, "send", "--file", "/nonexistent/payload"],
        b"",
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("/nonexistent/payload"), "{err}");
    // stdin is read once: asking for it twice is refused, not answered with an empty frame.
    let (code, out, err) = forkc(&["--connect", &addr, "send", "-", "--file", "-"], b"x\n");
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("stdin can be read once"), "{err}");
}
