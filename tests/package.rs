//! The Debian package, for real: lintian, apt-get install on this machine, the service's user,
//! man pages, units, the packaged configuration serving, an upgrade in place keeping an edited
//! conffile, and a purge that leaves nothing. packaging/build-deb must have run first (bash
//! .ci/run does). The package database is left as it was found: forkd not installed.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Client, Forkd};

const DEB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/debian");

fn deb() -> String {
    let path = format!(
        "{DEB_DIR}/forkd_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        String::from_utf8(run("dpkg", &["--print-architecture"]).stdout)
            .unwrap()
            .trim()
    );
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: run packaging/build-deb first (bash .ci/run does)"
    );
    path
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${db:Status-Status}", "forkd"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != "not-installed"
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).status.success()
}

fn group_exists(name: &str) -> bool {
    run("getent", &["group", name]).status.success()
}

/// Purges forkd when dropped, so a failed assertion still leaves the machine as it was.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = run("apt-get", &["purge", "-y", "-q", "forkd"]);
        }
    }
}

#[test]
fn lintian_has_no_errors_or_warnings() {
    let deb = deb();
    // Pedantic and informational tags too, and no override left that nothing needs. But not
    // spelling in the binaries: in a static executable, machine code and compressed tables
    // spell "wtH" and the like, differently from one build to the next.
    let out = run(
        "lintian",
        &[
            "--pedantic",
            "-I",
            "--suppress-tags",
            "spelling-error-in-binary",
            "--fail-on",
            "error,warning,info,pedantic",
            &deb,
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lintian:\n{report}");
    assert!(
        !report
            .lines()
            .any(|l| ["E:", "W:", "I:", "P:"].iter().any(|p| l.starts_with(p))),
        "{report}"
    );
}

#[test]
fn install_serve_upgrade_and_purge() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (CI runs as root)"
    );
    assert!(
        !installed(),
        "forkd is already installed on this machine: this test would replace it"
    );
    let deb = deb();
    let _purge = Purge;
    run_ok("apt-get", &["install", "-y", "-q", &deb]);

    // The service's user and group, the man pages, the units.
    assert!(user_exists("forkd") && group_exists("forkd"));
    let shell = run_ok("getent", &["passwd", "forkd"]);
    assert!(shell.trim_end().ends_with("/usr/sbin/nologin"), "{shell}");
    // Linked statically (packaging/build-deb says why): no program interpreter to load.
    for binary in ["/usr/sbin/forkd", "/usr/bin/forkc"] {
        assert!(!has_interpreter(binary), "{binary} is dynamically linked");
    }
    assert!(run_ok("man", &["-w", "forkd"]).contains("man8/forkd.8"));
    assert!(run_ok("man", &["-w", "forkc"]).contains("man1/forkc.1"));
    for unit in ["forkd.service", "forkd@.service", "forkd@.socket"] {
        let path = format!("/usr/lib/systemd/system/{unit}");
        let out = run("systemd-analyze", &["verify", "--man=no", &path]);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let security = run_ok(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "/usr/lib/systemd/system/forkd.service",
        ],
    );
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("forkd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    assert!(score <= 2.0, "exposure {score}:\n{security}");
    for path in [
        "/usr/share/doc/forkd/copyright",
        "/usr/share/doc/forkd/changelog.gz",
        "/usr/share/doc/forkd/README.md",
        "/usr/share/doc/forkd/security.md",
        "/usr/share/doc/forkd/examples/forkd.socket",
        "/usr/share/bash-completion/completions/forkd",
        "/usr/share/zsh/vendor-completions/_forkc",
        "/usr/share/fish/vendor_completions.d/forkd.fish",
    ] {
        assert!(Path::new(path).exists(), "{path}");
    }
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "forkd"]);
    assert!(conffiles.contains("/etc/forkd/forkd.toml"), "{conffiles}");
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/forkd.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/forkd --config /etc/forkd/forkd.toml\n"),
        "{unit}"
    );

    // The installed forkd, started as the unit starts it (as user forkd, with the packaged
    // forkd.toml), answers a ping. Only the port and the log differ, given on the command
    // line, which overrides the file.
    let conf = std::fs::read_to_string("/etc/forkd/forkd.toml").unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=forkd",
        "--regid=forkd",
        "--clear-groups",
        "/usr/sbin/forkd",
        "--config",
        "/etc/forkd/forkd.toml",
        "--listen",
        "127.0.0.1:0",
        "--log",
        "stderr",
    ]);
    let server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let addr = server.addrs[0].clone();
    let ping = run_ok("/usr/bin/forkc", &["--connect", &addr, "ping"]);
    assert!(
        ping.starts_with(&format!("pong from {addr} seq=1")),
        "{ping}"
    );
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"packaged").payload, b"packaged");
    let uid = std::fs::read_to_string(format!("/proc/{}/status", server.pid)).unwrap();
    let forkd_uid = nix::unistd::User::from_name("forkd").unwrap().unwrap().uid;
    assert!(uid.contains(&format!("Uid:\t{forkd_uid}\t")), "{uid}");
    drop(client);
    drop(server);

    // Static glibc and libseccomp (packaging/build-deb): the package names the sources it
    // contains and the libc6 whose NSS modules it loads, and those modules resolve --user and
    // --group names for the packaged binary.
    let glibc = run_ok("dpkg-query", &["-W", "-f=${source:Version}", "libc6"]);
    let seccomp = run_ok(
        "dpkg-query",
        &["-W", "-f=${source:Version}", "libseccomp-dev"],
    );
    let fields = run_ok(
        "dpkg-query",
        &["-W", "-f=${Built-Using}|${Depends}", "forkd"],
    );
    let (built_using, depends) = fields.split_once('|').unwrap();
    assert_eq!(
        built_using,
        format!("glibc (= {glibc}), libseccomp (= {seccomp})")
    );
    let upstream = glibc.split('-').next().unwrap();
    assert!(
        depends.contains(&format!("libc6 (>= {upstream})")) && depends.contains("libc6 (<< "),
        "{depends}"
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let mut cmd = Command::new("/usr/sbin/forkd");
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--log",
        "stderr",
        "--user",
        "nobody",
        "--group",
        "nogroup",
    ]);
    let mut server = Forkd::start_with(&mut cmd, tempfile::tempdir().unwrap());
    let mut client = Client::connect(&server.addr());
    assert_eq!(client.echo(b"by name").payload, b"by name");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid)).unwrap();
    assert!(
        status.contains(&format!("Uid:\t{}\t", nobody.uid))
            && status.contains(&format!("Gid:\t{}\t", nogroup.gid)),
        "{status}"
    );
    let start = server.wait_log(" start version=");
    assert!(
        start.contains(&format!(" user=nobody uid={}", nobody.uid)),
        "{start}"
    );
    drop(client);
    drop(server);

    // An upgrade in place keeps the admin's edit of the conffile.
    let edited = format!("{conf}\n# edited by the admin\n");
    std::fs::write("/etc/forkd/forkd.toml", &edited).unwrap();
    run_ok("apt-get", &["install", "-y", "-q", "--reinstall", &deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/forkd/forkd.toml").unwrap(),
        edited
    );
    assert!(user_exists("forkd"), "the user survives an upgrade");

    // The packaged instance example, as an admin installs it, is a valid configuration.
    let check = run_ok(
        "/usr/sbin/forkd",
        &[
            "--config",
            "/usr/share/doc/forkd/examples/instance.toml",
            "--check",
        ],
    );
    assert_eq!(check.trim(), "ok");

    // An instance the admin enabled goes with the purge, its links included.
    std::fs::write("/etc/forkd/purged.toml", "listen = [\"127.0.0.1:7199\"]\n").unwrap();
    run_ok(
        "systemctl",
        &[
            "--root=/",
            "enable",
            "forkd@purged.socket",
            "forkd@purged.service",
        ],
    );
    let links = [
        "/etc/systemd/system/sockets.target.wants/forkd@purged.socket",
        "/etc/systemd/system/multi-user.target.wants/forkd@purged.service",
    ];
    assert!(links.iter().all(|l| Path::new(l).is_symlink()), "{links:?}");

    // Remove keeps configuration and user; purge removes the configuration.
    run_ok("apt-get", &["remove", "-y", "-q", "forkd"]);
    assert!(!Path::new("/usr/sbin/forkd").exists());
    assert!(
        Path::new("/etc/forkd/forkd.toml").exists(),
        "remove keeps /etc/forkd"
    );
    let purge = run_ok("apt-get", &["purge", "-y", "-q", "forkd"]);
    assert!(
        !links.iter().any(|l| Path::new(l).is_symlink()),
        "{links:?}"
    );
    assert!(!Path::new("/usr/sbin/forkd").exists());
    assert!(!Path::new("/etc/forkd").exists());
    // Debian keeps system users on purge (files they own may remain), and says nothing of it.
    assert!(user_exists("forkd") && group_exists("forkd"));
    assert!(
        !purge.contains("deluser") && !purge.contains("delgroup"),
        "{purge}"
    );
    assert!(!installed());
}

/// Whether an ELF64 executable names a program interpreter (a PT_INTERP program header): what
/// every dynamically linked executable has and a static one lacks.
fn has_interpreter(path: &str) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "{path}: not an ELF64 file");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}
