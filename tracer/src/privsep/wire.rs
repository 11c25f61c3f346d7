//! What the two parts say to each other over their socketpair: length-prefixed JSON frames
//! (a little-endian u32 length, then that many bytes). Each side caps what it accepts from the
//! other: the monitor takes small requests only, the client part takes answers as large as a
//! /metrics page.
use std::io;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    api::{
        answers::{ApiStatus, PrivilegesStatus},
        protocol::Request,
    },
    trace::TraceLine,
};

/// The largest frame the monitor reads from the client part: a request line is at most
/// [`crate::api::server::MAX_REQUEST_BYTES`], and its re-encoding no longer.
pub const MAX_UP_BYTES: usize = 4 * crate::api::server::MAX_REQUEST_BYTES;

/// The largest frame the client part reads from the monitor (a /metrics page, a `conns`
/// answer on a host with many sockets).
pub const MAX_DOWN_BYTES: usize = 1 << 30;

/// From the client part to the monitor.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
    /// First frame: who the client part is, as it runs, and whether its seccomp filter is on.
    Hello { pid: u32, privileges: PrivilegesStatus, seccomp: bool },
    /// An API request that parsed; `stream` when it is a trace (lines follow its answer).
    /// For `status`: `api`, the client part's count of API clients, and `trace_dropped`, the
    /// trace records it dropped for slow readers since start.
    Query { id: u64, request: Request, stream: bool, api: ApiStatus, trace_dropped: u64 },
    /// A /metrics scrape that passed TLS and authentication.
    Scrape { id: u64 },
    /// The trace client of `id` went away: its stream may stop.
    StreamClosed { id: u64 },
}

/// From the monitor to the client part.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    Answer {
        id: u64,
        answer: Result<Box<RawValue>, String>,
    },
    Metrics {
        id: u64,
        text: String,
    },
    Line {
        id: u64,
        line: TraceLine,
    },
    /// The monitor ended the stream of `id` (it is stopping).
    StreamEnded {
        id: u64,
    },
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    out: &mut W,
    frame: &T,
) -> io::Result<()> {
    let body = serde_json::to_vec(frame).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&body);
    out.write_all(&bytes).await
}

/// The next frame; `None` when the other part closed the link between frames.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    input: &mut R,
    max: usize,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, over the {max} accepted"),
        ));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn frames_round_trip_and_oversized_or_cut_ones_are_refused() {
        block_on(async {
            let mut bytes = Vec::new();
            let query = Up::Query {
                id: 7,
                request: Request::Status {},
                stream: false,
                api: ApiStatus { clients: 1, evicted: 2, refused: 3 },
                trace_dropped: 4,
            };
            write_frame(&mut bytes, &query).await.unwrap();
            let answer = Down::Answer {
                id: 7,
                answer: Ok(RawValue::from_string("{\"a\":1}".into()).unwrap()),
            };
            write_frame(&mut bytes, &answer).await.unwrap();
            let mut input = bytes.as_slice();
            let up: Up = read_frame(&mut input, MAX_UP_BYTES).await.unwrap().unwrap();
            assert!(
                matches!(up, Up::Query { id: 7, request: Request::Status {}, api, .. } if api.refused == 3)
            );
            let down: Down = read_frame(&mut input, MAX_DOWN_BYTES).await.unwrap().unwrap();
            match down {
                Down::Answer { id: 7, answer: Ok(raw) } => assert_eq!(raw.get(), "{\"a\":1}"),
                other => panic!("{other:?}"),
            }
            assert!(read_frame::<_, Up>(&mut input, MAX_UP_BYTES).await.unwrap().is_none());

            let mut big = Vec::new();
            write_frame(&mut big, &Down::Metrics { id: 1, text: "x".repeat(100) }).await.unwrap();
            let err = read_frame::<_, Down>(&mut big.as_slice(), 50).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let cut = &big[..20];
            assert!(read_frame::<_, Down>(&mut &cut[..], MAX_DOWN_BYTES).await.is_err());
            let garbage = [4u8, 0, 0, 0, b'n', b'o', b'p', b'e'];
            assert!(read_frame::<_, Up>(&mut &garbage[..], MAX_UP_BYTES).await.is_err());
        });
    }
}
