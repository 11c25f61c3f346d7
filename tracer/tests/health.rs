//! Pool health end to end: Go HTTP clients whose pools sit idle, or whose responses are never
//! read or read slowly, a Go server, the real daemon with short thresholds; `top`, `conns` and
//! `leaks` checked against `ss` sampled in the same test. Run as root.
mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Daemon, TempDir, num};
use serde_json::Value;

/// Builds tests/programs/pool_go (the name matches xtask/src/vm/payload.rs's `GO_PROGRAMS`).
fn build(dir: &Path) -> PathBuf {
    common::go_program("pool_go", "pool", false, dir)
}

/// One role of the pool program; killed when dropped.
struct Go {
    child: Child,
    first_line: String,
}

impl Go {
    /// Starts `binary args` and waits for its first line (`port N` or `ok`).
    fn start(binary: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pool program");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first_line = String::new();
        out.read_line(&mut first_line).expect("first line");
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Self { child, first_line: first_line.trim().to_owned() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Go {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(binary: &Path) -> (Go, String) {
    let server = Go::start(binary, &["server"]);
    let port = server.first_line.strip_prefix("port ").expect("port line").to_owned();
    (server, format!("127.0.0.1:{port}"))
}

fn rules_of(daemon: &Daemon, pid: u32) -> Vec<String> {
    daemon.json(&["leaks"])["active"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["pid"] == pid)
                .filter_map(|x| x["rule"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `ss -tni` for the sockets of `port` (either end): per (local, remote), the receive queue,
/// the send queue and the idle time (the later of lastsnd and lastrcv, ms).
fn ss(port: &str) -> HashMap<(String, String), (u64, u64, Option<u64>)> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = Command::new("ss").args(["-tniH", "state", "established", &filter]).output();
    let text = String::from_utf8_lossy(&out.expect("ss").stdout).into_owned();
    let mut rows = HashMap::new();
    let mut last: Option<(String, String, u64, u64)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && fields.len() >= 4 {
            // Recv-Q Send-Q Local Peer (no state column with a state filter).
            let q = |s: &str| s.parse::<u64>().expect("queue");
            last = Some((fields[2].to_owned(), fields[3].to_owned(), q(fields[0]), q(fields[1])));
        } else if let Some((local, remote, rq, sq)) = last.take() {
            let ms = |key: &str| {
                fields.iter().find_map(|f| f.strip_prefix(key).and_then(|v| v.parse::<u64>().ok()))
            };
            let idle = ms("lastsnd:").zip(ms("lastrcv:")).map(|(s, r)| s.min(r));
            rows.insert((local, remote), (rq, sq, idle));
        }
    }
    rows
}

/// `ss -tni`'s info fields (`rtt:0.015/0.007` as `rtt` → `0.015/0.007`) for the sockets of
/// `port` (either end), per (local, remote).
fn ss_info(port: &str) -> HashMap<(String, String), HashMap<String, String>> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = Command::new("ss").args(["-tniH", "state", "established", &filter]).output();
    let text = String::from_utf8_lossy(&out.expect("ss").stdout).into_owned();
    let mut rows = HashMap::new();
    let mut last: Option<(String, String)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && fields.len() >= 4 {
            last = Some((fields[2].to_owned(), fields[3].to_owned()));
        } else if let Some(key) = last.take() {
            let info = fields
                .iter()
                .filter_map(|f| f.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            rows.insert(key, info);
        }
    }
    rows
}

/// `conns`'s `rtt_us`, `bytes_acked` and `bytes_received` of a connection that carries no data
/// any more against `ss -ti` sampled before and after the query: both samples agree, the bytes
/// exactly (ss leaves out a count of 0), the round-trip time within the microsecond ss rounds
/// its milliseconds to.
fn assert_tcp_info_as_ss(
    c: &Value,
    before: &HashMap<(String, String), HashMap<String, String>>,
    after: &HashMap<(String, String), HashMap<String, String>>,
) {
    let (b, a) = (&before[&key(c)], &after[&key(c)]);
    for field in ["bytes_acked", "bytes_received"] {
        let want = b.get(field).map_or(0, |v| v.parse::<u64>().expect("ss byte count"));
        assert_eq!(a.get(field), b.get(field), "{field} changed while sampling: {c}");
        assert_eq!(num(c, field), want, "{field} vs ss {b:?}: {c}");
    }
    assert_eq!(a.get("rtt"), b.get("rtt"), "rtt changed while sampling: {c}");
    let srtt_ms: f64 = b["rtt"].split('/').next().and_then(|v| v.parse().ok()).expect("ss rtt");
    let rtt_us = c["rtt_us"].as_f64().expect("rtt_us");
    assert!((rtt_us - srtt_ms * 1000.0).abs() <= 1.0, "rtt_us {rtt_us} vs ss {srtt_ms} ms: {c}");
}

fn conns_of(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon.json(&["conns", "--pid", &pid.to_string()])["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn key(c: &Value) -> (String, String) {
    (
        c["local"].as_str().expect("local").to_owned(),
        c["remote"].as_str().expect("remote").to_owned(),
    )
}

const UNREAD: usize = 6;

#[test]
fn responses_never_read_raise_unread_against_the_client_and_draining_or_slow_reading_never_does() {
    let dir = TempDir::new("health");
    let binary = build(&dir.0);
    let daemon = Daemon::start(&[
        "--leak-interval",
        "0.5",
        "--unread-after",
        "2",
        "--unread-min",
        "5",
        "--leak-resolve-after",
        "2",
    ]);
    let (srv, addr) = server(&binary);
    let n = UNREAD.to_string();
    let lazy = Go::start(&binary, &["unread", &addr, &n]);
    let tidy = Go::start(&binary, &["drain", &addr, &n]);
    // Takes 8 KiB of each response every 400 ms (an evaluation every 500 ms): data always
    // waits in its receive queue, yet its read progress moves between every two dumps.
    let slow = Go::start(&binary, &["slow", &addr, &n, "400", "8192"]);
    assert_eq!((lazy.first_line.as_str(), tidy.first_line.as_str()), ("ok", "ok"));
    assert_eq!(slow.first_line, "ok");
    let started = std::time::Instant::now();
    daemon.eventually("unread raised for the lazy client", |d| {
        // Polled all along: the slow reader never counts as unread, nor raises.
        let slow_row = d.process(slow.pid());
        assert_eq!(num(&slow_row, "unread"), 0, "slow reader counted as unread: {slow_row}");
        assert!(!rules_of(d, slow.pid()).contains(&"unread".to_owned()), "slow reader raised");
        if rules_of(d, lazy.pid()).contains(&"unread".to_owned()) {
            Ok(())
        } else {
            Err(format!("active: {:?}", rules_of(d, lazy.pid())))
        }
    });
    // Not before the data waited --unread-after with no read (the first scan that sees it
    // starts the clock).
    assert!(started.elapsed() >= Duration::from_secs(2), "raised after {:?}", started.elapsed());
    let row = daemon.process(lazy.pid());
    assert_eq!(num(&row, "unread"), UNREAD as u64, "{row}");
    let alert = daemon.json(&["leaks"])["active"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["pid"] == lazy.pid() && x["rule"] == "unread").cloned())
        .expect("alert");
    let evidence = &alert["evidence"];
    assert_eq!(num(evidence, "unread"), UNREAD as u64);
    assert!(evidence["reading"].as_str().is_some_and(|r| r.contains("stopped reading")));
    let listed = evidence["unread_connections"].as_array().expect("examples");
    assert_eq!(listed.len(), 5, "a handful named");
    for c in listed {
        assert_eq!(c["remote"], addr.as_str());
        assert!(num(c, "unread_bytes") > 0 && num(c, "no_read_seconds") >= 2, "{c}");
    }

    // conns against ss: nothing reads or writes any more on these connections (the client's
    // receive buffer and the server's send buffer are full), so the queues must match exactly;
    // idle within a second plus the time between the two samples.
    let port = addr.rsplit(':').next().expect("port");
    let (before, info_before) = (ss(port), ss_info(port));
    let conns = conns_of(&daemon, lazy.pid());
    let (after, info_after) = (ss(port), ss_info(port));
    assert_eq!(conns.len(), UNREAD);
    for c in &conns {
        assert_tcp_info_as_ss(c, &info_before, &info_after);
        let (rq, sq, idle) = before[&key(c)];
        assert_eq!(after[&key(c)].0, rq, "receive queue stable");
        assert_eq!(num(c, "unread_bytes"), rq, "{c}");
        assert_eq!(num(c, "unsent_bytes"), sq, "{c}");
        assert!(num(c, "unread_bytes") > 0);
        assert!(num(c, "bytes_received") >= num(c, "unread_bytes"));
        assert!(c["rtt_us"].as_u64().is_some() && c["health_unavailable"].is_null(), "{c}");
        let idle_ms = idle.expect("lastsnd/lastrcv");
        let idle_after = after[&key(c)].2.expect("idle");
        let got = num(c, "idle_seconds");
        assert!(got + 1 >= idle_ms / 1000 && got <= idle_after / 1000 + 1, "{got} vs {idle:?}");
    }
    // The server's side of the same connections: its send queue holds what the client did not
    // take, as ss says; it has nothing unread and never alerts.
    let server_conns = conns_of(&daemon, srv.pid());
    let lazy_locals: Vec<String> = conns.iter().map(|c| key(c).0).collect();
    let to_lazy: Vec<&Value> =
        server_conns.iter().filter(|c| lazy_locals.contains(&key(c).1)).collect();
    assert_eq!(to_lazy.len(), UNREAD);
    for c in to_lazy {
        assert_eq!(num(c, "unsent_bytes"), before[&key(c)].1, "{c}");
        assert!(num(c, "unsent_bytes") > 0);
        assert_eq!(num(c, "unread_bytes"), 0);
    }
    // The slow reader's receive queues are never empty (ss, around the query), while what it
    // took out of them grows between two queries a second apart.
    let progress = |conns: &[Value]| -> HashMap<(String, String), u64> {
        conns.iter().map(|c| (key(c), num(c, "bytes_received") - num(c, "unread_bytes"))).collect()
    };
    let before = ss(port);
    let slow_conns = conns_of(&daemon, slow.pid());
    let after = ss(port);
    assert_eq!(slow_conns.len(), UNREAD);
    for c in &slow_conns {
        assert!(before[&key(c)].0 > 0 && after[&key(c)].0 > 0, "ss: empty receive queue {c}");
        assert!(num(c, "unread_bytes") > 0, "{c}");
    }
    let first = progress(&slow_conns);
    std::thread::sleep(Duration::from_secs(1));
    let second = progress(&conns_of(&daemon, slow.pid()));
    for (k, read) in &first {
        assert!(second[k] > *read, "no read progress on {k:?}: {read} then {}", second[k]);
    }
    // The draining client, the slow reader and the server: several evaluations beyond the
    // threshold, no alert.
    daemon.wait_for_more("leak_evaluations", 6);
    assert!(!rules_of(&daemon, slow.pid()).contains(&"unread".to_owned()));
    assert_eq!(num(&daemon.process(slow.pid()), "unread"), 0);
    let resolved = daemon.json(&["leaks"])["resolved"].clone();
    assert!(
        !resolved.as_array().expect("resolved").iter().any(|a| a["pid"] == slow.pid()),
        "the slow reader never raised: {resolved}"
    );
    assert!(!rules_of(&daemon, tidy.pid()).contains(&"unread".to_owned()));
    assert_eq!(num(&daemon.process(tidy.pid()), "unread"), 0);
    assert!(!rules_of(&daemon, srv.pid()).contains(&"unread".to_owned()));
    assert_eq!(num(&daemon.process(srv.pid()), "unread"), 0);

    // Metrics carry the same count.
    let metrics = daemon.scrape_metrics();
    let line = format!("tcp_tracer_unread_connections{{pid=\"{}\",comm=\"pool\"}} 6", lazy.pid());
    assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
}

#[test]
fn a_pool_without_idle_timeout_raises_idle_and_one_with_a_short_timeout_or_an_override_never_does()
{
    let dir = TempDir::new("health");
    let binary = build(&dir.0);
    // The same program under another command name, which a per-workload override exempts.
    let exempt_binary = dir.0.join("pool-exempt");
    std::fs::copy(&binary, &exempt_binary).expect("copy the pool program");
    let daemon = Daemon::start(&[
        "--leak-interval",
        "0.5",
        "--idle-after",
        "2",
        "--idle-alert-after",
        "3",
        "--idle-min",
        "20",
        "--workload",
        "pool-exempt:idle=off",
    ]);
    let (_srv, addr) = server(&binary);
    let keeper = Go::start(&binary, &["pool", &addr, "40", "0"]);
    // Its pool closes connections idle for 1 s: shorter than the 3 s threshold.
    let tidy = Go::start(&binary, &["pool", &addr, "40", "1000"]);
    // The keeper's twin, with `idle` off for its command name.
    let exempt = Go::start(&exempt_binary, &["pool", &addr, "40", "0"]);
    assert_eq!((keeper.first_line.as_str(), tidy.first_line.as_str()), ("ok", "ok"));
    assert_eq!(exempt.first_line, "ok");
    assert_eq!(num(&daemon.process(keeper.pid()), "open"), 40, "40 pooled connections");
    daemon.eventually("idle counts the whole pool", |d| {
        let idle = num(&d.process(keeper.pid()), "idle");
        if idle == 40 { Ok(()) } else { Err(format!("idle {idle}")) }
    });
    daemon.eventually("idle raised for the pool without timeout", |d| {
        // Polled all along: the exempt twin, as idle as the keeper, never raises.
        assert!(!rules_of(d, exempt.pid()).contains(&"idle".to_owned()), "the override ignored");
        if rules_of(d, keeper.pid()).contains(&"idle".to_owned()) {
            Ok(())
        } else {
            Err(format!("active: {:?}", rules_of(d, keeper.pid())))
        }
    });
    let port = addr.rsplit(':').next().expect("port");
    let (before, info_before) = (ss(port), ss_info(port));
    let conns = conns_of(&daemon, keeper.pid());
    let (after, info_after) = (ss(port), ss_info(port));
    assert_eq!(conns.len(), 40);
    for c in &conns {
        assert_tcp_info_as_ss(c, &info_before, &info_after);
        let (lo, hi) = (before[&key(c)].2.expect("idle"), after[&key(c)].2.expect("idle"));
        let got = num(c, "idle_seconds");
        assert!(got >= 3 && got + 1 >= lo / 1000 && got <= hi / 1000 + 1, "{got}: {lo}..{hi}");
        assert_eq!((num(c, "unread_bytes"), num(c, "unsent_bytes")), (0, 0), "{c}");
    }
    // The same count on /metrics.
    let metrics = daemon.scrape_metrics();
    let idle = num(&daemon.process(keeper.pid()), "idle");
    let line =
        format!("tcp_tracer_idle_connections{{pid=\"{}\",comm=\"pool\"}} {idle}", keeper.pid());
    assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
    // The pool with an idle timeout emptied itself and never alerted.
    daemon.eventually("the short-timeout pool closed its connections", |d| {
        let open = num(&d.process(tidy.pid()), "open");
        if open == 0 { Ok(()) } else { Err(format!("open {open}")) }
    });
    daemon.wait_for_more("leak_evaluations", 4);
    assert!(!rules_of(&daemon, tidy.pid()).contains(&"idle".to_owned()));
    // The exempt twin: its whole pool idle like the keeper's, the override applied to it (and
    // to nothing else), and no alert in all that time.
    let twin = daemon.process(exempt.pid());
    assert_eq!((num(&twin, "open"), num(&twin, "idle")), (40, 40), "{twin}");
    let matches = daemon.json(&["status"])["workload_override_matches"].clone();
    assert_eq!(matches[0]["selector"], "pool-exempt", "{matches}");
    assert_eq!(matches[0]["processes"], 1, "{matches}");
    assert!(!rules_of(&daemon, exempt.pid()).contains(&"idle".to_owned()));
    // Every evaluation had its dump, and reconciles due at the same time (every second,
    // evaluations every half second) shared one instead of making their own.
    let status = daemon.json(&["status"]);
    let (scans, evaluations) = (num(&status, "health_scans"), num(&status, "leak_evaluations"));
    let reconciles = num(&status, "reconciles");
    eprintln!("dumps {scans}, evaluations {evaluations}, reconciles {reconciles}");
    assert!(scans >= evaluations && reconciles > 0, "{status}");
    assert!(scans < evaluations + reconciles, "no dump was shared: {status}");
    assert!(num(&status, "health_scan_us") > 0);
    let resolved = daemon.json(&["leaks"])["resolved"].clone();
    for pid in [tidy.pid(), exempt.pid()] {
        assert!(
            !resolved.as_array().expect("resolved").iter().any(|a| a["pid"] == pid),
            "never raised: {resolved}"
        );
    }
}
