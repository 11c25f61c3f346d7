//! The few fields of the kernel's `struct tcp_info` (include/uapi/linux/tcp.h) that pool health
//! needs, read from the bytes of a sock_diag `INET_DIAG_INFO` attribute. The struct only ever
//! grows at its end, and the kernel sends as much of it as it has: each field is read only when
//! the returned length covers it, so the same parser serves 5.10 to 6.18.

/// Byte offsets in `struct tcp_info` (stable since the fields were added; the struct is
/// append-only).
mod offset {
    pub const LAST_DATA_SENT: usize = 44;
    pub const LAST_DATA_RECV: usize = 52;
    pub const RTT: usize = 68;
    pub const BYTES_ACKED: usize = 120;
    pub const BYTES_RECEIVED: usize = 128;
}

/// What pool health reads from one socket's `tcp_info`; `None` where the kernel's struct is
/// too short to hold the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Milliseconds since data was last sent.
    pub last_data_sent_ms: Option<u32>,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: Option<u32>,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: Option<u32>,
    /// Bytes the peer acknowledged.
    pub bytes_acked: Option<u64>,
    /// Bytes received (in sequence).
    pub bytes_received: Option<u64>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    Some(u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
}

impl TcpInfo {
    /// Parses the attribute's payload (any length: a field past its end is `None`).
    pub fn parse(bytes: &[u8]) -> Self {
        Self {
            last_data_sent_ms: u32_at(bytes, offset::LAST_DATA_SENT),
            last_data_recv_ms: u32_at(bytes, offset::LAST_DATA_RECV),
            rtt_us: u32_at(bytes, offset::RTT),
            bytes_acked: u64_at(bytes, offset::BYTES_ACKED),
            bytes_received: u64_at(bytes, offset::BYTES_RECEIVED),
        }
    }

    /// Milliseconds since data last moved either way (the later of the two), when both are
    /// known.
    pub fn idle_ms(&self) -> Option<u32> {
        Some(self.last_data_sent_ms?.min(self.last_data_recv_ms?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tcp_info` of `len` bytes with the documented fields set at their offsets.
    fn fixture(len: usize) -> Vec<u8> {
        let mut b = vec![0xeeu8; len];
        let mut put = |at: usize, v: &[u8]| {
            if at + v.len() <= len {
                b[at..at + v.len()].copy_from_slice(v);
            }
        };
        put(offset::LAST_DATA_SENT, &1500u32.to_ne_bytes());
        put(offset::LAST_DATA_RECV, &250u32.to_ne_bytes());
        put(offset::RTT, &42u32.to_ne_bytes());
        put(offset::BYTES_ACKED, &(5u64 << 33).to_ne_bytes());
        put(offset::BYTES_RECEIVED, &123_456u64.to_ne_bytes());
        b
    }

    #[test]
    fn reads_every_field_of_a_full_struct() {
        // 232 bytes: the size 5.10 sends; 6.x sends more, which is ignored.
        for len in [232, 248, 280] {
            let info = TcpInfo::parse(&fixture(len));
            assert_eq!(info.last_data_sent_ms, Some(1500));
            assert_eq!(info.last_data_recv_ms, Some(250));
            assert_eq!(info.rtt_us, Some(42));
            assert_eq!(info.bytes_acked, Some(5u64 << 33));
            assert_eq!(info.bytes_received, Some(123_456));
            assert_eq!(info.idle_ms(), Some(250), "the later of sent and received");
        }
    }

    #[test]
    fn a_short_struct_yields_only_the_fields_it_covers() {
        // Up to pacing_rate (before the RFC 4898 byte counters were added).
        let info = TcpInfo::parse(&fixture(120));
        assert_eq!(info.rtt_us, Some(42));
        assert_eq!(info.bytes_acked, None);
        assert_eq!(info.bytes_received, None);
        // Cut in the middle of bytes_received.
        let info = TcpInfo::parse(&fixture(132));
        assert_eq!(info.bytes_acked, Some(5u64 << 33));
        assert_eq!(info.bytes_received, None);
        // Too short for anything.
        assert_eq!(TcpInfo::parse(&fixture(40)), TcpInfo::default());
        assert_eq!(TcpInfo::parse(&fixture(48)).idle_ms(), None, "recv time missing");
    }
}
