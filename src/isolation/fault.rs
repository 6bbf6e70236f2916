//! A worker's last word on a stack overflow. Rust reports one ("thread 'main' has overflowed
//! its stack") only when the fault lands in the one page it watches; a deep frame jumps past
//! it and the worker dies a plain SIGSEGV. Here a worker's SIGSEGV or SIGBUS at an address
//! where the stack grows (within 1 MiB either side of its limit, which nothing else maps)
//! logs that message first; then the default disposition takes over and the worker dies of
//! the signal as it would have, so the supervisor's `end` line is unchanged. The supervisor's
//! own loop stack (isolation/stacks.rs) is watched the same way, at its guard page.
//!
//! The handler is installed once, in the supervisor of the fork model (single-threaded, on
//! the stack every worker starts on); workers inherit it with the fork, at no cost per
//! connection, and a program loses it at exec.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::logging::emergency;

/// The addresses taken for the stack's growth, set once in the supervisor.
static GROWTH_LOW: AtomicUsize = AtomicUsize::new(0);
static GROWTH_HIGH: AtomicUsize = AtomicUsize::new(0);

/// How far around the stack's limit a fault counts as the stack's.
const MARGIN: usize = 1 << 20;

/// In the supervisor of the fork model, before any worker starts: report stack overflows
/// (see the module comment) in it and in every worker it forks.
pub(crate) fn report_stack_overflows() {
    if note_stack_limit() {
        install();
    }
}

/// Notes where the calling thread's stack may grow to; false where it cannot be known.
fn note_stack_limit() -> bool {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread; it is read only
    // after success and destroyed once.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return false;
        }
        let found = libc::pthread_attr_getstack(attr.as_ptr(), &mut low, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if found != 0 {
            return false;
        }
    }
    let limit = low as usize;
    GROWTH_LOW.store(limit.saturating_sub(MARGIN), Ordering::Relaxed);
    GROWTH_HIGH.store(limit.saturating_add(MARGIN), Ordering::Relaxed);
    true
}

fn install() {
    let handler = on_fault as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a plain sigaction with a handler that is async-signal-safe; SA_ONSTACK runs
        // it on the alternate stack Rust's runtime set up for the main thread (a worker
        // inherits it with the supervisor's memory), since the overflowed stack has no room.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A fault has a positive code; a signal sent by kill() has none, and no address.
    let fault = code > 0;
    let low = GROWTH_LOW.load(Ordering::Relaxed);
    let high = GROWTH_HIGH.load(Ordering::Relaxed);
    let overflowed = (low..high).contains(&address) || super::stacks::is_loop_stack_guard(address);
    if fault && overflowed {
        emergency::error(b"stack overflow: thread 'main' has overflowed its stack");
    }
    // SA_RESETHAND restored the default disposition; the signal raised again is delivered as
    // the handler returns and ends the worker, whether it was a fault or sent by kill().
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(signal) };
}
