//! The supervisor made cheap to fork: what it does once, at start and right before serving,
//! so that each fork copies, and each worker's exit unmaps, as little as possible.
//!
//! Every page of anonymous memory the supervisor has is copied (its page-table entry) at each
//! fork and unmapped at each worker's exit, and every page it writes while a worker lives is a
//! copy-on-write fault: start-up's leftovers (free heap, the deep stack of parsing the command
//! line) cost on every connection until they are given back.

/// Makes forking cheaper: no fastbins in glibc's allocator. With fastbins, a child's first
/// larger allocation consolidates every small chunk the supervisor ever freed, touching each
/// heap page that holds one, and after fork each touch is a copy-on-write fault. Measured with
/// `perf record -e page-faults`: that walk was a third of the faults per connection.
pub(crate) fn prepare_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called at start, before any thread exists; mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// Right before serving: start-up's free heap and unused stack go back to the kernel, the
/// C library's rseq registration is dropped, a worker's first allocations are provided for
/// (the worker arena, or else the allocator's cache), and the code start-up ran is no longer
/// mapped (`supervisor::startup_code`).
pub(crate) fn ready_to_serve() {
    forget_rseq();
    if !super::arena::reserve() {
        prime_allocator();
    }
    trim_stack();
    // After the steps above, whose code (reading the maps among it) the loop does not run
    // again: some 500 KiB of it would be mapped anew.
    crate::supervisor::startup_code::forget();
    // Last, as reading the maps frees what it allocated. Building the sandbox's filters
    // alone leaves some 600 KiB of free heap.
    trim_heap();
}

/// Gives the allocator's free memory back to the kernel: free heap pages would be copied at
/// each fork and unmapped at each exit.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The system's page size, asked once.
pub(crate) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Gives back the stack below the caller's frames: start-up (the command line, the
/// configuration, the sandbox's rules) ran some 50 KiB deep, the serving loop needs a few
/// pages, and the rest would be copied at each fork and unmapped at each exit. A page the
/// loop reaches again is made anew, once.
#[inline(never)]
fn trim_stack() {
    #[cfg(target_os = "linux")]
    {
        let page = page_size();
        // The stack's mapping, from /proc/self/maps: the line whose name is exactly [stack].
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let Some((lowest, end)) = maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            (fields.nth(4)? == "[stack]" && fields.next().is_none()).then_some(())?;
            let (low, high) = range.split_once('-')?;
            Some((
                usize::from_str_radix(low, 16).ok()?,
                usize::from_str_radix(high, 16).ok()?,
            ))
        }) else {
            return;
        };
        let here = std::hint::black_box(0u8);
        let here = (&raw const here) as usize;
        // This frame must be on that stack (a library user could serve from another thread).
        if !(lowest..end).contains(&here) {
            return;
        }
        // A page of margin below this frame: the system call itself pushes nothing (it is
        // made inline), but a signal's frame could land there. Whole pages only: the kernel
        // rounds the length up to one.
        let keep_from = (here & !(page - 1)).saturating_sub(page);
        if keep_from <= lowest {
            return;
        }
        // SAFETY: the range is this thread's stack below every live frame (and a page of
        // margin): nothing there is in use, and a page used again is made zero, which no
        // frame below this one can be relying on.
        unsafe {
            crate::raw::syscall(
                libc::SYS_madvise,
                [
                    lowest,
                    keep_from - lowest,
                    libc::MADV_DONTNEED as usize,
                    0,
                    0,
                    0,
                ],
            );
        }
    }
}

/// Fills the allocator's per-thread cache (glibc's tcache: a few free chunks of each size up
/// to 1 KiB) right before serving, so that a child's first small allocations (its read
/// buffer, its first replies) come from it and write no arena state: in a child each page of
/// arena state written is a copy-on-write fault. Measured with `perf record -e page-faults`:
/// a child's `_int_malloc` took 4 faults (two on libc's data, two in the heap) when the cache
/// had nothing of those sizes; with it primed, about 2 fewer per connection.
///
/// Not where the worker arena serves those allocations (`WorkerAllocator`): the cache's
/// chunks would be some 17 pages more of the supervisor's heap to copy at each fork and to
/// unmap at each exit, for nothing.
fn prime_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Two of each 16-byte size class from 16 to 1024 bytes (chunk sizes, 8 of which are
        // the allocator's header).
        let held: Vec<Vec<u8>> = (16..=1024)
            .step_by(16)
            .flat_map(|size| [size - 8, size - 8])
            .map(Vec::with_capacity)
            .collect();
        drop(std::hint::black_box(held));
    }
}

/// Unregisters the calling thread's restartable-sequences area, which glibc (2.35 and later)
/// registers for every thread for `sched_getcpu` (which falls back to a system call without
/// it). The kernel writes the area whenever a registered thread returns to user mode after
/// being scheduled, and a worker inherits the registration: in each new worker that write is
/// a copy-on-write fault on a page of the thread's control block (dynamically linked builds; a static build's control block shares a page the worker
/// writes anyway). forkd runs no restartable sequence. Nothing happens where the C library
/// registered none or does not say where.
fn forget_rseq() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        not(target_feature = "crt-static"),
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        /// The signature glibc registered with, which unregistering must repeat.
        #[cfg(target_arch = "x86_64")]
        const RSEQ_SIG: usize = 0x5305_3053;
        #[cfg(target_arch = "aarch64")]
        const RSEQ_SIG: usize = 0xd428_bc00;
        const RSEQ_FLAG_UNREGISTER: usize = 1;
        // SAFETY: dlsym only looks names up among the loaded objects.
        let (offset, size) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            )
        };
        if offset.is_null() || size.is_null() {
            return;
        }
        // SAFETY: glibc's exported variables: a ptrdiff_t and an unsigned int.
        let (offset, size) = unsafe { (*offset.cast::<isize>(), *size.cast::<u32>()) };
        if size == 0 {
            return;
        }
        let area = (crate::raw::thread_pointer() as *const u8).wrapping_offset(offset) as usize;
        // The length registered: `__rseq_size` where it is that, else the original 32 bytes
        // (glibc 2.40 and later say the size of the fields in use, 20, and register 32).
        for len in [size as usize, 32] {
            // SAFETY: unregistering asks the kernel to forget the area; it checks address,
            // length and signature against the registration and touches nothing else.
            let rc = unsafe {
                crate::raw::syscall(
                    libc::SYS_rseq,
                    [area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG, 0, 0],
                )
            };
            if rc == 0 {
                return;
            }
        }
    }
}

#[cfg(all(
    test,
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static"),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tests {
    use super::*;

    #[test]
    fn forgetting_rseq_unregisters_the_threads_area() {
        std::thread::spawn(|| {
            // SAFETY: as in forget_rseq.
            let (offset, size) = unsafe {
                (
                    libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
                    libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
                )
            };
            assert!(!offset.is_null() && !size.is_null(), "glibc 2.35 or later");
            // SAFETY: glibc's variables, as above.
            let (offset, size) = unsafe { (*offset.cast::<isize>(), *size.cast::<u32>()) };
            assert!(size > 0, "glibc registered an rseq area for this thread");
            let cpu_id = (crate::raw::thread_pointer() as *const u8)
                .wrapping_offset(offset + 4)
                .cast::<i32>();
            // SAFETY: the area's cpu_id field, which the kernel keeps while registered.
            let registered = unsafe { cpu_id.read_volatile() };
            assert!(registered >= 0, "registered: a cpu number");
            forget_rseq();
            // The kernel marks an unregistered area's cpu_id uninitialized (-1), and leaves it.
            std::thread::yield_now();
            // SAFETY: as above.
            assert_eq!(unsafe { cpu_id.read_volatile() }, -1);
            // glibc's sched_getcpu falls back to the system call.
            // SAFETY: no arguments.
            assert!(unsafe { libc::sched_getcpu() } >= 0);
        })
        .join()
        .unwrap();
    }
}
