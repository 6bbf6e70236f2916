//! A sandboxed worker gives up every capability: forkd serving as root (no `--user`) would
//! otherwise hand its children raw sockets, the kernel log, namespaces and the rest, none of
//! which Landlock or the allow list was written against.
//!
//! Two system calls in the worker: the secure bits that stop root from regaining capabilities
//! at exec (SECBIT_NOROOT, locked; not where the seccomp filter refuses exec), then capset
//! with all sets empty. no_new_privs, set first,
//! already stops file capabilities and set-user-ID programs from granting any.

use nix::errno::Errno;

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
/// What a worker that may exec sets: root's capabilities stay dropped, and that is locked.
const SECUREBITS: libc::c_ulong = SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP
    | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Whether this process holds any capability (in the supervisor, at start).
pub(super) fn held() -> bool {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data for version 3, into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    rc == 0 && data.iter().any(|d| d.permitted != 0 || d.effective != 0)
}

/// Empties every capability set of the calling thread, for good. Only system calls.
/// `may_exec`: whether the thread can still exec (not under the handlers' seccomp filter,
/// which refuses it), where root's capabilities would come back unless locked out.
pub(super) fn drop_all(may_exec: bool) -> Result<(), Errno> {
    // Root's capabilities come back at exec unless SECBIT_NOROOT says otherwise. Setting the
    // bits takes CAP_SETPCAP: without it (capabilities without root) there is nothing root
    // could regain, and the failure is ignored.
    if may_exec {
        // SAFETY: prctl with integer arguments.
        let secured = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) };
        if secured != 0 && Errno::last() != Errno::EPERM {
            return Err(Errno::last());
        }
    }
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let none = [Data::default(); 2];
    // SAFETY: capset reads the header and two Data for version 3. (Made directly, as in each
    // new worker: crate::raw says why.)
    let rc = unsafe {
        crate::raw::syscall(
            libc::SYS_capset,
            [
                (&raw const header) as usize,
                none.as_ptr() as usize,
                0,
                0,
                0,
                0,
            ],
        )
    };
    crate::raw::result(rc).map(drop)
}
