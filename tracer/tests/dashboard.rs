//! The Grafana dashboard (deploy/grafana/tracer.json) against real data. A real tracer watches
//! two pods made from kernel parts (cgroup directories in the kubelet's shape, and its log tree
//! naming them): one leaks connections, one keeps a healthy pool that opens and closes. A real
//! Prometheus scrapes the daemon with the chart's ServiceMonitor relabelings
//! (deploy/helm/tracer/templates/_helpers.tpl), fed the discovery labels Kubernetes would give
//! tracer's own pod, so the target labels `node`, `namespace` and `pod` sit beside the
//! metrics' own `k8s_namespace` and `k8s_pod`, and a collision would show. Then every variable's
//! query offers the values that select the leaking pod, and every panel's query, with the
//! variables set to them, returns data. Run as root.
mod common;

use common::{
    Daemon, FAST_LEAKS, Workload,
    pods::{Cgroups, Kubelet, container_id, pod_uid},
    prometheus::Prometheus,
};
use serde_json::Value;

const NODE: &str = "node-a";
const NAMESPACE: &str = "shop";
const LEAKING_POD: &str = "api-7d9f8b6c4-x2vqn";
const HEALTHY_POD: &str = "db-0";

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The chart's relabelings (`tracer.relabelings` in _helpers.tpl), as a scrape job's
/// `relabel_configs` (the operator writes ServiceMonitor's camelCase keys in snake_case).
fn chart_relabelings() -> String {
    let helpers = repo_file("deploy/helm/tracer/templates/_helpers.tpl");
    let block = helpers
        .split("{{- define \"tracer.relabelings\" -}}")
        .nth(1)
        .and_then(|rest| rest.split("{{- end }}").next())
        .expect("tracer.relabelings in _helpers.tpl");
    let rules: String = block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l
                .replace("sourceLabels:", "source_labels:")
                .replace("targetLabel:", "target_label:");
            format!("      {l}\n")
        })
        .collect();
    assert!(rules.matches("target_label:").count() == 3, "{rules}");
    format!("    relabel_configs:\n{rules}")
}

/// Puts `workload` into a pod of `NAMESPACE` named `pod`, with one container `name`.
fn into_pod(cgroups: &mut Cgroups, kubelet: &Kubelet, n: u32, pod: &str, name: &str, pid: u32) {
    let (uid, id) = (pod_uid(n), container_id(n));
    kubelet.container(NAMESPACE, pod, &uid, name, &id);
    let slice = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let dir = cgroups.make(&slice);
    cgroups.enter(&dir, pid);
}

/// `expr` with the dashboard's variables set: the node, namespace and pod of the leak.
fn with_variables(expr: &str) -> String {
    expr.replace("$node", NODE)
        .replace("$namespace", NAMESPACE)
        .replace("$pod", LEAKING_POD)
        .replace("$__rate_interval", "5s")
}

#[test]
fn every_dashboard_query_returns_data_from_a_fleet_scrape() {
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/tracer.json")).expect("JSON");
    let mut cgroups = Cgroups::new();
    let kubelet = Kubelet::new();
    let mut args: Vec<String> = FAST_LEAKS.iter().map(|s| s.to_string()).collect();
    args.extend(kubelet.flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&args);
    let addr = daemon.json(&["status"])["metrics_addr"].as_str().expect("metrics").to_owned();
    // The discovery labels Kubernetes gives tracer's own pod; the relabelings keep them.
    let job = format!(
        "        labels:\n          __meta_kubernetes_pod_node_name: {NODE}\n          \
         __meta_kubernetes_namespace: tracer\n          __meta_kubernetes_pod_name: tracer-x7k2p\n{}",
        chart_relabelings()
    );
    let prometheus = Prometheus::start_jobs(&[("tracer", &addr, &job)]);

    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 echo");
    let leaker = Workload::spawn();
    into_pod(&mut cgroups, &kubelet, 1, LEAKING_POD, "api", leaker.pid);
    let healthy = Workload::spawn();
    into_pod(&mut cgroups, &kubelet, 2, HEALTHY_POD, "postgres", healthy.pid);
    let (mut leaker, mut healthy) = (leaker, healthy);
    leaker.cmd(&format!("trickle-bg 127.0.0.1:{port} 150"));
    healthy.cmd(&format!("oscillate-bg 127.0.0.1:{port} 2 6 50"));

    // The leak is alerted and scraped with the workload's labels beside tracer's own.
    daemon.eventually("Prometheus sees the leaking pod's alert", |_| {
        let alert = format!(
            "tcp_tracer_leak_suspected{{node=\"{NODE}\", pod=\"tracer-x7k2p\", namespace=\"tracer\", \
             k8s_namespace=\"{NAMESPACE}\", k8s_pod=\"{LEAKING_POD}\", rule=\"growth\"}}"
        );
        match prometheus.query(&alert) {
            Some(1.0) => Ok(()),
            other => Err(format!("{alert}: {other:?}")),
        }
    });
    // Both pods closed or opened connections for a few scrapes: rates have samples.
    std::thread::sleep(std::time::Duration::from_secs(6));

    for variable in dashboard["templating"]["list"].as_array().expect("variables") {
        let Some(query) = variable["query"]["query"].as_str() else { continue };
        let (name, want) = match variable["name"].as_str() {
            Some("node") => ("node", NODE),
            Some("namespace") => ("namespace", NAMESPACE),
            Some("pod") => ("pod", LEAKING_POD),
            other => panic!("a variable the test does not know: {other:?}"),
        };
        let inner =
            query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect(query);
        let (selector, label) = inner.rsplit_once(", ").expect(query);
        let values = prometheus
            .api(&format!("label/{label}/values"), &[("match[]", &with_variables(selector))]);
        let offered: Vec<&str> =
            values["data"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert!(
            offered.contains(&want),
            "variable {name} ({query}) offers {offered:?}, not {want}"
        );
    }

    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = with_variables(target["expr"].as_str().expect("expr"));
            let results = prometheus.results(&expr);
            let finite = results.iter().any(|r| {
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            assert!(
                finite,
                "panel {:?}: {expr} returned no finite value: {results:?}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} queries");
    // The healthy pod is in the data, and is no leak.
    let healthy_alerts =
        prometheus.results(&format!("tcp_tracer_leak_suspected{{k8s_pod=\"{HEALTHY_POD}\"}}"));
    assert!(healthy_alerts.is_empty(), "the healthy pool is alerted: {healthy_alerts:?}");
    assert!(
        !prometheus
            .results(&format!("tcp_tracer_open_connections{{k8s_pod=\"{HEALTHY_POD}\"}}"))
            .is_empty(),
        "the healthy pod is not scraped"
    );
}
