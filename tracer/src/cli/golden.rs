//! The text views of `trace`, `top`, `conns` and `leaks`, checked against golden files: each
//! renders a fixed answer (`tracer/tests/golden/*.json`, the API's answer as the daemon sends
//! it, checked against the API's schema) and must equal the `.txt` beside it, byte for byte.
//! The fixtures cover IPv4, IPv6 and v4-mapped endpoints, long command, pod and container
//! names, and every optional part. After an intended change to a view, regenerate with
//! `TRACER_BLESS=1 cargo test -p tracer --bin tracer golden` and review the diff.
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use tracer::{
    api::{
        answers::{ConnsReport, LeaksReport, TopReport},
        schema::Schemas,
    },
    trace::{TraceLine, header, text_line},
};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// The answer in `name`, after checking it is one the daemon could send (`schema` names its
/// type in the API's schema document).
fn answer<T: DeserializeOwned>(name: &str, schema: &str) -> T {
    let text = std::fs::read_to_string(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    if let Err(errors) = Schemas::generate().validate_named(schema, &value) {
        panic!("{name} is not a {schema} the daemon could send: {errors:#?}");
    }
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Compares `rendered` with the golden file `name` (or rewrites it under `TRACER_BLESS=1`).
fn check(name: &str, rendered: &str) {
    let file = path(name);
    if std::env::var_os("TRACER_BLESS").is_some() {
        std::fs::write(&file, rendered).expect("write the golden file");
        return;
    }
    let golden = std::fs::read_to_string(&file).unwrap_or_default();
    if golden != rendered {
        let first = golden
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| golden.lines().count().min(rendered.lines().count()));
        panic!(
            "{name} differs from what the view renders, first at line {}:\n--- golden\n{golden}\n\
             --- rendered\n{rendered}\n(after an intended change: TRACER_BLESS=1 cargo test -p \
             tracer --bin tracer golden, and review the diff)",
            first + 1
        );
    }
}

#[test]
fn top_with_containers_alerts_and_a_partial_window() {
    check(
        "top-containers.txt",
        &super::top::top(&answer::<TopReport>("top-containers.json", "TopReport")),
    );
}

#[test]
fn top_of_host_processes_has_no_placement_column() {
    check("top-host.txt", &super::top::top(&answer::<TopReport>("top-host.json", "TopReport")));
}

#[test]
fn conns_aligns_ipv6_and_mapped_endpoints_and_foreign_namespaces() {
    check("conns.txt", &super::conns::conns(&answer::<ConnsReport>("conns.json", "ConnsReport")));
}

#[test]
fn leaks_shows_every_part_of_the_evidence() {
    check("leaks.txt", &super::leaks::leaks(&answer::<LeaksReport>("leaks.json", "LeaksReport")));
    check(
        "leaks-none.txt",
        &super::leaks::leaks(&answer::<LeaksReport>("leaks-none.json", "LeaksReport")),
    );
}

/// Every kind of record, a dropped notice, IPv4 and IPv6: each line's cells start under their
/// header's column.
#[test]
fn trace_lines_of_every_kind() {
    let text = std::fs::read_to_string(path("trace.ndjson")).expect("trace.ndjson");
    let mut rendered = header() + "\n";
    for line_text in text.lines() {
        let line: TraceLine =
            serde_json::from_str(line_text).unwrap_or_else(|e| panic!("{line_text}: {e}"));
        // Every field of the fixture is one the record has, and the reverse.
        if let TraceLine::Record(r) = &line {
            let given: serde_json::Value = serde_json::from_str(line_text).expect("JSON");
            assert_eq!(serde_json::to_value(r).expect("serialise"), given, "{line_text}");
        }
        rendered += &text_line(&line);
        rendered += "\n";
    }
    check("trace.txt", &rendered);
}
