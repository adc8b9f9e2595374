//! Handing memory back to the OS once a whole snapshot has been compiled.
//!
//! A cold start holds, for a moment, the snapshot's JSON (about 260 bytes a sandbox) and its decoded wire
//! form beside the compiled tables. The process runs on mimalloc for small blocks (`src/alloc.rs`),
//! which returns freed memory to the OS only after a delay, checked when the thread that freed it
//! allocates again; the thread that decoded the snapshot is then mostly idle, so at 100k sandboxes the
//! edge kept 70 % more resident memory than it used. `mi_collect(true)` purges what is free now, in every
//! thread's arenas. Blocks over 64 KiB (the JSON itself) come from glibc, which keeps a freed heap's top
//! until it passes a threshold that grows with the largest block freed: `malloc_trim(0)` hands it back.

// Linked for `mi_collect`: the same mimalloc the binary allocates with (one copy in the build).
use libmimalloc_sys as _;

extern "C" {
    /// mimalloc's own collection (`mimalloc.h`): `force` returns all freed memory to the OS now.
    fn mi_collect(force: bool);
}

/// Returns what the allocator holds freed to the OS. Costs milliseconds: call it after a whole snapshot
/// replaced the state, not per change. Harmless when mimalloc is not the allocator (unit tests): it
/// collects mimalloc's own empty heap.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes a plain bool and may be called from any thread at any time.
    unsafe { mi_collect(true) }
    // SAFETY: `malloc_trim` takes a plain size and is thread-safe (it locks each arena it trims).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}
