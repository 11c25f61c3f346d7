//! Opener stacks: the user-space stack of the code that opened a connection, captured where
//! that code's stack is current (inside connect(), at the exit of a successful accept), never
//! in softirq.
//!
//! The policy is checked first and costs one map lookup; a wanted stack is walked into a
//! per-CPU scratch record and copied into its own ring buffer, so a full stack ring drops a
//! stack (counted), never a connection event. The caller puts the returned flag on its event:
//! the daemon then knows the connection's stack was wanted.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    EventKind, counters, flags,
    stacks::{
        DEFAULT_STACK_RING_BYTES, MAX_STACK_DEPTH, STACK_SAMPLING_MAP, STACK_SAMPLING_SLOTS,
        STACK_SCRATCH_MAP, STACK_SUSPECT_COUNT_MAP, STACK_SUSPECTS_CAPACITY, STACK_SUSPECTS_MAP,
        STACK_WINDOW_BYTES, STACKS_MAP, SamplingSlot, StackRecord, UserRegs, frame_links_up,
        policy,
    },
};

use crate::{
    core_shim::{self, Sock},
    emit::{bump, config},
};

/// Resized by the loader (`--stack-ring-bytes`).
#[map]
static STACKS: RingBuf = RingBuf::with_byte_size(DEFAULT_STACK_RING_BYTES, 0);
named!(STACKS, STACKS_MAP);

/// The sampling counters: per CPU, because a counter shared by the CPUs of a busy process moved
/// its cache line between them on every connect and accept; direct-mapped by tgid, because an
/// array slot is an address computation where a hash map lookup hashed, walked and compared
/// (the two together were most of what the default policy cost per connection).
#[map]
static STACK_SAMPLING: PerCpuArray<SamplingSlot> =
    PerCpuArray::with_max_entries(STACK_SAMPLING_SLOTS, 0);
named!(STACK_SAMPLING, STACK_SAMPLING_MAP);

#[map]
static STACK_SUSPECTS: HashMap<u32, u8> = HashMap::with_max_entries(STACK_SUSPECTS_CAPACITY, 0);
named!(STACK_SUSPECTS, STACK_SUSPECTS_MAP);

#[map]
static STACK_SUSPECT_COUNT: Array<u32> = Array::with_max_entries(1, 0);
named!(STACK_SUSPECT_COUNT, STACK_SUSPECT_COUNT_MAP);

/// One record per CPU: too large for the BPF stack, and `bpf_get_stack` writes into it.
#[map]
pub static STACK_SCRATCH: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(1, 0);
named!(STACK_SCRATCH, STACK_SCRATCH_MAP);

/// Captures the current task's user stack for the connection `sk` it is opening (`Connect`) or
/// receiving (`Accept`) if the policy wants it; returns [`flags::STACK_WANTED`] then, else 0.
/// `ctx` is the running program's context. Call only in the opener's own context.
#[inline(always)]
pub fn capture(ctx: *mut c_void, sk: impl Sock, kind: EventKind) -> u8 {
    let cfg = config();
    if cfg.stack_policy == policy::OFF {
        return 0;
    }
    // The policy first: the socket's namespace costs two kernel reads in tracepoint mode, paid
    // only for the connections whose stack is taken.
    if !wanted(cfg.stack_policy, cfg.stack_sample_every) {
        return 0;
    }
    capture_stack(ctx, sk.ptr() as u64, sk.netns(), kind as u8)
}

/// The capture of a wanted stack, a BPF-to-BPF call of its own: inlined, its locals would join
/// those of the kprobe programs, whose socket copy already takes most of the 512-byte stack.
#[inline(never)]
fn capture_stack(ctx: *mut c_void, sock: u64, netns: u32, kind: u8) -> u8 {
    let cfg = config();
    if cfg.fault_refuse_stacks != 0 {
        // Test only (`Config::fault_refuse_stacks`): a read through a number, which the
        // verifier refuses in every program that can reach this capture.
        // SAFETY: never runs: the verifier refuses the program before it can.
        let bad = unsafe { core::ptr::read_volatile(u64::from(cfg.stack_depth) as *const u64) };
        if bad == 0 {
            return 0;
        }
    }
    let Some(record) = STACK_SCRATCH.get_ptr_mut(0) else {
        bump(counters::STACK_UNWIND_FAILED);
        return flags::STACK_WANTED;
    };
    let depth = if cfg.stack_depth == 0 || cfg.stack_depth > MAX_STACK_DEPTH {
        MAX_STACK_DEPTH
    } else {
        cfg.stack_depth
    };
    // The registers and the window first: the walk starts from the registers, and userspace
    // recovers from the window what the walk cannot see.
    capture_unwind_state(record);
    // SAFETY: `record` is valid (above) and its registers are written.
    let written = if unsafe { (*record).regs.sp != 0 } {
        // SAFETY: as above.
        unsafe { walk_frame_pointers(record, depth) as i64 * 8 }
    } else {
        // No registers (their read failed, counted): the helper reads them itself.
        // SAFETY: `record` is this CPU's scratch slot, valid and exclusive while the program
        // runs; bpf_get_stack writes at most `depth * 8` bytes into `frames`, which holds
        // MAX_STACK_DEPTH entries.
        unsafe {
            aya_ebpf::helpers::generated::bpf_get_stack(
                ctx,
                (&raw mut (*record).frames).cast(),
                depth * 8,
                u64::from(BPF_F_USER_STACK),
            )
        }
    };
    if written <= 0 {
        bump(counters::STACK_UNWIND_FAILED);
        return flags::STACK_WANTED;
    }
    // SAFETY: `record` is valid (above), its registers, window and frames written.
    if unsafe { send(record, written as u32 / 8, sock, netns, kind) } {
        bump(counters::STACK_CAPTURED);
    } else {
        bump(counters::STACK_LOST_RINGBUF);
    }
    flags::STACK_WANTED
}

/// Completes the scratch record (identity, time, what it belongs to) and copies its first
/// `frames` frames into the stack ring; false when the ring had no room.
///
/// # Safety
/// `record` is this CPU's scratch slot, its registers, window and `frames` frames written.
#[inline(always)]
pub unsafe fn send(record: *mut StackRecord, frames: u32, sock: u64, netns: u32, kind: u8) -> bool {
    // Bounded again for the verifier, which sizes the ring copy below from it.
    let frames = frames.min(MAX_STACK_DEPTH);
    // SAFETY: guaranteed by the caller; every field is written before the copy into the ring.
    unsafe {
        (*record).depth = frames;
        (*record).timestamp_ns = bpf_ktime_get_boot_ns();
        (*record).sock = sock;
        (*record).netns = netns;
        (*record).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*record).kind = kind;
        (*record)._pad = [0; 3];
        let mut comm = [0u8; 16];
        core_shim::tracer_leader_identity(&raw mut (*record).start_time_ns, comm.as_mut_ptr());
    }
    // Only the frames written travel: a Go stack of 20 frames is 520 bytes, not 1,344, so the
    // ring holds two to three times more stacks through a burst, and the copy is shorter.
    // No wakeup of its own: the daemon reads this ring whenever it reads the event ring, which
    // `needs_reader` wakes when this one fills.
    // SAFETY: `record` is valid (the caller's contract); the length stays within it (`frames`
    // is at most MAX_STACK_DEPTH), and output copies those bytes.
    unsafe {
        let bytes = core::slice::from_raw_parts(
            record.cast::<u8>(),
            StackRecord::HEADER_SIZE + frames as usize * 8,
        );
        STACKS.output::<[u8]>(bytes, u64::from(BPF_RB_NO_WAKEUP)).is_ok()
    }
}

/// True when the stack ring is over a quarter full: the event that carries
/// [`flags::STACK_WANTED`] then wakes the daemon, which drains both rings, so a burst of stacks
/// is read before the stack ring overflows even when the event ring is far from its own
/// wakeup threshold. Only the first few records past each quarter wake it (as for the event
/// ring: one wakeup per crossing, not one per record).
#[inline(always)]
pub fn needs_reader() -> bool {
    let size = STACKS.query(u64::from(BPF_RB_RING_SIZE));
    let quarter = size / 4;
    if quarter == 0 {
        return false;
    }
    let unread = STACKS.query(u64::from(BPF_RB_AVAIL_DATA));
    unread >= quarter && unread % quarter < WAKEUP_WINDOW_STACKS * StackRecord::SIZE as u64
}

/// How many of the largest stack records past each quarter of the stack ring wake the reader.
const WAKEUP_WINDOW_STACKS: u64 = 4;

/// The frame-pointer walk: `frames[0]` is the instruction pointer, then each frame's return
/// address, one 16-byte user read per frame (saved rbp, return address), for as long as the
/// frames follow [`frame_links_up`] and `depth` allows. Returns the frames written (at least 1).
///
/// `bpf_get_stack` walks the same chain but costs about 0.6 µs before its first frame
/// (callchain buffers, perf context) and 40-60 ns per frame after; this costs one helper call
/// per frame, and it stops where rbp stops being a frame pointer instead of reading junk.
///
/// # Safety
/// `record` is this CPU's scratch slot, with `regs` written.
#[inline(always)]
pub unsafe fn walk_frame_pointers(record: *mut StackRecord, depth: u32) -> u32 {
    // SAFETY: guaranteed by the caller.
    let UserRegs { ip, sp, bp } = unsafe { (*record).regs };
    // SAFETY: as above; index 0 exists.
    unsafe { (*record).frames[0] = ip };
    // SAFETY: as above.
    unsafe { walk_from(record, depth, 1, sp, bp) }
}

/// The walk from frame `first` on (the frames before it written), starting at frame pointer
/// `bp`; returns the frames written in all.
///
/// # Safety
/// `record` is this CPU's scratch slot.
#[inline(always)]
pub unsafe fn walk_from(record: *mut StackRecord, depth: u32, first: u32, sp: u64, bp: u64) -> u32 {
    let mut bp = bp;
    let mut written = first;
    // A constant bound for the verifier (5.10 unrolls it), the configured depth inside.
    for i in 1..MAX_STACK_DEPTH as usize {
        if (i as u32) < first {
            continue;
        }
        if i as u32 >= depth {
            break;
        }
        let mut frame = [0u64; 2];
        // SAFETY: reads 16 bytes of user memory into `frame`, which holds them; a fault
        // returns an error and leaves zeroes.
        let read = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                frame.as_mut_ptr().cast(),
                16,
                bp as *const c_void,
            )
        };
        let [link, return_address] = frame;
        if read != 0 || return_address == 0 || !frame_links_up(sp, bp, link) {
            break;
        }
        // SAFETY: as above; `get_mut` bounds the index.
        if let Some(slot) = unsafe { (*record).frames.get_mut(i) } {
            *slot = return_address;
            written = i as u32 + 1;
        }
        if link == 0 {
            break;
        }
        bp = link;
    }
    written
}

/// The user registers and the stack window above `sp`, from which userspace unwinds the frames
/// the frame-pointer walk misses (the caller of a C library wrapper). A failure is counted and
/// leaves `window_len` 0; the frame-pointer stack is sent all the same.
#[inline(always)]
pub fn capture_unwind_state(record: *mut StackRecord) {
    // SAFETY: `record` is this CPU's scratch slot (see capture_stack); the shim writes the
    // three registers, bpf_probe_read_user at most STACK_WINDOW_BYTES into `window`, which
    // holds that many, and zeroes them when the read fails.
    unsafe {
        (*record).window_len = 0;
        (*record)._pad2 = 0;
        if core_shim::tracer_user_regs(&raw mut (*record).regs) != 0 {
            (*record).regs = UserRegs::default();
            bump(counters::STACK_WINDOW_FAILED);
            return;
        }
        let read = aya_ebpf::helpers::generated::bpf_probe_read_user(
            (&raw mut (*record).window).cast(),
            STACK_WINDOW_BYTES as u32,
            (*record).regs.sp as *const c_void,
        );
        if read == 0 {
            (*record).window_len = STACK_WINDOW_BYTES as u32;
        } else {
            bump(counters::STACK_WINDOW_FAILED);
        }
    }
}

/// The policy's verdict for the current process's next connection: every one (`all`), those
/// of suspects, and under `sampled` also its 1st, (N+1)th, (2N+1)th, ... connection on this
/// CPU. The count is per process and per CPU (see `STACK_SAMPLING`): a process is sampled at
/// 1/N overall, its first connection on each CPU always.
#[inline(always)]
fn wanted(policy: u32, every: u32) -> bool {
    if policy == policy::ALL {
        return true;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_suspect(tgid) {
        return true;
    }
    if policy != policy::SAMPLED || every == 0 {
        return false;
    }
    let Some(slot) = STACK_SAMPLING.get_ptr_mut(tgid % STACK_SAMPLING_SLOTS) else {
        return true;
    };
    // SAFETY: this CPU's slot, valid while the program runs. Another program on this CPU may
    // interleave only by preemption inside this one: at worst a count is lost.
    unsafe {
        if (*slot).tgid != tgid {
            (*slot).tgid = tgid;
            (*slot).opened = 0;
        }
        let seen = (*slot).opened;
        (*slot).opened = seen.wrapping_add(1);
        seen % every == 0
    }
}

/// Marked suspect by the daemon; the map is only looked into while it has entries.
#[inline(always)]
fn is_suspect(tgid: u32) -> bool {
    if STACK_SUSPECT_COUNT.get(0).is_none_or(|count| *count == 0) {
        return false;
    }
    // SAFETY: the value is not read, only its presence.
    unsafe { STACK_SUSPECTS.get(tgid) }.is_some()
}
