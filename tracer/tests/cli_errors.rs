//! Bad input gets a clear message naming the fix, never a panic or a silent fallback.
mod common;

use std::process::Command;

use common::{Daemon, TempDir, tracer_bin};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(tracer_bin()).args(args).output().expect("run tracer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "tracer {args:?} panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn daemon_not_running_says_how_to_start_it() {
    let dir = TempDir::new("nodaemon");
    let socket = dir.0.join("absent.sock");
    for command in ["top", "conns", "status"] {
        let (code, stderr) = run(&[command, "--socket", socket.to_str().expect("utf-8")]);
        assert_eq!(code, 1);
        assert!(stderr.contains("not running") && stderr.contains("tracer run"), "{stderr}");
    }
}

#[test]
fn bad_flags_are_rejected_by_name() {
    let (code, stderr) = run(&["top", "--limit", "many"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--limit"), "{stderr}");
    let (code, stderr) = run(&["run", "--probe", "magic"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("fentry") && stderr.contains("tracepoint"),
        "lists the modes: {stderr}"
    );
    let (code, stderr) = run(&["conns", "--remote", "not-an-address"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("ADDR:PORT"), "{stderr}");
}

/// The user the part that serves clients becomes must exist and must not be root; privilege
/// separation's settings are `on` or `off`. Refused before anything is bound or loaded.
#[test]
fn a_bad_clients_user_or_privsep_setting_is_refused_naming_the_fix() {
    let (code, stderr) = run(&["run", "--clients-user", "no-such-user-here"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no such user") && stderr.contains("numeric uid"), "{stderr}");
    let (code, stderr) = run(&["run", "--clients-user", "0:0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("that is root"), "{stderr}");
    let (code, stderr) = run(&["run", "--privsep", "maybe"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("on") && stderr.contains("off"), "{stderr}");
}

/// `--drop-capability` takes only what the daemon keeps, and never all that loading its
/// probes (after the drop) takes. Refused before anything is bound or loaded.
#[test]
fn a_capability_drop_the_daemon_cannot_honour_is_refused_naming_the_fix() {
    let (code, stderr) = run(&["run", "--drop-capability", "cap_net_admin"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("does not keep cap_net_admin") && stderr.contains("cap_sys_ptrace"),
        "{stderr}"
    );
    let (code, stderr) = run(&["run", "--drop-capability", "cap_no_such"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no capability is called"), "{stderr}");
    let (code, stderr) = run(&["run", "--drop-capability", "cap_sys_admin,cap_bpf"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("needs cap_bpf or cap_sys_admin"), "{stderr}");
}

/// Durations take units (`90`, `30s`, `1h30m`); a bad one is refused naming the forms, in a
/// flag and in a per-workload setting alike.
#[test]
fn bad_durations_name_the_accepted_forms() {
    for args in [
        &["run", "--leak-interval", "5y"][..],
        &["run", "--close-wait-after", "1h30"],
        &["run", "--workload", "backup-*:close-wait-after=5 minutes"],
        &["top", "--watch", "0s"],
    ] {
        let (code, stderr) = run(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains("500ms, 30s, 5m, 1h30m"), "{args:?}: {stderr}");
    }
    // Defaults are shown with units.
    let (_, help) = {
        let out = Command::new(tracer_bin()).args(["run", "--help"]).output().expect("help");
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert!(help.contains("[default: 15s]") && help.contains("[default: 1m]"), "{help}");
}

#[test]
fn bad_ring_size_names_the_rule() {
    let dir = TempDir::new("ring");
    let socket = dir.0.join("t.sock");
    let (code, stderr) =
        run(&["run", "--ring-bytes", "5000", "--socket", socket.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("power of two"), "{stderr}");
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let daemon = Daemon::start(&[]);
    let (code, stderr) = run(&["run", "--socket", daemon.socket.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first one is unharmed.
    assert!(daemon.try_cli(&["status"]).is_ok());
}

#[test]
fn unknown_state_filter_is_refused_with_the_valid_ones() {
    let daemon = Daemon::start(&[]);
    let err = daemon.try_cli(&["conns", "--state", "sleepy"]).expect_err("must fail");
    assert!(err.contains("close_wait") && err.contains("connecting"), "{err}");
}

#[test]
fn unprivileged_run_names_the_capabilities() {
    let dir = TempDir::new("unpriv");
    let socket = dir.0.join("t.sock");
    // setpriv (util-linux) drops to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(tracer_bin())
        .args(["run", "--socket"])
        .arg(&socket)
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CAP_BPF") && stderr.contains("sudo"), "{stderr}");
}

#[test]
fn without_cap_dac_read_search_the_unreadable_tracefs_is_named() {
    let dir = TempDir::new("nodac");
    let socket = dir.0.join("t.sock");
    // The BPF capabilities, but not the one that reads the root-only tracefs.
    let caps = "+bpf,+perfmon,+sys_admin";
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(tracer_bin())
        .args(["run", "--metrics-addr", "off", "--socket"])
        .arg(&socket)
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CAP_DAC_READ_SEARCH"), "{stderr}");
}

#[test]
fn incompatible_api_version_is_refused_clearly() {
    use std::io::{BufRead, BufReader, Write};
    let daemon = Daemon::start(&[]);
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).expect("connect");
    stream.write_all(b"{\"version\":99,\"request\":{\"status\":{}}}\n").expect("write");
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).expect("read");
    assert!(reply.contains("unsupported API version 99"), "{reply}");
}
