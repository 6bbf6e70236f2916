//! The embedding API, through the programs built on it: the examples serve as documented, and
//! the seams it introduced hold (the thread model runs programs with their own mask and
//! leaves their exit statuses to the threads that started them).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Command;

use common::{Client, Forkd, example, field};
use forkd::frame::{Frame, Kind};

fn start_example(name: &str, args: &[&str]) -> Forkd {
    let mut cmd = Command::new(example(name));
    cmd.args(args);
    Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap())
}

#[test]
fn the_uppercase_example_answers_each_frame_in_upper_case_pipelined_and_in_order() {
    let mut server = start_example("uppercase", &["--listen", "127.0.0.1:0"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"hello, World 1").payload, b"HELLO, WORLD 1");
    // 100 requests in one write: 100 replies, in order, PING answered in its place.
    let mut burst = Vec::new();
    for i in 0..100 {
        burst.extend(Frame::new(Kind::Data, format!("req-{i}")).encode());
        if i == 50 {
            burst.extend(Frame::new(Kind::Ping, "p").encode());
        }
    }
    client.send_raw(&burst);
    for i in 0..100 {
        assert_eq!(client.recv().payload, format!("REQ-{i}").into_bytes());
        if i == 50 {
            assert_eq!(client.recv().kind, Kind::Pong);
        }
    }
    // The library's protocol rules apply to an embedder's handler: an unknown kind is ERROR 2.
    client.send_raw(&[0, 0, 0, 0, 0x09]);
    client.expect_error(2);
    let end = server.wait_log(" end peer=");
    assert!(end.contains("status=exit:2"), "{end}");
    let start = server.log().join("\n");
    assert!(start.contains("handler=framed"), "{start}");
}

#[test]
fn the_daytime_example_writes_one_crlf_line_and_closes() {
    let mut server = start_example("daytime", &["--listen", "127.0.0.1:0"]);
    let mut stream = forkd::client::connect(&server.addr(), common::PATIENCE).unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.ends_with("\r\n"), "{text:?}");
    assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    // ctime's form: weekday, month, day, time, year.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{text:?}");
    assert_eq!(words[3].matches(':').count(), 2, "{text:?}");
    let year: i32 = words[4].parse().unwrap();
    assert!(year >= 2024, "{text:?}");
    let end = server.wait_log(" end peer=");
    assert_eq!(field(&end, "status"), Some("exit:0"), "{end}");
}

#[test]
fn the_examples_refuse_an_unknown_argument() {
    for name in ["uppercase", "daytime"] {
        let out = Command::new(example(name)).arg("--bogus").output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("--bogus"), "{name}: {err}");
    }
}

#[test]
fn frame_exec_under_the_thread_model_answers_every_request_and_programs_start_unmasked() {
    let server = Forkd::start(&[
        "--model",
        "thread",
        "--handler",
        "frame-exec",
        "--",
        "sh",
        "-c",
        "cat; grep -E '^Sig(Blk|Ign)' /proc/self/status",
    ]);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let addr = server.addr();
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr);
                let mut answered = 0;
                for i in 0..50 {
                    let request = format!("c{c}r{i}\n");
                    let reply = client.echo(request.as_bytes());
                    assert_eq!(reply.kind, Kind::Data, "{:?}", reply.error_parts());
                    let text = String::from_utf8(reply.payload).unwrap();
                    assert!(text.starts_with(&request), "{text}");
                    // grep, started by the program's shell: no signal blocked, no standard
                    // signal ignored (the C library's own real-time ones are not forkd's).
                    assert_eq!(mask(&text, "SigBlk:"), 0, "{text}");
                    assert_eq!(mask(&text, "SigIgn:") & 0x7fff_ffff, 0, "{text}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 200);
    assert!(
        !server
            .log()
            .iter()
            .any(|l| l.contains("No child processes")),
        "{:?}",
        server.log()
    );
}

/// A signal mask from /proc/PID/status.
fn mask(status: &str, key: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with(key)).expect(key);
    u64::from_str_radix(line[key.len()..].trim(), 16).unwrap()
}

#[test]
fn a_stream_handler_sees_the_peer_address() {
    // daytime does not echo its peer, but the `accept` and `end` lines name it as for forkd.
    let mut server = start_example("daytime", &["--listen", "127.0.0.1:0"]);
    let stream = forkd::client::connect(&server.addr(), common::PATIENCE).unwrap();
    let local = match &stream {
        forkd::Stream::Tcp(s) => s.local_addr().unwrap().to_string(),
        forkd::Stream::Unix(_) => unreachable!(),
    };
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    let accept = server.wait_log(" accept peer=");
    assert_eq!(field(&accept, "peer"), Some(local.as_str()), "{accept}");
}

#[test]
fn an_embedders_reload_applies_its_new_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("allowed");
    std::fs::write(&list, "127.0.0.2\n").unwrap();
    let mut server = start_example("allowlist", &[list.to_str().unwrap(), "127.0.0.1:0"]);
    let mut listed = Client::connect_from("127.0.0.2", &server.addr());
    assert_eq!(listed.echo(b"in").payload, b"IN");
    let mut other = Client::connect_from("127.0.0.3", &server.addr());
    other.send(Kind::Data, b"x");
    other.expect_error(5);

    std::fs::write(&list, "127.0.0.3\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_log(" reload=");
    assert!(line.contains(" reload=applied "), "{line}");
    let mut now_listed = Client::connect_from("127.0.0.3", &server.addr());
    assert_eq!(now_listed.echo(b"now").payload, b"NOW");
    let mut dropped = Client::connect_from("127.0.0.2", &server.addr());
    dropped.send(Kind::Data, b"x");
    dropped.expect_error(5);
    // The one listed before is still being served: its conversation goes on.
    assert_eq!(listed.echo(b"still").payload, b"STILL");

    // A list that does not parse is the embedder's Err: refused, the last list stays.
    std::fs::write(&list, "not an address\n").unwrap();
    server.signal(libc::SIGHUP);
    let refused = server.wait_log_count(" reload=", 2).pop().unwrap();
    assert!(refused.contains(" reload=refused "), "{refused}");
    let mut still_listed = Client::connect_from("127.0.0.3", &server.addr());
    assert_eq!(still_listed.echo(b"kept").payload, b"KEPT");
}
