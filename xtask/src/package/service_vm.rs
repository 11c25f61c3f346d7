//! The package on a booted Debian: the root file system of rootfs.rs (bookworm with its own
//! 6.1 cloud kernel and initramfs, a kernel of the matrix) with the `.deb` installed by dpkg,
//! written to an ext4 disk image and booted under qemu with systemd as PID 1. The package's
//! unit starts the daemon; a oneshot unit ordered after it runs this module's guest half
//! (`cargo xtask service-guest`, the xtask binary built static for musl), which checks, printing
//! `SERVICE-CHECK:` lines on the console:
//! 1. the service is active under its unit and `/metrics` answers;
//! 2. its parts run with the documented privileges (`tracer status --json`);
//! 3. a workload's exact open count, from `tracer top --json` over the API socket, equals `ss`;
//! 4. a client in a second network namespace is counted, equal to `ss` in that namespace;
//! 5. kprobe mode under the same unit (a drop-in adds `--probe kprobe`): its kprobe events
//!    and its never-run count's instance are in tracefs (writable through the sandbox), and
//!    counts are exact again;
//! 6. `systemctl stop` detaches every probe (`bpftool prog show`, tracefs' kprobe events and
//!    instance);
//! 7. `dpkg --purge` leaves nothing of the package: binary, config, unit, enablement.
//!
//! It then powers the guest off; the host half reads the console for `PASS` or `FAIL`.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::rootfs;
use crate::setup;

const MARK: &str = "SERVICE-CHECK:";
/// The whole guest run: boot, start-up in two probe modes, purge (TCG emulates every
/// instruction).
const GUEST_LIMIT: Duration = Duration::from_secs(900);
const CHECK_UNIT: &str = "tracer-service-check.service";

/// Host half: builds the disk, boots it, and follows the console.
pub fn run(deb: &Path) -> Result<()> {
    let root = crate::workspace_root();
    let work = setup::target_dir(&root).join("deploy-check/service-vm");
    let tree = work.join("root");
    rootfs::unpack(&tree)?;
    let guest_binaries = build_guest_binaries()?;
    prepare(&tree, deb, &guest_binaries)?;
    let boot = tree.join("boot");
    let kernel = only_file(&boot, "vmlinuz-")?;
    let initrd = only_file(&boot, "initrd.img-")?;
    let disk = work.join("disk.img");
    let _ = std::fs::remove_file(&disk);
    setup::run_cmd(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&tree)
            .arg(&disk)
            .arg("3G"),
    )
    .context("mkfs.ext4 -d (e2fsprogs 1.43 or later) of the guest's disk")?;
    let log = work.join("console.log");
    eprintln!(
        "deploy-check: booting Debian with systemd and the package under qemu (console: {})",
        log.display()
    );
    let outcome = boot_and_follow(&kernel, &initrd, &disk, &log);
    std::fs::remove_file(&disk).ok();
    std::fs::remove_dir_all(&tree).ok();
    outcome
}

fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{}: expected one {prefix}* file, found {found:?}", dir.display()),
    }
}

/// The xtask binary (the guest half) and the workload example, static for musl.
fn build_guest_binaries() -> Result<[PathBuf; 2]> {
    let musl = Some(setup::MUSL_TARGET);
    Ok([
        setup::build_release("xtask", setup::Artifact::Bin("xtask"), musl)?,
        setup::build_release("tracer", setup::Artifact::Example("workload"), musl)?,
    ])
}

/// The package installed by dpkg in the root (its scripts enable the unit), the guest half and
/// its unit, and what a booted system needs: fstab, a hostname, no getty on the console.
fn prepare(tree: &Path, deb: &Path, [check, workload]: &[PathBuf; 2]) -> Result<()> {
    let in_root = tree.join("tmp").join(deb.file_name().context("a .deb file name")?);
    std::fs::copy(deb, &in_root)?;
    setup::capture(
        Command::new("dpkg")
            .arg(format!("--root={}", tree.display()))
            .arg("--install")
            .arg(&in_root),
    )
    .context("installing the package into the guest's root")?;
    std::fs::remove_file(&in_root)?;
    let sbin = tree.join("usr/local/sbin");
    let bin = tree.join("usr/local/bin");
    std::fs::create_dir_all(&sbin)?;
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(check, sbin.join("tracer-service-check"))?;
    std::fs::copy(workload, bin.join("workload"))?;
    std::fs::write(tree.join("etc/fstab"), "/dev/vda / ext4 rw 0 1\n")?;
    std::fs::write(tree.join("etc/hostname"), "tracer-guest\n")?;
    let system = tree.join("etc/systemd/system");
    std::fs::write(
        system.join(CHECK_UNIT),
        "[Unit]\nDescription=cargo xtask deploy-check: the package under systemd\n\
         After=tracer.service multi-user.target\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/sbin/tracer-service-check service-guest\n\
         StandardOutput=journal+console\nStandardError=journal+console\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )?;
    let wants = system.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let enable = wants.join(CHECK_UNIT);
    let _ = std::fs::remove_file(&enable);
    std::os::unix::fs::symlink(format!("/etc/systemd/system/{CHECK_UNIT}"), enable)?;
    // The console carries the check's lines alone: no login prompt on it.
    let getty = system.join("serial-getty@ttyS0.service");
    let _ = std::fs::remove_file(&getty);
    std::os::unix::fs::symlink("/dev/null", getty)?;
    Ok(())
}

fn boot_and_follow(kernel: &Path, initrd: &Path, disk: &Path, log: &Path) -> Result<()> {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "2G", "-smp", "2", "-nodefaults", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .args(["-append", "console=ttyS0 root=/dev/vda rw panic=-1 quiet"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu's console")?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let started = Instant::now();
    let verdict = loop {
        let left = GUEST_LIMIT.saturating_sub(started.elapsed());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if let Some(said) = line.split_once(MARK).map(|(_, s)| s.trim().to_owned()) {
                    eprintln!("deploy-check: guest: {said}");
                    if said == "PASS" {
                        break Ok(());
                    }
                    if said.starts_with("FAIL") {
                        break Err(anyhow::anyhow!("in the guest: {said}"));
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                break Err(anyhow::anyhow!("the guest did not finish within {GUEST_LIMIT:?}"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!("the guest stopped before its check said PASS"));
            }
        }
    };
    // The guest powers itself off after its verdict; do not wait for a hung one.
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until && qemu.try_wait().ok().flatten().is_none() {
        while let Ok(line) = lines_rx.try_recv() {
            console.push_str(&line);
            console.push('\n');
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    std::fs::write(log, &console).ok();
    verdict.with_context(|| format!("console: {}", log.display()))
}

/// Guest half: the checks above, as root inside the booted guest. Always powers off.
pub fn guest() -> Result<()> {
    let outcome = guest_checks();
    match &outcome {
        Ok(()) => say("PASS"),
        Err(e) => {
            let journal =
                output(Command::new("journalctl").args(["-u", "tracer", "--no-pager", "-n", "30"]));
            println!("{journal}");
            say(&format!("FAIL {e:#}"));
        }
    }
    let _ = Command::new("systemctl").args(["poweroff", "--no-block"]).status();
    outcome
}

fn say(what: &str) {
    println!("{MARK} {what}");
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_else(|e| format!("{cmd:?}: {e}"))
}

/// Polls `check` every half second until it holds or `limit` passes; the last complaint then.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let until = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > until || e.to_string().contains("was restarted") => {
                return Err(e.context(format!("{what}, after {limit:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn tracer_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("tracer").args(args).arg("--json").output().context("tracer")?;
    ensure!(out.status.success(), "tracer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).with_context(|| format!("tracer {args:?} --json"))
}

/// A workload process driven line by line (tracer/examples/workload.rs), optionally in a
/// network namespace.
struct Workload {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Workload {
    fn spawn(netns: Option<&str>) -> Result<Self> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/local/bin/workload"]);
                c
            }
            None => Command::new("/usr/local/bin/workload"),
        };
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let input = child.stdin.take().context("stdin")?;
        let output = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self { child, input, output })
    }

    fn cmd(&mut self, line: &str) -> Result<String> {
        use std::io::Write;
        writeln!(self.input, "{line}")?;
        let mut answer = String::new();
        self.output.read_line(&mut answer)?;
        let answer = answer.trim();
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("workload {line:?}: {answer}"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Established connections `pid` holds, by `ss` (in `netns`, if given).
fn ss_count(pid: u32, netns: Option<&str>) -> u64 {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let text = output(cmd.args(["-Htnp", "state", "established"]));
    text.lines().filter(|l| l.contains(&format!("pid={pid},"))).count() as u64
}

/// `pid`'s open count in `tracer top --json`.
fn open_count(pid: u32) -> Result<u64> {
    let top = tracer_json(&["top", "--limit", "1000"])?;
    let rows = top["processes"].as_array().context("top's processes")?;
    rows.iter()
        .find(|p| p["pid"] == pid)
        .and_then(|p| p["open"].as_u64())
        .with_context(|| format!("pid {pid} not in tracer top"))
}

/// A client holding `n` connections to a server in the same namespace; waits until tracer
/// counts exactly what `ss` shows.
fn counted_client(n: u64, netns: Option<&str>) -> Result<(Workload, Workload)> {
    let mut server = Workload::spawn(netns)?;
    if netns.is_some() {
        // A new namespace's loopback starts down.
        let ns = netns.unwrap_or_default();
        output(Command::new("ip").args(["netns", "exec", ns, "ip", "link", "set", "lo", "up"]));
    }
    let port = server.cmd("listen 127.0.0.1")?;
    server.cmd("serve-bg 0 echo")?;
    let mut client = Workload::spawn(netns)?;
    client.cmd(&format!("connect 127.0.0.1:{port} {n}"))?;
    let pid = client.pid();
    eventually(Duration::from_secs(60), "tracer counts the client exactly", || {
        let (counted, truth) = (open_count(pid)?, ss_count(pid, netns));
        ensure!(counted == n && truth == n, "pid {pid}: tracer {counted}, ss {truth}, want {n}");
        Ok(())
    })?;
    Ok((server, client))
}

fn probe_mode() -> Result<String> {
    let status = tracer_json(&["status"])?;
    status["probe_mode"].as_str().map(str::to_owned).context("status has no probe_mode")
}

fn guest_checks() -> Result<()> {
    say("booted; waiting for tracer.service");
    eventually(Duration::from_secs(240), "tracer.service active, /metrics answering", || {
        // A daemon that fails under the unit is restarted: one failure is enough to report.
        let restarts = output(Command::new("systemctl").args([
            "show",
            "tracer",
            "-p",
            "NRestarts",
            "--value",
        ]));
        if restarts.trim() != "0" {
            bail!("tracer.service failed and was restarted");
        }
        ensure!(
            Command::new("systemctl").args(["is-active", "--quiet", "tracer"]).status()?.success(),
            "tracer.service is not active: {}",
            output(Command::new("systemctl").args(["status", "tracer", "--no-pager"]))
        );
        let metrics = output(Command::new("curl").args(["-sf", "http://127.0.0.1:9855/metrics"]));
        ensure!(metrics.contains("tcp_tracer_build_info{"), "/metrics: {metrics:.200}");
        Ok(())
    })?;
    let status = tracer_json(&["status"])?;
    say(&format!("active under its unit, probe mode {}", probe_mode()?));
    let privileges = &status["privileges"];
    ensure!(privileges["uid"] == 0, "daemon privileges {privileges}");
    let caps: Vec<&str> = privileges["effective_capabilities"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    let kept = ["cap_dac_read_search", "cap_kill", "cap_sys_ptrace", "cap_sys_admin"];
    ensure!(caps == kept, "the daemon keeps {caps:?}, not {kept:?}");
    for part in ["clients_part", "inspector_part"] {
        let p = &status[part]["privileges"];
        ensure!(
            p["uid"] == 65534 && p["effective_capabilities"].as_array().is_some_and(Vec::is_empty),
            "{part}: {p}"
        );
    }
    let launcher = &status["inspector_launcher"]["privileges"];
    let launcher_caps = serde_json::json!(["cap_setgid", "cap_setuid", "cap_setpcap"]);
    ensure!(
        launcher["uid"] == 0 && launcher["effective_capabilities"] == launcher_caps,
        "the launcher of inspector parts runs with {launcher}"
    );
    say("privileges: the daemon keeps its four capabilities, both parts run as nobody with none, \
         the launcher of inspector parts keeps three");

    let (_server, _client) = counted_client(7, None)?;
    say("a client's 7 connections counted exactly, as ss shows them");
    output(Command::new("ip").args(["netns", "add", "second"]));
    let (_server2, _client2) = counted_client(5, Some("second"))?;
    say("a client in a second network namespace counted exactly");

    // kprobe mode under the same unit and sandbox.
    let dropin = Path::new("/run/systemd/system/tracer.service.d");
    std::fs::create_dir_all(dropin)?;
    std::fs::write(
        dropin.join("kprobe.conf"),
        "[Service]\nExecStart=\nExecStart=/usr/bin/tracer run --config /etc/tracer/tracer.toml --probe kprobe\n",
    )?;
    setup::capture(Command::new("systemctl").arg("daemon-reload"))?;
    setup::capture(Command::new("systemctl").args(["restart", "tracer"]))?;
    eventually(Duration::from_secs(240), "kprobe mode under the unit", || {
        let mode = probe_mode()?;
        ensure!(mode == "kprobe", "probe mode {mode}");
        Ok(())
    })?;
    let events = std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
    ensure!(!events.trim().is_empty(), "kprobe mode runs but tracefs lists no kprobe event");
    let instances = hit_counter_instances();
    ensure!(
        instances.len() == 1,
        "the unit's daemon has no tracefs instance for its never-run count: {instances:?}"
    );
    let (_server3, _client3) = counted_client(3, None)?;
    say(
        "kprobe mode under the unit: its kprobe events and never-run count in tracefs, counts exact",
    );

    let programs = daemon_program_ids()?;
    ensure!(!programs.is_empty(), "the daemon holds no BPF program");
    ensure!(still_loaded(&programs)? == programs, "bpftool does not list the daemon's programs");
    setup::capture(Command::new("systemctl").args(["stop", "tracer"]))?;
    eventually(Duration::from_secs(30), "the probes detached after systemctl stop", || {
        let left = still_loaded(&programs)?;
        let events =
            std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
        let instances = hit_counter_instances();
        ensure!(
            left.is_empty() && events.trim().is_empty() && instances.is_empty(),
            "programs {left:?} loaded, kprobe events {events:?}, tracefs instances {instances:?}"
        );
        Ok(())
    })?;
    say(&format!(
        "systemctl stop unloaded the daemon's {} programs and removed its kprobe events and tracefs instance",
        programs.len()
    ));

    std::fs::remove_dir_all(dropin)?;
    setup::capture(Command::new("dpkg").args(["--purge", "tracer"]))?;
    let left: Vec<&str> = [
        "/usr/bin/tracer",
        "/etc/tracer",
        "/usr/lib/systemd/system/tracer.service",
        "/etc/systemd/system/multi-user.target.wants/tracer.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/tracer.service.dsh-also",
        "/run/tracer",
    ]
    .into_iter()
    .filter(|p| Path::new(p).symlink_metadata().is_ok())
    .collect();
    ensure!(left.is_empty(), "the purge left {left:?}");
    say("dpkg --purge removed the package, its config and its unit");
    Ok(())
}

/// The ids of the BPF programs the running daemon holds (the `prog_id` of its descriptors'
/// fdinfo).
fn daemon_program_ids() -> Result<Vec<u64>> {
    let pid =
        output(Command::new("systemctl").args(["show", "tracer", "-p", "MainPID", "--value"]));
    let pid = pid.trim();
    ensure!(pid != "0" && !pid.is_empty(), "tracer.service has no main process");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Which of `ids` the kernel still has loaded (`bpftool prog show`).
fn still_loaded(ids: &[u64]) -> Result<Vec<u64>> {
    let out =
        Command::new("bpftool").args(["prog", "show", "--json"]).output().context("bpftool")?;
    let programs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let loaded: Vec<u64> = programs
        .as_array()
        .map(|list| list.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default();
    Ok(ids.iter().copied().filter(|id| loaded.contains(id)).collect())
}

/// The tracefs instances of the daemon's never-run count (`tracer-<pid>-<n>`).
fn hit_counter_instances() -> Vec<String> {
    std::fs::read_dir("/sys/kernel/tracing/instances")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("tracer-"))
                .collect()
        })
        .unwrap_or_default()
}
