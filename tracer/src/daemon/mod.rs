//! The daemon: probes -> pipeline -> table (-> detectors, exporters), until SIGINT/SIGTERM.
//!
//! One task owns the table and everything derived from it. It drains the ring buffer in
//! batches and answers API queries between batches, so the event path takes no lock.
mod containers;
mod exhaustion;
mod go_requests;
mod health;
mod leaks;
mod memory;
mod queries;
mod scan_cgroups;
mod stacks;
mod trace;

pub use leaks::{
    DEFAULT_CLOSE_WAIT_AFTER, DEFAULT_HELD_CLOSED_AFTER, DEFAULT_LEAK_INTERVAL, LeakSettings, nanos,
};

use std::{path::PathBuf, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    api::answers::AlertStacks,
    api::{
        protocol::Request,
        server::{self, Query},
    },
    clock::{BootClock, Clock},
    detect::{Change, Detector, Rule},
    error::{Error, Result},
    events,
    export::{
        self, BuildInfo, Metrics, MetricsInput, RingFill, Scrape, StackMetrics, Webhook, WebhookUrl,
    },
    ground_truth,
    pipeline::EventSource,
    privsep,
    probes::{KernelCounters, LoadOptions, Probes, preflight},
    table::{ConnectionTable, KernelSockets, ProcessKey, Reconciler, TableConfig},
};

fn every(period: Duration) -> tokio::time::Interval {
    // A zero period means never: a year is as good.
    let period = if period.is_zero() { Duration::from_secs(86_400 * 365) } else { period };
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// How often the daemon logs a one-line summary by default.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// How often the daemon compares its table with sock_diag and /proc by default.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the ring buffer is drained without a wakeup by default: every query, scrape,
/// leak check and reconcile drains first, so this only bounds how long events wait between.
pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub load: LoadOptions,
    pub table: TableConfig,
    /// API socket path.
    pub socket: PathBuf,
    /// The group whose members may query the API (`--socket-group`); root only when `None`.
    pub socket_group: Option<u32>,
    /// How often to log a one-line summary (zero: never).
    pub summary_interval: Duration,
    /// How often to compare the table with sock_diag and /proc (zero: never).
    pub reconcile_interval: Duration,
    pub leaks: LeakSettings,
    pub webhook: Option<WebhookUrl>,
    /// Where to serve /metrics (None: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// TLS and basic authentication for /metrics (`--web-config`).
    pub web_config: export::WebConfig,
    /// Processes exported individually; the rest are summed under pid="other".
    pub metrics_top_n: usize,
    /// How often to drain the ring buffer without a wakeup (with a wakeup threshold, events
    /// wait at most this long).
    pub drain_interval: Duration,
    /// Where container names and cgroup paths are read (docs/containers.md).
    pub containers: crate::containers::Sources,
    /// Which Go processes' HTTP requests are probed.
    pub go_requests: crate::gohttp::GoRequestPolicy,
    /// Who parses the binaries the daemon opens: the inspector part with `--privsep on`.
    pub inspection: crate::privsep::inspector::Inspection,
}

/// The daemon's defaults (`tracer run` without flags).
impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            table: TableConfig::default(),
            socket: PathBuf::from(crate::api::DEFAULT_SOCKET),
            socket_group: None,
            summary_interval: DEFAULT_SUMMARY_INTERVAL,
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            leaks: LeakSettings::default(),
            webhook: None,
            metrics_addr: Some(export::DEFAULT_METRICS_ADDR),
            web_config: export::WebConfig::default(),
            metrics_top_n: export::DEFAULT_TOP_N,
            drain_interval: DEFAULT_DRAIN_INTERVAL,
            containers: crate::containers::Sources::default(),
            go_requests: crate::gohttp::GoRequestPolicy::default(),
            inspection: crate::privsep::inspector::Inspection::default(),
        }
    }
}

/// Everything the event loop owns.
pub(crate) struct Daemon {
    probes: Probes,
    source: EventSource,
    table: ConnectionTable,
    reconciler: Reconciler,
    /// The table refusals already logged (connections, processes): each limit's first refusal
    /// is logged once, with the flag that raises it.
    limits_logged: (bool, bool),
    detector: Detector,
    leak_settings: LeakSettings,
    webhook: Option<Webhook>,
    metrics: Metrics,
    metrics_top_n: usize,
    /// Size of the ring buffer in bytes (`--ring-bytes`).
    ring_bytes: u64,
    /// The address /metrics is served on (with the port the kernel chose for port 0).
    metrics_addr: Option<std::net::SocketAddr>,
    /// What /metrics asks of its clients, for `status`.
    metrics_web: export::WebConfig,
    clock: BootClock,
    started_ns: u64,
    kernel: String,
    stacks: stacks::StackCapture,
    /// The Go request probes, per process.
    go_requests: go_requests::GoRequests,
    exhaustion: exhaustion::Exhaustion,
    health: health::PoolHealth,
    /// The container, pod and namespace of each cgroup id resolved so far.
    containers: crate::containers::Directory,
    /// What fills `containers`, off the event loop.
    resolution: containers::Resolution,
    /// The host's network namespace (inode of /proc/1/ns/net), for `conns` to tell
    /// containers' namespaces apart; `None` when unreadable.
    host_netns: Option<u32>,
    /// Where the tasks that symbolize a raised alert's stacks send them back.
    evidence_tx: mpsc::UnboundedSender<SymbolizedEvidence>,
    /// `tracer trace` subscribers.
    trace: trace::Subscribers,
    /// The API server's client slots, for `status`.
    api_clients: server::Clients,
    /// The part that serves clients, when it is another process (crate::privsep).
    clients_part: Option<crate::privsep::monitor::SharedClientsPart>,
}

/// The stacks of a raised alert, symbolized off the event loop.
struct SymbolizedEvidence {
    process: ProcessKey,
    rule: Rule,
    since_ns: u64,
    stacks: AlertStacks,
}

/// Raises the soft limit on open files to the hard one: the API's clients, the metrics
/// server's, /proc scans and the symbolizer's files all take descriptors, and a daemon that
/// runs out fails at whatever it was doing then.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!(
                "open files: soft limit raised from {} to {}",
                limit.rlim_cur,
                limit.rlim_max
            );
        }
    }
}

/// Lifts the locked-memory limit: kernels before 5.11 charge BPF maps and programs to it,
/// including the Go request probes loaded long after start-up. Raised here, while the daemon
/// still has CAP_SYS_RESOURCE, so that it need not keep that capability (docs/security.md).
fn raise_locked_memory_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        // Kernels from 5.11 charge BPF memory to the memory cgroup instead: nothing to do.
        log::debug!("locked memory limit not raised: {}", std::io::Error::last_os_error());
    }
}

/// The listeners `tracer run` binds before any thread starts.
pub struct Listeners {
    pub api: std::os::unix::net::UnixListener,
    /// The API socket's file, removed when the daemon stops (whoever serves the listener).
    pub api_file: server::SocketFile,
    pub metrics: Option<std::net::TcpListener>,
}

/// Privileges and kernel first (nothing else can work without them), then the sockets: a
/// second daemon must fail before it loads anything. Runs before any thread starts, so that
/// the part that serves clients can be forked off with the listeners (crate::privsep).
pub fn prepare(options: &DaemonOptions) -> anyhow::Result<Listeners> {
    preflight::check()?;
    raise_open_file_limit();
    raise_locked_memory_limit();
    let (api, api_file) = server::bind(&options.socket, options.socket_group)?;
    let metrics = options.metrics_addr.map(export::bind).transpose()?;
    Ok(Listeners { api, api_file, metrics })
}

/// Who serves the API and /metrics clients.
pub enum Serving {
    /// This process, on these listeners.
    Here(Listeners),
    /// The unprivileged part forked off with the listeners (crate::privsep), over `link`.
    Relayed {
        link: std::os::unix::net::UnixStream,
        child: libc::pid_t,
        metrics_addr: Option<std::net::SocketAddr>,
    },
}

pub async fn run(
    options: DaemonOptions,
    serving: Serving,
    api_file: server::SocketFile,
) -> anyhow::Result<()> {
    let (evidence_tx, mut evidence_rx) = mpsc::unbounded_channel::<SymbolizedEvidence>();
    let (resolved_tx, mut resolved_rx) = mpsc::unbounded_channel::<containers::Landed>();
    let mut daemon = Daemon::start(&options, evidence_tx, resolved_tx)?;
    let (scrape_tx, mut scrape_rx) = mpsc::channel::<Scrape>(8);
    let (query_tx, mut query_rx) = mpsc::channel::<Query>(64);
    // The servers, or the relay to the part that serves; the relay ending means that part
    // exited, which stops the daemon (a supervisor restarts both).
    let (servers, mut relay, child) = match serving {
        Serving::Here(Listeners { api, metrics, .. }) => {
            daemon.metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
            let web = options.web_config.clone();
            let mut servers =
                vec![tokio::spawn(server::serve(api, query_tx, daemon.api_clients.clone()))];
            servers.extend(metrics.map(|l| tokio::spawn(export::serve(l, scrape_tx, web))));
            (servers, None, None)
        }
        Serving::Relayed { link, child, metrics_addr } => {
            daemon.metrics_addr = metrics_addr;
            let part = privsep::monitor::SharedClientsPart::default();
            daemon.clients_part = Some(part.clone());
            link.set_nonblocking(true)?;
            let link = tokio::net::UnixStream::from_std(link)?;
            let relay = tokio::spawn(privsep::monitor::relay(link, query_tx, scrape_tx, part));
            (Vec::new(), Some(relay), Some(child))
        }
    };
    if let Some(addr) = daemon.metrics_addr {
        let (tls, auth) = (options.web_config.tls.is_some(), options.web_config.auth.is_some());
        log::info!("metrics on {}", export::metrics_url(&addr.to_string(), tls, auth));
    }
    log::info!(
        "probes attached: mode={} ({}), kernel {}; API on {}",
        daemon.probes.mode(),
        daemon.probes.mode_reason(),
        daemon.kernel,
        options.socket.display()
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut housekeeping = every(Duration::from_secs(1));
    let mut summary = every(options.summary_interval);
    let mut reconcile = every(options.reconcile_interval);
    let mut leak_check = every(options.leaks.interval);
    let mut drain = every(options.drain_interval);
    // One sock_diag dump per leak evaluation, shared with a reconcile due at the same time.
    let mut scans = health::Scans::new(options.leaks.interval, options.reconcile_interval);
    let mut stopped_by: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            batch = daemon.next_batch() => { batch?; }
            Some(query) = query_rx.recv() => {
                // Answer from a table that includes everything the kernel has delivered.
                daemon.drain_now();
                match query.request {
                    // Health figures come from a sock_diag dump made off the event loop.
                    Request::Conns { pid, remote, state, placement } => {
                        let rows = daemon.conn_rows(
                            pid,
                            remote.as_deref(),
                            state.as_deref(),
                            &placement,
                        );
                        match rows {
                            Ok(rows) => {
                                let host_netns = daemon.host_netns;
                                tokio::spawn(async move {
                                    let answer = health::conns_answer(rows, host_netns).await;
                                    let _ = query.reply.send(answer);
                                });
                            }
                            Err(e) => {
                                let _ = query.reply.send(Err(e));
                            }
                        }
                    }
                    // Symbols are resolved off the event loop, within a deadline.
                    Request::Stacks { pid } => {
                        match daemon.stacks.draft(
                            &daemon.table,
                            &daemon.containers,
                            &daemon.go_requests,
                            pid,
                            daemon.clock.now_ns(),
                        ) {
                            Ok(draft) => {
                                tokio::spawn(async move {
                                    let _ = query.reply.send(draft.finish().await);
                                });
                            }
                            Err(e) => {
                                let _ = query.reply.send(Err(e));
                            }
                        }
                    }
                    Request::Trace { filter } => {
                        let answer = match (filter.validate(), query.stream) {
                            (Err(e), _) => Err(e),
                            (Ok(()), None) => Err("a trace needs a stream".to_owned()),
                            (Ok(()), Some(tx)) => {
                                daemon.trace.add(filter, tx);
                                serde_json::value::to_raw_value(&serde_json::json!({
                                    "streaming": true
                                }))
                                .map_err(|e| e.to_string())
                            }
                        };
                        let _ = query.reply.send(answer);
                    }
                    request => {
                        let _ = query.reply.send(daemon.answer(request));
                    }
                }
            }
            _ = drain.tick() => daemon.drain_now(),
            _ = housekeeping.tick() => {
                daemon.table.expire(daemon.clock.now_ns());
                daemon.stacks.housekeeping(&daemon.table, daemon.clock.now_ns());
                daemon.update_go_requests();
                daemon.probes.flush_kernel_log();
                daemon.resolution.launch(&daemon.table, &daemon.containers);
            }
            Some(landed) = resolved_rx.recv() => {
                let Daemon { resolution, table, containers, .. } = &mut daemon;
                resolution.landed(landed, table, containers);
            }
            _ = summary.tick() => {
                daemon.drain_now();
                daemon.log_summary();
            }
            _ = leak_check.tick() => scans.evaluation_due(&mut reconcile),
            Some(evidence) = evidence_rx.recv() => daemon.attach_evidence(evidence),
            Some(scrape) = scrape_rx.recv() => {
                daemon.drain_now();
                let _ = scrape.reply.send(daemon.render_metrics());
            }
            _ = reconcile.tick() => scans.reconcile_due(&mut leak_check),
            Some(landed) = scans.rx.recv() => {
                scans.landed();
                daemon.scan_landed(landed);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            ended = async { relay.as_mut()?.await.ok() }, if relay.is_some() => {
                relay = None;
                let how = child.map(|c| privsep::reap(c, Duration::from_secs(2))).unwrap_or_default();
                let why = match ended {
                    Some(Err(e)) => format!("its link failed ({e}); it {how}"),
                    _ => format!("it {how}"),
                };
                stopped_by = Some(anyhow::anyhow!(
                    "the part that serves API and metrics clients stopped: {why}; the daemon \
                     stops with it (a supervisor restarts both)"
                ));
                break;
            }
        }
        let cgroups = scans.will_reconcile().then(|| scan_cgroups::start(&mut daemon.probes));
        scans.launch(|| BootClock.now_ns(), || daemon.exhaustion_request(), cgroups.flatten());
    }
    for server in servers {
        server.abort();
    }
    // Closing the link ends the part that serves clients.
    if let Some(relay) = relay {
        relay.abort();
        let _ = relay.await;
    }
    if stopped_by.is_none()
        && let Some(child) = child
    {
        log::info!("the part that serves clients {}", privsep::reap(child, Duration::from_secs(2)));
    }
    log::info!("detaching probes");
    daemon.go_requests.detach_all(&mut daemon.probes);
    daemon.probes.detach();
    daemon.drain_now();
    daemon.log_summary();
    api_file.remove_if_ours();
    stopped_by.map_or(Ok(()), Err)
}

/// Everything an event from the ring feeds, borrowed apart from the ring itself: one path for
/// the batches a wakeup brings and for the drains before queries, scrapes and reconciles.
struct Sinks<'a> {
    table: &'a mut ConnectionTable,
    metrics: &'a mut Metrics,
    stacks: &'a mut stacks::StackCapture,
    exhaustion: &'a mut exhaustion::Exhaustion,
    trace: &'a mut trace::Subscribers,
    containers: &'a mut crate::containers::Directory,
}

impl Sinks<'_> {
    fn apply(&mut self, event: &tracer_common::ConnEvent) {
        log::debug!("{}", events::Display(event));
        let before = self.trace.endpoints_before(event, self.table);
        let applied = self.table.apply(event);
        self.metrics.observe(&applied, self.table);
        self.stacks.on_event(event, &applied, self.table);
        self.exhaustion.on_event(event, &applied, self.table);
        self.trace.on_applied(event, &applied, before, self.table, self.containers);
    }
}

/// The host's network namespace: init's, else the daemon's own (a host service, or a
/// DaemonSet pod with hostNetwork, runs in the host's; init's can be unreadable even to root
/// when the daemon is not allowed to trace it).
fn host_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = |path: &str| std::fs::metadata(path).map(|m| u32::try_from(m.ino()).ok());
    match inode("/proc/1/ns/net") {
        Ok(found) => found,
        Err(e) => {
            log::info!(
                "cannot read /proc/1/ns/net ({e}): conns takes the daemon's own network namespace \
                 for the host's"
            );
            inode("/proc/self/ns/net").ok().flatten()
        }
    }
}

impl Daemon {
    /// Attaches the probes, then loads the connections that already exist: the events of
    /// anything that changes meanwhile wait in the ring buffer, so nothing falls between the
    /// two (docs/architecture.md, "Start-up").
    fn start(
        options: &DaemonOptions,
        evidence_tx: mpsc::UnboundedSender<SymbolizedEvidence>,
        resolved_tx: mpsc::UnboundedSender<containers::Landed>,
    ) -> Result<Self> {
        memory::configure_allocator();
        let mut probes = Probes::load(&options.load)?;
        let source = EventSource::new(probes.take_events()?).map_err(Error::EventRing)?;
        let stacks = stacks::StackCapture::start(
            &mut probes,
            options.load.stacks.policy,
            &options.inspection,
        )?;
        let clock = BootClock;
        let mut daemon = Self {
            probes,
            source,
            table: ConnectionTable::new(options.table),
            reconciler: Reconciler::default(),
            limits_logged: (false, false),
            detector: Detector::new(options.leaks.detector.clone()),
            leak_settings: options.leaks.clone(),
            webhook: options.webhook.clone().map(Webhook::start),
            metrics: Metrics::new(),
            metrics_top_n: options.metrics_top_n,
            ring_bytes: u64::from(options.load.ring_bytes),
            metrics_addr: None,
            metrics_web: options.web_config.clone(),
            started_ns: clock.now_ns(),
            clock,
            kernel: preflight::kernel_release(),
            stacks,
            go_requests: go_requests::GoRequests::new(
                options.go_requests,
                options.inspection.clone(),
            ),
            exhaustion: exhaustion::Exhaustion::new(
                nanos(options.leaks.interval)
                    .saturating_mul(options.leaks.detector.window_samples as u64),
            ),
            health: health::PoolHealth::new(options.leaks.health.clone()),
            containers: crate::containers::Directory::default(),
            resolution: containers::Resolution::start(&options.containers, resolved_tx),
            host_netns: host_netns(),
            evidence_tx,
            trace: trace::Subscribers::default(),
            api_clients: server::Clients::default(),
            clients_part: None,
        };
        daemon.drain_now();
        scan_cgroups::log_status(&daemon.probes);
        match ground_truth::scan_all() {
            Ok(sockets) => {
                // The kernel runs the iterator as its file is read, after the /proc walk;
                // both name processes by pid and start time, so a reused pid never matches.
                let run = scan_cgroups::start(&mut daemon.probes);
                let mut scan = ground_truth::with_holders(&sockets);
                scan_cgroups::apply(run, &mut scan);
                let loaded = daemon.table.load_existing(&scan.listed, daemon.clock.now_ns());
                log::info!("loaded {loaded} connections that existed before start-up");
                // The first reading of read progress.
                let at_ns = daemon.clock.now_ns();
                let scan = crate::health::HealthScan { at_ns, sockets };
                daemon.health.update(
                    &daemon.table,
                    &scan,
                    &daemon.leak_settings,
                    &daemon.containers,
                );
            }
            Err(e) => log::warn!(
                "cannot load existing connections (sock_diag): {e}; counting from now on"
            ),
        }
        memory::return_freed();
        Ok(daemon)
    }

    /// A sock_diag dump came back: reconcile if it was due, take in the health figures, then
    /// evaluate the leak rules if that was due.
    fn scan_landed(&mut self, landed: health::Landed) {
        self.health.record_scan(landed.took);
        match landed.scan {
            Ok(scan) => {
                if let Some(scanned) = &scan.reconcile {
                    self.reconcile(scanned);
                }
                self.drain_now();
                self.health.update(
                    &self.table,
                    &scan.health,
                    &self.leak_settings,
                    &self.containers,
                );
                // The exhaustion rules' share of the same dump, reduced off the event loop.
                if let Some(result) = scan.exhaustion {
                    let now = self.clock.now_ns();
                    self.exhaustion.apply(result, &self.table, now);
                }
            }
            Err(e) => {
                log::warn!(
                    "sock_diag dump failed: {e}; idle and unread are unknown until the next"
                );
                self.health.forget_counts();
            }
        }
        if landed.evaluate {
            self.evaluate_leaks();
        }
        memory::return_freed();
    }

    fn evaluate_leaks(&mut self) {
        self.drain_now();
        let now = self.clock.now_ns();
        let mut samples = leaks::samples(
            &self.table,
            &self.leak_settings,
            self.health.per_process(),
            &self.containers,
            now,
        );
        self.exhaustion.fill(&mut samples);
        for change in self.detector.evaluate(now, &samples) {
            leaks::log_change(&change);
            self.trace.on_alert(&change);
            if let Change::Raised(alert) = &change
                && self.raise_with_stacks(alert, now)
            {
                // Its webhook waits for the symbolized stacks (attach_evidence).
                continue;
            }
            if let Some(webhook) = &self.webhook {
                webhook.notify(&change);
            }
        }
        self.stacks.mark_suspects(&self.detector);
        self.update_go_requests();
        self.refresh_request_evidence(now);
        self.resolution.launch(&self.table, &self.containers);
    }

    /// The Go request groups of active alerts whose process is probed, taken again: a process
    /// is probed once a suspect, and on a slow host its alert may raise before the probe is
    /// attached or has seen a request; the evidence then names the code as soon as it is known.
    /// Names come from the symbolizer's cache, warmed off the loop for the next evaluation.
    fn refresh_request_evidence(&mut self, now: u64) {
        let probed: Vec<(ProcessKey, crate::detect::Rule, u64, u64)> = self
            .detector
            .active()
            .filter(|a| a.evidence.stacks.is_some())
            .filter_map(|a| {
                let process = ProcessKey::new(a.pid, a.start_time_ns);
                let since = self.go_requests.probed_since(process)?;
                Some((process, a.rule, a.since_ns, since))
            })
            .collect();
        for (process, rule, raised_ns, probed_since) in probed {
            let Some(alert) = self
                .detector
                .active()
                .find(|a| a.rule == rule && ProcessKey::new(a.pid, a.start_time_ns) == process)
            else {
                continue;
            };
            let settings = &self.leak_settings;
            let thresholds = settings.thresholds_for_alert(alert);
            let behind = |view: &crate::table::ConnView<'_>| {
                leaks::behind_rule(rule, settings, &thresholds, view, now)
            };
            let (requests, draft) =
                self.stacks.request_evidence(&self.table, process, probed_since, now, behind);
            self.detector.refresh_requests(process, rule, raised_ns, requests);
            tokio::spawn(draft.warm(self::stacks::EVIDENCE_SYMBOLIZE_DEADLINE));
        }
    }

    /// Go request probes follow the suspects (or every process), and the binaries inspected
    /// off the loop since the last call are attached.
    fn update_go_requests(&mut self) {
        let Self { go_requests, probes, table, detector, clock, .. } = self;
        go_requests.update(probes, table, detector.suspects(), clock.now_ns());
    }

    fn exhaustion_request(&self) -> exhaustion::ScanRequest {
        exhaustion::ScanRequest {
            started_ns: self.clock.now_ns(),
            fd_processes: self.exhaustion.fd_candidates(
                &self.table,
                &self.detector,
                self.metrics_top_n,
            ),
            attribute_from: exhaustion::attribute_from(&self.leak_settings.detector),
        }
    }

    /// Attaches the stacks behind a raised alert at once (named as far as the symbolizer's
    /// cache goes) and symbolizes them off the event loop, within a deadline. False when
    /// capture is off.
    fn raise_with_stacks(&mut self, alert: &crate::detect::Alert, now: u64) -> bool {
        let settings = &self.leak_settings;
        let thresholds = settings.thresholds_for_alert(alert);
        let behind = |view: &crate::table::ConnView<'_>| {
            leaks::behind_rule(alert.rule, settings, &thresholds, view, now)
        };
        let process = ProcessKey::new(alert.pid, alert.start_time_ns);
        let probed_since = self.go_requests.probed_since(process);
        let Some((first, draft)) =
            self.stacks.alert_evidence(&self.table, alert, now, probed_since, behind)
        else {
            return false;
        };
        let (rule, since_ns) = (alert.rule, alert.since_ns);
        let mut stacks = first.clone();
        self.detector.attach_stacks(process, rule, since_ns, first);
        let tx = self.evidence_tx.clone();
        tokio::spawn(async move {
            draft.finish(&mut stacks, self::stacks::EVIDENCE_SYMBOLIZE_DEADLINE).await;
            let _ = tx.send(SymbolizedEvidence { process, rule, since_ns, stacks });
        });
        true
    }

    /// A raised alert's stacks are named: they stay with the alert, and its webhook goes.
    fn attach_evidence(&mut self, evidence: SymbolizedEvidence) {
        let SymbolizedEvidence { process, rule, since_ns, stacks } = evidence;
        if let Some(alert) = self.detector.attach_stacks(process, rule, since_ns, stacks)
            && let Some(webhook) = &self.webhook
        {
            webhook.notify(&Change::Raised(alert.clone()));
        }
    }

    fn reconcile(&mut self, scan: &KernelSockets) {
        // Compare with everything the kernel has delivered so far.
        self.drain_now();
        let report = self.reconciler.check(&mut self.table, scan, self.clock.now_ns());
        for correction in &report.corrections {
            log::warn!("reconcile: {correction}");
        }
        if !report.corrections.is_empty() {
            self.stacks.after_corrections(&self.table);
        }
        if report.holder_changes > 0 {
            log::info!(
                "reconcile: {} connection(s) now counted for the process that holds them",
                report.holder_changes
            );
        }
        if report.untracked_over_limit > 0 {
            log::warn!(
                "reconcile: {} connection(s) the kernel has are not tracked: connections \
                 refused for a table limit are still open (not corrected; see tracer status)",
                report.untracked_over_limit
            );
        }
    }

    /// Logs the first refusal of each table limit, naming the flag that raises it.
    fn log_limits(&mut self) {
        let counters = *self.table.counters();
        let config = *self.table.config();
        if counters.connections_over_limit > 0 && !self.limits_logged.0 {
            self.limits_logged.0 = true;
            log::warn!(
                "connection table full: {} connections tracked, new ones are refused and \
                 counted (raise --max-connections; counts of their processes are lower bounds)",
                config.max_connections
            );
        }
        if counters.processes_over_limit > 0 && !self.limits_logged.1 {
            self.limits_logged.1 = true;
            log::warn!(
                "process table full: {} processes tracked, connections of new ones are refused \
                 and counted (raise --max-processes)",
                config.max_processes
            );
        }
    }

    async fn next_batch(&mut self) -> std::io::Result<usize> {
        let Self { source, table, metrics, stacks, exhaustion, trace, containers, .. } = self;
        let mut sinks = Sinks { table, metrics, stacks, exhaustion, trace, containers };
        let n = source.next_batch(|event| sinks.apply(event)).await?;
        self.stacks.drain(&self.table, self.clock.now_ns());
        self.log_limits();
        Ok(n)
    }

    fn drain_now(&mut self) {
        let Self { source, table, metrics, stacks, exhaustion, trace, containers, .. } = self;
        let mut sinks = Sinks { table, metrics, stacks, exhaustion, trace, containers };
        source.drain_now(|event| sinks.apply(event));
        self.stacks.drain(&self.table, self.clock.now_ns());
        self.log_limits();
    }

    /// The ring's high-water fill: full once a reservation failed (the sampling at drain starts
    /// can miss a peak reached while a drain ran), else the fullest a drain found it.
    fn ring_high_water(&self, kernel: Option<&KernelCounters>) -> u64 {
        match kernel {
            Some(k) if k.lost_total() > 0 => self.ring_bytes,
            _ => self.source.ring_high_water_bytes(),
        }
    }

    fn render_metrics(&mut self) -> String {
        let kernel = self.probes.counters().ok();
        let mode = self.probes.mode().to_string();
        let alerts: Vec<_> = self.detector.active().collect();
        let kprobes = self.probes.kprobe_misses();
        let program_misses = self.probes.program_misses();
        let exhaustion = self.exhaustion.metrics_input();
        let stacks = self.stacks.status(&kernel.clone().unwrap_or_default());
        let input = MetricsInput {
            table: &self.table,
            alerts: &alerts,
            kernel: kernel.as_ref(),
            events_received: self.source.received(),
            malformed: self.source.malformed(),
            reconcile_corrections: self.reconciler.corrections_total,
            kprobes: &kprobes,
            program_misses: &program_misses,
            ring: RingFill {
                size_bytes: self.ring_bytes,
                high_water_bytes: self.ring_high_water(kernel.as_ref()),
            },
            stacks: StackMetrics {
                orphaned: stacks.orphaned,
                frames_unsymbolized: stacks.frames_unsymbolized,
                exited_before_pinning: stacks.exited_before_pinning,
                pins_refused: stacks.pins_refused,
                pins_failed: stacks.pins_failed,
                suspects_unmarked: stacks.suspects_unmarked,
            },
            build: BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
                probe_mode: &mode,
                kernel: &self.kernel,
            },
            health: self.health.per_process(),
            now_ns: self.clock.now_ns(),
            top_n: self.metrics_top_n,
            exhaustion: &exhaustion,
            containers: &self.containers,
        };
        self.metrics.render(&input)
    }

    fn log_summary(&self) {
        match self.probes.counters() {
            Ok(k) => log::info!(
                "events emitted={} received={} lost={} malformed={} tracked={} unattributed={} processes={}",
                k.emitted_total(),
                self.source.received_total(),
                k.lost_total(),
                self.source.malformed(),
                self.table.tracked_connections(),
                self.table.unattributed(),
                self.table.process_count(),
            ),
            Err(e) => log::warn!("cannot read kernel counters: {e}"),
        }
        let c = self.table.counters();
        if self.table.over_limit() {
            log::warn!(
                "over table limits: {} connections refused (--max-connections {}), {} for new \
                 processes (--max-processes {}); {} refused still open",
                c.connections_over_limit,
                self.table.config().max_connections,
                c.processes_over_limit,
                self.table.config().max_processes,
                self.table.refused_outstanding()
            );
        }
    }
}
