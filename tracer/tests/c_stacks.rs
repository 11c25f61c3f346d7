//! Opener stacks of C programs against Debian's C library, which keeps no frame pointers: the
//! kernel's frame-pointer walk from inside connect()/accept() skips their direct caller, and
//! the daemon recovers it from the C library's call-frame information. A single-threaded
//! leaker (glibc's direct connect path) and a two-threaded server (its cancellable accept
//! path), built here with `cc -O1 -g -fno-omit-frame-pointer`. Run as root.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use common::{Daemon, TempDir, num};
use serde_json::Value;

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/programs/c_stacks");
const LEAKED: u64 = 12;
const TIDY: u64 = 5;

fn build(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(Path::new(PROGRAMS).join(format!("{name}.c")))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cc ({e}): install gcc"));
    assert!(status.success(), "cc {name}.c failed");
    out
}

/// A test program driven over its stdin, killed on drop.
struct Program {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Program {
    fn spawn(binary: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, stdin, stdout }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        line.trim().to_string()
    }

    fn cmd(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write");
        assert_eq!(self.line(), "ok", "{command}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn groups(stacks: &Value) -> &Vec<Value> {
    stacks["groups"].as_array().expect("groups")
}

/// `tracer stacks PID --json` once every group is named.
fn named_stacks(daemon: &Daemon, pid: u32) -> Value {
    let mut answer = Value::Null;
    daemon.eventually("every stack named", |d| {
        answer = d.json(&["stacks", &pid.to_string()]);
        let unnamed = groups(&answer).iter().filter(|g| g["leading_function"].is_null()).count();
        if unnamed == 0 { Ok(()) } else { Err(format!("{unnamed} groups unnamed: {answer:#}")) }
    });
    answer
}

#[test]
fn the_caller_of_the_c_library_is_recovered_for_connect_and_accept() {
    let dir = TempDir::new("c-stacks");
    let (server_bin, leaker_bin) = (build(&dir.0, "server"), build(&dir.0, "leaker"));
    let daemon = Daemon::start(&["--stacks", "all"]);
    let mut server = Program::spawn(&server_bin, &[]);
    let port = server.line();
    let mut leaker = Program::spawn(&leaker_bin, &[&port]);
    assert_eq!(leaker.line(), "ready");
    leaker.cmd(&format!("leak {LEAKED}"));
    leaker.cmd(&format!("tidy {TIDY}"));
    daemon.eventually("the leaked connections open", |d| {
        common::expect_eq("leaker open", num(&d.process(leaker.pid()), "open"), LEAKED)
    });

    let stacks = named_stacks(&daemon, leaker.pid());
    let leaking: Vec<&Value> =
        groups(&stacks).iter().filter(|g| g["leading_function"] == "leak_connections").collect();
    assert_eq!(leaking.len(), 1, "one code path leaks: {stacks:#}");
    assert_eq!(num(leaking[0], "count"), LEAKED, "exactly the leaked connections: {stacks:#}");
    assert_eq!(leaking[0]["direction"], "outbound");
    // The recovered frame sits between the C library's wrapper and the caller's caller.
    let functions: Vec<&str> = leaking[0]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    let at = functions.iter().position(|f| *f == "leak_connections").expect("frame");
    assert_eq!(functions.get(at + 1), Some(&"main"), "{functions:?}");
    assert_eq!(functions.iter().filter(|f| **f == "leak_connections").count(), 1, "{functions:?}");
    assert!(!stacks.to_string().contains("tidy_close"), "tidy_close holds none: {stacks:#}");

    // The server holds every accepted end (it never closes): all under its accept loop.
    let served = named_stacks(&daemon, server.pid());
    let open = num(&served, "open");
    assert!(open >= LEAKED, "{served:#}");
    for g in groups(&served) {
        assert_eq!(g["leading_function"], "accept_loop", "{served:#}");
        assert_eq!(g["direction"], "inbound", "{served:#}");
    }
    assert_eq!(groups(&served).iter().map(|g| num(g, "count")).sum::<u64>(), open, "{served:#}");

    let status = daemon.json(&["status"]);
    assert_eq!(num(&status["stacks"], "window_failed"), 0, "{status:#}");
    assert!(num(&status["stacks"], "frames_recovered") >= LEAKED + open, "{status:#}");
}
