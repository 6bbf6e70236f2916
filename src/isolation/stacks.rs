//! The supervisor's loop on a stack of its own, which a fork does not copy.
//!
//! Between one fork and the next the serving loop writes a few pages of stack (poll, accept,
//! the worker's record, reaping, the log line), and after a fork every such page is shared
//! with the workers still alive: the supervisor's next write to it is a copy-on-write fault,
//! on every connection. So the supervisor and its loop run on a mapping marked MADV_DONTFORK,
//! which a worker never has ([`run_on_own_stack`]), and every fork of the supervisor is made
//! back on the stack the loop was called from ([`on_calling_stack`]): a child starts there,
//! below the frames of whoever started the loop, in memory it inherits.
//!
//! What a child uses must therefore not live on the loop's stack: what the closure given to
//! [`on_calling_stack`] captures is moved to the calling stack before it runs, and what a
//! worker reads through a reference (its handler, its setup) lives on the heap.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The loop's stack: as large as a main thread's usually is (whatever `ulimit -s` says);
/// pages never touched cost nothing.
const LOOP_STACK_LEN: usize = 8 << 20;

/// The inaccessible gap below it, as the kernel keeps below a main stack (`stack_guard_gap`):
/// a frame that does not probe its pages (C code's) cannot jump past it into a mapping below.
const GUARD_LEN: usize = 1 << 20;

/// Room left below the calling stack's last frame before a fork's frames start.
const BELOW_CALLER: usize = 256;

/// The calling stack's pointer while the loop runs on its own; 0 otherwise.
static CALLING_STACK: AtomicUsize = AtomicUsize::new(0);
/// The loop's stack while the loop runs on it: the usable range, above the guard.
static LOOP_LOW: AtomicUsize = AtomicUsize::new(0);
static LOOP_HIGH: AtomicUsize = AtomicUsize::new(0);
/// Who runs the loop: its thread (its thread pointer) and process. A worker inherits these
/// values with the supervisor's memory but has no loop stack; a thread it starts may even
/// get a stack where the loop's was.
static LOOP_THREAD: AtomicUsize = AtomicUsize::new(0);
static LOOP_PROCESS: AtomicUsize = AtomicUsize::new(0);

/// Whether this platform switches stacks (elsewhere both functions just call).
const SWITCHES: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// Runs `body` on a stack of its own that forks do not copy, where that can be done (x86_64
/// Linux; elsewhere, or if the mapping cannot be made, on this stack). Not nested: a second
/// call while one runs calls `body` where it is.
pub(crate) fn run_on_own_stack<F: FnOnce() -> R, R>(body: F) -> R {
    if !SWITCHES || LOOP_HIGH.load(Ordering::Relaxed) != 0 {
        return body();
    }
    let Some((low, high)) = loop_stack() else {
        return body();
    };
    LOOP_LOW.store(low, Ordering::Relaxed);
    LOOP_HIGH.store(high, Ordering::Relaxed);
    LOOP_THREAD.store(crate::raw::thread_pointer(), Ordering::Relaxed);
    LOOP_PROCESS.store(std::process::id() as usize, Ordering::Relaxed);
    let mut call = Call::new(body);
    // SAFETY: `high` is the 16-aligned end of a fresh writable mapping of LOOP_STACK_LEN
    // bytes that nothing else uses; `call` outlives the switch, which returns here.
    unsafe {
        switch_and_call(
            (&raw mut call).cast(),
            Call::<F, R>::run,
            high,
            CALLING_STACK.as_ptr(),
        )
    };
    CALLING_STACK.store(0, Ordering::Relaxed);
    LOOP_LOW.store(0, Ordering::Relaxed);
    LOOP_HIGH.store(0, Ordering::Relaxed);
    LOOP_THREAD.store(0, Ordering::Relaxed);
    LOOP_PROCESS.store(0, Ordering::Relaxed);
    // SAFETY: the mapping loop_stack made (with its guard), no longer in use.
    unsafe {
        libc::munmap(
            (low - GUARD_LEN) as *mut libc::c_void,
            high - low + GUARD_LEN,
        )
    };
    call.finish()
}

/// Runs `body` on the stack [`run_on_own_stack`] was called from, when called on the loop's
/// stack: for anything that forks, so that the child starts on a stack it has. What `body`
/// captures is moved there first. Anywhere else (a worker, another model, before the loop)
/// it just calls `body`.
pub(crate) fn on_calling_stack<F: FnOnce() -> R, R>(body: F) -> R {
    if !SWITCHES || !on_loop_stack() {
        return body();
    }
    let top = (CALLING_STACK.load(Ordering::Relaxed) - BELOW_CALLER) & !15;
    let mut call = Call::new(body);
    let mut unused = 0;
    // SAFETY: below the calling stack's live frames, which stay suspended until this returns
    // (the loop runs on the calling stack's behalf); `call` outlives the switch.
    unsafe {
        switch_and_call(
            (&raw mut call).cast(),
            Call::<F, R>::run,
            top,
            &raw mut unused,
        )
    };
    call.finish()
}

/// Whether the calling thread runs on the loop's stack: the loop's thread (a worker's main
/// thread is a copy of it, but on the calling stack), with its stack pointer in the range.
fn on_loop_stack() -> bool {
    let here = std::hint::black_box(0u8);
    let here = (&raw const here) as usize;
    LOOP_THREAD.load(Ordering::Relaxed) == crate::raw::thread_pointer()
        && (LOOP_LOW.load(Ordering::Relaxed)..LOOP_HIGH.load(Ordering::Relaxed)).contains(&here)
}

/// Whether `address`, where this process faulted, is the loop stack's guard: its stack
/// overflowed. For the fault handler: no allocation, no lock (getpid is a plain system call).
pub(crate) fn is_loop_stack_guard(address: usize) -> bool {
    let low = LOOP_LOW.load(Ordering::Relaxed);
    low != 0
        && (low.saturating_sub(GUARD_LEN)..low).contains(&address)
        // SAFETY: getpid has no arguments and cannot fail.
        && LOOP_PROCESS.load(Ordering::Relaxed) == unsafe { libc::getpid() } as usize
}

/// A closure to run on another stack, then its result (or its panic, carried back across).
struct Call<F, R> {
    body: Option<F>,
    outcome: Option<std::thread::Result<R>>,
}

impl<F: FnOnce() -> R, R> Call<F, R> {
    fn new(body: F) -> Self {
        Call {
            body: Some(body),
            outcome: None,
        }
    }

    /// On the other stack: moves the closure (and what it captured) onto this stack, and
    /// runs it. Never unwinds: a panic is carried back to [`Call::finish`].
    extern "C" fn run(call: *mut u8) {
        // SAFETY: `switch_and_call` passes the Call its caller gave, alive for the switch.
        let call = unsafe { &mut *call.cast::<Call<F, R>>() };
        let Some(body) = std::hint::black_box(call.body.take()) else {
            return;
        };
        call.outcome = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
    }

    fn finish(self) -> R {
        match self.outcome {
            Some(Ok(value)) => value,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("a Call runs once"),
        }
    }
}

/// A fresh mapping for the loop, not inherited by forks, with a guard below it: its usable
/// range. Small pages only: the loop uses a few, and a huge page would be 2 MiB of memory.
#[cfg(target_os = "linux")]
fn loop_stack() -> Option<(usize, usize)> {
    let len = GUARD_LEN + LOOP_STACK_LEN;
    // SAFETY: a new private anonymous mapping; nothing else is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: advice and protection on the mapping just made. (No huge pages is advice
    // only: a kernel without transparent huge pages refuses it, and need not be told.)
    let ready = unsafe {
        libc::madvise(base, len, libc::MADV_NOHUGEPAGE);
        libc::madvise(base, len, libc::MADV_DONTFORK) == 0
            && libc::mprotect(base, GUARD_LEN, libc::PROT_NONE) == 0
    };
    if !ready {
        // SAFETY: the mapping just made, unused.
        unsafe { libc::munmap(base, len) };
        return None;
    }
    Some((base as usize + GUARD_LEN, base as usize + len))
}

/// Elsewhere there is no MADV_DONTFORK: the loop stays where it is.
#[cfg(not(target_os = "linux"))]
fn loop_stack() -> Option<(usize, usize)> {
    None
}

/// Calls `f(arg)` with the stack pointer at `top` and returns on this stack, having noted this
/// stack's pointer at `note`. To an unwinder (a backtrace) this frame is the outermost: what
/// lies above it is another stack.
///
/// # Safety
///
/// `top` must be 16-aligned, above enough writable memory for `f` that nothing else uses
/// while `f` runs; `f` must not unwind; `note` must be valid for a write.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[unsafe(naked)]
unsafe extern "C" fn switch_and_call(
    arg: *mut u8,
    f: extern "C" fn(*mut u8),
    top: usize,
    note: *mut usize,
) {
    // rdi: arg (passed on as is), rsi: f, rdx: top, rcx: note. r12 is callee-saved: saved
    // here, it keeps this stack's pointer across the call.
    std::arch::naked_asm!(
        ".cfi_startproc",
        ".cfi_undefined rip",
        "push r12",
        "mov r12, rsp",
        "mov qword ptr [rcx], rsp",
        "mov rsp, rdx",
        "call rsi",
        "mov rsp, r12",
        "pop r12",
        "ret",
        ".cfi_endproc",
    )
}

/// Elsewhere nothing switches (see [`SWITCHES`]): never called.
///
/// # Safety
///
/// None needed.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
unsafe extern "C" fn switch_and_call(
    arg: *mut u8,
    f: extern "C" fn(*mut u8),
    _: usize,
    _: *mut usize,
) {
    f(arg)
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    /// Whether this process has `address` mapped.
    fn mapped(address: usize) -> bool {
        let page = crate::isolation::lean::page_size();
        let mut resident = 0u8;
        // SAFETY: mincore writes one byte for the one page asked about.
        let rc = unsafe { libc::mincore((address & !(page - 1)) as *mut _, 1, &mut resident) };
        rc == 0
    }

    /// One test, as the loop's stack is the process's: the loop runs elsewhere, a fork made
    /// from it runs back on the calling stack with what its closure captured, and the child
    /// has no loop stack; results and panics come back across.
    #[test]
    fn the_loop_runs_on_its_own_stack_and_forks_on_the_callers() {
        let outside = std::hint::black_box(0u8);
        let outside = (&raw const outside) as usize;
        let captured = String::from("captured");
        let (inside, child_status) = run_on_own_stack(move || {
            let inside = std::hint::black_box(0u8);
            let inside = (&raw const inside) as usize;
            assert!(on_loop_stack());
            assert!(is_loop_stack_guard(LOOP_LOW.load(Ordering::Relaxed) - 1));
            let status = on_calling_stack(move || {
                assert!(!on_loop_stack());
                // SAFETY: the child only reads memory, asks the kernel about an address
                // and exits.
                match unsafe { libc::fork() } {
                    0 => {
                        let ok = captured == "captured" && !mapped(inside);
                        // SAFETY: _exit in a forked child of the test harness.
                        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
                    }
                    child => {
                        let mut status = -1;
                        // SAFETY: waits for the child forked above.
                        unsafe { libc::waitpid(child, &mut status, 0) };
                        status
                    }
                }
            });
            let panicked = std::panic::catch_unwind(|| on_calling_stack(|| panic!("carried")));
            assert!(panicked.is_err());
            // std's Command forks (a pre_exec closure rules posix_spawn out): made from the
            // loop's stack, its child starts on a stack it does not have.
            let command = || {
                let mut command = std::process::Command::new("true");
                // SAFETY: an empty closure between fork and exec.
                unsafe { command.pre_exec(|| Ok(())) };
                command
            };
            let here = command().status().unwrap();
            assert_eq!(here.signal(), Some(libc::SIGSEGV), "{here:?}");
            let back = on_calling_stack(move || command().status().unwrap());
            assert!(back.success(), "{back:?}");
            (inside, status)
        });
        assert!(inside.abs_diff(outside) > 1 << 20, "another stack");
        assert!(libc::WIFEXITED(child_status) && libc::WEXITSTATUS(child_status) == 0);
        assert!(!mapped(inside), "the loop's stack is unmapped after it");
        assert!(!on_loop_stack());
    }
}
