//! Cgroup ids of processes the daemon knows only from its start-up scan, with the daemon in a
//! private cgroup namespace (as in a DaemonSet pod), where `/proc/PID/cgroup` paths are
//! relative to the daemon's own cgroup. Ground truth: the inode number of the cgroup v2
//! directory the test made, which is the id `bpf_get_current_cgroup_id()` returns there.
mod common;

use std::{
    ffi::CString,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Daemon, Workload, num};

/// The cgroup v2 mount, wherever it is: `/sys/fs/cgroup` on pure v2 hosts (the VM guests),
/// `/sys/fs/cgroup/unified` on hybrid ones.
fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup2 mount (tracer's cgroup ids are v2 ids)")
}

/// Cgroup directories under the v2 root, removed on drop (their processes moved back to the
/// root first), also when the test fails.
struct Cgroups {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    fn new(root: PathBuf) -> Self {
        Self { root, dirs: Vec::new() }
    }

    fn make(&mut self, relative: &str) -> PathBuf {
        let dir = self.root.join(relative);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.dirs.push(dir.clone());
        dir
    }
}

fn move_into(dir: &Path, pid: u32) {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
                // A killed process leaves its cgroup a moment after it is reaped.
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn ns_of(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("cgroup namespace link")
}

#[test]
fn scanned_processes_get_their_v2_cgroup_id_with_the_daemon_in_a_private_cgroup_namespace() {
    let mut cgroups = Cgroups::new(cgroup2_mount());
    let top = format!("tracer-test-cgroup-ids-{}", std::process::id());
    cgroups.make(&top);
    let app = cgroups.make(&format!("{top}/app"));
    let daemon_cgroup = cgroups.make(&format!("{top}/daemon"));
    let app_id = std::fs::metadata(&app).expect("stat the app cgroup").ino();

    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    // A connection opened before the daemon exists: only the start-up scan can find it.
    let mut old = Workload::spawn();
    move_into(&app, old.pid);
    old.connect(&format!("127.0.0.1:{port}"), 2);
    server.cmd("accept 0 2");

    // The daemon in its own cgroup, then a cgroup namespace rooted there: its /proc/PID/cgroup
    // shows the app's cgroup as "/../app". Nothing allocates between fork and exec.
    let procs =
        CString::new(daemon_cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes())
            .expect("path");
    let daemon = Daemon::start_with(&[], move |command| {
        // SAFETY: only async-signal-safe calls (open, write, close, unshare) on memory made
        // before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    });
    let daemon_pid = daemon.pid().to_string();
    assert_ne!(ns_of(&daemon_pid), ns_of("self"), "the daemon runs in a private cgroup namespace");
    assert!(
        std::fs::read_to_string(format!("/proc/{daemon_pid}/cgroup"))
            .expect("daemon cgroup")
            .contains(&format!("0::/{top}/daemon")),
        "the daemon sits in its own cgroup"
    );

    daemon.eventually("the pre-existing connections and their owner's cgroup", |d| {
        let row = d.process(old.pid);
        if row.is_null() {
            return Err(format!("pid {} not in top", old.pid));
        }
        common::expect_eq("open", num(&row, "open"), 2)?;
        common::expect_eq("cgroup_id", num(&row, "cgroup_id"), app_id)
    });
    assert!(daemon.log_text().contains("cgroup ids of scanned processes: from the task iterator"));
    let status = daemon.json(&["status"]);
    assert!(status["containers"]["scanned_cgroup_ids_unavailable"].is_null(), "{status}");
    let text = daemon.try_cli(&["status"]).expect("status");
    assert!(text.contains("scanned processes' cgroup ids: from the task iterator"), "{text}");

    // A process of the same cgroup that connects after start: the id its events carry.
    let mut new = Workload::spawn();
    move_into(&app, new.pid);
    new.connect(&format!("127.0.0.1:{port}"), 1);
    server.cmd("accept 0 1");
    daemon.eventually("the new process's event-carried cgroup", |d| {
        let row = d.process(new.pid);
        if row.is_null() {
            return Err(format!("pid {} not in top", new.pid));
        }
        common::expect_eq("cgroup_id", num(&row, "cgroup_id"), app_id)
    });
    // The server, in the test's own cgroup, is not in the app's.
    let server_row = daemon.process(server.pid);
    assert_ne!(num(&server_row, "cgroup_id"), app_id);
    drop(daemon);
    drop((old, new, server));
    drop(cgroups);
}
