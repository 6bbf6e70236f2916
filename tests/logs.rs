//! The log as an admin filters it: a level per event (what goes wrong is at least a warning),
//! and, when stderr is systemd's journal stream, each line's priority where journald reads it.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Client, FORKD, Forkd, PATIENCE, children_of, unix_addr};
use forkd::addr::Addr;
use forkd::frame::Kind;

/// Two connections to the forkd `pid` at `--max-children 1 --overload reject`: the second is
/// refused. Then a frame of a kind protocol v1 does not have.
fn refuse_one_and_break_one(addr: &Addr, pid: i32) {
    let mut held = Client::connect(addr);
    assert_eq!(held.echo(b"first").payload, b"first");
    let mut refused = Client::connect(addr);
    refused.send(Kind::Data, b"second");
    refused.expect_error(4);
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    while !children_of(pid).is_empty() {
        assert!(Instant::now() < deadline, "the first child never ended");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut broken = Client::connect(addr);
    broken.send_raw(&[0, 0, 0, 0, 0x7f]);
    let _ = broken.read_to_end();
}

#[test]
fn refusals_and_protocol_errors_are_warnings() {
    let mut server = Forkd::start(&["--max-children", "1", "--overload", "reject"]);
    refuse_one_and_break_one(&server.addr(), server.pid);
    let reject = server.wait_log(" reject peer=");
    assert!(reject.contains("]: warning: reject peer="), "{reject}");
    let error = server.wait_log(" error peer=");
    assert!(error.contains("]: warning: error peer="), "{error}");
    // Routine events stay at info, without a level word.
    let accept = server.wait_log(" accept peer=");
    assert!(accept.contains("]: accept peer="), "{accept}");
}

#[test]
fn quiet_keeps_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (_, addr) = unix_addr(dir.path(), "quiet.sock");
    let mut server = Forkd::start_silent(
        &["-q", "--max-children", "1", "--overload", "reject"],
        &addr,
    );
    refuse_one_and_break_one(&server.addr(), server.pid);
    server.wait_log(" reject peer=");
    server.wait_log(" error peer=");
    // The routine lines of each connection are left out; the start line (with the address
    // bound) is not.
    let log = server.log();
    assert!(
        !log.iter()
            .any(|l| l.contains(" accept peer=") || l.contains(" end peer="))
            && log.iter().any(|l| l.contains(" start version=")),
        "{log:?}"
    );
}

#[test]
fn to_the_journal_each_line_starts_with_its_priority() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stat = nix::sys::stat::fstat(&theirs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, addr) = unix_addr(dir.path(), "journal.sock");
    let mut forkd = Command::new(FORKD)
        .args(["--log", "stderr", "--listen", &addr])
        .args(["--max-children", "1", "--overload", "reject"])
        .env("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .map(common::KillOnDrop)
        .unwrap();
    ours.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut lines = BufReader::new(ours).lines();
    let mut next = |what: &str| -> String {
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("no {what} line"))
                .unwrap_or_else(|e| panic!("no {what} line: {e}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    // journald adds the name and pid itself: the line is the priority and the event.
    assert!(next(" version=").starts_with("<6>start version="));
    refuse_one_and_break_one(&addr.parse().unwrap(), forkd.0.id() as i32);
    assert!(next("reject peer=").starts_with("<4>reject peer="));
    assert!(next("error peer=").starts_with("<4>error peer="));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(forkd.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(next(" served=").starts_with("<6>stop served="));
    assert!(forkd.0.wait().unwrap().success());
}

#[test]
fn end_lines_count_the_bytes_each_way_in_both_models_and_after_a_crash() {
    for model in ["fork", "thread"] {
        let mut server = Forkd::start(&["--model", model]);
        let mut client = Client::connect(&server.addr());
        // Two requests of 1000 and 10 bytes: 5-byte headers each way.
        assert_eq!(client.echo(&[7; 1000]).payload.len(), 1000);
        assert_eq!(client.echo(b"0123456789").payload, b"0123456789");
        client.half_close();
        client.expect_eof();
        let end = server.wait_log(" end peer=");
        assert!(
            end.contains(" bytes_in=1020 bytes_out=1020 "),
            "{model}: {end}"
        );
    }
    // A child that aborts still has what it read counted; what it never wrote is not.
    let mut server = Forkd::start_faults(&[]);
    let mut victim = Client::connect(&server.addr());
    assert_eq!(victim.echo(b"hi").payload, b"hi");
    victim.send(Kind::Data, b"abort");
    let end = server.wait_log("status=signal:SIGABRT");
    assert!(end.contains(" bytes_in=17 bytes_out=7 "), "{end}");
}

#[test]
fn to_the_journal_a_refusal_to_start_is_an_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    for args in [
        &["--listen", addr.as_str()][..],
        &["--listen", ":1", "--bogus"][..],
    ] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stat = nix::sys::stat::fstat(&theirs).unwrap();
        let status = Command::new(FORKD)
            .args(["--log", "stderr"])
            .args(args)
            .env("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(OwnedFd::from(theirs)))
            .status()
            .unwrap();
        assert!(!status.success(), "{args:?}");
        ours.set_read_timeout(Some(PATIENCE)).unwrap();
        let line = BufReader::new(ours).lines().next().unwrap().unwrap();
        assert!(line.starts_with("<3>forkd: "), "{args:?}: {line}");
    }
}
