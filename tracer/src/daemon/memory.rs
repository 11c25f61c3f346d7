//! The daemon's resident memory follows its table, not its high-water marks.
//!
//! glibc raises its mmap threshold each time a large block is freed, so after a few growths
//! of the connection map the next, larger maps come from the heap, and every outgrown map
//! stays there, free but resident: about as much again as the live map. Scans (start-up,
//! reconcile) also allocate per socket for a moment. Both are handed back to the kernel here.

/// Blocks this large always get their own mapping, returned to the kernel when freed: the
/// connection map's arrays above ~2,000 entries, scan results, large API answers.
#[cfg(target_env = "gnu")]
const OWN_MAPPING_BYTES: libc::c_int = 256 * 1024;

/// Fixes the mmap threshold (which also stops glibc from moving it). Call once at start.
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before the event loop starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_BYTES);
    }
}

/// Hands free heap pages back to the kernel, after a scan dropped its per-socket data.
pub fn return_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
}
