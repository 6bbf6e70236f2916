//! `--model thread`: the same server with a thread per connection, what it refuses, and the
//! fault that shows why forkd forks.

mod common;

use common::{Client, Forkd, field, forkd_fails};
use forkd::frame::Kind;

#[test]
fn the_thread_model_serves_with_the_same_protocol_and_log_lines() {
    let mut server = Forkd::start(&["--model", "thread", "--max-children", "3"]);
    let mut a = Client::connect(&server.addr());
    let mut b = Client::connect(&server.addr());
    assert_eq!(a.echo(b"a").payload, b"a");
    assert_eq!(b.echo(b"b").payload, b"b");
    let accept = server.wait_log(" accept peer=");
    assert!(field(&accept, "thread").is_some(), "{accept}");
    assert!(server.children().is_empty(), "no process per connection");
    a.half_close();
    a.expect_eof();
    let end = server.wait_log(" end peer=");
    assert_eq!(field(&end, "status"), Some("exit:0"));
    // Errors, pipelining and the idle timeout behave alike.
    b.send_raw(&[0, 0, 0, 0, 0x09]);
    b.expect_error(2);
}

#[test]
fn the_thread_model_honours_max_children_and_a_panic_ends_one_thread() {
    let mut server = Forkd::start_faults(&["--model", "thread", "--max-children", "2"]);
    let mut bystander = Client::connect(&server.addr());
    assert_eq!(bystander.echo(b"x").payload, b"x");
    let mut victim = Client::connect(&server.addr());
    assert_eq!(victim.echo(b"y").payload, b"y");
    server.wait_log("accepting=paused");
    victim.send(Kind::Data, b"panic");
    let end = server.wait_log("status=exit:101 reason=panic");
    assert!(end.contains("thread="), "{end}");
    assert_eq!(bystander.echo(b"still").payload, b"still");
}

#[test]
fn a_stack_overflow_in_one_thread_takes_every_connection_down() {
    // What forking prevents: the fault of one conversation kills the process serving all.
    let mut server = Forkd::start_faults(&["--model", "thread"]);
    let mut bystander = Client::connect(&server.addr());
    assert_eq!(bystander.echo(b"before").payload, b"before");
    let mut victim = Client::connect(&server.addr());
    victim.send(Kind::Data, b"stack-overflow");
    let status = server.wait_exit();
    assert!(!status.success(), "{status:?}");
    let mut gone = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(bystander.stream(), &mut gone),
        Ok(0) | Err(_)
    ));
}

#[test]
fn what_a_thread_cannot_honour_is_refused_naming_the_flag() {
    for (extra, flag) in [
        (&["--max-lifetime", "5"][..], "--max-lifetime"),
        (&["--rlimit-as", "1G"][..], "--rlimit-as"),
        (&["--rlimit-cpu", "5"][..], "--rlimit-cpu"),
        (&["--rlimit-nofile", "64"][..], "--rlimit-nofile"),
        (&["--nice", "5"][..], "--nice"),
        (&["--", "cat"][..], "--handler exec"),
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0", "--model", "thread"];
        args.extend_from_slice(extra);
        let (code, err) = forkd_fails(&args);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("forkd: {flag} cannot apply to --model thread")),
            "{err}"
        );
    }
}
