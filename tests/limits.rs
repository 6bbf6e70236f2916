//! Time limits and per-child limits against the real binary: --idle-timeout (slowloris
//! included), --max-lifetime on a child stuck in its handler, --rlimit-*, --nice, keepalive.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Forkd, field};
use forkd::frame::{Frame, Kind};

#[test]
fn an_idle_peer_gets_error_7_on_time() {
    let mut server = Forkd::start(&["--idle-timeout", "1"]);
    let started = Instant::now();
    let mut client = Client::connect(&server.addr());
    let message = client.expect_error(7);
    let waited = started.elapsed();
    assert!(message.contains("idle timeout"), "{message}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    server.wait_log("code=7 ");
}

#[test]
fn a_slowloris_dribbling_bytes_is_cut_off_on_time() {
    let server = Forkd::start(&["--idle-timeout", "1"]);
    let mut client = Client::connect(&server.addr());
    // One byte every 200 ms: the frame would take 5 s to arrive.
    let bytes = Frame::new(Kind::Data, vec![b'z'; 20]).encode();
    let mut writer = client.stream_ref().try_clone().unwrap();
    let dribbler = std::thread::spawn(move || {
        for b in bytes {
            if std::io::Write::write_all(&mut writer, &[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let started = Instant::now();
    client.expect_error(7);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    dribbler.join().unwrap();
}

#[test]
fn each_reply_restarts_the_idle_clock() {
    let server = Forkd::start(&["--idle-timeout", "1"]);
    let mut client = Client::connect(&server.addr());
    for i in 0..5u8 {
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(client.echo(&[i]).payload, [i]);
    }
}

#[test]
fn max_lifetime_ends_a_child_spinning_in_its_handler() {
    let mut server = Forkd::start_faults(&["--max-lifetime", "1"]);
    let mut spinner = Client::connect(&server.addr());
    let pid = server.child_for(spinner.stream());
    spinner.send(Kind::Data, b"spin");
    let line = server.wait_log(&format!("pid={pid} status=signal:SIGTERM"));
    assert!(line.contains(" end "), "{line}");
    let kill = server.wait_log(&format!("status pid={pid} "));
    assert!(
        kill.contains("action=SIGTERM reason=max-lifetime"),
        "{kill}"
    );
    let age: f64 = field(&kill, "age")
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((1.0..3.0).contains(&age), "{kill}");
}

#[test]
fn max_lifetime_follows_with_sigkill_when_sigterm_is_ignored() {
    let mut server = Forkd::start_faults(&["--max-lifetime", "0.5"]);
    let mut deaf = Client::connect(&server.addr());
    let pid = server.child_for(deaf.stream());
    deaf.send(Kind::Data, b"spin-deaf");
    server.wait_log(&format!("status pid={pid} peer="));
    let kill = server.wait_log("action=SIGKILL reason=max-lifetime");
    assert!(kill.contains(&format!("pid={pid} ")), "{kill}");
    server.wait_log(&format!("pid={pid} status=signal:SIGKILL"));
    // The others were never in danger.
    let mut other = Client::connect(&server.addr());
    assert_eq!(other.echo(b"fine").payload, b"fine");
}

#[test]
fn rlimit_cpu_stops_a_spinning_child() {
    let mut server = Forkd::start_faults(&["--rlimit-cpu", "1"]);
    let mut spinner = Client::connect(&server.addr());
    let pid = server.child_for(spinner.stream());
    spinner.send(Kind::Data, b"spin");
    server.wait_log(&format!("pid={pid} status=signal:SIGXCPU"));
}

#[test]
fn rlimit_as_stops_a_leaking_child_and_allows_what_fits() {
    let mut server = Forkd::start_faults(&["--rlimit-as", "256M"]);
    let mut modest = Client::connect(&server.addr());
    assert_eq!(modest.echo(b"leak 16").payload, b"leaked 16");
    let mut greedy = Client::connect(&server.addr());
    let pid = server.child_for(greedy.stream());
    greedy.send(Kind::Data, b"leak 512");
    // Rust aborts when an allocation fails.
    server.wait_log(&format!("pid={pid} status=signal:SIGABRT"));
    assert_eq!(modest.echo(b"still").payload, b"still");
}

#[test]
fn rlimit_nofile_and_nice_apply_to_children_only() {
    let mut server = Forkd::start(&["--rlimit-nofile", "17", "--nice", "7"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"x").payload, b"x");
    let child = server.child_for(client.stream());
    let limits = std::fs::read_to_string(format!("/proc/{child}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile
            .split_whitespace()
            .skip(3)
            .take(2)
            .collect::<Vec<_>>(),
        ["17", "17"],
        "{nofile}"
    );
    assert_eq!(nice_of(child), 7);
    assert_eq!(nice_of(server.pid), 0);
}

fn nice_of(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    // Fields after comm start at 3 (state); nice is field 19.
    after_comm
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

/// The kernel's timer for the server side of a connection, from /proc/net/tcp: 2 is the
/// keepalive timer, 0 none.
fn server_socket_timer(server_port: u16, client_port: u16) -> u32 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = |c: &str| u16::from_str_radix(c.rsplit(':').next().unwrap(), 16).unwrap();
        if port(cols[1]) == server_port && port(cols[2]) == client_port {
            return u32::from_str_radix(cols[5].split(':').next().unwrap(), 16).unwrap();
        }
    }
    panic!("no /proc/net/tcp entry for {server_port} <- {client_port}");
}

fn timer_for(args: &[&str]) -> u32 {
    let server = Forkd::start(args);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"k").payload, b"k");
    let forkd::Stream::Tcp(s) = client.stream_ref() else {
        unreachable!()
    };
    let server_port = s.peer_addr().unwrap().port();
    server_socket_timer(server_port, s.local_addr().unwrap().port())
}

#[test]
fn keepalive_is_on_by_default_and_off_with_no_keepalive() {
    assert_eq!(timer_for(&[]), 2, "keepalive timer armed");
    assert_eq!(timer_for(&["--no-keepalive"]), 0, "no timer");
}

/// A copy of the child's connection socket (its one socket descriptor), taken with
/// pidfd_getfd, so the test can read the options the child's socket really has.
fn childs_socket(pid: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_link(p).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .expect("the child holds its connection");
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as i32;
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(pidfd) };
    assert!(copy >= 0, "pidfd_getfd (needs root): {err}");
    unsafe { std::os::fd::OwnedFd::from_raw_fd(copy) }
}

fn socket_options_for(args: &[&str]) -> (bool, bool) {
    use nix::sys::socket::{getsockopt, sockopt};
    let mut server = Forkd::start(args);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"o").payload, b"o");
    let socket = childs_socket(server.child_for(client.stream()));
    (
        getsockopt(&socket, sockopt::TcpNoDelay).unwrap(),
        getsockopt(&socket, sockopt::KeepAlive).unwrap(),
    )
}

#[test]
fn a_childs_socket_has_nodelay_and_keepalive_as_configured() {
    assert_eq!(
        socket_options_for(&[]),
        (true, true),
        "(TCP_NODELAY, SO_KEEPALIVE)"
    );
    assert_eq!(
        socket_options_for(&["--no-keepalive"]),
        (true, false),
        "(TCP_NODELAY, SO_KEEPALIVE)"
    );
}
