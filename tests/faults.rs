//! A fault in one child ends that child only: panics, aborts and stack overflows in the
//! fault-injection server (examples/faults.rs, built on the library), while another
//! conversation carries on.

mod common;

use common::{Client, Forkd};

/// Commits `fault` in one conversation and checks the supervisor's `end` line for it, and
/// that a conversation already open and a new one are both served.
fn fault_ends_only_its_child(fault: &str, expected_status: &[&str]) -> String {
    let mut server = Forkd::start_faults(&[]);
    let mut bystander = Client::connect(&server.addr());
    assert_eq!(bystander.echo(b"before").payload, b"before");
    let mut victim = Client::connect(&server.addr());
    assert_eq!(victim.echo(b"echo first").payload, b"echo first");
    let pid = server.child_for(victim.stream());
    victim.send(forkd::frame::Kind::Data, fault.as_bytes());
    let end = server.wait_log(&format!("end peer={}", local(&victim)));
    assert!(
        expected_status.iter().any(|s| end.contains(s)),
        "{fault}: {end}"
    );
    assert!(end.contains(&format!("pid={pid} ")), "{end}");
    assert!(end.contains("warning:"), "{end}");
    assert_eq!(bystander.echo(b"after").payload, b"after");
    let mut newcomer = Client::connect(&server.addr());
    assert_eq!(newcomer.echo(b"new").payload, b"new");
    server.wait_no_children_but(2);
    end
}

fn local(client: &Client) -> String {
    match client.stream_ref() {
        forkd::Stream::Tcp(s) => s.local_addr().unwrap().to_string(),
        forkd::Stream::Unix(_) => unreachable!(),
    }
}

#[test]
fn a_panic_ends_its_child_with_101_and_is_logged() {
    let end = fault_ends_only_its_child("panic", &["status=exit:101 reason=panic"]);
    assert!(end.contains("reason=panic"));
}

#[test]
fn a_panic_message_reaches_the_log_from_the_child() {
    let mut server = Forkd::start_faults(&[]);
    let mut victim = Client::connect(&server.addr());
    let pid = server.child_for(victim.stream());
    victim.send(forkd::frame::Kind::Data, b"panic");
    let line = server.wait_log(&format!("panic pid={pid} "));
    assert!(line.contains("fault handler asked to panic"), "{line}");
    // Every field key=value, the location too.
    assert!(line.contains(" location=examples/faults.rs:"), "{line}");
}

#[test]
fn an_abort_ends_its_child_only() {
    fault_ends_only_its_child("abort", &["status=signal:SIGABRT"]);
}

#[test]
fn a_stack_overflow_ends_its_child_only() {
    fault_ends_only_its_child(
        "stack-overflow",
        &["status=signal:SIGSEGV", "status=signal:SIGABRT"],
    );
}

#[test]
fn forkd_itself_has_no_fault_handler() {
    let out = std::process::Command::new(common::FORKD)
        .args(["--listen", "127.0.0.1:0", "--handler", "fault"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("invalid value 'fault' for '--handler"),
        "{err}"
    );
    let help = std::process::Command::new(common::FORKD)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("- echo:"), "{help}");
    assert!(!help.contains("- fault"), "{help}");
}

#[test]
fn a_handler_that_panics_answers_error_8_before_its_worker_ends() {
    for model in ["fork", "thread"] {
        let server = Forkd::start_faults(&["--model", model]);
        let mut client = Client::connect(&server.addr());
        // Two requests in one write: the first is answered, the second panics.
        let mut burst =
            forkd::frame::Frame::new(forkd::frame::Kind::Data, b"fine".to_vec()).encode();
        burst
            .extend(forkd::frame::Frame::new(forkd::frame::Kind::Data, b"panic".to_vec()).encode());
        client.send_raw(&burst);
        assert_eq!(client.recv().payload, b"fine", "{model}");
        let message = client.expect_error(8);
        assert!(!message.is_empty(), "{model}");
    }
}

#[test]
fn a_stack_overflow_is_named_in_the_log() {
    let mut server = Forkd::start_faults(&[]);
    let mut victim = Client::connect(&server.addr());
    let pid = server.child_for(victim.stream());
    victim.send(forkd::frame::Kind::Data, b"stack-overflow");
    let line = server.wait_log(&format!("error pid={pid} "));
    assert!(line.contains("has overflowed its stack"), "{line}");
    // Written as every line: the level not said twice.
    assert!(line.contains(&format!("]: error pid={pid} ")), "{line}");
    server.wait_log(&format!("pid={pid} status=signal:"));
}
