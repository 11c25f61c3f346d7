//! The cgroup2 mount and the path of a cgroup id in it.
//!
//! `bpf_get_current_cgroup_id()` is the id of the task's v2 cgroup: its kernfs node id, which on
//! 64-bit kernels is the inode number of the cgroup's directory (tests/containers.rs checks it
//! against an event). So an id is found by walking the mount and reading inode numbers; one
//! walk caches every directory, and a later miss walks again.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where the cgroup2 hierarchy is mounted, read from `/proc/self/mountinfo`.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "no cgroup2 mount in /proc/self/mountinfo (containers stay unresolved); mount one, or give its path with `tracer run --cgroup-root PATH`"
    )]
    NotMounted,
}

/// The first cgroup2 mount point in a mountinfo text (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(unescape))?
            .map(PathBuf::from)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; a backslash not followed
/// by the octal code of a byte (`\000` to `\377`) stays as it is.
fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            (b'0'..=b'3').contains(&d[0]) && d[1..].iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This host's cgroup2 mount point.
pub fn find_cgroup2_mount() -> Result<PathBuf, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Read)?;
    cgroup2_mount(&text).ok_or(MountError::NotMounted)
}

/// Cgroup ids to paths under one cgroup2 mount, cached.
#[derive(Debug)]
pub struct CgroupFs {
    root: PathBuf,
    /// id -> path from the mount's root (`/system.slice/nginx.service`).
    paths: HashMap<u64, String>,
    walks: u64,
}

impl CgroupFs {
    pub fn new(root: PathBuf) -> Self {
        Self { root, paths: HashMap::new(), walks: 0 }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Walks done so far (each caches every directory it passed).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    pub fn cached(&self) -> usize {
        self.paths.len()
    }

    /// The path of each id (None: no such directory now), walking the tree at most once.
    pub fn paths_of(&mut self, ids: &[u64]) -> Vec<(u64, Option<String>)> {
        if ids.iter().any(|id| !self.still_there(*id)) {
            self.walk();
        }
        ids.iter().map(|id| (*id, self.paths.get(id).cloned())).collect()
    }

    /// The path of `id`, walking the tree on a miss.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        self.paths_of(&[id]).pop().and_then(|(_, path)| path)
    }

    /// Whether `id`'s cached directory still exists and is still `id` (a new directory at the
    /// same path has a new inode).
    pub fn still_there(&self, id: u64) -> bool {
        self.paths.get(&id).is_some_and(|path| self.inode(path) == Some(id))
    }

    /// Whether the directory of `id` is gone (false while it exists, or was never cached).
    pub fn gone(&self, id: u64) -> bool {
        self.paths.contains_key(&id) && !self.still_there(id)
    }

    /// Drops cached ids whose directory is gone.
    pub fn forget_gone(&mut self) {
        let gone: Vec<u64> = self.paths.keys().copied().filter(|id| self.gone(*id)).collect();
        for id in gone {
            self.paths.remove(&id);
        }
    }

    fn inode(&self, path: &str) -> Option<u64> {
        std::fs::metadata(self.full(path)).ok().map(|m| m.ino())
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Re-reads the whole tree: every directory's inode and path. Directories that vanish
    /// during the walk are skipped.
    fn walk(&mut self) {
        self.walks += 1;
        let mut paths = HashMap::with_capacity(self.paths.len());
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, path)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            paths.insert(meta.ino(), path.clone());
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                // cgroup directories are real directories (no symlinks in cgroupfs).
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                stack.push((entry.path(), child));
            }
        }
        self.paths = paths;
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn an_escape_beyond_a_byte_stays_as_written() {
        // \740 is no byte (found by fuzzing proc_text: it overflowed).
        let line = "68 5 0:26 / /a\\740b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(line), Some(PathBuf::from("/a\\740b")));
        let line = "68 5 0:26 / /a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(line), Some(PathBuf::from("/a b")));
    }

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_pure_v2_hosts() {
        let hybrid = "\
25 31 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        // A DaemonSet's host mount, with a space escaped; no optional fields.
        let elsewhere = "40 30 0:30 / /host/sys\\040fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(elsewhere), Some(PathBuf::from("/host/sys fs/cgroup")));
        let v1_only = "27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(v1_only), None);
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn maps_inodes_to_paths_and_forgets_removed_directories() {
        // Any directory tree stands in for the cgroup mount: ids are inode numbers.
        let root = std::env::temp_dir().join(format!("tracer-cgroupfs-{}", std::process::id()));
        let _cleanup = crate::containers::TempTree(root.clone());
        let leaf = root.join("kubepods.slice/pod.slice/leaf.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let (leaf_id, root_id) = (ino(&leaf), ino(&root));
        let mut fs = CgroupFs::new(root.clone());
        assert_eq!(fs.path_of(leaf_id).as_deref(), Some("/kubepods.slice/pod.slice/leaf.scope"));
        assert_eq!(fs.path_of(root_id).as_deref(), Some("/"));
        assert_eq!(fs.walks(), 1, "the first walk cached both");
        assert!(!fs.gone(leaf_id));
        std::fs::remove_dir(&leaf).unwrap();
        assert!(fs.gone(leaf_id));
        fs.forget_gone();
        assert_eq!(fs.cached(), 3, "the root and the two slices stay");
        assert_eq!(fs.path_of(leaf_id), None);
        assert_eq!(fs.walks(), 2, "a miss walks again");
    }
}
