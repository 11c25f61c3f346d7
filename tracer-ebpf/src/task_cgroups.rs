//! `iter/task`: the v2 cgroup id of every process, for processes the daemon only knows from
//! scans (connections older than it, holders found by reconcile). Run on demand by reading the
//! iterator's file, never per event; the shim writes one `tracer_common::TaskCgroup` per
//! thread-group leader.
//!
//! aya-ebpf has no attribute macro for iterators: the program is declared with its section by
//! hand, as the macros would.
use core::ffi::c_void;

use tracer_common::programs;

use crate::core_shim;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn task_cgroups(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes a `struct bpf_iter__task *`; the shim only reads it.
    unsafe { core_shim::tracer_task_cgroup_iter(ctx) }
}

named!(task_cgroups, programs::TASK_CGROUPS);
