//! Every capability the daemon keeps after start-up is needed: with `--drop-capability` it runs
//! without it, and the break docs/security.md's table names shows, beside a daemon that keeps
//! it and does not break on the same input. Run as root.
mod common;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use common::{Daemon, Leaker, TempDir, build_leaker, num};
use serde_json::Value;

/// The daemon's effective capabilities, from `tracer status`.
fn capabilities(daemon: &Daemon) -> Vec<String> {
    let status = daemon.json(&["status"]);
    let names = status["privileges"]["effective_capabilities"].as_array().cloned();
    names.unwrap_or_default().iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()
}

/// The leaker run by `cmd` (which must exec into it) leaks 3 connections; returns it, with
/// `tracer stacks PID --json` once its stack groups cover them, named or not.
fn leak_and_ask(daemon: &Daemon, cmd: Command) -> (Leaker, Value) {
    let mut leaker = Leaker::spawn_command(cmd);
    leaker.cmd("leak 3");
    let pid = leaker.pid();
    let mut answer = Value::Null;
    daemon.eventually("the 3 leaked connections' stack grouped", |d| {
        answer = d.json(&["stacks", &pid.to_string()]);
        let outbound: u64 = answer["groups"]
            .as_array()
            .map(|g| g.iter().filter(|g| g["direction"] == "outbound").map(|g| num(g, "count")))
            .into_iter()
            .flatten()
            .sum();
        common::expect_eq("outbound connections in groups", outbound, 3)
            .map_err(|e| format!("{e}: {answer:#}"))
    });
    (leaker, answer)
}

/// Whether any frame of `answer`'s groups names `function`.
fn names(answer: &Value, function: &str) -> bool {
    answer["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["frames"].as_array().into_iter().flatten().any(|f| f["function"] == function))
}

/// Processes whose binaries could not be opened for symbolization, and why the last one
/// failed, from `tracer status`.
fn pin_failures(daemon: &Daemon) -> (u64, String) {
    let stacks = &daemon.json(&["status"])["stacks"];
    (num(stacks, "pins_failed"), stacks["last_pin_failure"].as_str().unwrap_or("").to_owned())
}

/// Whether `answer` names `function` as it should with or without the capability; without,
/// the failure is counted and explained, never silent.
fn check_named(daemon: &Daemon, answer: &Value, function: &str, named: bool, flags: &[&str]) {
    assert_eq!(names(answer, function), named, "{flags:?}: {answer:#}");
    let (failed, why) = pin_failures(daemon);
    if named {
        assert_eq!(failed, 0, "{why}");
    } else {
        assert!(failed >= 1 && why.contains("map_files"), "{flags:?}: {failed} failed: {why}");
    }
}

#[test]
fn without_cap_sys_admin_the_daemon_still_counts_but_names_no_stack() {
    let dir = TempDir::new("caps-sys-admin");
    let binary = build_leaker(&dir.0, false);
    // It stood in for cap_bpf and cap_perfmon, which the daemon keeps in its place: loading the
    // probes after the drop still works, and counts stay exact.
    let daemon = Daemon::start(&["--stacks", "all", "--drop-capability", "cap_sys_admin"]);
    let caps = capabilities(&daemon);
    assert_eq!(
        caps,
        ["cap_dac_read_search", "cap_kill", "cap_sys_ptrace", "cap_perfmon", "cap_bpf"]
            .map(str::to_owned)
            .into_iter()
            .filter(|c| our_capabilities().contains(c))
            .collect::<Vec<_>>(),
        "kept in its place"
    );
    let (_leaker, answer) = leak_and_ask(&daemon, Command::new(&binary));
    // /proc/PID/map_files opens only with cap_sys_admin: the frames stay addresses.
    check_named(&daemon, &answer, "main.leakConnections", false, &["cap_sys_admin"]);
}

#[test]
fn without_cap_dac_read_search_an_unreadable_binary_is_not_symbolized() {
    let dir = TempDir::new("caps-dac");
    let binary = build_leaker(&dir.0, false);
    // Execute-only: root runs it, but reads it only through cap_dac_read_search (the daemon
    // keeps no cap_dac_override).
    let hidden = dir.0.join("execute-only-leaker");
    std::fs::copy(&binary, &hidden).expect("copy");
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o111)).expect("chmod");
    for (flags, named) in
        [(&[][..], true), (&["--drop-capability", "cap_dac_read_search"][..], false)]
    {
        let daemon = Daemon::start(&[&["--stacks", "all"], flags].concat());
        let (_leaker, answer) = leak_and_ask(&daemon, Command::new(&hidden));
        check_named(&daemon, &answer, "main.leakConnections", named, flags);
        daemon.stop();
    }
}

#[test]
fn without_cap_sys_ptrace_another_users_program_is_not_symbolized() {
    let dir = TempDir::new("caps-ptrace");
    let binary = build_leaker(&dir.0, false);
    // Run as nobody: the daemon (uid 0) opens its /proc/PID/map_files only through
    // cap_sys_ptrace (the same check guards its fd links, exe, root and ns/net). Its directory
    // listings, such as the descriptor count, need only cap_dac_read_search.
    let runnable = Path::new("/tmp").join(format!("tracer-caps-leaker-{}", std::process::id()));
    std::fs::copy(&binary, &runnable).expect("copy");
    std::fs::set_permissions(&runnable, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = || {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]).arg(&runnable);
        cmd
    };
    for (flags, named) in [(&[][..], true), (&["--drop-capability", "cap_sys_ptrace"][..], false)] {
        let daemon = Daemon::start(&[&["--stacks", "all"], flags].concat());
        let (_leaker, answer) = leak_and_ask(&daemon, as_nobody());
        check_named(&daemon, &answer, "main.leakConnections", named, flags);
        daemon.stop();
    }
    let _ = std::fs::remove_file(&runnable);
}

/// The test's own effective capabilities (the daemon keeps no more than its starter has).
fn our_capabilities() -> Vec<String> {
    tracer::privileges::Privileges::of_self().expect("own status").names()
}
