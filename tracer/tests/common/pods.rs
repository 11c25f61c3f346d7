//! Pods and containers made from kernel parts for the tests: cgroup directories in the real
//! cgroup2 hierarchy, in the shapes runtimes and the kubelet make, and a kubelet log tree that
//! names them.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use tracer::containers::{cgroupfs, names::NameDirs};

use super::TempDir;

/// Cgroup directories the test made, removed leaf-first on drop after moving every process in
/// them back to the root cgroup (also when the test fails).
pub struct Cgroups {
    pub root: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    pub fn new() -> Self {
        let root = cgroupfs::find_cgroup2_mount().expect("a cgroup2 mount");
        Self { root, made: Vec::new() }
    }

    /// Makes `path` (and whatever of its parents is missing); returns its directory.
    pub fn make(&mut self, path: &str) -> PathBuf {
        let mut dir = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
        dir
    }

    pub fn enter(&self, dir: &Path, pid: u32) {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            // A process just moved out (or killed) may keep the cgroup busy for a moment.
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir(dir) {
                tries += 1;
                if e.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if tries == 50 {
                    eprintln!("cgroup {} not removed: {e}", dir.display());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

pub fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat cgroup").ino()
}

/// A 64-hex container id unique to this run, whose first 12 digits (the short id that
/// `--container` prefixes match) differ between shapes, as real ids do.
pub fn container_id(n: u32) -> String {
    let spread = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(u64::from(n) + 1);
    let tail = 0xc0de_0000_u128 + u128::from(n);
    format!("{spread:016x}{:016x}{tail:032x}", u64::from(std::process::id()))
}

pub fn pod_uid(n: u32) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n)
}

/// A kubelet log tree: `pods/<ns>_<pod>_<uid>/<container>/0.log` and the
/// `containers/<pod>_<ns>_<container>-<id>.log` links to them.
pub struct Kubelet {
    pub dirs: NameDirs,
    _tmp: TempDir,
}

impl Kubelet {
    pub fn new() -> Self {
        let tmp = TempDir::new("kubelet");
        let dirs = NameDirs {
            pod_logs: tmp.0.join("pods"),
            container_logs: tmp.0.join("containers"),
            docker: tmp.0.join("docker"),
        };
        std::fs::create_dir_all(&dirs.pod_logs).expect("pods dir");
        std::fs::create_dir_all(&dirs.container_logs).expect("containers dir");
        Self { dirs, _tmp: tmp }
    }

    pub fn container(&self, namespace: &str, pod: &str, uid: &str, name: &str, id: &str) {
        let dir = self.dirs.pod_logs.join(format!("{namespace}_{pod}_{uid}")).join(name);
        std::fs::create_dir_all(&dir).expect("pod log dir");
        std::fs::write(dir.join("0.log"), "").expect("log");
        let link = self.dirs.container_logs.join(format!("{pod}_{namespace}_{name}-{id}.log"));
        std::os::unix::fs::symlink(dir.join("0.log"), link).expect("log link");
    }

    pub fn docker(&self, id: &str, name: &str) {
        let dir = self.dirs.docker.join("containers").join(id);
        std::fs::create_dir_all(&dir).expect("docker dir");
        let config = serde_json::json!({ "ID": id, "Name": format!("/{name}") });
        std::fs::write(dir.join("config.v2.json"), config.to_string()).expect("config");
    }

    pub fn flags(&self) -> Vec<String> {
        let flag = |name: &str, path: &Path| [name.to_owned(), path.display().to_string()];
        [
            flag("--pod-logs-dir", &self.dirs.pod_logs),
            flag("--container-logs-dir", &self.dirs.container_logs),
            flag("--docker-dir", &self.dirs.docker),
        ]
        .concat()
    }
}
