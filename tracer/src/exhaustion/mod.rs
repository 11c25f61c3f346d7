//! Exhaustion: the limits a slow leak runs into before "the count grows" is obvious (pure logic,
//! clock injected; the daemon feeds it in daemon/exhaustion.rs, docs/leak-detection.md).
//! - [`closers`]: TIME_WAIT blamed on the process that closed first;
//! - [`ports`]: ephemeral ports in use per destination against the namespace's port range;
//! - [`fds`]: descriptors in use against the soft RLIMIT_NOFILE, and when growth reaches it.
pub mod closers;
pub mod fds;
pub mod ports;

pub use closers::Closers;
pub use fds::{FdStatus, FdTracker};
pub use ports::{Destination, PortHold, port_pressure};
