//! The per-namespace sysctls the exhaustion rules need (docs/leak-detection.md): the ephemeral
//! port range, whether TIME_WAIT ports can be reused, and how many TIME_WAIT sockets the
//! namespace may hold. `/proc/sys/net` shows the namespace of the task that opens it, so each
//! namespace is read from a helper thread that entered it, as the sock_diag scan does.
use std::{io, os::fd::AsRawFd};

use super::Namespace;

/// The kernel's defaults, used for a namespace whose files cannot be read.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);
pub const DEFAULT_TW_REUSE: u8 = 2;
pub const DEFAULT_MAX_TW_BUCKETS: u64 = 262_144;

/// One namespace's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsSysctls {
    /// `net.ipv4.ip_local_port_range`, both ends included.
    pub port_range: (u16, u16),
    /// `net.ipv4.tcp_tw_reuse`: 0 never, 1 always, 2 loopback only.
    pub tw_reuse: u8,
    /// `net.ipv4.tcp_max_tw_buckets`.
    pub max_tw_buckets: u64,
}

impl Default for NetnsSysctls {
    fn default() -> Self {
        Self {
            port_range: DEFAULT_PORT_RANGE,
            tw_reuse: DEFAULT_TW_REUSE,
            max_tw_buckets: DEFAULT_MAX_TW_BUCKETS,
        }
    }
}

impl NetnsSysctls {
    /// Ephemeral ports a connect() can pick from.
    pub fn ports_available(&self) -> u32 {
        let (lo, hi) = self.port_range;
        if hi < lo { 0 } else { u32::from(hi - lo) + 1 }
    }

    pub fn is_ephemeral(&self, port: u16) -> bool {
        (self.port_range.0..=self.port_range.1).contains(&port)
    }

    /// Whether a connect() to this destination may take over a TIME_WAIT socket's port
    /// (`tcp_tw_reuse` 2 applies to loopback only: either address loopback).
    pub fn reuses_time_wait(&self, local: std::net::IpAddr, remote: std::net::IpAddr) -> bool {
        match self.tw_reuse {
            0 => false,
            2 => is_loopback(local) || is_loopback(remote),
            _ => true,
        }
    }
}

fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Parses `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) => Some((lo, hi)),
        _ => None,
    }
}

/// Reads the values of `ns` from a thread that entered it; a file that cannot be read keeps
/// the kernel's default (older kernels lack none of these, but a namespace may vanish).
pub fn read_namespace(ns: &Namespace) -> io::Result<NetnsSysctls> {
    let ns = ns.clone();
    std::thread::spawn(move || -> io::Result<NetnsSysctls> {
        let file = std::fs::File::open(&ns.path)?;
        // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(read_current())
    })
    .join()
    .map_err(|_| io::Error::other("sysctl thread panicked"))?
}

/// The values of the calling thread's namespace.
pub fn read_current() -> NetnsSysctls {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    let defaults = NetnsSysctls::default();
    NetnsSysctls {
        port_range: read("ip_local_port_range")
            .and_then(|t| parse_port_range(&t))
            .unwrap_or(defaults.port_range),
        tw_reuse: read("tcp_tw_reuse")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(defaults.tw_reuse),
        max_tw_buckets: read("tcp_max_tw_buckets")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(defaults.max_tw_buckets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_port_range_and_sizes_it() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1 2 3"), None);
        let s = NetnsSysctls { port_range: (40000, 40099), ..Default::default() };
        assert_eq!(s.ports_available(), 100);
        assert!(s.is_ephemeral(40099) && !s.is_ephemeral(40100));
    }

    #[test]
    fn tw_reuse_two_means_loopback_only() {
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let far: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let two = NetnsSysctls { tw_reuse: 2, ..Default::default() };
        assert!(two.reuses_time_wait(lo, lo));
        assert!(!two.reuses_time_wait(far, far));
        let zero = NetnsSysctls { tw_reuse: 0, ..Default::default() };
        assert!(!zero.reuses_time_wait(lo, lo));
    }

    #[test]
    fn reads_this_namespace_as_proc_shows_it() {
        let s = read_current();
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        assert_eq!(Some(s.port_range), parse_port_range(&text));
    }
}
