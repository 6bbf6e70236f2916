//! The seccomp part of the sandbox: which system calls an in-process worker may make, compiled
//! once at start by libseccomp into one filter, which the supervisor installs on itself and
//! each worker inherits ([`super::gate`]); where there is no gate, each worker installs it
//! with one system call.
//!
//! Allowed: what a protocol session and Rust's standard library need on descriptors the worker
//! holds (reading, writing, polling, socket options, closing), memory, time, its own signals,
//! threads (clone with CLONE_THREAD: a thread is as confined as its process), and opening and
//! changing files, which Landlock decides. Refused with EPERM and logged ([`super::trap`]):
//! everything else, new sockets, connect, bind, accept, sending to an address (the worker
//! holds forkd's syslog socket), exec, ptrace, O_PATH opens (Landlock does not mediate them,
//! and they would tell what exists) among them, and a fork (clone without CLONE_VM). Refused
//! with EPERM by the filter itself, unlogged: a process sharing the caller's memory
//! (posix_spawn's clone, vfork) and the fork and vfork calls, since the C library makes the
//! first with every signal blocked, when a trap would kill the worker instead; clone3
//! answers ENOSYS, so that the C library falls back to clone, whose flags a filter can read.
//! Refused with EACCES by the filter, unlogged: a path's stat and access, which the dynamic
//! loader asks before any handler is in place in a program started under the filter (an
//! upgrade in place). Killing the worker (logged first, by the trap): the calls that
//! change credentials, where a caller that ignores the failure would carry on with the
//! privileges it meant to drop.
//!
//! One filter, optimised by libseccomp into a binary tree: the kernel translates, compiles and
//! pre-evaluates a filter for every system call number when it is installed, at a cost that
//! grows with its length and with the steps each number takes through it. Measured on the
//! machine of docs/benchmarks.md: seccompiler's linear chain of a longer list took 320 µs to
//! install; this tree (about 130 instructions) costs a worker about as much as a
//! one-instruction filter, some 50 µs and more with installing and freeing: the kernel's
//! fixed cost per filter (docs/security.md), which an inherited filter does not pay. With
//! the gate's rules the tree grows to some 600 instructions, installed once; a call allowed
//! whatever its arguments does not run it (the kernel keeps a bitmap of those).

use std::sync::OnceLock;

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use nix::errno::Errno;

/// Allowed whatever their arguments. Names absent on an architecture (x86_64's legacy calls)
/// are skipped.
const ALLOWED: &[&str] = &[
    // Descriptors held: the connection, pipes, files opened under Landlock's rules.
    "read",
    "readv",
    "pread64",
    "write",
    "writev",
    "pwrite64",
    "recvfrom",
    "recvmsg",
    "sendfile",
    "shutdown",
    "getsockopt",
    "setsockopt",
    "getsockname",
    "getpeername",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "lseek",
    "fstat",
    "fsync",
    "fdatasync",
    "ftruncate",
    "flock",
    "getdents64",
    "pipe2",
    // Files, as Landlock allows (the C library uses the older calls where they exist).
    "mkdir",
    "mkdirat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat2",
    // Waiting.
    "poll",
    "ppoll",
    "pselect6",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "nanosleep",
    "clock_nanosleep",
    "sched_yield",
    "futex",
    // Memory.
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    // Memory no other process can read (an image exec'd under the filter keeps the gate's
    // secret in it, before any handler is in place); bounded by RLIMIT_MEMLOCK.
    "memfd_secret",
    // Time and facts about itself.
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getrusage",
    // Waiting for its children, which it cannot have (the supervisor, under the same filter,
    // reaps with them).
    "wait4",
    "waitid",
    "sched_getaffinity",
    "uname",
    "getrandom",
    // Its own signals (a signal leaves its Landlock domain only with ABI < 6).
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    // Restricting itself further, as a worker does before serving when it inherits the
    // filter from the supervisor ([`super::gate`]): a Landlock domain, fewer capabilities.
    "landlock_restrict_self",
    "capset",
    "tgkill",
    // What the dynamic loader and the C library do as a program starts: the thread's TLS
    // base and id. (An image a supervisor under this filter execs, its upgrade, starts under
    // it; a worker cannot exec.)
    "arch_prctl",
    "set_tid_address",
    // Threads and the end.
    "set_robust_list",
    "rseq",
    "restart_syscall",
    "exit",
    "exit_group",
];

/// Refused by killing the worker (see the module documentation): trapped as any refused call,
/// and the trap ends the worker ([`super::trap`]).
const KILLING: &[&str] = &[
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
];

/// The clone flags that make a namespace.
const NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// ioctl requests a worker may make: the non-blocking and close-on-exec flags, bytes waiting.
/// Not TIOCSTI and its kind, on a terminal fd 0 to 2 may be.
#[allow(clippy::unnecessary_cast)] // The requests' type differs between C libraries.
const IOCTLS: &[u64] = &[
    libc::FIONBIO as u64,
    libc::FIONREAD as u64,
    libc::FIOCLEX as u64,
];

/// The compiled filter, ready to install.
pub(super) struct Filter(Vec<libc::sock_filter>);

impl Filter {
    /// Installs it on the calling thread (no_new_privs set already). One system call, no
    /// allocation.
    pub(super) fn install(&self) -> Result<(), Errno> {
        let program = libc::sock_fprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies the program from `program`, which points at live memory
        // of `len` instructions.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &program as *const libc::sock_fprog,
            )
        };
        if rc == 0 { Ok(()) } else { Err(Errno::last()) }
    }
}

impl Filter {
    /// Installs it with the gate's secret in place of its placeholder, then erases this copy
    /// ([`super::gate`]): the program in memory would otherwise tell every worker the secret.
    pub(super) fn install_sealed(&mut self) -> Result<(), String> {
        let (low, high) = super::gate::seal(&mut self.0);
        let installed = if low == 0 || low != high {
            Err(format!(
                "the gate's placeholder found {low} and {high} times"
            ))
        } else {
            self.install().map_err(|e| e.to_string())
        };
        self.erase();
        installed
    }

    /// Zeroes the program in place.
    pub(super) fn erase(&mut self) {
        super::gate::erase(&mut self.0);
    }
}

/// Whether this kernel has seccomp filters with the actions the filter uses (where a filter
/// this process is under refuses the question, EPERM is the error left).
pub(super) fn available() -> bool {
    if !super::trap::CAN_ANSWER {
        return false;
    }
    [
        libc::SECCOMP_RET_TRAP,
        libc::SECCOMP_RET_KILL_PROCESS,
        libc::SECCOMP_RET_ERRNO,
    ]
    .iter()
    .all(|action| {
        // SAFETY: the kernel reads one u32 from `action`.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0u32,
                action as *const u32,
            ) == 0
        }
    })
}

/// Names of system calls by number, for the trap's log line (which cannot allocate).
static NAMES: OnceLock<Vec<String>> = OnceLock::new();
/// The numbers of [`KILLING`], for the trap.
static KILLING_NUMBERS: OnceLock<Vec<i32>> = OnceLock::new();

/// Past the highest system call number of the architectures forkd runs on.
const NUMBERS: i32 = 512;

/// A filter under construction with `default` for what no rule names: no_new_privs is set by
/// forkd before a filter goes in, and the rules become a binary tree, not a list.
fn context(default: ScmpAction) -> Result<ScmpFilterContext, libseccomp::error::SeccompError> {
    let mut ctx = ScmpFilterContext::new(default)?;
    ctx.set_ctl_nnp(false)?.set_ctl_optimize(2)?;
    Ok(ctx)
}

/// The filter: see the module documentation. `gated`: the supervisor installs it on itself
/// and its workers inherit it ([`super::gate`]): every call is also allowed with the gate's
/// placeholder as sixth argument. The workers' own setup (their process group, limits,
/// priority, capabilities, Landlock domain), which then runs under it, is allowed in the
/// form a worker makes it, in both filters (no_new_privs and the dumpable flag are
/// inherited from the supervisor).
pub(super) fn filter(gated: bool) -> Result<Filter, String> {
    let failed = |e: libseccomp::error::SeccompError| format!("--sandbox: seccomp filter: {e}");
    let mut ctx = context(ScmpAction::Trap).map_err(failed)?;
    let arg = ScmpArgCompare::new;
    // With the gate, the rules that refuse carry "not the gate" too: conditions that overlap
    // with the gate's allow would leave the outcome to libseccomp's ordering.
    let not_gate: Vec<ScmpArgCompare> = if gated {
        vec![arg(5, ScmpCompareOp::NotEqual, super::gate::PLACEHOLDER)]
    } else {
        Vec::new()
    };
    let allowed: Vec<ScmpSyscall> = ALLOWED
        .iter()
        // A name this architecture lacks (x86_64's legacy calls elsewhere) is skipped.
        .filter_map(|name| ScmpSyscall::from_name(name).ok())
        .collect();
    for call in &allowed {
        ctx.add_rule(ScmpAction::Allow, *call).map_err(failed)?;
    }
    let thread = libc::CLONE_THREAD as u64;
    let vm = libc::CLONE_VM as u64;
    let o_path = libc::O_PATH as u64;
    let empty_path = libc::AT_EMPTY_PATH as u64;
    let with = |mut compare: Vec<ScmpArgCompare>, extra: &[ScmpArgCompare]| {
        compare.extend_from_slice(extra);
        compare
    };
    let mut conditional: Vec<(&str, ScmpAction, Vec<ScmpArgCompare>)> = vec![
        ("fork", ScmpAction::Errno(libc::EPERM), not_gate.clone()),
        // Whether a path exists, and its stat: EACCES from the filter, without a trap, since
        // the dynamic loader asks (/etc/ld.so.preload, each LD_LIBRARY_PATH directory)
        // before any handler is in place. (The descriptor forms are allowed below.)
        ("access", ScmpAction::Errno(libc::EACCES), not_gate.clone()),
        (
            "faccessat",
            ScmpAction::Errno(libc::EACCES),
            not_gate.clone(),
        ),
        (
            "faccessat2",
            ScmpAction::Errno(libc::EACCES),
            not_gate.clone(),
        ),
        ("stat", ScmpAction::Errno(libc::EACCES), not_gate.clone()),
        ("lstat", ScmpAction::Errno(libc::EACCES), not_gate.clone()),
        (
            "newfstatat",
            ScmpAction::Errno(libc::EACCES),
            with(
                vec![arg(3, ScmpCompareOp::MaskedEqual(empty_path), 0)],
                &not_gate,
            ),
        ),
        (
            "statx",
            ScmpAction::Errno(libc::EACCES),
            with(
                vec![arg(2, ScmpCompareOp::MaskedEqual(empty_path), 0)],
                &not_gate,
            ),
        ),
        ("vfork", ScmpAction::Errno(libc::EPERM), not_gate.clone()),
        // ENOSYS, so that the C library falls back to clone, whose flags a filter can read.
        ("clone3", ScmpAction::Errno(libc::ENOSYS), not_gate.clone()),
        // Dispositions, but SIGSYS's: the trap handler must stay. The kernel reads the signal
        // as a 32-bit int, and the filter compares all 64 bits, so the allowed numbers are
        // named whole (below SIGSYS, 32 to 63, 64) rather than "not SIGSYS", which
        // 0x1_0000_001f would pass.
        (
            "rt_sigaction",
            ScmpAction::Allow,
            vec![arg(0, ScmpCompareOp::Less, libc::SIGSYS as u64)],
        ),
        (
            "rt_sigaction",
            ScmpAction::Allow,
            vec![arg(0, ScmpCompareOp::MaskedEqual(!0x1f), 0x20)],
        ),
        (
            "rt_sigaction",
            ScmpAction::Allow,
            vec![arg(0, ScmpCompareOp::Equal, 64)],
        ),
        // A thread, not a process (the flags are the first argument on every architecture),
        // and in no new namespace.
        (
            "clone",
            ScmpAction::Allow,
            vec![arg(
                0,
                ScmpCompareOp::MaskedEqual(thread | NAMESPACES),
                thread,
            )],
        ),
        // Sending on a socket it holds, to its peer: not to an address (the syslog socket a
        // worker logs through would reach any Unix socket by path). sendmsg, whose address
        // is in memory a filter cannot read, is refused.
        (
            "sendto",
            ScmpAction::Allow,
            vec![arg(4, ScmpCompareOp::Equal, 0)],
        ),
        // Files Landlock decides on, but not O_PATH, which Landlock lets through and which
        // would say what exists.
        (
            "openat",
            ScmpAction::Allow,
            vec![arg(2, ScmpCompareOp::MaskedEqual(o_path), 0)],
        ),
        // Its own limits: read, or set (a worker's hard limits are its soft ones).
        (
            "prlimit64",
            ScmpAction::Allow,
            vec![arg(0, ScmpCompareOp::Equal, 0)],
        ),
        // stat of a descriptor, not of a path.
        (
            "statx",
            ScmpAction::Allow,
            vec![arg(2, ScmpCompareOp::MaskedEqual(empty_path), empty_path)],
        ),
        (
            "newfstatat",
            ScmpAction::Allow,
            vec![arg(3, ScmpCompareOp::MaskedEqual(empty_path), empty_path)],
        ),
        // Its own process group, led by itself.
        (
            "setpgid",
            ScmpAction::Allow,
            vec![
                arg(0, ScmpCompareOp::Equal, 0),
                arg(1, ScmpCompareOp::Equal, 0),
            ],
        ),
        // Its own priority, read or set (raising it takes a capability a worker does not
        // keep).
        (
            "getpriority",
            ScmpAction::Allow,
            vec![
                arg(0, ScmpCompareOp::Equal, libc::PRIO_PROCESS as u64),
                arg(1, ScmpCompareOp::Equal, 0),
            ],
        ),
        (
            "setpriority",
            ScmpAction::Allow,
            vec![
                arg(0, ScmpCompareOp::Equal, libc::PRIO_PROCESS as u64),
                arg(1, ScmpCompareOp::Equal, 0),
            ],
        ),
    ];
    // A process sharing the caller's memory (posix_spawn, vfork): EPERM from the filter
    // itself, since the C library blocks every signal around it and the trap would then
    // kill the worker. A fork (no memory shared) traps, as any refused call: the worker is
    // told EPERM and the call is logged; the supervisor's is made again through the gate.
    conditional.push((
        "clone",
        ScmpAction::Errno(libc::EPERM),
        with(
            vec![arg(0, ScmpCompareOp::MaskedEqual(thread | vm), vm)],
            &not_gate,
        ),
    ));
    conditional.extend(IOCTLS.iter().map(|request| {
        (
            "ioctl",
            ScmpAction::Allow,
            vec![arg(1, ScmpCompareOp::Equal, *request)],
        )
    }));
    // The name of a thread; not dumpable (an image exec'd under the filter makes itself so
    // before anything else).
    conditional.extend([libc::PR_SET_NAME, libc::PR_GET_NAME].iter().map(|option| {
        (
            "prctl",
            ScmpAction::Allow,
            vec![arg(0, ScmpCompareOp::Equal, *option as u64)],
        )
    }));
    conditional.push((
        "prctl",
        ScmpAction::Allow,
        vec![
            arg(0, ScmpCompareOp::Equal, libc::PR_SET_DUMPABLE as u64),
            arg(1, ScmpCompareOp::Equal, 0),
        ],
    ));
    for (name, action, compare) in conditional {
        let call = ScmpSyscall::from_name(name).map_err(failed)?;
        ctx.add_rule_conditional(action, call, &compare)
            .map_err(failed)?;
    }
    if gated {
        let gate = [arg(5, ScmpCompareOp::Equal, super::gate::PLACEHOLDER)];
        for nr in 0..NUMBERS {
            let call = ScmpSyscall::from(nr);
            if allowed.contains(&call) || call.get_name().is_err() {
                continue;
            }
            ctx.add_rule_conditional(ScmpAction::Allow, call, &gate)
                .map_err(failed)?;
        }
    }
    let filter = export(&ctx).map_err(|e| format!("--sandbox: seccomp filter: {e}"))?;
    KILLING_NUMBERS.get_or_init(|| {
        KILLING
            .iter()
            .filter_map(|name| ScmpSyscall::from_name(name).ok())
            .map(i32::from)
            .collect()
    });
    NAMES.get_or_init(|| {
        (0..NUMBERS)
            .map(|nr| {
                ScmpSyscall::from(nr)
                    .get_name()
                    .unwrap_or_else(|_| format!("syscall-{nr}"))
            })
            .collect()
    });
    Ok(filter)
}

/// The guard for programs (and the frame-exec workers that start them): everything allowed
/// but reaching another process of the same user through what Landlock does not mediate,
/// its resource limits, priority and scheduling (a program could otherwise set the
/// supervisor's open-file limit to 0, or its CPU limit to a second). Those answer EPERM.
pub(super) fn guard() -> Result<Filter, String> {
    let failed = |e: libseccomp::error::SeccompError| format!("--sandbox: seccomp guard: {e}");
    let mut ctx = context(ScmpAction::Allow).map_err(failed)?;
    let refused = ScmpAction::Errno(libc::EPERM);
    let other = |index| ScmpArgCompare::new(index, ScmpCompareOp::NotEqual, 0);
    let rules = [
        ("prlimit64", other(0)),
        ("sched_setaffinity", other(0)),
        ("sched_setscheduler", other(0)),
        ("sched_setparam", other(0)),
        ("sched_setattr", other(0)),
        ("setpriority", other(1)),
        ("ioprio_set", other(1)),
        // With who 0 but a group or a user as `which`, they reach others too.
        (
            "setpriority",
            ScmpArgCompare::new(0, ScmpCompareOp::NotEqual, libc::PRIO_PROCESS as u64),
        ),
        (
            "ioprio_set",
            ScmpArgCompare::new(0, ScmpCompareOp::NotEqual, 1), // IOPRIO_WHO_PROCESS
        ),
    ];
    for (name, compare) in rules {
        if let Ok(call) = ScmpSyscall::from_name(name) {
            ctx.add_rule_conditional(refused, call, &[compare])
                .map_err(failed)?;
        }
    }
    export(&ctx).map_err(|e| format!("--sandbox: seccomp guard: {e}"))
}

/// The filter as the kernel takes it: libseccomp writes it to a descriptor.
fn export(ctx: &ScmpFilterContext) -> std::io::Result<Filter> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::{Read, Seek};
    let mut file = std::fs::File::from(memfd_create(c"forkd-seccomp", MFdFlags::MFD_CLOEXEC)?);
    ctx.export_bpf(&file).map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut bytes)?;
    let size = std::mem::size_of::<libc::sock_filter>();
    let instructions = bytes
        .chunks_exact(size)
        .map(|b| libc::sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect::<Vec<_>>();
    Ok(Filter(instructions))
}

/// Whether a refused call `nr` must end the worker. Async-signal-safe.
pub(super) fn kills(nr: i32) -> bool {
    KILLING_NUMBERS
        .get()
        .is_some_and(|numbers| numbers.contains(&nr))
}

/// The name of system call `nr` on this architecture, for the log. Async-signal-safe.
pub(super) fn name(nr: i32) -> &'static str {
    NAMES
        .get()
        .and_then(|names| usize::try_from(nr).ok().and_then(|i| names.get(i)))
        .map_or("unknown", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_system_call_here() {
        #[cfg(target_arch = "x86_64")]
        for name in ALLOWED.iter().chain(KILLING) {
            assert!(ScmpSyscall::from_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn the_filter_compiles_to_a_tree() {
        let filter = filter(false).unwrap();
        // A list would be one comparison per call and more; the tree is not much longer.
        assert!(filter.0.len() > ALLOWED.len() / 2, "{}", filter.0.len());
        assert!(filter.0.len() < 4 * ALLOWED.len(), "{}", filter.0.len());
        assert_eq!(name(libc::SYS_socket as i32), "socket");
        // With the gate, every other call number has its rule; still within the kernel's
        // limit of 4,096 instructions, and the placeholder is compared whole (both halves).
        let gated = super::filter(true).unwrap();
        assert!(gated.0.len() < 4096, "{}", gated.0.len());
        let count = |half: u32| gated.0.iter().filter(|i| i.k == half).count();
        let (low, high) = (
            count(super::super::gate::PLACEHOLDER as u32),
            count((super::super::gate::PLACEHOLDER >> 32) as u32),
        );
        assert!(low > 0 && low == high, "{low} {high}");
        assert_eq!(name(-1), "unknown");
    }
}
