//! The scale scenario: many tracked sockets held by a few processes, then thousands of processes,
//! with the daemon's memory and the latency of its queries at that size.
//!
//! The sockets live in forked children so that they have real owners and the harness itself
//! stays small (a later fork must not copy 100,000 descriptors). Children run only raw,
//! async-signal-safe syscalls between fork and _exit (no allocation, no locks, no unwinding),
//! die with the harness (PR_SET_PDEATHSIG), and are killed and reaped by [`Children`]'s Drop.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    procfs,
    tracers::{Daemon, field, scrape},
};

/// Connections per holder process at most: well under the ~28,000 ephemeral ports available
/// towards each listener, since each holder listens on its own 127.x address. Fewer when the
/// descriptor limit is lower (without CAP_SYS_RESOURCE the hard limit cannot be raised).
const CONNS_PER_HOLDER: usize = 12_500;
/// Descriptors a child needs besides its sockets.
const SPARE_FDS: u64 = 64;

/// The RLIMIT_NOFILE children can set: `want`, or the hard limit if it cannot be raised that far.
fn nofile_limit(want: u64) -> u64 {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on stack values.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) != 0 {
            return 1024;
        }
        if current.rlim_max >= want {
            return want;
        }
        let raised = libc::rlimit { rlim_cur: current.rlim_cur, rlim_max: want };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
    }
    current.rlim_max
}

#[derive(Clone, Copy, Debug)]
pub struct ScaleSpec {
    /// Loopback connections held (each is two tracked sockets).
    pub connections: usize,
    /// Extra processes holding one connection each, in the second step.
    pub processes: usize,
    /// Repetitions of each timed query.
    pub repeats: usize,
    /// Also ask `tracer stacks` about every holder after the first step (the stack part of the
    /// bench: how many held sockets have their opener stack).
    pub count_stacks: bool,
    /// Also price the pool-health scans after the first step: two leak evaluations' dumps
    /// (about 30 s at the default 15 s interval).
    pub health_cost: bool,
}

/// What the pool-health dumps (sock_diag with tcp_info, one per leak evaluation) cost while
/// the first step's sockets are held and nothing else happens.
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthCost {
    /// Wall time of the latest dump (`health_scan_us`), microseconds.
    pub scan_us: u64,
    /// Dumps over the measured span.
    pub scans: u64,
    /// The idle daemon's CPU over that span (every thread: the dumps, their matching on the
    /// event loop, timers), as a share of one core.
    pub daemon_core_share: f64,
    /// The span, seconds: from one dump's landing to a later one's.
    pub span_s: f64,
}

/// Median and maximum of a timed query, with the size of its answer.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub median: Duration,
    pub max: Duration,
    pub bytes: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ScaleStep {
    pub label: String,
    pub tracked: u64,
    pub processes: u64,
    pub rss_delta: i64,
    pub bytes_per_socket: f64,
    pub hwm: u64,
    pub top: Latency,
    pub conns: Latency,
    pub conns_rows: usize,
    pub metrics: Latency,
    pub events_lost: u64,
    /// Where the daemon's RSS is (smaps_rollup), in bytes.
    pub smaps: Vec<(String, u64)>,
    /// With `count_stacks`: the holders' sockets in a stack group, and those whose stack was
    /// wanted but is missing (lost in the kernel), from `tracer stacks PID --json`.
    pub stacks_held: Option<(u64, u64)>,
    /// With `health_cost`.
    pub health: Option<HealthCost>,
}

/// Forked children, killed and reaped on drop.
#[derive(Default)]
struct Children(Vec<libc::pid_t>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: our own children, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

/// A child's report on the ready pipe: ok, or which step failed with which errno.
#[repr(C)]
#[derive(Clone, Copy)]
struct Report {
    ok: u8,
    step: u8,
    _pad: [u8; 2],
    errno: i32,
}

const STEP_NAMES: [&str; 8] =
    ["ok", "setrlimit", "socket", "bind", "listen", "connect", "accept", "getsockname"];

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, each owned once below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn loopback(a: u8, b: u8, c: u8, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, a, b, c]).to_be() },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

// ---- code that runs in forked children: raw syscalls only ----

/// Writes the report and exits; never returns.
unsafe fn child_exit(ready: i32, step: u8) -> ! {
    // SAFETY: (whole fn) async-signal-safe calls on a stack value.
    unsafe {
        let errno = *libc::__errno_location();
        let r = Report { ok: u8::from(step == 0), step, _pad: [0; 2], errno };
        libc::write(ready, (&raw const r).cast(), std::mem::size_of::<Report>());
        if step != 0 {
            libc::_exit(1);
        }
        loop {
            libc::pause();
        }
    }
}

unsafe fn child_setup(ready: i32, nofile: u64) {
    // SAFETY: (whole fn) async-signal-safe calls.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
        if nofile > 0 && libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            child_exit(ready, 1);
        }
    }
}

/// Listens on `addr` and makes `n` connections to itself, holding both ends.
unsafe fn holder_main(ready: i32, addr: libc::sockaddr_in, n: usize, nofile: u64) -> ! {
    // SAFETY: (whole fn) raw syscalls on stack values.
    unsafe {
        child_setup(ready, nofile);
        let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if l < 0 {
            child_exit(ready, 2);
        }
        if libc::bind(l, (&raw const addr).cast(), SOCKADDR_LEN) != 0 {
            child_exit(ready, 3);
        }
        if libc::listen(l, 1024) != 0 {
            child_exit(ready, 4);
        }
        let mut bound = addr;
        let mut len = SOCKADDR_LEN;
        if libc::getsockname(l, (&raw mut bound).cast(), &mut len) != 0 {
            child_exit(ready, 7);
        }
        for _ in 0..n {
            let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if c < 0 {
                child_exit(ready, 2);
            }
            if libc::connect(c, (&raw const bound).cast(), SOCKADDR_LEN) != 0 {
                child_exit(ready, 5);
            }
            if libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) < 0 {
                child_exit(ready, 6);
            }
        }
        child_exit(ready, 0)
    }
}

/// Accepts `n` connections on the inherited listener and holds them.
unsafe fn acceptor_main(ready: i32, listener: i32, n: usize, nofile: u64) -> ! {
    // SAFETY: (whole fn) raw syscalls.
    unsafe {
        child_setup(ready, nofile);
        for _ in 0..n {
            if libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) < 0 {
                child_exit(ready, 6);
            }
        }
        child_exit(ready, 0)
    }
}

/// Connects once to `addr` and holds the connection.
unsafe fn client_main(ready: i32, addr: libc::sockaddr_in) -> ! {
    // SAFETY: (whole fn) raw syscalls on stack values.
    unsafe {
        child_setup(ready, 0);
        let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if c < 0 {
            child_exit(ready, 2);
        }
        if libc::connect(c, (&raw const addr).cast(), SOCKADDR_LEN) != 0 {
            child_exit(ready, 5);
        }
        child_exit(ready, 0)
    }
}

// ---- parent side ----

/// Forks a child running `body`, which must exit rather than return.
fn fork(children: &mut Children, body: impl FnOnce()) -> Result<libc::pid_t> {
    // SAFETY: the child only runs `body`, which makes raw async-signal-safe syscalls and exits.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            body();
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        pid => {
            children.0.push(pid);
            Ok(pid)
        }
    }
}

/// Reads `count` reports from `ready` within `timeout`; fails on the first child that failed.
fn await_reports(ready: &OwnedFd, count: usize, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let size = std::mem::size_of::<Report>();
    let mut buf = vec![0u8; size * 256];
    let mut pending = Vec::new();
    let mut got = 0;
    while got < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{what}: only {got} of {count} children were ready after {timeout:?}");
        }
        let mut pfd = libc::pollfd { fd: ready.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on the stack.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if rc <= 0 {
            continue;
        }
        // SAFETY: reading into our buffer, at most its length.
        let n = unsafe { libc::read(ready.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            bail!("{what}: the ready pipe closed after {got} of {count} children");
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while pending.len() >= size {
            let record: Vec<u8> = pending.drain(..size).collect();
            // SAFETY: Report is plain data and `record` holds exactly its size.
            let r = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<Report>()) };
            if r.ok != 1 {
                let step = STEP_NAMES.get(r.step as usize).copied().unwrap_or("?");
                bail!(
                    "{what}: a child failed at {step}: {}",
                    std::io::Error::from_raw_os_error(r.errno)
                );
            }
            got += 1;
        }
    }
    Ok(())
}

/// Polls `status` until `done` holds over it (or fails after `timeout`).
fn wait_status(
    daemon: &Daemon,
    timeout: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = daemon.status()?;
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not reached after {timeout:?} (tracked_connections={}, processes={})",
                field(&status, "tracked_connections"),
                field(&status, "processes")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn timed(repeats: usize, mut once: impl FnMut() -> Result<(Duration, usize)>) -> Result<Latency> {
    // One untimed call first: the first one pays for page cache and lazy allocations.
    once()?;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeats.max(1) {
        let (t, b) = once()?;
        times.push(t);
        bytes = b;
    }
    times.sort();
    Ok(Latency { median: times[times.len() / 2], max: times[times.len() - 1], bytes })
}

fn measure(
    daemon: &Daemon,
    spec: &ScaleSpec,
    label: &str,
    conns_pid: libc::pid_t,
    base_rss: u64,
    base_tracked: u64,
) -> Result<ScaleStep> {
    let status = daemon.status()?;
    let tracked = field(&status, "tracked_connections");
    let rss = procfs::status_bytes(daemon.pid, "VmRSS")?;
    let rss_delta = rss as i64 - base_rss as i64;
    let sockets = tracked.saturating_sub(base_tracked).max(1);
    let pid = conns_pid.to_string();
    let mut conns_rows = 0;
    let metrics_addr = daemon.metrics_addr()?;
    let top =
        timed(spec.repeats, || daemon.timed_cli(&["top", "--json"]).map(|(t, o)| (t, o.len())))?;
    let conns = timed(spec.repeats, || {
        let (t, out) = daemon.timed_cli(&["conns", "--pid", &pid, "--json"])?;
        let value: serde_json::Value =
            serde_json::from_slice(&out).context("parsing `tracer conns --json`")?;
        conns_rows = value["connections"].as_array().map_or(0, Vec::len);
        Ok((t, out.len()))
    })?;
    let metrics = timed(spec.repeats, || scrape(&metrics_addr))?;
    Ok(ScaleStep {
        label: label.to_owned(),
        tracked,
        processes: field(&status, "processes"),
        rss_delta,
        bytes_per_socket: rss_delta as f64 / sockets as f64,
        hwm: procfs::status_bytes(daemon.pid, "VmHWM")?,
        top,
        conns,
        conns_rows,
        metrics,
        events_lost: field(&status, "events_lost"),
        smaps: procfs::smaps_rollup(daemon.pid),
        stacks_held: None,
        health: None,
    })
}

/// Waits for a dump to land, then for `scans` more, and prices the span between: the daemon's
/// CPU (all threads) per second of it, and the latest dump's duration.
fn health_cost(daemon: &Daemon, scans: u64) -> Result<HealthCost> {
    let interval = Duration::from_secs(60);
    let first = field(&daemon.status()?, "health_scans");
    let start =
        wait_status(daemon, interval, "a pool-health dump", |s| field(s, "health_scans") > first)?;
    let (cpu0, t0) = (procfs::process_cpu_ns(daemon.pid)?, Instant::now());
    let base = field(&start, "health_scans");
    let end = wait_status(daemon, interval * scans as u32, "more pool-health dumps", |s| {
        field(s, "health_scans") >= base + scans
    })?;
    let (cpu1, span) = (procfs::process_cpu_ns(daemon.pid)?, t0.elapsed());
    Ok(HealthCost {
        scan_us: field(&end, "health_scan_us"),
        scans: field(&end, "health_scans") - base,
        daemon_core_share: cpu1.saturating_sub(cpu0) as f64 / span.as_nanos().max(1) as f64,
        span_s: span.as_secs_f64(),
    })
}

/// (sockets in a stack group, sockets whose stack is missing) over the holders. Asked after the
/// memory was read: the answer symbolizes the holders' stacks, which costs memory of its own.
fn holder_stacks(daemon: &Daemon, pids: &[libc::pid_t]) -> Result<(u64, u64)> {
    let (mut held, mut missing) = (0, 0);
    for pid in pids {
        let (_, out) = daemon.timed_cli(&["stacks", &pid.to_string(), "--json"])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out).context("parsing `tracer stacks --json`")?;
        held += v["groups"]
            .as_array()
            .map_or(0, |groups| groups.iter().map(|g| field(g, "count")).sum::<u64>());
        missing += field(&v, "stack_missing");
    }
    Ok((held, missing))
}

/// Runs both steps against a fresh daemon; the daemon is stopped by the caller.
pub fn run(daemon: &Daemon, spec: &ScaleSpec) -> Result<Vec<ScaleStep>> {
    // Let start-up (probe load, initial scan) settle before taking the baseline, and cycle the
    // ring buffer once with short connections: its pages become resident as events pass through
    // them, a fixed cost (--ring-bytes) that is not memory per tracked socket.
    std::thread::sleep(Duration::from_secs(1));
    let warm_up = super::load::LoadSpec {
        family: super::load::Family::V4,
        threads: 2,
        duration: Duration::from_secs(1),
        rate: None,
    };
    super::load::run(&warm_up).context("warm-up churn before the scale baseline")?;
    let base = daemon.wait_drained(Duration::from_secs(10))?;
    let base_tracked = field(&base, "tracked_connections");
    let base_processes = field(&base, "processes");
    let base_rss = procfs::status_bytes(daemon.pid, "VmRSS")?;
    let mut children = Children::default();
    let mut steps = Vec::new();

    // Step 1: the connections, held by a few processes, each listening on its own address.
    let limit = nofile_limit(2 * CONNS_PER_HOLDER as u64 + SPARE_FDS);
    let per_holder = CONNS_PER_HOLDER.min(((limit.saturating_sub(SPARE_FDS)) / 2) as usize).max(1);
    let holders = spec.connections.div_ceil(per_holder).max(1);
    if holders > 150 {
        bail!(
            "RLIMIT_NOFILE allows only {limit} descriptors per process: too many holder processes would be needed"
        );
    }
    let (ready_r, ready_w) = pipe()?;
    let mut holder_pids = Vec::new();
    let mut left = spec.connections;
    for i in 0..holders {
        let n = left.min(spec.connections.div_ceil(holders));
        left -= n;
        let addr = loopback(10, i as u8 + 1, 1, 0);
        let w = ready_w.as_raw_fd();
        // SAFETY: holder_main only makes raw syscalls and exits.
        let pid = fork(&mut children, || unsafe { holder_main(w, addr, n, limit) })?;
        holder_pids.push(pid);
    }
    let started = Instant::now();
    await_reports(&ready_r, holders, Duration::from_secs(300), "holders")?;
    let want = base_tracked + 2 * spec.connections as u64;
    wait_status(daemon, Duration::from_secs(120), "tracking every held socket", |s| {
        field(s, "tracked_connections") >= want
    })?;
    eprintln!(
        "bench: scale: {} connections ({} sockets) in {} processes, tracked after {:.1} s",
        spec.connections,
        2 * spec.connections,
        holders,
        started.elapsed().as_secs_f64()
    );
    let label = format!(
        "{} sockets in {} holder processes",
        super::report::thousands(2 * spec.connections as u64),
        holders
    );
    let mut step = measure(daemon, spec, &label, holder_pids[0], base_rss, base_tracked)?;
    if spec.count_stacks {
        step.stacks_held = Some(holder_stacks(daemon, &holder_pids)?);
    }
    if spec.health_cost {
        let cost = health_cost(daemon, 2)?;
        eprintln!(
            "bench: scale: pool-health dump {:.0} ms at {} sockets; idle daemon {:.2}% of a core over {:.0} s ({} dumps)",
            cost.scan_us as f64 / 1e3,
            step.tracked,
            100.0 * cost.daemon_core_share,
            cost.span_s,
            cost.scans
        );
        step.health = Some(cost);
    }
    steps.push(step);

    // Step 2: many processes, each holding one connection accepted by one more process.
    if spec.processes > 0 {
        // SAFETY: socket() has no preconditions; the descriptor is owned once.
        let listener =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if listener < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        // SAFETY: a fresh descriptor.
        let listener = unsafe { OwnedFd::from_raw_fd(listener) };
        let mut addr = loopback(10, 200, 1, 0);
        let mut len = SOCKADDR_LEN;
        // SAFETY: plain socket calls on stack values.
        unsafe {
            if libc::bind(listener.as_raw_fd(), (&raw const addr).cast(), SOCKADDR_LEN) != 0
                || libc::listen(listener.as_raw_fd(), 4096) != 0
                || libc::getsockname(listener.as_raw_fd(), (&raw mut addr).cast(), &mut len) != 0
            {
                return Err(std::io::Error::last_os_error())
                    .context("listener for the process step");
            }
        }
        let (acc_r, acc_w) = pipe()?;
        let (l, w) = (listener.as_raw_fd(), acc_w.as_raw_fd());
        let nofile = nofile_limit(spec.processes as u64 + SPARE_FDS);
        // SAFETY: acceptor_main only makes raw syscalls and exits.
        fork(&mut children, || unsafe { acceptor_main(w, l, spec.processes, nofile) })?;
        // Later children must not inherit the listener.
        drop(listener);
        let started = Instant::now();
        for _ in 0..spec.processes {
            let w = ready_w.as_raw_fd();
            // SAFETY: client_main only makes raw syscalls and exits.
            fork(&mut children, || unsafe { client_main(w, addr) })?;
        }
        await_reports(&ready_r, spec.processes, Duration::from_secs(300), "client processes")?;
        await_reports(&acc_r, 1, Duration::from_secs(120), "acceptor")?;
        let want_tracked = want + 2 * spec.processes as u64;
        let want_processes = base_processes + holders as u64 + 1 + spec.processes as u64;
        wait_status(daemon, Duration::from_secs(120), "tracking every process", |s| {
            field(s, "tracked_connections") >= want_tracked
                && field(s, "processes") >= want_processes
        })?;
        eprintln!(
            "bench: scale: {} more processes with one connection each, tracked after {:.1} s",
            spec.processes,
            started.elapsed().as_secs_f64()
        );
        let label = format!(
            "+ {} processes with 1 connection each",
            super::report::thousands(spec.processes as u64)
        );
        steps.push(measure(daemon, spec, &label, holder_pids[0], base_rss, base_tracked)?);
    }
    drop(children);
    Ok(steps)
}
