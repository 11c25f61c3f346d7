//! The fuzz targets' entries: one function per parser of outside bytes, called by the
//! cargo-fuzz crate in `tracer/fuzz/` (each `fuzz_targets/<name>.rs` calls `<name>` here) and by
//! the replay test ([`tests`]), which feeds every file of `tracer/fuzz/corpus/<name>/` and
//! `tracer/fuzz/regressions/<name>/` to it in `cargo test`. Each entry runs the parser as the
//! daemon does and asserts what must hold of any input: no panic, and where they exist, round
//! trips and bounds on what comes out. A failed assertion is a crash to the fuzzer.
//!
//! Not an API: hidden from the docs, and only the fuzz crate and the tests call it.
use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use tracer_common::{
    ConnEvent,
    stacks::{MAX_STACK_DEPTH, STACK_WINDOW_BYTES, StackRecord},
};

use crate::{
    api::{
        answers::conns_filter,
        protocol::{API_VERSION, Request, RequestEnvelope},
        server::{MAX_REQUEST_BYTES, RequestLine, parse_request, read_request},
    },
    containers::{
        Container, Role, Runtime, cgroupfs,
        names::{docker_config_name, parse_log_link, parse_pod_dir},
        parse,
        views::{self, PlacementFilter},
    },
    detect::overrides::{Workload, WorkloadOverride},
    events,
    ground_truth::{
        holders,
        sock_diag::{self, ExistingSocket},
        sysctl::{NetnsSysctls, parse_port_range},
        tcp_info::TcpInfo,
    },
    stacks::{
        gopclntab::GoPclntab,
        symbolize::{elf, maps},
        unwind::{self, AddressRole, FrameRule, ModuleCfi},
    },
    table::ConnectionTable,
    trace::{TraceFilter, TraceKind, TraceRecord},
};

/// A fuzz entry: the bytes the fuzzer (or a corpus file) gives.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its fuzz target, corpus and regressions directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("ring_events", ring_events),
    ("stack_record", stack_record),
    ("task_cgroups", task_cgroups),
    ("api_request", api_request),
    ("metrics_http", metrics_http),
    ("config_file", config_file),
    ("web_config", web_config),
    ("cgroup_path", cgroup_path),
    ("container_names", container_names),
    ("proc_text", proc_text),
    ("proc_maps", proc_maps),
    ("sock_diag", sock_diag),
    ("gopclntab", gopclntab),
    ("elf_layout", elf_layout),
    ("eh_frame", eh_frame),
    ("go_binary", go_binary),
];

// ---- ring records ----

/// `ConnEvent` has no padding: its fields add up to its size, so its bytes are all fields.
const _: () = assert!(ConnEvent::SIZE == 8 * 4 + 16 + 4 * 3 + 4 + 38 + 2 + 8 * 3);

/// The event ring: records of [`ConnEvent::SIZE`] bytes (the last one maybe short), decoded
/// as the pipeline does ([`events::decode`]) and applied in order to a connection table, which
/// must stay consistent whatever the kernel sent ([`ConnectionTable::check_consistent`]).
/// A record decodes exactly when it is long enough, and decodes to its own bytes (with the
/// command name cleared after its NUL).
pub fn ring_events(data: &[u8]) {
    let mut table = ConnectionTable::default();
    let mut last_ns = 0;
    for record in data.chunks(ConnEvent::SIZE) {
        let decoded = events::decode(record);
        assert_eq!(decoded.is_some(), record.len() >= ConnEvent::SIZE, "decodes iff whole");
        let Some(event) = decoded else { continue };
        // SAFETY: ConnEvent is plain data without padding (asserted above): all its bytes are
        // initialised fields.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), ConnEvent::SIZE) };
        let comm = std::mem::offset_of!(ConnEvent, comm);
        assert_eq!(bytes[..comm], record[..comm], "decoded bytes before comm");
        assert_eq!(bytes[comm + 16..], record[comm + 16..ConnEvent::SIZE], "decoded bytes after");
        let nul = event.comm.iter().position(|&b| b == 0).unwrap_or(16);
        assert_eq!(event.comm[..nul], record[comm..comm + nul], "comm up to its NUL");
        assert!(event.comm[nul..].iter().all(|&b| b == 0), "comm is NUL-padded");
        let line = events::Display(&event).to_string();
        assert!(line.len() < 512, "a debug line is short: {line}");
        table.apply(&event);
        last_ns = last_ns.max(event.timestamp_ns);
    }
    if let Err(e) = table.check_consistent() {
        panic!("the table is inconsistent after the events: {e}");
    }
    table.expire(last_ns.saturating_add(3_600_000_000_000));
    if let Err(e) = table.check_consistent() {
        panic!("the table is inconsistent after expiry: {e}");
    }
}

/// The stack ring: a record is a header and whole frames ([`StackRecord::from_bytes`]); the
/// frames a frame-pointer walk missed are recovered from its registers and stack window
/// ([`unwind::recover`]) with call-frame rules made up from the addresses (any rule a hostile
/// `.eh_frame` could give). What comes back starts at the record's ip and adds at most
/// [`unwind::MAX_RECOVERED`] frames.
pub fn stack_record(data: &[u8]) {
    let well_formed_length = data.len() >= StackRecord::HEADER_SIZE
        && data.len() <= StackRecord::SIZE
        && (data.len() - StackRecord::HEADER_SIZE).is_multiple_of(8);
    let Some(record) = StackRecord::from_bytes(data) else { return };
    assert!(well_formed_length, "a record of {} bytes was accepted", data.len());
    let frames = record.frames();
    assert_eq!(frames.len(), (data.len() - StackRecord::HEADER_SIZE) / 8);
    assert!(frames.len() <= MAX_STACK_DEPTH as usize);
    assert!(record.window().len() <= STACK_WINDOW_BYTES / 8);
    let rule = |pc: u64, role: AddressRole| -> FrameRule {
        let byte = |shift: u32| i64::from((pc >> shift) as u8 as i8);
        match (pc % 4, role) {
            (0, _) => FrameRule::FramePointer,
            (1, AddressRole::Return) => FrameRule::Unknown,
            _ => FrameRule::StackPointer {
                cfa_offset: byte(8),
                ra_offset: byte(16),
                bp_offset: (pc & 4 != 0).then(|| byte(24)),
            },
        }
    };
    let regs = record.regs;
    if let Some(out) = unwind::recover(regs.ip, regs.sp, regs.bp, record.window(), frames, rule) {
        assert_eq!(out.first(), Some(&regs.ip), "recovered frames start at the ip");
        assert!(out.len() <= frames.len() + unwind::MAX_RECOVERED, "at most 4 frames added");
    }
}

/// The task iterator's output: whole 24-byte records, or an error.
pub fn task_cgroups(data: &[u8]) {
    let record = std::mem::size_of::<tracer_common::TaskCgroup>();
    match crate::probes::parse_task_cgroups(data) {
        Ok(ids) => {
            assert!(data.len().is_multiple_of(record), "a partial record was accepted");
            assert!(ids.len() <= data.len() / record);
        }
        Err(_) => assert!(!data.len().is_multiple_of(record), "whole records were refused"),
    }
}

// ---- the API socket and /metrics ----

/// A current-thread runtime for the entries that run async code, made once per thread.
fn block_on<F: std::future::Future>(future: F) -> Option<F::Output> {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_time().build().ok();
    }
    RUNTIME.with(|runtime| runtime.as_ref().map(|r| r.block_on(future)))
}

/// Command names, containers and records the filters of requests and settings are tried on.
struct Samples {
    containers: Vec<Option<Container>>,
    records: Vec<TraceRecord>,
}

fn samples() -> &'static Samples {
    static SAMPLES: OnceLock<Samples> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let id = "4e7e3a1b9c2d4f5a8b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345";
        let pod = Container {
            id: id.to_owned(),
            name: Some("api".to_owned()),
            runtime: Runtime::Containerd,
            pod: Some("checkout-7d9f-x2b".to_owned()),
            namespace: Some("shop".to_owned()),
            pod_uid: Some("0f5c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5".to_owned()),
            cgroup: format!("/kubepods.slice/cri-containerd-{id}.scope"),
            role: Role::Workload,
        };
        let docker = Container {
            id: "a".repeat(64),
            name: Some("web-1".to_owned()),
            runtime: Runtime::Docker,
            pod: None,
            namespace: None,
            pod_uid: None,
            cgroup: format!("/system.slice/docker-{}.scope", "a".repeat(64)),
            role: Role::Workload,
        };
        let addr = |s: &str| s.parse::<SocketAddr>().ok();
        let mut records = Vec::new();
        for (kind, pid, comm, remote) in [
            (TraceKind::Open, 41_860, "workload", "10.0.0.5:5432"),
            (TraceKind::Close, 1207, "nginx-worker-01", "[::ffff:127.0.0.1]:80"),
            (TraceKind::ConnectFailed, 3310, "curl", "[fd00::1]:443"),
            (TraceKind::StateChange, 7, "aaaaaaaaaaaaaaa", "192.168.1.1:1"),
            (TraceKind::AlertRaised, 8, "postgres", "0.0.0.0:0"),
        ] {
            let mut r = TraceRecord::new(kind, pid, comm.to_owned(), "host".to_owned());
            r.local = addr("127.0.0.1:40000");
            r.remote = addr(remote);
            r.lifetime_seconds = Some(30.5);
            records.push(r);
        }
        Samples { containers: vec![None, Some(pod), Some(docker)], records }
    })
}

/// How long one filter may take over the samples: a filter is matched against every trace
/// record of every subscriber on the event loop, so none may take long (a backtracking glob
/// would take seconds). Generous in the replay test, an unoptimized build on a machine that
/// may be busy.
const MATCH_BUDGET: Duration =
    if cfg!(test) { Duration::from_secs(2) } else { Duration::from_millis(50) };

/// API request lines as the server reads them: at most [`MAX_REQUEST_BYTES`] each, UTF-8, then
/// parsed ([`parse_request`]) and their filters checked and tried as the event loop does. A
/// parsed request serialises to a line that parses back to it; an error message is bounded by
/// the line it answers.
pub fn api_request(data: &[u8]) {
    let lines = block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(16, data);
        let mut lines = Vec::new();
        while let Ok(Some(line)) = read_request(&mut reader, MAX_REQUEST_BYTES).await {
            let stop = !matches!(line, RequestLine::Text(_));
            lines.push(line);
            if stop {
                break;
            }
        }
        lines
    });
    for line in lines.into_iter().flatten() {
        let RequestLine::Text(line) = line else { continue };
        assert!(line.len() < MAX_REQUEST_BYTES && !line.contains('\n'), "a line is one line");
        match parse_request(&line) {
            Ok(request) => request_round_trip_and_filters(request),
            Err(e) => assert!(e.len() <= line.len() + 512, "an error of {} bytes", e.len()),
        }
    }
}

fn request_round_trip_and_filters(request: Request) {
    let envelope = RequestEnvelope { version: API_VERSION, request: request.clone() };
    let text = match serde_json::to_string(&envelope) {
        Ok(text) => text,
        Err(e) => panic!("a parsed request does not serialise: {e}"),
    };
    assert_eq!(parse_request(&text).as_ref(), Ok(&request), "round trip through {text}");
    let samples = samples();
    let started = Instant::now();
    match &request {
        Request::Top { placement, .. } | Request::Leaks { placement } => {
            placement_matches(placement, samples);
        }
        Request::Conns { remote, state, placement, .. } => {
            if let Ok(Some(remote)) = conns_filter(remote.as_deref(), state.as_deref(), placement) {
                for r in &samples.records {
                    let _ = r.remote.map(|a| remote.matches(a));
                }
            }
            placement_matches(placement, samples);
        }
        Request::Trace { filter } => trace_matches(filter, samples),
        Request::Status {} | Request::Ages { .. } | Request::Stacks { .. } => {}
    }
    assert!(started.elapsed() < MATCH_BUDGET, "matching took {:?}", started.elapsed());
}

fn placement_matches(placement: &PlacementFilter, samples: &Samples) {
    if placement.validate().is_ok() {
        for c in &samples.containers {
            let _ = placement.matches(c.as_ref());
        }
    }
}

fn trace_matches(filter: &TraceFilter, samples: &Samples) {
    if filter.validate().is_err() {
        return;
    }
    for record in &samples.records {
        for c in &samples.containers {
            let _ = filter.matches(record, c.as_ref());
        }
    }
}

/// What the stand-in event loop answers a scrape with.
const EXPOSITION: &str = "# TYPE tcp_tracer_up gauge\ntcp_tracer_up 1\n";

/// The statuses the metrics server answers with: its own (200, 404, 405, 503) and hyper's for
/// malformed or refused requests.
const HTTP_STATUSES: &[u16] = &[200, 400, 404, 405, 408, 413, 414, 431, 501, 503, 505];

/// Bytes a client sends to `/metrics`, served by the server's own connection handler over an
/// in-memory stream with a stand-in event loop. Every response is HTTP/1.x with a status from
/// [`HTTP_STATUSES`]; there is at most one response per request (and one refusal), and the
/// output is bounded by the responses' count.
pub fn metrics_http(data: &[u8]) {
    let output = block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (scrapes, mut rx) = tokio::sync::mpsc::channel::<crate::export::Scrape>(4);
        let event_loop = tokio::spawn(async move {
            while let Some(scrape) = rx.recv().await {
                let _ = scrape.reply.send(EXPOSITION.to_owned());
            }
        });
        let clients = crate::slots::Clients::default();
        let Some((slot, _evict)) = clients.take(1) else { return Vec::new() };
        let serve = async move {
            let _ =
                crate::export::metrics::http::serve_connection(server, None, scrapes, &slot).await;
        };
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let send = async move {
            let _ = to_server.write_all(data).await;
            let _ = to_server.shutdown().await;
        };
        let receive = async move {
            let mut output = Vec::new();
            let _ = (&mut from_server).take(1 << 20).read_to_end(&mut output).await;
            output
        };
        let ((), (), output) = tokio::join!(serve, send, receive);
        event_loop.abort();
        output
    })
    .unwrap_or_default();
    if output.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&output);
    assert!(text.starts_with("HTTP/1."), "a response starts with its status line: {text:?}");
    // A status line starts the output or follows a body (each ends with a newline) or an empty
    // one's header block.
    let statuses: Vec<&str> = text
        .split('\n')
        .filter(|line| line.starts_with("HTTP/1."))
        .filter_map(|line| line.split(' ').nth(1))
        .collect();
    for status in &statuses {
        let known = status.parse::<u16>().is_ok_and(|s| HTTP_STATUSES.contains(&s));
        assert!(known, "unexpected status {status}: {text:?}");
    }
    let requests = data.windows(2).filter(|w| w == b"\n\r" || w == b"\n\n").count() + 1;
    assert!(statuses.len() <= requests + 1, "{} responses to {requests} requests", statuses.len());
    assert!(output.len() <= statuses.len() * 1024, "{} bytes of responses", output.len());
}

// ---- the web config and the Authorization header ----

/// A `--web-config` file (YAML), read against a directory that does not exist (so no file it
/// names loads), and the same bytes as an `Authorization` header: a header that yields
/// credentials encodes back to one that yields the same. A refusal names a key in few words.
pub fn web_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = std::path::Path::new("/nonexistent/tracer-fuzz");
    if let Err(message) = crate::export::metrics::web_config::parse_for_fuzzing(text, base) {
        assert!(message.len() <= 2 * text.len() + 1024, "an error of {} bytes", message.len());
    }
    if let Some((user, password)) = crate::export::metrics::web_config::credentials(text) {
        use base64::Engine as _;
        let again = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let decoded = crate::export::metrics::web_config::credentials(&again);
        assert_eq!(decoded, Some((user, password)), "credentials round trip");
    }
}

// ---- the config file ----

/// A `--config` file: TOML whose keys become `--flag value` arguments
/// ([`crate::config_file::entries`]), each value then read by the library's parser of its kind
/// (durations, `--workload` overrides, which also match command names and containers). A key's
/// line is a line of the file; a value that parses prints in a form that parses back the same.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count();
    let entries = match crate::config_file::entries(text, "fuzz.toml", |_| true) {
        Ok(entries) => entries,
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() <= 2 * text.len() + 1024, "an error of {} bytes", message.len());
            return;
        }
    };
    for entry in entries {
        assert!(entry.line <= lines, "line {} of a {lines}-line file", entry.line);
        let flag = format!("--{}", entry.key.replace('_', "-"));
        if flag == "--workload" && entry.args.first().is_some_and(|a| a == "--workload") {
            assert!(entry.args.len().is_multiple_of(2), "--workload VALUE pairs");
            for value in entry.args.iter().skip(1).step_by(2) {
                workload_override(value);
            }
            continue;
        }
        assert!(entry.args.is_empty() || entry.args[0] == flag, "{:?} for {flag}", entry.args);
        assert!(entry.args.len() <= 2);
        if let Some(value) = entry.args.get(1) {
            duration_round_trip(value);
            workload_override(value);
        }
    }
}

/// A `--workload` value: parsed, printed and parsed again to the same form, and matched
/// against the samples within the budget.
fn workload_override(value: &str) {
    let Ok(parsed) = value.parse::<WorkloadOverride>() else { return };
    let printed = parsed.to_string();
    match printed.parse::<WorkloadOverride>() {
        Ok(again) => assert_eq!(again.to_string(), printed, "{value:?} prints back the same"),
        Err(e) => panic!("{value:?} printed as {printed:?}, which does not parse: {e}"),
    }
    let started = Instant::now();
    for record in &samples().records {
        for c in &samples().containers {
            let _ = parsed.matches(Workload { comm: &record.comm, container: c.as_ref() });
        }
    }
    assert!(started.elapsed() < MATCH_BUDGET, "matching took {:?}", started.elapsed());
}

fn duration_round_trip(value: &str) {
    let Ok(d) = crate::duration::parse(value) else { return };
    let printed = crate::duration::format(d);
    match crate::duration::parse(&printed) {
        Ok(again) => {
            let off = again.abs_diff(d);
            assert!(off <= Duration::from_micros(1), "{value:?} -> {printed:?} is {off:?} off");
        }
        Err(e) => panic!("{value:?} printed as {printed:?}, which does not parse: {e}"),
    }
}

// ---- containers ----

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A cgroup v2 path ([`parse::parse`]): a container id it names is 64 hex digits found in the
/// path, a pod UID is one (in either spelling), a unit is one of its components, a monitor is
/// no container; the text cell of the container and its clipped forms stay within their width.
pub fn cgroup_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let parsed = parse::parse(path);
    if let Some((_, id)) = &parsed.container {
        assert!(is_id(id) && path.contains(id.as_str()), "container id {id:?}");
        assert_ne!(parsed.role, Role::Monitor);
    }
    if let Some(uid) = &parsed.pod_uid {
        // Written with dashes, with underscores (systemd slices), or a mix of both.
        assert_eq!(uid.len(), 36, "pod uid {uid:?}");
        assert!(path.replace('_', "-").contains(uid.as_str()), "pod uid {uid:?} from the path");
    }
    if let Some(unit) = &parsed.unit {
        assert!(path.split('/').any(|part| part == unit), "unit {unit:?} is a component");
    }
    if parsed.role == Role::Monitor {
        assert!(parsed.container.is_none() && parsed.unit.is_some(), "a monitor has its unit");
    }
    assert_eq!(parse::parse(path), parsed, "the same path parses the same");
    let container = parsed.container.map(|(runtime, id)| Container {
        id,
        name: None,
        runtime,
        pod: None,
        namespace: None,
        pod_uid: parsed.pod_uid,
        cgroup: path.to_owned(),
        role: parsed.role,
    });
    let cell = views::cell(container.as_ref());
    for width in [0, 1, 2, 3, 4, 12, 40] {
        let clipped = views::clip_middle(&cell, width);
        assert!(clipped.chars().count() <= width, "{clipped:?} is wider than {width}");
    }
}

/// Names the node keeps: each line as a kubelet log link (`<pod>_<namespace>_<container>-<id>.log`,
/// the id being the 64 characters before `.log`) and as a pod log directory
/// (`<namespace>_<pod>_<uid>`, the uid its last 36 characters), and the whole input as a
/// docker `config.v2.json`. What parses is printed back to the very name.
pub fn container_names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in text.lines() {
        let id = line
            .strip_suffix(".log")
            .and_then(|stem| stem.get(stem.len().saturating_sub(64)..))
            .unwrap_or("");
        if let Some(names) = parse_log_link(line, id) {
            for part in [&names.pod, &names.namespace, &names.container] {
                assert!(!part.is_empty() && !part.contains('_'), "{part:?} in {line:?}");
            }
            let back = format!("{}_{}_{}-{id}.log", names.pod, names.namespace, names.container);
            assert_eq!(back, line, "a link name prints back");
        }
        let uid = line.get(line.len().saturating_sub(36)..).unwrap_or("");
        if let Some((namespace, pod)) = parse_pod_dir(line, uid) {
            assert_eq!(format!("{namespace}_{pod}_{uid}"), line, "a pod directory prints back");
        }
    }
    if let Some(name) = docker_config_name(text) {
        assert!(!name.is_empty() && !name.starts_with('/') && name.len() < text.len());
    }
}

// ---- /proc and other kernel text ----

/// Text files of /proc (and tracefs) the daemon parses, all given the same input: a
/// `/proc/PID/status` ([`crate::privileges::Privileges::parse`]), `/proc/PID/limits`,
/// `/proc/PID/stat`, a `/proc/PID/fd` link, the port range sysctl, the kernel release,
/// `/proc/self/mountinfo` (the cgroup2 mount) and tracefs' `kprobe_events` and
/// `kprobe_profile`. What they return comes from the input and is bounded by it.
pub fn proc_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    if let Some(p) = crate::privileges::Privileges::parse(text) {
        assert_eq!(p.names().len(), p.effective.count_ones() as usize);
    }
    let _ = crate::exhaustion::fds::parse_soft_nofile(text);
    if let Some((lo, hi)) = parse_port_range(text) {
        let sysctls = NetnsSysctls { port_range: (lo, hi), ..NetnsSysctls::default() };
        let available = sysctls.ports_available();
        assert!(available <= 65_536 && (available > 0) == (lo <= hi));
        assert_eq!(sysctls.is_ephemeral(lo), lo <= hi);
    }
    for ticks in [100, 0] {
        if let Some(holder) = holders::parse_stat(1, text, ticks) {
            assert!(text.contains(holder.comm.as_str()), "comm {:?} from the text", holder.comm);
        }
    }
    for line in text.lines() {
        if holders::socket_inode(line).is_some() {
            assert!(line.starts_with("socket:[") && line.ends_with(']'), "{line:?}");
        }
    }
    let _ = crate::probes::preflight::parse_kernel_version(text);
    if let Some(mount) = cgroupfs::cgroup2_mount(text) {
        assert!(mount.as_os_str().len() <= text.len());
    }
    for event in crate::probes::kprobe::stale_events(text, |pid| pid % 2 == 0) {
        assert!(text.contains(event.as_str()), "event {event:?} from the listing");
    }
    let _ = crate::probes::kprobe::profile_line(text, "tracer_1_tcp_connect");
}

/// `/proc/PID/maps` ([`maps::parse`]): every non-blank line is an entry or an error; an entry's
/// range is ordered, and printed back as a maps line it parses to the same entry.
pub fn proc_maps(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (entries, errors) = maps::parse(&text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(entries.len() + errors.len(), lines, "one entry or error per line");
    for entry in &entries {
        assert!(entry.start <= entry.end);
        let flag = |on: bool, c: char| if on { c } else { '-' };
        let path = match &entry.path {
            maps::MapsPath::Anonymous => String::new(),
            maps::MapsPath::File { path, deleted: true } => format!("{path} (deleted)"),
            maps::MapsPath::File { path, deleted: false } => path.clone(),
            maps::MapsPath::Pseudo(p) | maps::MapsPath::Other(p) => p.clone(),
        };
        let line = format!(
            "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} {path}",
            entry.start,
            entry.end,
            flag(entry.readable, 'r'),
            flag(entry.writable, 'w'),
            flag(entry.executable, 'x'),
            if entry.private { 'p' } else { 's' },
            entry.offset,
            entry.dev_major,
            entry.dev_minor,
            entry.inode,
        );
        match maps::parse_line(&line) {
            Ok(again) => assert_eq!(&again, entry, "{line:?} reads back"),
            Err(e) => panic!("an entry printed as {line:?} does not parse: {e}"),
        }
        let name = entry.map_files_name();
        let range = name.split_once('-').and_then(|(s, e)| {
            Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?))
        });
        assert_eq!(range, Some((entry.start, entry.end)), "map_files name {name}");
    }
    // The Go request probe's lookup of a position-independent binary's load address.
    let go = go_binary_sample();
    let _ = go.tcp_conn_close_in(&text, std::path::Path::new("/usr/local/bin/app"));
}

fn go_binary_sample() -> crate::gohttp::GoHttpBinary {
    let version = crate::gohttp::buildinfo::GoVersion { major: 1, minor: 22, patch: 10 };
    crate::gohttp::GoHttpBinary {
        version_string: "go1.22.10".to_owned(),
        version,
        offsets: crate::gohttp::layout::ConnOffsets::from_array([0; 8]),
        offsets_source: crate::gohttp::OffsetsSource::Dwarf,
        functions: Vec::new(),
        tcp_conn_close: 0x2a_1000,
        position_independent: true,
        first_segment: 0,
        receiver: crate::gohttp::Register::Rax,
    }
}

/// One datagram of a sock_diag dump ([`sock_diag::parse_messages`]): at most one socket per
/// message's worth of bytes, each in the namespace asked, with addresses of its family; the
/// same bytes as a `tcp_info` and as the attributes after `inet_diag_msg`.
pub fn sock_diag(data: &[u8]) {
    let mut sockets: Vec<ExistingSocket> = Vec::new();
    let _ = sock_diag::parse_messages(data, 7, &mut sockets);
    assert!(sockets.len() <= data.len() / sock_diag::INET_DIAG_MSG_BYTES);
    for s in &sockets {
        assert_eq!(s.netns, 7);
        let v4 = s.family == libc::AF_INET as u8;
        assert_eq!(s.local.is_ipv4(), v4);
        assert_eq!(s.remote.is_ipv4(), v4);
    }
    let info = TcpInfo::parse(data);
    if let Some(idle) = info.idle_ms() {
        assert!(Some(idle) <= info.last_data_sent_ms && Some(idle) <= info.last_data_recv_ms);
    }
    let _ = sock_diag::info_attribute(data);
}

// ---- binaries (symbolization, Go request probes) ----

/// The pc limit of the lookups one input makes: each lookup decodes pc-value tables up to the
/// table's length.
const LOOKUPS: u64 = 64;

/// A `.gopclntab` ([`GoPclntab::from_table`]): the pcs of its function table, and the pcs
/// around them, looked up; what a lookup names is bounded by the table.
pub fn gopclntab(data: &[u8]) {
    for text_start in [Some(0x40_1000), None] {
        let Ok(table) = GoPclntab::from_table(data, text_start) else { continue };
        assert!(table.function_count() <= data.len() as u64 / 8, "more functions than fit");
        for pc in table.table_pcs(LOOKUPS) {
            for pc in [pc, pc.wrapping_add(1), pc.wrapping_sub(1)] {
                check_frame(&table, pc, data.len());
            }
        }
        let _ = table.function_entry("net/http.(*persistConn).roundTrip");
    }
}

fn check_frame(table: &GoPclntab, pc: u64, bound: usize) {
    let Some(frame) = table.lookup(pc) else { return };
    assert!(frame.inlined.len() <= 64, "{} inlined frames", frame.inlined.len());
    let names = std::iter::once((&frame.function, &frame.file))
        .chain(frame.inlined.iter().map(|f| (&f.function, &f.file)));
    for (function, file) in names {
        // A name is read from the table; a generic one is printed with `[...]`.
        assert!(function.len() <= 3 * bound + 5, "a name of {} bytes", function.len());
        assert!(file.as_ref().is_none_or(|f| f.len() <= 3 * bound));
    }
}

/// An ELF file as the symbolizer reads it: its load segments and `.gopclntab` section
/// ([`elf::read_layout`], hand-written), and its Go table ([`GoPclntab::from_elf`]) looked up at
/// the start of each load segment and of its table's functions.
pub fn elf_layout(data: &[u8]) {
    if let Ok(Some(layout)) = elf::read_layout(data) {
        assert!(layout.loads.len() <= data.len() / 56, "more loads than headers fit");
        for load in &layout.loads {
            let _ = layout.vaddr_of(load.offset);
            let _ = layout.vaddr_of(load.offset.wrapping_add(load.filesz / 2));
        }
        if let Some(section) = &layout.gopclntab {
            assert!(section.name.ends_with(".gopclntab"));
            assert!(section.name.len() <= data.len());
        }
    }
    if let Ok(table) = GoPclntab::from_elf(data) {
        for pc in table.table_pcs(LOOKUPS) {
            check_frame(&table, pc, data.len());
        }
    }
}

/// An ELF file's call-frame information ([`ModuleCfi::from_elf`], gimli): the rule at each load
/// segment's start and at addresses inside it, as the unwinder asks for them.
pub fn eh_frame(data: &[u8]) {
    let Ok(cfi) = ModuleCfi::from_elf(data) else { return };
    for offset in [0u64, 1, 0x40, 0x1000, 0x1234, data.len() as u64 / 2] {
        let Some(vaddr) = cfi.vaddr_of_offset(offset) else { continue };
        for role in [AddressRole::Current, AddressRole::Return] {
            for at in [vaddr, vaddr.wrapping_add(4), vaddr.wrapping_add(0x20)] {
                let _ = cfi.rule_at(at, role);
            }
        }
    }
}

/// A Go binary as the request probes inspect it ([`crate::gohttp::inspect`]: build info, DWARF
/// or offset tables, symbols or pclntab), the input also read as a raw build-info blob, and a
/// version string read back from its printed form.
pub fn go_binary(data: &[u8]) {
    if let Ok(binary) = crate::gohttp::inspect(data) {
        assert!(!binary.functions.is_empty());
        assert!(binary.version >= crate::gohttp::FIRST_REGISTER_ABI);
    }
    let read = |addr: u64, len: u64| -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        data.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    };
    if let Ok(info) = crate::gohttp::buildinfo::parse(data, read) {
        assert!(!info.version.is_empty());
        assert!(info.version.len() <= 3 * data.len() && info.modinfo.len() <= 3 * data.len());
        if let Some(v) = crate::gohttp::buildinfo::GoVersion::parse(&info.version) {
            assert_eq!(crate::gohttp::buildinfo::GoVersion::parse(&v.to_string()), Some(v));
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Some(v) = crate::gohttp::buildinfo::GoVersion::parse(&text) {
        assert_eq!(crate::gohttp::buildinfo::GoVersion::parse(&v.to_string()), Some(v));
    }
}

#[cfg(test)]
mod tests;
