//! JSON Schemas of the API's answers, derived from the answer types ([`super::answers`]) with
//! schemars, so that the contract cannot drift from the code: docs/api.md shows them (a unit
//! test fails when the doc differs from what this module generates), and [`Schemas::validate`]
//! checks a real answer against them (the integration tests do, on a live daemon).
//!
//! The schemas describe exactly what this release sends: every object lists all its fields
//! (`additionalProperties: false`), `required` names those always present.
use std::borrow::Cow;

use schemars::{
    JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, transform::RecursiveTransform,
};
use serde_json::{Map, Value, json};

use super::answers::{
    AgesReport, ConnsReport, GroupReport, LeaksReport, RemoteReport, StatusReport, TopReport,
};
use crate::trace::TraceRecord;

mod validate;

#[cfg(test)]
mod doc;

/// One kind of answer: what asks for it, what prints it, and its type.
pub struct Answer {
    /// The envelope's `request`, as an example line (docs/api.md shows it).
    pub request: &'static str,
    /// The CLI command that prints it with `--json`.
    pub command: &'static str,
    /// Its name in the schema document's `$defs`.
    pub type_name: fn() -> Cow<'static, str>,
    add: fn(&mut SchemaGenerator) -> Schema,
}

const fn answer<T: JsonSchema>(request: &'static str, command: &'static str) -> Answer {
    Answer { request, command, type_name: T::schema_name, add: SchemaGenerator::subschema_for::<T> }
}

/// Every answer of the API, in the order docs/api.md documents them.
pub const ANSWERS: [Answer; 8] = [
    answer::<StatusReport>(r#"{"status":{}}"#, "tracer status --json"),
    answer::<TopReport>(r#"{"top":{"limit":null,"by":"process"}}"#, "tracer top --json"),
    answer::<RemoteReport>(
        r#"{"top":{"limit":null,"by":"remote"}}"#,
        "tracer top --by remote --json",
    ),
    answer::<GroupReport>(
        r#"{"top":{"limit":null,"by":"container","namespace":"shop"}}"#,
        "tracer top --by container --namespace shop --json",
    ),
    answer::<AgesReport>(r#"{"ages":{"pid":1234}}"#, "tracer top --ages 1234 --json"),
    answer::<ConnsReport>(
        r#"{"conns":{"pid":null,"remote":null,"state":null}}"#,
        "tracer conns --json",
    ),
    answer::<LeaksReport>(r#"{"leaks":{}}"#, "tracer leaks --json"),
    // A stream: `{"streaming":true}`, then one record per line (or `{"dropped":N}`).
    answer::<TraceRecord>(r#"{"trace":{"states":true}}"#, "tracer trace --json"),
];

/// The schema document of every answer: one JSON Schema (draft 2020-12) whose `$defs` hold each
/// answer type and every type they contain.
pub struct Schemas {
    document: Value,
}

impl Default for Schemas {
    fn default() -> Self {
        Self::generate()
    }
}

impl Schemas {
    pub fn generate() -> Self {
        let mut generator = SchemaSettings::draft2020_12()
            .for_serialize()
            .with_transform(RecursiveTransform(close_objects))
            .into_generator();
        for answer in &ANSWERS {
            (answer.add)(&mut generator);
        }
        let defs = generator.take_definitions(true);
        let document = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("tracer API version {} answers", super::protocol::API_VERSION),
            "$defs": defs,
        });
        Self { document }
    }

    /// The whole document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The schema of the type named `name` in `$defs`.
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.defs().get(name)
    }

    pub fn defs(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.document["$defs"].as_object().unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    /// Checks `value` against the schema of `T` (an answer type or any type it contains); the
    /// errors name the offending place as a JSON pointer.
    pub fn validate<T: JsonSchema>(&self, value: &Value) -> Result<(), Vec<String>> {
        self.validate_named(&T::schema_name(), value)
    }

    /// Checks `value` against the schema of the type named `name` in `$defs`.
    pub fn validate_named(&self, name: &str, value: &Value) -> Result<(), Vec<String>> {
        let reference = json!({ "$ref": format!("#/$defs/{name}") });
        let mut errors = Vec::new();
        validate::Validator { root: &self.document }.check(&reference, value, "", &mut errors);
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Every object with declared properties gets `additionalProperties: false`: the schema lists
/// every field this release sends, and the tests check that no undocumented one appears.
fn close_objects(schema: &mut Schema) {
    if let Some(object) = schema.as_object_mut()
        && object.contains_key("properties")
        && !object.contains_key("additionalProperties")
    {
        object.insert("additionalProperties".into(), false.into());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        api::answers::{
            AgesReport, AlertStacks, AlertView, ConnBrief, ConnHealth, ConnRow, ConnSnapshot,
            Evidence, KprobeStatus, NoStack, RemoteCount, RemoteRow, RequestGroups, StackGroup,
            TopRow, Unstacked,
        },
        stacks::symbolize::Frame,
        table::{Direction, DirectionStats, Phase, ProcessSnapshot, StateCounts},
    };

    fn process() -> ProcessSnapshot {
        ProcessSnapshot {
            pid: 42,
            start_time_ns: 1_000_000_000,
            comm: "curl".into(),
            cgroup_id: 7,
            open: 1,
            opened_total: 3,
            closed_total: 2,
            connect_failed: 1,
            connecting: 0,
            states: StateCounts { established: 1, ..StateCounts::default() },
            outbound: DirectionStats { open: 1, opened_total: 3, closed_total: 2 },
            inbound: DirectionStats::default(),
            exited: true,
            open_at_exit: Some(1),
            over_limit: false,
            refused_connections: 0,
        }
    }

    fn container() -> crate::containers::Container {
        crate::containers::Container {
            id: "0123456789abcdef".repeat(4),
            name: Some("api".into()),
            runtime: crate::containers::Runtime::Containerd,
            pod: Some("checkout-7d9f".into()),
            namespace: Some("shop".into()),
            pod_uid: Some("5f0c3a1e-0d7e-4c55-9a3b-2b1f6f1d2e3a".into()),
            cgroup: "/kubepods.slice/kubepods-pod5f0c3a1e_0d7e_4c55_9a3b_2b1f6f1d2e3a.slice/\
                     cri-containerd-0123.scope"
                .into(),
            role: crate::containers::Role::Workload,
        }
    }

    fn alert(resolved: Option<u64>) -> AlertView {
        AlertView {
            pid: 42,
            comm: "curl".into(),
            container: resolved.is_none().then(container),
            rule: "growth".into(),
            since: "2026-11-24T04:07:00.123Z".into(),
            since_seconds: 12,
            open: 30,
            evidence: Evidence {
                floors: vec![1, 11, 21, 31],
                growth: 30,
                opens_in_window: 30,
                closes_in_window: 0,
                stale_close_wait: 0,
                stale_held_closed: 0,
                aged: 0,
                unread: 6,
                idle: 0,
                unread_connections: vec![crate::health::HealthBrief {
                    remote: "127.0.0.1:80".into(),
                    unread_bytes: 65536,
                    idle_seconds: 70,
                    no_read_seconds: 65,
                }],
                idle_connections: Vec::new(),
                reading: crate::detect::Rule::Unread.reading().map(str::to_owned),
                oldest: vec![ConnBrief {
                    local: "127.0.0.1:5000".into(),
                    remote: "127.0.0.1:80".into(),
                    state: "established".into(),
                    age_seconds: 9,
                }],
                top_remotes: vec![RemoteCount { remote: "127.0.0.1:80".into(), open: 30 }],
                port_pressure: None,
                fds: None,
                stacks: Some(AlertStacks {
                    connections: 30,
                    groups: vec![StackGroup {
                        id: 7,
                        count: 26,
                        direction: Direction::Outbound,
                        oldest_age_seconds: 9,
                        top_remotes: vec![RemoteCount { remote: "127.0.0.1:80".into(), open: 26 }],
                        leading_function: Some("main.openDB".into()),
                        frames: vec![Frame {
                            function: Some("main.openDB".into()),
                            file: Some("/src/main.go".into()),
                            line: Some(12),
                            module: Some("/app".into()),
                            offset: 0x1234,
                            inlined: false,
                        }],
                    }],
                    in_other_groups: 0,
                    unstacked: Unstacked { not_sampled: 4, ..Unstacked::default() },
                    requests: Some(RequestGroups {
                        probed_for_seconds: 40,
                        connections: 30,
                        groups: vec![StackGroup {
                            id: 9,
                            count: 20,
                            direction: Direction::Outbound,
                            oldest_age_seconds: 8,
                            top_remotes: vec![RemoteCount {
                                remote: "127.0.0.1:80".into(),
                                open: 20,
                            }],
                            leading_function: Some("main.fetchUser".into()),
                            frames: vec![Frame {
                                function: Some("main.fetchUser".into()),
                                file: Some("/src/users.go".into()),
                                line: Some(30),
                                module: Some("/app".into()),
                                offset: 0x2345,
                                inlined: false,
                            }],
                        }],
                        in_other_groups: 0,
                        before_probing: 6,
                        no_request: 4,
                        request_lost: 0,
                    }),
                }),
            },
            resolved_seconds_ago: resolved,
        }
    }

    /// One value of each answer, with every optional part filled somewhere.
    fn samples() -> Vec<(String, Value)> {
        let conn = |holders: Vec<u32>, stack_group: Option<u32>| ConnSnapshot {
            id: 1,
            pid: None,
            comm: None,
            direction: Direction::Inbound,
            phase: Phase::Backlog,
            local: "[::1]:80".parse().expect("addr"),
            remote: "[::1]:5000".parse().expect("addr"),
            state: "established".into(),
            age_seconds: 0,
            netns: 4_026_531_840,
            preexisting: false,
            holders,
            stack_group,
            no_stack: stack_group.is_none().then_some(NoStack::NotSampled),
        };
        let status = StatusReport {
            probe_mode: "kprobe".into(),
            events_by_kind: [("connect".to_owned(), 3)].into(),
            events_lost_by_reason: [("ringbuf_full".to_owned(), 0)].into(),
            metrics_addr: Some("127.0.0.1:9464".into()),
            metrics_tls: false,
            metrics_basic_auth: false,
            kprobes: vec![KprobeStatus { probe: "tcp_connect".into(), hits: 3, missed: 0 }],
            workload_overrides: vec!["namespace=shop,container=api:idle=off".into()],
            workload_override_matches: vec![crate::api::answers::OverrideMatches {
                selector: "namespace=shop,container=api".into(),
                processes: 1,
                examples: vec!["42 java in shop/checkout-7d9f/api".into()],
            }],
            ..StatusReport::default()
        };
        let top = TopReport {
            processes: vec![TopRow {
                process: process(),
                container: Some(container()),
                growth: -2,
                growth_partial: true,
                oldest_age_seconds: 5,
                idle: 3,
                unread: 0,
                alerts: vec!["close_wait".into()],
                time_wait_caused: 3,
                time_wait_caused_total: 40,
                fd_used: Some(60),
                fd_limit: Some(1024),
                fd_exhaustion_seconds: None,
                leading_function: Some("main.openDB".into()),
            }],
            unattributed: 1,
            over_limit: false,
        };
        let remotes = RemoteReport {
            remotes: vec![RemoteRow {
                remote: "10.0.0.1:443".into(),
                open: 2,
                pids: vec![1, 2],
                ports_used: Some(120),
                ports_available: Some(28232),
            }],
            unattributed: 0,
        };
        let ages = AgesReport {
            pid: 42,
            comm: "curl".into(),
            open: 3,
            buckets: vec![(Some(10), 2), (None, 1)],
        };
        let conns = ConnsReport {
            connections: vec![
                ConnRow {
                    conn: conn(vec![], Some(7)),
                    health: ConnHealth {
                        idle_seconds: Some(12),
                        bytes_received: Some(70_000),
                        bytes_acked: Some(301),
                        unread_bytes: Some(65_536),
                        unsent_bytes: Some(0),
                        rtt_us: Some(45),
                        health_unavailable: None,
                    },
                    container: Some(container()),
                },
                ConnRow {
                    conn: conn(vec![7, 8], None),
                    health: ConnHealth::unavailable(crate::health::NOT_LISTED),
                    container: None,
                },
            ],
            host_netns: Some(4_026_531_840),
        };
        let groups = GroupReport {
            groups: crate::containers::views::group(
                [
                    (Some(&container()), crate::containers::views::Member::default()),
                    (None, Default::default()),
                ],
                false,
            ),
            unattributed: 0,
        };
        let leaks = LeaksReport { active: vec![alert(None)], resolved: vec![alert(Some(3))] };
        let mut trace = TraceRecord::new(
            crate::trace::TraceKind::Close,
            42,
            "curl".into(),
            "shop/checkout-7d9f/api".into(),
        );
        trace.direction = Some(Direction::Outbound);
        trace.local = Some("[::1]:5000".parse().expect("addr"));
        trace.remote = Some("[::1]:80".parse().expect("addr"));
        trace.lifetime_seconds = Some(2.5);
        trace.closed_first = Some(crate::table::ClosedFirst::Remote);
        let to = |v: serde_json::Result<Value>| v.expect("serialise");
        vec![
            ("StatusReport".into(), to(serde_json::to_value(status))),
            ("TopReport".into(), to(serde_json::to_value(top))),
            ("RemoteReport".into(), to(serde_json::to_value(remotes))),
            ("GroupReport".into(), to(serde_json::to_value(groups))),
            ("AgesReport".into(), to(serde_json::to_value(ages))),
            ("ConnsReport".into(), to(serde_json::to_value(conns))),
            ("LeaksReport".into(), to(serde_json::to_value(leaks))),
            ("TraceRecord".into(), to(serde_json::to_value(trace))),
        ]
    }

    #[test]
    fn every_answer_has_a_schema_and_real_answers_pass_it() {
        let schemas = Schemas::generate();
        let names: Vec<String> = ANSWERS.iter().map(|a| (a.type_name)().into_owned()).collect();
        let samples = samples();
        assert_eq!(names, samples.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
        for (name, value) in samples {
            assert!(schemas.definition(&name).is_some(), "no schema for {name}");
            if let Err(errors) = schemas.validate_named(&name, &value) {
                panic!("{name}: {errors:#?}\n{value:#}");
            }
        }
    }

    #[test]
    fn answers_with_a_field_missing_added_or_mistyped_fail() {
        let schemas = Schemas::generate();
        let mut top = samples().remove(1).1;
        assert!(schemas.validate::<TopReport>(&top).is_ok());
        let row = &mut top["processes"][0];
        row.as_object_mut().expect("row").remove("growth");
        row["surprise"] = json!(1);
        row["states"]["established"] = json!("one");
        row["alerts"] = json!(["no_such_rule"]);
        let errors = schemas.validate::<TopReport>(&top).expect_err("must fail");
        for expected in [
            "/processes/0: the required field \"growth\" is missing",
            "/processes/0: the field \"surprise\" is not in the schema",
            "/processes/0/states/established: expected integer, found string",
            "/processes/0/alerts/0: \"no_such_rule\" is not one of",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected}: {errors:#?}");
        }
        let mut status = samples().remove(0).1;
        status["events_by_kind"]["telepathy"] = json!(1);
        let errors = schemas.validate::<StatusReport>(&status).expect_err("must fail");
        assert!(errors.iter().any(|e| e.contains("telepathy")), "{errors:#?}");
    }

    #[test]
    fn the_schemas_enumerate_the_names_the_code_uses() {
        let schemas = Schemas::generate();
        let at = |pointer: &str| {
            schemas.document().pointer(pointer).cloned().unwrap_or_else(|| panic!("{pointer}"))
        };
        assert_eq!(
            at("/$defs/AlertView/properties/rule/enum"),
            json!([
                "growth",
                "close_wait",
                "held_closed",
                "age",
                "unread",
                "idle",
                "port_exhaustion",
                "fd_exhaustion"
            ])
        );
        assert_eq!(
            at("/$defs/StatusReport/properties/probe_mode/enum"),
            json!(["fentry", "kprobe", "tracepoint"])
        );
        let states = at("/$defs/ConnRow/properties/state/enum");
        for state in crate::api::answers::STATE_NAMES.iter().filter(|s| **s != "connecting") {
            assert!(states.as_array().expect("enum").contains(&json!(state)), "{state}");
        }
    }
}
