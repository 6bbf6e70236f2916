//! Reload on SIGHUP against the real binary: `forkd --config FILE` reads the file again, and
//! what it now says applies to new connections (rules, limits, the log, the listeners) while
//! running conversations go on; a file that does not validate, or a change only a restart can
//! make, is refused and the old configuration stays; and a reload under load fails no
//! connection.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Client, FORKD, Forkd, field, free_port};

/// forkd with `--config FILE`, FILE holding `toml`; its path is returned to rewrite it.
fn start(toml: &str) -> (Forkd, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forkd.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(FORKD);
    cmd.arg("--config").arg(&path);
    (Forkd::start_with(&mut cmd, dir), path)
}

/// Rewrites the file, sends SIGHUP and waits for the `reload=` line that answers it.
fn reload(server: &mut Forkd, path: &std::path::Path, toml: &str, count: usize) -> String {
    std::fs::write(path, toml).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log_count(" reload=", count).pop().unwrap()
}

#[test]
fn a_reload_changes_rules_limits_and_listeners_and_leaves_conversations_running() {
    let port = free_port();
    let (mut server, path) = start(&format!(
        "listen = [\"127.0.0.1:{port}\"]\nlog = \"stderr\"\ndeny = [\"127.0.0.2\"]\n"
    ));
    let mut denied = Client::connect_from("127.0.0.2", &server.addr());
    denied.send(forkd::frame::Kind::Data, b"x");
    denied.expect_error(5);
    // A conversation open across every reload.
    let mut running = Client::connect_from("127.0.0.4", &server.addr());
    assert_eq!(running.echo(b"before").payload, b"before");
    let pid = server.child_for(running.stream_ref());

    let added = free_port();
    let line = reload(
        &mut server,
        &path,
        &format!(
            "listen = [\"127.0.0.1:{port}\", \"127.0.0.1:{added}\"]\nlog = \"stderr\"\n\
             deny = [\"127.0.0.3\"]\nmax-children = 7\n"
        ),
        1,
    );
    assert!(line.contains(" reload=applied "), "{line}");
    assert!(line.contains(" max_children=7 "), "{line}");
    let mut now_allowed = Client::connect_from("127.0.0.2", &server.addr());
    assert_eq!(now_allowed.echo(b"in").payload, b"in");
    let mut now_denied = Client::connect_from("127.0.0.3", &server.addr());
    now_denied.send(forkd::frame::Kind::Data, b"x");
    now_denied.expect_error(5);
    let mut on_added = Client::connect(&format!("127.0.0.1:{added}").parse().unwrap());
    assert_eq!(on_added.echo(b"added").payload, b"added");
    let accept = server.wait_log(&format!("listen=127.0.0.1:{added} active="));
    assert!(accept.contains("/7"), "{accept}");

    // The first address removed: no longer listening, the added one still served.
    let line = reload(
        &mut server,
        &path,
        &format!("listen = [\"127.0.0.1:{added}\"]\nlog = \"stderr\"\n"),
        2,
    );
    assert!(line.contains(" reload=applied "), "{line}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut again = Client::connect(&format!("127.0.0.1:{added}").parse().unwrap());
    assert_eq!(again.echo(b"still").payload, b"still");

    // Through all of it, the first conversation went on in the same child.
    assert_eq!(running.echo(b"after").payload, b"after");
    assert_eq!(server.child_for(running.stream_ref()), pid);
}

#[test]
fn a_bad_reload_is_refused_and_the_old_configuration_serves_on() {
    let (mut server, path) =
        start("listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\ndeny = [\"127.0.0.2\"]\n");
    let bad = [
        (
            "listen = [\"127.0.0.1:0\"]\nmax-children = 0\n",
            "forkd.toml:2: max-children",
        ),
        (
            "listen = [\"127.0.0.1:0\"]\nuser = \"nobody\"\n",
            "--user changed",
        ),
        (
            "listen = [\"127.0.0.1:0\"]\nmodel = \"thread\"\n",
            "--model changed",
        ),
        (
            "listen = [\"192.0.2.1:1\"]\n",
            "cannot listen on 192.0.2.1:1",
        ),
        (
            "listen = [\"127.0.0.1:0\"]\nhandler = \"exec\"\nprogram = [\"cat\"]\n",
            "handler",
        ),
    ];
    for (count, (toml, says)) in bad.iter().enumerate() {
        let line = reload(&mut server, &path, toml, count + 1);
        assert!(line.contains(" reload=refused "), "{line}");
        assert!(line.contains(says), "{says}: {line}");
    }
    // Still the first configuration: same rules, same listener.
    let mut denied = Client::connect_from("127.0.0.2", &server.addr());
    denied.send(forkd::frame::Kind::Data, b"x");
    denied.expect_error(5);
    let mut client = Client::connect_from("127.0.0.3", &server.addr());
    assert_eq!(client.echo(b"old").payload, b"old");
}

#[test]
fn a_reload_changes_the_log() {
    let (mut server, path) = start("listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\n");
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"1").payload, b"1");
    drop(client);
    server.wait_log(" end peer=");
    // -q from now on: no accept or end lines for routine conversations.
    let line = reload(
        &mut server,
        &path,
        "listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\nquiet = 1\n",
        1,
    );
    assert!(line.contains(" reload=applied "), "{line}");
    let mut quiet = Client::connect(&server.addr());
    assert_eq!(quiet.echo(b"2").payload, b"2");
    drop(quiet);
    // A refusal is still logged; the quiet conversation before it is not.
    let mut bad = Client::connect(&server.addr());
    bad.send_raw(&[0xff, 0xff, 0xff, 0xff, 1]);
    bad.expect_error(1);
    server.wait_log(" code=1 ");
    let accepts = server
        .log()
        .iter()
        .filter(|l| l.contains(" accept "))
        .count();
    assert_eq!(accepts, 1, "{:?}", server.log());
}

#[test]
fn ten_reloads_under_load_fail_no_connection() {
    let port = free_port();
    let rules = |n: usize| {
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nlog = \"stderr\"\nquiet = 1\n\
             deny = [\"10.{n}.0.0/16\"]\nmax-children = {}\n",
            32 + n
        )
    };
    let (mut server, path) = start(&rules(0));
    let load = common::load_in_background(&format!("127.0.0.1:{port}"), "churn", 4, 4);
    for n in 1..=10 {
        std::thread::sleep(Duration::from_millis(250));
        let line = reload(&mut server, &path, &rules(n), n);
        assert!(line.contains(" reload=applied "), "{line}");
        assert_eq!(field(&line, "max_children"), Some(&*format!("{}", 32 + n)));
    }
    let (code, out, err) = load.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"errors\":{}"), "{out}");
}

#[test]
fn connections_waiting_for_a_proxy_header_keep_their_listener_across_a_reload() {
    let (first, second) = (free_port(), free_port());
    let both = format!(
        "listen = [\"127.0.0.1:{first}\", \"127.0.0.1:{second}\"]\nlog = \"stderr\"\n\
         proxy-from = [\"127.0.0.1\"]\n"
    );
    let (mut server, path) = start(&both);
    // Half a header on each listener, then the first listener goes.
    let mut on_first = Client::connect(&format!("127.0.0.1:{first}").parse().unwrap());
    let mut on_second = Client::connect(&format!("127.0.0.1:{second}").parse().unwrap());
    on_first.send_raw(b"PROXY TCP4 192.0.2.1 ");
    on_second.send_raw(b"PROXY TCP4 192.0.2.2 ");
    server.wait_status("proxy_headers", "2");
    let only_second = both.replace(&format!("\"127.0.0.1:{first}\", "), "");
    let line = reload(&mut server, &path, &only_second, 1);
    assert!(line.contains(" reload=applied "), "{line}");
    on_first.send_raw(b"192.0.2.100 1 2\r\n");
    on_second.send_raw(b"192.0.2.100 1 2\r\n");
    assert_eq!(on_first.echo(b"one").payload, b"one");
    assert_eq!(on_second.echo(b"two").payload, b"two");
    let accept = server.wait_log(" accept peer=192.0.2.2:1 via=127.0.0.1:");
    assert_eq!(
        field(&accept, "listen"),
        Some(&*format!("127.0.0.1:{second}"))
    );
    let accept = server.wait_log(" accept peer=192.0.2.1:1 ");
    assert_eq!(field(&accept, "listen"), Some("removed"));
}

#[test]
fn a_reload_turns_timeouts_off_on_the_listeners_it_keeps() {
    let with = "listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\nidle-timeout = 1\ndefer-accept = 5\n";
    let (mut server, path) = start(with);
    let without = "listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\nidle-timeout = 0\n";
    let line = reload(&mut server, &path, without, 1);
    assert!(line.contains(" reload=applied "), "{line}");
    // No TCP_DEFER_ACCEPT: a client that has said nothing yet is accepted at once.
    let started = std::time::Instant::now();
    let mut silent = Client::connect(&server.addr());
    server.wait_log(" accept peer=");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // No idle limit: silent past the old one, still served.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(silent.echo(b"still here").payload, b"still here");
}
