//! What a call the seccomp filter refuses returns, and the one log line a worker writes about
//! it. The filter traps (SIGSYS) rather than answering EPERM itself so that the worker can
//! say which call it was: this handler sets the call's result to -EPERM, logs
//! `sandbox pid=N refused=NAME` the first time in this process, and returns to the caller,
//! which sees an ordinary failed call.
//!
//! A call that changes credentials (setuid and its kind) is logged and then ends the worker
//! (SIGKILL): a caller that ignored the failure would go on with the privileges it meant to
//! drop.
//!
//! Installed once in the supervisor and inherited by each forked worker, at no cost per
//! connection; a program loses it at exec. A supervisor under its workers' filter traps too:
//! the handler makes its call again through the gate ([`super::gate`]). A worker cannot remove it: the
//! filter refuses rt_sigaction on SIGSYS, and a SIGSYS the worker blocks or ignores is
//! delivered with the default action (death) instead.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::logging::emergency;

/// Whether this architecture's handler can set a call's result.
pub(super) const CAN_ANSWER: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Whether this process has logged a refused call. Each worker starts with its copy false
/// (the supervisor's trapped calls are made again, not logged).
static REPORTED: AtomicBool = AtomicBool::new(false);

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: libc::c_int = 1;

/// The head of a SIGSYS siginfo_t (the kernel's `_sigsys` member), which libc does not name.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_address: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Installs the handler in this process.
pub(super) fn install() -> Result<(), String> {
    let handler = on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    // SAFETY: a plain sigaction with a handler that is async-signal-safe (it sets a register
    // in the context it is given and makes at most one log write).
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "--sandbox: cannot handle SIGSYS: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// [`install`], through the gate, in an image a gated supervisor exec'd (before `main`):
/// its filter refuses rt_sigaction on SIGSYS to a caller without the secret. Also unblocks
/// SIGSYS, which a blocked trap would turn into death.
pub(super) fn install_through_gate() {
    /// The kernel's struct sigaction (not the C library's).
    #[repr(C)]
    struct KernelAction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let handler = on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    #[cfg(target_arch = "x86_64")]
    let (flags, restorer) = (
        (libc::SA_SIGINFO | SA_RESTORER) as libc::c_ulong,
        return_from_handler as *const () as usize,
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (flags, restorer) = (libc::SA_SIGINFO as libc::c_ulong, 0);
    let action = KernelAction {
        handler: handler as usize,
        flags,
        restorer,
        mask: 0,
    };
    let args = [
        libc::SIGSYS as usize,
        &raw const action as usize,
        0,
        std::mem::size_of::<u64>(),
        0,
    ];
    // SAFETY: rt_sigaction reads one kernel sigaction for SIGSYS; the handler and the
    // restorer are functions of this program.
    unsafe { super::gate::call(libc::SYS_rt_sigaction, args) };
    // SAFETY: a plain sigprocmask on a set built here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The kernel's flag for a sigaction that names its own return path (x86_64 requires one).
#[cfg(target_arch = "x86_64")]
const SA_RESTORER: libc::c_int = 0x0400_0000;

/// Where a handler installed with SA_RESTORER returns: rt_sigreturn, as the C library's own.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
extern "C" fn return_from_handler() {
    std::arch::naked_asm!("mov eax, 15", "syscall", "ud2")
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO; its
    // SIGSYS layout begins as SigsysInfo does (three ints, then the union, pointer-aligned).
    let info = unsafe { &*(info as *const SigsysInfo) };
    if info.code != SYS_SECCOMP {
        // Not from a filter (a kill -SYS): what SIGSYS does by default. (In a worker the
        // filter refuses the signal() with SIGSYS blocked, and the kernel ends the worker
        // with SIGSYS all the same.)
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(libc::SIGSYS, libc::SIG_DFL);
            libc::raise(libc::SIGSYS);
        }
        return;
    }
    if super::gate::armed() {
        // The supervisor, under the filter its workers inherit: the call is its own (a fork
        // through glibc, a socket a reload binds), made again through the gate.
        // SAFETY: `context` is the interrupted call's ucontext_t; the call is made again with
        // the arguments it was made with.
        unsafe { pass(info.syscall, context.cast()) };
        return;
    }
    let name = super::seccomp::name(info.syscall).as_bytes();
    if super::seccomp::kills(info.syscall) {
        emergency::refused(name);
        // SAFETY: raise is async-signal-safe, and with SIGKILL does not return. SIGKILL rather
        // than SIGSYS's default: restoring that would take rt_sigaction on SIGSYS, which the
        // filter refuses.
        unsafe { libc::raise(libc::SIGKILL) };
        return;
    }
    // SAFETY: `context` is the ucontext_t of the interrupted call, which the kernel restores
    // on return from this handler: its result register becomes -EPERM.
    unsafe { answer(context.cast(), -i64::from(libc::EPERM)) };
    if !REPORTED.swap(true, Ordering::Relaxed) {
        emergency::refused(name);
    }
}

/// Makes the interrupted system call `nr` again, through the gate, and sets its result. A
/// fork made here returns twice: the child leaves this handler with 0 as the call's result.
///
/// # Safety
///
/// `context` must be the `ucontext_t` the kernel passed to the running SIGSYS handler, in the
/// supervisor.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn pass(nr: libc::c_int, context: *mut libc::ucontext_t) {
    // SAFETY: the caller passes the handler's live context.
    let args = unsafe { arguments(context) };
    // SAFETY: the call the supervisor made, with its own arguments.
    let result = unsafe { super::gate::call(libc::c_long::from(nr), args) };
    // SAFETY: as above.
    unsafe { answer(context, result as i64) };
}

/// # Safety
///
/// Nothing: it does nothing.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn pass(_: libc::c_int, _: *mut libc::ucontext_t) {
    // Never reached: there is no gate here.
}

/// The first five arguments of the interrupted system call.
///
/// # Safety
///
/// `context` must be the `ucontext_t` the kernel passed to the running SIGSYS handler.
#[cfg(target_arch = "x86_64")]
unsafe fn arguments(context: *mut libc::ucontext_t) -> [usize; 5] {
    // SAFETY: the caller passes the handler's live context.
    let registers = unsafe { &(*context).uc_mcontext.gregs };
    [
        libc::REG_RDI,
        libc::REG_RSI,
        libc::REG_RDX,
        libc::REG_R10,
        libc::REG_R8,
    ]
    .map(|r| registers[r as usize] as usize)
}

/// As the x86_64 one (a trapped call's registers are as they were at the call: the first
/// argument's, which is also the result's, is restored).
///
/// # Safety
///
/// As the x86_64 one.
#[cfg(target_arch = "aarch64")]
unsafe fn arguments(context: *mut libc::ucontext_t) -> [usize; 5] {
    // SAFETY: the caller passes the handler's live context.
    let registers = unsafe { &(*context).uc_mcontext.regs };
    [0, 1, 2, 3, 4].map(|r| registers[r] as usize)
}

/// Sets the result of the interrupted system call.
///
/// # Safety
///
/// `context` must be the `ucontext_t` the kernel passed to the running SIGSYS handler.
#[cfg(target_arch = "x86_64")]
unsafe fn answer(context: *mut libc::ucontext_t, result: i64) {
    // SAFETY: the caller passes the handler's live context.
    unsafe { (*context).uc_mcontext.gregs[libc::REG_RAX as usize] = result };
}

/// As the x86_64 one.
///
/// # Safety
///
/// As the x86_64 one.
#[cfg(target_arch = "aarch64")]
unsafe fn answer(context: *mut libc::ucontext_t, result: i64) {
    // SAFETY: the caller passes the handler's live context.
    unsafe { (*context).uc_mcontext.regs[0] = result as u64 };
}

/// # Safety
///
/// Nothing: it does nothing.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn answer(_: *mut libc::ucontext_t, _: i64) {
    // Never reached: seccomp is reported missing where CAN_ANSWER is false.
}
