//! Running out of things: descriptors (accept fails with EMFILE), processes (fork fails), and
//! forkd under a small RLIMIT_NOFILE with many connections held. The supervisor must not spin,
//! must say what happens, and must recover by itself.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Client, FORKD, Forkd, cpu_time, field};

fn set_limit(pid: i32, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    let rc = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn accept_out_of_descriptors_backs_off_without_spinning_and_recovers() {
    let mut server = Forkd::start(&[]);
    let open = server.fd_count() as u64;
    // No descriptor left for accept().
    set_limit(server.pid, libc::RLIMIT_NOFILE, open, 4096);
    let waiting: Vec<Client> = (0..10).map(|_| Client::connect(&server.addr())).collect();
    let line = server.wait_log("reason=\"accept: ");
    assert!(line.contains("Too many open files"), "{line}");
    assert!(line.contains("warning:"), "{line}");

    let before = cpu_time(server.pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_time(server.pid) - before;
    assert!(
        spent < Duration::from_millis(200),
        "spent {spent:?} of CPU in 2 s"
    );
    // At most one line a second, each with a count.
    let lines: Vec<String> = server
        .log()
        .into_iter()
        .filter(|l| l.contains("reason=\"accept: "))
        .collect();
    assert!(lines.len() <= 4, "{lines:#?}");
    assert!(lines.iter().all(|l| field(l, "failures").is_some()));

    set_limit(server.pid, libc::RLIMIT_NOFILE, 1024, 4096);
    for (i, mut client) in waiting.into_iter().enumerate() {
        let payload = [i as u8];
        assert_eq!(client.echo(&payload).payload, payload);
    }
}

#[test]
fn sixty_connections_held_under_nofile_24() {
    let mut cmd = Command::new("prlimit");
    cmd.args([
        "--nofile=24:24",
        FORKD,
        "--log",
        "stderr",
        "--listen",
        "127.0.0.1:0",
    ]);
    let server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let mut held: Vec<Client> = (0..60).map(|_| Client::connect(&server.addr())).collect();
    for (i, client) in held.iter_mut().enumerate() {
        assert_eq!(client.echo(&[i as u8]).payload, [i as u8]);
    }
    let before = cpu_time(server.pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_time(server.pid) - before;
    assert!(
        spent < Duration::from_millis(100),
        "spent {spent:?} while idle"
    );
    assert!(server.fd_count() < 24);
    drop(held);
    server.wait_no_children();
    for i in 0..30u8 {
        let mut client = Client::connect(&server.addr());
        assert_eq!(client.echo(&[i]).payload, [i]);
    }
}

fn require_root(what: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "{what} needs root (bash .ci/run runs as root)"
    );
}

#[test]
fn fork_failure_answers_error_4_and_keeps_serving() {
    require_root("dropping to nobody with a process limit");
    // nobody may own two processes: the supervisor and one child. (Set before start: once
    // forkd is nobody, changing its limits takes a capability containers often lack.)
    let mut cmd = Command::new("prlimit");
    cmd.args([
        "--nproc=2:2",
        FORKD,
        "--log",
        "stderr",
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--user", "nobody"]);
    let mut server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let mut first = Client::connect(&server.addr());
    assert_eq!(first.echo(b"one").payload, b"one");
    let mut second = Client::connect(&server.addr());
    second.send(forkd::frame::Kind::Data, b"two");
    let message = second.expect_error(4);
    assert!(message.contains("cannot start a process"), "{message}");
    let line = server.wait_log("reason=fork code=4");
    assert!(line.contains("error: "), "{line}");
    drop(first);
    server.wait_no_children();
    let mut third = Client::connect(&server.addr());
    assert_eq!(third.echo(b"three").payload, b"three");
}
