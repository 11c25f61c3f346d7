//! Errors a user can meet, each worded to name the fix. Each part of the library defines its
//! own (next to the code that produces them); this one composes them for the daemon.
use crate::probes::ProbeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Checking the kernel, loading or attaching the programs, reading their maps.
    #[error(transparent)]
    Probes(#[from] ProbeError),

    /// Setting up the reader of the event ring buffer (the mmap of its positions, or its
    /// registration with the runtime's epoll).
    #[error("cannot start reading the event ring buffer (mmap or epoll registration): {0}")]
    EventRing(#[source] std::io::Error),

    /// Starting the opener-stack symbolizer (its thread).
    #[error("cannot start the opener-stack symbolizer: {0}")]
    Stacks(#[from] crate::stacks::symbolize::SymbolizeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
