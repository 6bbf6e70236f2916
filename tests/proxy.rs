//! `--proxy-from` against the real binary, with PROXY headers written by hand: the client a
//! header names drives rules, limits, logs and the environment; the bytes after it reach the
//! handler untouched; connections from elsewhere are never read as headers; a slow, silent or
//! wrong balancer costs no fork and does not hold up the supervisor. (tests/balancers.rs runs
//! real HAProxy and nginx in front of forkd.)

mod common;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Client, Forkd, cpu_time, field, forkd_fails};
use forkd::frame::{Frame, Kind};

/// A version 1 header.
fn v1(source: &str, destination: &str, source_port: u16, destination_port: u16) -> Vec<u8> {
    let family = if source.contains(':') { "TCP6" } else { "TCP4" };
    format!("PROXY {family} {source} {destination} {source_port} {destination_port}\r\n")
        .into_bytes()
}

/// A version 2 PROXY (command 1) header over TCP for `source` to `destination`, with `tlvs`
/// after the addresses.
fn v2(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend(s.octets());
            body.extend(d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            body.extend(s.octets());
            body.extend(d.octets());
            0x21
        }
        _ => panic!("one family for both addresses"),
    };
    body.extend(source.port().to_be_bytes());
    body.extend(destination.port().to_be_bytes());
    body.extend(tlvs);
    v2_raw(0x21, family, &body)
}

/// A version 2 header with the given version-and-command and family-and-transport bytes.
fn v2_raw(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([command, family]);
    header.extend((body.len() as u16).to_be_bytes());
    header.extend(body);
    header
}

/// `header` then a DATA frame in one write, as a balancer forwards a client that spoke at once.
fn proxied_echo(from: &str, server: &Forkd, header: &[u8], payload: &[u8]) -> Client {
    let mut client = Client::connect_from(from, &server.addr());
    let mut bytes = header.to_vec();
    bytes.extend(Frame::new(Kind::Data, payload.to_vec()).encode());
    client.send_raw(&bytes);
    client
}

#[test]
fn version_1_names_the_client_for_rules_and_logs_and_the_payload_is_untouched() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1", "--deny", "192.0.2.66"]);
    let port = server.addr().to_string();
    let port: u16 = port.rsplit(':').next().unwrap().parse().unwrap();
    // The header and a request in one segment: the request is the handler's, byte for byte.
    let payload = b"PROXY TCP4 looks like a header but is the client's".to_vec();
    let header = v1("192.0.2.7", "198.51.100.1", 40000, 443);
    let mut client = proxied_echo("127.0.0.1", &server, &header, &payload);
    assert_eq!(client.recv(), Frame::new(Kind::Data, payload));
    drop(client);
    let accept = server.wait_log(" accept peer=192.0.2.7:40000 ");
    let via = field(&accept, "via").expect("via= in the accept line");
    assert!(via.starts_with("127.0.0.1:"), "{accept}");
    let end = server.wait_log(" end peer=192.0.2.7:40000 ");
    assert_eq!(field(&end, "via"), Some(via), "{end}");

    // A denied client is denied behind the balancer, whose own address is allowed.
    let header = v1("192.0.2.66", "198.51.100.1", 50000, port);
    let mut denied = proxied_echo("127.0.0.1", &server, &header, b"x");
    let message = denied.expect_error(5);
    assert!(message.contains("192.0.2.66"), "{message}");
    let reject = server.wait_log(" reject peer=192.0.2.66:50000 ");
    assert_eq!(field(&reject, "reason"), Some("denied"));
    assert!(field(&reject, "via").is_some_and(|v| v.starts_with("127.0.0.1:")));
}

#[test]
fn version_2_with_tlvs_and_either_family_over_either_family() {
    let mut server = Forkd::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--proxy-from",
        "127.0.0.1",
        "--proxy-from",
        "::1",
    ]);
    // An IPv6 client through an IPv4 balancer, with TLVs (ALPN, then a NOOP) to skip.
    let tlvs = [&[0x01, 0, 2][..], b"h2", &[0x04, 0, 3, 0, 0, 0]].concat();
    let source: SocketAddr = "[2001:db8::5]:555".parse().unwrap();
    let destination: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let mut client = proxied_echo(
        "127.0.0.1",
        &server,
        &v2(source, destination, &tlvs),
        b"six",
    );
    assert_eq!(client.recv().payload, b"six");
    assert_eq!(client.echo(b"again").payload, b"again");
    server.wait_log(" accept peer=[2001:db8::5]:555 via=127.0.0.1:");

    // An IPv4 client through an IPv6 balancer, version 1.
    let v6_listener = server.addrs[1].clone();
    let mut stream = TcpStream::connect(&v6_listener).unwrap();
    let mut bytes = v1("203.0.113.9", "203.0.113.1", 1234, 80);
    bytes.extend(Frame::new(Kind::Ping, b"four".to_vec()).encode());
    std::io::Write::write_all(&mut stream, &bytes).unwrap();
    let mut client = Client::from_stream(forkd::Stream::Tcp(stream));
    assert_eq!(client.recv(), Frame::new(Kind::Pong, b"four".to_vec()));
    server.wait_log(" accept peer=203.0.113.9:1234 via=[::1]:");
}

#[test]
fn local_and_unknown_are_the_balancers_own_connections() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.0/8"]);
    // v2 LOCAL, as a health check sends it, with an address block that must be ignored.
    let local = v2_raw(0x20, 0x11, &[192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2]);
    let mut health = proxied_echo("127.0.0.3", &server, &local, b"ok?");
    assert_eq!(health.recv().payload, b"ok?");
    let accept = server.wait_log(" accept peer=127.0.0.3:");
    assert_eq!(field(&accept, "via"), None, "{accept}");

    let mut unknown = proxied_echo(
        "127.0.0.4",
        &server,
        b"PROXY UNKNOWN ff::1 whatever\r\n",
        b"?",
    );
    assert_eq!(unknown.recv().payload, b"?");
    let accept = server.wait_log(" accept peer=127.0.0.4:");
    assert_eq!(field(&accept, "via"), None, "{accept}");
}

#[test]
fn bytes_from_outside_the_trusted_networks_are_never_read_as_a_header() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1"]);
    // From 127.0.0.2 a header is the first bytes of a frame: "PROX" is a length of 1.3 GB.
    let mut direct = Client::connect_from("127.0.0.2", &server.addr());
    direct.send_raw(&v1("192.0.2.7", "198.51.100.1", 40000, 443));
    direct.expect_error(1);
    let accept = server.wait_log(" accept peer=127.0.0.2:");
    assert_eq!(field(&accept, "via"), None, "{accept}");
    assert!(!server.log().iter().any(|l| l.contains("192.0.2.7")));
}

#[test]
fn a_wrong_header_is_refused_without_a_fork_and_logged() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1"]);
    let wrong = [
        (
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            "no PROXY protocol signature",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            "ports are not 0 to 65535",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "has 6 fields, not 5",
        ),
    ];
    for (count, (bytes, why)) in wrong.into_iter().enumerate() {
        let mut client = Client::connect_from("127.0.0.1", &server.addr());
        client.send_raw(bytes);
        let message = client.expect_error(5);
        assert!(message.contains(why), "{message}");
        let lines = server.wait_log_count(" reason=proxy-header code=5 ", count + 1);
        let line = &lines[count];
        assert!(line.contains(" reject peer=127.0.0.1:"), "{line}");
        assert!(line.contains(why), "{line}");
    }
    // A version 2 header that declares more than forkd takes.
    let mut client = Client::connect_from("127.0.0.1", &server.addr());
    let mut huge = v2_raw(0x21, 0x11, &[0; 12]);
    huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
    client.send_raw(&huge);
    assert!(client.expect_error(5).contains("over 4096"));
    assert!(!server.log().iter().any(|l| l.contains(" accept ")));
}

#[test]
fn a_silent_balancer_times_out_and_a_closed_one_is_not_a_warning() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1", "--proxy-timeout", "300ms"]);
    // A TCP health check: connect, close.
    drop(TcpStream::connect(server.addr().to_string()).unwrap());
    let started = Instant::now();
    let mut silent = Client::connect_from("127.0.0.1", &server.addr());
    let message = silent.expect_error(7);
    assert!(message.contains("no PROXY header in 0.3s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let line = server.wait_log(" reason=proxy-header code=7 ");
    assert!(line.contains(" reject peer=127.0.0.1:"), "{line}");
    let refusals = server
        .log()
        .iter()
        .filter(|l| l.contains(" reject "))
        .count();
    assert_eq!(refusals, 1, "{:?}", server.log());
}

#[test]
fn a_header_in_pieces_is_waited_for_without_spinning_or_holding_up_others() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1"]);
    let mut slow = Client::connect_from("127.0.0.1", &server.addr());
    let header = v2(
        "192.0.2.9:999".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
        &[0x04, 0, 200]
            .iter()
            .copied()
            .chain([0; 200])
            .collect::<Vec<u8>>(),
    );
    // Half of the header, then a second of nothing: the supervisor sleeps through it, and
    // serves a direct client meanwhile.
    let (first, rest) = header.split_at(30);
    slow.send_raw(first);
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_time(server.pid);
    let mut direct = Client::connect_from("127.0.0.2", &server.addr());
    assert_eq!(direct.echo(b"not held up").payload, b"not held up");
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_time(server.pid) - before;
    assert!(
        spent < Duration::from_millis(300),
        "supervisor used {spent:?}"
    );
    // The rest a byte at a time, then a request.
    for byte in rest {
        slow.send_raw(&[*byte]);
    }
    assert_eq!(slow.echo(b"whole").payload, b"whole");
    server.wait_log(" accept peer=192.0.2.9:999 via=127.0.0.1:");
}

#[test]
fn a_balancer_hanging_up_mid_header_is_closed_at_once_without_spinning() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1", "--proxy-timeout", "30s", "-v"]);
    let descriptors = server.fd_count();
    let before = cpu_time(server.pid);
    let mut closed = Client::connect_from("127.0.0.1", &server.addr());
    closed.send_raw(b"PROXY TCP4 1");
    closed.half_close();
    let mut reset = Client::connect_from("127.0.0.1", &server.addr());
    let header = v2(
        "192.0.2.9:999".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
        &[],
    );
    reset.send_raw(&header[..20]);
    std::thread::sleep(Duration::from_millis(50));
    reset.reset();
    server.wait_log_count("error=\"closed before a PROXY header\"", 2);
    // Closed, not waited on until the 30 s timeout, and the loop sleeps meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_time(server.pid) - before;
    assert!(
        spent < Duration::from_millis(300),
        "supervisor used {spent:?}"
    );
    assert_eq!(server.fd_count(), descriptors);
    assert!(
        !server
            .log()
            .iter()
            .any(|l| l.contains(" reject ") && l.contains("warning:"))
    );
}

#[test]
fn per_source_counts_the_clients_behind_one_balancer() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1", "--per-source", "1"]);
    let mut first = proxied_echo(
        "127.0.0.1",
        &server,
        &v1("192.0.2.1", "192.0.2.100", 1, 2),
        b"1",
    );
    let mut other = proxied_echo(
        "127.0.0.1",
        &server,
        &v1("192.0.2.2", "192.0.2.100", 1, 2),
        b"2",
    );
    assert_eq!(first.recv().payload, b"1");
    assert_eq!(other.recv().payload, b"2");
    // A second conversation of the first client, through the same balancer: over its limit.
    let mut again = proxied_echo(
        "127.0.0.1",
        &server,
        &v1("192.0.2.1", "192.0.2.100", 3, 2),
        b"3",
    );
    again.expect_error(4);
    let line = server.wait_log(" reason=per-source ");
    assert!(
        line.contains(" reject peer=192.0.2.1:3 via=127.0.0.1:"),
        "{line}"
    );
}

#[test]
fn a_program_sees_the_client_and_the_balancer_in_its_environment() {
    let server = Forkd::start(&[
        "--proxy-from",
        "127.0.0.1",
        "--handler",
        "exec",
        "--",
        "sh",
        "-c",
        "env | grep -E '^(TCP|PROXY)' | sort",
    ]);
    let mut client = Client::connect_from("127.0.0.1", &server.addr());
    client.send_raw(&v1("2001:db8::7", "2001:db8::1", 4444, 443));
    let mut stream = client.stream().try_clone().unwrap();
    let local_port = match &stream {
        forkd::Stream::Tcp(s) => s.local_addr().unwrap().port(),
        _ => unreachable!(),
    };
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let server_port = server.addrs[0].rsplit(':').next().unwrap();
    let expected = [
        "PROXYLOCALIP=127.0.0.1".to_string(),
        format!("PROXYLOCALPORT={server_port}"),
        "PROXYREMOTEIP=127.0.0.1".to_string(),
        format!("PROXYREMOTEPORT={local_port}"),
        "TCPCONNNUM=1".to_string(),
        "TCPLOCALIP=2001:db8::1".to_string(),
        "TCPLOCALPORT=443".to_string(),
        "TCPREMOTEIP=2001:db8::7".to_string(),
        "TCPREMOTEPORT=4444".to_string(),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn headers_on_their_way_at_shutdown_are_refused_with_error_9() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1"]);
    let mut waiting = Client::connect_from("127.0.0.1", &server.addr());
    waiting.send_raw(b"PROXY TCP4 ");
    // Once accepted, it is in the table.
    server.wait_status("proxy_headers", "1");
    server.signal(libc::SIGTERM);
    waiting.expect_error(9);
    let stop = server.wait_log(" stop served=");
    assert_eq!(field(&stop, "refused"), Some("1"), "{stop}");
}

#[test]
fn proxy_flags_are_checked() {
    for (args, flag) in [
        (
            &["--listen", ":0", "--proxy-from", "10.0.0.0/33"][..],
            "--proxy-from",
        ),
        (&["--listen", ":0", "--proxy-timeout", "5"], "--proxy-from"),
        (
            &[
                "--listen",
                ":0",
                "--proxy-from",
                "::1",
                "--proxy-timeout",
                "0",
            ],
            "--proxy-timeout",
        ),
        (
            &[
                "--listen",
                ":0",
                "--proxy-from",
                "::1",
                "--proxy-timeout",
                "2h",
            ],
            "--proxy-timeout",
        ),
    ] {
        let (code, stderr) = forkd_fails(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
