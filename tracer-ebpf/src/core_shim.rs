//! Declarations of the CO-RE accessors in `core/shim.c`. Every kernel struct is read there,
//! through relocations, never through offsets compiled into Rust.
//!
//! A socket comes in two kinds, by where the program got it: [`BtfSock`], the BTF-typed
//! argument of a tp_btf, fentry or fexit program, is read with plain loads (the verifier makes
//! them fault-safe); [`AnySock`], from a kprobe's registers or a walk of the fd table, only
//! through `bpf_probe_read_kernel`, so it copies what events need in one read when it is made.
//! The same logic runs on both through [`Sock`].
use core::{ffi::c_void, mem::MaybeUninit};

use tracer_common::Tuple;

/// A kernel `struct sock *`, only ever passed back to the shim.
pub type SockPtr = *const c_void;

unsafe extern "C" {
    pub fn tracer_sk_orphaned(sk: SockPtr) -> i32;
    pub fn tracer_sk_file_released(sk: SockPtr) -> i32;
    pub fn tracer_sk_summary(sk: SockPtr, summary: *mut SockSummary);
    pub fn tracer_sk_is_tcp_btf(sk: SockPtr) -> i32;
    pub fn tracer_sk_orphaned_btf(sk: SockPtr) -> i32;
    pub fn tracer_sk_file_released_btf(sk: SockPtr) -> i32;
    pub fn tracer_sk_state_btf(sk: SockPtr) -> u8;
    pub fn tracer_sk_has_peer_btf(sk: SockPtr) -> i32;
    pub fn tracer_sk_netns_btf(sk: SockPtr) -> u32;
    pub fn tracer_sk_tuple_btf(sk: SockPtr, tuple: *mut Tuple);
    pub fn tracer_fd_sock(fd: u32) -> SockPtr;
    pub fn tracer_leader_identity(start_time: *mut u64, comm: *mut u8);
    pub fn tracer_current_group_dead() -> i32;
}

/// The socket reads every probe needs, from the shim (directly, or from a copy it made).
pub trait Sock: Copy {
    fn ptr(self) -> SockPtr;
    fn is_null(self) -> bool {
        self.ptr().is_null()
    }
    /// An AF_INET/AF_INET6 TCP socket.
    fn is_tcp(self) -> bool;
    /// SOCK_DEAD: tcp_close() orphaned it.
    fn orphaned(self) -> bool;
    /// Its file dropped the last reference: we are inside the release.
    fn file_released(self) -> bool;
    fn state(self) -> u8;
    /// It ever had a peer (a bound-only socket has none).
    fn has_peer(self) -> bool;
    fn netns(self) -> u32;
    /// # Safety
    /// `tuple` must be valid for writes.
    unsafe fn tuple(self, tuple: *mut Tuple);
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

impl Sock for AnySock {
    #[inline(always)]
    fn ptr(self) -> SockPtr {
        self.ptr
    }
    #[inline(always)]
    fn is_tcp(self) -> bool {
        self.summary.is_tcp != 0
    }
    // SAFETY (the two calls below): the shim reads through the pointer with probe reads only.
    #[inline(always)]
    fn orphaned(self) -> bool {
        unsafe { tracer_sk_orphaned(self.ptr) != 0 }
    }
    #[inline(always)]
    fn file_released(self) -> bool {
        unsafe { tracer_sk_file_released(self.ptr) != 0 }
    }
    #[inline(always)]
    fn state(self) -> u8 {
        self.summary.state
    }
    #[inline(always)]
    fn has_peer(self) -> bool {
        self.summary.tuple.remote_port != 0
    }
    #[inline(always)]
    fn netns(self) -> u32 {
        self.summary.netns
    }
    #[inline(always)]
    unsafe fn tuple(self, tuple: *mut Tuple) {
        // SAFETY: guaranteed by the caller.
        unsafe { tuple.write(self.summary.tuple) }
    }
}

macro_rules! forward {
    ($ty:ty, $is_tcp:ident, $orphaned:ident, $released:ident, $state:ident, $peer:ident, $netns:ident, $tuple:ident) => {
        impl Sock for $ty {
            #[inline(always)]
            fn ptr(self) -> SockPtr {
                self.0
            }
            // SAFETY (every call below): the shim only reads through the pointer, in the way
            // the verifier allows for this kind of socket.
            #[inline(always)]
            fn is_tcp(self) -> bool {
                unsafe { $is_tcp(self.0) != 0 }
            }
            #[inline(always)]
            fn orphaned(self) -> bool {
                unsafe { $orphaned(self.0) != 0 }
            }
            #[inline(always)]
            fn file_released(self) -> bool {
                unsafe { $released(self.0) != 0 }
            }
            #[inline(always)]
            fn state(self) -> u8 {
                unsafe { $state(self.0) }
            }
            #[inline(always)]
            fn has_peer(self) -> bool {
                unsafe { $peer(self.0) != 0 }
            }
            #[inline(always)]
            fn netns(self) -> u32 {
                unsafe { $netns(self.0) }
            }
            #[inline(always)]
            unsafe fn tuple(self, tuple: *mut Tuple) {
                unsafe { $tuple(self.0, tuple) }
            }
        }
    };
}

forward!(
    BtfSock,
    tracer_sk_is_tcp_btf,
    tracer_sk_orphaned_btf,
    tracer_sk_file_released_btf,
    tracer_sk_state_btf,
    tracer_sk_has_peer_btf,
    tracer_sk_netns_btf,
    tracer_sk_tuple_btf
);
