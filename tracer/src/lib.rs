//! tracer: a system-wide TCP connection lifecycle tracer, as a library. The `tracer` binary
//! (`src/main.rs`, `src/cli/`) is a thin command line over it; nothing here uses clap.
//!
//! The stages, in the order an event flows through them:
//! - [`probes`]: load and attach the kernel programs (`tracer-ebpf`) per probe mode, read
//!   their counters;
//! - [`pipeline`]: drain the ring buffer in batches, count what was received and lost;
//! - [`events`]: decode records and render them;
//! - [`table`]: the connection table and per-process aggregates (pure, clock injected), and
//!   its reconcile with the kernel's view;
//! - [`ground_truth`]: that view: sock_diag in every network namespace, holders from /proc;
//! - [`health`]: pool health per connection and per process (idle, unread data) from the
//!   kernel's `tcp_info` and queues (pure, clock injected);
//! - [`detect`]: the leak rules over per-process samples (pure, clock injected);
//! - [`exhaustion`]: TIME_WAIT blamed on its closer, port pressure per destination, descriptors
//!   against their limit (pure, clock injected);
//! - outputs: [`api`] (answers over the Unix socket, for the CLI), [`export`] (Prometheus
//!   metrics, alert webhook), [`logging`] (the daemon's log);
//! - [`containers`]: the container, pod and namespace of each process, from its cgroup id;
//! - [`stacks`]: opener stacks: the user-space addresses the kernel captured, as functions,
//!   files and lines (blazesym; Go's pclntab for stripped Go binaries), also after the process
//!   exited;
//! - [`gohttp`]: Go `net/http` clients: build info, the object chain from a request to its
//!   socket's descriptor and its offsets (DWARF or per-version tables), probed functions;
//! - [`daemon`]: wires the stages together and runs until a signal.
//!
//! Shared by several stages: [`clock`] (the injected clock), [`error`] (errors a user can meet),
//! `names` (enums whose variants are words users type).
pub mod api;
pub mod clock;
pub mod config_file;
pub mod containers;
pub mod daemon;
pub mod detect;
pub mod duration;
pub mod error;
pub mod events;
pub mod exhaustion;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod gohttp;
pub mod ground_truth;
pub mod health;
pub mod logging;
pub mod names;
pub mod pipeline;
pub mod privileges;
pub mod privsep;
pub mod probes;
pub mod slots;
pub mod stacks;
pub mod table;
#[cfg(test)]
mod test_support;
pub mod trace;

pub use error::{Error, Result};
