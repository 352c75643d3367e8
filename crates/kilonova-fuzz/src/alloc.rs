//! Counts what a fuzz target allocates, so the driver can check that a
//! decoder's memory follows the input's real size and its declared caps, not
//! a length field's claim.
//!
//! The counting is per thread: only the thread that runs the target, between
//! [`start`] and [`stop`], is counted (the broker's background threads are
//! not). A single request above the hard limit ([`set_hard_limit`]) is
//! refused: the process aborts, after printing which input asked.

// A `GlobalAlloc` is `unsafe` by definition; this module only delegates to the
// system allocator and adds counting.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The system allocator, counting on the threads that asked for it.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

static HARD_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// What runs now, for the message printed when the hard limit is hit.
static CASE_TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);
static CASE_SEED: AtomicU64 = AtomicU64::new(0);
static CASE_ITERATION: AtomicU64 = AtomicU64::new(0);

/// Refuse any single allocation over `bytes` on a counted thread.
pub fn set_hard_limit(bytes: usize) {
    HARD_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Names the input being run (target index into [`crate::targets::NAMES`]).
pub fn set_case(target: usize, seed: u64, iteration: u64) {
    CASE_TARGET.store(target, Ordering::Relaxed);
    CASE_SEED.store(seed, Ordering::Relaxed);
    CASE_ITERATION.store(iteration, Ordering::Relaxed);
}

/// Starts counting this thread's allocations from zero.
pub fn start() {
    let _ = CURRENT.try_with(|c| c.set(0));
    let _ = PEAK.try_with(|c| c.set(0));
    let _ = LARGEST.try_with(|c| c.set(0));
    let _ = TRACKING.try_with(|c| c.set(true));
}

/// What this thread allocated since [`start`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Most bytes live at once (above what was live at the start).
    pub peak_bytes: usize,
    /// The largest single request.
    pub largest_bytes: usize,
}

/// Stops counting; returns what was used.
pub fn stop() -> Usage {
    let _ = TRACKING.try_with(|c| c.set(false));
    Usage {
        peak_bytes: PEAK
            .try_with(|c| usize::try_from(c.get()).unwrap_or(0))
            .unwrap_or(0),
        largest_bytes: LARGEST.try_with(Cell::get).unwrap_or(0),
    }
}

/// Pauses counting (the driver's own work inside a run, e.g. a panic message).
pub fn pause() -> bool {
    TRACKING.try_with(|c| c.replace(false)).unwrap_or(false)
}

pub fn resume(was: bool) {
    let _ = TRACKING.try_with(|c| c.set(was));
}

fn tracking() -> bool {
    TRACKING.try_with(Cell::get).unwrap_or(false)
}

/// Counts a request; false if it must be refused.
fn on_alloc(size: usize) -> bool {
    if !tracking() {
        return true;
    }
    if size > HARD_LIMIT.load(Ordering::Relaxed) {
        report_over_limit(size);
        return false;
    }
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    let now = CURRENT
        .try_with(|c| {
            let v = c.get().saturating_add(size as isize);
            c.set(v);
            v
        })
        .unwrap_or(0);
    let _ = PEAK.try_with(|c| c.set(c.get().max(now)));
    true
}

fn on_free(size: usize) {
    if tracking() {
        let _ = CURRENT.try_with(|c| c.set(c.get().saturating_sub(size as isize)));
    }
}

/// A fixed buffer to format into without allocating.
struct StackText {
    buf: [u8; 256],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn report_over_limit(size: usize) {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let mut t = StackText {
        buf: [0; 256],
        len: 0,
    };
    let target = crate::targets::NAMES
        .get(CASE_TARGET.load(Ordering::Relaxed))
        .copied()
        .unwrap_or("?");
    let _ = write!(
        t,
        "\nkilonova-fuzz: FAILED: a single allocation of {size} bytes (over the hard limit); \
         reproduce: scripts/fuzz --target {target} --seed {} --iteration {}\n",
        CASE_SEED.load(Ordering::Relaxed),
        CASE_ITERATION.load(Ordering::Relaxed),
    );
    let _ = std::io::stderr().write_all(&t.buf[..t.len]);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        // SAFETY: `ptr` was allocated by `System` (every path above) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !on_alloc(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` and `layout` come from `System` as in `dealloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            on_free(new_size);
        } else {
            on_free(layout.size());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_thread_sees_its_peak_and_largest_request() {
        start();
        let a = vec![0u8; 10_000];
        let b = vec![0u8; 5_000];
        drop(a);
        let c = vec![0u8; 1_000];
        let u = stop();
        drop((b, c));
        assert!(u.peak_bytes >= 15_000 && u.peak_bytes < 20_000, "{u:?}");
        assert_eq!(u.largest_bytes, 10_000);
    }
}
