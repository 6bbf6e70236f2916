//! --user and --group: bind as root (a privileged port), then serve as someone else.

mod common;

use common::{Client, Forkd, forkd_fails};

fn ids(pid: i32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn binds_port_7_as_root_then_serves_as_nobody() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "binding port 7 needs root (bash .ci/run runs as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nobody.gid.as_raw();
    // 127.0.0.7: a loopback address of its own, so port 7 is free whatever else runs.
    let mut server = Forkd::start(&["--listen", "127.0.0.7:7", "--user", "nobody"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"seven").payload, b"seven");
    let child = server.child_for(client.stream());
    for pid in [server.pid, child] {
        assert_eq!(ids(pid, "Uid"), vec![nobody.uid.as_raw(); 4], "pid {pid}");
        assert_eq!(ids(pid, "Gid"), vec![nogroup; 4], "pid {pid}");
        assert!(
            ids(pid, "Groups").is_empty(),
            "supplementary groups of {pid}"
        );
    }
    let start = server.wait_log(" start version=");
    assert!(
        start.contains(&format!(" user=nobody uid={}", nobody.uid)),
        "{start}"
    );
    assert!(!server.log().iter().any(|l| l.contains("serving as root")));
}

#[test]
fn group_overrides_the_users_primary_group() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let daemon = nix::unistd::Group::from_name("daemon").unwrap().unwrap();
    let mut server = Forkd::start(&["--user", "nobody", "--group", "daemon"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"g").payload, b"g");
    let child = server.child_for(client.stream());
    assert_eq!(ids(child, "Gid"), vec![daemon.gid.as_raw(); 4]);
}

#[test]
fn serving_as_root_is_a_warning() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let mut server = Forkd::start(&[]);
    let line = server.wait_log("serving as root");
    assert!(line.contains("warning:"), "{line}");
}

#[test]
fn unknown_user_or_group_is_one_line() {
    let (code, err) = forkd_fails(&[
        "--log",
        "stderr",
        "--listen",
        ":0",
        "--user",
        "no-such-user-x",
    ]);
    // Refused with the rest of the command line, before anything is bound.
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "forkd: --user no-such-user-x: no such user");
    let (code, err) = forkd_fails(&[
        "--log",
        "stderr",
        "--listen",
        ":0",
        "--group",
        "no-such-group-x",
    ]);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "forkd: --group no-such-group-x: no such group");
}

#[test]
fn a_program_the_user_cannot_run_is_refused_at_start() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let dir = tempfile::tempdir().unwrap();
    // The directory open to all: it is the file that nobody may not run.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let program = dir.path().join("root-only");
    std::fs::copy("/bin/true", &program).unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let path = common::path_str(&program);
    let (code, err) = forkd_fails(&["--listen", "127.0.0.1:0", "--user", "nobody", "--", &path]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot run") && err.contains("Permission denied"),
        "{err}"
    );
}
