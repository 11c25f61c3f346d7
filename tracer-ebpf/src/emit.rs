//! The one way events leave the kernel: a ring buffer record plus per-CPU counters, so that
//! userspace can check `emitted = received + lost` for every kind.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use tracer_common::{
    CONFIG_GLOBAL, COUNTERS_MAP, Config, ConnEvent, DEFAULT_RING_BYTES, EVENTS_MAP, EventKind,
    counters, flags, ring_record_bytes, tcp_state::CLOSE,
};

use crate::core_shim::{self, Sock};

/// Resized by the loader (`--ring-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
named!(EVENTS, EVENTS_MAP);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::SLOTS, 0);
named!(COUNTERS, COUNTERS_MAP);

/// Written by the loader before load; read-only afterwards.
#[unsafe(no_mangle)]
static TRACER_CONFIG: Config = Config {
    drop_every_nth_release: 0,
    lifecycle_from_state_changes: 1,
    wakeup_threshold_bytes: 0,
    stack_policy: 0,
    stack_sample_every: 1,
    stack_depth: 1,
    stack_at_state_change: 0,
    fault_refuse_stacks: 0,
    fault_skip_every_nth_state_change: 0,
};
named!(TRACER_CONFIG, CONFIG_GLOBAL);

#[inline(always)]
pub fn config() -> Config {
    // SAFETY: a plain global; volatile so the compiler cannot fold the pre-load default.
    unsafe { core::ptr::read_volatile(&TRACER_CONFIG) }
}

/// Counts a run of `inet_sock_set_state` (see `counters::STATE_CHANGE_RUNS`); false when
/// test-only fault injection (`Config::fault_skip_every_nth_state_change`) makes this run
/// return at once, uncounted, like one the kernel never made.
#[inline(always)]
pub fn count_state_change_run() -> bool {
    let every = config().fault_skip_every_nth_state_change as u64;
    if every != 0 {
        let seen = counter(counters::STATE_CHANGE_RUNS)
            + counter(counters::STATE_CHANGE_SKIPPED_BY_FAULT_INJECTION);
        if (seen + 1).is_multiple_of(every) {
            bump(counters::STATE_CHANGE_SKIPPED_BY_FAULT_INJECTION);
            return false;
        }
    }
    bump(counters::STATE_CHANGE_RUNS);
    true
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
    if (seen + 1).is_multiple_of(every) {
        bump(counters::RELEASE_DROPPED_BY_FAULT_INJECTION);
        return true;
    }
    false
}

/// Writes one record about socket `sk`. With [`flags::OWNER_CONTEXT`] the current task is the
/// process the event is about, and only then are pid, comm and cgroup filled in.
#[inline(always)]
pub fn emit(kind: EventKind, sk: impl Sock, old_state: u8, new_state: u8, event_flags: u8) {
    let Some(mut entry) = reserve(kind) else { return };
    let wakeup = if event_flags & flags::STACK_WANTED != 0 && crate::stacks::needs_reader() {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        wakeup_flags()
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, exclusively owned record of the right size; every
    // field is written before submit.
    unsafe {
        (*event).sock = sk.ptr() as u64;
        (*event).netns = sk.netns();
        sk.tuple(&raw mut (*event).tuple);
        // A held socket that reached CLOSE (reset by its peer) has given its port back by the
        // time it is released: its number survives elsewhere. Only releases meet this; a
        // connect's port is not chosen yet and stays 0.
        if kind as u8 == EventKind::Release as u8 && (*event).tuple.local_port == 0 {
            (*event).tuple.local_port = sk.source_port();
        }
        fill_common(event, kind, old_state, new_state, event_flags);
        // Why a connect failed: the kernel sets the socket's error before it moves the socket
        // to CLOSE (tcp_reset, tcp_write_err, an ICMP error), and the connecting task cannot
        // take it until the softirq making this change lets go of the socket.
        if kind as u8 == EventKind::ConnectFailed as u8 {
            let error = sk.error();
            (*event).error = if error < 256 { error as u8 } else { 0 };
        }
        // What went through the connection, for its close record.
        let (received, acked) = if kind as u8 == EventKind::Release as u8 {
            (sk.bytes_received(), sk.bytes_acked())
        } else {
            (0, 0)
        };
        (&raw mut (*event).bytes_received).write_volatile(received);
        (&raw mut (*event).bytes_acked).write_volatile(acked);
        // A held socket leaving sock_diag's view (reset, or closed by the peer): how the
        // reconcile still finds who holds it, in /proc's descriptors.
        let inode = if kind as u8 == EventKind::StateChange as u8 && new_state == CLOSE {
            sk.socket_inode()
        } else {
            0
        };
        (&raw mut (*event).socket_inode).write_volatile(inode);
    }
    entry.submit(wakeup);
}

/// Writes one record about the current process itself (exit, exec): no socket.
#[inline(always)]
pub fn emit_process(kind: EventKind) {
    let Some(mut entry) = reserve(kind) else { return };
    let wakeup = wakeup_flags();
    let event = entry.as_mut_ptr();
    // SAFETY: as in `emit`; the tuple is 4-byte aligned (asserted in tracer-common): its 38
    // bytes are nine words (addresses and ports) and the family.
    unsafe {
        zero(&raw mut (*event).sock);
        zero_u32(&raw mut (*event).netns);
        let tuple = (&raw mut (*event).tuple).cast::<u32>();
        for i in 0..9 {
            zero_u32(tuple.add(i));
        }
        (&raw mut (*event).tuple.family).write_volatile(0);
        zero(&raw mut (*event).bytes_received);
        zero(&raw mut (*event).bytes_acked);
        fill_common(event, kind, 0, 0, flags::OWNER_CONTEXT);
    }
    entry.submit(wakeup);
}

/// Submit flags for the record just reserved. With a wakeup threshold (see `Config`), only the
/// records that take the unread data across a multiple of it wake the reader: one wakeup per
/// batch. Waking on every record above the threshold instead would raise one interrupt per
/// record until the reader runs (an irq_work self-IPI, which traps to the hypervisor on a VM).
/// The first few records past each multiple all wake it, so that reservations racing on other
/// CPUs between this reservation and this query cannot hide the crossing; the loader keeps at
/// least four multiples below the ring's size, and the reader's drain timer is the last resort.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let threshold = u64::from(config().wakeup_threshold_bytes);
    if threshold == 0 {
        return 0;
    }
    // Includes this record, reserved but not yet submitted.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if unread >= threshold && unread % threshold < WAKEUP_WINDOW_RECORDS * RECORD_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// How many records past each multiple of the threshold wake the reader.
const WAKEUP_WINDOW_RECORDS: u64 = 4;

const RECORD_BYTES: u64 = ring_record_bytes(ConnEvent::SIZE);

#[inline(always)]
fn reserve(kind: EventKind) -> Option<RingBufEntry<ConnEvent>> {
    bump(counters::emitted(kind));
    let entry = EVENTS.reserve::<ConnEvent>(0);
    if entry.is_none() {
        bump(counters::lost_ringbuf(kind));
    }
    entry
}

/// Zero stores that LLVM may not merge into a `memset` (which the BPF backend emits as a call to
/// a byte-loop subprogram).
///
/// # Safety
/// `field` must be valid for writes and aligned.
#[inline(always)]
unsafe fn zero(field: *mut u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { field.write_volatile(0) }
}

/// # Safety
/// As for [`zero`].
#[inline(always)]
unsafe fn zero_u32(field: *mut u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { field.write_volatile(0) }
}

/// # Safety
/// `event` must point at a reserved ring buffer record.
#[inline(always)]
unsafe fn fill_common(
    event: *mut ConnEvent,
    kind: EventKind,
    old_state: u8,
    new_state: u8,
    event_flags: u8,
) {
    // SAFETY: guaranteed by the caller; `comm` is 8-byte aligned (asserted in tracer-common).
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_boot_ns();
        (*event).kind = kind as u8;
        (*event).flags = event_flags;
        (*event).old_state = old_state;
        (*event).new_state = new_state;
        // `error` and `_pad` in one store.
        (&raw mut (*event).error).cast::<u16>().write_volatile(0);
        if event_flags & flags::OWNER_CONTEXT != 0 {
            let pid_tgid = bpf_get_current_pid_tgid();
            (*event).tgid = (pid_tgid >> 32) as u32;
            (*event).tid = pid_tgid as u32;
            (*event).cgroup_id = bpf_get_current_cgroup_id();
            core_shim::tracer_leader_identity(
                &raw mut (*event).start_time_ns,
                (&raw mut (*event).comm).cast(),
            );
        } else {
            zero_u32(&raw mut (*event).tgid);
            zero_u32(&raw mut (*event).tid);
            zero(&raw mut (*event).start_time_ns);
            zero(&raw mut (*event).cgroup_id);
            let comm = (&raw mut (*event).comm).cast::<u64>();
            zero(comm);
            zero(comm.add(1));
        }
    }
}
