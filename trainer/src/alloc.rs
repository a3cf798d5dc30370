//! An opt-in global allocator that keeps freed large blocks for reuse, for binaries that train or
//! load on the CPU: `#[global_allocator] static ALLOC: wf_trainer::alloc::Recycler = Recycler::new();`
//!
//! Why: a candle tensor owns its `Vec`, so every batch the loader hands out (and every large
//! activation) is a fresh allocation. glibc serves blocks over 32 MiB with a new `mmap` and unmaps
//! them on free, so each batch's ~28 MB per sample of pages is faulted in and zeroed by the kernel
//! again: on the 2-core build machine that was half of the loader's CPU time. Kept blocks come back
//! already mapped; the loader writes every value of a batch anyway, so it asks for them
//! uninitialized and nothing zeroes them at all.
//!
//! What it does: blocks of at least [`MIN_BLOCK`] bytes (alignment up to 8, which every platform's
//! `malloc` gives any block, so kept blocks are interchangeable) are kept on free, up to [`SLOTS`] blocks and `cap` bytes together, and handed out again
//! for a request of exactly the same size. `alloc_zeroed` of a kept block zeroes it (in user space).
//! Everything else goes to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Tells glibc's malloc to keep freed memory mapped for reuse: blocks up to 32 MiB (its
/// largest setting) come from the heap instead of a fresh `mmap`, and the heap's free top is
/// given back to the system only past 1 GiB. A training step frees and allocates the same
/// activation sizes every step; without this glibc unmaps and re-faults them, and on a 2-vCPU
/// virtual machine the page faults and the TLB shootdowns they send to the other CPU made a
/// UNet step about a fifth slower and much more variable (BENCHMARKS.md). The cost: memory freed
/// by a process stays its own until exit. Process-wide and idempotent; a no-op off glibc.
pub fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Smallest block kept: below this, glibc's heap already reuses memory without page faults.
pub const MIN_BLOCK: usize = 8 << 20;
/// Most blocks kept at once.
pub const SLOTS: usize = 32;

/// See the module docs.
pub struct Recycler {
    cap: usize,
    enabled: AtomicBool,
    lock: AtomicBool,
    kept: AtomicUsize,
    ptrs: [AtomicPtr<u8>; SLOTS],
    sizes: [AtomicUsize; SLOTS],
}

impl Default for Recycler {
    fn default() -> Self {
        Self::new()
    }
}

impl Recycler {
    /// Keeps at most 2 GiB.
    pub const fn new() -> Self {
        Self::with_cap(2 << 30)
    }

    /// Keeps at most `cap` bytes of freed blocks.
    pub const fn with_cap(cap: usize) -> Self {
        Recycler {
            cap,
            enabled: AtomicBool::new(true),
            lock: AtomicBool::new(false),
            kept: AtomicUsize::new(0),
            ptrs: [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS],
            sizes: [const { AtomicUsize::new(0) }; SLOTS],
        }
    }

    /// Off: behaves as `System` from now on (blocks already kept stay kept; for comparisons).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Bytes held for reuse now.
    pub fn kept_bytes(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let r = f();
        self.lock.store(false, Ordering::Release);
        r
    }

    fn eligible(&self, l: &Layout) -> bool {
        l.size() >= MIN_BLOCK && l.align() <= 8 && self.enabled.load(Ordering::Relaxed)
    }

    /// A kept block of exactly `size` bytes.
    fn take(&self, size: usize) -> Option<*mut u8> {
        self.locked(|| {
            for i in 0..SLOTS {
                let p = self.ptrs[i].load(Ordering::Relaxed);
                if !p.is_null() && self.sizes[i].load(Ordering::Relaxed) == size {
                    self.ptrs[i].store(std::ptr::null_mut(), Ordering::Relaxed);
                    self.kept.fetch_sub(size, Ordering::Relaxed);
                    return Some(p);
                }
            }
            None
        })
    }

    /// Keeps `p` if there is room; false means the caller frees it.
    fn keep(&self, p: *mut u8, size: usize) -> bool {
        self.locked(|| {
            if self.kept.load(Ordering::Relaxed) + size > self.cap {
                return false;
            }
            for i in 0..SLOTS {
                if self.ptrs[i].load(Ordering::Relaxed).is_null() {
                    self.ptrs[i].store(p, Ordering::Relaxed);
                    self.sizes[i].store(size, Ordering::Relaxed);
                    self.kept.fetch_add(size, Ordering::Relaxed);
                    return true;
                }
            }
            false
        })
    }
}

// SAFETY: every block handed out comes from `System` with a layout of the same size and an
// alignment `System` gives every block (<= 8: plain malloc), and is handed out once
// (taken from its slot under the lock); blocks are returned to `System` with their own layout.
unsafe impl GlobalAlloc for Recycler {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if self.eligible(&l)
            && let Some(p) = self.take(l.size())
        {
            return p;
        }
        // SAFETY: forwarded as is.
        unsafe { System.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if self.eligible(&l)
            && let Some(p) = self.take(l.size())
        {
            // SAFETY: `p` is a block of l.size() bytes that nobody else holds.
            unsafe { std::ptr::write_bytes(p, 0, l.size()) };
            return p;
        }
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if self.eligible(&l) && self.keep(p, l.size()) {
            return;
        }
        // SAFETY: forwarded as is (the block came from System with a layout of this size).
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if self.eligible(&l) || new_size >= MIN_BLOCK {
            // Through alloc/dealloc so kept blocks stay consistent (rare for large blocks).
            // SAFETY: the GlobalAlloc contract's default realloc, on our own alloc and dealloc.
            unsafe {
                let new = Layout::from_size_align_unchecked(new_size, l.align());
                let q = self.alloc(new);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                    self.dealloc(p, l);
                }
                q
            }
        } else {
            // SAFETY: forwarded as is.
            unsafe { System.realloc(p, l, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_large_blocks_by_size_within_the_cap() {
        let r = Recycler::with_cap(3 * MIN_BLOCK);
        let big = Layout::from_size_align(MIN_BLOCK, 8).unwrap();
        let small = Layout::from_size_align(4096, 8).unwrap();
        unsafe {
            let a = r.alloc(big);
            a.write(7);
            r.dealloc(a, big);
            assert_eq!(r.kept_bytes(), MIN_BLOCK);
            let b = r.alloc(big);
            assert_eq!(a, b, "the same block comes back");
            assert_eq!(r.kept_bytes(), 0);
            let z = {
                r.dealloc(b, big);
                r.alloc_zeroed(big)
            };
            assert_eq!(z, a);
            assert!(
                std::slice::from_raw_parts(z, MIN_BLOCK)
                    .iter()
                    .all(|&v| v == 0)
            );
            // Another size is not served from it; over the cap, blocks are freed.
            let other = Layout::from_size_align(MIN_BLOCK + 4096, 8).unwrap();
            let blocks: Vec<*mut u8> = (0..4).map(|_| r.alloc(other)).collect();
            r.dealloc(z, big);
            for &p in &blocks {
                r.dealloc(p, other);
            }
            assert!(r.kept_bytes() <= 3 * MIN_BLOCK);
            let s = r.alloc(small);
            r.dealloc(s, small);
            assert!(r.kept_bytes() <= 3 * MIN_BLOCK);
            // Drain so the test leaks nothing.
            while let Some(p) = r.take(other.size()) {
                System.dealloc(p, other);
            }
            while let Some(p) = r.take(big.size()) {
                System.dealloc(p, big);
            }
            assert_eq!(r.kept_bytes(), 0);
        }
    }
}
