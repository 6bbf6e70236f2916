//! `--config FILE` and `--check` against the real binary: the file serves as its flags would,
//! the command line overrides it, a bad file is one line naming the file, the line and the
//! key, and the files the package ships check as they are.

mod common;

use std::process::Command;

use common::{Client, FORKD, Forkd, forkd_fails};

/// Writes `toml` into a file of `dir`, returning its path as text.
fn file(dir: &std::path::Path, toml: &str) -> String {
    let path = dir.join("forkd.toml");
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

#[test]
fn a_config_file_serves_as_its_flags_would_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        "listen = [\"127.0.0.1:0\"]\nlog = \"stderr\"\ndeny = [\"127.0.0.2\"]\nmax-children = 3\n",
    );
    let mut cmd = Command::new(FORKD);
    cmd.args(["--config", &path, "--max-children", "5"]);
    let mut server = Forkd::start_with(&mut cmd, dir);
    let start = server.wait_log(" start version=");
    assert!(start.contains(" max_children=5 "), "{start}");
    let mut denied = Client::connect_from("127.0.0.2", &server.addr());
    denied.send(forkd::frame::Kind::Data, b"x");
    denied.expect_error(5);
    let mut allowed = Client::connect_from("127.0.0.3", &server.addr());
    assert_eq!(allowed.echo(b"from the file").payload, b"from the file");
}

#[test]
fn check_says_ok_or_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = file(dir.path(), "listen = [\":7000\"]\nidle-timeout = \"30s\"\n");
    let out = Command::new(FORKD)
        .args(["--config", &good, "--check"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    let bad = file(
        dir.path(),
        "# a comment\nlisten = [\":7000\"]\nper-source = -1\n",
    );
    let (code, stderr) = forkd_fails(&["--config", &bad, "--check"]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with(&format!("forkd: {bad}:3: per-source: ")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn the_packaged_files_check_as_shipped() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "packaging/etc/forkd.toml",
        "packaging/examples/instance.toml",
    ] {
        let out = Command::new(FORKD)
            .args(["--config", &format!("{root}/{file}"), "--check"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
