//! The daemon's local API: newline-delimited JSON over a Unix socket (mode 0600).
//!
//! One request line, one response line, both carrying [`protocol::API_VERSION`]. The CLI
//! refuses a daemon that speaks another version. `socat - UNIX:/run/tracer/tracer.sock` and
//! `{"version":4,"request":{"status":{}}}` are enough to talk to it by hand.
pub mod answers;
pub mod client;
pub mod protocol;
pub mod schema;
pub mod server;

pub const DEFAULT_SOCKET: &str = "/run/tracer/tracer.sock";
