//! The process's allocator: mimalloc (its v2 line) for blocks of up to 64 KiB, the system allocator for
//! larger ones.
//!
//! Why v2: side by side with v3 (the mimalloc crate's default), fresh processes, `benches/proxies.sh`
//! spent 2–5.5 % less CPU per proxied request on one host (v3 freed and re-made whole pages for
//! Pingora's per-request allocations), about the same on another; and an edge cold-started from control
//! holds 199 rather than 325 bytes a sandbox (`benches/scale.sh`, 100k, the two builds back to back).
//! Why not v2 alone: it gives every block over 64 KiB a page of its own, and a block freed by another
//! thread than the one that allocated it goes on a list its owner empties only every 100th such
//! allocation. Control hands 1 MiB release chunks to SQLite's worker thread and body
//! frames to the release checker's thread: with v2 alone an 80 MiB upload grew control by ~100 MiB
//! (`tests/releases.rs` bounds it at 64). glibc takes those blocks back at once, from any thread.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// mimalloc v2's largest "medium" block: above it every allocation is a page of its own.
const SMALL_MAX: usize = 64 * 1024;

pub struct Allocator;

fn small(size: usize) -> bool {
    size <= SMALL_MAX
}

// SAFETY: each block is freed (or resized) by the allocator that made it, which the size in its layout
// decides: Rust passes the same layout to `dealloc`/`realloc` as it got the block with.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if small(layout.size()) {
            unsafe { MiMalloc.alloc(layout) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if small(layout.size()) {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if small(layout.size()) {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (small(layout.size()), small(new_size)) {
            (true, true) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // Crossing the line: a new block from the other allocator, the bytes both hold, the old freed.
            _ => {
                // SAFETY: `realloc`'s contract makes `new_size`, rounded up to the alignment, a valid size.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_and_shrink_across_the_line_with_their_bytes() {
        let a = Allocator;
        for align in [1, 8, 16, 4096] {
            let layout = Layout::from_size_align(1000, align).unwrap();
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                for i in 0..1000 {
                    *p.add(i) = i as u8;
                }
                // Up over the line (system), then back under it (mimalloc).
                let big = a.realloc(p, layout, SMALL_MAX + 1);
                assert!(!big.is_null() && (big as usize).is_multiple_of(align));
                let big_layout = Layout::from_size_align(SMALL_MAX + 1, align).unwrap();
                *big.add(SMALL_MAX) = 7;
                let back = a.realloc(big, big_layout, 500);
                assert!(!back.is_null() && (back as usize).is_multiple_of(align));
                assert!((0..500).all(|i| *back.add(i) == i as u8));
                a.dealloc(back, Layout::from_size_align(500, align).unwrap());
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides_of_the_line() {
        let a = Allocator;
        for size in [64, SMALL_MAX, SMALL_MAX + 1, 1 << 20] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!((0..size).all(|i| *p.add(i) == 0));
                a.dealloc(p, layout);
            }
        }
    }
}
