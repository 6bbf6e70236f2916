//! The supervisor against the real binary: the child limit, reaping, descriptor hygiene,
//! shutdown with a grace period, a crashing child, pidfile and Unix socket files.

mod common;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Forkd, field, forkd_fails, path_str, unix_addr};
use forkd::frame::Kind;

#[test]
fn third_connection_waits_in_the_backlog_at_max_children_2() {
    let mut server = Forkd::start(&["--max-children", "2"]);
    let mut first = Client::connect(&server.addr());
    let mut second = Client::connect(&server.addr());
    assert_eq!(first.echo(b"1").payload, b"1");
    assert_eq!(second.echo(b"2").payload, b"2");
    server.wait_log("accepting=paused");

    let mut third = Client::connect(&server.addr());
    third.send(Kind::Data, b"3");
    third
        .stream()
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut probe = [0u8; 1];
    let early = std::io::Read::read(third.stream(), &mut probe);
    assert!(
        early.is_err(),
        "third connection answered while two children were busy: {early:?}"
    );
    assert_eq!(server.children().len(), 2);

    drop(first);
    third
        .stream()
        .set_read_timeout(Some(common::PATIENCE))
        .unwrap();
    assert_eq!(third.recv().payload, b"3");
    assert_eq!(second.echo(b"2 again").payload, b"2 again");
    server.wait_log("accepting=resumed");
}

#[test]
fn no_zombie_and_no_descriptor_leak_after_2000_connections() {
    let mut server = Forkd::start(&["--max-children", "16"]);
    let fds_before = server.fd_count();
    for i in 0..2000u32 {
        let mut client = Client::connect(&server.addr());
        let payload = i.to_be_bytes();
        assert_eq!(client.echo(&payload).payload, payload);
        client.half_close();
        client.expect_eof();
    }
    server.wait_log_count(" end ", 2000);
    server.wait_no_children();
    assert_eq!(server.fd_count(), fds_before, "supervisor descriptors");
    let ends = server.wait_log_count(" end ", 2000);
    assert!(ends.iter().all(|l| l.contains("status=exit:0")));
}

#[test]
fn sigterm_lets_a_conversation_in_flight_finish_then_exits_0() {
    let mut server = Forkd::start(&["--grace", "10"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"before").payload, b"before");
    server.signal(libc::SIGTERM);
    server.wait_log("stop signal=SIGTERM active=1/64");
    // The listener is closed at once; the accepted conversation goes on.
    let refused = forkd::client::connect(&server.addr(), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    assert_eq!(client.echo(b"after").payload, b"after");
    client.half_close();
    client.expect_eof();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0));
    let stop = server.wait_log("stop served=");
    assert!(stop.contains("killed=0"), "{stop}");
    // The same port can be bound again at once.
    TcpListener::bind(server.addrs[0].as_str()).expect("port free after exit");
}

#[test]
fn children_outliving_the_grace_period_are_killed() {
    let mut server = Forkd::start(&["--grace", "0.5"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"idle next").payload, b"idle next");
    let child = server.child_for(client.stream());
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    server.wait_log(&format!("pid={child} status=signal:SIGKILL"));
    assert!(server.wait_log("stop served=").contains("killed=1"));
    client.expect_eof();
}

#[test]
fn a_second_signal_ends_the_grace_period() {
    let mut server = Forkd::start(&["--grace", "60"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"x").payload, b"x");
    server.signal(libc::SIGINT);
    server.wait_log("stop signal=SIGINT");
    let started = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    server.wait_log("grace=ended");
}

#[test]
fn a_child_killed_by_sigsegv_harms_no_one_else() {
    let mut server = Forkd::start(&[]);
    let mut victim = Client::connect(&server.addr());
    let mut bystander = Client::connect(&server.addr());
    assert_eq!(victim.echo(b"v").payload, b"v");
    assert_eq!(bystander.echo(b"b").payload, b"b");
    let pid = server.child_for(victim.stream());
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSEGV) }, 0);

    let line = server.wait_log(&format!("pid={pid} status=signal:SIGSEGV"));
    assert!(
        line.contains("warning:"),
        "a signal death is a warning: {line}"
    );
    assert_eq!(bystander.echo(b"still").payload, b"still");
    let mut newcomer = Client::connect(&server.addr());
    assert_eq!(newcomer.echo(b"new").payload, b"new");
    let mut gone = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(victim.stream(), &mut gone),
        Ok(0) | Err(_)
    ));
}

#[test]
fn children_leave_the_supervisors_process_group() {
    let mut server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"pg").payload, b"pg");
    let child = server.child_for(client.stream());
    let pgid = unsafe { libc::getpgid(child) };
    assert_eq!(pgid, child, "child runs in its own process group");
    // It holds no listener and no signal descriptor: the standard three and its connection
    // (and the log's own non-blocking descriptor for the stderr pipe).
    // (Two opens of the stderr pipe: the supervisor's, for the logger, and the workers', its
    // stderr.)
    let fds = without_log_sink(open_fds(child), 2);
    assert_eq!(fds.len(), 4, "{fds:?}");
    assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
    // While the supervisor has its listener, its signalfd, the memfd of the byte counts it
    // shares with workers (kept for an upgrade in place), and two opens of the stderr pipe:
    // its own, and its workers', whose flags a worker may change.
    let supervisor = without_log_sink(open_fds(server.pid), 2);
    assert_eq!(supervisor.len(), 6, "{supervisor:?}");
    assert!(
        supervisor
            .iter()
            .any(|(_, target)| target.starts_with("/memfd:forkd-table")),
        "{supervisor:?}"
    );
    assert!(
        supervisor
            .iter()
            .any(|(_, target)| target == "anon_inode:[signalfd]"),
        "{supervisor:?}"
    );
}

/// The descriptors but the one the log opened on stderr's pipe (a second, non-blocking open
/// of the same pipe, so a stalled reader cannot stall forkd); asserts there are `sinks`.
fn without_log_sink(fds: Vec<(i32, String)>, sinks: usize) -> Vec<(i32, String)> {
    let stderr = fds[2].1.clone();
    assert!(stderr.starts_with("pipe:"), "{fds:?}");
    let (sink, rest): (Vec<_>, Vec<_>) = fds
        .into_iter()
        .partition(|(fd, target)| *fd > 2 && *target == stderr);
    assert_eq!(
        sink.len(),
        sinks,
        "log descriptors on the stderr pipe: {sink:?}"
    );
    rest
}

fn open_fds(pid: i32) -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let fd = e.file_name().to_string_lossy().parse().unwrap();
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (fd, target.to_string_lossy().into_owned())
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn pidfile_is_written_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("forkd.pid");
    let mut server = Forkd::start(&["--pidfile", &path_str(&pidfile)]);
    let written = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(written, format!("{}\n", server.pid));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(!pidfile.exists());
}

#[test]
fn unix_socket_file_stale_is_replaced_and_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = unix_addr(dir.path(), "stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file is left behind");
    let mut server = Forkd::start(&["--listen", &addr]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"u").payload, b"u");
    drop(client);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(!path.exists(), "socket file removed on exit");
}

#[test]
fn unix_socket_in_use_or_not_a_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = unix_addr(dir.path(), "live.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let (code, err) = forkd_fails(&["--log", "stderr", "--listen", &addr]);
    assert_eq!(code, 1);
    assert!(err.contains("another server is listening"), "{err}");
    assert!(path.exists());

    let (file, addr) = unix_addr(dir.path(), "plain-file");
    std::fs::write(&file, "keep me").unwrap();
    let (code, err) = forkd_fails(&["--log", "stderr", "--listen", &addr]);
    assert_eq!(code, 1);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn an_address_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = forkd_fails(&["--log", "stderr", "--listen", &addr]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("forkd: cannot listen on {addr}: ")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

#[test]
fn an_address_not_on_this_machine_is_one_clear_line() {
    // TEST-NET-1 (RFC 5737): never assigned to a local interface.
    let (code, err) = forkd_fails(&["--log", "stderr", "--listen", "192.0.2.1:7000"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("192.0.2.1:7000"), "{err}");
}

#[test]
fn bad_flags_are_one_line_naming_the_flag_exit_2() {
    for (args, names) in [
        (vec!["--listen", "localhost:7000"], "--listen"),
        (
            vec!["--listen", ":1", "--max-children", "many"],
            "--max-children",
        ),
        (vec!["--listen", ":1", "--backlog", "-5"], "--backlog"),
        (vec!["--listen", ":1", "--max-frame", "12Q"], "--max-frame"),
        (vec!["--listen", ":1", "--handler", "nope"], "--handler"),
        (vec!["--listen", ":1", "--frobnicate"], "--frobnicate"),
        (vec![], "--listen"),
    ] {
        let (code, err) = forkd_fails(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("forkd: ") && err.contains(names), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn help_and_version() {
    let out = std::process::Command::new(common::FORKD)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--handler",
        "--max-children",
        "--backlog",
        "--max-frame",
        "--grace",
        "--log",
        "--syslog-facility",
        "--pidfile",
        "--verbose",
        "--quiet",
        "Examples:",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
    let out = std::process::Command::new(common::FORKD)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("forkd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn log_lines_carry_peer_pid_status_and_duration() {
    let mut server = Forkd::start(&["--max-children", "3"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"log").payload, b"log");
    let child = server.child_for(client.stream());
    client.half_close();
    client.expect_eof();
    let end = server.wait_log("end peer=");
    assert_eq!(field(&end, "pid"), Some(child.to_string().as_str()));
    assert_eq!(field(&end, "status"), Some("exit:0"));
    assert_eq!(field(&end, "active"), Some("0/3"));
    assert!(field(&end, "duration").unwrap().ends_with('s'));
    let accept = server.wait_log("accept peer=");
    assert_eq!(field(&accept, "active"), Some("1/3"));
}

#[test]
fn quiet_drops_connection_lines_but_keeps_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let (_, addr) = unix_addr(dir.path(), "quiet.sock");
    let mut server = Forkd::start_silent_binary(&common::example("faults"), &["-q"], &addr);
    // No accept line says which child is whose: the victim ends its own child.
    let mut victim = Client::connect(&server.addr());
    assert_eq!(victim.echo(b"q").payload, b"q");
    victim.send(Kind::Data, b"abort");
    let end = server.wait_log("status=signal:SIGABRT");
    assert!(end.contains("warning:"), "{end}");
    let log = server.log();
    // Start and stop stay: -q leaves out only each connection's routine lines.
    assert!(
        !log.iter().any(|l| l.contains(" accept "))
            && log.iter().any(|l| l.contains(" start version=")),
        "{log:?}"
    );
}

#[test]
fn sighup_and_sigusr1_are_harmless_and_say_so() {
    let mut server = Forkd::start(&[]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"1").payload, b"1");
    server.signal(libc::SIGHUP);
    let hup = server.wait_log("status signal=SIGHUP");
    assert_eq!(field(&hup, "log"), Some("stderr"));
    server.signal(libc::SIGUSR1);
    let status = server.wait_log("status signal=SIGUSR1");
    assert_eq!(field(&status, "active"), Some("1/64"));
    assert_eq!(field(&status, "accepted"), Some("1"));
    assert_eq!(field(&status, "listen"), Some(server.addrs[0].as_str()));
    // Still serving, the old conversation and new ones.
    assert_eq!(client.echo(b"2").payload, b"2");
    let mut other = Client::connect(&server.addr());
    assert_eq!(other.echo(b"3").payload, b"3");
}

#[test]
fn print_port_tells_a_script_the_port_chosen_even_when_quiet() {
    use std::io::BufRead;
    let mut forkd = Command::new(common::FORKD)
        .args([
            "--listen",
            ":0",
            "--listen",
            "127.0.0.2:0",
            "--print-port",
            "-q",
        ])
        .args(["--log", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(common::KillOnDrop)
        .unwrap();
    let mut ports = std::io::BufReader::new(forkd.0.stdout.take().unwrap()).lines();
    // `:0` is two listeners on one port, printed once; then 127.0.0.2's.
    let any: u16 = ports.next().unwrap().unwrap().parse().unwrap();
    let second: u16 = ports.next().unwrap().unwrap().parse().unwrap();
    assert!(any != 0 && second != 0 && any != second);
    for addr in [format!("127.0.0.1:{any}"), format!("127.0.0.2:{second}")] {
        let mut client = Client::connect(&addr.parse().unwrap());
        assert_eq!(client.echo(b"port").payload, b"port");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(forkd.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(forkd.0.wait().unwrap().success());
    // Nothing more on stdout, and with -q the start line still names the ports.
    assert!(ports.next().is_none());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut forkd.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains(&format!(
            "listen=0.0.0.0:{any},[::]:{any},127.0.0.2:{second}"
        )),
        "{log}"
    );
    assert!(!log.contains(" accept peer="), "{log}");
}

#[test]
fn check_says_ok_or_why_without_serving() {
    let run = |args: &[&str]| {
        Command::new(common::FORKD)
            .args(["--log", "stderr", "--check"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A port already taken is not a check's business: nothing is bound.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let out = run(&["--listen", &taken, "--max-children", "8", "--", "cat"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (args, why) in [
        (
            &["--listen", ":0", "--user", "no-such-user-x"][..],
            "no such user",
        ),
        (
            &["--listen", ":0", "--", "no-such-program-x"][..],
            "no-such-program-x",
        ),
        (&["--listen", ":0", "--rlimit-as", "1M"][..], "--rlimit-as"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().count() == 1 && err.contains(why),
            "{args:?}: {err}"
        );
    }
}

/// The share of the program's own clean read-only mappings (code, read-only data) that the
/// process `pid` has in its page tables, from /proc/PID/smaps.
#[cfg(target_os = "linux")]
fn program_code_mapped(pid: i32) -> f64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = exe.to_str().unwrap().to_string();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    // (size, rss, anonymous) of each mapping of the program that is not writable.
    let mut mappings: Vec<(u64, u64, u64)> = Vec::new();
    let mut current = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kib = || fields.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap();
        match fields.first() {
            Some(&"Size:") if current => mappings.last_mut().unwrap().0 = kib(),
            Some(&"Rss:") if current => mappings.last_mut().unwrap().1 = kib(),
            Some(&"Anonymous:") if current => mappings.last_mut().unwrap().2 = kib(),
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                current =
                    fields.len() >= 6 && fields[5..].join(" ") == exe && !fields[1].contains('w');
                if current {
                    mappings.push((0, 0, 0));
                }
            }
            _ => {}
        }
    }
    let clean: Vec<_> = mappings.iter().filter(|m| m.2 == 0).collect();
    assert!(!clean.is_empty(), "no clean mapping of {exe} in:\n{smaps}");
    clean.iter().map(|m| m.1).sum::<u64>() as f64 / clean.iter().map(|m| m.0).sum::<u64>() as f64
}

/// Less than 70% of the program's code and read-only data is in `pid`'s page tables.
#[cfg(target_os = "linux")]
fn assert_little_code_mapped(pid: i32, when: &str) {
    let mapped = program_code_mapped(pid);
    assert!(
        mapped < 0.7,
        "{when}: {:.0}% of the program's code and read-only data mapped",
        mapped * 100.0
    );
}

/// Start-up runs code from all over the program, and the kernel maps 64 KiB of code around
/// each page that faults: most of it stayed in the supervisor's page tables (85% of this
/// debug build's code and read-only data, 97% of its code). Serving, the supervisor keeps
/// mapped what its loop runs (50%).
#[cfg(target_os = "linux")]
#[test]
fn a_serving_supervisor_keeps_little_of_its_start_up_code_mapped() {
    for model in ["fork", "thread"] {
        let server = Forkd::start(&["--model", model]);
        for _ in 0..20 {
            assert_eq!(Client::connect(&server.addr()).echo(b"x").payload, b"x");
        }
        assert_little_code_mapped(server.pid, model);
    }
    // A reload runs start-up's code again: the configuration file read and parsed, the
    // listeners compared (the fork model: a thread model's threads may still be there, and
    // while they are, nothing is dropped).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("forkd.toml");
    let port = common::free_port();
    std::fs::write(
        &config,
        format!("listen = [\"127.0.0.1:{port}\"]\nlog = \"stderr\"\n"),
    )
    .unwrap();
    let mut server = Forkd::start_with(
        Command::new(common::FORKD).arg("--config").arg(&config),
        dir,
    );
    server.signal(libc::SIGHUP);
    let line = server.wait_log(" reload=");
    assert!(line.contains(" reload=applied "), "{line}");
    assert_eq!(Client::connect(&server.addr()).echo(b"x").payload, b"x");
    assert_little_code_mapped(server.pid, "after SIGHUP");
}
