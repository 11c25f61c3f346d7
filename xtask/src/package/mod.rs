//! Packaging tasks: `cargo xtask deb` (the Debian package, with cargo-deb) and
//! `cargo xtask image` (the container image), and the checks of what they and the other
//! deployment files (`deploy/`) produce.
pub mod check;
pub mod deb;
pub mod image;
mod rootfs;
pub mod service_vm;
mod tools;
