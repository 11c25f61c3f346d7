//! Opener stacks: the user-space code that opened each connection, as frames.
pub mod symbolize;
