//! tracer: a system-wide TCP connection lifecycle tracer.
//!
//! The stages, in the order an event flows through them:
//! - [`probes`]: load and attach the kernel programs (`tracer-ebpf`), read their counters;
//! - [`pipeline`]: drain the ring buffer in batches;
//! - [`events`]: decode records and render them;
//! - [`table`]: the connection table and per-process aggregates (pure, clock injected);
//! - [`daemon`]: wire the stages together and run until a signal;
//! - [`cli`]: the `tracer` command line on top of the library.
pub mod api;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod detect;
pub mod error;
pub mod events;
pub mod export;
pub mod logging;
pub mod pipeline;
pub mod probes;
pub mod scan;
pub mod table;
pub mod webhook;

pub use error::{Error, Result};
