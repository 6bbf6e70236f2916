//! Protocol v1 against the real forkd: round trips, pipelining, split headers, every listener
//! kind, and the ERROR answers to bad input, each followed by EOF.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Client, Forkd, unix_addr};
use forkd::frame::{Frame, Kind};

#[test]
fn round_trips_of_every_size_up_to_exactly_max_frame() {
    let server = Forkd::start(&["--max-frame", "256K"]);
    let mut client = Client::connect(&server.addr());
    for size in [0usize, 1, 64 * 1024, 256 * 1024] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let reply = client.echo(&payload);
        assert_eq!(reply.kind, Kind::Data);
        assert_eq!(reply.payload.len(), size);
        assert!(reply.payload == payload, "payload of {size} bytes differs");
    }
    client.half_close();
    client.expect_eof();
}

#[test]
fn default_max_frame_is_one_mebibyte() {
    let server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    let payload = vec![0x5a; 1 << 20];
    assert_eq!(client.echo(&payload).payload, payload);
    // Far more than the server drains before it closes: the ERROR must arrive all the same.
    let writer = client.send_in_background(Frame::new(Kind::Data, vec![0; (1 << 20) + 1]).encode());
    let error = client.recv();
    assert_eq!(error.error_parts().unwrap().0, 1);
    client.expect_eof();
    writer.join().unwrap();
}

#[test]
fn bytes_on_the_wire_match_the_spec() {
    let server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    // DATA "abc", then PING "xy".
    client.send_raw(&[
        0, 0, 0, 3, 0x01, b'a', b'b', b'c', 0, 0, 0, 2, 0x03, b'x', b'y',
    ]);
    client.half_close();
    assert_eq!(
        client.read_to_end(),
        [
            0, 0, 0, 3, 0x01, b'a', b'b', b'c', 0, 0, 0, 2, 0x04, b'x', b'y'
        ]
    );
}

#[test]
fn thousand_pipelined_frames_are_answered_in_order() {
    let server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    client.send_pipelined(1000);
    client.half_close();
    client.expect_pipelined_replies(1000);
    client.expect_eof();
}

#[test]
fn header_delivered_one_byte_at_a_time() {
    let server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    let bytes = Frame::new(Kind::Data, "slow").encode();
    for b in &bytes {
        client.stream().write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.recv(), Frame::new(Kind::Data, "slow"));
}

#[test]
fn ping_answers_pong_with_the_same_payload() {
    let server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    client.send(Kind::Ping, b"");
    assert_eq!(client.recv(), Frame::new(Kind::Pong, ""));
    client.send(Kind::Ping, b"12345678");
    assert_eq!(client.recv(), Frame::new(Kind::Pong, "12345678"));
}

#[test]
fn ipv6_and_unix_listeners_serve_alongside_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let (_, unix) = unix_addr(dir.path(), "echo.sock");
    let server = Forkd::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--listen",
        &unix,
    ]);
    assert_eq!(server.addrs.len(), 3, "{:?}", server.addrs);
    assert!(server.addrs[1].starts_with("[::1]:"));
    assert_eq!(server.addrs[2], unix);
    for addr in &server.addrs {
        let mut client = Client::connect(&addr.parse().unwrap());
        assert_eq!(client.echo(addr.as_bytes()).payload, addr.as_bytes());
    }
}

#[test]
fn any_address_listens_on_ipv4_and_ipv6() {
    let server = Forkd::start(&["--listen", ":0"]);
    assert_eq!(server.addrs.len(), 2, "{:?}", server.addrs);
    assert!(server.addrs[0].starts_with("0.0.0.0:"));
    let port = server.addrs[0].rsplit(':').next().unwrap();
    assert_eq!(server.addrs[1], format!("[::]:{port}"));
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut client = Client::connect(&addr.parse().unwrap());
        assert_eq!(client.echo(b"both").payload, b"both");
    }
}

/// Checks an ERROR reply with `code`, then EOF, then that the server still serves others.
fn assert_error_then_eof(server: &mut Forkd, mut client: Client, code: u16) {
    let reply = client.recv();
    let (got, message) = reply.error_parts().expect("an ERROR frame");
    assert_eq!(got, code, "message: {message}");
    assert!(!message.is_empty());
    client.expect_eof();
    server.wait_log(&format!("code={code} "));
    let mut other = Client::connect(&server.addr());
    assert_eq!(other.echo(b"still here").payload, b"still here");
}

#[test]
fn oversize_header_followed_by_its_payload_gets_error_1() {
    let mut server = Forkd::start(&["--max-frame", "1024"]);
    let mut client = Client::connect(&server.addr());
    // The way a real client fails: the whole oversize frame leaves at once.
    client.send(Kind::Data, &[7u8; 4096]);
    assert_error_then_eof(&mut server, client, 1);
}

#[test]
fn oversize_header_alone_gets_error_1_without_the_payload() {
    let mut server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    // 4 GiB announced: the server must answer without waiting for (or allocating) it.
    client.send_raw(&[0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_error_then_eof(&mut server, client, 1);
}

#[test]
fn unknown_kind_with_payload_gets_error_2() {
    let mut server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    // More than the server drains: without the half-close and drain the reset it sends on
    // close destroys the ERROR frame.
    let mut bytes = vec![0, 0x04, 0, 0, 0x7f];
    bytes.extend(vec![1u8; 0x40000]);
    let writer = client.send_in_background(bytes);
    assert_error_then_eof(&mut server, client, 2);
    writer.join().unwrap();
}

#[test]
fn server_kinds_from_a_client_get_error_2() {
    for kind in [Kind::Pong, Kind::Error] {
        let mut server = Forkd::start(&[]);
        let mut client = Client::connect(&server.addr());
        assert_eq!(client.echo(b"ok").payload, b"ok");
        client.send(kind, b"nope");
        assert_error_then_eof(&mut server, client, 2);
    }
}

#[test]
fn eof_inside_a_frame_gets_error_3() {
    let mut server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    client.send_raw(&[0, 0, 0, 10, 0x01, b'p', b'a', b'r']);
    client.half_close();
    assert_error_then_eof(&mut server, client, 3);
    let line = server.wait_log("code=3 ");
    assert!(line.contains("truncated frame"), "{line}");
}

#[test]
fn eof_inside_a_header_gets_error_3() {
    let mut server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    client.send_raw(&[0, 0]);
    client.half_close();
    assert_error_then_eof(&mut server, client, 3);
}

/// The shell example of docs/protocol.md, run as written there (with the test's port).
#[test]
fn the_documented_netcat_example_runs() {
    let server = Forkd::start(&[]);
    let port = server.addrs[0].rsplit(':').next().unwrap().to_string();
    let doc = include_str!("../docs/protocol.md");
    let example = doc
        .lines()
        .find(|l| l.starts_with("printf ") && l.contains("| nc -N 127.0.0.1 7000"))
        .expect("example in docs/protocol.md");
    let expected = doc
        .lines()
        .skip_while(|l| *l != example)
        .nth(1)
        .unwrap()
        .trim_start_matches('#')
        .trim();
    let command = example.replace("7000", &port);
    let out = std::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
}

#[test]
fn a_reset_between_frames_ends_cleanly_and_inside_a_frame_is_an_error() {
    let mut server = Forkd::start(&[]);
    // Answered, then hung up with a reset, as a balancer's health check does.
    let mut between = Client::connect(&server.addr());
    assert_eq!(between.echo(b"hc").payload, b"hc");
    let pid = server.child_for(between.stream_ref());
    between.reset();
    let end = server.wait_log(&format!(" pid={pid} status="));
    assert!(end.contains(" status=exit:0 "), "{end}");

    let mut inside = Client::connect(&server.addr());
    assert_eq!(inside.echo(b"first").payload, b"first");
    inside.send_raw(&[0, 0, 0, 9, 1, b'p']);
    let pid = server.child_for(inside.stream_ref());
    std::thread::sleep(Duration::from_millis(100));
    inside.reset();
    let end = server.wait_log(&format!(" pid={pid} status="));
    assert!(end.contains(" status=exit:1 "), "{end}");
    server.wait_log(" error peer=127.0.0.1:");
}
