//! The CLI side of the API.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::protocol::{API_VERSION, Request, RequestEnvelope, ResponseEnvelope};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the tracer daemon is not running (nothing at {path}): start it with `sudo tracer run` \
         (or `cargo xtask run`), or point --socket at its socket",
        path = path.display()
    )]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on {path}: the daemon's socket admits root only (mode 0600), or the \
         members of the group given to `tracer run --socket-group GROUP` (mode 0660); run this \
         command with sudo, or as a member of that group",
        path = path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("cannot talk to the daemon at {path}: {source}", path = path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the daemon speaks API version {daemon} but this tracer binary speaks {cli}: use the \
         tracer binary of the same release as the running daemon"
    )]
    Version { daemon: u32, cli: u32 },
    #[error("the daemon refused the request: {0}")]
    Daemon(String),
    #[error("malformed reply from the daemon: {0}")]
    Malformed(String),
    #[error(
        "the daemon at {path} closed the connection without answering: it is starting or \
         stopping (a daemon that cannot load its probes ends here), so see its log \
         (`journalctl -u tracer` under systemd), and try again",
        path = path.display()
    )]
    Closed { path: PathBuf },
}

/// Sends `request` and reads the answer as `T`.
pub fn request<T: DeserializeOwned>(socket: &Path, request: Request) -> Result<T, ClientError> {
    let result = request_raw(socket, request)?;
    serde_json::from_str(result.get()).map_err(|e| ClientError::Malformed(e.to_string()))
}

/// Sends `request` and returns the answer (the envelope's `result`) as the daemon sent it,
/// its fields in the daemon's order.
pub fn request_value(socket: &Path, request: Request) -> Result<serde_json::Value, ClientError> {
    let result = request_raw(socket, request)?;
    serde_json::from_str(result.get()).map_err(|e| ClientError::Malformed(e.to_string()))
}

/// Sends a streaming `request` (`trace`) and hands each line of the stream to `on_line` until
/// the daemon closes it or `on_line` returns false.
pub fn stream<T: DeserializeOwned>(
    socket: &Path,
    request: Request,
    mut on_line: impl FnMut(T, bool) -> bool,
) -> Result<(), ClientError> {
    let (_stream, mut reader) = send(socket, request, None)?;
    read_answer(socket, &mut reader)?;
    let io_err = |source| ClientError::Io { path: socket.to_owned(), source };
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io_err)? == 0 {
            return Ok(());
        }
        let item =
            serde_json::from_str(&line).map_err(|e| ClientError::Malformed(e.to_string()))?;
        // Whether more lines are already here: a caller can write them out in one go.
        let more = !reader.buffer().is_empty();
        if !on_line(item, more) {
            return Ok(());
        }
    }
}

fn request_raw(
    socket: &Path,
    request: Request,
) -> Result<Box<serde_json::value::RawValue>, ClientError> {
    let (_stream, mut reader) = send(socket, request, Some(Duration::from_secs(30)))?;
    read_answer(socket, &mut reader)
}

/// Connects (reads time out after `timeout`; a stream waits as long as it takes) and sends
/// `request`; returns the connection and a reader of what comes back.
fn send(
    socket: &Path,
    request: Request,
    timeout: Option<Duration>,
) -> Result<(UnixStream, BufReader<UnixStream>), ClientError> {
    let io_err = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path: socket.to_owned() }
        }
        std::io::ErrorKind::PermissionDenied => {
            ClientError::PermissionDenied { path: socket.to_owned() }
        }
        _ => ClientError::Io { path: socket.to_owned(), source },
    };
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream.set_read_timeout(timeout).map_err(io_err)?;
    let mut line = serde_json::to_string(&RequestEnvelope { version: API_VERSION, request })
        .map_err(|e| ClientError::Malformed(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let reader = BufReader::new(stream.try_clone().map_err(io_err)?);
    Ok((stream, reader))
}

/// Reads the answer's envelope: its result, or the error it carries.
fn read_answer(
    socket: &Path,
    reader: &mut BufReader<UnixStream>,
) -> Result<Box<serde_json::value::RawValue>, ClientError> {
    let io_err = |source| ClientError::Io { path: socket.to_owned(), source };
    let mut reply = String::new();
    if reader.read_line(&mut reply).map_err(io_err)? == 0 {
        return Err(ClientError::Closed { path: socket.to_owned() });
    }
    let envelope: ResponseEnvelope =
        serde_json::from_str(&reply).map_err(|e| ClientError::Malformed(e.to_string()))?;
    if envelope.version != API_VERSION {
        return Err(ClientError::Version { daemon: envelope.version, cli: API_VERSION });
    }
    if let Some(error) = envelope.error {
        return Err(ClientError::Daemon(error));
    }
    envelope.result.ok_or_else(|| ClientError::Malformed("no result".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon that accepts and hangs up without a word (one that failed to load its probes
    /// while its client part was already serving) is reported as such, naming where to look,
    /// not as a malformed reply.
    #[test]
    fn a_connection_closed_before_any_answer_says_so() {
        let path = std::env::temp_dir().join(format!("tracer-client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = String::new();
            BufReader::new(&mut stream).read_line(&mut request).expect("request");
        });
        let err = request_value(&path, Request::Status {}).expect_err("no answer");
        server.join().expect("server");
        std::fs::remove_file(&path).ok();
        assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");
        assert!(err.to_string().contains("journalctl -u tracer"), "{err}");
    }
}
