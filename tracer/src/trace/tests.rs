use super::*;

fn record(kind: TraceKind, comm: &str, local: &str, remote: &str) -> TraceRecord {
    let mut record = TraceRecord::new(kind, 4242, comm.into(), "host".into());
    record.time = "2026-11-30T01:02:03.456Z".into();
    record.direction = Some(Direction::Outbound);
    record.local = Some(local.parse().unwrap());
    record.remote = Some(remote.parse().unwrap());
    if kind == TraceKind::Close {
        record.lifetime_seconds = Some(2.5);
        record.closed_first = Some(ClosedFirst::Remote);
    }
    record
}

#[test]
fn remote_matches_addresses_networks_and_ports() {
    let m = |f: &str, a: &str| RemoteMatch::parse(f).unwrap().matches(a.parse().unwrap());
    assert!(m("10.0.0.5", "10.0.0.5:80"));
    assert!(!m("10.0.0.5", "10.0.0.6:80"));
    assert!(m("10.0.0.0/8", "10.9.8.7:1"));
    assert!(m("10.0.0.0/8:5432", "10.9.8.7:5432"));
    assert!(!m("10.0.0.0/8:5432", "10.9.8.7:5433"));
    assert!(m("10.0.0.5:80", "[::ffff:10.0.0.5]:80"), "v4-mapped peers match v4 filters");
    assert!(m("[::1]:80", "[::1]:80"));
    assert!(m("fd00::/8", "[fd12::1]:443"));
    assert!(m("[fd00::]/8:443", "[fd12::1]:443"));
    assert!(!m("fd00::/8", "10.0.0.1:443"));
    assert!(m("0.0.0.0/0", "192.0.2.1:9"));
    for bad in ["", "10.0.0.0/33", "10.0.0.5:http", "[::1", "host:80", "::1/129"] {
        let e = RemoteMatch::parse(bad).expect_err(bad);
        assert!(e.contains("ADDR/PREFIX:PORT"), "{bad}: {e}");
    }
}

#[test]
fn filters_select_exactly_what_they_promise() {
    let open = record(TraceKind::Open, "api-server", "10.0.0.1:40000", "10.0.0.9:5432");
    let close = record(TraceKind::Close, "api-server", "10.0.0.1:40000", "10.0.0.9:5432");
    let pass = |f: TraceFilter, r: &TraceRecord| f.matches(r, None);
    assert!(pass(TraceFilter::default(), &open));
    assert!(pass(TraceFilter { pid: Some(4242), ..Default::default() }, &open));
    assert!(!pass(TraceFilter { pid: Some(1), ..Default::default() }, &open));
    assert!(pass(TraceFilter { comm: Some("api-*".into()), ..Default::default() }, &open));
    assert!(!pass(TraceFilter { comm: Some("api".into()), ..Default::default() }, &open));
    assert!(pass(TraceFilter { port: Some(40000), ..Default::default() }, &open));
    assert!(pass(TraceFilter { port: Some(5432), ..Default::default() }, &open));
    assert!(!pass(TraceFilter { port: Some(80), ..Default::default() }, &open));
    assert!(pass(TraceFilter { remote: Some("10.0.0.0/24".into()), ..Default::default() }, &open));
    assert!(!pass(TraceFilter { remote: Some("10.0.0.1".into()), ..Default::default() }, &open));
    let inbound = TraceFilter { direction: Some(Direction::Inbound), ..Default::default() };
    assert!(!pass(inbound, &open));
    // --min-lifetime selects closes by lifetime and lets the other kinds through.
    let long = TraceFilter { min_lifetime_ms: Some(3_000), ..Default::default() };
    assert!(!pass(long.clone(), &close));
    assert!(pass(long, &open));
    assert!(pass(TraceFilter { min_lifetime_ms: Some(2_500), ..Default::default() }, &close));
    // Placement: a host process is only `--container host`'s.
    let host = TraceFilter {
        placement: PlacementFilter { container: Some("host".into()), ..Default::default() },
        ..Default::default()
    };
    assert!(pass(host, &open));
    // State changes only for subscribers that asked.
    let change = record(TraceKind::StateChange, "api-server", "10.0.0.1:40000", "10.0.0.9:5432");
    assert!(!pass(TraceFilter::default(), &change));
    assert!(pass(TraceFilter { states: true, ..Default::default() }, &change));
    let pod = TraceFilter {
        placement: PlacementFilter { pod: Some("web-1".into()), ..Default::default() },
        ..Default::default()
    };
    assert!(!pass(pod, &open));
}

#[test]
fn text_lines_align_ipv6_and_clip_long_names_and_json_uses_the_same_names() {
    let v4 = record(TraceKind::Close, "a-very-long-command-name", "10.0.0.1:40000", "10.0.0.9:80");
    let v6 = record(
        TraceKind::Open,
        "curl",
        "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:40000",
        "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:2]:443",
    );
    let lines: Vec<String> =
        [&v4, &v6].iter().map(|r| text_line(&TraceLine::Record(Box::new((*r).clone())))).collect();
    let head = header();
    // Every column starts where the header's does, IPv6 endpoints included.
    for (column, value) in [
        ("KIND", "open"),
        ("COMM", "curl"),
        ("PLACEMENT", "host"),
        ("DIRECTION", "outbound"),
        ("LOCAL", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:40000"),
        ("REMOTE", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:2]:443"),
    ] {
        assert_eq!(head.find(column), lines[1].find(value), "{column}:\n{head}\n{}", lines[1]);
    }
    assert!(lines[0].contains("a-very-long-com ") && !lines[0].contains("a-very-long-comm"));
    assert!(lines[0].contains(" 2.500 ") && lines[0].contains(" close "), "{}", lines[0]);
    // The JSON object has exactly the text view's columns, in its order, named the same.
    let json = serde_json::to_value(&v4).unwrap();
    let keys: Vec<String> =
        json.as_object().unwrap().keys().map(|k| k.to_uppercase()).collect::<Vec<_>>();
    let columns: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(keys, columns);
    assert_eq!(json["kind"], "close");
    assert_eq!(json["direction"], "outbound");
    assert_eq!(json["lifetime_seconds"], 2.5);
    let dropped = text_line(&TraceLine::Dropped(Dropped { dropped: 7 }));
    assert!(dropped.contains("7 records dropped"), "{dropped}");
    let json = serde_json::to_string(&TraceLine::Dropped(Dropped { dropped: 7 })).unwrap();
    assert_eq!(json, r#"{"dropped":7}"#);
}

#[test]
fn a_failed_connect_names_the_kernels_errno_or_the_owners_close() {
    assert_eq!(
        connect_failure_reason(libc::ECONNREFUSED as u8, false).as_deref(),
        Some("ECONNREFUSED")
    );
    assert_eq!(connect_failure_reason(libc::ETIMEDOUT as u8, false).as_deref(), Some("ETIMEDOUT"));
    assert_eq!(connect_failure_reason(200, false).as_deref(), Some("errno 200"));
    assert_eq!(connect_failure_reason(0, false), None, "the kernel set none");
    assert_eq!(connect_failure_reason(0, true).as_deref(), Some("closed_by_owner"));
}
