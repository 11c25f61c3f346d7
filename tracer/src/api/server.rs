//! The daemon side: accepts clients and forwards each request to the event loop, which owns
//! the table and answers between two ring buffer batches (no lock on the event path).
use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::protocol::{API_VERSION, Request, RequestEnvelope, ResponseEnvelope};

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

/// Binds `path` (mode 0600), replacing a stale socket but never a live daemon's.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io { path: path.to_owned(), source };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse { path: path.to_owned() });
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Serves clients until the listener fails; each client on its own task.
pub async fn serve(listener: UnixListener, queries: mpsc::Sender<Query>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let queries = queries.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, queries).await {
                        log::debug!("api client: {e}");
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

async fn handle(stream: UnixStream, queries: mpsc::Sender<Query>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let (tx, mut rx) = mpsc::channel(TRACE_QUEUE);
        let response = answer(&line, &queries, tx).await;
        let streaming = response.error.is_none() && is_trace(&line);
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if streaming {
            // Until the client goes (EOF or a failed write) or the daemon stops: dropping
            // `rx` tells the event loop, whose next send to it fails.
            loop {
                tokio::select! {
                    line = rx.recv() => {
                        let Some(line) = line else { return Ok(()) };
                        let mut out = serde_json::to_vec(&line).map_err(io::Error::other)?;
                        out.push(b'\n');
                        write.write_all(&out).await?;
                    }
                    read = lines.next_line() => {
                        if read?.is_none() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn is_trace(line: &str) -> bool {
    serde_json::from_str::<RequestEnvelope>(line)
        .is_ok_and(|e| matches!(e.request, Request::Trace { .. }))
}

async fn answer(
    line: &str,
    queries: &mpsc::Sender<Query>,
    stream: mpsc::Sender<crate::trace::TraceLine>,
) -> ResponseEnvelope {
    let fail =
        |error: String| ResponseEnvelope { version: API_VERSION, error: Some(error), result: None };
    // Check the version before the request shape, so that an old or new client gets a version
    // error rather than a parse error.
    let version = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    match version {
        Some(v) if v == u64::from(API_VERSION) => {}
        Some(v) => {
            return fail(format!("unsupported API version {v}; this daemon speaks {API_VERSION}"));
        }
        None => return fail("malformed request: expected {\"version\":N,\"request\":...}".into()),
    }
    let envelope: RequestEnvelope = match serde_json::from_str(line) {
        Ok(e) => e,
        Err(e) => return fail(format!("malformed request: {e}")),
    };
    let (reply, answer) = oneshot::channel();
    let stream = matches!(envelope.request, Request::Trace { .. }).then_some(stream);
    if queries.send(Query { request: envelope.request, reply, stream }).await.is_err() {
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
