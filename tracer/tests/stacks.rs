//! Opener stacks end to end: a Go program that leaks from one function and dials tidily from
//! another, traced by a real daemon; `tracer stacks` must name the leaking function for exactly
//! the leaked connections, in every capture policy, stripped binaries included. Run as root.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use common::{Daemon, TempDir, num};
use serde_json::Value;

const PROGRAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/programs/leaker_go");
/// File names of the plain and the stripped build (xtask/src/vm/payload.rs builds the same).
const LEAKER_NAMES: [&str; 2] = ["leaker", "leaker-stripped"];

/// Builds tests/programs/leaker_go, stripped of symbols and DWARF if asked. The VM guests have
/// no Go: there `TRACER_TEST_GO_PROGRAMS` names a directory holding both builds, made on the host
/// by `cargo xtask vm-test` ([`LEAKER_NAMES`]).
fn build_leaker(dir: &Path, stripped: bool) -> PathBuf {
    let name = LEAKER_NAMES[usize::from(stripped)];
    if let Some(prebuilt) = std::env::var_os("TRACER_TEST_GO_PROGRAMS") {
        let path = Path::new(&prebuilt).join(name);
        assert!(path.is_file(), "TRACER_TEST_GO_PROGRAMS has no {name}: {}", path.display());
        return path;
    }
    let out = dir.join(name);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    let status = cmd
        .arg("main.go")
        .current_dir(PROGRAM)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run go ({e}): `cargo xtask setup` installs golang-go"));
    assert!(status.success(), "go build failed");
    out
}

/// The leaker, driven over its stdin.
struct Leaker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Leaker {
    fn spawn(binary: &Path) -> Self {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn leaker");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Self { child, stdin, stdout }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cmd(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ok", "{command}");
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn outbound_groups(stacks: &Value) -> Vec<&Value> {
    stacks["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["direction"] == "outbound")
        .collect()
}

/// The groups' counts and the four other counts add up to `open`.
fn assert_adds_up(stacks: &Value) {
    let groups: u64 =
        stacks["groups"].as_array().expect("groups").iter().map(|g| num(g, "count")).sum();
    let others =
        ["opened_before_capture", "not_sampled", "stack_missing", "held_by_another_process"]
            .iter()
            .map(|f| num(stacks, f))
            .sum::<u64>();
    assert_eq!(groups + others, num(stacks, "open"), "{stacks:#}");
}

/// Runs the leaker against a daemon with `flags`: 20 leaked, 10 tidy connections; returns the
/// `tracer stacks --json` answer once every leaked connection is open.
fn leak_and_ask(flags: &[&str], stripped: bool) -> Value {
    let dir = TempDir::new("stacks");
    let binary = build_leaker(&dir.0, stripped);
    let daemon = Daemon::start(flags);
    let mut leaker = Leaker::spawn(&binary);
    leaker.cmd("leak 20");
    leaker.cmd("tidy 10");
    let pid = leaker.pid().to_string();
    // 20 leaked client ends and their 20 accepted server ends stay open.
    daemon.eventually("40 open", |d| {
        common::expect_eq("open", num(&d.process(leaker.pid()), "open"), 40)
    });
    let mut answer = Value::Null;
    daemon.eventually("every stack named", |d| {
        answer = d.json(&["stacks", &pid]);
        let unnamed = answer["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter(|g| g["leading_function"].is_null())
            .count();
        if unnamed == 0 { Ok(()) } else { Err(format!("{unnamed} groups unnamed: {answer:#}")) }
    });
    let text = daemon.try_cli(&["stacks", &pid]).expect("text view");
    assert!(text.contains("main.leakConnections"), "{text}");
    answer
}

#[test]
fn every_leaked_connection_is_named_by_the_leaking_function_with_stacks_all() {
    let stacks = leak_and_ask(&["--stacks", "all"], false);
    assert_adds_up(&stacks);
    let outbound = outbound_groups(&stacks);
    assert_eq!(outbound.len(), 1, "one code path leaks: {stacks:#}");
    assert_eq!(outbound[0]["leading_function"], "main.leakConnections");
    assert_eq!(num(outbound[0], "count"), 20, "exactly the leaked connections");
    let frames = outbound[0]["frames"].as_array().expect("frames");
    assert!(
        frames.iter().any(|f| f["function"] == "main.leakConnections"
            && f["file"].as_str().is_some_and(|file| file.ends_with("main.go"))),
        "file:line of the leaking call: {frames:#?}"
    );
    assert!(!stacks.to_string().contains("main.tidyConnections"), "the tidy function holds none");
    // The accepted ends are this process's too, grouped under its accept loop.
    let inbound: Vec<&Value> = stacks["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["direction"] == "inbound")
        .collect();
    assert_eq!(inbound.iter().map(|g| num(g, "count")).sum::<u64>(), 20);
    assert!(inbound.iter().all(|g| g["leading_function"] == "main.serve"), "{inbound:#?}");
}

#[test]
fn a_stripped_go_binary_still_names_the_leaking_function() {
    let stacks = leak_and_ask(&["--stacks", "all"], true);
    let outbound = outbound_groups(&stacks);
    assert_eq!(outbound.len(), 1, "{stacks:#}");
    assert_eq!(outbound[0]["leading_function"], "main.leakConnections");
    assert_eq!(num(outbound[0], "count"), 20);
}

#[test]
fn the_default_sampled_policy_adds_up_and_names_the_leak() {
    // Every 8th connection of the process, counted from its first (a leaked one).
    let stacks = leak_and_ask(&[], false);
    assert_eq!(stacks["policy"], "sampled");
    assert_adds_up(&stacks);
    assert!(num(&stacks, "not_sampled") > 0, "most connections are not sampled: {stacks:#}");
    let outbound = outbound_groups(&stacks);
    assert!(!outbound.is_empty(), "the first connection is always sampled: {stacks:#}");
    assert!(outbound.iter().all(|g| g["leading_function"] == "main.leakConnections"));
    assert!(!stacks.to_string().contains("main.tidyConnections"));
}

#[test]
fn stacks_of_an_unknown_pid_and_bad_settings_say_so() {
    let daemon = Daemon::start(&[]);
    let err = daemon.try_cli(&["stacks", "999999999"]).expect_err("unknown pid");
    assert!(err.contains("no process 999999999"), "{err}");
    for depth in ["0", "500"] {
        let out = Command::new(common::tracer_bin())
            .args(["run", "--stack-depth", depth])
            .output()
            .expect("run tracer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("1..=127"), "--stack-depth {depth}: {err}");
    }
}
