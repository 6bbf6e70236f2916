//! Programs per connection (`-- PROGRAM`, the UCSPI way) and per request (`frame-exec`),
//! against the real binary, with tcpserver as the reference for the environment.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, FORKD, Forkd, PATIENCE, free_port, unix_addr};
use forkd::frame::{Frame, Kind};

const SHOW_ENV: &str = "env | grep -E '^(PROTO|TCP|IPC)' | sort";

/// Connects, half-closes at once, and returns everything the program wrote.
fn output_of(addr: &str) -> String {
    let client = Client::connect(&addr.parse().unwrap());
    let mut client = client;
    client.half_close();
    String::from_utf8(client.read_to_end()).unwrap()
}

fn env_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until something accepts connections on `addr`.
fn wait_listening(addr: &str) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process of the test's own, killed on drop.
struct Owned(std::process::Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_ucspi_environment_matches_tcpserver() {
    assert!(
        std::path::Path::new("/usr/bin/tcpserver").exists(),
        "tcpserver is missing: install ucspi-tcp (bash .ci/run does)"
    );
    let port = free_port();
    let _tcpserver = Owned(
        Command::new("tcpserver")
            .args([
                "-H",
                "-R",
                "127.0.0.1",
                &port.to_string(),
                "sh",
                "-c",
                SHOW_ENV,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let tcpserver_addr = format!("127.0.0.1:{port}");
    wait_listening(&tcpserver_addr);
    // wait_listening's probe connection already ran the script once; this is the real one.
    let reference = env_map(&output_of(&tcpserver_addr));

    let server = Forkd::start(&["--", "sh", "-c", SHOW_ENV]);
    let mut client = Client::connect(&server.addr());
    let client_port = match client.stream_ref() {
        forkd::Stream::Tcp(s) => s.local_addr().unwrap().port(),
        forkd::Stream::Unix(_) => unreachable!(),
    };
    client.half_close();
    let ours = env_map(&String::from_utf8(client.read_to_end()).unwrap());

    let comparable = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .filter(|(k, _)| k.as_str() != "TCPCONNNUM")
            .map(|(k, v)| {
                let v = if k.ends_with("PORT") {
                    "port".into()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    };
    assert_eq!(comparable(&ours), comparable(&reference));
    assert_eq!(
        ours["TCPLOCALPORT"],
        server.addrs[0].rsplit(':').next().unwrap()
    );
    assert_eq!(ours["TCPREMOTEPORT"], client_port.to_string());
    assert_eq!(ours["TCPCONNNUM"], "1");
}

#[test]
fn unix_peers_get_the_ipc_variables() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addr) = unix_addr(dir.path(), "exec.sock");
    let _server = Forkd::start(&["--listen", &addr, "--", "sh", "-c", SHOW_ENV]);
    let env = env_map(&output_of(&addr));
    assert_eq!(env["PROTO"], "IPC");
    assert_eq!(env["IPCREMOTEEUID"], nix::unistd::geteuid().to_string());
    assert_eq!(env["IPCREMOTEEGID"], nix::unistd::getegid().to_string());
    assert_eq!(env["IPCLOCALPATH"], path.display().to_string());
}

#[test]
fn the_program_talks_on_stdin_and_stdout_and_its_stderr_goes_to_the_log() {
    let mut server = Forkd::start(&[
        "--",
        "sh",
        "-c",
        "read line; echo \"you said $line\"; echo complaint >&2",
    ]);
    let mut client = Client::connect(&server.addr());
    std::io::Write::write_all(client.stream(), b"hello\n").unwrap();
    let pid = server.child_for(client.stream());
    client.half_close();
    assert_eq!(
        String::from_utf8(client.read_to_end()).unwrap(),
        "you said hello\n"
    );
    let line = server.wait_log(&format!("stderr pid={pid} line=complaint"));
    assert!(!line.contains("warning:"), "{line}");
    server.wait_log(&format!("pid={pid} status=exit:0"));
}

#[test]
fn the_program_sees_only_descriptors_0_1_2_and_default_signals() {
    // forkd itself inherits a descriptor that is not close-on-exec (fd 7).
    let probe = "for fd in $(seq 3 64); do [ -e /proc/$$/fd/$fd ] && echo open $fd; done; \
                 grep SigIgn /proc/$$/status";
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "exec 7</dev/null; exec {FORKD} --log stderr --listen 127.0.0.1:0 -- sh -c \"{}\"",
            probe.replace('$', "\\$").replace('"', "\\\"")
        ),
    ]);
    let server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let out = output_of(&server.addrs[0]);
    let ignored = out
        .strip_prefix("SigIgn:\t")
        .unwrap_or_else(|| panic!("a descriptor other than 0-2 is open: {out}"));
    let mask = u64::from_str_radix(ignored.trim(), 16).unwrap();
    // Every standard signal (1-31) at its default; SIGPIPE above all.
    assert_eq!(mask & 0x7fff_ffff, 0, "{out}");
}

#[test]
fn env_clear_keeps_path_and_adds_env() {
    let server = Forkd::start(&[
        "--env-clear",
        "--env",
        "GREETING=hi there",
        "--",
        "sh",
        "-c",
        "env",
    ]);
    std::env::var("HOME").expect("the test itself has HOME");
    let env = env_map(&output_of(&server.addrs[0]));
    assert_eq!(env["GREETING"], "hi there");
    assert!(env.contains_key("PATH"));
    assert!(env.contains_key("TCPREMOTEIP"));
    assert!(!env.contains_key("HOME"), "{env:?}");
}

#[test]
fn limits_apply_to_programs_too() {
    let mut server = Forkd::start(&["--max-lifetime", "1", "--", "sleep", "30"]);
    let mut client = Client::connect(&server.addr());
    let pid = server.child_for(client.stream());
    let line = server.wait_log(&format!("pid={pid} status=signal:SIGTERM"));
    assert!(line.contains(" end "), "{line}");
    let mut rest = Vec::new();
    let _ = client.stream().read_to_end(&mut rest);
    // An exit status of 101 from a program is the program's, not a panic.
    let mut server = Forkd::start(&["--", "sh", "-c", "exit 101"]);
    let client = Client::connect(&server.addr());
    let end = server.wait_log(" end peer=");
    assert!(
        !end.contains("panic") && end.contains("status=exit:101"),
        "{end}"
    );
    drop(client);
}

#[test]
fn a_program_that_cannot_run_is_logged_and_the_connection_closed() {
    // A program missing at start is refused then (tests/edges.rs); one removed while forkd
    // runs fails per connection.
    for args in [&[][..], &["--rlimit-nofile", "64"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("vanishing");
        std::fs::copy("/bin/true", &program).unwrap();
        let path = format!("PATH={}", dir.path().display());
        let by_path = ["--env", path.as_str(), "--", "vanishing"];
        let program_path = common::path_str(&program);
        let by_name = ["--", program_path.as_str()];
        for (how, named) in [
            (&by_path[..], "vanishing"),
            (&by_name[..], program_path.as_str()),
        ] {
            std::fs::copy("/bin/true", &program).unwrap();
            let mut server = Forkd::start(&[args, how].concat());
            std::fs::remove_file(&program).unwrap();
            let client = Client::connect(&server.addr());
            let line = server.wait_log(&format!("cannot run {named}"));
            assert!(
                // At level error, which the event word says: no "warning:" before it.
                line.contains(": error peer=") && line.contains("active=0/"),
                "{line}"
            );
            assert!(client.read_to_end().is_empty(), "closed without a word");
        }
    }
}

/// The status lines of a program run for a connection: `cat /proc/self/status`, so the
/// program itself is measured, not a shell that may reset what it inherited.
fn program_status(args: &[&str]) -> BTreeMap<String, String> {
    let server = Forkd::start(&[args, &["--", "cat", "/proc/self/status"]].concat());
    output_of(&server.addrs[0])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn a_program_starts_with_no_signal_blocked_or_ignored_in_its_own_group() {
    // Without limits the program is started by posix_spawn; with one, by fork and exec.
    for args in [&[][..], &["--rlimit-nofile", "64"][..]] {
        let status = program_status(args);
        let mask = |field: &str| u64::from_str_radix(&status[field], 16).unwrap();
        assert_eq!(mask("SigBlk"), 0, "{args:?}: blocked: {status:?}");
        assert_eq!(
            mask("SigIgn") & 0x7fff_ffff,
            0,
            "{args:?}: ignored: {status:?}"
        );
        let pid: i32 = status["Pid"].parse().unwrap();
        assert_eq!(
            status["NSpgid"],
            pid.to_string(),
            "{args:?}: own process group"
        );
    }
}

#[test]
fn resource_limits_apply_to_programs() {
    let server = Forkd::start(&["--rlimit-nofile", "64", "--", "cat", "/proc/self/limits"]);
    let limits = output_of(&server.addrs[0]);
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["64", "64"],
        "{open_files}"
    );
}

fn frame_exec(extra: &[&str], script: &str) -> Forkd {
    let mut args = vec!["--handler", "frame-exec"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    Forkd::start(&args)
}

#[test]
fn frame_exec_answers_each_data_frame_with_the_programs_stdout() {
    let server = frame_exec(&[], "tr a-z A-Z");
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"hello").payload, b"HELLO");
    assert_eq!(client.echo(b"").payload, b"");
    let big = vec![b'q'; 300_000];
    assert_eq!(client.echo(&big).payload, vec![b'Q'; 300_000]);
    client.send(Kind::Ping, b"p");
    assert_eq!(client.recv(), Frame::new(Kind::Pong, "p"));
}

#[test]
fn frame_exec_failures_are_error_8_with_status_and_stderr() {
    let mut server = frame_exec(
        &[],
        "read x; case $x in exit) echo broken >&2; exit 3;; kill) kill -9 $$;; *) echo ok;; esac",
    );
    let mut client = Client::connect(&server.addr());
    let (code, message) = client.echo(b"exit\n").error_parts().unwrap();
    assert_eq!((code, message.as_str()), (8, "exit status 3: broken"));
    let (code, message) = client.echo(b"kill\n").error_parts().unwrap();
    assert_eq!((code, message.as_str()), (8, "killed by signal SIGKILL"));
    // The conversation goes on after a failed request.
    assert_eq!(client.echo(b"fine\n").payload, b"ok\n");
    let stderr = server.wait_log(" line=broken");
    assert!(stderr.contains(" stderr pid="), "{stderr}");
}

#[test]
fn frame_exec_kills_a_program_past_request_timeout_with_error_7() {
    let server = frame_exec(
        &["--request-timeout", "0.5"],
        "read x; [ \"$x\" = slow ] && sleep 30; echo done",
    );
    let mut client = Client::connect(&server.addr());
    let started = Instant::now();
    let (code, message) = client.echo(b"slow\n").error_parts().unwrap();
    assert_eq!(code, 7, "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(client.echo(b"quick\n").payload, b"done\n");
}

#[test]
fn frame_exec_output_over_max_frame_is_an_error_not_truncated() {
    let server = frame_exec(&["--max-frame", "1K"], "head -c 5000 /dev/zero");
    let mut client = Client::connect(&server.addr());
    let reply = client.echo(b"x");
    let (code, message) = reply.error_parts().expect("an ERROR, not DATA");
    assert_eq!(code, 8);
    assert!(message.contains("--max-frame"), "{message}");
}

#[test]
fn frame_exec_programs_see_who_is_asking() {
    let server = frame_exec(&[], "echo $TCPREMOTEIP");
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"").payload, b"127.0.0.1\n");
}

#[test]
fn a_program_needs_an_exec_handler() {
    let (code, err) = common::forkd_fails(&["--listen", ":0", "--handler", "frame-exec"]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a PROGRAM after --"), "{err}");
    let (code, err) = common::forkd_fails(&["--listen", ":0", "--handler", "echo", "--", "cat"]);
    assert_eq!(code, 2);
    assert!(err.contains("not --handler echo"), "{err}");
}

#[test]
fn a_programs_socket_has_no_idle_timeout() {
    // --idle-timeout is the protocol session's; a program reads its socket as long as it likes.
    let server = Forkd::start(&[
        "--idle-timeout",
        "1",
        "--",
        "sh",
        "-c",
        "read line; echo \"got $line\"",
    ]);
    let mut client = Client::connect(&server.addr());
    std::thread::sleep(Duration::from_millis(2500));
    std::io::Write::write_all(client.stream(), b"late\n").unwrap();
    client.half_close();
    assert_eq!(
        String::from_utf8(client.read_to_end()).unwrap(),
        "got late\n"
    );
}

#[test]
fn the_program_found_at_start_runs_with_limits_and_without() {
    // PROGRAM is looked up on PATH once, at start: one installed later earlier on PATH is not
    // picked up, whether forkd forks for --nice or not.
    for limits in [&[][..], &["--nice", "1"][..]] {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let script = |dir: &std::path::Path, word: &str| {
            let path = dir.join("which-one");
            std::fs::write(&path, format!("#!/bin/sh\necho {word}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        script(second.path(), "second");
        let path = format!(
            "PATH={}:{}",
            first.path().display(),
            second.path().display()
        );
        let args: Vec<&str> =
            [&["--env", path.as_str()][..], limits, &["--", "which-one"]].concat();
        let server = Forkd::start(&args);
        script(first.path(), "first");
        assert_eq!(output_of(&server.addrs[0]), "second\n", "{limits:?}");
    }
}
