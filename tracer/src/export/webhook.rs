//! `--alert-webhook URL`: a JSON POST on every raise and resolve, from its own task, with a
//! timeout and bounded retries, so a slow or dead receiver never holds up event processing.
//!
//! Plain `http://` only: the daemon carries no TLS stack; for an https receiver, point the
//! webhook at a local relay (or Alertmanager, fed from the Prometheus endpoint).
use std::time::Duration;

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use crate::detect::{Alert, Change};

const TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 4;
const QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid --alert-webhook {url:?}: {why} (expected http://HOST[:PORT]/PATH)")]
    Url { url: String, why: &'static str },
}

/// A parsed `http://host:port/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl std::str::FromStr for WebhookUrl {
    type Err = WebhookError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let fail = |why| WebhookError::Url { url: url.to_owned(), why };
        if url.starts_with("https://") {
            return Err(fail("https is not supported; use an http relay on this host"));
        }
        let rest = url.strip_prefix("http://").ok_or_else(|| fail("not an http:// URL"))?;
        let (authority, path) =
            rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        if authority.is_empty() {
            return Err(fail("no host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse().map_err(|_| fail("bad port"))?,
            ),
            _ => (authority.trim_start_matches('[').trim_end_matches(']').to_owned(), 80),
        };
        Ok(Self { host, port, path })
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    event: &'static str,
    alert: &'a Alert,
}

/// The sending side held by the event loop: never blocks.
#[derive(Clone)]
pub struct Webhook {
    queue: mpsc::Sender<Change>,
}

impl Webhook {
    /// Starts the sender task.
    pub fn start(url: WebhookUrl) -> Self {
        let (queue, mut rx) = mpsc::channel::<Change>(QUEUE);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                deliver(&url, &change).await;
            }
        });
        Self { queue }
    }

    pub fn notify(&self, change: &Change) {
        if self.queue.try_send(change.clone()).is_err() {
            log::warn!("alert webhook queue full: a notification was dropped");
        }
    }
}

async fn deliver(url: &WebhookUrl, change: &Change) {
    let (event, alert) = match change {
        Change::Raised(a) => ("raised", a),
        Change::Resolved(a) => ("resolved", a),
    };
    let Ok(body) = serde_json::to_vec(&Payload { event, alert }) else { return };
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(TIMEOUT, post(url, &body)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => log::warn!(
                "alert webhook attempt {attempt}/{ATTEMPTS} to {}:{} failed: {e}",
                url.host,
                url.port
            ),
            Err(_) => log::warn!(
                "alert webhook attempt {attempt}/{ATTEMPTS} to {}:{} timed out",
                url.host,
                url.port
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    log::error!("alert webhook gave up after {ATTEMPTS} attempts");
}

async fn post(url: &WebhookUrl, body: &[u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: tracer/{}\r\n\r\n",
        url.path,
        url.host,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).await?;
    // "HTTP/1.1 2xx"
    if status.starts_with(b"HTTP/1.") && status[9] == b'2' {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "receiver answered {:?}",
            String::from_utf8_lossy(&status)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/leak-detection.md states the webhook's timeout and attempts: these constants.
    #[test]
    fn docs_state_the_timeout_and_attempts() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/leak-detection.md");
        let doc = std::fs::read_to_string(path).expect("docs/leak-detection.md");
        let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        let phrase = format!("{} s timeout, {ATTEMPTS} attempts with backoff", TIMEOUT.as_secs());
        assert!(doc.contains(&phrase), "docs/leak-detection.md should say \"{phrase}\"");
    }

    #[test]
    fn parses_http_urls_and_refuses_https() {
        let u: WebhookUrl = "http://127.0.0.1:9000/hook".parse().expect("url");
        assert_eq!(u, WebhookUrl { host: "127.0.0.1".into(), port: 9000, path: "/hook".into() });
        let u: WebhookUrl = "http://alerts.internal".parse().expect("url");
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u: WebhookUrl = "http://[::1]:81/x".parse().expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert!("https://x/".parse::<WebhookUrl>().unwrap_err().to_string().contains("relay"));
        assert!("ftp://x/".parse::<WebhookUrl>().is_err());
    }
}
