//! Soak: seeded randomized churn for minutes, checked against the kernel's own view at regular
//! checkpoints. Worker processes churn (connect, write, close), leak (hold connections),
//! reset (SO_LINGER 0), half-close, get refused, hand sockets to forked holder children (so a
//! connection has several holders, or only a holder the daemon never saw open it) and exit,
//! cleanly or by SIGKILL, while holding connections; holder children outlive their parents and
//! are killed too. At each checkpoint the workers pause and every connection of a tracked
//! process must agree with ground truth:
//!
//! - every socket `ss -tanpe` shows with a tracked holder is open in the daemon, owned by one
//!   of the holders `ss` names, and the daemon has no open connection of a tracked process
//!   that `ss` does not show held (a socket several processes hold counts once, for one of
//!   them: docs/semantics.md, "Holders");
//! - sockets held by tracked processes that `ss` cannot see (reset by the peer, or closed by
//!   the peer after a half-close: no longer in the kernel's lookup tables, still a descriptor
//!   in /proc/PID/fd) are the daemon's open connections that `ss` does not show;
//! - `tracer top`'s open count of each tracked process equals its connections in `tracer conns`;
//! - every reconcile correction is explained by a counted loss (`events_lost` or
//!   `program_misses_total`: runs the kernel skipped, or never made as tracefs counts them).
//!
//! The daemon's RSS is recorded at each checkpoint and must stay bounded. The seed is printed;
//! each worker's actions follow from it (the interleaving does not). Settings, from the
//! environment: `TRACER_SOAK_MINUTES` (default 2, the test command's version),
//! `TRACER_SOAK_SEED`, `TRACER_SOAK_CHECK_SECS` (default 20 under 5 minutes, else 60),
//! `TRACER_SOAK_WORKERS` (default 6), `TRACER_SOAK_REPORT` (a file for the Markdown report).
//! `cargo xtask soak --minutes N [--seed S]` sets them. Run as root.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    process::Command,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Daemon, Rng, Workload, num};
use serde_json::Value;

struct Config {
    minutes: f64,
    seed: u64,
    check_every: Duration,
    workers: usize,
    report: Option<std::path::PathBuf>,
}

fn config() -> Config {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let minutes: f64 =
        env("TRACER_SOAK_MINUTES").map_or(2.0, |v| v.parse().expect("TRACER_SOAK_MINUTES"));
    let seed = env("TRACER_SOAK_SEED").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        },
        |v| v.parse().expect("TRACER_SOAK_SEED is a number"),
    );
    let check_secs = env("TRACER_SOAK_CHECK_SECS")
        .map_or(if minutes < 5.0 { 20 } else { 60 }, |v| {
            v.parse().expect("TRACER_SOAK_CHECK_SECS")
        });
    let workers = env("TRACER_SOAK_WORKERS").map_or(6, |v| v.parse().expect("TRACER_SOAK_WORKERS"));
    Config {
        minutes,
        seed,
        check_every: Duration::from_secs(check_secs),
        workers: workers.max(1),
        report: env("TRACER_SOAK_REPORT").map(Into::into),
    }
}

/// Where workers connect.
struct Targets {
    echo: Vec<String>,
    hold: String,
    refused: String,
}

/// What the workers did, for the report.
#[derive(Default)]
struct Totals {
    opened: AtomicU64,
    resets: AtomicU64,
    forks: AtomicU64,
    exits: AtomicU64,
    kills: AtomicU64,
}

/// Processes whose connections are compared: alive, and those that ended since the previous
/// checkpoint (their connections must be gone).
#[derive(Default)]
struct Tracked {
    alive: BTreeSet<u32>,
    ended: BTreeSet<u32>,
}

struct Shared {
    /// Connections the workers may still open now (a token bucket of [`OPENS_PER_SECOND`]):
    /// each closed loopback client leaves a TIME_WAIT socket for 60 s, and this host's other
    /// users need ephemeral ports too.
    opens: Mutex<(f64, Instant)>,
    /// Holder children alive now: killed when the test ends, even by a panic.
    holders: Mutex<BTreeSet<u32>>,
    /// Workers act under a read lock; a checkpoint takes the write lock (all of them paused).
    gate: RwLock<()>,
    stop: AtomicBool,
    totals: Totals,
    tracked: Mutex<Tracked>,
    targets: Targets,
}

/// The rate of new connections, all workers together: 9,000 a minute at most, well inside the
/// ephemeral port range even with every one of them in TIME_WAIT.
const OPENS_PER_SECOND: f64 = 150.0;

impl Shared {
    /// Waits until `n` more connections may be opened.
    fn throttle(&self, n: u64) {
        loop {
            let wait = {
                let mut bucket = self.opens.lock().unwrap_or_else(|e| e.into_inner());
                let (tokens, since) = &mut *bucket;
                *tokens = (*tokens + since.elapsed().as_secs_f64() * OPENS_PER_SECOND)
                    .min(OPENS_PER_SECOND);
                *since = Instant::now();
                if *tokens >= n as f64 {
                    *tokens -= n as f64;
                    return;
                }
                (n as f64 - *tokens) / OPENS_PER_SECOND
            };
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
    fn started(&self, pid: u32) {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner()).alive.insert(pid);
    }
    fn ended(&self, pid: u32) {
        let mut t = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        t.alive.remove(&pid);
        t.ended.insert(pid);
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Churner,
    Leaker,
    Resetter,
    Forker,
    Exiter,
}

const KINDS: [Kind; 5] = [Kind::Churner, Kind::Leaker, Kind::Resetter, Kind::Forker, Kind::Exiter];

/// Most connections a worker holds before it must release some.
const MAX_HELD: u64 = 60;
/// Most live holder children per worker, and orphaned ones (parent gone) in all.
const MAX_CHILDREN: usize = 3;
const MAX_ORPHANS: usize = 8;

/// One worker process and what the test knows of it.
struct Worker {
    kind: Kind,
    process: Workload,
    held: u64,
    children: Vec<u32>,
}

/// Kills a holder child (once; a pid no longer listed may have been reused).
fn kill_holder(shared: &Shared, pid: u32) {
    if shared.holders.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid) {
        // SAFETY: a signal to a holder child this test created (by its worker's fork) and
        // has not killed yet: it waits in pause() until killed, so the pid is still its own.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    shared.ended(pid);
}

/// Kills every holder child left when dropped: the test's end, or a panic.
struct HolderReaper(Arc<Shared>);

impl Drop for HolderReaper {
    fn drop(&mut self) {
        let left: Vec<u32> =
            self.0.holders.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        for pid in left {
            kill_holder(&self.0, pid);
        }
    }
}

fn spawn_worker(kind: Kind, shared: &Shared) -> Worker {
    let process = Workload::spawn();
    shared.started(process.pid);
    Worker { kind, process, held: 0, children: Vec::new() }
}

/// A worker thread: random actions with random pauses until the soak stops; it hands back its
/// process, alive for the last checkpoint (holder children stay with the reaper).
fn drive(index: usize, seed: u64, shared: Arc<Shared>) -> Worker {
    let mut rng = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0x1000_0000_01B3));
    let kind = KINDS[index % KINDS.len()];
    let mut worker = spawn_worker(kind, &shared);
    let mut orphans: Vec<u32> = Vec::new();
    // Each worker has its own tempo: 5 to 150 ms between actions at most.
    let max_pause = 5 + rng.below(146);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.below(max_pause)));
        let _paused_by_checkpoints = shared.gate.read().unwrap_or_else(|e| e.into_inner());
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        act(&mut worker, &mut orphans, &mut rng, &shared);
    }
    worker
}

/// Weights of the actions, per kind: churn, connect to the holding server, connect to an echo
/// server, close, reset, half-close, refused connect, fork a holder, kill a holder, exit.
fn weights(kind: Kind) -> [u64; 10] {
    match kind {
        Kind::Churner => [40, 3, 5, 8, 2, 1, 6, 1, 1, 1],
        Kind::Leaker => [5, 30, 10, 6, 2, 2, 2, 2, 1, 1],
        Kind::Resetter => [5, 10, 15, 4, 25, 3, 2, 2, 1, 1],
        Kind::Forker => [5, 12, 8, 8, 3, 2, 2, 20, 10, 1],
        Kind::Exiter => [8, 15, 10, 4, 3, 2, 2, 4, 2, 8],
    }
}

fn act(worker: &mut Worker, orphans: &mut Vec<u32>, rng: &mut Rng, shared: &Shared) {
    let targets = &shared.targets;
    let totals = &shared.totals;
    let w = weights(worker.kind);
    let mut pick = rng.below(w.iter().sum());
    let mut action = 0;
    while pick >= w[action] {
        pick -= w[action];
        action += 1;
    }
    // Over the cap, release instead.
    if worker.held >= MAX_HELD && matches!(action, 1 | 2) {
        action = if rng.below(2) == 0 { 3 } else { 4 };
    }
    let echo = &targets.echo[rng.below(targets.echo.len() as u64) as usize];
    let p = &mut worker.process;
    match action {
        0 => {
            let n = rng.upto(20);
            shared.throttle(n);
            p.cmd(&format!("churn {echo} {n}"));
            totals.opened.fetch_add(n, Ordering::Relaxed);
        }
        1 | 2 => {
            let n = rng.upto(5);
            let to = if action == 1 { &targets.hold } else { echo };
            shared.throttle(n);
            p.connect(to, n as usize);
            worker.held += n;
            totals.opened.fetch_add(n, Ordering::Relaxed);
        }
        3..=5 if worker.held > 0 => {
            let n = rng.upto(worker.held.min(20));
            match action {
                3 => {
                    p.cmd(&format!("close {n}"));
                    worker.held -= n;
                }
                4 => {
                    p.cmd(&format!("reset {n}"));
                    worker.held -= n;
                    totals.resets.fetch_add(n, Ordering::Relaxed);
                }
                _ => {
                    // Fails on a socket the peer reset (ENOTCONN): nothing to model.
                    let _ = p.try_cmd(&format!("shutdown-wr {n}"));
                }
            }
        }
        6 => {
            p.cmd(&format!("connect-refused {} {}", targets.refused, rng.upto(3)));
        }
        7 if worker.held > 0 => {
            if worker.children.len() >= MAX_CHILDREN {
                let oldest = worker.children.remove(0);
                kill_holder(shared, oldest);
            }
            let n = rng.upto(worker.held.min(8));
            let child: u32 = p.cmd(&format!("fork-hold {n}")).parse().expect("holder pid");
            shared.holders.lock().unwrap_or_else(|e| e.into_inner()).insert(child);
            shared.started(child);
            worker.children.push(child);
            totals.forks.fetch_add(1, Ordering::Relaxed);
            // Often the parent lets go of its copies at once: the child is then their only
            // holder, one the daemon never saw open them.
            if rng.below(2) == 0 {
                p.cmd(&format!("close {n}"));
                worker.held -= n;
            }
        }
        8 if !worker.children.is_empty() => {
            let child = worker.children.remove(rng.below(worker.children.len() as u64) as usize);
            kill_holder(shared, child);
        }
        9 => {
            // Exit holding what it holds, cleanly or killed; its holder children live on.
            let fresh = spawn_worker(worker.kind, shared);
            let old = std::mem::replace(worker, fresh);
            let pid = old.process.pid;
            orphans.extend(old.children);
            if rng.below(2) == 0 {
                old.process.exit();
            } else {
                drop(old.process); // SIGKILL
                totals.kills.fetch_add(1, Ordering::Relaxed);
            }
            shared.ended(pid);
            totals.exits.fetch_add(1, Ordering::Relaxed);
            while orphans.len() > MAX_ORPHANS {
                let oldest = orphans.remove(0);
                kill_holder(shared, oldest);
            }
        }
        _ => {}
    }
}

/// One socket as `ss -tanpe` shows it.
#[derive(Debug)]
struct SsSocket {
    line: String,
    holders: BTreeSet<u32>,
}

/// Ground truth at one instant: the sockets `ss` shows held by processes, by `local remote`,
/// and the socket inodes each tracked process holds according to /proc.
struct Truth {
    held: HashMap<String, SsSocket>,
    /// Inodes of sockets held by tracked processes that `ss` does not show held (reset, or
    /// closed by the peer after a half-close), with their holders.
    hidden: BTreeMap<u64, BTreeSet<u32>>,
}

fn ground_truth(tracked: &BTreeSet<u32>) -> Truth {
    let out = Command::new("ss").args(["-tanpeH"]).output().expect("ss");
    let mut held = HashMap::new();
    let mut seen_inodes = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        let holders: BTreeSet<u32> = line
            .split("pid=")
            .skip(1)
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        if holders.is_empty() {
            continue; // TIME_WAIT, orphans, unaccepted: no process holds them
        }
        if let Some(inode) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ino:"))
            .and_then(|v| v.parse::<u64>().ok())
        {
            seen_inodes.insert(inode);
        }
        if matches!(fields[0], "LISTEN" | "SYN-SENT" | "SYN-RECV") {
            continue;
        }
        if holders.iter().any(|pid| tracked.contains(pid)) {
            held.insert(
                format!("{} {}", fields[3], fields[4]),
                SsSocket { line: line.to_owned(), holders },
            );
        }
    }
    let mut hidden: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for &pid in tracked {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if !seen_inodes.contains(&inode) {
                hidden.entry(inode).or_default().insert(pid);
            }
        }
    }
    Truth { held, hidden }
}

/// The daemon's view of the tracked processes: open connections by `local remote` with their
/// owner, state and holders, and `top`'s open counts.
struct View {
    conns: Vec<(String, u32, String, Value)>,
    top_open: BTreeMap<u32, u64>,
}

fn daemon_view(daemon: &Daemon, tracked: &BTreeSet<u32>) -> View {
    let conns = daemon.json(&["conns"]);
    let conns = conns["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["phase"] == "open")
        .filter_map(|c| {
            let pid = c["pid"].as_u64()? as u32;
            tracked.contains(&pid).then(|| {
                let key = format!(
                    "{} {}",
                    c["local"].as_str().unwrap_or("?"),
                    c["remote"].as_str().unwrap_or("?")
                );
                (key, pid, c["state"].as_str().unwrap_or("?").to_owned(), c["holders"].clone())
            })
        })
        .collect();
    let top = daemon.json(&["top"]);
    let top_open = top["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| {
            let pid = p["pid"].as_u64()? as u32;
            tracked.contains(&pid).then(|| (pid, p["open"].as_u64().unwrap_or(0)))
        })
        .collect();
    View { conns, top_open }
}

/// What one comparison found.
#[derive(Default)]
struct Comparison {
    visible: usize,
    shared: usize,
    hidden: usize,
    problems: Vec<String>,
}

fn compare(view: &View, truth: &Truth, tracked: &BTreeSet<u32>) -> Comparison {
    let mut c = Comparison {
        visible: truth.held.len(),
        shared: truth.held.values().filter(|s| s.holders.len() > 1).count(),
        hidden: truth.hidden.len(),
        problems: Vec::new(),
    };
    let mut matched = BTreeSet::new();
    let mut unseen_by_ss: BTreeMap<u32, u64> = BTreeMap::new();
    let mut per_pid: BTreeMap<u32, u64> = BTreeMap::new();
    // A reset socket a process still holds keeps its addresses: a new connection may reuse
    // them (loopback clients reuse ports quickly), so one key may name two of the daemon's
    // connections. The one not in state `close` is the one ss shows.
    let mut order: Vec<&(String, u32, String, Value)> = view.conns.iter().collect();
    order.sort_by_key(|(_, _, state, _)| state == "close");
    for (key, pid, state, holders) in order {
        *per_pid.entry(*pid).or_default() += 1;
        match truth.held.get(key).filter(|_| !matched.contains(key.as_str())) {
            Some(socket) => {
                matched.insert(key.as_str());
                if !socket.holders.contains(pid) {
                    c.problems.push(format!(
                        "{key}: daemon owner {pid} ({state}, holders {holders}) is not a holder \
                         in ss: {}",
                        socket.line
                    ));
                }
            }
            None => *unseen_by_ss.entry(*pid).or_default() += 1,
        }
    }
    for (key, socket) in &truth.held {
        if !matched.contains(key.as_str()) {
            c.problems.push(format!(
                "{key}: ss shows it held, the daemon has it not open: {}",
                socket.line
            ));
        }
    }
    // Connections ss cannot see: as many as the hidden sockets, none for a process that holds
    // no hidden socket.
    let hidden_of = |pid: u32| truth.hidden.values().filter(|h| h.contains(&pid)).count() as u64;
    let unseen_total: u64 = unseen_by_ss.values().sum();
    if unseen_total != truth.hidden.len() as u64 {
        let unseen: Vec<String> = view
            .conns
            .iter()
            .filter(|(k, _, state, _)| !truth.held.contains_key(k) || state == "close")
            .map(|(k, pid, state, _)| format!("{pid} {k} {state}"))
            .collect();
        let by_pid: BTreeMap<u32, usize> =
            truth.hidden.values().flatten().fold(BTreeMap::new(), |mut m, pid| {
                *m.entry(*pid).or_default() += 1;
                m
            });
        c.problems.push(format!(
            "the daemon has {unseen_total} open connection(s) ss does not show held (by pid \
             {unseen_by_ss:?}; the first: {}), the tracked processes hold {} socket(s) ss does \
             not show (by pid {by_pid:?}; the first inodes: {:?})",
            unseen.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            truth.hidden.len(),
            truth.hidden.keys().take(10).collect::<Vec<_>>()
        ));
    }
    for (&pid, &n) in &unseen_by_ss {
        if n > hidden_of(pid) {
            let unseen: Vec<String> = view
                .conns
                .iter()
                .filter(|(k, p, ..)| *p == pid && !truth.held.contains_key(k))
                .map(|(k, _, state, holders)| format!("{k} {state} holders {holders}"))
                .collect();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            c.problems.push(format!(
                "pid {pid}: {n} open connection(s) ss does not show ({}), it holds {} such \
                 socket(s); /proc/{pid}/stat: {}",
                unseen.join(", "),
                hidden_of(pid),
                comm.trim()
            ));
        }
    }
    for &pid in tracked {
        let top = view.top_open.get(&pid).copied().unwrap_or(0);
        let conns = per_pid.get(&pid).copied().unwrap_or(0);
        if top != conns {
            c.problems.push(format!("pid {pid}: top says open {top}, conns lists {conns}"));
        }
    }
    c
}

/// The holding server's sockets `ss` cannot see (reset), each with the peer accept() named,
/// that the daemon does not count, and what the daemon knows of that peer's address.
fn diagnose_hold(daemon: &Daemon, hold: &Mutex<Workload>, view: &View, truth: &Truth) -> String {
    let mut hold = hold.lock().unwrap_or_else(|e| e.into_inner());
    let pid = hold.pid;
    let peers = hold.cmd("served-peers");
    let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, ..) in view.conns.iter().filter(|(_, p, ..)| *p == pid) {
        if let Some((_, remote)) = k.split_once(' ') {
            *counted.entry(remote).or_default() += 1;
        }
    }
    let mut hidden: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for pair in peers.split_whitespace() {
        let Some((fd, peer)) = pair.split_once('=') else { continue };
        let inode = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .and_then(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
        if let Some(inode) = inode.filter(|i: &u64| truth.hidden.contains_key(i)) {
            hidden.entry(peer).or_default().push(format!("fd {fd} inode {inode}"));
        }
    }
    let all = daemon.json(&["conns"]);
    let mut missing = Vec::new();
    for (peer, sockets) in &hidden {
        let n = counted.get(peer).copied().unwrap_or(0);
        if sockets.len() <= n {
            continue;
        }
        let known: Vec<String> = all["connections"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["local"] == *peer || r["remote"] == *peer)
                    .map(|r| {
                        format!(
                            "id {} pid {} {} -> {} {} {} age {} s",
                            r["id"],
                            r["pid"],
                            r["local"],
                            r["remote"],
                            r["phase"],
                            r["state"],
                            r["age_seconds"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        missing.push(format!(
            "peer {peer}: {} socket(s) ({}), the daemon counts {n}; it has {known:?}",
            sockets.len(),
            sockets.join(", ")
        ));
    }
    format!(
        "holding server {pid}: {} peer address(es) with more sockets ss cannot see than the \
         daemon counts: {}",
        missing.len(),
        missing.iter().take(20).cloned().collect::<Vec<_>>().join("; ")
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One checkpoint's row.
struct Row {
    label: String,
    at: Duration,
    opened: u64,
    resets: u64,
    forks: u64,
    exits: u64,
    pids: usize,
    comparison: Comparison,
    agreed_after: Option<Duration>,
    rss_kib: u64,
    lost: u64,
    misses: u64,
    /// Of `misses`, the state-change runs the kernel never made (from tracefs).
    never_run: u64,
    corrections: u64,
    holder_changes: u64,
    unexplained: Option<String>,
}

fn checkpoint(
    daemon: &Daemon,
    shared: &Shared,
    hold: &Mutex<Workload>,
    label: String,
    started: Instant,
) -> Row {
    let tracked: BTreeSet<u32> = {
        let t = shared.tracked.lock().expect("lock");
        t.alive.union(&t.ended).copied().collect()
    };
    // Let what the last actions set off settle (echo servers closing their side).
    std::thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    // Holders move at the next reconcile (1 s), confirmed corrections take two: retry until
    // the views agree, for up to the tests' wait limit.
    let deadline = began + common::wait_limit();
    let (comparison, agreed_after) = loop {
        let view = daemon_view(daemon, &tracked);
        let truth = ground_truth(&tracked);
        let c = compare(&view, &truth, &tracked);
        if c.problems.is_empty() {
            break (c, Some(began.elapsed()));
        }
        if Instant::now() >= deadline {
            let mut c = c;
            c.problems.push(diagnose_hold(daemon, hold, &view, &truth));
            break (c, None);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let status = daemon.json(&["status"]);
    let lost = num(&status, "events_lost");
    let misses = num(&status, "program_misses_total");
    let never_run = status["program_misses"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["program"] == "inet_sock_set_state:never_run"))
        .map_or(0, |m| num(m, "missed"));
    let corrections = num(&status, "reconcile_corrections");
    let unexplained = (corrections > lost + misses).then(|| {
        let log = daemon.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("reconcile:")).collect();
        format!(
            "{corrections} reconcile correction(s), {lost} event(s) lost, {misses} program run(s) \
             skipped: {status}\n{}",
            lines.join("\n")
        )
    });
    let totals = &shared.totals;
    // The processes that ended are checked once.
    shared.tracked.lock().expect("lock").ended.clear();
    Row {
        label,
        at: started.elapsed(),
        opened: totals.opened.load(Ordering::Relaxed),
        resets: totals.resets.load(Ordering::Relaxed),
        forks: totals.forks.load(Ordering::Relaxed),
        exits: totals.exits.load(Ordering::Relaxed),
        pids: tracked.len(),
        comparison,
        agreed_after,
        rss_kib: rss_kib(daemon.pid()),
        lost,
        misses,
        never_run,
        corrections,
        holder_changes: num(&status, "holder_changes"),
        unexplained,
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| check | at | opened | resets | forks | exits | pids | held: in ss / shared / unseen by ss | agreement | daemon RSS | lost | skipped runs (never made) | corrections | holder changes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let agreement = match r.agreed_after {
            Some(after) => format!("agree ({:.1} s)", after.as_secs_f64()),
            None => format!("**{} disagreement(s)**", r.comparison.problems.len()),
        };
        let corrections = match r.unexplained {
            Some(_) => format!("**{} unexplained**", r.corrections),
            None => r.corrections.to_string(),
        };
        let _ = writeln!(
            t,
            "| {} | {}:{:02} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {:.1} MiB | {} | {} ({}) | {} | {} |",
            r.label,
            r.at.as_secs() / 60,
            r.at.as_secs() % 60,
            r.opened,
            r.resets,
            r.forks,
            r.exits,
            r.pids,
            r.comparison.visible,
            r.comparison.shared,
            r.comparison.hidden,
            agreement,
            r.rss_kib as f64 / 1024.0,
            r.lost,
            r.misses,
            r.never_run,
            corrections,
            r.holder_changes
        );
    }
    t
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!("{cpus} CPUs, {model}, {:.1} GiB memory", mem_kib as f64 / (1024.0 * 1024.0))
}

// Two minutes in the test command; `cargo xtask soak` runs it longer.
#[test]
fn randomized_churn_agrees_with_ss_at_every_checkpoint() {
    let cfg = config();
    eprintln!(
        "soak: seed {} (reproduce: TRACER_SOAK_SEED={}), {} minute(s), {} workers, checks every {} s",
        cfg.seed,
        cfg.seed,
        cfg.minutes,
        cfg.workers,
        cfg.check_every.as_secs()
    );
    let daemon = Daemon::start(&[]);
    let status = daemon.json(&["status"]);
    let mode = status["probe_mode"].as_str().unwrap_or("?").to_owned();
    let kernel = status["kernel"].as_str().unwrap_or("?").to_owned();

    // Servers: echo servers (IPv4 and IPv6) close when the peer does, resets included; the
    // holding server keeps what it accepts (its peers' leaks); a thread of its own closes its
    // oldest now and then (not during checkpoints), so it stays bounded and its peers see
    // CLOSE_WAIT.
    let mut echo = Workload::spawn();
    let echo4 = echo.listen("127.0.0.1");
    let echo6 = echo.listen("::1");
    echo.cmd("serve-bg 0 echo");
    echo.cmd("serve-bg 1 echo");
    let mut hold = Workload::spawn();
    let hold_port = hold.listen("127.0.0.1");
    hold.cmd("serve-bg 0 hold");
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let shared = Arc::new(Shared {
        opens: Mutex::new((0.0, Instant::now())),
        holders: Mutex::new(BTreeSet::new()),
        gate: RwLock::new(()),
        stop: AtomicBool::new(false),
        totals: Totals::default(),
        tracked: Mutex::new(Tracked::default()),
        targets: Targets {
            echo: vec![format!("127.0.0.1:{echo4}"), format!("[::1]:{echo6}")],
            hold: format!("127.0.0.1:{hold_port}"),
            refused: format!("127.0.0.1:{refused}"),
        },
    });
    let reaper = HolderReaper(Arc::clone(&shared));
    shared.started(echo.pid);
    shared.started(hold.pid);

    let started = Instant::now();
    let end = started + Duration::from_secs_f64(cfg.minutes * 60.0);
    let drivers: Vec<_> = (0..cfg.workers)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let seed = cfg.seed;
            std::thread::spawn(move || drive(i, seed, shared))
        })
        .collect();
    let hold = Arc::new(Mutex::new(hold));
    let trimmer = {
        let shared = Arc::clone(&shared);
        let hold = Arc::clone(&hold);
        let mut rng = Rng::new(cfg.seed ^ 0x7431_6D6D);
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250 + rng.below(500)));
                let _paused_by_checkpoints = shared.gate.read().unwrap_or_else(|e| e.into_inner());
                let mut hold = hold.lock().unwrap_or_else(|e| e.into_inner());
                hold.cmd(&format!("close-served {}", rng.upto(30)));
            }
        })
    };
    let mut rows = Vec::new();
    let mut next = started + cfg.check_every;
    // A worker whose command failed ends the soak at once (its panic says why).
    while Instant::now() < end && !drivers.iter().any(|d| d.is_finished()) && !trimmer.is_finished()
    {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() < next || next >= end {
            continue;
        }
        let row = {
            let _paused = shared.gate.write().unwrap_or_else(|e| e.into_inner());
            checkpoint(&daemon, &shared, &hold, (rows.len() + 1).to_string(), started)
        };
        eprintln!(
            "soak: check {} at {:.0} s: {} opened, {}, RSS {} KiB",
            row.label,
            row.at.as_secs_f64(),
            row.opened,
            if row.agreed_after.is_some() { "agree" } else { "DISAGREE" },
            row.rss_kib
        );
        for problem in row.comparison.problems.iter().take(20) {
            eprintln!("soak:   {problem}");
        }
        rows.push(row);
        // From the end of this checkpoint: one that waited out its deadline does not eat the
        // next interval's churn.
        next = Instant::now() + cfg.check_every;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let remains: Vec<Worker> =
        drivers.into_iter().map(|d| d.join().expect("a worker thread panicked")).collect();
    trimmer.join().expect("the holding server's thread panicked");
    // The end: everything still held, two more reconciles over it (a correction needs two
    // scans to agree), then the last comparison.
    daemon.wait_for_more("reconciles", 2);
    rows.push(checkpoint(&daemon, &shared, &hold, "end".into(), started));
    let elapsed = started.elapsed();
    drop(reaper);
    drop(remains);
    drop(hold);

    let table = table(&rows);
    let first_rss = rows.first().map_or(0, |r| r.rss_kib);
    let max_rss = rows.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let report = format!(
        "| | |\n| --- | --- |\n| date | {} |\n| duration | {:.1} min of churn ({} worker processes, checks every {} s), {:.1} min in all |\n\
         | seed | {} (`cargo xtask soak --seed {}`) |\n| probe mode | {mode} |\n| kernel | {kernel} |\n| machine | {} |\n\n{table}",
        utc_now(),
        cfg.minutes,
        cfg.workers,
        cfg.check_every.as_secs(),
        elapsed.as_secs_f64() / 60.0,
        cfg.seed,
        cfg.seed,
        machine(),
    );
    eprintln!("\n{report}");
    if let Some(path) = &cfg.report {
        std::fs::write(path, &report).expect("write the soak report");
    }

    let mut failures = Vec::new();
    for r in &rows {
        if r.agreed_after.is_none() {
            failures.push(format!(
                "check {}: disagreement with ground truth:\n  {}",
                r.label,
                r.comparison.problems.join("\n  ")
            ));
        }
        if let Some(why) = &r.unexplained {
            failures.push(format!("check {}: correction without a counted loss: {why}", r.label));
        }
    }
    // Bounded: after the first minute's growth, no more than double (and 64 MiB of slack for a
    // short run whose first checkpoint came early).
    if max_rss > 2 * first_rss + 64 * 1024 {
        failures.push(format!("daemon RSS grew from {first_rss} KiB to {max_rss} KiB"));
    }
    assert!(
        failures.is_empty(),
        "soak seed {} failed:\n{}\n{}",
        cfg.seed,
        failures.join("\n"),
        daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("reconcile"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `YYYY-MM-DD HH:MM UTC` (date(1): no time crate in the tests).
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
