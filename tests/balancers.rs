//! forkd behind real load balancers, as docs/deployment.md sets them up: Debian's HAProxy
//! (`send-proxy`, `send-proxy-v2`, health checks) and nginx's `stream` module
//! (`proxy_protocol on`), on loopback. A client bound to 127.0.0.5 must be 127.0.0.5 to forkd's
//! rules, its log and a program's environment, though every connection comes from the
//! balancer at 127.0.0.1.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Forkd, KillOnDrop, PATIENCE, field, free_port};

/// A loopback listener for a balancer's front, bound here so that its port is known and
/// free; the balancer takes it over as descriptor 3.
fn front() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// Starts `cmd` with `listener` as its descriptor 3; the balancer's stderr is kept in
/// `dir/NAME.log` for a failing test to show.
fn spawn_with_socket(mut cmd: Command, listener: TcpListener, log: &Path) -> KillOnDrop {
    let fd = listener.as_raw_fd();
    let log = std::fs::File::create(log).unwrap();
    // SAFETY: dup2 and fcntl are async-signal-safe; the descriptor is open in the parent
    // until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would leave close-on-exec set.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the balancer");
    KillOnDrop(child)
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples");

/// docs/examples/haproxy.cfg with the test's addresses: its front on descriptor 3, its two
/// servers `a` and `b`, `edit` applied to the rest; HAProxy in the foreground.
fn haproxy(a: &Forkd, b: &Forkd, edit: impl Fn(String) -> String) -> (KillOnDrop, u16) {
    let (listener, port) = front();
    let config = std::fs::read_to_string(format!("{EXAMPLES}/haproxy.cfg")).unwrap();
    let config = edit(
        config
            .replace("bind :7000", "bind fd@3")
            .replace("10.0.0.11:7000", &a.addrs[0])
            .replace("10.0.0.12:7000", &b.addrs[0]),
    );
    let path = a.dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let child = spawn_with_socket(cmd, listener, &a.dir.path().join("haproxy.log"));
    (child, port)
}

/// Two forkd machines, as the examples' comment starts them, but on loopback ports.
fn two_forkds(extra: &[&str]) -> (Forkd, Forkd) {
    let args = [&["--proxy-from", "127.0.0.1"][..], extra].concat();
    (Forkd::start(&args), Forkd::start(&args))
}

/// Waits for a line with `pattern` in the log of `a` or of `b`, whichever served it.
fn wait_in_either(a: &Forkd, b: &Forkd, pattern: &str) {
    let deadline = Instant::now() + PATIENCE;
    while ![a, b]
        .iter()
        .any(|s| s.log().iter().any(|l| l.contains(pattern)))
    {
        assert!(Instant::now() < deadline, "no {pattern}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client of the balancer at `port`, bound to the loopback address `source`.
fn client_via(source: &str, port: u16) -> (Client, u16) {
    let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let stream = forkd::client::connect_from(source.parse().unwrap(), target, PATIENCE).unwrap();
    let client_port = stream.local_addr().unwrap().port();
    (Client::from_stream(forkd::Stream::Tcp(stream)), client_port)
}

#[test]
fn haproxy_send_proxy_and_send_proxy_v2_name_the_client_in_rules_and_logs() {
    let (mut a, mut b) = two_forkds(&["--deny", "127.0.0.6"]);
    for (option, round) in [("send-proxy-v2", 1), ("send-proxy", 2)] {
        let (_haproxy, port) = haproxy(&a, &b, |c| c.replace("send-proxy-v2", option));
        // leastconn takes turns between idle servers: one conversation to each.
        let mut ports = Vec::new();
        for _ in 0..2 {
            let (mut client, client_port) = client_via("127.0.0.5", port);
            assert_eq!(client.echo(option.as_bytes()).payload, option.as_bytes());
            client.half_close();
            client.expect_eof();
            ports.push(client_port);
        }
        let seen = |server: &Forkd, port: u16| {
            let accept = format!(" accept peer=127.0.0.5:{port} via=127.0.0.1:");
            server.log().iter().any(|l| l.contains(&accept))
        };
        a.wait_log_count(" accept peer=127.0.0.5:", round);
        b.wait_log_count(" accept peer=127.0.0.5:", round);
        for port in ports {
            assert!(
                seen(&a, port) != seen(&b, port),
                "{port}: {:?} {:?}",
                a.log(),
                b.log()
            );
        }

        // A denied client is refused behind the balancer, and the ERROR reaches it.
        let (mut denied, denied_port) = client_via("127.0.0.6", port);
        denied.send(forkd::frame::Kind::Data, b"let me in");
        assert!(denied.expect_error(5).contains("127.0.0.6"));
        let pattern = format!(" reject peer=127.0.0.6:{denied_port} via=127.0.0.1:");
        wait_in_either(&a, &b, &pattern);
    }
    for server in [&a, &b] {
        let log = server.log();
        assert!(!log.iter().any(|l| l.contains("proxy-header")), "{log:?}");
    }
}

#[test]
fn haproxy_health_checks_are_conversations_and_not_warnings() {
    let (mut a, b) = two_forkds(&[]);
    let often = |c: String| c.replace("inter 2s", "inter 100ms");
    // With send-proxy-v2, a check is a version 2 LOCAL (the balancer's own connection), then
    // the PING of the example's tcp-check; HAProxy resets the connection once it has PONG.
    let (v2_checks, _) = haproxy(&a, &b, often);
    let ends = a.wait_log_count(" end peer=127.0.0.1:", 3);
    for end in &ends {
        assert_eq!(field(end, "via"), None, "{end}");
        assert_eq!(field(end, "status"), Some("exit:0"), "{end}");
        // PING "hc" in, PONG "hc" out: the check was answered, not just connected.
        assert_eq!(field(end, "bytes_in"), Some("7"), "{end}");
        assert_eq!(field(end, "bytes_out"), Some("7"), "{end}");
    }
    drop(v2_checks);
    // With send-proxy, a check's version 1 header names the check's own connection.
    let (_v1_checks, _) = haproxy(&a, &b, |c| often(c).replace("send-proxy-v2", "send-proxy"));
    let proxied = a.wait_log_count(" via=127.0.0.1:", 6);
    let ends: Vec<&String> = proxied.iter().filter(|l| l.contains(" end ")).collect();
    assert!(!ends.is_empty(), "{proxied:?}");
    assert!(
        ends.iter().all(|l| l.contains(" status=exit:0 ")),
        "{ends:?}"
    );
    for server in [&a, &b] {
        let warnings: Vec<String> = server
            .log()
            .into_iter()
            .filter(|l| l.contains("warning:") && !l.contains("start user=root"))
            .collect();
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

#[test]
fn a_program_behind_haproxy_sees_the_client() {
    let args = [
        "--proxy-from",
        "127.0.0.1",
        "--handler",
        "exec",
        "--",
        "sh",
        "-c",
        "echo $TCPREMOTEIP:$TCPREMOTEPORT $TCPLOCALIP:$TCPLOCALPORT $PROXYREMOTEIP",
    ];
    let (a, b) = (Forkd::start(&args), Forkd::start(&args));
    let (_haproxy, port) = haproxy(&a, &b, |c| c);
    let (mut client, client_port) = client_via("127.0.0.5", port);
    let mut out = String::new();
    client.stream().read_to_string(&mut out).unwrap();
    assert_eq!(
        out.trim(),
        format!("127.0.0.5:{client_port} 127.0.0.1:{port} 127.0.0.1")
    );
}

#[test]
fn nginx_stream_proxy_protocol_names_the_client() {
    let (a, b) = two_forkds(&[]);
    let dir = a.dir.path().to_path_buf();
    let example = std::fs::read_to_string(format!("{EXAMPLES}/nginx-stream.conf")).unwrap();
    // nginx binds its own port: one found free just before, tried again if taken since.
    for _attempt in 0..5 {
        let port = free_port();
        // In the foreground, one process, its pid file and log here.
        let config = format!(
            "daemon off;\nmaster_process off;\npid {};\nerror_log stderr;\n{}",
            dir.join("nginx.pid").display(),
            example
                .replace("listen 7000;", &format!("listen 127.0.0.1:{port};"))
                .replace("10.0.0.11:7000", &a.addrs[0])
                .replace("10.0.0.12:7000", &b.addrs[0])
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("nginx.log")).unwrap();
        let mut nginx = KillOnDrop(
            Command::new("nginx")
                .arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start nginx"),
        );
        let deadline = Instant::now() + PATIENCE;
        let up = loop {
            if let Some(status) = nginx.0.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join("nginx.log")).unwrap();
                assert!(log.contains("Address already in use"), "{status}: {log}");
                break false;
            }
            // A probe connection is forwarded too: it shows in a forkd's log as nginx's own.
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        };
        if !up {
            continue;
        }
        // least_conn shares conversations between idle servers: each gets some.
        let served = |server: &Forkd| {
            let log = server.log();
            log.iter().any(|l| l.contains(" accept peer=127.0.0.5:"))
        };
        for conversation in 0.. {
            if served(&a) && served(&b) {
                break;
            }
            assert!(conversation < 20, "{:?} {:?}", a.log(), b.log());
            let (mut client, client_port) = client_via("127.0.0.5", port);
            assert_eq!(client.echo(b"through nginx").payload, b"through nginx");
            client.half_close();
            client.expect_eof();
            let accept = format!(" accept peer=127.0.0.5:{client_port} via=127.0.0.1:");
            wait_in_either(&a, &b, &accept);
        }
        return;
    }
    panic!("no free port for nginx in 5 attempts");
}
