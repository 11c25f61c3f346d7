//! Go HTTP request probing in the daemon (`--go-requests`): which Go processes get the request
//! uprobe, their binaries inspected off the event loop, attached and detached as they become
//! suspects or stop being one (or exit). A healthy Go service that is not a suspect pays
//! nothing: no probe is attached to it.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::mpsc,
};

use crate::{
    api::answers::GoRequestsStatus,
    gohttp::{GoHttpBinary, GoRequestPolicy},
    privsep::inspector::Inspection,
    probes::{GoRequestProbe, Probes},
    stacks::store::StackCounters,
    table::{ConnectionTable, ProcessKey},
};

/// What inspecting a process's binary found.
type Inspected = (ProcessKey, PathBuf, Result<GoHttpBinary, String>);

pub(super) struct GoRequests {
    policy: GoRequestPolicy,
    probed: HashMap<ProcessKey, Probed>,
    /// Processes that cannot be probed (not Go, no HTTP/1 client, no offsets): why.
    refused: HashMap<ProcessKey, String>,
    inspecting: HashSet<ProcessKey>,
    inspected_tx: mpsc::Sender<Inspected>,
    inspected_rx: mpsc::Receiver<Inspected>,
    attach_failed: u64,
    /// Who parses the binaries (the inspector part with --privsep on): this only opens them.
    inspection: Inspection,
}

struct Probed {
    probe: GoRequestProbe,
    /// When the probe was attached: the process's connections opened earlier had requests
    /// before probing.
    since_ns: u64,
}

impl GoRequests {
    pub(super) fn new(policy: GoRequestPolicy, inspection: Inspection) -> Self {
        let (inspected_tx, inspected_rx) = mpsc::channel();
        Self {
            policy,
            probed: HashMap::new(),
            refused: HashMap::new(),
            inspecting: HashSet::new(),
            inspected_tx,
            inspected_rx,
            attach_failed: 0,
            inspection,
        }
    }

    pub(super) fn inspection(&self) -> &Inspection {
        &self.inspection
    }

    /// When `process` was probed, if it is.
    pub(super) fn probed_since(&self, process: ProcessKey) -> Option<u64> {
        self.probed.get(&process).map(|p| p.since_ns)
    }

    /// Brings the probes in line with the policy: `suspects` are the detector's now. Attaches
    /// to the wanted processes whose binaries were inspected, starts inspecting the new ones
    /// (off the event loop), and detaches from those no longer wanted or gone.
    pub(super) fn update(
        &mut self,
        probes: &mut Probes,
        table: &ConnectionTable,
        suspects: impl Iterator<Item = ProcessKey>,
        now_ns: u64,
    ) {
        let mut wanted: HashSet<ProcessKey> = match self.policy {
            GoRequestPolicy::Off => HashSet::new(),
            GoRequestPolicy::Suspects => suspects.collect(),
            GoRequestPolicy::All => table.processes().map(|p| p.key).collect(),
        };
        // Not the daemon itself (never a Go client).
        wanted.retain(|p| p.pid != std::process::id());
        while let Ok((process, binary, inspected)) = self.inspected_rx.try_recv() {
            self.inspecting.remove(&process);
            match inspected {
                Ok(go) if wanted.contains(&process) => {
                    match probes.attach_go_requests(process.pid, &binary, &go) {
                        Ok(probe) => {
                            log::info!(
                                "probing the HTTP requests of pid {} ({}, offsets from {:?})",
                                process.pid,
                                go.version_string,
                                go.offsets_source
                            );
                            self.probed.insert(process, Probed { probe, since_ns: now_ns });
                        }
                        Err(e) => {
                            self.attach_failed += 1;
                            log::warn!(
                                "cannot probe the HTTP requests of pid {}: {e}",
                                process.pid
                            );
                            self.refused.insert(process, e.to_string());
                        }
                    }
                }
                // No longer wanted by the time it was read: inspected again if it is again.
                Ok(_) => {}
                Err(why) => {
                    log::debug!("pid {}: no Go HTTP requests to probe: {why}", process.pid);
                    self.refused.insert(process, why);
                }
            }
        }
        let gone: Vec<ProcessKey> =
            self.probed.keys().filter(|p| !wanted.contains(p)).copied().collect();
        for process in gone {
            if let Some(probed) = self.probed.remove(&process)
                && let Err(e) = probes.detach_go_requests(probed.probe)
            {
                log::debug!("detaching the request probe of pid {}: {e}", process.pid);
            }
        }
        self.refused.retain(|p, _| table.process(*p).is_some());
        for process in wanted {
            if self.probed.contains_key(&process)
                || self.refused.contains_key(&process)
                || !self.inspecting.insert(process)
            {
                continue;
            }
            let tx = self.inspected_tx.clone();
            let inspection = self.inspection.clone();
            tokio::task::spawn_blocking(move || {
                let binary = PathBuf::from(format!("/proc/{}/exe", process.pid));
                // Opened here, with the daemon's privileges; read and parsed by the inspector
                // part (or here, with --privsep off), which answers a parser panic as an error.
                let inspected = std::fs::File::open(&binary)
                    .map_err(|e| format!("cannot open {}: {e}", binary.display()))
                    .and_then(|file| inspection.go_binary(&file));
                let _ = tx.send((process, binary, inspected));
            });
        }
    }

    /// `counters`: the stack store's, which counts the request records.
    pub(super) fn status(&self, counters: StackCounters) -> GoRequestsStatus {
        GoRequestsStatus {
            policy: self.policy.to_string(),
            probed_processes: self.probed.len() as u64,
            refused_processes: self.refused.len() as u64,
            attach_failed: self.attach_failed,
            requests: counters.requests,
            requests_unmatched: counters.requests_unmatched,
            requests_lost: counters.requests_lost,
        }
    }

    /// Detaches every probe (the daemon is stopping).
    pub(super) fn detach_all(&mut self, probes: &mut Probes) {
        for (_, probed) in self.probed.drain() {
            let _ = probes.detach_go_requests(probed.probe);
        }
    }
}
