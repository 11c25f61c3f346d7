//! The load generator: loopback TCP churn from several threads of this process.
//!
//! Each worker owns a listener and runs whole connections itself (connect, accept, one request
//! and reply, close): on loopback the handshake completes inside `connect()`, so no thread ever
//! waits on another and the rate is bounded by CPU alone, which is what a tracer competes for.
//! The server side closes first, so TIME_WAIT lands on the listener's side and the client's
//! ephemeral ports are free again at once (no port exhaustion at 100k connections/s); each
//! worker's own listener port keeps the workers' 4-tuples apart.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn loopback(self) -> SocketAddr {
        match self {
            Family::V4 => (Ipv4Addr::LOCALHOST, 0).into(),
            Family::V6 => (Ipv6Addr::LOCALHOST, 0).into(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub family: Family,
    pub threads: usize,
    pub duration: Duration,
    /// Connections per second over all threads; `None`: as fast as possible.
    pub rate: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub connections: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub latency: Histogram,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Connection times (connect to close), in log-spaced buckets: 8 per power of two, ~9% wide.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
}

const SUB_BUCKETS: f64 = 8.0;

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; 64 * SUB_BUCKETS as usize] }
    }
}

impl Histogram {
    fn record(&mut self, d: Duration) {
        let ns = d.as_nanos().max(1) as f64;
        let i = ((ns.log2() * SUB_BUCKETS) as usize).min(self.counts.len() - 1);
        self.counts[i] += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket.
    pub fn quantile(&self, q: f64) -> Duration {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(2f64.powf((i + 1) as f64 / SUB_BUCKETS) as u64);
            }
        }
        Duration::ZERO
    }
}

/// Runs the load for `spec.duration` and returns what it achieved.
pub fn run(spec: &LoadSpec) -> Result<LoadResult> {
    let threads = spec.threads.max(1);
    // Bind every listener before the clock starts, so a bind failure is reported, not measured.
    let listeners: Vec<TcpListener> = (0..threads)
        .map(|_| {
            TcpListener::bind(spec.family.loopback())
                .with_context(|| format!("binding a {} loopback listener", spec.family.name()))
        })
        .collect::<Result<_>>()?;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let interval = spec.rate.map(|r| Duration::from_secs_f64(threads as f64 / r.max(1.0)));
    let duration = spec.duration;
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                worker(listener, duration, interval)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut total = LoadResult::default();
    for h in handles {
        let r = h.join().map_err(|_| anyhow!("a load thread panicked"))??;
        total.connections += r.connections;
        total.errors += r.errors;
        total.first_error = total.first_error.or(r.first_error);
        total.latency.merge(&r.latency);
    }
    total.elapsed = start.elapsed();
    if total.connections == 0 {
        return Err(anyhow!(
            "the {} load made no connection: {}",
            spec.family.name(),
            total.first_error.as_deref().unwrap_or("no error reported")
        ));
    }
    Ok(total)
}

fn worker(
    listener: TcpListener,
    duration: Duration,
    interval: Option<Duration>,
) -> Result<LoadResult> {
    let target = listener.local_addr().context("listener address")?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut next = start;
    let mut out = LoadResult::default();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(interval) = interval {
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            // A worker that fell far behind (the machine was busy) does not burst to catch up.
            let now = Instant::now();
            if now > next + Duration::from_millis(100) {
                next = now;
            }
        }
        let t0 = Instant::now();
        match one_connection(&listener, target) {
            Ok(()) => {
                out.connections += 1;
                out.latency.record(t0.elapsed());
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
                // Most likely out of ports or descriptors: give the kernel a moment.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// connect, accept, request, reply, server close, client reads to EOF and closes.
fn one_connection(listener: &TcpListener, target: SocketAddr) -> Result<()> {
    let mut client = TcpStream::connect(target).context("connect")?;
    let (mut server, _) = listener.accept().context("accept")?;
    let mut buf = [0u8; 16];
    client.write_all(b"ping\n").context("client write")?;
    server.read_exact(&mut buf[..5]).context("server read")?;
    server.write_all(b"pong\n").context("server write")?;
    drop(server);
    client.read_exact(&mut buf[..5]).context("client read")?;
    // Wait for the server's FIN, so the client closes from CLOSE_WAIT and never holds a port in
    // TIME_WAIT.
    let n = client.read(&mut buf).context("client read EOF")?;
    if n != 0 {
        return Err(anyhow!("unexpected {n} bytes after the reply"));
    }
    Ok(())
}
