//! Containers and pods: the cgroup (v2) id that owner-context events carry, turned into the
//! runtime, container, pod and Kubernetes namespace that run the process, so every view can
//! name them and be sliced by them.
//!
//! Resolution never runs per event: the daemon looks ids up in [`Directory`] (a map read), and
//! ids it has not resolved yet are resolved off the event loop (walk the cgroup2 mount for the
//! directory whose inode is the id, parse its path, read the names the node keeps on disk).
//! - [`cgroupfs`]: the cgroup2 mount, and id -> path by its inode numbers;
//! - [`parse`]: path -> runtime, container id, pod UID or systemd unit (pure, table-driven);
//! - [`names`]: container, pod and namespace names from the kubelet's log layout and docker's
//!   configs;
//! - [`Resolver`]: the three together, for the daemon to run off its event loop.
pub mod cgroupfs;
pub mod names;
pub mod parse;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

pub mod views;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What runs the cgroup's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker (`docker-<id>.scope`, `/docker/<id>`; a bare id under a pod when docker's config
    /// names it: cri-dockerd).
    Docker,
    /// containerd (`cri-containerd-<id>.scope`, a bare id under a pod).
    Containerd,
    /// CRI-O (`crio-<id>.scope`, `crio-<id>`).
    #[serde(rename = "cri-o")]
    CriO,
    /// podman (`libpod-<id>.scope`, `libpod-<id>`).
    Podman,
}

/// The container a process runs in, as far as the node can tell without asking anyone.
/// Whatever is unknown stays `None`, never guessed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Container {
    /// The runtime's full container id (64 hex digits for the common runtimes).
    pub id: String,
    /// Its name: the Kubernetes container name, or docker's name.
    pub name: Option<String>,
    /// The runtime that runs it (from its cgroup path).
    pub runtime: Runtime,
    /// Kubernetes pod name.
    pub pod: Option<String>,
    /// Kubernetes namespace of the pod.
    pub namespace: Option<String>,
    /// The pod's UID (from its cgroup path; dashes as Kubernetes writes them).
    pub pod_uid: Option<String>,
    /// The cgroup v2 path, from the cgroup2 mount's root.
    pub cgroup: String,
    /// `sandbox` for a pod's sandbox (pause): it is no container of its own (no name, in no
    /// `top --by container|pod` row and no per-container series on /metrics) but belongs to its
    /// pod (`--pod`, `--namespace` select it). Absent for a workload container.
    #[serde(default, skip_serializing_if = "Role::is_workload")]
    pub role: Role,
}

impl Container {
    /// The id as `docker ps` prints it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// The name to print: the container's name, else its short id.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| self.short_id())
    }

    /// A pod's sandbox (pause), which owns no application traffic.
    pub fn is_sandbox(&self) -> bool {
        self.role == Role::Sandbox
    }
}

/// Where a cgroup sits, once resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Placement {
    /// The cgroup v2 path (`/system.slice/nginx.service`), or `None` when the id's directory
    /// was not found (gone, or outside the mount the daemon sees).
    pub cgroup: Option<String>,
    /// The container, for processes in one; `None` for host processes.
    pub container: Option<Container>,
    /// The systemd unit of a host process (`nginx.service`, `session-3.scope`).
    pub unit: Option<String>,
    /// What the cgroup's processes are to their container: its workload (also every host
    /// process), a runtime's monitor (conmon: a host process, `container` is `None`), or a pod's
    /// sandbox (pause: `container` names the sandbox id and its pod, no container name).
    /// Neither a monitor nor a sandbox owns application traffic.
    #[serde(default, skip_serializing_if = "Role::is_workload")]
    pub role: Role,
}

impl Placement {
    pub fn is_host(&self) -> bool {
        self.container.is_none()
    }

    /// A cgroup id whose directory was not found: no path, no container.
    pub fn unknown() -> Self {
        Self { cgroup: None, container: None, unit: None, role: Role::Workload }
    }

    /// A container whose names the node may still write (the kubelet links a container's log
    /// shortly after it starts): worth reading them again.
    pub fn names_pending(&self) -> bool {
        self.role == Role::Workload
            && self.container.as_ref().is_some_and(|c| {
                c.name.is_none()
                    || (c.pod_uid.is_some() && (c.pod.is_none() || c.namespace.is_none()))
            })
    }
}

/// What a cgroup's processes are to their container (see [`Placement::role`]). In a
/// `container` object only `sandbox` is sent: a monitor is a host process (no `container`), and
/// a workload container omits the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A container's own processes, or a host process.
    #[default]
    Workload,
    /// conmon (`libpod-conmon-<id>.scope`, `crio-conmon-<id>.scope`).
    Monitor,
    /// The pod's sandbox (pause) container.
    Sandbox,
}

impl Role {
    pub fn is_workload(&self) -> bool {
        *self == Role::Workload
    }
}

/// The resolver's counts, for `tracer status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResolverStatus {
    /// The cgroup2 mount walked (`--cgroup-root`), or `null` when none was found.
    pub cgroup_root: Option<String>,
    /// cgroup ids resolved to a directory, since start.
    pub resolved: u64,
    /// cgroup ids whose directory was not found, since start.
    pub misses: u64,
    /// Of the resolved, those in a container.
    pub containers: u64,
    /// Walks of the cgroup2 tree, since start (one per batch with an id not cached).
    pub walks: u64,
    /// Placements held now (the Directory's size).
    pub cached: u64,
    /// Containers whose names are still being looked for now.
    pub names_pending: u64,
    /// Why processes known only from scans (older than the daemon, new holders) have cgroup
    /// id 0 (unknown), or `null` when the kernel's task iterator gives them theirs.
    pub scanned_cgroup_ids_unavailable: Option<String>,
}

/// Where the resolver looks: the cgroup2 mount and the node's name directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// `--cgroup-root`; `None`: found in /proc/self/mountinfo.
    pub cgroup_root: Option<PathBuf>,
    pub names: names::NameDirs,
}

/// cgroup id -> [`Placement`]: a walk of the cgroup2 mount (cached), the path's parse, then the
/// names on disk. Blocking file system work: run it off the event loop.
#[derive(Debug)]
pub struct Resolver {
    fs: cgroupfs::CgroupFs,
    names: names::NameDirs,
}

impl Resolver {
    pub fn new(cgroup_root: PathBuf, names: names::NameDirs) -> Self {
        Self { fs: cgroupfs::CgroupFs::new(cgroup_root), names }
    }

    /// The resolver of these sources; the cgroup2 mount from /proc/self/mountinfo unless given.
    pub fn from_sources(sources: &Sources) -> Result<Self, cgroupfs::MountError> {
        let root = match &sources.cgroup_root {
            Some(root) => root.clone(),
            None => cgroupfs::find_cgroup2_mount()?,
        };
        Ok(Self::new(root, sources.names.clone()))
    }

    pub fn cgroup_root(&self) -> &std::path::Path {
        self.fs.root()
    }

    pub fn walks(&self) -> u64 {
        self.fs.walks()
    }

    /// The placement of one cgroup id.
    pub fn resolve(&mut self, cgroup_id: u64) -> Placement {
        self.resolve_many(&[cgroup_id]).pop().map_or_else(Placement::unknown, |(_, p)| p)
    }

    /// The placements of several ids, with at most one walk of the tree.
    pub fn resolve_many(&mut self, ids: &[u64]) -> Vec<(u64, Placement)> {
        self.fs
            .paths_of(ids)
            .into_iter()
            .map(|(id, path)| (id, path.map_or_else(Placement::unknown, |p| self.placement(p))))
            .collect()
    }

    /// Whether `id`'s directory is gone (it was seen, and no longer exists).
    pub fn gone(&self, cgroup_id: u64) -> bool {
        self.fs.gone(cgroup_id)
    }

    pub fn forget_gone(&mut self) {
        self.fs.forget_gone();
    }

    /// A cgroup path's placement: parsed, then named from the node's files.
    pub fn placement(&self, path: String) -> Placement {
        let parsed = parse::parse(&path);
        let mut placement = Placement {
            cgroup: Some(path.clone()),
            container: None,
            unit: parsed.unit,
            role: parsed.role,
        };
        let Some((mut runtime, id)) = parsed.container else { return placement };
        let found = self.names.lookup(&id, parsed.pod_uid.as_deref());
        if found.docker && runtime == Runtime::Containerd && parsed.pod_uid.is_some() {
            // The cgroupfs driver's bare id under a pod: docker's (cri-dockerd) when docker
            // knows it.
            runtime = Runtime::Docker;
        }
        if found.sandbox {
            placement.role = Role::Sandbox;
        }
        placement.container = Some(Container {
            id,
            name: found.name,
            runtime,
            pod: found.pod,
            namespace: found.namespace,
            pod_uid: parsed.pod_uid,
            cgroup: path,
            role: placement.role,
        });
        placement
    }
}

/// Resolved cgroup ids. Readers (queries, metrics, alerts) only look up; the resolver fills it.
#[derive(Debug, Default)]
pub struct Directory {
    resolved: HashMap<u64, Arc<Placement>>,
}

impl Directory {
    /// The placement of `cgroup_id`, if resolved.
    pub fn get(&self, cgroup_id: u64) -> Option<&Arc<Placement>> {
        self.resolved.get(&cgroup_id)
    }

    /// The container of `cgroup_id`, if resolved and in one.
    pub fn container(&self, cgroup_id: u64) -> Option<&Container> {
        self.get(cgroup_id).and_then(|p| p.container.as_ref())
    }

    pub fn insert(&mut self, cgroup_id: u64, placement: Placement) {
        self.resolved.insert(cgroup_id, Arc::new(placement));
    }

    pub fn remove(&mut self, cgroup_id: u64) -> Option<Arc<Placement>> {
        self.resolved.remove(&cgroup_id)
    }

    pub fn contains(&self, cgroup_id: u64) -> bool {
        self.resolved.contains_key(&cgroup_id)
    }

    pub fn len(&self) -> usize {
        self.resolved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty()
    }

    /// Every resolved id and its placement.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Arc<Placement>)> + '_ {
        self.resolved.iter().map(|(id, p)| (*id, p))
    }
}

/// Removes a unit test's directory tree, also when the test fails.
#[cfg(test)]
pub(crate) struct TempTree(pub std::path::PathBuf);

#[cfg(test)]
impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
