//! Containers and pods: the cgroup (v2) id that owner-context events carry, turned into the
//! runtime, container, pod and Kubernetes namespace that run the process, so every view can
//! name them and be sliced by them.
//!
//! Resolution never runs per event: the daemon looks ids up in [`Directory`] (a map read), and
//! ids it has not resolved yet are resolved off the event loop (walk the cgroup2 mount for the
//! directory whose inode is the id, parse its path, read the names the node keeps on disk).
use std::{collections::HashMap, sync::Arc};

pub mod views;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What runs the cgroup's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
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
}

impl Placement {
    pub fn is_host(&self) -> bool {
        self.container.is_none()
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
}
