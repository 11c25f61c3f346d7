//! Answers to API requests, built from the table in the event loop.
use std::{collections::HashMap, net::SocketAddr};

use serde_json::value::{RawValue, to_raw_value};

use tracer_common::EventKind;

use super::Daemon;
use crate::{
    api::{
        answers::{
            AgesReport, AlertView, GroupReport, KprobeStatus, LeaksReport, OverrideMatches,
            ProgramMissesStatus, RemoteReport, RemoteRow, StatusReport, TopReport, TopRow,
            conn_state_label, conns_filter,
        },
        protocol::{API_VERSION, Request, TopBy},
    },
    clock::Clock,
    containers::{
        Container,
        views::{self, Member, PlacementFilter},
    },
    detect::{Alert, overrides::Workload},
    pipeline::LostEvents,
    table::{ConnSnapshot, Phase, ProcessKey},
};

impl Daemon {
    /// The answer's JSON text, written straight from its type: no `serde_json::Value` in
    /// between, which at 100,000 connections cut the event loop's time on `conns` about six-fold
    /// (37 ms against 220 ms, release build).
    pub(super) fn answer(&self, request: Request) -> Result<Box<RawValue>, String> {
        let value = match request {
            Request::Status {} => to_raw_value(&self.status()),
            Request::Top { limit, by, placement } => {
                placement.validate()?;
                match by {
                    TopBy::Process => to_raw_value(&self.top(limit, &placement)),
                    TopBy::Remote => to_raw_value(&self.top_remotes(limit, &placement)),
                    TopBy::Container | TopBy::Pod => {
                        to_raw_value(&self.top_groups(limit, by == TopBy::Pod, &placement))
                    }
                }
            }
            Request::Leaks { placement } => {
                placement.validate()?;
                to_raw_value(&self.leaks(&placement))
            }
            Request::Ages { pid } => to_raw_value(&self.ages(pid)?),
            // The event loop answers it asynchronously (daemon/stacks.rs); here, for
            // completeness, the same answer would need the symbolizer's wait.
            Request::Stacks { .. } => {
                return Err("internal: stacks are answered by the event loop".into());
            }
            // The event loop answers it asynchronously, with a sock_diag dump (daemon/health.rs).
            Request::Conns { .. } => {
                return Err("internal: conns are answered by the event loop".into());
            }
            // A stream: the event loop subscribes it (daemon/trace.rs).
            Request::Trace { .. } => {
                return Err("internal: traces are subscribed by the event loop".into());
            }
        };
        value.map_err(|e| format!("cannot encode the answer: {e}"))
    }

    /// The `conns` rows the table has, filtered (their health figures come from a dump).
    pub(super) fn conn_rows(
        &self,
        pid: Option<u32>,
        remote: Option<&str>,
        state: Option<&str>,
        placement: &PlacementFilter,
    ) -> Result<Vec<(ConnSnapshot, Option<Container>)>, String> {
        let remote = conns_filter(remote, state, placement)?;
        let now = self.clock.now_ns();
        let keep = |view: &crate::table::ConnView<'_>| {
            pid.is_none_or(|p| view.pid() == Some(p))
                && remote.is_none_or(|r| r.matches(view.remote()))
                && state.is_none_or(|s| conn_state_label(view.phase(), view.state_name()) == s)
                // A placement filter selects processes: unattributed connections have none.
                && (placement.is_empty()
                    || (view.owner.is_some() && placement.matches(self.container_of_view(view))))
        };
        let mut containers: HashMap<u64, Container> = HashMap::new();
        let snapshots = self.table.conn_snapshots_annotated(now, keep, |view, snapshot| {
            match self.stacks.group_of(view) {
                Ok(id) => snapshot.stack_group = Some(id.0),
                Err(reason) => snapshot.no_stack = Some(reason),
            }
            if let Some(c) = self.container_of_view(view) {
                containers.insert(snapshot.id, c.clone());
            }
        });
        Ok(snapshots
            .into_iter()
            .map(|s| {
                let container = containers.remove(&s.id);
                (s, container)
            })
            .collect())
    }

    /// The container of a connection's owner (`None`: host, unresolved, or unattributed).
    fn container_of_view(&self, view: &crate::table::ConnView<'_>) -> Option<&Container> {
        view.owner.and_then(|p| self.containers.container(p.cgroup_id))
    }

    /// `top --by container|pod`: the `top` rows, grouped.
    fn top_groups(
        &self,
        limit: Option<usize>,
        by_pod: bool,
        placement: &PlacementFilter,
    ) -> GroupReport {
        let rows = self.top(None, placement).processes;
        let members = rows.iter().map(|r| {
            let m = Member {
                open: r.process.open,
                opened_total: r.process.opened_total,
                closed_total: r.process.closed_total,
                growth: r.growth,
                alerts: r.alerts.len() as u32,
            };
            (r.container.as_ref(), m)
        });
        let mut groups = views::group(members, by_pod);
        if let Some(limit) = limit {
            groups.truncate(limit);
        }
        GroupReport { groups, unattributed: self.table.unattributed() as u64 }
    }

    fn top(&self, limit: Option<usize>, placement: &PlacementFilter) -> TopReport {
        let now = self.clock.now_ns();
        let mut oldest: HashMap<ProcessKey, u64> = HashMap::new();
        for view in self.table.connections() {
            if let (Phase::Open, Some(owner)) = (view.conn.phase(), view.conn.owner()) {
                let age = view.conn.age_ns(now) / 1_000_000_000;
                let slot = oldest.entry(owner).or_default();
                *slot = (*slot).max(age);
            }
        }
        let mut rows: Vec<TopRow> = self
            .table
            .process_snapshots()
            .into_iter()
            .filter_map(|process| {
                let container = self.containers.container(process.cgroup_id);
                if !placement.matches(container) {
                    return None;
                }
                let container = container.cloned();
                let key = ProcessKey { pid: process.pid, start_time_ns: process.start_time_ns };
                let fd = self.exhaustion.fd_status(key);
                let health = self.health.of(key);
                Some(TopRow {
                    container,
                    leading_function: self.leading_function_of(key),
                    time_wait_caused: self.exhaustion.time_wait_caused(key),
                    time_wait_caused_total: self.exhaustion.time_wait_caused_total(key),
                    fd_used: fd.map(|f| f.used),
                    fd_limit: fd.and_then(|f| f.limit),
                    fd_exhaustion_seconds: fd.and_then(|f| f.exhaustion_seconds),
                    growth: self.detector.growth_of(key).0,
                    growth_partial: self.detector.growth_of(key).1,
                    idle: health.map_or(0, |h| h.idle),
                    unread: health.map_or(0, |h| h.unread),
                    oldest_age_seconds: oldest.get(&key).copied().unwrap_or(0),
                    alerts: self
                        .detector
                        .alerts_for(key)
                        .into_iter()
                        .map(|r| r.name().to_owned())
                        .collect(),
                    process,
                })
            })
            .collect();
        // Alerting first, then most open (the table's order within each group is kept).
        rows.sort_by_key(|r| (r.alerts.is_empty(), std::cmp::Reverse(r.process.open)));
        if let Some(limit) = limit {
            rows.truncate(limit);
        }
        TopReport {
            processes: rows,
            unattributed: self.table.unattributed() as u64,
            over_limit: self.table.over_limit(),
        }
    }

    /// The leading function of the largest stack group that names one behind an active alert
    /// of `key` (by rule name, the first that names one). Not just the largest group's: a group
    /// whose stacks the symbolizer has not named yet may be the largest for an evaluation
    /// (seen on a slow VM), and would hide the name until the next.
    fn leading_function_of(&self, key: ProcessKey) -> Option<String> {
        let mut alerts: Vec<&Alert> = self
            .detector
            .active()
            .filter(|a| a.pid == key.pid && a.start_time_ns == key.start_time_ns)
            .collect();
        alerts.sort_by_key(|a| a.rule);
        alerts.into_iter().find_map(|a| {
            // A Go client's opener stack ends in its Transport (no function of its own):
            // its last request's stack names the code.
            let stacks = a.evidence.stacks.as_ref()?;
            let first = |groups: &[crate::stacks::groups::StackGroup]| {
                groups.iter().find_map(|g| g.leading_function.clone())
            };
            first(&stacks.groups).or_else(|| first(&stacks.requests.as_ref()?.groups))
        })
    }

    fn top_remotes(&self, limit: Option<usize>, placement: &PlacementFilter) -> RemoteReport {
        let mut by_remote: HashMap<SocketAddr, HashMap<u32, u32>> = HashMap::new();
        for view in self.table.connections() {
            if let (Phase::Open, Some(pid)) = (view.conn.phase(), view.pid())
                && (placement.is_empty() || placement.matches(self.container_of_view(&view)))
            {
                *by_remote.entry(view.remote()).or_default().entry(pid).or_default() += 1;
            }
        }
        // The most pressed destination of each remote (destinations come most pressed first).
        let mut pressure: HashMap<SocketAddr, &crate::exhaustion::Destination> = HashMap::new();
        for d in self.exhaustion.destinations() {
            pressure.entry(d.remote).or_insert(d);
            // Destinations without connections of the selected containers are theirs only
            // when no filter is given.
            if placement.is_empty() {
                by_remote.entry(d.remote).or_default();
            }
        }
        let mut remotes: Vec<RemoteRow> = by_remote
            .into_iter()
            .map(|(remote, pids)| {
                let mut pids: Vec<(u32, u32)> = pids.into_iter().collect();
                pids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let open = pids.iter().map(|(_, n)| n).sum();
                let mut pids: Vec<u32> = pids.into_iter().take(8).map(|(pid, _)| pid).collect();
                let ports = pressure.get(&remote);
                for (holder, _) in ports.map(|d| d.holders.as_slice()).unwrap_or_default() {
                    if pids.len() < 8 && !pids.contains(&holder.pid) {
                        pids.push(holder.pid);
                    }
                }
                RemoteRow {
                    remote: remote.to_string(),
                    open,
                    pids,
                    ports_used: ports.map(|d| d.used),
                    ports_available: ports.map(|d| d.available),
                }
            })
            .collect();
        remotes.sort_by(|a, b| b.open.cmp(&a.open).then_with(|| a.remote.cmp(&b.remote)));
        if let Some(limit) = limit {
            remotes.truncate(limit);
        }
        RemoteReport { remotes, unattributed: self.table.unattributed() as u64 }
    }

    fn ages(&self, pid: u32) -> Result<AgesReport, String> {
        let process = self
            .table
            .processes()
            .filter(|p| p.pid() == pid)
            .max_by_key(|p| p.start_time_ns())
            .ok_or_else(|| {
                format!("no process {pid} in the table (it holds no connection tracer has seen)")
            })?;
        let bounds = crate::export::AGE_BOUNDS_NS;
        let mut counts = vec![0u32; bounds.len() + 1];
        let now = self.clock.now_ns();
        for view in self.table.connections() {
            if view.conn.phase() == Phase::Open && view.conn.owner() == Some(process.key) {
                let age = view.conn.age_ns(now);
                let slot = bounds.iter().position(|b| age <= *b).unwrap_or(bounds.len());
                counts[slot] += 1;
            }
        }
        let buckets =
            bounds.iter().map(|b| Some(b / 1_000_000_000)).chain([None]).zip(counts).collect();
        Ok(AgesReport { pid, comm: process.comm().into_owned(), open: process.open, buckets })
    }

    fn leaks(&self, placement: &PlacementFilter) -> LeaksReport {
        let now = self.clock.now_ns();
        let wall_now = std::time::SystemTime::now();
        let view = |a: &Alert| {
            let since_seconds = now.saturating_sub(a.since_ns) / 1_000_000_000;
            let since = wall_now - std::time::Duration::from_secs(since_seconds);
            AlertView {
                pid: a.pid,
                comm: a.comm.clone(),
                container: a.container.clone(),
                rule: a.rule.name().to_owned(),
                since: crate::logging::rfc3339(since),
                since_seconds,
                open: a.open,
                evidence: a.evidence.clone(),
                resolved_seconds_ago: a.resolved_ns.map(|t| now.saturating_sub(t) / 1_000_000_000),
            }
        };
        // Alerts keep the container they were raised in, so the filter reads theirs.
        let keep = |a: &&Alert| placement.matches(a.container.as_ref());
        let mut active: Vec<AlertView> = self.detector.active().filter(keep).map(view).collect();
        active.sort_by(|a, b| b.since_seconds.cmp(&a.since_seconds).then(a.pid.cmp(&b.pid)));
        let resolved = self.detector.recently_resolved().filter(keep).map(view).collect();
        LeaksReport { active, resolved }
    }

    /// Which processes each workload override applies to (first match wins).
    fn override_matches(&self) -> Vec<OverrideMatches> {
        const EXAMPLES: usize = 4;
        let overrides = &self.leak_settings.detector.overrides;
        let mut out: Vec<OverrideMatches> = overrides
            .iter()
            .map(|o| OverrideMatches { selector: o.pattern.clone(), ..Default::default() })
            .collect();
        if overrides.is_empty() {
            return out;
        }
        let mut processes: Vec<_> = self.table.processes().collect();
        processes.sort_by_key(|p| p.key);
        for p in processes {
            let comm = p.comm();
            let container = self.containers.container(p.cgroup_id);
            let workload = Workload { comm: &comm, container };
            let Some(i) = overrides.iter().position(|o| o.matches(workload)) else { continue };
            let slot = &mut out[i];
            slot.processes += 1;
            if slot.examples.len() < EXAMPLES {
                let place =
                    container.map_or_else(String::new, |c| format!(" in {}", views::cell(Some(c))));
                slot.examples.push(format!("{} {comm}{place}", p.pid()));
            }
        }
        out
    }

    fn status(&self) -> StatusReport {
        let kernel = self.probes.counters().unwrap_or_default();
        let received = self.source.received();
        let summary = self.table.summary();
        let lost = LostEvents::new(&kernel, self.source.malformed());
        let program_misses = self.probes.program_misses();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: API_VERSION,
            probe_mode: self.probes.mode().to_string(),
            probe_mode_reason: self.probes.mode_reason().to_owned(),
            kernel: self.kernel.clone(),
            uptime_seconds: self.clock.now_ns().saturating_sub(self.started_ns) / 1_000_000_000,
            events_total: self.source.received_total(),
            events_by_kind: EventKind::ALL
                .iter()
                .map(|k| (k.name().to_owned(), received[*k as usize]))
                .collect(),
            events_emitted: kernel.emitted_total(),
            events_lost: lost.total(),
            events_lost_by_reason: lost
                .by_reason()
                .into_iter()
                .map(|(reason, n)| (reason.to_owned(), n))
                .collect(),
            tracked_connections: summary.tracked_connections,
            unattributed: summary.unattributed,
            processes: summary.processes,
            unmatched_releases: summary.counters.unmatched_releases,
            unknown_socket_events: summary.counters.unknown_socket_events,
            stale_replaced: summary.counters.stale_replaced,
            reconciles: self.reconciler.checks_total,
            reconcile_corrections: self.reconciler.corrections_total,
            leak_evaluations: self.detector.evaluations(),
            metrics_addr: self.metrics_addr.map(|a| a.to_string()),
            metrics_tls: self.metrics_web.tls.is_some(),
            metrics_basic_auth: self.metrics_web.auth.is_some(),
            holder_changes: self.reconciler.holder_changes_total,
            kprobes: self
                .probes
                .kprobe_misses()
                .into_iter()
                .map(|m| KprobeStatus { probe: m.probe, hits: m.hits, missed: m.missed })
                .collect(),
            program_misses_total: program_misses.iter().map(|m| m.missed).sum(),
            program_misses: program_misses
                .into_iter()
                .map(|m| ProgramMissesStatus { program: m.program, missed: m.missed })
                .collect(),
            established_inferred: summary.counters.established_inferred,
            ring_bytes: self.ring_bytes,
            ring_high_water_bytes: self.ring_high_water(Some(&kernel)),
            stacks: self.stacks.status(&kernel),
            go_requests: self.go_requests.status(self.stacks.counters()),
            trace: crate::api::answers::TraceStatus {
                subscribers: self.trace.count() as u64,
                // With the records the part that serves clients dropped (crate::privsep).
                dropped: self.trace.dropped_total()
                    + self
                        .clients_part
                        .as_ref()
                        .and_then(|p| p.lock().ok())
                        .map_or(0, |p| p.trace_dropped),
            },
            privileges: crate::privileges::Privileges::of_self()
                .map(|p| crate::api::answers::PrivilegesStatus {
                    uid: p.effective_uid,
                    effective_capabilities: p.names(),
                    no_new_privs: p.no_new_privs,
                })
                .unwrap_or_default(),
            api: match self.clients_part.as_ref().and_then(|p| p.lock().ok()) {
                Some(part) => part.api.clone(),
                None => {
                    let (clients, evicted, refused) = self.api_clients.counts();
                    crate::api::answers::ApiStatus { clients: clients as u64, evicted, refused }
                }
            },
            clients_part: self.clients_part.as_ref().and_then(|p| p.lock().ok()).map(|part| {
                crate::api::answers::PartStatus {
                    pid: part.pid,
                    privileges: part.privileges.clone(),
                    seccomp: part.seccomp,
                    ..Default::default()
                }
            }),
            inspector_part: self.go_requests.inspection().status(),
            inspector_launcher: self.go_requests.inspection().launcher_status(),
            workload_overrides: self
                .leak_settings
                .detector
                .overrides
                .iter()
                .map(ToString::to_string)
                .collect(),
            workload_override_matches: self.override_matches(),
            time_wait_closes_remembered: self.exhaustion.closes_remembered() as u64,
            time_wait_closes_overflowed: self.exhaustion.closes_overflowed(),
            health_scans: self.health.scans(),
            health_scan_us: self.health.last_scan_us(),
            limits: crate::api::answers::LimitsStatus {
                max_connections: self.table.config().max_connections as u64,
                max_processes: self.table.config().max_processes as u64,
                connections_over_limit: summary.counters.connections_over_limit,
                processes_over_limit: summary.counters.processes_over_limit,
                over_limit_events: summary.counters.over_limit_events,
                refused_open: self.table.refused_outstanding(),
                untracked_at_reconcile: self.reconciler.untracked_over_limit,
                over_limit: self.table.over_limit(),
            },
            containers: crate::containers::ResolverStatus {
                scanned_cgroup_ids_unavailable: self
                    .probes
                    .task_cgroups_unavailable()
                    .map(str::to_owned),
                ..self.resolution.status(&self.containers)
            },
        }
    }
}
