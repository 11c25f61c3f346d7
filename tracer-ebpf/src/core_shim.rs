//! Declarations of the CO-RE accessors in `core/shim.c`. Every kernel struct is read there,
//! through relocations, never through offsets compiled into Rust.
//!
//! A socket comes in two kinds, by where the program got it: [`BtfSock`], the BTF-typed
//! argument of a tp_btf, fentry or fexit program, is read with plain loads (the verifier makes
//! them fault-safe); [`AnySock`], from a kprobe's registers or a walk of the fd table, only
//! through `bpf_probe_read_kernel`, so it copies what events need in one read when it is made.
//! The same logic runs on both through [`Sock`]. The shim defines each socket accessor once and
//! expands it into both read styles (`tracer_sk_<name>` with probe reads, `tracer_sk_<name>_btf`
//! with plain loads); [`sock_reads!`] declares and wraps both from one list.
use core::{ffi::c_void, mem::MaybeUninit};

use tracer_common::Tuple;

/// A kernel `struct sock *`, only ever passed back to the shim.
pub type SockPtr = *const c_void;

unsafe extern "C" {
    pub fn tracer_sk_summary(sk: SockPtr, summary: *mut SockSummary);
    pub fn tracer_fd_sock(fd: u32) -> SockPtr;
    pub fn tracer_leader_identity(start_time: *mut u64, comm: *mut u8);
    pub fn tracer_current_group_dead() -> i32;
    pub fn tracer_user_regs(out: *mut tracer_common::stacks::UserRegs) -> i32;
    pub fn tracer_task_cgroup_iter(ctx: *mut c_void) -> i32;
}

/// The BTF-typed socket argument of a tp_btf, fentry or fexit program.
#[derive(Clone, Copy)]
pub struct BtfSock(pub SockPtr);

/// Any other socket pointer (kprobe registers, the fd table), with the fields events need
/// copied out once.
#[derive(Clone, Copy)]
pub struct AnySock {
    ptr: SockPtr,
    summary: SockSummary,
}

/// Mirrors `struct tracer_sock_summary` in shim.c, which asserts the same sizes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockSummary {
    pub tuple: Tuple,
    pub state: u8,
    pub is_tcp: u8,
    pub netns: u32,
}

const _: () = assert!(size_of::<Tuple>() == 38 && size_of::<SockSummary>() == 44);

impl AnySock {
    /// Copies the socket's event fields (one probe read); a null pointer reads as a non-TCP
    /// socket.
    #[inline(always)]
    pub fn read(ptr: SockPtr) -> Self {
        let mut summary = MaybeUninit::<SockSummary>::uninit();
        if ptr.is_null() {
            return Self {
                ptr,
                summary: SockSummary { tuple: Tuple::default(), state: 0, is_tcp: 0, netns: 0 },
            };
        }
        // SAFETY: the shim writes every field of the summary (no padding) and only reads
        // through `ptr` with probe reads.
        unsafe {
            tracer_sk_summary(ptr, summary.as_mut_ptr());
            Self { ptr, summary: summary.assume_init() }
        }
    }
}

/// A value as a shim accessor returns it in C (`int` for a truth value).
pub trait FromShim {
    type C;
    fn from_shim(raw: Self::C) -> Self;
}

impl FromShim for bool {
    type C = i32;
    #[inline(always)]
    fn from_shim(raw: i32) -> bool {
        raw != 0
    }
}

impl FromShim for u8 {
    type C = u8;
    #[inline(always)]
    fn from_shim(raw: u8) -> u8 {
        raw
    }
}

impl FromShim for u64 {
    type C = u64;
    #[inline(always)]
    fn from_shim(raw: u64) -> u64 {
        raw
    }
}

impl FromShim for u16 {
    type C = u16;
    #[inline(always)]
    fn from_shim(raw: u16) -> u16 {
        raw
    }
}

impl FromShim for u32 {
    type C = u32;
    #[inline(always)]
    fn from_shim(raw: u32) -> u32 {
        raw
    }
}

/// The socket reads, one row each: the [`Sock`] method (the shim accessor of the same name
/// behind it) and, for what [`AnySock`] copies when it is made, where the copy keeps it.
/// Expands to the trait, the extern declarations of both read styles (the probe-read one only
/// for rows without a copy: nothing else calls it), and the impls for [`BtfSock`] (plain loads
/// through the shim, every row) and [`AnySock`] (its copy, else probe reads through the shim).
/// `tuple`, which writes through a pointer, is the one read outside the rows.
macro_rules! sock_reads {
    ($(
        $(#[$doc:meta])*
        fn $name:ident() -> $ret:ty $(, copied |$copy:ident| $from_copy:expr)?;
    )*) => {
        /// The socket reads every probe needs, from the shim (directly, or from a copy it made).
        pub trait Sock: Copy {
            fn ptr(self) -> SockPtr;
            fn is_null(self) -> bool {
                self.ptr().is_null()
            }
            $( $(#[$doc])* fn $name(self) -> $ret; )*
            /// # Safety
            /// `tuple` must be valid for writes.
            unsafe fn tuple(self, tuple: *mut Tuple);
        }

        /// Plain loads through a BTF-typed pointer (`tracer_sk_<name>_btf`).
        mod direct {
            use super::*;
            unsafe extern "C" {
                $(
                    #[link_name = concat!("tracer_sk_", stringify!($name), "_btf")]
                    pub fn $name(sk: SockPtr) -> <$ret as FromShim>::C;
                )*
                #[link_name = "tracer_sk_tuple_btf"]
                pub fn tuple(sk: SockPtr, tuple: *mut Tuple);
            }
        }

        /// Probe reads through any socket pointer (`tracer_sk_<name>`).
        mod probe {
            use super::*;
            unsafe extern "C" {
                $( sock_reads!(@probe_decl $name $ret [$($copy)?]); )*
            }
        }

        impl Sock for BtfSock {
            #[inline(always)]
            fn ptr(self) -> SockPtr {
                self.0
            }
            $(
                #[inline(always)]
                fn $name(self) -> $ret {
                    // SAFETY: the shim only loads through the BTF-typed pointer, which the
                    // verifier allows (and makes fault-safe) in the programs that have one.
                    <$ret>::from_shim(unsafe { direct::$name(self.0) })
                }
            )*
            #[inline(always)]
            unsafe fn tuple(self, tuple: *mut Tuple) {
                // SAFETY: as above; `tuple` is valid for writes (the caller's contract).
                unsafe { direct::tuple(self.0, tuple) }
            }
        }

        impl Sock for AnySock {
            #[inline(always)]
            fn ptr(self) -> SockPtr {
                self.ptr
            }
            $(
                #[inline(always)]
                fn $name(self) -> $ret {
                    sock_reads!(@any self $name $ret [$(|$copy| $from_copy)?])
                }
            )*
            #[inline(always)]
            unsafe fn tuple(self, tuple: *mut Tuple) {
                // SAFETY: guaranteed by the caller.
                unsafe { tuple.write(self.summary.tuple) }
            }
        }
    };
    (@probe_decl $name:ident $ret:ty []) => {
        #[link_name = concat!("tracer_sk_", stringify!($name))]
        pub fn $name(sk: SockPtr) -> <$ret as FromShim>::C;
    };
    (@probe_decl $name:ident $ret:ty [$copy:ident]) => {};
    (@any $sock:ident $name:ident $ret:ty []) => {
        // SAFETY: the shim reads through the pointer with probe reads only.
        <$ret>::from_shim(unsafe { probe::$name($sock.ptr) })
    };
    (@any $sock:ident $name:ident $ret:ty [|$copy:ident| $from_copy:expr]) => {{
        let $copy = &$sock.summary;
        $from_copy
    }};
}

sock_reads! {
    /// An AF_INET/AF_INET6 TCP socket.
    fn is_tcp() -> bool, copied |s| s.is_tcp != 0;
    /// SOCK_DEAD: tcp_close() orphaned it.
    fn orphaned() -> bool;
    /// Its file dropped the last reference: we are inside the release.
    fn file_released() -> bool;
    /// A process holds it (socket() made it, or accept() handed it out): a child still queued
    /// on its listener, or one that lost the race to be created, does not.
    fn held() -> bool;
    fn state() -> u8, copied |s| s.state;
    /// It ever had a peer (a bound-only socket has none).
    fn has_peer() -> bool, copied |s| s.tuple.remote_port != 0;
    fn netns() -> u32, copied |s| s.netns;
    /// The bound port (host order), from where the kernel keeps it after giving the port back:
    /// the tuple's local port reads 0 for a socket that reached CLOSE while still held.
    fn source_port() -> u16;
    /// `sk_err`: the errno the kernel failed the socket with, 0 when none.
    fn error() -> u32;
    /// A TCP socket's `bytes_received` (`tcpi_bytes_received`).
    fn bytes_received() -> u64;
    /// A TCP socket's `bytes_acked` (`tcpi_bytes_acked`).
    fn bytes_acked() -> u64;
    /// Its file's inode number (`socket:[INODE]` in /proc/PID/fd); 0 when no process holds it.
    fn socket_inode() -> u64;
}
