//! The tracers under test, as child processes: the `tracer run` daemon and the bpftrace reference.
use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::procfs;

/// A `tracer run` daemon on a private socket.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    bin: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `tracer run --probe <mode>` and waits until it answers `status`; the error carries
    /// the daemon's own explanation when it exits instead (a mode this kernel cannot load).
    pub fn start(bin: &Path, mode: &str, dir: &Path) -> Result<Self> {
        Self::start_with(bin, mode, &[], dir)
    }

    /// Starts the daemon with extra `tracer run` flags.
    pub fn start_with(bin: &Path, mode: &str, extra: &[String], dir: &Path) -> Result<Self> {
        let socket = dir.join("t.sock");
        // One log per variant, so that a variant's run does not overwrite the plain run's log
        // (path arguments flattened: a file name has no `/`).
        let variant: String = extra
            .iter()
            .map(|a| a.trim_start_matches('-').replace('/', "_"))
            .collect::<Vec<_>>()
            .join("_");
        // Another build (`--baseline-bin`) logs apart too.
        let build = if bin.file_name().is_some_and(|n| n == "tracer") { "" } else { "-baseline" };
        let log = dir.join(if variant.is_empty() {
            format!("daemon-{mode}{build}.log")
        } else {
            format!("daemon-{mode}{build}-{variant}.log")
        });
        let _ = std::fs::remove_file(&socket);
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args([
                "run",
                "--probe",
                mode,
                "--metrics-addr",
                "127.0.0.1:0",
                "--summary-interval",
                "0",
            ])
            .args(extra)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let pid = child.id();
        let mut daemon = Self { child: Some(child), pid, bin: bin.to_owned(), socket, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if daemon.status().is_ok() {
                return Ok(daemon);
            }
            if let Some(child) = daemon.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                daemon.child = None;
                bail!("exited with {status}: {}", last_line(&daemon.log_text()));
            }
            if Instant::now() > deadline {
                bail!("did not answer `status` within 60 s: {}", last_line(&daemon.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tracer <args> --socket <ours>`: wall time and the bytes it printed.
    pub fn timed_cli(&self, args: &[&str]) -> Result<(Duration, Vec<u8>)> {
        let start = Instant::now();
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running tracer {}", args.join(" ")))?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            bail!(
                "tracer {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((elapsed, out.stdout))
    }

    /// A `tracer trace --json` subscriber reading every record into /dev/null (the live
    /// stream's cost: the daemon builds and queues a record per transition for it).
    pub fn subscribe(&self) -> Result<Child> {
        let before = self.status()?["trace"]["subscribers"].as_u64().unwrap_or(0);
        let child = Command::new(&self.bin)
            .args(["trace", "--json", "--states", "--socket"])
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tracer trace")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status()?["trace"]["subscribers"].as_u64().unwrap_or(0) <= before {
            if Instant::now() > deadline {
                bail!("the trace subscriber did not subscribe within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    pub fn status(&self) -> Result<serde_json::Value> {
        let (_, out) = self.timed_cli(&["status", "--json"])?;
        serde_json::from_slice(&out).context("parsing `tracer status --json`")
    }

    /// Waits until the daemon has taken in everything the kernel emitted (received plus lost
    /// reaches emitted, or stops moving) and returns that status.
    pub fn wait_drained(&self, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut last_total = u64::MAX;
        loop {
            let status = self.status()?;
            let total = field(&status, "events_total");
            let lost = field(&status, "events_lost");
            let emitted = field(&status, "events_emitted");
            if total + lost >= emitted || total == last_total || Instant::now() > deadline {
                return Ok(status);
            }
            last_total = total;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address /metrics is served on, from `status`.
    pub fn metrics_addr(&self) -> Result<String> {
        let status = self.status()?;
        status["metrics_addr"]
            .as_str()
            .map(str::to_owned)
            .context("`tracer status --json` has no metrics_addr: was the daemon started with --metrics-addr?")
    }

    /// SIGTERM, then waits for the clean exit (SIGKILL after 30 s).
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if !stop_child(&mut child, libc::SIGTERM, Duration::from_secs(30))? {
            eprintln!(
                "bench: warning: tracer run ignored SIGTERM for 30 s and was killed: {}",
                last_line(&self.log_text())
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10));
        }
    }
}

/// The bpftrace reference (`tcplife.bt`), printing to /dev/null.
pub struct Bpftrace {
    child: Option<Child>,
    pub pid: u32,
    log: PathBuf,
}

impl Bpftrace {
    pub fn start(script: &Path, dir: &Path) -> Result<Self> {
        let log = dir.join("bpftrace.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("bpftrace")
            .arg("-o")
            .arg("/dev/null")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting bpftrace (Debian package `bpftrace`)")?;
        let pid = child.id();
        let mut bt = Self { child: Some(child), pid, log };
        // Its "Attaching N probes" goes to /dev/null with the rest, so watch its descriptors: one
        // perf event per CPU for output, then one more once the tracepoint is attached.
        let wanted = online_cpus() + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if procfs::anon_fds(pid, "[perf_event]").len() >= wanted {
                // Let it finish attaching (the END probe) before the load starts.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(bt);
            }
            if let Some(child) = bt.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bt.child = None;
                let log = std::fs::read_to_string(&bt.log).unwrap_or_default();
                bail!("bpftrace exited with {status}: {}", log.trim());
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT (bpftrace runs its END probe and exits); killed if it has not exited after 3 s
    /// (bpftrace 0.17 sometimes keeps waiting in epoll_wait after SIGINT),
    /// so that no stray instance stays attached during later runs.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let wchan =
            std::fs::read_to_string(format!("/proc/{}/wchan", self.pid)).unwrap_or_default();
        if !stop_child(&mut child, libc::SIGINT, Duration::from_secs(3))? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "bench: warning: bpftrace ignored SIGINT for 3 s (waiting in {wchan:?}) and was killed: {}",
                last_line(&log)
            );
        }
        Ok(())
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = stop_child(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
    }
}

/// Sends `signal` and waits; true if the child exited on its own, false if it had to be killed.
fn stop_child(child: &mut Child, signal: i32, grace: Duration) -> Result<bool> {
    if child.try_wait()?.is_some() {
        return Ok(true);
    }
    // SAFETY: signalling our own child, which has not been reaped (try_wait said so).
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().context("killing a child")?;
    child.wait().context("reaping a child")?;
    Ok(false)
}

/// Number of online CPUs (/sys/devices/system/cpu/online, e.g. "0-1,4").
pub fn online_cpus() -> usize {
    let mut text = String::new();
    if File::open("/sys/devices/system/cpu/online")
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    }
    text.trim()
        .split(',')
        .filter_map(|range| match range.split_once('-') {
            Some((a, b)) => {
                Some(b.parse::<usize>().ok()?.saturating_sub(a.parse::<usize>().ok()?) + 1)
            }
            None => range.parse::<usize>().ok().map(|_| 1),
        })
        .sum::<usize>()
        .max(1)
}

pub fn field(value: &serde_json::Value, name: &str) -> u64 {
    value[name].as_u64().unwrap_or(0)
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").trim().to_owned()
}

/// One HTTP GET of /metrics: wall time and body size.
pub fn scrape(addr: &str) -> Result<(Duration, usize)> {
    use std::io::Write;
    let start = Instant::now();
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).context("reading the /metrics response")?;
    let elapsed = start.elapsed();
    let head_end =
        response.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("/metrics answered {}", head.lines().next().unwrap_or(""));
    }
    Ok((elapsed, response.len() - head_end - 4))
}
