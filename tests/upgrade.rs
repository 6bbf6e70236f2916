//! Upgrade in place on SIGUSR2 against the real binary, run from a copy that each test
//! replaces as a package upgrade would (a new file at the same path): the same pid serves on
//! with the new file, the listeners never close, running conversations and their lifetimes
//! are carried over, a new binary that fails its check is refused, and reloads and upgrades
//! under load fail no connection.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Client, FORKD, Forkd, installed, replace};

/// The inode of the file the process runs.
fn running_inode(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

fn upgrade(server: &mut Forkd, count: usize) -> String {
    server.signal(libc::SIGUSR2);
    let line = server
        .wait_log_count(" upgrade=done ", count)
        .pop()
        .unwrap();
    assert!(line.contains(" workers="), "{line}");
    line
}

#[test]
fn an_upgrade_keeps_the_pid_the_listeners_and_the_conversations() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &["--max-lifetime", "4"]);
    let mut running = Client::connect(&server.addr());
    assert_eq!(running.echo(b"before").payload, b"before");
    let worker = server.child_for(running.stream_ref());
    let old_inode = running_inode(server.pid);

    replace(&program, Path::new(FORKD));
    let done = upgrade(&mut server, 1);
    assert!(done.contains(" workers=1 listeners=1"), "{done}");
    assert_ne!(running_inode(server.pid), old_inode, "still the old file");

    // The conversation goes on in the same child; new ones are served.
    assert_eq!(running.echo(b"after").payload, b"after");
    let mut fresh = Client::connect(&server.addr());
    assert_eq!(fresh.echo(b"new image").payload, b"new image");
    drop(fresh);
    // The old child's lifetime came along: the new image ends it, and logs it.
    let killed = server.wait_log(&format!(" status pid={worker} peer="));
    assert!(
        killed.contains(" action=SIGTERM reason=max-lifetime "),
        "{killed}"
    );
    let end = server.wait_log(&format!(" pid={worker} status="));
    assert!(end.contains(" end peer=127.0.0.1:"), "{end}");
    // Its bytes were counted across the upgrade: two requests of 6 and 5 bytes, 11 header
    // bytes each way (frames of 5-byte headers), in the table both images share.
    assert_eq!(common::field(&end, "bytes_in"), Some("21"), "{end}");
    server.wait_no_children();
}

#[test]
fn a_new_binary_that_fails_its_check_is_refused_and_the_old_one_serves_on() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &[]);
    let broken = bin.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'forkd: not this one' >&2\nexit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    replace(&program, &broken);
    server.signal(libc::SIGUSR2);
    let refused = server.wait_log(" upgrade=refused ");
    assert!(refused.contains("not this one"), "{refused}");
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"old").payload, b"old");

    // A good file at the path again: the next SIGUSR2 upgrades.
    replace(&program, Path::new(FORKD));
    upgrade(&mut server, 1);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"new").payload, b"new");
}

#[test]
fn reloads_and_upgrades_under_load_fail_no_connection() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let port = common::free_port();
    let config = bin.path().join("forkd.toml");
    let rules = |n: usize| {
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nlog = \"stderr\"\nquiet = 1\n\
             deny = [\"10.{n}.0.0/16\"]\nmax-children = {}\n",
            40 + n
        )
    };
    std::fs::write(&config, rules(0)).unwrap();
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("--config").arg(&config);
    let mut server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let pid = server.pid;
    let addr = format!("127.0.0.1:{port}");
    let load = |workload| common::load_in_background(&addr, workload, 2, 6);
    let (churn, persistent) = (load("churn"), load("persistent"));
    let mut upgrades = 0;
    for n in 1..=10 {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&config, rules(n)).unwrap();
        server.signal(libc::SIGHUP);
        let line = server.wait_log_count(" reload=", n).pop().unwrap();
        assert!(line.contains(" reload=applied "), "{line}");
        if n % 3 == 0 {
            replace(&program, Path::new(FORKD));
            upgrades += 1;
            upgrade(&mut server, upgrades);
        }
    }
    assert_eq!(upgrades, 3);
    for (workload, run) in [("churn", churn), ("persistent", persistent)] {
        let (code, out, err) = run.join().unwrap();
        assert_eq!(code, 0, "{workload}: {err}");
        assert!(out.contains("\"errors\":{}"), "{workload}: {out}");
    }
    assert_eq!(server.pid, pid);
    // The new image reloads as the old one did: the last rules are in force.
    let last = server.wait_log_count(" reload=", 10).pop().unwrap();
    assert!(last.contains(" max_children=50 "), "{last}");
}

#[test]
fn a_program_after_dashes_upgrades_and_sees_no_upgrade_variable() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let args = [
        "--handler",
        "exec",
        "--",
        "sh",
        "-c",
        "echo \"[$FORKD_UPGRADE_FD]\"",
    ];
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &args);
    // The check runs as `forkd --check ... -- sh -c ...`: not as the program's argument.
    replace(&program, Path::new(FORKD));
    upgrade(&mut server, 1);
    let client = Client::connect(&server.addr());
    assert_eq!(client.read_to_end(), b"[]\n");
}

#[test]
fn a_binary_that_cannot_take_the_server_over_or_a_restart_only_change_is_refused() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let config = bin.path().join("forkd.toml");
    std::fs::write(&config, "listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &["--config", &config]);
    // Says ok, but not that it takes the state over (an older forkd, say).
    let older = bin.path().join("older");
    std::fs::write(&older, "#!/bin/sh\necho ok\n").unwrap();
    std::fs::set_permissions(&older, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    replace(&program, &older);
    server.signal(libc::SIGUSR2);
    let refused = server.wait_log(" upgrade=refused ");
    assert!(refused.contains("upgrade-state="), "{refused}");
    // The file now asks for what an upgrade would not change.
    replace(&program, Path::new(FORKD));
    let toml = "listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\nmodel = \"thread\"\n";
    std::fs::write(&config, toml).unwrap();
    server.signal(libc::SIGUSR2);
    let refused = server.wait_log_count(" upgrade=refused ", 2).pop().unwrap();
    assert!(refused.contains("--model changed"), "{refused}");
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"still").payload, b"still");
}

#[test]
fn an_upgrade_runs_the_file_a_switched_link_names() {
    let bin = tempfile::tempdir().unwrap();
    let (one, two) = (bin.path().join("v1"), bin.path().join("v2"));
    for dir in [&one, &two] {
        std::fs::create_dir(dir).unwrap();
        installed(dir);
    }
    let link = bin.path().join("forkd");
    std::os::unix::fs::symlink(one.join("forkd"), &link).unwrap();
    let mut server = Forkd::start_binary(link.to_str().unwrap(), &[]);
    let switched = bin.path().join("forkd.new");
    std::os::unix::fs::symlink(two.join("forkd"), &switched).unwrap();
    std::fs::rename(&switched, &link).unwrap();
    upgrade(&mut server, 1);
    use std::os::unix::fs::MetadataExt;
    let v2 = std::fs::metadata(two.join("forkd")).unwrap().ino();
    assert_eq!(running_inode(server.pid), v2);
}

/// Waits up to 10 s for `done`, failing with `what`.
fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not in time: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line is `sleep SECONDS`.
fn sleeping(seconds: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c == format!("sleep\0{seconds}\0").as_bytes())
        .count()
}

#[test]
fn programs_started_before_an_upgrade_are_ended_with_their_worker() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    // A request's program leaves a sleep behind in its process group, and hangs.
    let marker = format!("{}.25", 4000 + std::process::id() % 1000);
    let script = format!("sleep {marker} & sleep {marker}");
    let args = [
        "--handler",
        "frame-exec",
        "--max-lifetime",
        "3",
        "--",
        "sh",
        "-c",
        &script,
    ];
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &args);
    let mut client = Client::connect(&server.addr());
    client.send(forkd::frame::Kind::Data, b"go");
    until("the program started", || sleeping(&marker) == 2);
    replace(&program, Path::new(FORKD));
    upgrade(&mut server, 1);
    // The new image ends the worker at its lifetime, and the program's group with it.
    server.wait_log(" reason=max-lifetime ");
    until("the program's group ended with its worker", || {
        sleeping(&marker) == 0
    });
}

#[test]
fn a_worker_asked_to_end_before_an_upgrade_takes_its_group_with_it() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    // The program takes its SIGTERM slowly; what it started ignores SIGTERM altogether.
    let marker = format!("{}.75", 5000 + std::process::id() % 1000);
    let script =
        format!("trap 'sleep 0.8; exit 0' TERM; (trap '' TERM; exec sleep {marker}) & wait; wait");
    let args = ["--max-lifetime", "1", "--", "sh", "-c", &script];
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &args);
    let _client = Client::connect(&server.addr());
    server.wait_log(" action=SIGTERM reason=max-lifetime ");
    // Between its SIGTERM and its exit, the supervisor is upgraded.
    replace(&program, Path::new(FORKD));
    upgrade(&mut server, 1);
    server.wait_log(" end peer=");
    until("the program's child ended with it", || {
        sleeping(&marker) == 0
    });
}

#[test]
fn upgrades_leak_no_descriptor_into_the_supervisor_or_its_workers() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &[]);
    // Counted once the server serves: it makes its tables after the start line.
    let mut first = Client::connect(&server.addr());
    assert_eq!(first.echo(b"up").payload, b"up");
    drop(first);
    server.wait_no_children();
    let before = server.fd_count();
    for count in 1..=3 {
        replace(&program, Path::new(FORKD));
        upgrade(&mut server, count);
        assert_eq!(server.fd_count(), before, "after upgrade {count}");
    }
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"fds").payload, b"fds");
    let child = server.child_for(client.stream_ref());
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{child}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    assert!(!held.iter().any(|t| t.contains("memfd")), "{held:?}");
}

#[test]
fn a_penalty_being_served_outlasts_an_upgrade() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &["--penalty", "error=60s"]);
    let mut offender = Client::connect_from("127.0.0.7", &server.addr());
    offender.send_raw(&[0, 0, 0, 0, 0x09]);
    offender.expect_error(2);
    server.wait_log(" penalty=error ");
    replace(&program, Path::new(FORKD));
    upgrade(&mut server, 1);
    let mut again = Client::connect_from("127.0.0.7", &server.addr());
    again.send(forkd::frame::Kind::Data, b"x");
    let message = again.expect_error(5);
    assert!(message.contains("penalised (error)"), "{message}");
    let mut other = Client::connect_from("127.0.0.8", &server.addr());
    assert_eq!(other.echo(b"fine").payload, b"fine");
}

#[test]
fn a_rate_limit_spent_before_an_upgrade_stays_spent() {
    let bin = tempfile::tempdir().unwrap();
    let program = installed(bin.path());
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &["--rate", "2/60s"]);
    for _ in 0..2 {
        let mut client = Client::connect_from("127.0.0.9", &server.addr());
        assert_eq!(client.echo(b"ok").payload, b"ok");
    }
    replace(&program, Path::new(FORKD));
    upgrade(&mut server, 1);
    let mut third = Client::connect_from("127.0.0.9", &server.addr());
    third.send(forkd::frame::Kind::Data, b"x");
    third.expect_error(6);
}
