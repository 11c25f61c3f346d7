//! The one way events leave the kernel: a ring buffer record plus per-CPU counters, so that
//! userspace can check `emitted = received + lost` for every kind.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{flags, counters, Config, ConnEvent, EventKind, DEFAULT_RING_BYTES};

use crate::core_shim::{self, SockPtr};

/// Resized by the loader (`--ring-bytes`).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::SLOTS, 0);

/// Written by the loader before load; read-only afterwards.
#[unsafe(no_mangle)]
static TRACER_CONFIG: Config = Config { drop_every_nth_release: 0, _reserved: 0 };

#[inline(always)]
fn config() -> Config {
    // SAFETY: a plain global; volatile so the compiler cannot fold the pre-load default.
    unsafe { core::ptr::read_volatile(&TRACER_CONFIG) }
}

#[inline(always)]
fn counter(slot: u32) -> u64 {
    COUNTERS.get(slot).copied().unwrap_or(0)
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // A per-CPU slot: the program cannot migrate, and the kernel refuses to nest a program
        // inside itself on one CPU, so a plain add is safe (and needs no atomics, which Linux
        // 5.10's BPF lacks).
        // SAFETY: the pointer comes from the map and is valid while the program runs.
        unsafe { *value += 1 };
    }
}

/// Test-only fault injection (see `Config::drop_every_nth_release`): true when this release
/// must be swallowed to simulate a buggy probe.
#[inline(always)]
pub fn inject_release_drop() -> bool {
    let every = config().drop_every_nth_release as u64;
    if every == 0 {
        return false;
    }
    let seen = counter(counters::emitted(EventKind::Release))
        + counter(counters::RELEASE_DROPPED_BY_FAULT_INJECTION);
    if (seen + 1) % every == 0 {
        bump(counters::RELEASE_DROPPED_BY_FAULT_INJECTION);
        return true;
    }
    false
}

/// Writes one record for `sk`. `owner_context` says the current task is the process the event
/// is about: only then are pid, comm and cgroup filled in.
#[inline(always)]
pub fn emit(kind: EventKind, sk: SockPtr, old_state: u8, new_state: u8, event_flags: u8) {
    bump(counters::emitted(kind));
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counters::lost_ringbuf(kind));
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, exclusively owned record of the right size; every
    // field is written before submit.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_boot_ns();
        (*event).sock = sk as u64;
        (*event).netns = core_shim::tracer_sk_netns(sk);
        core_shim::tracer_sk_tuple(sk, &raw mut (*event).tuple);
        (*event).kind = kind as u8;
        (*event).flags = event_flags;
        (*event).old_state = old_state;
        (*event).new_state = new_state;
        (*event)._pad = [0; 2];
        if event_flags & flags::OWNER_CONTEXT != 0 {
            let pid_tgid = bpf_get_current_pid_tgid();
            (*event).tgid = (pid_tgid >> 32) as u32;
            (*event).tid = pid_tgid as u32;
            (*event).start_time_ns = core_shim::tracer_leader_start_time();
            (*event).cgroup_id = bpf_get_current_cgroup_id();
            (*event).comm = [0; 16];
            core_shim::tracer_leader_comm((&raw mut (*event).comm).cast());
        } else {
            (*event).tgid = 0;
            (*event).tid = 0;
            (*event).start_time_ns = 0;
            (*event).cgroup_id = 0;
            (*event).comm = [0; 16];
        }
    }
    entry.submit(0);
}
