//! The edges a hostile or unlucky world reaches: log sinks that stop reading, programs that
//! leave descendants behind, a shutdown with connections still waiting in the backlog.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, FORKD, Forkd, PATIENCE, children_of, field, path_str, unix_addr};
use forkd::frame::Kind;

/// Fills the receive queue of the datagram socket at `path` until a send would wait: from
/// then on, every sender blocks (or, non-blocking, fails) until somebody reads.
fn fill_datagram_queue(path: &Path) {
    let sender = UnixDatagram::unbound().unwrap();
    sender.connect(path).unwrap();
    sender.set_nonblocking(true).unwrap();
    let mut sent = 0;
    loop {
        match sender.send(b"filler") {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling {path:?}: {e}"),
        }
        assert!(sent < 1_000_000, "the queue of {path:?} never filled");
    }
}

/// A datagram socket bound at `path` whose queue is full: a reader that stopped reading.
fn stuck_datagram_socket(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).unwrap();
    fill_datagram_queue(path);
    socket
}

/// Every datagram waiting on `socket`, as text.
fn read_datagrams(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).unwrap();
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    lines
}

/// Talks one echo conversation to completion.
fn converse(addr: &forkd::addr::Addr) {
    let mut client = Client::connect(addr);
    assert_eq!(client.echo(b"still here").payload, b"still here");
    client.half_close();
    client.expect_eof();
}

#[test]
fn a_syslog_daemon_that_stops_reading_costs_lines_not_service() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("log.sock");
    let syslog = stuck_datagram_socket(&socket_path);
    let (_, addr) = unix_addr(dir.path(), "forkd.sock");
    let mut cmd = Command::new(FORKD);
    cmd.args([
        "--listen",
        &addr,
        "--syslog-socket",
        &path_str(&socket_path),
    ]);
    let mut server = Forkd::spawn_until_answering(&mut cmd, &addr);

    // Each conversation logs an accept and an end line that cannot be sent.
    for _ in 0..50 {
        converse(&server.addr());
    }
    server.wait_no_children();
    // The daemon reads again: the next line to get through is the count of those lost.
    assert!(!read_datagrams(&syslog).is_empty());
    converse(&server.addr());
    let deadline = Instant::now() + PATIENCE;
    let dropped = loop {
        let lines = read_datagrams(&syslog);
        if let Some(line) = lines.iter().find(|l| l.contains("log_dropped=")) {
            break line.clone();
        }
        assert!(Instant::now() < deadline, "no log_dropped line: {lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let count: u64 = field(&dropped, "log_dropped").unwrap().parse().unwrap();
    assert!(count >= 100, "{dropped}");

    // A stuck sink does not hold up shutdown either.
    fill_datagram_queue(&socket_path);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

/// A server started by hand, killed with its children if a test fails before it stops it.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            for (pid, _) in children_of(self.0.id() as i32) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `binary` (forkd's flags) logging to `stderr`, which nobody reads, on a Unix socket;
/// returns once it listens and enough conversations were logged to fill a page-sized buffer.
fn start_with_stuck_stderr(
    binary: &str,
    args: &[&str],
    dir: &Path,
    stderr: Stdio,
) -> (Started, forkd::addr::Addr) {
    let (_, addr) = unix_addr(dir, "forkd.sock");
    let child = Started(
        Command::new(binary)
            .args(["--log", "stderr", "--listen", &addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let addr: forkd::addr::Addr = addr.parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while forkd::client::connect(&addr, PATIENCE).is_err() {
        assert!(Instant::now() < deadline, "{binary} never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A page of buffer holds some 25 conversations' lines: go well past that.
    for _ in 0..150 {
        converse(&addr);
    }
    (child, addr)
}

/// [`start_with_stuck_stderr`] into a pipe of one page, which the caller holds.
fn with_unread_stderr(
    binary: &str,
    args: &[&str],
    dir: &Path,
) -> (Started, std::process::ChildStderr, forkd::addr::Addr) {
    let (read, write) = nix::unistd::pipe().unwrap();
    // SAFETY: F_SETPIPE_SZ only sizes the pipe's buffer.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&read),
            libc::F_SETPIPE_SZ,
            4096,
        )
    };
    let (child, addr) = start_with_stuck_stderr(binary, args, dir, Stdio::from(write));
    (child, std::process::ChildStderr::from(read), addr)
}

/// Stops `child` with SIGTERM, reading its stderr to the end so its last lines can go.
fn stop_reading(mut child: Started, mut stderr: impl Read) {
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let mut rest = Vec::new();
    stderr.read_to_end(&mut rest).unwrap();
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn a_stderr_pipe_nobody_reads_costs_lines_not_service() {
    let dir = tempfile::tempdir().unwrap();
    let (child, mut stderr, addr) = with_unread_stderr(FORKD, &[], dir.path());
    let mut text = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut take = |text: &mut Vec<u8>| {
        let n = stderr.read(&mut buf).unwrap();
        text.extend_from_slice(&buf[..n]);
    };
    take(&mut text);
    converse(&addr);
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&text).contains("log_dropped=") {
        assert!(Instant::now() < deadline, "no log_dropped line");
        take(&mut text);
    }
    stop_reading(child, stderr);
}

/// Rust writes "memory allocation of ... failed" to stderr, then aborts: a worker out of
/// memory ends though nobody reads that stderr.
fn out_of_memory_with_unread_stderr(child: Started, stderr: impl Read, addr: &forkd::addr::Addr) {
    let mut client = Client::connect(addr);
    client.send(Kind::Data, b"leak 1000");
    client.expect_eof();
    stop_reading(child, stderr);
}

#[test]
fn a_worker_out_of_memory_does_not_wait_on_a_stderr_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let faults = common::example("faults");
    let (child, stderr, addr) = with_unread_stderr(&faults, &["--rlimit-as", "256M"], dir.path());
    out_of_memory_with_unread_stderr(child, stderr, &addr);
}

#[test]
fn a_notify_socket_nobody_reads_does_not_stop_forkd() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let manager = stuck_datagram_socket(&notify);
    let (_, addr) = unix_addr(dir.path(), "forkd.sock");
    let mut cmd = Command::new(FORKD);
    cmd.args(["--log", "stderr", "--listen", &addr])
        .env("NOTIFY_SOCKET", &notify);
    let mut server = Forkd::spawn_until_answering(&mut cmd, &addr);
    for _ in 0..20 {
        converse(&server.addr());
    }
    server.wait_log("status notify=READY=1");
    // Once the manager reads again, READY=1 still reaches it.
    read_datagrams(&manager);
    converse(&server.addr());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = read_datagrams(&manager);
        if got.iter().any(|m| m.contains("READY=1")) {
            break;
        }
        assert!(Instant::now() < deadline, "READY=1 never sent: {got:?}");
        converse(&server.addr());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

/// User and system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Voluntary context switches of `pid`: one per poll that slept.
fn wakeups(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_grace_period_waits_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let _manager = UnixDatagram::bind(&notify).unwrap();
    let (_, addr) = unix_addr(dir.path(), "forkd.sock");
    let mut cmd = Command::new(FORKD);
    cmd.args(["--log", "stderr", "--listen", &addr, "--grace", "30"])
        .args(["--", "sh", "-c"])
        .arg("echo said >&2; sleep 1; echo more >&2; exec sleep 30 <&- >&-")
        .env("NOTIFY_SOCKET", &notify);
    let mut server = Forkd::spawn(&mut cmd, tempfile::tempdir().unwrap());
    server.addrs = vec![addr.clone()];
    let deadline = Instant::now() + PATIENCE;
    let client = loop {
        if let Ok(stream) = forkd::client::connect(&server.addr(), PATIENCE) {
            break stream;
        }
        assert!(Instant::now() < deadline, "forkd never listened");
        std::thread::sleep(Duration::from_millis(10));
    };
    server.wait_log(" line=said");
    // "more" arrives during the grace period, and the status changed since it was last sent.
    server.signal(libc::SIGTERM);
    server.wait_log("stop signal=SIGTERM");
    server.wait_log(" line=more");
    let (cpu, woke) = (cpu_ticks(server.pid), wakeups(server.pid));
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, woke) = (cpu_ticks(server.pid) - cpu, wakeups(server.pid) - woke);
    // Spinning burns the 200 ticks of two seconds; a timer due in the past wakes it some
    // 2,000 times. Waiting costs neither.
    assert!(cpu < 50, "{cpu} ticks of CPU in 2 s of grace");
    assert!(woke < 100, "{woke} wake-ups in 2 s of grace");
    server.signal(libc::SIGTERM);
    server.wait_exit();
    drop(client);
}

#[test]
fn a_relay_ends_with_its_program_even_if_a_descendant_keeps_stderr() {
    let mut server = Forkd::start(&[
        "--",
        "sh",
        "-c",
        "sleep 30 </dev/null >/dev/null & echo bye",
    ]);
    let baseline = server.fd_count();
    let mut groups = Vec::new();
    for _ in 0..8 {
        let mut client = Client::connect(&server.addr());
        groups.push(server.child_for(client.stream()));
        let mut out = Vec::new();
        let _ = client.stream().read_to_end(&mut out);
    }
    server.wait_log_count(" end peer=", 8);
    let deadline = Instant::now() + PATIENCE;
    while server.fd_count() > baseline {
        assert!(
            Instant::now() < deadline,
            "the supervisor still holds {} descriptors over {baseline}",
            server.fd_count() - baseline
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for group in groups {
        unsafe { libc::killpg(group, libc::SIGKILL) };
    }
}

/// The first child of `parent`, once it has one.
fn first_child_of(parent: i32) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((child, _)) = children_of(parent).first() {
            return *child;
        }
        assert!(Instant::now() < deadline, "{parent} never started a child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` is gone (or a zombie nobody will run again).
fn wait_gone(pid: i32, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} {pid} outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn max_lifetime_ends_the_whole_group_of_a_program() {
    let mut server = Forkd::start(&["--max-lifetime", "1", "--", "sh", "-c", "sleep 60 & wait"]);
    let mut client = Client::connect(&server.addr());
    let pid = server.child_for(client.stream());
    let sleeper = first_child_of(pid);
    server.wait_log(&format!("pid={pid} status=signal:"));
    wait_gone(sleeper, "the program's own child");
    client.expect_eof();
}

/// The processes whose process group is `group`.
fn members_of(group: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| unsafe { libc::getpgid(*pid) } == group && !is_zombie(*pid))
        .collect()
}

/// A frame-exec program that started a child of its own, for a worker that is then ended by
/// `end`; the program's whole group must end with the worker.
fn frame_exec_group_ends_with_its_worker(flags: &[&str], end: impl FnOnce(&mut Forkd, i32)) {
    let mut args = flags.to_vec();
    args.extend([
        "--handler",
        "frame-exec",
        "--",
        "sh",
        "-c",
        "sleep 61 & exec sleep 62",
    ]);
    let mut server = Forkd::start(&args);
    let mut client = Client::connect(&server.addr());
    client.send(Kind::Data, b"run");
    let worker = server.child_for(client.stream());
    let program = first_child_of(worker);
    let deadline = Instant::now() + PATIENCE;
    while members_of(program).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the program never started its own child"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let group = members_of(program);
    end(&mut server, worker);
    for pid in group {
        wait_gone(pid, "frame-exec program or its child");
    }
}

#[test]
fn a_frame_exec_program_and_its_group_end_with_a_worker_past_its_lifetime() {
    frame_exec_group_ends_with_its_worker(&["--max-lifetime", "1"], |server, worker| {
        server.wait_log(&format!("pid={worker} status=signal:"));
    });
}

#[test]
fn a_frame_exec_program_and_its_group_end_with_the_grace_period() {
    frame_exec_group_ends_with_its_worker(&["--grace", "1"], |server, _| {
        server.signal(libc::SIGTERM);
        server.wait_exit();
    });
}

#[test]
fn connections_waiting_in_the_backlog_at_shutdown_are_told_why() {
    let mut server = Forkd::start(&["--max-children", "1", "--grace", "5"]);
    let mut holder = Client::connect(&server.addr());
    assert_eq!(holder.echo(b"first").payload, b"first");
    let mut waiting: Vec<Client> = (0..6)
        .map(|_| {
            let mut c = Client::connect(&server.addr());
            c.send(Kind::Ping, b"anyone?");
            c
        })
        .collect();
    // They sit in the kernel's backlog: forkd is at its limit and defers.
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    for client in &mut waiting {
        let text = client.expect_error(9);
        assert!(text.contains("shutting down"), "{text}");
    }
    // The conversation already running is served through the grace period.
    assert_eq!(holder.echo(b"still").payload, b"still");
    holder.half_close();
    holder.expect_eof();
    let stop = server.wait_log("stop served=");
    assert_eq!(field(&stop, "refused"), Some("6"), "{stop}");
    assert!(server.wait_exit().success());
}

#[test]
fn a_slow_reader_is_timed_on_the_whole_reply_not_each_write() {
    let mut server = Forkd::start(&["--idle-timeout", "3", "--max-frame", "40M"]);
    let mut client = Client::connect(&server.addr());
    let pid = server.child_for(client.stream());
    let payload = vec![5u8; 32 << 20];
    let sender = client.send_in_background(forkd::frame::Frame::new(Kind::Data, payload).encode());
    // Read 128 KiB every 100 ms: always some progress, 25 s for the whole reply.
    let started = Instant::now();
    let mut buf = vec![0u8; 128 << 10];
    let mut taken = 0usize;
    let line = loop {
        if let Some(line) = server
            .log()
            .into_iter()
            .find(|l| l.contains("error peer=") && l.contains(&format!("pid={pid} ")))
        {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still served after {taken} bytes in {:?}",
            started.elapsed()
        );
        match client.stream().read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => taken += n,
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("code=7"), "{line}");
    assert!(line.contains("reply not taken in 3s"), "{line}");
    assert!(taken < 32 << 20, "{taken}");
    let _ = sender.join();
}

#[test]
fn the_idle_clock_restarts_in_full_after_a_frame_that_came_in_pieces() {
    let server = Forkd::start(&["--idle-timeout", "3"]);
    let mut client = Client::connect(&server.addr());
    let frame = forkd::frame::Frame::new(Kind::Data, b"pieces".to_vec()).encode();
    client.send_raw(&frame[..6]);
    std::thread::sleep(Duration::from_millis(2300));
    // A read that starts with 0.7 s left on the clock.
    client.send_raw(&frame[6..8]);
    std::thread::sleep(Duration::from_millis(100));
    client.send_raw(&frame[8..]);
    assert_eq!(client.recv().payload, b"pieces");
    // The clock starts again from this reply: 1.5 s of quiet is well inside 3 s.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.echo(b"next").payload, b"next");
}

/// Asserts forkd refuses `args` at start: exit 2, one line on stderr containing every one
/// of `words`.
fn refused_at_start(args: &[&str], words: &[&str]) {
    let (code, err) = common::forkd_fails(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    for word in words {
        assert!(err.contains(word), "{args:?}: {word:?} not in {err}");
    }
}

#[test]
fn settings_that_doom_every_connection_are_refused_at_start() {
    let listen = ["--listen", "127.0.0.1:0"];
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--", "no-such-program-anywhere"],
            &["no-such-program-anywhere", "PATH"],
        ),
        (
            &["--handler", "frame-exec", "--", "/nonexistent/program"],
            &["/nonexistent/program"],
        ),
        (
            &["--rlimit-nofile", "4294967295"],
            &["--rlimit-nofile", "hard limit"],
        ),
        (&["--rlimit-as", "4M"], &["--rlimit-as", "--max-frame"]),
        (&["--max-frame", "2G"], &["--max-frame", "1G"]),
    ];
    for (args, words) in cases {
        let all: Vec<&str> = listen.iter().chain(args.iter()).copied().collect();
        refused_at_start(&all, words);
    }
}

#[test]
fn every_duration_follows_one_range_rule() {
    for flag in [
        "--grace",
        "--idle-timeout",
        "--max-lifetime",
        "--request-timeout",
    ] {
        for value in ["1e19", "-1", "0.0001", "inf", "NaN"] {
            refused_at_start(&["--listen", "127.0.0.1:0", flag, value], &[flag, value]);
        }
    }
    refused_at_start(
        &["--listen", "127.0.0.1:0", "--rate", "5/1e19"],
        &["--rate"],
    );
}

#[test]
fn zero_turns_max_lifetime_off_as_it_does_the_other_limits() {
    let server = Forkd::start(&["--max-lifetime", "0", "--idle-timeout", "0"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"one").payload, b"one");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.echo(b"still").payload, b"still");
}

#[test]
fn durations_take_units() {
    let mut server = Forkd::start(&["--grace", "1500ms", "--idle-timeout", "2m"]);
    let start = server.wait_log(" start version=");
    assert!(start.contains("grace=1.5s"), "{start}");
}

#[test]
fn a_bad_value_names_its_flag_and_a_typo_gets_a_suggestion() {
    refused_at_start(
        &["--listen", "127.0.0.1:0", "--max-frame", "-1"],
        &["--max-frame", "'-1'"],
    );
    refused_at_start(
        &["--listen", "127.0.0.1:0", "--grace", "-1"],
        &["--grace", "'-1'"],
    );
    refused_at_start(
        &["--lisen", "127.0.0.1:0"],
        &["--lisen", "similar", "'--listen'"],
    );
}

#[test]
fn an_ipv4_mapped_rule_is_the_ipv4_rule_it_maps() {
    let server = Forkd::start(&["--deny", "::ffff:0.0.0.0/96"]);
    let mut client = Client::connect(&server.addr());
    client.send(Kind::Ping, b"in?");
    let message = client.expect_error(5);
    assert!(message.contains("rule 0.0.0.0/0"), "{message}");
}

#[test]
fn only_connections_that_get_a_worker_spend_rate_tokens() {
    let server = Forkd::start(&[
        "--rate",
        "2/60",
        "--max-children",
        "1",
        "--overload",
        "reject",
    ]);
    let mut holder = Client::connect(&server.addr());
    assert_eq!(holder.echo(b"first").payload, b"first");
    for _ in 0..3 {
        let mut turned_away = Client::connect(&server.addr());
        turned_away.send(Kind::Ping, b"room?");
        turned_away.expect_error(4);
    }
    holder.half_close();
    holder.expect_eof();
    server.wait_no_children();
    // The second token of the minute is still there.
    let mut second = Client::connect(&server.addr());
    assert_eq!(second.echo(b"second").payload, b"second");
}

#[test]
fn refusals_for_a_failed_fork_are_bounded_like_every_refusal() {
    // Serving as nobody with a process limit of one: every fork fails (EAGAIN).
    let mut cmd = Command::new(FORKD);
    cmd.args([
        "--log",
        "stderr",
        "--listen",
        "127.0.0.1:0",
        "--user",
        "nobody",
    ]);
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let one = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &one) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    for _ in 0..200 {
        let mut client = Client::connect(&server.addr());
        client.send(Kind::Ping, b"fork?");
        client.expect_error(4);
    }
    let summary = server.wait_log("reject suppressed=");
    let lines = server
        .log()
        .iter()
        .filter(|l| l.contains("reason=fork"))
        .count();
    assert!(lines <= 40, "{lines} reason=fork lines");
    let suppressed: usize = field(&summary, "suppressed").unwrap().parse().unwrap();
    assert!(suppressed >= 100, "{summary}");
}

/// Runs forkd as systemd would hand it sockets: LISTEN_PID its own pid, LISTEN_FDS `count`.
fn forkd_with_listen_fds(count: &str) -> (Option<i32>, String) {
    let script = format!("LISTEN_PID=$$ LISTEN_FDS={count} exec {FORKD} --log stderr");
    let out = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_listen_fds_count_that_was_not_passed_is_refused() {
    for count in ["2147483647", "4294967296", "5"] {
        let (code, err) = forkd_with_listen_fds(count);
        assert_eq!(code, Some(1), "LISTEN_FDS={count}: {err}");
        assert!(err.contains(&format!("LISTEN_FDS={count}")), "{err}");
    }
}

#[test]
fn a_pidfile_is_locked_for_life_and_never_followed_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("forkd.pid");
    let pidfile_arg = path_str(&pidfile);
    let mut first = Forkd::start(&["--pidfile", &pidfile_arg]);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", first.pid)
    );

    // A second instance is refused, naming the first, and leaves its pidfile alone.
    let (code, err) = common::forkd_fails(&["--listen", "127.0.0.1:0", "--pidfile", &pidfile_arg]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("held by forkd pid {}", first.pid)),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", first.pid)
    );
    converse(&first.addr());
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success());
    assert!(!pidfile.exists());

    // A symbolic link at the path is refused, and its target is not written.
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&target, &pidfile).unwrap();
    let (code, err) = common::forkd_fails(&["--listen", "127.0.0.1:0", "--pidfile", &pidfile_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
}

#[test]
fn a_unix_socket_gets_its_mode_and_the_served_user_as_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = unix_addr(dir.path(), "default.sock");
    let _default = Forkd::start(&["--listen", &addr]);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o666,
        "the umask is not the mode"
    );

    let (path, addr) = unix_addr(dir.path(), "nobody.sock");
    let _served = Forkd::start(&[
        "--listen",
        &addr,
        "--socket-mode",
        "0660",
        "--user",
        "nobody",
    ]);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    assert_eq!(meta.gid(), nobody.gid.as_raw());

    refused_at_start(
        &["--listen", &addr, "--socket-mode", "1777"],
        &["--socket-mode"],
    );
}

#[test]
fn the_rlimit_as_forkd_asks_for_serves_a_frame_of_max_frame() {
    for handler in [
        &["--handler", "echo"][..],
        &["--handler", "frame-exec", "--", "cat"][..],
    ] {
        let base = ["--listen", "127.0.0.1:0", "--max-frame", "4M"];
        let tight: Vec<&str> = base
            .iter()
            .chain(&["--rlimit-as", "1"])
            .chain(handler)
            .copied()
            .collect();
        let (_, err) = common::forkd_fails(&tight);
        let least = err
            .split("at least ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no figure in {err}"))
            .to_string();
        let args: Vec<&str> = ["--max-frame", "4M", "--rlimit-as", &least]
            .iter()
            .chain(handler)
            .copied()
            .collect();
        let server = Forkd::start(&args);
        let mut client = Client::connect(&server.addr());
        let payload = vec![b'm'; 4 << 20];
        let sender = client
            .send_in_background(forkd::frame::Frame::new(Kind::Data, payload.clone()).encode());
        let reply = client.recv();
        assert_eq!(
            reply.kind,
            Kind::Data,
            "{handler:?} at --rlimit-as {least}: {reply:?}"
        );
        assert!(reply.payload == payload, "{handler:?}: a different reply");
        sender.join().unwrap();
    }
}

#[test]
fn the_idle_clock_restarts_after_a_reply_even_when_the_next_request_has_begun() {
    let server = Forkd::start(&["--idle-timeout", "2"]);
    let mut client = Client::connect(&server.addr());
    std::thread::sleep(Duration::from_millis(1500));
    let first = forkd::frame::Frame::new(Kind::Data, b"first".to_vec()).encode();
    let second = forkd::frame::Frame::new(Kind::Data, b"second".to_vec()).encode();
    // The first request and the start of the second in one write.
    client.send_raw(&[&first[..], &second[..3]].concat());
    assert_eq!(client.recv().payload, b"first");
    // 1 s after that reply (2.5 s after connecting) the second is completed.
    std::thread::sleep(Duration::from_millis(1000));
    client.send_raw(&second[3..]);
    assert_eq!(client.recv().payload, b"second");
}

#[test]
fn a_frame_exec_reply_is_what_the_program_wrote_before_it_exited() {
    // The background sleep keeps stdout open; the reply must not wait for it.
    let server = Forkd::start(&[
        "--handler",
        "frame-exec",
        "--",
        "sh",
        "-c",
        "sleep 63 & echo done",
    ]);
    let mut client = Client::connect(&server.addr());
    let asked = Instant::now();
    assert_eq!(client.echo(b"go").payload, b"done\n");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // And what it left running is ended with the request (the sleep, now a child of init:
    // found by its command line, which no other test uses).
    let deadline = Instant::now() + PATIENCE;
    while processes_running(b"sleep\x0063\x00") > 0 {
        assert!(
            Instant::now() < deadline,
            "the background sleep outlived its request"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes (not zombies) whose command line is exactly `cmdline`.
fn processes_running(cmdline: &[u8]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline)
                && !is_zombie(*pid)
        })
        .count()
}

/// Waits until no process (but zombies) has exactly `cmdline`; they are ours to kill if the
/// wait fails, so none is left behind either way.
fn wait_none_running(cmdline: &[u8], what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while processes_running(cmdline) > 0 {
        if Instant::now() > deadline {
            kill_all_running(cmdline);
            panic!("{what} outlived its worker");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_all_running(cmdline: &[u8]) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn max_lifetime_kills_what_ignored_its_sigterm() {
    // The worker dies of the SIGTERM at once; the sleep that ignores it must still go.
    let mut server = Forkd::start(&[
        "--max-lifetime",
        "1",
        "--",
        "sh",
        "-c",
        "(trap '' TERM; exec sleep 54) & sleep 55",
    ]);
    let mut client = Client::connect(&server.addr());
    let pid = server.child_for(client.stream());
    server.wait_log(&format!("pid={pid} status=signal:SIGTERM"));
    wait_none_running(b"sleep\x0054\x00", "a process that ignored SIGTERM");
    client.expect_eof();
}

#[test]
fn a_frame_exec_program_that_closed_its_output_leaves_nothing_running() {
    let server = Forkd::start(&[
        "--handler",
        "frame-exec",
        "--",
        "sh",
        "-c",
        "echo partial; exec >/dev/null 2>&1; sleep 56 & sleep 0.2",
    ]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"go").payload, b"partial\n");
    wait_none_running(b"sleep\x0056\x00", "the program's background sleep");
}

#[test]
fn frame_exec_needs_descriptors_for_its_pipes() {
    refused_at_start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--rlimit-nofile",
            "15",
            "--handler",
            "frame-exec",
            "--",
            "cat",
        ],
        &["--rlimit-nofile", "16"],
    );
    let server = Forkd::start(&[
        "--rlimit-nofile",
        "16",
        "--handler",
        "frame-exec",
        "--",
        "cat",
    ]);
    let mut client = Client::connect(&server.addr());
    for _ in 0..3 {
        assert_eq!(client.echo(b"fits").payload, b"fits");
    }
}

#[test]
fn a_worker_out_of_memory_does_not_wait_on_a_stderr_socket_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    // The smallest send buffer: a few dozen conversations' lines fill it.
    nix::sys::socket::setsockopt(&theirs, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let faults = common::example("faults");
    let (child, addr) = start_with_stuck_stderr(
        &faults,
        &["--rlimit-as", "256M"],
        dir.path(),
        Stdio::from(std::os::fd::OwnedFd::from(theirs)),
    );
    out_of_memory_with_unread_stderr(child, ours, &addr);
}

#[test]
fn a_stream_syslog_socket_that_stops_reading_gets_whole_lines_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (_, addr) = unix_addr(dir.path(), "forkd.sock");
    let mut cmd = Command::new(FORKD);
    cmd.args(["--listen", &addr, "--syslog-socket", &path_str(&path)]);
    let mut server = Forkd::spawn(&mut cmd, tempfile::tempdir().unwrap());
    server.addrs = vec![addr.clone()];
    let (mut daemon, _) = listener.accept().unwrap();
    // The daemon reads nothing while 600 conversations are logged.
    let deadline = Instant::now() + PATIENCE;
    while forkd::client::connect(&server.addr(), PATIENCE).is_err() {
        assert!(Instant::now() < deadline, "forkd never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..600 {
        converse(&server.addr());
    }
    // Now it reads: one more conversation reports the lines dropped.
    daemon.set_nonblocking(true).unwrap();
    let mut text = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut take = |text: &mut Vec<u8>| loop {
        match daemon.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
    };
    take(&mut text);
    converse(&server.addr());
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&text).contains("log_dropped=") {
        assert!(Instant::now() < deadline, "no log_dropped line");
        std::thread::sleep(Duration::from_millis(20));
        take(&mut text);
    }
    let records: Vec<String> = text
        .split(|b| *b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    for record in &records {
        assert!(
            record.starts_with('<') && record.contains(" forkd["),
            "a broken record: {record:?}"
        );
    }
    let reports = records
        .iter()
        .filter(|r| r.contains("log_dropped="))
        .count();
    assert_eq!(reports, 1, "{records:?}");
}

#[test]
fn a_chatty_program_gets_at_most_100_stderr_lines_a_second_and_the_rest_counted() {
    let mut server = Forkd::start(&[
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 500 ]; do echo noise $i >&2; i=$((i+1)); done",
    ]);
    let mut client = Client::connect(&server.addr());
    let pid = server.child_for(client.stream());
    let mut out = Vec::new();
    let _ = client.stream().read_to_end(&mut out);
    server.wait_log(&format!("pid={pid} status="));
    let summary = server.wait_log(&format!("stderr pid={pid} suppressed="));
    let shown = server
        .log()
        .iter()
        .filter(|l| l.contains(&format!("stderr pid={pid} line=\"noise ")))
        .count();
    let suppressed: usize = server
        .log()
        .iter()
        .filter_map(|l| {
            l.contains(&format!("stderr pid={pid} suppressed="))
                .then(|| field(l, "suppressed")?.parse::<usize>().ok())
                .flatten()
        })
        .sum();
    assert!(
        (100..=500).contains(&shown),
        "{shown} lines shown; {summary}"
    );
    assert_eq!(
        shown + suppressed,
        500,
        "{shown} shown, {suppressed} suppressed"
    );
}
