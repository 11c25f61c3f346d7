//! The monitor's side of the link: each request frame becomes a [`Query`] or a [`Scrape`] on
//! the event loop's channels, exactly as a local server would send it, and what the event loop
//! answers goes back as frames.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::{
    net::UnixStream,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::wire::{Down, MAX_UP_BYTES, Up, read_frame, write_frame};
use crate::{
    api::{
        answers::{ApiStatus, PrivilegesStatus},
        server::{Query, TRACE_QUEUE},
    },
    export::Scrape,
};

/// What the monitor knows of the client part, for `status`.
#[derive(Clone, Debug, Default)]
pub struct ClientsPart {
    pub pid: u32,
    pub privileges: PrivilegesStatus,
    /// Under its seccomp filter.
    pub seccomp: bool,
    /// Its API clients, as of its latest query.
    pub api: ApiStatus,
    /// Trace records it dropped for slow readers, as of its latest query.
    pub trace_dropped: u64,
}

pub type SharedClientsPart = Arc<Mutex<ClientsPart>>;

/// Relays until the client part closes the link (it exited) or sends what the monitor refuses.
pub async fn relay(
    link: UnixStream,
    queries: mpsc::Sender<Query>,
    scrapes: mpsc::Sender<Scrape>,
    part: SharedClientsPart,
) -> std::io::Result<()> {
    let (mut read, mut write) = link.into_split();
    let (out, mut out_rx) = mpsc::channel::<Down>(1024);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            write_frame(&mut write, &frame).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    // Trace streams being forwarded, to stop when their client goes.
    let mut streams: HashMap<u64, JoinHandle<()>> = HashMap::new();
    let result = loop {
        let frame = match read_frame::<_, Up>(&mut read, MAX_UP_BYTES).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        streams.retain(|_, task| !task.is_finished());
        match frame {
            Up::Hello { pid, privileges, seccomp } => {
                if let Ok(mut p) = part.lock() {
                    (p.pid, p.privileges, p.seccomp) = (pid, privileges, seccomp);
                }
            }
            Up::Query { id, request, stream, api, trace_dropped } => {
                if let Ok(mut p) = part.lock() {
                    (p.api, p.trace_dropped) = (api, trace_dropped);
                }
                let (reply, answer) = oneshot::channel();
                let (lines_tx, mut lines) = if stream {
                    let (tx, rx) = mpsc::channel(TRACE_QUEUE);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                if queries.send(Query { request, reply, stream: lines_tx }).await.is_err() {
                    break Ok(());
                }
                let out = out.clone();
                let task = tokio::spawn(async move {
                    let answer = answer.await.unwrap_or_else(|_| Err(shutting_down()));
                    let streaming = answer.is_ok();
                    if out.send(Down::Answer { id, answer }).await.is_err() || !streaming {
                        return;
                    }
                    let Some(lines) = lines.as_mut() else { return };
                    while let Some(line) = lines.recv().await {
                        if out.send(Down::Line { id, line }).await.is_err() {
                            return;
                        }
                    }
                    let _ = out.send(Down::StreamEnded { id }).await;
                });
                if stream {
                    streams.insert(id, task);
                }
            }
            Up::Scrape { id } => {
                let (reply, page) = oneshot::channel();
                if scrapes.send(Scrape { reply }).await.is_err() {
                    break Ok(());
                }
                let out = out.clone();
                tokio::spawn(async move {
                    if let Ok(text) = page.await {
                        let _ = out.send(Down::Metrics { id, text }).await;
                    }
                });
            }
            Up::StreamClosed { id } => {
                // Dropping the stream's receiver: the event loop's next line to it fails and
                // the subscriber goes, as when a local client hangs up.
                if let Some(task) = streams.remove(&id) {
                    task.abort();
                }
            }
        }
    };
    for (_, task) in streams {
        task.abort();
    }
    drop(out);
    writer.abort();
    result
}

fn shutting_down() -> String {
    "the daemon is shutting down".to_owned()
}
