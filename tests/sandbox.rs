//! `--sandbox`: what a child can reach with and without it, measured by the fault-injection
//! server's `open`, `connect` and `exec` commands and by real programs; that a sandboxed
//! child serves exactly as another does; and what happens on a kernel without Landlock.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{Client, Forkd, field, forkd_fails, path_str};
use forkd::frame::Kind;

/// The fault server's answer to `command`, as text.
fn ask(client: &mut Client, command: &str) -> String {
    String::from_utf8(client.echo(command.as_bytes()).payload).unwrap()
}

#[test]
fn a_sandboxed_child_reaches_no_file_no_socket_and_no_program() {
    let open = Forkd::start_faults(&[]);
    let mut sandboxed = Forkd::start_faults(&["--sandbox"]);
    let start = sandboxed.wait_log("sandbox for=handler");
    assert!(
        start.contains(
            "applied=\"no_new_privs landlock-files landlock-tcp landlock-scopes seccomp\""
        ),
        "{start}"
    );
    let connect = format!("connect {}", open.addrs[0]);
    for (server, expected) in [
        (&open, ["ok", "ok", "ok"]),
        (
            &sandboxed,
            ["denied: EACCES", "denied: EPERM", "denied: EPERM"],
        ),
    ] {
        let mut client = Client::connect(&server.addr());
        assert_eq!(ask(&mut client, "open /etc/passwd"), expected[0]);
        assert_eq!(ask(&mut client, &connect), expected[1]);
        assert_eq!(ask(&mut client, "exec /bin/true"), expected[2]);
        // And the child still serves.
        assert_eq!(ask(&mut client, "hello"), "hello");
    }
    // The refused socket() is named once per child, however often it is tried.
    let mut client = Client::connect(&sandboxed.addr());
    let pid = sandboxed.child_for(client.stream());
    assert_eq!(ask(&mut client, &connect), "denied: EPERM");
    assert_eq!(ask(&mut client, &connect), "denied: EPERM");
    drop(client);
    sandboxed.wait_log(&format!("pid={pid} status=exit:0"));
    let refused: Vec<String> = sandboxed
        .log()
        .into_iter()
        .filter(|l| l.contains(&format!("sandbox pid={pid} ")))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(field(&refused[0], "refused"), Some("socket"), "{refused:?}");
}

#[test]
fn a_call_that_changes_credentials_ends_a_sandboxed_child() {
    let mut server = Forkd::start_faults(&["--sandbox"]);
    let mut client = Client::connect(&server.addr());
    let pid = server.child_for(client.stream());
    client.send(Kind::Data, b"setuid 0");
    client.expect_eof();
    server.wait_log(&format!("sandbox pid={pid} refused=setuid"));
    server.wait_log(&format!("pid={pid} status=signal:SIGKILL"));
    // Without the sandbox the same request is answered (root may set its uid to 0).
    let open = Forkd::start_faults(&[]);
    let mut client = Client::connect(&open.addr());
    let answer = ask(&mut client, "setuid 0");
    assert!(answer == "ok" || answer == "denied: EPERM", "{answer}");
}

#[test]
fn declared_paths_are_open_to_the_child_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let readable = dir.path().join("readable");
    let spool = dir.path().join("spool");
    let other = dir.path().join("other");
    std::fs::write(&readable, "r").unwrap();
    std::fs::create_dir(&spool).unwrap();
    std::fs::write(spool.join("queued"), "q").unwrap();
    std::fs::write(&other, "o").unwrap();
    let server = Forkd::start_faults(&[
        "--sandbox",
        "--sandbox-read",
        &path_str(&readable),
        "--sandbox-write",
        &path_str(&spool),
    ]);
    let mut client = Client::connect(&server.addr());
    let open = |client: &mut Client, path: &std::path::Path| {
        ask(client, &format!("open {}", path.display()))
    };
    assert_eq!(open(&mut client, &readable), "ok");
    assert_eq!(open(&mut client, &spool.join("queued")), "ok");
    assert_eq!(open(&mut client, &other), "denied: EACCES");
    assert_eq!(open(&mut client, dir.path()), "denied: EACCES");
}

#[test]
fn echo_pipelining_ping_timeouts_and_limits_are_the_same_in_a_sandboxed_child() {
    let server = Forkd::start(&["--sandbox", "--idle-timeout", "1", "--max-frame", "64"]);
    let mut client = Client::connect(&server.addr());
    client.send_pipelined(200);
    client.expect_pipelined_replies(200);
    // A frame over --max-frame.
    client.send(Kind::Data, &[b'x'; 65]);
    client.expect_error(1);
    // The idle limit.
    let mut idle = Client::connect(&server.addr());
    assert_eq!(idle.echo(b"then nothing").payload, b"then nothing");
    let message = idle.expect_error(7);
    assert!(message.contains("idle"), "{message}");
    // The lifetime limit, on a child stuck in its handler.
    let mut server = Forkd::start_faults(&["--sandbox", "--max-lifetime", "1"]);
    let mut spinner = Client::connect(&server.addr());
    let pid = server.child_for(spinner.stream());
    spinner.send(Kind::Data, b"spin");
    server.wait_log(&format!("pid={pid} status=signal:SIGTERM"));
}

#[test]
fn a_sandboxed_program_reads_runs_and_connects_only_as_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let secret = path_str(&secret);
    let cat = ["--", "/bin/cat", secret.as_str()];
    let served = |args: &[&str]| -> (Vec<u8>, Forkd) {
        let server = Forkd::start(args);
        let output = Client::connect(&server.addr()).read_to_end();
        (output, server)
    };
    // No sandbox: the file; sandboxed: nothing, and cat says why on its stderr.
    assert_eq!(served(&cat).0, b"s3cret");
    let (output, mut server) = served(&[&["--sandbox"][..], &cat].concat());
    assert_eq!(output, b"");
    let line = server.wait_log("stderr pid=");
    assert!(line.contains("Permission denied"), "{line}");
    let start = server.wait_log("sandbox for=programs");
    assert!(
        start.contains(
            "applied=\"no_new_privs landlock-files landlock-tcp landlock-scopes seccomp-guard\""
        ),
        "{start}"
    );
    // Declared, it is read.
    let read = [&["--sandbox", "--sandbox-read", secret.as_str()][..], &cat].concat();
    assert_eq!(served(&read).0, b"s3cret");

    // A TCP connection out, and a program it was not given.
    let target = Forkd::start(&[]);
    let port = target.addr().to_string();
    let port = port.rsplit(':').next().unwrap();
    // And a program kept among the libraries, which are readable but not executable (apt's
    // helper: on every Debian system; its exit status without arguments is 1, not 126). Their
    // output goes to stderr: /dev/null is a file the sandbox does not open.
    let helper = "/usr/lib/apt/apt-helper";
    assert!(
        std::path::Path::new(helper).exists(),
        "{helper} is part of apt"
    );
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected || echo refused; \
         /usr/bin/id -u 1>&2 && echo ran || echo not-run; \
         {helper} 1>&2; echo $?"
    );
    let shell = ["--", "/bin/bash", "-c", script.as_str()];
    assert_eq!(served(&shell).0, b"connected\nran\n1\n");
    assert_eq!(
        served(&[&["--sandbox"][..], &shell].concat()).0,
        b"refused\nnot-run\n126\n"
    );
}

#[test]
fn frame_exec_runs_its_program_in_the_sandbox() {
    let server = Forkd::start(&["--sandbox", "--handler", "frame-exec", "--", "/bin/cat"]);
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"through cat").payload, b"through cat");
    let server = Forkd::start(&[
        "--sandbox",
        "--handler",
        "frame-exec",
        "--",
        "/bin/cat",
        "/etc/passwd",
    ]);
    let mut client = Client::connect(&server.addr());
    // A failed request is answered ERROR 8, and the conversation goes on.
    let reply = client.echo(b"");
    let (code, message) = reply.error_parts().unwrap();
    assert_eq!(code, 8, "{message}");
    assert!(message.contains("Permission denied"), "{message}");
    assert!(client.echo(b"").error_parts().is_some());
}

/// A seccomp filter that makes this process and its children see a kernel without Landlock
/// (`errno` from its three calls: ENOSYS as from a kernel without it, EPERM as from a
/// systemd SystemCallFilter= that leaves it out), built before the fork and installed in
/// `pre_exec`.
fn without_landlock(cmd: &mut Command, errno: i32) {
    use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
    use std::io::{Read, Seek};
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).unwrap();
    for name in [
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ] {
        let call = ScmpSyscall::from_name(name).unwrap();
        ctx.add_rule(ScmpAction::Errno(errno), call).unwrap();
    }
    let mut file = tempfile::tempfile().unwrap();
    ctx.export_bpf(&file).unwrap();
    let mut bytes = Vec::new();
    file.rewind().unwrap();
    file.read_to_end(&mut bytes).unwrap();
    let program: Vec<libc::sock_filter> = bytes
        .chunks_exact(8)
        .map(|b| libc::sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect();
    // SAFETY: prctl and seccomp are async-signal-safe; `program` is moved in and only read.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_seccomp, 1, 0, &fprog as *const _) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn without_landlock_the_start_line_says_so_and_required_refuses_to_start() {
    let mut cmd = Command::new(common::example("faults"));
    cmd.args(["--log", "stderr", "--listen", "127.0.0.1:0", "--sandbox"]);
    without_landlock(&mut cmd, libc::ENOSYS);
    let mut server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let line = server.wait_log("sandbox for=handler");
    assert!(line.contains("warning:"), "{line}");
    assert!(line.contains("applied=\"no_new_privs seccomp\""), "{line}");
    assert!(line.contains("missing=\"landlock-files"), "{line}");
    assert!(!line.contains("SystemCallFilter"), "{line}");
    // What is left still holds: no socket; files are open again.
    let mut client = Client::connect(&server.addr());
    assert_eq!(ask(&mut client, "open /etc/passwd"), "ok");
    assert_eq!(
        ask(&mut client, &format!("connect {}", server.addrs[0])),
        "denied: EPERM"
    );

    // Refused by a filter forkd runs under rather than missing: the line says where to look.
    let mut cmd = Command::new(common::FORKD);
    cmd.args(["--log", "stderr", "--listen", "127.0.0.1:0", "--sandbox"]);
    without_landlock(&mut cmd, libc::EPERM);
    let mut filtered = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let line = filtered.wait_log("sandbox for=handler");
    assert!(line.contains("allow them in SystemCallFilter="), "{line}");

    let mut cmd = Command::new(common::FORKD);
    cmd.args(["--listen", "127.0.0.1:0", "--sandbox=required", "--check"]);
    without_landlock(&mut cmd, libc::ENOSYS);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--sandbox=required: this system lacks landlock-files"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn what_the_sandbox_cannot_take_is_refused_in_one_line() {
    for (args, said) in [
        (
            &["--listen", "127.0.0.1:0", "--sandbox", "--model", "thread"][..],
            "--sandbox cannot apply to --model thread",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--sandbox",
                "--sandbox-read",
                "/nonexistent/forkd",
            ][..],
            "--sandbox-read /nonexistent/forkd: No such file or directory",
        ),
        (
            &["--listen", "127.0.0.1:0", "--sandbox-write", "/tmp"][..],
            "--sandbox",
        ),
        (
            &["--listen", "127.0.0.1:0", "--sandbox=sometimes"][..],
            "--sandbox",
        ),
    ] {
        let (code, stderr) = forkd_fails(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn a_sandboxed_program_cannot_reach_the_supervisor_or_keep_capabilities() {
    // renice and prlimit on the supervisor (the program's parent) are refused; the
    // supervisor keeps serving with its limits. The capabilities of root are gone.
    let script = "renice -n 19 -p $PPID 1>&2 && echo reniced || echo refused; \
                  prlimit --pid $PPID --nofile=0:0 1>&2 && echo limited || echo refused; \
                  grep CapEff /proc/self/status";
    let server = Forkd::start(&[
        "--sandbox",
        "--sandbox-read",
        "/usr/bin",
        "--sandbox-read",
        "/proc",
        "--",
        "/bin/bash",
        "-c",
        script,
    ]);
    let output = Client::connect(&server.addr()).read_to_end();
    assert_eq!(
        String::from_utf8_lossy(&output),
        "refused\nrefused\nCapEff:\t0000000000000000\n"
    );
    let again = Client::connect(&server.addr()).read_to_end();
    assert_eq!(again, output);
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid)).unwrap();
    let nice = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(16);
    assert_eq!(nice, Some("0"), "{stat}");
}

#[test]
fn a_sandboxed_child_that_makes_the_log_blocking_cannot_stall_the_supervisor() {
    use std::io::BufRead;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // The log's reader, which will stop reading.
    let reader = common::KillOnDrop(
        Command::new("cat")
            .arg(&fifo)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let log = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut server = common::KillOnDrop(
        Command::new(common::example("faults"))
            .args(["--listen", "127.0.0.1:0", "--log", "stderr", "--print-port"])
            .arg("--sandbox")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut port = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let addr = format!("127.0.0.1:{}", port.trim());
    // A child taken over clears O_NONBLOCK on every descriptor it holds, the log's too.
    let mut client = Client::connect(&addr.parse().unwrap());
    assert_eq!(ask(&mut client, "block-log"), "ok");
    drop(client);
    let reader_pid = nix::unistd::Pid::from_raw(reader.0.id() as i32);
    nix::sys::signal::kill(reader_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // 3,000 connections, an accept and an end line each: far more than the pipe holds. The
    // supervisor drops what the pipe cannot take and goes on serving (a supervisor stuck on
    // the pipe would leave the bench with errors when its 20 s are up).
    let (code, out, err) = common::forkc(
        &[
            "--connect",
            &addr,
            "--timeout",
            "5",
            "bench",
            "--workload",
            "churn",
            "--connections",
            "2",
            "--requests",
            "3000",
            "--duration",
            "20",
            "--json",
        ],
        b"",
    );
    nix::sys::signal::kill(reader_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["requests"], 3000, "{out}");
    let errors: u64 = report["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errors, 0, "{out}");
}

/// The seccomp filter a process runs under, read as root through ptrace (the process is
/// stopped for the moment it takes).
fn filter_of(pid: i32) -> Vec<libc::sock_filter> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // SAFETY: ptrace requests on a process this test started; the buffer holds `count`
    // instructions when the kernel writes them.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0), 0, "attach");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        let count = libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, 0);
        assert!(count > 0, "{}", std::io::Error::last_os_error());
        let mut program = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            count as usize
        ];
        let got = libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, program.as_mut_ptr());
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0, "detach");
        assert_eq!(got, count);
        program
    }
}

/// The constant the filter compares the sixth argument with: the supervisor's secret. The
/// filter loads each half of argument 5 (bytes 56 and 60 of seccomp_data) and compares it.
fn secret_in(program: &[libc::sock_filter]) -> u64 {
    let half = |offset: u32| {
        let mut counts = std::collections::HashMap::new();
        for pair in program.windows(2) {
            let load = pair[0].code == (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
            let compare = pair[1].code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
            if load && compare && pair[0].k == offset {
                *counts.entry(pair[1].k).or_insert(0) += 1;
            }
        }
        let (value, _) = counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .expect("argument 5");
        u64::from(value)
    };
    half(56) | half(60) << 32
}

/// Where `secret` occurs in the readable memory of process `pid`: its 8 bytes, or a filter
/// instruction comparing with one of its halves (a copy of the sealed program).
fn occurrences(pid: i32, secret: u64) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let needle = secret.to_ne_bytes();
    let halves = [
        (secret as u32).to_ne_bytes(),
        ((secret >> 32) as u32).to_ne_bytes(),
    ];
    let jeq = ((libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16).to_ne_bytes();
    let found_in = |window: &[u8]| {
        window == needle || (window[..2] == jeq && halves.iter().any(|h| window[4..] == *h))
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.contains("[vvar_") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut bytes = vec![0u8; (end - start) as usize];
        if mem.read_exact_at(&mut bytes, start).is_err() {
            continue;
        }
        for (offset, window) in bytes.windows(8).enumerate() {
            if found_in(window) {
                found.push(format!("{:x} in {line}", start + offset as u64));
            }
        }
    }
    found
}

/// How many copies of the secret a root scan of the supervisor can read: none where the
/// kernel has memfd_secret (probed here), one otherwise.
fn readable_copies() -> usize {
    // SAFETY: memfd_secret with no flags; the descriptor, if any, is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, 0) };
    if fd >= 0 {
        // SAFETY: the descriptor just made.
        unsafe { libc::close(fd as i32) };
        0
    } else {
        1
    }
}

fn status_field(pid: i32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line[key.len()..].trim().to_string()
}

#[test]
fn workers_inherit_the_supervisors_filter_and_not_its_secret() {
    let mut server = Forkd::start_faults(&["--sandbox"]);
    server.wait_log("sandbox for=handler");
    let supervisor = server.pid;
    // The supervisor runs under one filter, not dumpable, with no_new_privs.
    assert_eq!(status_field(supervisor, "Seccomp_filters:"), "1");
    assert_eq!(status_field(supervisor, "NoNewPrivs:"), "1");
    let mut client = Client::connect(&server.addr());
    assert_eq!(ask(&mut client, "hello"), "hello");
    let worker = server.child_for(client.stream());
    // The worker inherited it and installed none of its own.
    assert_eq!(status_field(worker, "Seccomp_filters:"), "1");
    let secret = secret_in(&filter_of(supervisor));
    assert_ne!(secret, 0);
    // The supervisor holds the secret in its one page, and nowhere else (any other copy would
    // be a worker's at the next fork): a memfd_secret page, which not even root can read
    // through /proc/PID/mem, or else a page the kernel empties at fork. A worker holds it
    // nowhere.
    let held = occurrences(supervisor, secret);
    assert_eq!(held.len(), readable_copies(), "{held:#?}");
    assert_eq!(occurrences(worker, secret), Vec::<String>::new());
    // The worker is still confined, and serves.
    assert_eq!(ask(&mut client, "open /etc/passwd"), "denied: EACCES");
    assert_eq!(ask(&mut client, "exec /bin/true"), "denied: EPERM");
    assert_eq!(ask(&mut client, "hello"), "hello");
}

#[test]
fn a_supervisor_under_the_filter_still_reloads_ends_workers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forkd.toml");
    let pidfile = dir.path().join("forkd.pid");
    let socket = dir.path().join("added.sock");
    let port = common::free_port();
    let file = |listen: &[String]| {
        let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
        format!(
            "listen = [{}]\nlog = \"stderr\"\nsandbox = \"best-effort\"\n\
             sandbox-read = [\"/usr/share\"]\nmax-lifetime = \"1s\"\npidfile = \"{}\"\n",
            listen.join(", "),
            pidfile.display()
        )
    };
    let first = format!("127.0.0.1:{port}");
    std::fs::write(&path, file(std::slice::from_ref(&first))).unwrap();
    let mut cmd = Command::new(common::FORKD);
    cmd.arg("--config").arg(&path);
    let mut server = Forkd::start_with(&mut cmd, dir);
    server.wait_log("sandbox for=handler");
    assert_eq!(status_field(server.pid, "Seccomp_filters:"), "1");
    // A reload checks the sandbox's paths again and binds new listeners, TCP and Unix
    // (socket, bind, listen, a stale socket file's stat: calls the workers may not make).
    let added = common::free_port();
    let unix = format!("unix:{}", socket.display());
    std::fs::write(
        &path,
        file(&[first, format!("127.0.0.1:{added}"), unix.clone()]),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_log(" reload=");
    assert!(line.contains(" reload=applied "), "{line}");
    let mut over_unix = Client::connect(&unix.parse().unwrap());
    assert_eq!(over_unix.echo(b"unix").payload, b"unix");
    drop(over_unix);
    let mut client = Client::connect(&format!("127.0.0.1:{added}").parse().unwrap());
    assert_eq!(client.echo(b"new").payload, b"new");
    // --max-lifetime ends a worker (kill), which is then reaped.
    let worker = server.child_for(client.stream());
    server.wait_log(&format!("pid={worker} status=signal:SIGTERM"));
    // And the server still serves, then stops cleanly.
    let mut again = Client::connect(&server.addr());
    assert_eq!(again.echo(b"still").payload, b"still");
    drop(again);
    assert!(pidfile.exists());
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    // Its own files are removed as without the sandbox (their stat is by descriptor).
    assert!(!pidfile.exists(), "the pidfile is left");
    assert!(!socket.exists(), "the socket file is left");
}

#[test]
fn a_sandboxed_server_upgrades_in_place_under_its_filter() {
    let bin = tempfile::tempdir().unwrap();
    let program = common::installed(bin.path());
    let args = ["--sandbox", "--sandbox-read", "/usr/share"];
    let mut server = Forkd::start_binary(program.to_str().unwrap(), &args);
    server.wait_log("sandbox for=handler");
    let mut running = Client::connect(&server.addr());
    assert_eq!(running.echo(b"before").payload, b"before");
    let secret = secret_in(&filter_of(server.pid));
    for round in 1..=2 {
        common::replace(&program, std::path::Path::new(common::FORKD));
        server.signal(libc::SIGUSR2);
        let done = server
            .wait_log_count(" upgrade=done ", round)
            .pop()
            .unwrap();
        assert!(done.contains(" listeners=1"), "{done}");
        // The new image runs under the filter it inherited, with the same secret: none
        // stacked on it, and the secret still in its one page only.
        assert_eq!(status_field(server.pid, "Seccomp_filters:"), "1");
        assert_eq!(secret_in(&filter_of(server.pid)), secret);
        let held = occurrences(server.pid, secret);
        assert_eq!(held.len(), readable_copies(), "{held:#?}");
        // It serves, and its workers are confined and hold no secret.
        let mut fresh = Client::connect(&server.addr());
        assert_eq!(fresh.echo(b"new image").payload, b"new image");
        let worker = server.child_for(fresh.stream());
        assert_eq!(status_field(worker, "Seccomp_filters:"), "1");
        assert_eq!(status_field(worker, "NoNewPrivs:"), "1");
        assert_eq!(occurrences(worker, secret), Vec::<String>::new());
    }
    // The conversation from before both upgrades goes on, and a worker still cannot reach
    // what the filter refuses.
    assert_eq!(running.echo(b"after").payload, b"after");
    drop(running);
    server.signal(libc::SIGHUP);
    server.wait_log("status signal=SIGHUP");
    // A binary that cannot take the secret (not a forkd: a shell script) dies under the
    // filter it inherits, in its check: refused, saying so, and the server serves on.
    let script = bin.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho upgrade-state=1\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    common::replace(&program, &script);
    server.signal(libc::SIGUSR2);
    let refused = server.wait_log(" upgrade=refused ");
    assert!(
        refused.contains("stopped by --sandbox's system call filter"),
        "{refused}"
    );
    let mut after = Client::connect(&server.addr());
    assert_eq!(after.echo(b"served on").payload, b"served on");
    drop(after);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

#[test]
fn a_secret_handed_by_someone_else_is_not_trusted() {
    // A forkd started under an allow-all filter of someone else's, with a descriptor named by
    // FORKD_GATE_FD holding a value and that filter count: as if exec'd by a gated
    // supervisor. It must see that the value opens no filter of forkd's, and install its own.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::example("faults"));
    cmd.args(["--log", "stderr", "--listen", "127.0.0.1:0", "--sandbox"])
        .env("FORKD_GATE_FD", "9");
    // SAFETY: between fork and exec only system calls, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::memfd_create(c"fake".as_ptr(), 0);
            let fake = [0x41u8; 8];
            let count: u32 = 1;
            let allow = [libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            }];
            let program = libc::sock_fprog {
                len: 1,
                filter: allow.as_ptr() as *mut libc::sock_filter,
            };
            let ok = fd >= 0
                && libc::pwrite(fd, fake.as_ptr().cast(), 8, 0) == 8
                && libc::pwrite(fd, (&raw const count).cast(), 4, 8) == 4
                && libc::dup2(fd, 9) == 9
                && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &raw const program,
                ) == 0;
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut server = Forkd::start_with(&mut cmd, dir);
    server.wait_log("sandbox for=handler");
    // Its own filter on top of the other one, and its workers confined by it.
    assert_eq!(status_field(server.pid, "Seccomp_filters:"), "2");
    let mut client = Client::connect(&server.addr());
    assert_eq!(ask(&mut client, "connect 127.0.0.1:9"), "denied: EPERM");
    assert_eq!(ask(&mut client, "exec /bin/true"), "denied: EPERM");
    assert_eq!(ask(&mut client, "hello"), "hello");
}
