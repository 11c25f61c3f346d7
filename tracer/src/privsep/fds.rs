//! Frames with a descriptor: a little-endian u32 length, then that many bytes of JSON, over a
//! blocking Unix stream socket; a descriptor, when one goes with the frame, travels as
//! SCM_RIGHTS with its length prefix (the kernel keeps it with those bytes).
use std::{
    io::{self, IoSlice, IoSliceMut, Read, Write},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixStream,
    },
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Serialize, de::DeserializeOwned};

/// Writes `value` as one frame, with `fd` if given.
pub fn send<T: Serialize>(
    stream: &mut UnixStream,
    value: &T,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    let header = len.to_le_bytes();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let mut sent = rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&header)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The descriptor went with the first byte; the rest is plain data.
    while sent < header.len() {
        sent += stream.write(&header[sent..])?;
    }
    stream.write_all(&body)
}

/// Reads one frame of at most `max` bytes, and the descriptor that came with it. `None` at
/// the end of the stream.
pub fn receive<T: DeserializeOwned>(
    stream: &mut UnixStream,
    max: usize,
) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut header = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?
    .bytes;
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            // One is sent at most; any more are closed as they drop.
            for received in received {
                fd.get_or_insert(received);
            }
        }
    }
    if got == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[got..])?;
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(io::Error::other(format!("a frame of {len} bytes, more than the {max} taken")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let value = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok(Some((value, fd)))
}

#[cfg(test)]
mod tests {
    use std::{io::Seek, os::fd::AsFd};

    use super::*;

    #[test]
    fn a_frame_carries_its_descriptor_and_the_stream_ends_cleanly() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut file = std::fs::File::open("/proc/self/exe").unwrap();
        send(&mut a, &"with a file", Some(file.as_fd())).unwrap();
        send(&mut a, &vec![1u32, 2, 3], None).unwrap();
        drop(a);
        let (text, fd) = receive::<String>(&mut b, 1024).unwrap().unwrap();
        assert_eq!(text, "with a file");
        // The same open file: its size through the received descriptor.
        let received = std::fs::File::from(fd.expect("the descriptor"));
        let size = file.seek(std::io::SeekFrom::End(0)).unwrap();
        assert_eq!(received.metadata().unwrap().len(), size);
        let (numbers, fd) = receive::<Vec<u32>>(&mut b, 1024).unwrap().unwrap();
        assert_eq!((numbers, fd.is_none()), (vec![1, 2, 3], true));
        assert!(receive::<String>(&mut b, 1024).unwrap().is_none(), "the end");
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &"x".repeat(100), None).unwrap();
        assert!(receive::<String>(&mut b, 10).is_err());
    }
}
