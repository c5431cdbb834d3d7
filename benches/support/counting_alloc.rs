//! A global allocator that counts live heap bytes and allocations while counting is on, and
//! passes every call on to the allocator it wraps unchanged; off, it costs one relaxed load.
//! Used by the trace store's memory measurements (`benches/store.rs`, `benches/peers`).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct CountingAllocator<A>(pub A);

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static FREED: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static DEALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Starts or stops counting.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

fn count(counter: &AtomicUsize, n: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Live heap bytes and allocations counted so far (allocated minus freed while counting).
pub fn live() -> (isize, isize) {
    let bytes = ALLOCATED.load(Ordering::Relaxed) as isize - FREED.load(Ordering::Relaxed) as isize;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) as isize
        - DEALLOCATIONS.load(Ordering::Relaxed) as isize;
    (bytes, allocations)
}

// SAFETY: every call is passed on to the wrapped allocator unchanged; only sizes are counted.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(&ALLOCATED, layout.size());
        count(&ALLOCATIONS, 1);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(&ALLOCATED, layout.size());
        count(&ALLOCATIONS, 1);
        // SAFETY: as for `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(&FREED, layout.size());
        count(&DEALLOCATIONS, 1);
        // SAFETY: as for `alloc`.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(&FREED, layout.size());
        count(&ALLOCATED, new_size);
        // SAFETY: as for `alloc`.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
