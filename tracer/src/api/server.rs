//! The daemon side: accepts clients and forwards each request to the event loop, which owns
//! the table and answers between two ring buffer batches (no lock on the event path).
//!
//! Every client is treated as hostile: a request line is at most [`MAX_REQUEST_BYTES`], at
//! most [`MAX_CLIENTS`] are served at once (a new client takes the slot of the one idle
//! longest), and an answer the client does not read within [`WRITE_TIMEOUT`] ends the
//! connection, so no client can hold the daemon's memory, descriptors or answers hostage.
use std::{
    io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::protocol::{API_VERSION, Request, RequestEnvelope, ResponseEnvelope};
pub use crate::slots::Clients;
use crate::slots::SlotGuard;

/// A request on its way to the event loop, with where to send the answer.
pub struct Query {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Box<serde_json::value::RawValue>, String>>,
    /// For [`Request::Trace`]: where the event loop sends the stream's lines (bounded: a full
    /// queue is the subscriber's loss, counted in the stream, never the daemon's wait).
    pub stream: Option<mpsc::Sender<crate::trace::TraceLine>>,
}

/// Lines a trace subscriber may have waiting before it starts to miss some.
pub const TRACE_QUEUE: usize = 4096;

/// The longest request line, newline included: every request is a small JSON object.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Clients served at once. When all slots are taken, the client idle longest (waiting for a
/// request line) is closed for the new one; when none is idle (every one is being answered or
/// streamed to), the new one is told so and closed.
pub const MAX_CLIENTS: usize = 128;

/// How long writing an answer may wait for a client that does not read it (a trace stream
/// never waits: its queue drops and counts instead).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another tracer daemon is already serving {path}: stop it first, or give this one \
         another --socket",
        path = path.display()
    )]
    InUse { path: PathBuf },
    #[error("cannot create the API socket {path}: {source}", path = path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// The gid of `group`: a group name, or a numeric gid (which need not be named).
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| format!("{group:?}: not a group name"))?;
    // SAFETY: zeroed plain data, filled by getgrnam_r.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer's length is passed.
    let rc = unsafe {
        libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found)
    };
    if rc != 0 || found.is_null() {
        return Err(format!(
            "{group:?}: no such group (create it with `groupadd {group}`, or give a numeric gid)"
        ));
    }
    Ok(entry.gr_gid)
}

/// How often a socket that answers is tried, 100 ms apart, before it is taken to be another
/// daemon's.
const IN_USE_CHECKS: u32 = 10;

/// The socket file [`bind`] created: what the daemon may remove at shutdown. Known by its inode
/// and change time, since a file system may give a newer daemon's socket the inode number of
/// the one it replaced (ext4 did, in the unit test).
#[derive(Clone, Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64, i64, i64),
}

fn identity(file: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (file.dev(), file.ino(), file.ctime(), file.ctime_nsec())
}

impl SocketFile {
    /// Removes the file at shutdown, unless another daemon has bound a new one there since (a
    /// restart whose new daemon started before this one finished stopping).
    pub fn remove_if_ours(&self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|now| identity(&now) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the API socket at `path`, replacing a stale socket but never a live daemon's: mode
/// 0600 (root only), or 0660 owned by `group` so that its members may query too. Before any
/// runtime or thread starts: the privileged part binds it, the part that serves clients may be
/// another process. Non-blocking, ready for [`serve`].
pub fn bind(
    path: &Path,
    group: Option<u32>,
) -> Result<(std::os::unix::net::UnixListener, SocketFile), BindError> {
    let io_err = |source| BindError::Io { path: path.to_owned(), source };
    if path.exists() {
        // A daemon that was just killed may take a moment to be gone: the part that served
        // its clients ends when it notices (crate::privsep).
        let mut answered = 0;
        while std::os::unix::net::UnixStream::connect(path).is_ok() {
            answered += 1;
            if answered == IN_USE_CHECKS {
                return Err(BindError::InUse { path: path.to_owned() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = match group {
        Some(gid) => as_group(gid, || std::os::unix::net::UnixListener::bind(path)),
        None => std::os::unix::net::UnixListener::bind(path),
    }
    .map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    let bound = std::fs::metadata(path).map_err(io_err)?;
    Ok((listener, SocketFile { path: path.to_owned(), identity: identity(&bound) }))
}

/// Runs `create` with `gid` as the effective group, so that the file it creates is that
/// group's from the start: the daemon then needs CAP_SETGID, which it has anyway to start the
/// part that serves clients, rather than CAP_CHOWN (which the systemd unit leaves out). Only
/// before any thread starts: the change is the whole process's.
fn as_group<T>(gid: u32, create: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    // SAFETY: getegid has no preconditions.
    let previous = unsafe { libc::getegid() };
    // SAFETY: setresgid with -1 leaves the real and saved ids as they are.
    if unsafe { libc::setresgid(u32::MAX, gid, u32::MAX) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("cannot create the socket as group {gid} (needs CAP_SETGID): {e}"),
        ));
    }
    let created = create();
    // SAFETY: as above; back to the group the daemon had.
    if unsafe { libc::setresgid(u32::MAX, previous, u32::MAX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    created
}

/// Serves clients until the listener fails; each client on its own task.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    queries: mpsc::Sender<Query>,
    clients: Clients,
) {
    match UnixListener::from_std(listener) {
        Ok(listener) => serve_with(listener, queries, clients, MAX_CLIENTS).await,
        Err(e) => log::error!("API socket: cannot serve it: {e}"),
    }
}

async fn serve_with(
    listener: UnixListener,
    queries: mpsc::Sender<Query>,
    clients: Clients,
    capacity: usize,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Some((guard, evict)) = clients.take(capacity) else {
                    // Told why, without waiting for it to read: the answer fits the buffer.
                    let mut line = refusal(&format!(
                        "the daemon serves {capacity} clients at once and none is idle; try again"
                    ));
                    line.push(b'\n');
                    let _ = stream.try_write(&line);
                    continue;
                };
                let queries = queries.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        result = handle(stream, queries, &guard) => {
                            if let Err(e) = result {
                                log::debug!("api client: {e}");
                            }
                        }
                        () = evict.notified() => log::debug!("api client: closed for a newer one (idle longest)"),
                    }
                });
            }
            Err(e) => {
                log::warn!("api socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A request line as read: the text, or why it is refused.
pub(crate) enum RequestLine {
    Text(String),
    TooLong,
    NotUtf8,
}

/// Reads one line of at most `limit` bytes (newline included); `None` at the end of input. A
/// longer line is refused as soon as `limit` bytes are in, without buffering the rest.
pub(crate) async fn read_request(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
) -> io::Result<Option<RequestLine>> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // A last line without its newline is still a request.
            return Ok((!line.is_empty()).then(|| text(line)));
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > limit {
            return Ok(Some(RequestLine::TooLong));
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            line.pop();
            return Ok(Some(text(line)));
        }
    }
}

fn text(line: Vec<u8>) -> RequestLine {
    match String::from_utf8(line) {
        Ok(mut s) => {
            if s.ends_with('\r') {
                s.pop();
            }
            RequestLine::Text(s)
        }
        Err(_) => RequestLine::NotUtf8,
    }
}

/// An error envelope, serialised.
fn refusal(error: &str) -> Vec<u8> {
    let envelope =
        ResponseEnvelope { version: API_VERSION, error: Some(error.to_owned()), result: None };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

async fn handle(
    stream: UnixStream,
    queries: mpsc::Sender<Query>,
    slot: &SlotGuard,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        slot.set_idle(true);
        let Some(request) = read_request(&mut reader, MAX_REQUEST_BYTES).await? else {
            return Ok(());
        };
        slot.set_idle(false);
        let line = match request {
            RequestLine::Text(line) => line,
            // The rest of such a line cannot be told from the next request: answer, then close.
            RequestLine::TooLong | RequestLine::NotUtf8 => {
                let why = match request {
                    RequestLine::TooLong => {
                        format!("malformed request: longer than {MAX_REQUEST_BYTES} bytes; closing")
                    }
                    _ => "malformed request: not UTF-8; closing".to_owned(),
                };
                let mut out = refusal(&why);
                out.push(b'\n');
                let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out)).await;
                return Ok(());
            }
        };
        let (tx, mut rx) = mpsc::channel(TRACE_QUEUE);
        let response = answer(&line, &queries, tx).await;
        let streaming = response.error.is_none() && is_trace(&line);
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out)).await {
            Ok(written) => written?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read its answer",
                ));
            }
        }
        if streaming {
            // Until the client goes (EOF or a failed write) or the daemon stops: dropping
            // `rx` tells the event loop, whose next send to it fails.
            loop {
                tokio::select! {
                    line = rx.recv() => {
                        let Some(line) = line else { return Ok(()) };
                        // With the lines already queued behind it: one write per batch.
                        let mut out = Vec::with_capacity(16 * 1024);
                        let mut next = Some(line);
                        while let Some(line) = next {
                            serde_json::to_writer(&mut out, &line).map_err(io::Error::other)?;
                            out.push(b'\n');
                            next = if out.len() < 64 * 1024 { rx.try_recv().ok() } else { None };
                        }
                        write.write_all(&out).await?;
                    }
                    // Anything the client sends now ends nothing; its hang-up ends the stream.
                    read = reader.fill_buf() => {
                        let n = read?.len();
                        if n == 0 {
                            return Ok(());
                        }
                        reader.consume(n);
                    }
                }
            }
        }
    }
}

fn is_trace(line: &str) -> bool {
    serde_json::from_str::<RequestEnvelope>(line)
        .is_ok_and(|e| matches!(e.request, Request::Trace { .. }))
}

/// The request a line carries, or the error the client is answered with. The version is
/// checked before the request's shape, so that an old or new client gets a version error rather
/// than a parse error.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let version = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    match version {
        Some(v) if v == u64::from(API_VERSION) => {}
        Some(v) => {
            return Err(format!("unsupported API version {v}; this daemon speaks {API_VERSION}"));
        }
        None => return Err("malformed request: expected {\"version\":N,\"request\":...}".into()),
    }
    serde_json::from_str::<RequestEnvelope>(line)
        .map(|envelope| envelope.request)
        .map_err(|e| format!("malformed request: {e}"))
}

async fn answer(
    line: &str,
    queries: &mpsc::Sender<Query>,
    stream: mpsc::Sender<crate::trace::TraceLine>,
) -> ResponseEnvelope {
    let fail =
        |error: String| ResponseEnvelope { version: API_VERSION, error: Some(error), result: None };
    let request = match parse_request(line) {
        Ok(request) => request,
        Err(error) => return fail(error),
    };
    let (reply, answer) = oneshot::channel();
    let stream = matches!(request, Request::Trace { .. }).then_some(stream);
    if queries.send(Query { request, reply, stream }).await.is_err() {
        return fail("the daemon is shutting down".into());
    }
    match answer.await {
        Ok(Ok(result)) => {
            ResponseEnvelope { version: API_VERSION, error: None, result: Some(result) }
        }
        Ok(Err(error)) => fail(error),
        Err(_) => fail("the daemon is shutting down".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], limit: usize) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let mut reader = BufReader::with_capacity(7, input);
            let mut got = Vec::new();
            while let Some(line) = read_request(&mut reader, limit).await.expect("read") {
                got.push(match line {
                    RequestLine::Text(t) => t,
                    RequestLine::TooLong => "<too long>".into(),
                    RequestLine::NotUtf8 => "<not utf-8>".into(),
                });
                if got.last().is_some_and(|l| l.starts_with('<')) {
                    break;
                }
            }
            got
        })
    }

    #[test]
    fn shutdown_removes_its_own_socket_file_and_not_a_newer_daemons() {
        let dir = std::env::temp_dir().join(format!("tracer-unlink-{}", std::process::id()));
        let path = dir.join("api.sock");
        let (first, first_file) = bind(&path, None).expect("bind");
        // A new daemon took the path over (bind removes a socket that does not answer).
        drop(first);
        // Daemons start seconds apart; kernels with coarse timestamps tick every 1-10 ms.
        std::thread::sleep(Duration::from_millis(20));
        let (second, second_file) = bind(&path, None).expect("bind again");
        // The first daemon stopping after the second started.
        first_file.remove_if_ours();
        assert!(path.exists(), "another daemon's socket file was removed");
        // The second daemon stopping.
        drop(second);
        second_file.remove_if_ours();
        assert!(!path.exists(), "its own socket file stayed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn groups_resolve_by_name_or_number_and_an_unknown_name_says_how_to_fix_it() {
        assert_eq!(resolve_group("root"), Ok(0));
        assert_eq!(resolve_group("4242"), Ok(4242));
        let e = resolve_group("no-such-group-here").expect_err("unknown");
        assert!(e.contains("groupadd no-such-group-here") && e.contains("numeric gid"), "{e}");
    }

    #[test]
    fn request_lines_are_bounded_and_utf8() {
        assert_eq!(read_all(b"one\ntwo\r\nlast", 64), ["one", "two", "last"]);
        // The limit counts the newline; reading stops there, whatever follows.
        assert_eq!(read_all(b"0123456789\n", 11), ["0123456789"]);
        assert_eq!(read_all(b"0123456789\n", 10), ["<too long>"]);
        assert_eq!(read_all(&[b'a'; 1 << 20], 64), ["<too long>"]);
        assert_eq!(read_all(b"ok\n\xff\xfe\nnever", 64), ["ok", "<not utf-8>"]);
        assert!(read_all(b"", 64).is_empty());
    }
}
