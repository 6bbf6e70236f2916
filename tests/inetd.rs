//! forkd started by the real things: openbsd-inetd, xinetd and systemd-socket-activate, each
//! running the configuration shipped in docs/examples/ (with the test's port, binary and
//! paths put in), plus sd_notify and the checks on inherited sockets.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, FORKD, Forkd, PATIENCE, children_of, free_port};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples");
const XINETD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/xinetd/usr/sbin/xinetd");

/// A process of the test's own, killed (with what it started in its group) on drop.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// openbsd-inetd in the foreground (-d) with `conf`.
fn start_inetd(conf: &Path) -> Owned {
    Owned(
        Command::new("/usr/sbin/inetd")
            .arg("-d")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install {package} (bash .ci/run does)"
    );
}

/// A documented example with the test's port and forkd binary in place of 7000 and
/// /usr/sbin/forkd.
fn example(name: &str, port: u16) -> String {
    std::fs::read_to_string(Path::new(EXAMPLES).join(name))
        .unwrap()
        .replace("7000", &port.to_string())
        .replace("/usr/sbin/forkd", FORKD)
}

/// Waits until `addr` answers a protocol-v1 PING (the superserver is up and forkd works).
fn wait_serving(addr: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(stream) = forkd::client::connect(&addr.parse().unwrap(), Duration::from_secs(2)) {
            let mut reader = forkd::frame::FrameReader::new(stream, 1024);
            if forkd::frame::write_frame(reader.get_mut(), forkd::frame::Kind::Ping, b"up").is_ok()
                && matches!(reader.next_frame(), Ok(Some(f)) if f.kind == forkd::frame::Kind::Pong)
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn under_openbsd_inetd() {
    require("/usr/sbin/inetd", "openbsd-inetd");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("inetd.conf");
    std::fs::write(&conf, example("inetd.conf", port)).unwrap();
    let _inetd = start_inetd(&conf);
    let addr = format!("127.0.0.1:{port}");
    wait_serving(&addr);
    for i in 0..3u8 {
        let mut client = Client::connect(&addr.parse().unwrap());
        assert_eq!(client.echo(&[b'i', i]).payload, [b'i', i]);
        client.half_close();
        client.expect_eof();
    }
    // Protocol errors still come back as ERROR frames, not as log text on the socket.
    let mut bad = Client::connect(&addr.parse().unwrap());
    bad.send_raw(&[0, 0, 0, 0, 0x77]);
    bad.expect_error(2);
}

#[test]
fn under_xinetd_with_frame_exec() {
    require(
        XINETD,
        "xinetd (bash .ci/run unpacks it into target/xinetd)",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The service file as /etc/xinetd.d would hold it, after an empty defaults section.
    let conf = dir.path().join("xinetd.conf");
    std::fs::write(
        &conf,
        format!("defaults\n{{\n}}\n{}", example("xinetd-forkd", port)),
    )
    .unwrap();
    let _xinetd = Owned(
        Command::new(XINETD)
            .args(["-dontfork", "-pidfile"])
            .arg(dir.path().join("xinetd.pid"))
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    wait_serving(&addr);
    let mut client = Client::connect(&addr.parse().unwrap());
    assert_eq!(client.echo(b"shout").payload, b"SHOUT");
    assert_eq!(client.echo(b"again").payload, b"AGAIN");
}

#[test]
fn the_exec_handler_under_inetd_gets_the_ucspi_environment() {
    require("/usr/sbin/inetd", "openbsd-inetd");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script = dir.path().join("whoami.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$PROTO $TCPREMOTEIP $TCPLOCALPORT\"\n",
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&script, executable).unwrap();
    let conf = dir.path().join("inetd.conf");
    std::fs::write(
        &conf,
        format!(
            "127.0.0.1:{port}\tstream\ttcp\tnowait\troot\t{FORKD}\tforkd --inetd -- {}\n",
            script.display()
        ),
    )
    .unwrap();
    let _inetd = start_inetd(&conf);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + PATIENCE;
    let reply = loop {
        if let Ok(stream) = forkd::client::connect(&addr.parse().unwrap(), PATIENCE) {
            let mut client = Client::from_stream(stream);
            client.half_close();
            break String::from_utf8(client.read_to_end()).unwrap();
        }
        assert!(Instant::now() < deadline, "inetd never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply, format!("TCP 127.0.0.1 {port}\n"));
}

/// The ListenStream= and ExecStart= of a documented socket/service pair.
fn unit_values(socket: &str, service: &str, port: u16) -> (String, Vec<String>) {
    let socket = example(socket, port);
    let service = example(service, port);
    let value = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in unit"))
            .to_string()
    };
    let listen = value(&socket, "ListenStream=");
    let exec: Vec<String> = value(&service, "ExecStart=")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (listen, exec)
}

#[test]
fn systemd_units_verify() {
    require("/usr/bin/systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let units = [
        "forkd-echo.socket",
        "forkd-echo.service",
        "forkd-inetd.socket",
        "forkd-inetd@.service",
    ];
    let mut paths: Vec<PathBuf> = Vec::new();
    for unit in units {
        let path = dir.path().join(unit);
        std::fs::write(&path, example(&format!("systemd/{unit}"), 7000)).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_accept_no_hands_one_forkd_the_listener() {
    require("/usr/bin/systemd-socket-activate", "systemd");
    let port = free_port();
    let (listen, exec) = unit_values(
        "systemd/forkd-echo.socket",
        "systemd/forkd-echo.service",
        port,
    );
    assert_eq!(listen, format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    // systemd-socket-activate gives the program a fresh environment: -E passes the variable.
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &listen, "--fdname=echo"])
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .args(&exec);
    let server = Forkd::spawn_until_answering(&mut cmd, &listen);
    let ready = receive(&notify);
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready}");

    // Several connections, all children of the one forkd systemd started.
    let mut a = Client::connect(&server.addr());
    let mut b = Client::connect(&server.addr());
    assert_eq!(a.echo(b"a").payload, b"a");
    assert_eq!(b.echo(b"b").payload, b"b");
    assert_eq!(children_of(server.pid).len(), 2);
    let status_line = wait_for(&notify, "STATUS=2 active");
    assert!(status_line.contains("of 100 children"), "{status_line}");

    server.signal(libc::SIGTERM);
    let stopping = wait_for(&notify, "STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    drop((a, b));
}

#[test]
fn systemd_accept_yes_starts_forkd_inetd_per_connection() {
    require("/usr/bin/systemd-socket-activate", "systemd");
    let port = free_port();
    let (listen, exec) = unit_values(
        "systemd/forkd-inetd.socket",
        "systemd/forkd-inetd@.service",
        port,
    );
    let socket_unit = example("systemd/forkd-inetd.socket", port);
    assert!(socket_unit.contains("Accept=yes"));
    let _activator = Owned(
        Command::new("systemd-socket-activate")
            .args(["--inetd", "-a", "-l", &listen])
            .args(&exec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_serving(&listen);
    for i in 0..3u8 {
        let mut client = Client::connect(&listen.parse().unwrap());
        assert_eq!(client.echo(&[i]).payload, [i]);
    }
}

#[test]
fn inherited_sockets_must_agree_with_listen() {
    require("/usr/bin/systemd-socket-activate", "systemd");
    let port = free_port();
    let other = free_port();
    let addr = format!("127.0.0.1:{port}");
    let activator = Command::new("systemd-socket-activate")
        .args(["-l", &addr])
        .args([
            FORKD,
            "--log",
            "stderr",
            "--listen",
            &format!("127.0.0.1:{other}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // systemd-socket-activate starts forkd on the first connection.
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = activator.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let said =
        format!("forkd: systemd passed sockets for {addr} but --listen asks for 127.0.0.1:{other}");
    assert!(err.lines().any(|l| l == said), "{err}");

    // When they agree, the inherited socket serves.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &addr, FORKD, "--log", "stderr", "--listen", &addr]);
    let server = Forkd::spawn_until_answering(&mut cmd, &addr);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"agreed").payload, b"agreed");
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Receives notifications until one contains `needle`.
fn wait_for(socket: &UnixDatagram, needle: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let message = receive(socket);
        if message.contains(needle) {
            return message;
        }
        assert!(Instant::now() < deadline, "no notification with {needle}");
    }
}

/// docs/inetd.md shows each example file whole, so what the reader copies is what ran.
#[test]
fn the_docs_show_the_examples_that_run() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/inetd.md")).unwrap();
    for name in [
        "inetd.conf",
        "xinetd-forkd",
        "systemd/forkd-echo.socket",
        "systemd/forkd-echo.service",
        "systemd/forkd-inetd.socket",
        "systemd/forkd-inetd@.service",
    ] {
        let text = std::fs::read_to_string(Path::new(EXAMPLES).join(name)).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "docs/inetd.md lacks {name} as it is"
        );
    }
}

/// forkd --inetd with `args`, serving the server side of a fresh loopback connection on its
/// descriptor 0, as inetd starts it; the client side is returned with it.
fn inetd_forkd(args: &[&str]) -> (Child, Client) {
    let (served, client) = connection();
    let forkd = Command::new(FORKD)
        .args(["--inetd", "--log", "stderr"])
        .args(args)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(served)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (forkd, client)
}

/// A fresh loopback connection: the server side and the client.
fn connection() -> (std::net::TcpStream, Client) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = Client::connect(&addr.parse().unwrap());
    let (served, _) = listener.accept().unwrap();
    (served, client)
}

#[test]
fn under_inetd_the_connection_is_served_without_a_second_fork() {
    let (mut forkd, mut client) = inetd_forkd(&[]);
    assert_eq!(client.echo(b"one").payload, b"one");
    // Served by the process inetd started: it has no child.
    let pid = forkd.id() as i32;
    assert!(children_of(pid).is_empty(), "{:?}", children_of(pid));
    assert_eq!(client.echo(b"two").payload, b"two");
    client.half_close();
    client.expect_eof();
    assert!(forkd.wait().unwrap().success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut forkd.stderr.take().unwrap(), &mut log).unwrap();
    // Its own pid in the accept and end lines, no count of one, no warning repeated per
    // connection (these tests run as root).
    assert!(log.contains(&format!(" pid={pid} listen=inetd")), "{log}");
    assert!(
        log.contains(&format!(" pid={pid} status=exit:0"))
            && log.contains(" bytes_in=16 bytes_out=16"),
        "{log}"
    );
    assert!(
        !log.contains("active=") && !log.contains("warning"),
        "{log}"
    );
}

#[test]
fn under_inetd_max_lifetime_forks_a_worker_it_can_end() {
    let (mut forkd, mut client) = inetd_forkd(&["--max-lifetime", "300ms"]);
    assert_eq!(client.echo(b"alive").payload, b"alive");
    // A worker of its own, which the supervisor ends with SIGTERM at the limit, saying so.
    assert_eq!(children_of(forkd.id() as i32).len(), 1);
    client.expect_eof();
    assert!(forkd.wait().unwrap().success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut forkd.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("reason=max-lifetime") && log.contains("status=signal:SIGTERM"),
        "{log}"
    );
}

#[test]
fn under_inetd_nothing_but_frames_reaches_the_peer() {
    // A bad flag and a refused setting are said on stderr, which inetd made the connection:
    // the peer must not read them, and forkd must not die of the EPIPE if it left.
    for args in [&["--bogus"][..], &["--max-children", "0"][..]] {
        // As inetd starts it: the connection on descriptors 0, 1 and 2.
        let (served, client) = connection();
        let mut forkd = Command::new(FORKD)
            .arg("--inetd")
            .args(args)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                served.try_clone().unwrap(),
            )))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(
                served.try_clone().unwrap(),
            )))
            .stderr(Stdio::from(std::os::fd::OwnedFd::from(served)))
            .spawn()
            .unwrap();
        let status = forkd.wait().unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
        assert!(client.read_to_end().is_empty(), "{args:?}");
    }
}
