//! The client part's side of the link: the API and metrics servers run here unchanged, their
//! queries and scrapes go to the monitor as frames, and the monitor's answers, metrics pages and
//! trace lines come back to the client that asked.
use std::collections::HashMap;

use tokio::{
    net::{UnixStream, unix::OwnedReadHalf},
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
};

use super::wire::{Down, MAX_DOWN_BYTES, Up, read_frame, write_frame};
use crate::{
    api::{
        answers::{ApiStatus, PrivilegesStatus},
        server::{Clients, Query},
    },
    export::Scrape,
    trace::{Dropped, TraceLine},
};

type Answer = Result<Box<serde_json::value::RawValue>, String>;

/// A trace client's stream: lines its queue had no room for are counted and told before the
/// next line it gets, as the monitor's own subscribers are.
struct Stream {
    tx: mpsc::Sender<TraceLine>,
    /// Records to tell the client it missed, before its next line.
    dropped: u64,
    /// Reports the client's hang-up at once, not at the next line (which may never come).
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Stream {
    /// Delivers `line`, or counts what it stands for as missed; false when the client went
    /// away. `records_dropped` counts the records this part dropped (the monitor counted the
    /// ones a drop notice it sent stands for).
    fn deliver(&mut self, line: TraceLine, records_dropped: &mut u64) -> bool {
        let count = lines_in(&line);
        let own = u64::from(matches!(line, TraceLine::Record(_)));
        if self.dropped > 0 {
            match self.tx.try_send(TraceLine::Dropped(Dropped { dropped: self.dropped })) {
                Ok(()) => self.dropped = 0,
                Err(TrySendError::Full(_)) => {
                    self.dropped += count;
                    *records_dropped += own;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += count;
                *records_dropped += own;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Records a line stands for: one, or the count of a drop notice.
fn lines_in(line: &TraceLine) -> u64 {
    match line {
        TraceLine::Record(_) => 1,
        TraceLine::Dropped(d) => d.dropped,
    }
}

/// Relays until the monitor closes the link (it stopped) or the link fails.
pub(super) async fn relay(
    link: UnixStream,
    privileges: PrivilegesStatus,
    seccomp: bool,
    mut queries: mpsc::Receiver<Query>,
    mut scrapes: mpsc::Receiver<Scrape>,
    clients: Clients,
) -> std::io::Result<()> {
    let (read, mut write) = link.into_split();
    let (out, mut out_rx) = mpsc::channel::<Up>(256);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            write_frame(&mut write, &frame).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    // Frames are read in their own task: a read cut by select! would lose its place.
    let (down_tx, mut down) = mpsc::channel::<std::io::Result<Down>>(256);
    tokio::spawn(read_down(read, down_tx));
    let _ = out.send(Up::Hello { pid: std::process::id(), privileges, seccomp }).await;

    let mut next_id = 0u64;
    let mut answers: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
    let mut pages: HashMap<u64, oneshot::Sender<String>> = HashMap::new();
    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let (gone_tx, mut gone) = mpsc::unbounded_channel::<u64>();
    let mut records_dropped = 0u64;
    loop {
        tokio::select! {
            Some(query) = queries.recv() => {
                next_id += 1;
                let (connected, evicted, refused) = clients.counts();
                let api = ApiStatus { clients: connected as u64, evicted, refused };
                answers.insert(next_id, query.reply);
                let stream = query.stream.is_some();
                if let Some(tx) = query.stream {
                    let (watched, gone_tx, id) = (tx.clone(), gone_tx.clone(), next_id);
                    let watcher = tokio::spawn(async move {
                        watched.closed().await;
                        let _ = gone_tx.send(id);
                    });
                    streams.insert(next_id, Stream { tx, dropped: 0, watcher });
                }
                let frame = Up::Query {
                    id: next_id,
                    request: query.request,
                    stream,
                    api,
                    trace_dropped: records_dropped,
                };
                if out.send(frame).await.is_err() {
                    break;
                }
            }
            Some(scrape) = scrapes.recv() => {
                next_id += 1;
                pages.insert(next_id, scrape.reply);
                if out.send(Up::Scrape { id: next_id }).await.is_err() {
                    break;
                }
            }
            Some(id) = gone.recv() => {
                if streams.remove(&id).is_some() && out.send(Up::StreamClosed { id }).await.is_err() {
                    break;
                }
            }
            frame = down.recv() => {
                // None: the monitor closed the link (it is stopping). A reset says the same of
                // a monitor that ended before reading what was sent (it failed to start, and
                // says why itself): nothing for this part to add.
                let frame = match frame {
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
                    other => other.transpose()?,
                };
                let Some(frame) = frame else { break };
                match frame {
                    Down::Answer { id, answer } => {
                        if answer.is_err() {
                            streams.remove(&id);
                        }
                        if let Some(reply) = answers.remove(&id) {
                            let _ = reply.send(answer);
                        }
                    }
                    Down::Metrics { id, text } => {
                        if let Some(reply) = pages.remove(&id) {
                            let _ = reply.send(text);
                        }
                    }
                    Down::Line { id, line } => {
                        let gone = streams
                            .get_mut(&id)
                            .is_some_and(|s| !s.deliver(line, &mut records_dropped));
                        if gone {
                            streams.remove(&id);
                            let _ = out.send(Up::StreamClosed { id }).await;
                        }
                    }
                    Down::StreamEnded { id } => {
                        streams.remove(&id);
                    }
                }
            }
        }
    }
    drop(out);
    let _ = writer.await;
    Ok(())
}

/// Sends each frame the monitor writes; ends (closing the channel) when the monitor closes the
/// link, after sending the error if the link failed.
async fn read_down(mut read: OwnedReadHalf, tx: mpsc::Sender<std::io::Result<Down>>) {
    loop {
        match read_frame::<_, Down>(&mut read, MAX_DOWN_BYTES).await {
            Ok(Some(frame)) => {
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}
