//! The ABI of opener stacks: which connections get the user-space stack of the code that opened
//! them, and the records that carry those stacks to the daemon.
//!
//! Stacks travel in their own ring buffer ([`STACKS_MAP`]), never in the event ring: a stack that
//! finds no room is dropped and counted, and no connection event ever is. The event of a
//! connection whose stack was wanted carries [`crate::flags::STACK_WANTED`], so the daemon can
//! tell "not sampled" from "captured" from "lost".

/// Ring buffer of [`StackRecord`]s.
pub const STACKS_MAP: &str = "STACKS";
/// Per-CPU array of [`SamplingSlot`]s, indexed by tgid modulo [`STACK_SAMPLING_SLOTS`]: the
/// `sampled` policy's counters, written by the kernel only.
pub const STACK_SAMPLING_MAP: &str = "STACK_SAMPLING";
/// Hash map, tgid -> 1: the processes the daemon marked suspect (every connection captured).
pub const STACK_SUSPECTS_MAP: &str = "STACK_SUSPECTS";
/// Array of one `u32`: how many entries [`STACK_SUSPECTS_MAP`] holds, written by the daemon.
/// While it is 0 (a healthy host) the kernel skips the suspects lookup.
pub const STACK_SUSPECT_COUNT_MAP: &str = "STACK_SUSPECT_COUNT";
/// Per-CPU scratch record the kernel fills before copying it into the ring.
pub const STACK_SCRATCH_MAP: &str = "STACK_SCRATCH";
/// Sampling slots per CPU. Two processes whose tgids are equal modulo this count and that open
/// connections on one CPU in turn share a slot: each takeover restarts the count, so both are
/// sampled more often than every Nth, never less.
pub const STACK_SAMPLING_SLOTS: u32 = 4096;
/// Most processes marked suspect at once.
pub const STACK_SUSPECTS_CAPACITY: u32 = 4096;
/// Default size of the stack ring buffer, bytes.
pub const DEFAULT_STACK_RING_BYTES: u32 = 2 << 20;

/// Most frames a stack can hold (the kernel's own `perf_event_max_stack` default is 127).
pub const MAX_STACK_DEPTH: u32 = 127;
/// Frames captured by default.
pub const DEFAULT_STACK_DEPTH: u32 = 32;
/// Bytes of the user stack copied from `sp` up with each record ([`StackRecord::window`]):
/// what userspace needs to unwind, with the C library's call-frame information, the frames a
/// frame-pointer walk misses. Debian 12's glibc connect/accept wrappers use at most 48 bytes
/// (their cancellation path); the rest leaves room for deeper wrappers (glibc 2.41's
/// `__syscall_cancel` chain).
pub const STACK_WINDOW_BYTES: usize = 256;
/// Default sampling: every Nth connection of each process (the first one included).
pub const DEFAULT_STACK_SAMPLE: u32 = 8;

/// [`StackRecord::kind`] of a Go HTTP request's stack: captured by the uprobe at the entry of
/// `net/http.(*persistConn).roundTrip`, on the requesting goroutine, for the connection the
/// request goes out on. No connection event carries it (it is not an [`crate::EventKind`]).
pub const KIND_GO_REQUEST: u8 = 0x80;
/// Hash map, tgid -> [`GoHttpTarget`]: the Go HTTP clients whose requests the uprobe follows,
/// written by the daemon when it attaches to one.
pub const GO_HTTP_TARGETS_MAP: &str = "GO_HTTP_TARGETS";
/// Most Go processes followed at once.
pub const GO_HTTP_TARGETS_CAPACITY: u32 = 1024;

/// LRU hash map, `struct sock` address -> [`LostRequest`]: requests whose stack the probe
/// could not send (the stack ring was full, or the goroutine's stack was unreadable), latest
/// per socket. The daemon takes the entries after each stack drain and marks the connections'
/// last request unknown, so an older request is never blamed for a newer one.
pub const LOST_REQUESTS_MAP: &str = "LOST_REQUESTS";
/// Sockets remembered between two drains (the least recently written go first).
pub const LOST_REQUESTS_CAPACITY: u32 = 4096;

/// A request whose stack was lost, on one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostRequest {
    /// CLOCK_BOOTTIME, nanoseconds (as [`StackRecord::timestamp_ns`]).
    pub timestamp_ns: u64,
    /// Start time of the requesting process's thread-group leader.
    pub start_time_ns: u64,
    pub netns: u32,
    pub tgid: u32,
}

/// Where a Go itab keeps its first method on amd64: after `inter`, `_type` and the 4-byte
/// hash and its padding (`runtime.itab`, `internal/abi.ITab` since Go 1.22: the same layout).
pub const GO_ITAB_FIRST_METHOD: u64 = 24;

/// How to get from `roundTrip`'s receiver (a `*persistConn`, in RAX) to the socket's
/// descriptor in one process: the byte offsets of the chain's fields, in the order of
/// `tracer::gohttp::layout::FIELDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoHttpTarget {
    pub offsets: [u64; 8],
    /// Where `net.(*TCPConn).Close` is in the process: the first method of the itab of every
    /// `net.Conn` the chain may follow (one of another type is skipped).
    pub tcp_conn_close: u64,
}

/// Which connections' stacks the kernel captures ([`crate::Config::stack_policy`]).
pub mod policy {
    /// None.
    pub const OFF: u32 = 0;
    /// Only those of processes the daemon marked suspect.
    pub const SUSPECTS: u32 = 1;
    /// Every Nth connection of each process, and every connection of a suspect.
    pub const SAMPLED: u32 = 2;
    /// Every connection.
    pub const ALL: u32 = 3;
}

/// One CPU's sampling counter of the process that last used the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingSlot {
    pub tgid: u32,
    /// Connections `tgid` opened on this CPU since it took the slot.
    pub opened: u32,
}

/// One captured stack: the user-space return addresses at the moment `tgid` opened the
/// connection `sock` (connect) or received it (accept), innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackRecord {
    /// CLOCK_BOOTTIME, nanoseconds.
    pub timestamp_ns: u64,
    /// Kernel address of the `struct sock` (as in [`crate::ConnEvent::sock`]).
    pub sock: u64,
    /// Start time of the thread-group leader (as in [`crate::ConnEvent::start_time_ns`]).
    pub start_time_ns: u64,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    pub tgid: u32,
    /// [`crate::EventKind`] of the event it belongs to: `Connect` or `Accept`.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// How many entries of `frames` are valid.
    pub depth: u32,
    /// The thread's user registers at kernel entry (all 0 when they could not be read).
    pub regs: UserRegs,
    /// Valid bytes of `window`: [`STACK_WINDOW_BYTES`], or 0 when the read failed.
    pub window_len: u32,
    pub _pad2: u32,
    /// The user stack from `regs.sp` up.
    pub window: [u64; STACK_WINDOW_BYTES / 8],
    /// User-space instruction pointers, innermost first (`frames[0]` is where the thread
    /// entered the kernel; the rest are return addresses).
    pub frames: [u64; MAX_STACK_DEPTH as usize],
}

/// x86-64 user registers, as the kernel saved them at the syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

const _: () = assert!(size_of::<StackRecord>().is_multiple_of(8));
const _: () = assert!(size_of::<UserRegs>() == 24);

impl StackRecord {
    /// The largest record: every frame slot filled.
    pub const SIZE: usize = size_of::<StackRecord>();
    /// Everything before `frames`: a record in the ring is this plus `depth` frames.
    pub const HEADER_SIZE: usize = core::mem::offset_of!(StackRecord, frames);

    /// The record a ring entry of `bytes` holds: a header and whole frames, at most
    /// [`Self::SIZE`]; frame slots past `depth` are zero. `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<StackRecord> {
        let frames = bytes.len().checked_sub(Self::HEADER_SIZE)?;
        if bytes.len() > Self::SIZE || !frames.is_multiple_of(8) {
            return None;
        }
        let mut record = StackRecord::EMPTY;
        // SAFETY: StackRecord is plain data (any bytes are valid), `bytes` is no longer than
        // it (checked), and the copy writes from its start.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&raw mut record).cast::<u8>(),
                bytes.len(),
            );
        }
        // A record whose depth disagrees with its length is not one the kernel wrote.
        (record.depth as usize == frames / 8).then_some(record)
    }

    const EMPTY: StackRecord = StackRecord {
        timestamp_ns: 0,
        sock: 0,
        start_time_ns: 0,
        netns: 0,
        tgid: 0,
        kind: 0,
        _pad: [0; 3],
        depth: 0,
        regs: UserRegs { ip: 0, sp: 0, bp: 0 },
        window_len: 0,
        _pad2: 0,
        window: [0; STACK_WINDOW_BYTES / 8],
        frames: [0; MAX_STACK_DEPTH as usize],
    };

    /// The valid frames.
    pub fn frames(&self) -> &[u64] {
        &self.frames[..(self.depth as usize).min(self.frames.len())]
    }

    /// The valid words of the stack window (from `regs.sp` up).
    pub fn window(&self) -> &[u64] {
        &self.window[..(self.window_len as usize / 8).min(self.window.len())]
    }
}

/// Whether the frame at `bp`, whose saved frame pointer is `link`, belongs to the frame-pointer
/// chain of a thread whose stack pointer was `sp`: it lies above `sp`, within
/// [`FRAME_CHAIN_SPAN`], 8-byte aligned, and links further up (callers' frames are at higher
/// addresses) or ends the chain with 0. The kernel program walks a stack by this rule, one
/// 16-byte read per frame, and stops at the first frame that fails it: code built without frame
/// pointers (most C and C++ at -O2, Rust release builds, Debian's C library) leaves any value in
/// rbp, and the helper's walk would read on through junk until a read faulted or the depth ran
/// out. Userspace then recovers the missing callers from the stack window.
pub fn frame_links_up(sp: u64, bp: u64, link: u64) -> bool {
    bp >= sp && bp - sp < FRAME_CHAIN_SPAN && bp.is_multiple_of(8) && (link == 0 || link > bp)
}

/// How far above `sp` a frame of the chain may lie (the default main thread stack is 8 MiB).
pub const FRAME_CHAIN_SPAN: u64 = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(record: &StackRecord, depth: usize) -> &[u8] {
        // SAFETY: a prefix of a plain-data struct, read as bytes.
        unsafe {
            core::slice::from_raw_parts(
                (record as *const StackRecord).cast::<u8>(),
                StackRecord::HEADER_SIZE + depth * 8,
            )
        }
    }

    #[test]
    fn a_record_is_its_header_and_its_frames_only() {
        let mut record = StackRecord::EMPTY;
        record.tgid = 42;
        record.depth = 3;
        record.frames[..4].copy_from_slice(&[1, 2, 3, 99]);
        let read = StackRecord::from_bytes(bytes_of(&record, 3)).expect("well formed");
        assert_eq!(read.tgid, 42);
        assert_eq!(read.frames(), &[1, 2, 3]);
        // The slot past `depth` was not sent, so it reads as zero.
        assert_eq!(read.frames[3], 0);
        let full = StackRecord { depth: MAX_STACK_DEPTH, ..record };
        assert!(StackRecord::from_bytes(bytes_of(&full, MAX_STACK_DEPTH as usize)).is_some());
    }

    #[test]
    fn lengths_the_kernel_never_writes_are_refused() {
        let mut record = StackRecord::EMPTY;
        record.depth = 3;
        let bytes = bytes_of(&record, 3);
        assert!(StackRecord::from_bytes(&bytes[..StackRecord::HEADER_SIZE - 8]).is_none());
        assert!(StackRecord::from_bytes(&bytes[..bytes.len() - 4]).is_none());
        // Depth and length disagree.
        assert!(StackRecord::from_bytes(&bytes[..bytes.len() - 8]).is_none());
    }

    #[test]
    fn only_frames_of_the_threads_own_stack_that_link_upwards_are_walked() {
        let sp = 0x7ffd_0000_1000;
        // A frame just above sp that links further up, or ends the chain.
        assert!(frame_links_up(sp, sp + 0x40, sp + 0x90));
        assert!(frame_links_up(sp, sp + 0x40, 0));
        assert!(frame_links_up(sp, sp, sp + 0x10));
        // What code without frame pointers leaves in rbp: a heap address, a small integer, a
        // misaligned or far address, or a "frame" whose link goes down or loops.
        assert!(!frame_links_up(sp, 0x5555_5555_a000, 0));
        assert!(!frame_links_up(sp, 3, 0));
        assert!(!frame_links_up(sp, sp + 0x41, 0));
        assert!(!frame_links_up(sp, sp + FRAME_CHAIN_SPAN, 0));
        assert!(!frame_links_up(sp, sp - 8, sp + 0x40));
        assert!(!frame_links_up(sp, sp + 0x40, sp + 0x10));
        assert!(!frame_links_up(sp, sp + 0x40, sp + 0x40));
    }
}
