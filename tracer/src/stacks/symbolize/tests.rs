//! Unit tests of the parts that need no privileges: frames, the cache's bounds, lookups.
//! Pinning and symbolizing real programs needs CAP_SYS_ADMIN: tests/symbolize.rs.
use super::*;

fn named(function: &str, module: &str, offset: u64) -> Resolved {
    Resolved {
        address: offset,
        state: ResolveState::Symbolized,
        frames: vec![Frame {
            function: Some(function.into()),
            file: Some("/src/a.c".into()),
            line: Some(7),
            module: Some(module.into()),
            offset,
            inlined: false,
        }],
    }
}

fn mapping(start: u64, end: u64, offset: u64, path: &str) -> Mapping {
    Mapping { start, end, offset, path: path.into(), deleted: false, file: None }
}

#[test]
fn frames_display_name_and_line_or_module_and_offset() {
    let mut f = named("leak_connections", "/bin/app", 0x1139).frames.remove(0);
    assert_eq!(f.to_string(), "leak_connections (/src/a.c:7)");
    f.inlined = true;
    assert_eq!(f.to_string(), "leak_connections (/src/a.c:7) [inlined]");
    f.line = None;
    f.inlined = false;
    assert_eq!(f.to_string(), "leak_connections (/src/a.c)");
    f.file = None;
    assert_eq!(f.to_string(), "leak_connections");
    f.function = None;
    assert_eq!(f.to_string(), "/bin/app+0x1139");
    f.module = None;
    assert_eq!(f.to_string(), "0x1139");
}

#[test]
fn placeholders_name_the_module_and_file_offset() {
    let m = mapping(0x5000, 0x9000, 0x1000, "/usr/bin/app");
    let r = Resolved::placeholder(0x5123, ResolveState::Pending, Some(&m));
    assert_eq!(r.frames.len(), 1);
    assert_eq!(r.frames[0].to_string(), "/usr/bin/app+0x1123");
    let r = Resolved::placeholder(0xdead, ResolveState::Unmapped, None);
    assert_eq!(r.frames[0].to_string(), "0xdead");
    // Anonymous executable memory has no module name.
    let m = mapping(0x5000, 0x9000, 0, "");
    let r = Resolved::placeholder(0x5010, ResolveState::NoSymbol, Some(&m));
    assert_eq!(r.frames[0].to_string(), "0x10");
}

#[test]
fn return_addresses_are_looked_up_inside_the_call() {
    assert_eq!(AddressKind::Return.lookup(0x1000), 0xfff);
    assert_eq!(AddressKind::Return.lookup(0), 0);
    assert_eq!(AddressKind::Exact.lookup(0x1000), 0x1000);
}

#[test]
fn mapping_for_finds_the_holding_mapping_only() {
    let process = PinnedProcess {
        pid: 1,
        mappings: vec![
            mapping(0x1000, 0x2000, 0, "/a"),
            mapping(0x2000, 0x3000, 0x1000, "/a"),
            mapping(0x5000, 0x6000, 0, "[vdso]"),
        ],
        skipped: Vec::new(),
    };
    let path = |a| process.mapping_for(a).map(|m| (m.start, m.path.as_str()));
    assert_eq!(path(0xfff), None);
    assert_eq!(path(0x1000), Some((0x1000, "/a")));
    assert_eq!(path(0x1fff), Some((0x1000, "/a")));
    assert_eq!(path(0x2000), Some((0x2000, "/a")));
    assert_eq!(path(0x3000), None);
    assert_eq!(path(0x4fff), None);
    assert_eq!(path(0x5800), Some((0x5000, "[vdso]")));
    assert_eq!(path(u64::MAX), None);
}

#[test]
fn resolver_without_files_answers_placeholders() {
    let process = PinnedProcess {
        pid: 1,
        mappings: vec![mapping(0x5000, 0x6000, 0, "[vdso]")],
        skipped: Vec::new(),
    };
    let out = Resolver::default().symbolize(&process, &[0x5010, 0x10], AddressKind::Exact);
    assert_eq!(out[0].state, ResolveState::NoSymbol);
    assert_eq!(out[0].frames[0].to_string(), "[vdso]+0x10");
    assert_eq!(out[1].state, ResolveState::Unmapped);
}

fn limits(addresses: usize, bytes: usize) -> Limits {
    Limits { max_cached_addresses: addresses, max_cached_bytes: bytes, ..Limits::default() }
}

#[test]
fn cache_is_bounded_by_count_and_keeps_the_recently_used() {
    let limits = limits(100, usize::MAX);
    let mut cache = FrameCache::default();
    for a in 0..100 {
        cache.insert(1, (a, AddressKind::Exact), named("f", "/m", a), &limits);
    }
    assert_eq!(cache.entries, 100);
    // Use the first ten again: they survive the eviction the next insert causes.
    for a in 0..10 {
        assert!(cache.get(1, (a, AddressKind::Exact)).is_some());
    }
    cache.insert(2, (0, AddressKind::Exact), named("g", "/m", 0), &limits);
    assert!(cache.entries <= 100 * 3 / 4 + 1, "{}", cache.entries);
    assert_eq!(cache.evicted as usize + cache.entries, 101);
    for a in 0..10 {
        assert!(cache.get(1, (a, AddressKind::Exact)).is_some(), "recently used {a} evicted");
    }
    assert!(cache.get(1, (10, AddressKind::Exact)).is_none(), "least recently used kept");
    // The totals match what is there.
    let entries: usize = cache.by_pid.values().map(HashMap::len).sum();
    let bytes: usize = cache.by_pid.values().flat_map(|m| m.values().map(|e| e.bytes)).sum();
    assert_eq!((cache.entries, cache.bytes), (entries, bytes));
}

#[test]
fn cache_is_bounded_by_bytes() {
    let one = named("f", "/m", 0).heap_bytes() + CACHE_ENTRY_OVERHEAD;
    let limits = limits(usize::MAX, one * 10);
    let mut cache = FrameCache::default();
    for a in 0..1000 {
        cache.insert(1, (a, AddressKind::Exact), named("f", "/m", 0), &limits);
        assert!(cache.bytes <= one * 10);
    }
    assert!(cache.entries <= 10);
    assert!(cache.evicted >= 990);
}

#[test]
fn cache_keys_by_pid_address_and_kind_and_forgets_a_pid() {
    let limits = limits(1000, usize::MAX);
    let mut cache = FrameCache::default();
    cache.insert(1, (0x10, AddressKind::Exact), named("exact", "/m", 0x10), &limits);
    cache.insert(1, (0x10, AddressKind::Return), named("ret", "/m", 0x10), &limits);
    cache.insert(2, (0x10, AddressKind::Exact), named("other", "/m", 0x10), &limits);
    let name = |c: &mut FrameCache, pid, kind| {
        c.get(pid, (0x10, kind)).and_then(|r| r.frames[0].function.clone())
    };
    assert_eq!(name(&mut cache, 1, AddressKind::Exact).as_deref(), Some("exact"));
    assert_eq!(name(&mut cache, 1, AddressKind::Return).as_deref(), Some("ret"));
    assert_eq!(name(&mut cache, 2, AddressKind::Exact).as_deref(), Some("other"));
    // Replacing an entry does not count it twice.
    cache.insert(2, (0x10, AddressKind::Exact), named("other2", "/m", 0x10), &limits);
    assert_eq!(cache.entries, 3);
    cache.forget(1);
    assert_eq!(cache.entries, 1);
    assert_eq!(cache.bytes, named("other2", "/m", 0x10).heap_bytes() + CACHE_ENTRY_OVERHEAD);
    assert_eq!(name(&mut cache, 1, AddressKind::Exact), None);
    cache.forget(2);
    assert_eq!((cache.entries, cache.bytes), (0, 0));
}

#[test]
fn frames_serialize_with_their_field_names() {
    let json = serde_json::to_value(named("f", "/m", 3)).unwrap();
    assert_eq!(json["state"], "symbolized");
    assert_eq!(json["frames"][0]["function"], "f");
    assert_eq!(json["frames"][0]["module"], "/m");
    assert_eq!(json["frames"][0]["offset"], 3);
    assert_eq!(json["frames"][0]["inlined"], false);
}

#[test]
fn the_service_answers_an_unknown_process_without_waiting_long() {
    let symbolizer = Symbolizer::start(SymbolizerConfig::default()).unwrap();
    // No such pid (pid_max is at most 2^22).
    let pid = u32::MAX - 1;
    assert!(
        matches!(symbolizer.pin(pid), Err(SymbolizeError::ReadMaps { pid: p, .. }) if p == pid)
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let out = rt.block_on(symbolizer.resolve_within(
        pid,
        &[0x1000],
        AddressKind::Return,
        Duration::from_secs(5),
    ));
    assert_eq!(out[0].state, ResolveState::Unmapped);
    let stats = symbolizer.stats();
    assert_eq!((stats.pin_failures, stats.requests, stats.pinned_processes), (1, 1, 0));
    symbolizer.shutdown();
}

#[test]
fn the_service_can_be_shared_with_the_async_daemon() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let symbolizer = Symbolizer::start(SymbolizerConfig::default()).unwrap();
    send_sync(&symbolizer);
    send(&symbolizer.resolve_within(1, &[], AddressKind::Return, Duration::ZERO));
    symbolizer.shutdown();
}
