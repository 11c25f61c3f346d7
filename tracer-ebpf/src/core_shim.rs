//! Declarations of the CO-RE accessors in `core/shim.c`. Every kernel struct is read there,
//! through relocations, never through offsets compiled into Rust.
use core::ffi::c_void;

use tracer_common::Tuple;

/// A kernel `struct sock *`, only ever passed back to the shim.
pub type SockPtr = *const c_void;

unsafe extern "C" {
    pub fn tracer_sk_is_tcp(sk: SockPtr) -> i32;
    pub fn tracer_sk_orphaned(sk: SockPtr) -> i32;
    pub fn tracer_sk_file_released(sk: SockPtr) -> i32;
    pub fn tracer_sk_state(sk: SockPtr) -> u8;
    pub fn tracer_sk_has_peer(sk: SockPtr) -> i32;
    pub fn tracer_sk_netns(sk: SockPtr) -> u32;
    pub fn tracer_sk_tuple(sk: SockPtr, tuple: *mut Tuple);
    pub fn tracer_fd_sock(fd: u32) -> SockPtr;
    pub fn tracer_leader_start_time() -> u64;
    pub fn tracer_leader_comm(comm: *mut u8);
    pub fn tracer_current_group_dead() -> i32;
}
