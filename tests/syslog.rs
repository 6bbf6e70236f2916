//! forkd's log through a real syslog daemon: an rsyslogd of the test's own, listening on a
//! socket in a temporary directory and writing to a file there.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, FORKD, Forkd, PATIENCE, field, path_str};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// An rsyslogd that writes `facility.severity tag message` lines to `messages`.
struct Rsyslogd {
    child: Child,
    socket: PathBuf,
    messages: PathBuf,
}

impl Rsyslogd {
    fn start(dir: &Path) -> Rsyslogd {
        Rsyslogd::start_named(dir, "messages")
    }

    /// An rsyslogd on `dir`/log.sock writing to `dir`/`messages`.
    fn start_named(dir: &Path, messages: &str) -> Rsyslogd {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} is missing: install rsyslog (bash .ci/run does)"
        );
        let socket = dir.join("log.sock");
        let messages = dir.join(messages);
        let _ = std::fs::remove_file(&socket);
        let conf = dir.join(format!(
            "{}.conf",
            messages.display().to_string().replace('/', "_")
        ));
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" RateLimit.Interval="0")
template(name="plain" type="string" string="%syslogfacility-text%.%syslogseverity-text% %syslogtag%%msg%\n")
*.* action(type="omfile" file="{messages}" template="plain")
"#,
                dir = dir.display(),
                socket = socket.display(),
                messages = messages.display(),
            ),
        )
        .unwrap();
        let child = Command::new(RSYSLOGD)
            .args([
                "-n",
                "-f",
                &path_str(&conf),
                "-i",
                &path_str(&dir.join("rsyslogd.pid")),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let deadline = Instant::now() + PATIENCE;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not create {socket:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Rsyslogd {
            child,
            socket,
            messages,
        }
    }

    /// Waits for a line of the log file containing every one of `parts`.
    fn wait_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(&self.messages).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no syslog line with {parts:?}; file:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn start_accept_and_end_reach_a_real_syslog_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let syslog = Rsyslogd::start(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut cmd = Command::new(FORKD);
    cmd.args([
        "--listen",
        &port,
        "--log",
        "syslog",
        "--syslog-socket",
        &path_str(&syslog.socket),
        "--syslog-facility",
        "local3",
    ]);
    let mut server = Forkd::spawn_until_answering(&mut cmd, &port);

    let start = syslog.wait_line(&["local3.info", &format!("forkd[{}]:", server.pid), " start "]);
    assert_eq!(field(&start, "listen"), Some(port.as_str()));

    let mut client = Client::connect(&port.parse().unwrap());
    assert_eq!(client.echo(b"to syslog").payload, b"to syslog");
    client.half_close();
    client.expect_eof();
    let accept = syslog.wait_line(&["local3.info", " accept peer=127.0.0.1:"]);
    let child = field(&accept, "pid").unwrap().to_string();
    syslog.wait_line(&["local3.info", &format!("pid={child} status=exit:0")]);

    // A child's own lines carry the child's pid in the tag.
    let mut bad = Client::connect(&port.parse().unwrap());
    bad.send_raw(&[0, 0, 0, 0, 0x42]);
    assert_eq!(bad.recv().error_parts().unwrap().0, 2);
    let error = syslog.wait_line(&["local3.warning", " error peer=", "code=2"]);
    let tag_pid = error
        .split("forkd[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    assert_eq!(Some(tag_pid), field(&error, "pid"), "{error}");
    assert_ne!(tag_pid, server.pid.to_string());

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    // Served: the harness's probe, the echo and the bad frame.
    syslog.wait_line(&["local3.info", " stop served=3 killed=0"]);
    assert!(
        server.log().is_empty(),
        "stderr stays quiet: {:?}",
        server.log()
    );
}

#[test]
fn without_a_syslog_socket_forkd_says_so_once_and_logs_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.sock");
    let mut cmd = Command::new(FORKD);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--log",
        "syslog",
        "--syslog-socket",
        &path_str(&missing),
    ]);
    let mut server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let notice = server.wait_log("syslog unavailable");
    assert!(notice.contains(&path_str(&missing)), "{notice}");
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"x").payload, b"x");
    server.wait_log(" accept peer=");
    let notices = server
        .log()
        .iter()
        .filter(|l| l.contains("syslog unavailable"))
        .count();
    assert_eq!(notices, 1);
}

#[test]
fn a_restarted_syslog_daemon_gets_the_next_lines() {
    let dir = tempfile::tempdir().unwrap();
    let first = Rsyslogd::start_named(dir.path(), "first");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut cmd = Command::new(FORKD);
    cmd.args(["--listen", &port, "--log", "syslog", "--syslog-socket"])
        .arg(&first.socket);
    let server = Forkd::spawn_until_answering(&mut cmd, &port);
    first.wait_line(&[" start version="]);
    // The harness's probe connection is logged too before the daemon goes.
    first.wait_line(&[" end peer="]);
    drop(first);

    // A new daemon on the same socket path: forkd reconnects on its next line.
    let second = Rsyslogd::start_named(dir.path(), "second");
    let mut client = Client::connect(&port.parse().unwrap());
    assert_eq!(client.echo(b"after restart").payload, b"after restart");
    second.wait_line(&[" accept peer=127.0.0.1:"]);
    // And SIGHUP reconnects on purpose.
    server.signal(libc::SIGHUP);
    second.wait_line(&["status signal=SIGHUP log=syslog-reconnected"]);
    assert!(
        server.log().is_empty(),
        "nothing fell back to stderr: {:?}",
        server.log()
    );
}
