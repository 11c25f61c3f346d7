//! opener stacks: capture decoding, symbolization
pub mod gopclntab;
