//! The `/metrics` endpoint: HTTP/1.1 over hyper. Each scrape is a [`Scrape`] sent to the event
//! loop, which owns the table and renders the exposition between two ring buffer batches (no
//! lock on the event path); this side only moves bytes.
//!
//! hyper rather than a hand-written responder: it already handles requests split across reads,
//! pipelining and keep-alive, `Connection: close`, HEAD, oversized headers (431) and clients
//! that never finish their headers (header read timeout).
use std::{
    convert::Infallible,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use tokio_rustls::TlsAcceptor;

use super::web_config::{BasicAuth, WebConfig};
use crate::slots::{Clients, SlotGuard};

/// Default port of `--metrics-addr`. The Prometheus exporter range 9100-9999 is fully
/// allocated on the project wiki's list, so every port there belongs to some exporter; this
/// one belongs to none of the widespread ones (node, blackbox, process, mysqld, ...).
pub const DEFAULT_METRICS_PORT: u16 = 9855;

/// Default `--metrics-addr`: loopback only; `0.0.0.0:PORT` exposes it to the network.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_METRICS_PORT));

/// How long a request waits for the event loop to render a scrape before answering 503.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. When all are taken, a new one gets the slot of the connection
/// idle longest (between requests, or yet to send one), which is closed: idle clients never
/// make a real scrape wait.
pub const MAX_CONNECTIONS: usize = 32;
/// Request line plus headers, in bytes (hyper's minimum buffer; a scrape request is ~200).
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Also closes idle keep-alive connections after this long without a new request.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A scrape on its way to the event loop, which answers with the exposition text
/// (`Metrics::render`).
#[derive(Debug)]
pub struct Scrape {
    pub reply: oneshot::Sender<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "cannot serve metrics on {addr}: the address is already in use (another tracer, or \
         another exporter on that port); pick another address with --metrics-addr"
    )]
    InUse { addr: SocketAddr },
    #[error(
        "cannot serve metrics on {addr}: it is not an address of this host; use \
         --metrics-addr 127.0.0.1:PORT, 0.0.0.0:PORT (every interface) or one of this host's \
         addresses"
    )]
    NotLocal { addr: SocketAddr },
    #[error(
        "cannot serve metrics on {addr}: permission denied (ports below 1024 need \
         CAP_NET_BIND_SERVICE); pick a port of 1024 or more with --metrics-addr"
    )]
    PermissionDenied { addr: SocketAddr },
    #[error("cannot serve metrics on {addr}: {source}; pick another address with --metrics-addr")]
    Io { addr: SocketAddr, source: io::Error },
}

/// Binds the metrics listener, non-blocking, ready for [`serve`]; needs no runtime (the daemon
/// binds before any thread starts).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let classify = |source: io::Error| match source.kind() {
        io::ErrorKind::AddrInUse => BindError::InUse { addr },
        io::ErrorKind::AddrNotAvailable => BindError::NotLocal { addr },
        io::ErrorKind::PermissionDenied => BindError::PermissionDenied { addr },
        _ => BindError::Io { addr, source },
    };
    // std sets SO_REUSEADDR on Unix: a restarted daemon rebinds despite TIME_WAIT.
    let listener = std::net::TcpListener::bind(addr).map_err(classify)?;
    listener.set_nonblocking(true).map_err(|source| BindError::Io { addr, source })?;
    Ok(listener)
}

/// Serves `/metrics` until the task is aborted; each connection on its own task. `web` adds TLS
/// and basic authentication (`--web-config`).
pub async fn serve(listener: std::net::TcpListener, scrapes: mpsc::Sender<Scrape>, web: WebConfig) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("metrics: cannot serve the listener: {e}");
            return;
        }
    };
    let clients = Clients::default();
    let tls = web.tls.map(TlsAcceptor::from);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some((slot, evict)) = clients.take(MAX_CONNECTIONS) else {
                    // Every slot is answering a scrape right now: closed at once.
                    log::debug!("metrics client {peer}: refused, {MAX_CONNECTIONS} busy");
                    continue;
                };
                let scrapes = scrapes.clone();
                let (tls, auth) = (tls.clone(), web.auth.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        result = serve_client(stream, tls, auth, scrapes, &slot) => {
                            if let Err(e) = result {
                                log::debug!("metrics client {peer}: {e}");
                            }
                        }
                        () = evict.notified() => {
                            log::debug!("metrics client {peer}: closed for a newer one (idle longest)");
                        }
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                log::warn!("metrics listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client: its TLS handshake first when TLS is on (bounded like a request's headers; the
/// slot stays idle meanwhile, so a stalled handshake makes way for a real scrape).
async fn serve_client(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    auth: Option<Arc<BasicAuth>>,
    scrapes: mpsc::Sender<Scrape>,
    slot: &SlotGuard,
) -> Result<(), String> {
    match tls {
        None => serve_connection(stream, auth, scrapes, slot).await.map_err(|e| e.to_string()),
        Some(acceptor) => {
            let stream = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS handshake: {e}"))?;
            serve_connection(stream, auth, scrapes, slot).await.map_err(|e| e.to_string())
        }
    }
}

/// Serves one connection's requests until it closes (any byte stream: a TCP connection, a TLS
/// stream, or the in-memory one of `crate::fuzzing::metrics_http`).
pub(crate) async fn serve_connection<S>(
    stream: S,
    auth: Option<Arc<BasicAuth>>,
    scrapes: mpsc::Sender<Scrape>,
    slot: &SlotGuard,
) -> hyper::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service = service_fn(move |request| {
        let (scrapes, auth) = (scrapes.clone(), auth.clone());
        async move {
            // Busy while it is answered: only a connection between requests can be closed
            // for a newer one.
            slot.set_idle(false);
            let allowed = match &auth {
                None => true,
                Some(auth) => {
                    auth.allows(request.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes))
                        .await
                }
            };
            let response = if allowed { respond(&request, &scrapes).await } else { unauthorized() };
            slot.set_idle(true);
            Ok::<_, Infallible>(response)
        }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response =
        reply(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "Unauthorized\n".to_owned());
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tracer\""));
    response
}

const INDEX_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>tracer</title></head><body>\n\
<h1>tracer</h1>\n<p>TCP connection lifecycle tracer. Metrics: <a href=\"/metrics\">/metrics</a>\
</p>\n</body></html>\n";

async fn respond(
    request: &Request<Incoming>,
    scrapes: &mpsc::Sender<Scrape>,
) -> Response<Full<Bytes>> {
    let readable = matches!(*request.method(), Method::GET | Method::HEAD);
    match (request.uri().path(), readable) {
        ("/metrics", true) => match scrape(scrapes).await {
            Ok(text) => reply(StatusCode::OK, prometheus::TEXT_FORMAT, text),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", why),
        },
        ("/", true) => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX_PAGE.to_owned()),
        ("/metrics" | "/", false) => {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n".to_owned(),
            );
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    }
}

/// Asks the event loop for the exposition.
async fn scrape(scrapes: &mpsc::Sender<Scrape>) -> Result<String, String> {
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        scrapes.send(Scrape { reply }).await.map_err(|_| "tracer is shutting down\n".to_owned())?;
        answer.await.map_err(|_| "tracer is shutting down\n".to_owned())
    };
    match tokio::time::timeout(SCRAPE_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => {
            Err(format!("the event loop did not answer within {}s\n", SCRAPE_TIMEOUT.as_secs()))
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
        net::TcpStream,
    };

    use super::*;

    /// docs/metrics.md states the server's limits and the default address: these constants.
    #[test]
    fn docs_state_the_servers_limits() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        for phrase in [
            format!("by default **`{DEFAULT_METRICS_ADDR}`**"),
            format!("at most {MAX_CONNECTIONS} connections at once"),
            format!("requests of at most {} KiB", MAX_REQUEST_BYTES / 1024),
            format!("no complete request within {} s", HEADER_READ_TIMEOUT.as_secs()),
            format!("rendered the scrape within {} s", SCRAPE_TIMEOUT.as_secs()),
        ] {
            assert!(doc.contains(&phrase), "docs/metrics.md should say \"{phrase}\"");
        }
    }

    /// A server on an ephemeral loopback port, with a stand-in event loop answering `body`.
    async fn start(body: Option<&'static str>) -> SocketAddr {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, mut rx) = mpsc::channel::<Scrape>(4);
        match body {
            Some(body) => {
                tokio::spawn(async move {
                    while let Some(scrape) = rx.recv().await {
                        let _ = scrape.reply.send(body.to_owned());
                    }
                });
            }
            // The event loop is gone.
            None => drop(rx),
        }
        tokio::spawn(serve(listener, tx, WebConfig::default()));
        addr
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    /// Reads one response (Content-Length framed, as hyper sends a Full body).
    async fn read_reply(reader: &mut BufReader<TcpStream>, head_only: bool) -> Reply {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("status line");
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.expect("header line");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').expect("header");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut reply = Reply { status, headers, body: String::new() };
        let length: usize =
            reply.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if !head_only {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await.expect("body");
            reply.body = String::from_utf8(body).expect("utf-8 body");
        }
        reply
    }

    async fn request(addr: SocketAddr, raw: &str) -> Reply {
        let mut reader = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        reader.get_mut().write_all(raw.as_bytes()).await.expect("send");
        read_reply(&mut reader, raw.starts_with("HEAD")).await
    }

    #[tokio::test]
    async fn metrics_index_and_not_found_on_one_keep_alive_connection() {
        let addr = start(Some("tcp_tracer_up 1\n")).await;
        let mut reader = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        // A request split across writes (and so, typically, across reads).
        reader.get_mut().write_all(b"GET /metr").await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        reader.get_mut().write_all(b"ics HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
        let metrics = read_reply(&mut reader, false).await;
        assert_eq!(metrics.status, 200);
        assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4"));
        assert_eq!(metrics.body, "tcp_tracer_up 1\n");

        reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
        let index = read_reply(&mut reader, false).await;
        assert_eq!(index.status, 200);
        assert!(index.header("content-type").is_some_and(|v| v.starts_with("text/html")));
        assert!(index.body.contains("href=\"/metrics\""));

        reader
            .get_mut()
            .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let missing = read_reply(&mut reader, false).await;
        assert_eq!(missing.status, 404);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest))
            .await
            .expect("server closes after Connection: close")
            .expect("read to end");
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn head_query_strings_and_wrong_methods() {
        let addr = start(Some("x 1\n")).await;
        let head =
            request(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(head.status, 200);
        let query =
            request(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
        assert_eq!((query.status, query.body.as_str()), (200, "x 1\n"));
        let post = request(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
    }

    #[tokio::test]
    async fn oversized_request_headers_are_refused() {
        let addr = start(Some("x 1\n")).await;
        let huge =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before reading everything: a failed write is fine.
        let _ = stream.write_all(huge.as_bytes()).await;
        let mut reader = BufReader::new(stream);
        let reply = read_reply(&mut reader, false).await;
        assert_eq!(reply.status, 431);
    }

    #[tokio::test]
    async fn no_event_loop_means_503() {
        let addr = start(None).await;
        let reply =
            request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("shutting down"));
    }

    #[tokio::test]
    async fn bind_errors_name_the_address_and_the_fix() {
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind loopback");
        let addr = taken.local_addr().expect("local addr");
        let err = bind(addr).expect_err("address in use");
        assert!(matches!(err, BindError::InUse { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&addr.to_string()) && message.contains("--metrics-addr"),
            "{message}"
        );

        // TEST-NET-1: never an address of this host (bind only, nothing is sent).
        let foreign = SocketAddr::from(([192, 0, 2, 1], 0));
        let err = bind(foreign).expect_err("not local");
        assert!(matches!(err, BindError::NotLocal { .. }), "{err:?}");
        assert!(err.to_string().contains("--metrics-addr"));
    }

    /// curl's response headers and status code for `url`, with extra arguments (off the test's
    /// runtime thread, which serves the request); status 0 when no HTTP exchange happened.
    async fn curl(url: String, args: Vec<String>) -> (String, u16) {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-s", "-D", "-", "-o", "/dev/null", "-w", "\n%{http_code}"])
                .args(["--max-time", "10"])
                .args(&args)
                .arg(&url)
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let status = text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
            (text, status)
        })
        .await
        .expect("curl task")
    }

    async fn curl_status(url: String, args: Vec<String>) -> u16 {
        curl(url, args).await.1
    }

    #[tokio::test]
    async fn tls_and_basic_auth_from_a_web_config() {
        use super::super::web_config::tests::{self_signed, temp_dir};
        let dir = temp_dir("webcfg-serve");
        let (cert, _) = self_signed(&dir, "server");
        let (other_ca, _) = self_signed(&dir, "other");
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let config = dir.join("web.yml");
        std::fs::write(
            &config,
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
                 basic_auth_users:\n  prometheus: {hash}\n"
            ),
        )
        .expect("write web config");
        let web = WebConfig::load(&config).expect("valid web config");

        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, mut rx) = mpsc::channel::<Scrape>(4);
        tokio::spawn(async move {
            while let Some(scrape) = rx.recv().await {
                let _ = scrape.reply.send("x 1\n".to_owned());
            }
        });
        tokio::spawn(serve(listener, tx, web));

        let https = format!("https://127.0.0.1:{}/metrics", addr.port());
        let trusted = ["--cacert".to_owned(), cert.display().to_string()];
        let with = |extra: &[&str]| {
            trusted.iter().cloned().chain(extra.iter().map(|s| (*s).to_owned())).collect()
        };
        assert_eq!(curl_status(https.clone(), with(&["-u", "prometheus:secret"])).await, 200);
        assert_eq!(curl_status(https.clone(), with(&[])).await, 401, "no credentials");
        assert_eq!(curl_status(https.clone(), with(&["-u", "prometheus:wrong"])).await, 401);
        assert_eq!(curl_status(https.clone(), with(&["-u", "nobody:secret"])).await, 401);
        // A certificate the client does not trust, and plain HTTP: no HTTP exchange at all.
        let untrusted = vec!["--cacert".to_owned(), other_ca.display().to_string()];
        assert_eq!(curl_status(https.clone(), untrusted).await, 0);
        let http = format!("http://127.0.0.1:{}/metrics", addr.port());
        assert_eq!(curl_status(http, vec!["-u".into(), "prometheus:secret".into()]).await, 0);

        // The 401 asks for basic credentials.
        let (head, _) = curl(https, with(&[])).await;
        let head = head.to_ascii_lowercase();
        assert!(head.contains("www-authenticate: basic realm=\"tracer\""), "{head}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bind_needs_no_runtime() {
        // The daemon binds before any thread starts (it may fork the server off then).
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        assert!(listener.local_addr().is_ok_and(|a| a.ip().is_loopback()));
    }

    #[test]
    fn default_address_is_loopback() {
        assert!(DEFAULT_METRICS_ADDR.ip().is_loopback());
        assert_eq!(DEFAULT_METRICS_ADDR.port(), DEFAULT_METRICS_PORT);
    }
}
