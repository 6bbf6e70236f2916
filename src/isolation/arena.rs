//! A forked worker's first allocations: from a fresh arena, not the supervisor's heap.
//!
//! A worker starts with a copy of the supervisor's heap, shared copy-on-write, and the C
//! library's allocator writes it at the first `malloc`: its per-thread cache (one page), the
//! chunks it hands out (one page each, wherever they lie), and its code is one more window
//! for the worker to fault in. A churn connection's worker allocated two buffers, and paid
//! four page faults for them. [`WorkerAllocator`], installed as the global allocator, serves
//! a worker's allocations from an arena the supervisor reserved at start and never wrote but
//! for its first word: the worker's first writes there are one page, and the C library is
//! not called.
//!
//! The arena is small (64 KiB, a block of the C library's heap, whose pages the kernel makes
//! only when written: a mapping of its own would be one more to copy at each fork and one
//! more for each worker to set up) and ordinary memory, inherited as any other: a handler
//! that forks (or starts a program with fork and exec) hands its blocks down intact. It is
//! never given back while the worker runs: a freed block is reused only if it was the last
//! one handed out. Past the arena, and in every process that is not a forked worker (the
//! supervisor, the thread model's workers, a program's process), allocations are the C
//! library's.
//!
//! How a process knows it is a worker without writing memory the supervisor shares: the
//! arena's first word, the bump cursor, is zero until a worker sets it; the supervisor only
//! ever reads it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// The arena's size. Enough for the buffers a short conversation needs; a long one grows
/// past it into the C library's heap.
const ARENA_LEN: usize = 64 * 1024;
/// Where blocks start: after the cursor, at the largest alignment a block usually asks.
const FIRST_BLOCK: usize = 64;

/// The arena, reserved by [`reserve`] in the supervisor; null before and where it is not.
static ARENA: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Whether [`WorkerAllocator`] is the global allocator (it says so at its first allocation):
/// an arena is reserved only then.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A global allocator for programs that serve connections with forked workers (the fork
/// model): in a worker, the first 64 KiB allocated come from an arena the supervisor never
/// wrote, which costs a worker fewer page faults than the supervisor's heap (measured on
/// churn in docs/performance.md). Everywhere else it is the system's allocator.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOCATOR: forkd::WorkerAllocator = forkd::WorkerAllocator;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerAllocator;

/// The bump cursor at the arena's start, if this process is a worker using the arena.
fn cursor() -> Option<&'static AtomicUsize> {
    let arena = ARENA.load(Ordering::Relaxed);
    if arena.is_null() {
        return None;
    }
    // SAFETY: the arena is a block never given back, its first word the cursor, only ever
    // accessed atomically.
    let cursor = unsafe { &*arena.cast::<AtomicUsize>() };
    (cursor.load(Ordering::Relaxed) != 0).then_some(cursor)
}

/// Whether `ptr` is a block of the arena.
fn in_arena(ptr: *mut u8) -> bool {
    let arena = ARENA.load(Ordering::Relaxed);
    !arena.is_null() && (arena as usize..arena as usize + ARENA_LEN).contains(&(ptr as usize))
}

/// A block of `layout` from the arena, or null when it does not fit.
fn bump(cursor: &AtomicUsize, layout: Layout) -> *mut u8 {
    let arena = ARENA.load(Ordering::Relaxed) as usize;
    let mut taken = cursor.load(Ordering::Relaxed);
    loop {
        let start = (arena + taken).next_multiple_of(layout.align()) - arena;
        let end = match start.checked_add(layout.size()) {
            Some(end) if end <= ARENA_LEN => end,
            _ => return std::ptr::null_mut(),
        };
        // Acquire: a block given back by another thread (the cursor moved back over it) was
        // written by that thread before; those writes come before this one's.
        match cursor.compare_exchange_weak(taken, end, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return (arena + start) as *mut u8,
            Err(now) => taken = now,
        }
    }
}

// SAFETY: blocks are either the system allocator's, given back to it, or distinct ranges of
// the arena handed out once (a freed block is reused only after the cursor moved back over
// it); alignment and size are as the layout asks.
unsafe impl GlobalAlloc for WorkerAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        if let Some(cursor) = cursor() {
            let block = bump(cursor, layout);
            if !block.is_null() {
                return block;
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_arena(ptr) {
            // The last block handed out: the cursor moves back over it. Others stay.
            if let Some(cursor) = cursor() {
                let arena = ARENA.load(Ordering::Relaxed) as usize;
                let end = ptr as usize - arena + layout.size();
                // Release: this thread's writes to the block come before the next owner's.
                let _ = cursor.compare_exchange(
                    end,
                    ptr as usize - arena,
                    Ordering::Release,
                    Ordering::Relaxed,
                );
            }
            return;
        }
        // SAFETY: a block of the system allocator's, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // The arena's reused bytes are not zero: zeroed blocks are the system's.
        // SAFETY: as the caller guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_arena(ptr) {
            // SAFETY: a block of the system allocator's, as the caller guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees the new size makes a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if let Some(cursor) = cursor() {
            // The last block handed out grows or shrinks in place.
            let arena = ARENA.load(Ordering::Relaxed) as usize;
            let start = ptr as usize - arena;
            if start + new_size <= ARENA_LEN
                && cursor
                    .compare_exchange(
                        start + layout.size(),
                        start + new_size,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return ptr;
            }
        }
        // SAFETY: a valid layout (above).
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap (the old
            // one is still taken).
            unsafe { std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size)) };
            // SAFETY: the old block, given back once.
            unsafe { self.dealloc(ptr, layout) };
        }
        moved
    }
}

/// In the supervisor, before serving: reserves the arena if [`WorkerAllocator`] is the
/// global allocator. Whether there is an arena.
///
/// The block is a reused part of the heap, which start-up wrote: its pages are given back to
/// the kernel, so that a fork copies none of them and the supervisor never writes them (a
/// page given back reads as zeros: the cursor says "not a worker"). A worker's first write
/// then makes a fresh page, instead of copying one.
pub(crate) fn reserve() -> bool {
    if !ARENA.load(Ordering::Relaxed).is_null() {
        return true;
    }
    if !INSTALLED.load(Ordering::Relaxed) {
        return false;
    }
    // Page-aligned, so that its pages can be given back and the cursor and the first blocks
    // share the page a worker writes first.
    let Ok(layout) = Layout::from_size_align(ARENA_LEN, super::lean::page_size().max(4096)) else {
        return false;
    };
    // SAFETY: a valid layout; the block is never given back to the allocator.
    let arena = unsafe { System.alloc(layout) };
    if arena.is_null() {
        return false;
    }
    // SAFETY: the block is ours, page-aligned and a whole number of pages (the page size
    // divides 64 KiB on every system Linux runs with); its bytes are not in use.
    let given_back = unsafe { libc::madvise(arena.cast(), ARENA_LEN, libc::MADV_DONTNEED) } == 0;
    if !given_back {
        // SAFETY: the block is ours and aligned for the cursor; reused heap may hold
        // anything, and the cursor must say "not a worker".
        unsafe { arena.cast::<AtomicUsize>().write(AtomicUsize::new(0)) };
    }
    ARENA.store(arena, Ordering::Relaxed);
    true
}

/// In a forked worker, first thing: its allocations come from the arena from now on.
pub(crate) fn enter_worker() {
    let arena = ARENA.load(Ordering::Relaxed);
    if !arena.is_null() {
        // SAFETY: as in `cursor`.
        unsafe { &*arena.cast::<AtomicUsize>() }.store(FIRST_BLOCK, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena's functions on an arena of the test's own, set as this process's: only
    /// this test sets ARENA (the test binary's allocator is the system's).
    #[test]
    fn blocks_bump_reuse_the_last_and_spill_over() {
        INSTALLED.store(true, Ordering::Relaxed);
        assert!(reserve());
        assert!(!ARENA.load(Ordering::Relaxed).is_null());
        assert!(cursor().is_none(), "not a worker until entered");
        enter_worker();
        let a = WorkerAllocator;
        let small = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: blocks of `a`, given back with their layouts.
        unsafe {
            let first = a.alloc(small);
            assert!(in_arena(first));
            assert_eq!(first as usize % 8, 0);
            first.write_bytes(1, 100);
            let second = a.alloc(small);
            assert!(in_arena(second) && second as usize >= first as usize + 100);
            // The last block grows in place; the first cannot, and moves with its bytes.
            assert_eq!(a.realloc(second, small, 1000), second);
            let moved = a.realloc(first, small, 200);
            assert_ne!(moved, first);
            assert_eq!(std::slice::from_raw_parts(moved, 100), &[1u8; 100][..]);
            // Freeing the last block gives its room back.
            a.dealloc(moved, Layout::from_size_align(200, 8).unwrap());
            assert_eq!(a.alloc(Layout::from_size_align(200, 8).unwrap()), moved);
            // Too large for what is left: the system's.
            let big = Layout::from_size_align(ARENA_LEN, 8).unwrap();
            let spilled = a.alloc(big);
            assert!(!spilled.is_null() && !in_arena(spilled));
            a.dealloc(spilled, big);
            // Zeroed blocks are always the system's, and zero.
            let zeroed = a.alloc_zeroed(small);
            assert!(!in_arena(zeroed));
            assert!(
                std::slice::from_raw_parts(zeroed, 100)
                    .iter()
                    .all(|b| *b == 0)
            );
            a.dealloc(zeroed, small);
        }
    }
}
