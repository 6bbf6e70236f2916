//! The Landlock part of the sandbox: one ruleset, built at start with the landlock crate (which
//! handles every access right of the newest ABI the kernel and the crate share), restricted to
//! in each worker with one system call.
//!
//! Handled, so denied unless a rule grants it: every filesystem access right, TCP bind and
//! connect (ABI 4), signals and abstract Unix sockets outside the worker's own domain (ABI 6),
//! connecting to a Unix socket by path (ABI 9). Granted: `--sandbox-read` paths may be read,
//! listed and executed; `--sandbox-write` paths everything. A rule holds the file or directory
//! open at start, whatever its path names later.

use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, path_beneath_rules,
};
use nix::errno::Errno;

/// The newest ABI forkd was tested with; the crate drops what the kernel does not offer.
const TESTED: ABI = ABI::V10;

/// Where the dynamic loader maps libraries from, on the distributions forkd packages for, and
/// its cache: a program cannot start without them.
const LOADER_PATHS: &[&str] = &[
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libx32",
    "/usr/local/lib",
    "/etc/ld.so.cache",
];

/// The kernel's Landlock ABI version, 0 without Landlock (not built in, or not enabled).
pub(super) fn abi() -> i32 {
    // SAFETY: the version query takes no ruleset attribute (null, size 0).
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    version.max(0) as i32
}

/// The ruleset: everything handled, `read` and `write` granted. Its descriptor is
/// close-on-exec.
pub(super) fn ruleset(read: &[PathBuf], write: &[PathBuf]) -> Result<OwnedFd, String> {
    let failed = |e: landlock::RulesetError| format!("--sandbox: Landlock ruleset: {e}");
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TESTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(TESTED)))
        .and_then(|r| r.scope(Scope::from_all(TESTED)))
        .and_then(|r| r.create())
        .map_err(failed)?
        .add_rules(path_beneath_rules(read, AccessFs::from_read(TESTED)))
        .and_then(|r| r.add_rules(path_beneath_rules(write, AccessFs::from_all(TESTED))))
        .map_err(failed)?;
    Option::<OwnedFd>::from(created)
        .ok_or_else(|| "--sandbox: Landlock gave no ruleset on a kernel that has it".to_string())
}

/// What executing `program` takes: the program itself, the interpreter its `#!` line names,
/// and the loader's directories; those that exist.
pub(super) fn needed_to_exec(program: Option<&Path>) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = LOADER_PATHS.iter().map(PathBuf::from).collect();
    if let Some(program) = program {
        paths.push(program.to_path_buf());
        paths.extend(interpreter(program));
    }
    paths.retain(|p| p.exists());
    paths
}

/// The interpreter a `#!` line names (`#!/bin/sh -e` → /bin/sh).
fn interpreter(program: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|b| *b == b'\n')?];
    let word = line
        .split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty())?;
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(word)))
}

/// Restricts the calling thread with `ruleset` (no_new_privs set already).
pub(super) fn restrict_self(ruleset: RawFd) -> Result<(), Errno> {
    // SAFETY: a plain system call on a descriptor; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_is_the_first_word_of_the_hash_bang_line() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#! /bin/sh -e\necho hi\n").unwrap();
        assert_eq!(interpreter(&script), Some(PathBuf::from("/bin/sh")));
        std::fs::write(&script, "\x7fELF...").unwrap();
        assert_eq!(interpreter(&script), None);
    }
}
