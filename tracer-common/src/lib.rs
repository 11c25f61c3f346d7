//! The ABI between the kernel programs (`tracer-ebpf`) and the daemon (`tracer`).
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel writes [`ConnEvent`] records into
//! the ring buffer and bumps per-CPU [`counters`]; userspace reads both back byte for byte.
#![no_std]

pub mod stacks;

/// Ring buffer carrying [`ConnEvent`] records.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU `u64` array of emit and drop counters, indexed by [`counters`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Hash map of sockets that reached CLOSE while still held (tracepoint mode).
pub const HELD_CLOSED_MAP: &str = "HELD_CLOSED";
/// How many such sockets can wait for their release at once.
pub const HELD_CLOSED_CAPACITY: u32 = 65_536;
/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Offset of `long ret` in the `syscalls:sys_exit_*` tracepoint record (after the 8-byte common
/// header and `int __syscall_nr` padded to 8). The tracepoint's stable user ABI, not a kernel
/// struct: the kernel programs read it there, and the loader checks it against the tracefs
/// format file before attaching.
pub const SYSCALL_EXIT_RET_OFFSET: usize = 16;

/// Names of the kernel programs: the object names each after its function, and the loader looks
/// it up by this name. The kernel crate fails to build if a function is renamed without its
/// constant, and the loader's hook table is tested against the object.
pub mod programs {
    /// `tp_btf/inet_sock_set_state` (every mode).
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    /// `tp_btf/sched_process_exit` (every mode).
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    /// `tp_btf/sched_process_exec` (every mode).
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    /// `tracepoint/syscalls/sys_exit_accept4` (every mode).
    pub const SYS_EXIT_ACCEPT4: &str = "sys_exit_accept4";
    /// `tracepoint/syscalls/sys_exit_accept` (every mode).
    pub const SYS_EXIT_ACCEPT: &str = "sys_exit_accept";
    /// `tp_btf/tcp_destroy_sock` (tracepoint mode).
    pub const TCP_DESTROY_SOCK: &str = "tcp_destroy_sock";
    /// fentry `tcp_connect` (fentry mode).
    pub const TCP_CONNECT_FENTRY: &str = "tcp_connect_fentry";
    /// fentry `tcp_close` (fentry mode).
    pub const TCP_CLOSE_FENTRY: &str = "tcp_close_fentry";
    /// fexit `inet_csk_accept`, Linux 6.10+ signature (fentry mode).
    pub const INET_CSK_ACCEPT_FEXIT: &str = "inet_csk_accept_fexit";
    /// fexit `inet_csk_accept`, signature before 6.10 (fentry mode).
    pub const INET_CSK_ACCEPT_FEXIT_PRE_6_10: &str = "inet_csk_accept_fexit_pre_6_10";
    /// kprobe `tcp_connect` (kprobe mode).
    pub const TCP_CONNECT_KPROBE: &str = "tcp_connect_kprobe";
    /// kprobe `tcp_close` (kprobe mode).
    pub const TCP_CLOSE_KPROBE: &str = "tcp_close_kprobe";
    /// kretprobe `inet_csk_accept` (kprobe mode).
    pub const INET_CSK_ACCEPT_KRETPROBE: &str = "inet_csk_accept_kretprobe";
    /// `iter/task`: one [`crate::TaskCgroup`] per process (every mode, loaded apart from the
    /// hooks: a kernel that refuses it only loses the cgroup ids of scanned processes).
    pub const TASK_CGROUPS: &str = "task_cgroups";
    /// uprobe at the entry of Go's `net/http.(*persistConn).roundTrip`, attached per Go
    /// process on demand: the requesting goroutine's stack and the request's connection.
    pub const GO_ROUND_TRIP: &str = "go_round_trip";
}

/// What the `task_cgroups` iterator writes for each thread-group leader: its pid (in the
/// initial pid namespace, as events name it), start time (CLOCK_BOOTTIME ns, as events carry
/// it) and the id of its cgroup v2 (`kernfs_node.id`, what `bpf_get_current_cgroup_id()`
/// returns in its context: the inode number of the cgroup's directory). Native byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCgroup {
    pub tgid: u32,
    pub _pad: u32,
    pub start_time_ns: u64,
    pub cgroup_id: u64,
}

const _: () = assert!(core::mem::size_of::<TaskCgroup>() == 24);

/// `a == b` where a constant is needed: the kernel crate checks the names of its programs, maps
/// and globals against this crate's constants at build time.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Ring buffer space a record of `len` bytes takes: the kernel's 8-byte header plus the record,
/// rounded up to 8 bytes.
pub const fn ring_record_bytes(len: usize) -> u64 {
    (8 + len as u64 + 7) & !7
}

/// What happened to a socket. The discriminants are the wire values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `connect()` started (CLOSE -> SYN_SENT): in the connecting process, which becomes the owner.
    /// The local port may still be 0.
    Connect = 0,
    /// The handshake completed (-> ESTABLISHED). Runs in softirq: names no process.
    Established = 1,
    /// An outbound connect ended before ESTABLISHED (refused, timed out, unreachable).
    ConnectFailed = 2,
    /// Any other state change of a socket still attached to a file (not orphaned).
    StateChange = 3,
    /// `accept()`/`accept4()` returned this socket to a process, which becomes the owner.
    Accept = 4,
    /// The last reference to the socket's file went away (close of the last fd, process exit).
    Release = 5,
    /// The last thread of a process exited (its fds are closed right after: releases follow).
    /// `sock` and `tuple` are zero.
    ProcessExit = 6,
    /// A process called execve(): `comm` is the new command name. `sock` and `tuple` are zero.
    ProcessExec = 7,
}

impl EventKind {
    pub const COUNT: usize = 8;
    pub const ALL: [EventKind; Self::COUNT] = [
        EventKind::Connect,
        EventKind::Established,
        EventKind::ConnectFailed,
        EventKind::StateChange,
        EventKind::Accept,
        EventKind::Release,
        EventKind::ProcessExit,
        EventKind::ProcessExec,
    ];

    pub fn from_u8(raw: u8) -> Option<Self> {
        Self::ALL.get(raw as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Established => "established",
            EventKind::ConnectFailed => "connect_failed",
            EventKind::StateChange => "state_change",
            EventKind::Accept => "accept",
            EventKind::Release => "release",
            EventKind::ProcessExit => "process_exit",
            EventKind::ProcessExec => "process_exec",
        }
    }
}

/// Bits of [`ConnEvent::flags`].
pub mod flags {
    /// The event ran in the context of the process it names: `tgid`, `tid`, `comm`,
    /// `start_time_ns` and `cgroup_id` are valid. Without it they are zero.
    pub const OWNER_CONTEXT: u8 = 1 << 0;
    /// The socket was created by `accept()` (passive open) rather than `connect()`.
    pub const INBOUND: u8 = 1 << 1;
    /// Connect and accept only: the opener-stacks policy wanted this connection's stack, so a
    /// [`crate::stacks::StackRecord`] follows in the stack ring unless it was lost (counted).
    /// Without it the connection was not sampled.
    pub const STACK_WANTED: u8 = 1 << 2;
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h); stable kernel ABI.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Socket addresses as the kernel holds them, from the socket's own point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// IPv4 in the first 4 bytes, or IPv6 (possibly v4-mapped), network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

/// One ring buffer record. Fixed size, no pointers that userspace dereferences. Fields are laid
/// out at their natural alignment (`comm` on 8 bytes) so that the kernel programs fill them with
/// whole-word stores.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    /// CLOCK_BOOTTIME, nanoseconds.
    pub timestamp_ns: u64,
    /// Kernel address of the `struct sock`: unique among live sockets. Userspace adds a
    /// generation so that a reused address never merges two sockets.
    pub sock: u64,
    /// Start time of the owning thread-group leader (CLOCK_BOOTTIME ns); with `tgid` it keys a
    /// process so that a reused pid is never merged with an old one.
    pub start_time_ns: u64,
    pub cgroup_id: u64,
    /// Command name of the thread-group leader, up to the first NUL (the bytes after it are
    /// undefined: older kernels do not clear them on rename).
    pub comm: [u8; 16],
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub tgid: u32,
    pub tid: u32,
    /// [`EventKind`] as `u8`.
    pub kind: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// [`tcp_state`] values; equal for events that are not state changes.
    pub old_state: u8,
    pub new_state: u8,
    pub tuple: Tuple,
    /// [`EventKind::ConnectFailed`] only: the errno the kernel failed the connect with (the
    /// socket's `sk_err`: ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...), 0 when it set none.
    /// Zero for every other kind.
    pub error: u8,
    /// Explicit so that no byte of a record is left uninitialised.
    pub _pad: u8,
    /// [`EventKind::Release`] only: bytes received from the peer until the release (the
    /// kernel's `tcpi_bytes_received`, a FIN counting as one). Zero for every other kind.
    pub bytes_received: u64,
    /// [`EventKind::Release`] only: bytes the peer acknowledged until the release
    /// (`tcpi_bytes_acked`, which counts the SYN too, as `ss` shows it). Zero for every other
    /// kind.
    pub bytes_acked: u64,
    /// [`EventKind::StateChange`] into CLOSE only: the socket's inode (`socket:[INODE]` in
    /// /proc/PID/fd), 0 when no process holds it. Such a socket has left sock_diag's view;
    /// the reconcile finds its holders by this number. Zero for every other kind.
    pub socket_inode: u64,
}

// The kernel side writes `comm` as two u64 and the addresses as u32 words.
const _: () = assert!(core::mem::offset_of!(ConnEvent, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ConnEvent, tuple) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(ConnEvent, bytes_received) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ConnEvent, socket_inode) % 8 == 0);

impl ConnEvent {
    pub const SIZE: usize = core::mem::size_of::<ConnEvent>();

    pub fn kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.kind)
    }

    pub fn in_owner_context(&self) -> bool {
        self.flags & flags::OWNER_CONTEXT != 0
    }

    pub fn is_inbound(&self) -> bool {
        self.flags & flags::INBOUND != 0
    }
}

/// Slots of the per-CPU counters array. Per kind: how many events a probe tried to emit and how
/// many it lost at the ring buffer, so that userspace can prove `emitted = received + lost`.
pub mod counters {
    use super::EventKind;

    pub const fn emitted(kind: EventKind) -> u32 {
        kind as u32
    }
    pub const fn lost_ringbuf(kind: EventKind) -> u32 {
        EventKind::COUNT as u32 + kind as u32
    }
    /// accept() returned an fd that did not resolve to a TCP socket the probes could read.
    pub const ACCEPT_UNRESOLVED: u32 = 2 * EventKind::COUNT as u32;
    /// Test-only fault injection dropped a release on purpose (see `Config::drop_every_nth_release`).
    pub const RELEASE_DROPPED_BY_FAULT_INJECTION: u32 = ACCEPT_UNRESOLVED + 1;
    /// Tracepoint mode: a socket that reached CLOSE while held could not be remembered (map
    /// full), so its release at close will be missed.
    pub const HELD_CLOSED_MAP_FULL: u32 = RELEASE_DROPPED_BY_FAULT_INJECTION + 1;
    /// Opener stacks: a wanted stack found no room in the stack ring (dropped; the event was
    /// not).
    pub const STACK_LOST_RINGBUF: u32 = HELD_CLOSED_MAP_FULL + 1;
    /// Opener stacks: the kernel could not walk the user stack (`bpf_get_stack` failed).
    pub const STACK_UNWIND_FAILED: u32 = STACK_LOST_RINGBUF + 1;
    /// Opener stacks: stack records written to the stack ring.
    pub const STACK_CAPTURED: u32 = STACK_UNWIND_FAILED + 1;
    /// Opener stacks: the user registers or the stack window could not be read (the
    /// frame-pointer stack was still sent; the C library's caller cannot be recovered).
    pub const STACK_WINDOW_FAILED: u32 = STACK_CAPTURED + 1;
    /// Runs of `inet_sock_set_state`, counted as it starts: beside tracefs's count of the
    /// tracepoint's hits, the runs the kernel neither made nor counted as skipped.
    pub const STATE_CHANGE_RUNS: u32 = STACK_WINDOW_FAILED + 1;
    /// Test-only fault injection returned from `inet_sock_set_state` before counting its run
    /// (see `Config::fault_skip_every_nth_state_change`).
    pub const STATE_CHANGE_SKIPPED_BY_FAULT_INJECTION: u32 = STATE_CHANGE_RUNS + 1;
    /// Total number of slots.
    pub const SLOTS: u32 = STATE_CHANGE_SKIPPED_BY_FAULT_INJECTION + 1;
}

/// Settings the loader writes into the kernel programs' read-only data before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Test-only: drop every Nth release event in the kernel (0 = never), to prove that the test
    /// matrix catches wrong counts.
    pub drop_every_nth_release: u32,
    /// 1 in tracepoint mode: `inet_sock_set_state` itself reports connect starts and releases.
    /// 0 in fentry/kprobe modes, where `tcp_connect` and `tcp_close` probes report them.
    pub lifecycle_from_state_changes: u32,
    /// Wake the reader only when the unread data crosses a multiple of this many bytes (0: the
    /// kernel's default, whenever a record arrives while the reader has caught up). In between,
    /// the daemon's drain timer collects the records: one wakeup per batch instead of per event.
    pub wakeup_threshold_bytes: u32,
    /// Opener stacks: a [`stacks::policy`] value.
    pub stack_policy: u32,
    /// Opener stacks, `sampled` policy: every Nth connection of each process (at least 1).
    pub stack_sample_every: u32,
    /// Opener stacks: frames to capture, 1 to [`stacks::MAX_STACK_DEPTH`].
    pub stack_depth: u32,
    /// 1 in kprobe mode: connect's stack is captured by `inet_sock_set_state` (CLOSE ->
    /// SYN_SENT, inside connect() too), because the `tcp_connect` kprobe's own stack frame
    /// leaves no room for the capture; its event then carries no `STACK_WANTED` flag.
    pub stack_at_state_change: u32,
    /// Test-only: 1 makes the stack capture code read through a plain number, which the
    /// verifier refuses; it is checked only where a stack is captured, so loading with the
    /// policy `off` (capture code unreachable, pruned by the verifier) still succeeds. Proves
    /// the daemon's fallback when the kernel refuses the capture.
    pub fault_refuse_stacks: u32,
    /// Test-only: every Nth run of `inet_sock_set_state` returns before it counts itself (0 =
    /// never), as a run the kernel never made would: proves the daemon counts such runs from
    /// tracefs.
    pub fault_skip_every_nth_state_change: u32,
}

/// Name of the global holding [`Config`] in the kernel object.
pub const CONFIG_GLOBAL: &str = "TRACER_CONFIG";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with no padding-dependent invariants; any byte pattern is valid.
    unsafe impl aya::Pod for super::ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::stacks::StackRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::stacks::GoHttpTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::stacks::LostRequest {}
}
