//! The Landlock part of the sandbox: one ruleset, built at start with the landlock crate (which
//! handles every access right of the newest ABI the kernel and the crate share), restricted to
//! in each worker with one system call.
//!
//! Handled, so denied unless a rule grants it: every filesystem access right, TCP bind and
//! connect (ABI 4), signals and abstract Unix sockets outside the worker's own domain (ABI 6),
//! connecting to a Unix socket by path (ABI 9). Granted: `--sandbox-read` paths may be read,
//! listed and executed; `--sandbox-write` paths everything. A rule holds the file or directory
//! open at start, whatever its path names later.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, path_beneath_rules,
};
use nix::errno::Errno;

/// The newest ABI forkd was tested with; the crate drops what the kernel does not offer.
const TESTED: ABI = ABI::V10;

/// Where the dynamic loader finds libraries, on the distributions forkd packages for, and its
/// cache: read (not executed: the kernel checks execution only of the program and of the
/// loader, and libraries are mapped, not executed).
const LIBRARY_PATHS: &[&str] = &[
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

/// What a program needs to be executed under the ruleset.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Exec {
    /// Read and executed: the program, its `#!` interpreter, their dynamic loaders.
    pub run: Vec<PathBuf>,
    /// Read: the library directories.
    pub libraries: Vec<PathBuf>,
}

/// The kernel's Landlock ABI version, 0 without Landlock (not built in, or not enabled, or
/// refused by a seccomp filter this process is under: then EPERM is the error left).
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

/// The ruleset: everything handled; `read` and `write` granted, and what `exec` needs. Its
/// descriptor is close-on-exec.
pub(super) fn ruleset(read: &[PathBuf], write: &[PathBuf], exec: &Exec) -> Result<OwnedFd, String> {
    let failed = |e: landlock::RulesetError| format!("--sandbox: Landlock ruleset: {e}");
    // Everything but execution: what a worker writes, it cannot then run.
    let mut writable = AccessFs::from_all(TESTED);
    writable.remove(AccessFs::Execute);
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TESTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(TESTED)))
        .and_then(|r| r.scope(Scope::from_all(TESTED)))
        .and_then(|r| r.create())
        .map_err(failed)?
        .add_rules(path_beneath_rules(read, AccessFs::from_read(TESTED)))
        .and_then(|r| r.add_rules(path_beneath_rules(write, writable)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                &exec.run,
                AccessFs::ReadFile | AccessFs::Execute,
            ))
        })
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                &exec.libraries,
                AccessFs::ReadFile | AccessFs::ReadDir,
            ))
        })
        .map_err(failed)?;
    Option::<OwnedFd>::from(created)
        .ok_or_else(|| "--sandbox: Landlock gave no ruleset on a kernel that has it".to_string())
}

/// What executing `program` takes: itself, the interpreter its `#!` line names, the dynamic
/// loader each of those names, and the library directories; those that exist.
pub(super) fn needed_to_exec(program: Option<&Path>) -> Exec {
    let mut run: Vec<PathBuf> = program.into_iter().map(Path::to_path_buf).collect();
    run.extend(program.and_then(interpreter));
    let loaders: Vec<PathBuf> = run.iter().filter_map(|p| elf_interpreter(p)).collect();
    run.extend(loaders);
    run.retain(|p| p.exists());
    let libraries = LIBRARY_PATHS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    Exec { run, libraries }
}

/// The interpreter a `#!` line names (`#!/bin/sh -e` → /bin/sh).
fn interpreter(program: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|b| *b == b'\n')?];
    let word = line
        .split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(OsStr::from_bytes(word)))
}

/// The program interpreter (the dynamic loader) an ELF executable names in its PT_INTERP
/// header; `None` for a static executable or a file that is not ELF.
fn elf_interpreter(path: &Path) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    let file = std::fs::File::open(path).ok()?;
    let mut ident = [0u8; 64];
    file.read_exact_at(&mut ident, 0).ok()?;
    if ident[..4] != *b"\x7fELF" {
        return None;
    }
    let little = ident[5] == 1;
    let wide = ident[4] == 2;
    let read = |at: u64, width: usize| -> Option<u64> {
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes[..width], at).ok()?;
        let bytes = &bytes[..width];
        Some(bytes.iter().enumerate().fold(0u64, |n, (i, b)| {
            let shift = if little { i } else { width - 1 - i } * 8;
            n | u64::from(*b) << shift
        }))
    };
    // Offsets of e_phoff, e_phentsize, e_phnum; of p_offset and p_filesz in a header.
    let (phoff, entry_size, count, word) = if wide {
        (read(32, 8)?, read(54, 2)?, read(56, 2)?, 8)
    } else {
        (read(28, 4)?, read(42, 2)?, read(44, 2)?, 4)
    };
    let (offset_at, size_at) = if wide { (8, 32) } else { (4, 16) };
    for i in 0..count.min(64) {
        let header = phoff.checked_add(i * entry_size)?;
        if read(header, 4)? as u32 != PT_INTERP {
            continue;
        }
        let offset = read(header.checked_add(offset_at)?, word)?;
        let size = read(header.checked_add(size_at)?, word)?.min(4096) as usize;
        let mut name = vec![0u8; size];
        file.read_exact_at(&mut name, offset).ok()?;
        let end = name.iter().position(|b| *b == 0).unwrap_or(size);
        return Some(PathBuf::from(OsStr::from_bytes(&name[..end])));
    }
    None
}

/// Restricts the calling thread with `ruleset` (no_new_privs set already).
pub(super) fn restrict_self(ruleset: RawFd) -> Result<(), Errno> {
    // SAFETY: a plain system call on a descriptor; no memory is passed. (Made directly, as
    // in each new worker: crate::raw says why.)
    let rc = unsafe {
        crate::raw::syscall(
            libc::SYS_landlock_restrict_self,
            [ruleset as usize, 0, 0, 0, 0, 0],
        )
    };
    crate::raw::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_loader_and_a_script_its_interpreter() {
        let loader = elf_interpreter(Path::new("/bin/true")).expect("/bin/true is dynamic");
        assert!(loader.to_string_lossy().contains("ld-"), "{loader:?}");
        assert!(loader.exists());
        assert_eq!(elf_interpreter(Path::new("/etc/passwd")), None);
        let exec = needed_to_exec(Some(Path::new("/bin/true")));
        assert_eq!(exec.run, vec![PathBuf::from("/bin/true"), loader]);
        assert!(exec.libraries.contains(&PathBuf::from("/usr/lib")));
    }

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
