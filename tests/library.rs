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
