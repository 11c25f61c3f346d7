//! The Prometheus endpoint, scraped by a real Prometheus server (Debian's `prometheus`), the
//! shipped alerting rules checked by promtool, and the config file. Run as root.
mod common;

use std::process::{Command, Stdio};

use common::{
    Daemon, FAST_LEAKS, TempDir, Workload, expect_eq, num, prometheus::Prometheus, tracer_bin,
};

fn metrics_addr(daemon: &Daemon) -> String {
    daemon.json(&["status"])["metrics_addr"].as_str().expect("metrics served").to_owned()
}

fn http_get(url: &str) -> String {
    let out = Command::new("curl").args(["-sf", url]).output().expect("curl");
    assert!(out.status.success(), "GET {url} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_real_prometheus_scrapes_open_counts_and_leak_alerts() {
    let daemon = Daemon::start(FAST_LEAKS);
    let addr = metrics_addr(&daemon);
    let prometheus = Prometheus::start(&addr);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 echo");
    let mut steady = Workload::spawn();
    steady.connect(&format!("127.0.0.1:{port}"), 7);
    let mut leaker = Workload::spawn();
    leaker.cmd(&format!("trickle-bg 127.0.0.1:{port} 200"));

    daemon.eventually("Prometheus sees the steady process's 7 connections", |_| {
        match prometheus.query(&format!("tcp_tracer_open_connections{{pid=\"{}\"}}", steady.pid)) {
            Some(7.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(num(&daemon.process(steady.pid), "open"), 7);
    daemon.eventually("Prometheus sees the leak alert", |_| {
        match prometheus
            .query(&format!("tcp_tracer_leak_suspected{{pid=\"{}\",rule=\"growth\"}}", leaker.pid))
        {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        prometheus.query(&format!("tcp_tracer_leak_suspected{{pid=\"{}\"}}", steady.pid)),
        None,
        "no alert for the steady process"
    );
    let opened = prometheus
        .query(&format!(
            "tcp_tracer_connections_opened_total{{pid=\"{}\",direction=\"outbound\"}}",
            steady.pid
        ))
        .expect("opened counter");
    assert_eq!(opened, 7.0);
    assert_eq!(
        prometheus.query("tcp_tracer_events_lost_total{reason=\"ringbuf_full\"}"),
        Some(0.0)
    );
    assert!(prometheus.query("tcp_tracer_build_info").is_some());

    // promtool accepts the live exposition.
    let scrape = http_get(&format!("http://{addr}/metrics"));
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    check.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write");
    let out = check.wait_with_output().expect("promtool");
    let complaints =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
}

#[test]
fn shipped_alerting_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    // Every alert (also the chart's PrometheusRule, which deploy-check keeps equal to this
    // file) has unit tests: promtool passes a rule no test names.
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("rules");
    let (rules, tests) = (read("alerts.yml"), read("alerts_test.yml"));
    let alerts: Vec<&str> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alerts_test.yml has no case for {alert}"
        );
    }
    for args in [vec!["check", "rules", "alerts.yml"], vec!["test", "rules", "alerts_test.yml"]] {
        let out =
            Command::new("promtool").args(&args).current_dir(&dir).output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_bad_config_file_names_the_key_and_line_and_nothing_starts() {
    let dir = TempDir::new("config");
    let config = dir.0.join("tracer.toml");
    let socket = dir.0.join("t.sock");
    std::fs::write(
        &config,
        "probe = \"tracepoint\"\nleak-interval = 5\nmetrics-adr = \"0.0.0.0:9855\"\n",
    )
    .expect("write");
    let out = Command::new(tracer_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("tracer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("line 3") && stderr.contains("metrics-adr"), "{stderr}");
    assert!(!socket.exists(), "nothing started");
    std::fs::write(&config, "ring-bytes = 12345\n").expect("write");
    let out = Command::new(tracer_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("tracer");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("power of two"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_overrides_them() {
    let dir = TempDir::new("config-ok");
    let config = dir.0.join("tracer.toml");
    // Two overrides: one by container (nothing here runs in one), one by command name.
    std::fs::write(
        &config,
        "leak-interval = 0.5\nmetrics-top = 5\nmetrics-addr = \"off\"\n\
         [workload.\"namespace=shop,container=api\"]\nidle = \"off\"\n\
         [workload.workload]\nage-threshold = 3600\n",
    )
    .expect("write");
    let config_arg = config.to_str().expect("utf-8").to_owned();
    // The common daemon passes --metrics-addr 127.0.0.1:0 after the file: it must win.
    let daemon = Daemon::start(&["--config", &config_arg]);
    assert!(
        daemon.json(&["status"])["metrics_addr"].is_string(),
        "the flag overrides the file's `off`"
    );
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 3);
    server.cmd("accept 0 3");
    daemon.eventually("the client's 3 connections open", |d| {
        expect_eq("open", num(&d.json(&["top", "--ages", &client.pid.to_string()]), "open"), 3)
    });
    let ages = daemon.json(&["top", "--ages", &client.pid.to_string()]);
    assert_eq!(ages["buckets"][0][1], 3, "all three are younger than 10 s: {ages}");
    let text = daemon.try_cli(&["top", "--ages", &client.pid.to_string()]).expect("ages");
    assert!(text.contains("3 open connections by age"), "{text}");

    // status shows what each override applies to: the container one nothing, the command
    // name one both workload processes (first match wins).
    let status = daemon.json(&["status"]);
    let matches = status["workload_override_matches"].as_array().expect("matches");
    assert_eq!(matches.len(), 2, "{status}");
    assert_eq!(matches[0]["selector"], "namespace=shop,container=api");
    assert_eq!(matches[0]["processes"], 0, "{status}");
    assert!(matches[1]["processes"].as_u64().is_some_and(|n| n >= 2), "{status}");
    let examples = matches[1]["examples"].as_array().expect("examples");
    let client_pid = client.pid.to_string();
    assert!(
        examples.iter().any(|e| e.as_str().is_some_and(|e| e.starts_with(&client_pid))),
        "{status}"
    );
    let text = daemon.try_cli(&["status"]).expect("status");
    assert!(text.contains("applies to 0 process(es)"), "{text}");
}

/// A self-signed certificate for 127.0.0.1, and its key, made by openssl in `dir`.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "1", "-subj", "/CN=tracer-test", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (cargo xtask setup installs it)");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

#[test]
fn a_real_prometheus_scrapes_over_tls_with_basic_auth_and_wrong_credentials_get_401() {
    let dir = TempDir::new("web-config");
    let (cert, _) = self_signed(&dir.0);
    let hash = bcrypt::hash("scrape-secret", 6).expect("bcrypt");
    let web = dir.0.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .expect("web config");
    let daemon = Daemon::start(&["--web-config", web.to_str().expect("utf-8 path")]);
    let status = daemon.json(&["status"]);
    assert_eq!(
        (status["metrics_tls"].as_bool(), status["metrics_basic_auth"].as_bool()),
        (Some(true), Some(true))
    );
    let addr = metrics_addr(&daemon);
    let text = daemon.try_cli(&["status"]).expect("status");
    assert!(text.contains(&format!("https://{addr}/metrics (basic auth)")), "{text}");

    let tls = format!("    scheme: https\n    tls_config:\n      ca_file: {}\n", cert.display());
    let right = format!(
        "{tls}    basic_auth:\n      username: prometheus\n      password: scrape-secret\n"
    );
    let wrong =
        format!("{tls}    basic_auth:\n      username: prometheus\n      password: guess\n");
    let plain = "    scheme: http\n    basic_auth:\n      username: prometheus\n      password: scrape-secret\n";
    let prometheus = Prometheus::start_jobs(&[
        ("tls", &addr, &right),
        ("wrong", &addr, &wrong),
        ("plain", &addr, plain),
    ]);
    let mut steady = Workload::spawn();
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 echo");
    steady.connect(&format!("127.0.0.1:{port}"), 3);
    daemon.eventually("Prometheus scrapes over TLS with the right password", |_| match prometheus
        .query(&format!("tcp_tracer_open_connections{{job=\"tls\",pid=\"{}\"}}", steady.pid))
    {
        Some(3.0) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    daemon.eventually("the wrong password and plain HTTP scrape nothing", |_| {
        match (prometheus.query("up{job=\"wrong\"}"), prometheus.query("up{job=\"plain\"}")) {
            (Some(0.0), Some(0.0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(prometheus.query("up{job=\"tls\"}"), Some(1.0));
    assert_eq!(prometheus.query("count(tcp_tracer_build_info{job=\"wrong\"})"), None);
    // What the wrong password got: 401, and a challenge for basic credentials.
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-u", "prometheus:guess", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{addr}/metrics"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("www-authenticate: basic"), "{head}");
    // The daemon kept counting through it all.
    assert_eq!(num(&daemon.process(steady.pid), "open"), 3);
}

#[test]
fn a_bad_web_config_is_refused_at_start_up_with_the_key_named() {
    let dir = TempDir::new("web-config-bad");
    let socket = dir.0.join("t.sock");
    let web = dir.0.join("web.yml");
    for (text, expected) in [
        (
            "basic_auth_users:\n  prometheus: hunter2\n",
            "basic_auth_users.prometheus: not a bcrypt hash",
        ),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cert_file"),
        ("tls_server_confg:\n  cert_file: a\n", "unknown field `tls_server_confg`"),
    ] {
        std::fs::write(&web, text).expect("write");
        let out = Command::new(tracer_bin())
            .args(["run", "--web-config"])
            .arg(&web)
            .arg("--socket")
            .arg(&socket)
            .output()
            .expect("tracer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(
            stderr.contains("--web-config") && stderr.contains(expected),
            "{text}\n=> {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!socket.exists(), "nothing started");
    }
}
