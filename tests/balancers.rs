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

use common::{Client, Forkd, KillOnDrop, PATIENCE, field};

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

/// HAProxy in the foreground, its front on descriptor 3, forwarding to `forkd` with
/// `server_options` (send-proxy, send-proxy-v2, checks).
fn haproxy(forkd: &Forkd, server_options: &str) -> (KillOnDrop, u16) {
    let (listener, port) = front();
    let backend = &forkd.addrs[0];
    let config = format!(
        "global\n    maxconn 200\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend front\n    bind fd@3\n    default_backend forkd\n\
         backend forkd\n    server forkd1 {backend} {server_options}\n"
    );
    let path = forkd.dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let child = spawn_with_socket(cmd, listener, &forkd.dir.path().join("haproxy.log"));
    (child, port)
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
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1", "--deny", "127.0.0.6"]);
    for (option, count) in [("send-proxy", 1), ("send-proxy-v2", 2)] {
        let (_haproxy, port) = haproxy(&server, option);
        let (mut client, client_port) = client_via("127.0.0.5", port);
        assert_eq!(client.echo(option.as_bytes()).payload, option.as_bytes());
        drop(client);
        let pattern = format!(" accept peer=127.0.0.5:{client_port} via=127.0.0.1:");
        server.wait_log(&pattern);
        server.wait_log(&format!(" end peer=127.0.0.5:{client_port} via=127.0.0.1:"));

        // A denied client is refused behind the balancer, and the ERROR reaches it.
        let (mut denied, denied_port) = client_via("127.0.0.6", port);
        denied.send(forkd::frame::Kind::Data, b"let me in");
        assert!(denied.expect_error(5).contains("127.0.0.6"));
        let rejects = server.wait_log_count(" reason=denied ", count);
        let line = &rejects[count - 1];
        assert!(
            line.contains(&format!(
                " reject peer=127.0.0.6:{denied_port} via=127.0.0.1:"
            )),
            "{line}"
        );
    }
    assert!(
        !server.log().iter().any(|l| l.contains("proxy-header")),
        "{:?}",
        server.log()
    );
}

#[test]
fn haproxy_health_checks_are_served_and_are_not_warnings() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1"]);
    // With send-proxy-v2, a check is a version 2 LOCAL: the balancer's own connection. It
    // connects, sends its header and resets the connection.
    let (v2_checks, _) = haproxy(&server, "send-proxy-v2 check inter 100ms");
    let ends = server.wait_log_count(" end peer=127.0.0.1:", 3);
    assert!(ends.iter().all(|l| field(l, "via").is_none()), "{ends:?}");
    assert!(
        ends.iter().all(|l| l.contains(" status=exit:0 ")),
        "{ends:?}"
    );
    drop(v2_checks);
    // With send-proxy, a check's version 1 header names the check's own connection.
    let (_v1_checks, _) = haproxy(&server, "send-proxy check inter 100ms");
    let ends = server.wait_log_count(" via=127.0.0.1:", 6);
    assert!(
        ends.iter().all(|l| !l.contains(" status=exit:1")),
        "{ends:?}"
    );
    let warnings: Vec<String> = server
        .log()
        .into_iter()
        .filter(|l| l.contains("warning:") && !l.contains("start user=root"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_program_behind_haproxy_sees_the_client() {
    let server = Forkd::start(&[
        "--proxy-from",
        "127.0.0.1",
        "--handler",
        "exec",
        "--",
        "sh",
        "-c",
        "echo $TCPREMOTEIP:$TCPREMOTEPORT $TCPLOCALIP:$TCPLOCALPORT $PROXYREMOTEIP",
    ]);
    let (_haproxy, port) = haproxy(&server, "send-proxy-v2");
    let (mut client, client_port) = client_via("127.0.0.5", port);
    let mut out = String::new();
    client.stream().read_to_string(&mut out).unwrap();
    assert_eq!(
        out.trim(),
        format!("127.0.0.5:{client_port} 127.0.0.1:{port} 127.0.0.1")
    );
}

/// A free loopback port for a balancer that must bind its own (nginx).
fn free_port() -> u16 {
    front().1
}

#[test]
fn nginx_stream_proxy_protocol_names_the_client() {
    let mut server = Forkd::start(&["--proxy-from", "127.0.0.1"]);
    let dir = server.dir.path().to_path_buf();
    let backend = &server.addrs[0];
    // nginx binds its own port: one found free just before, tried again if taken since.
    for _attempt in 0..5 {
        let port = free_port();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log stderr;\n\
             load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             events {{}}\n\
             stream {{\n  server {{\n    listen 127.0.0.1:{port};\n    proxy_pass {backend};\n    proxy_protocol on;\n  }}\n}}\n",
            pid = dir.join("nginx.pid").display()
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
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        };
        if !up {
            continue;
        }
        let (mut client, client_port) = client_via("127.0.0.5", port);
        assert_eq!(client.echo(b"through nginx").payload, b"through nginx");
        server.wait_log(&format!(
            " accept peer=127.0.0.5:{client_port} via=127.0.0.1:"
        ));
        return;
    }
    panic!("no free port for nginx in 5 attempts");
}
