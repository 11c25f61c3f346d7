//! A real Prometheus server (Debian's `prometheus`) scraping the test daemons every second.
use std::process::{Child, Command, Stdio};

use super::TempDir;

pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(target: &str) -> Self {
        Self::start_jobs(&[("tracer", target, "")])
    }

    /// One scrape job per (name, target, extra YAML lines of the job, indented by 4).
    pub fn start_jobs(jobs: &[(&str, &str, &str)]) -> Self {
        let dir = TempDir::new("prometheus");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let config = dir.0.join("prometheus.yml");
        let mut text =
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                .to_owned();
        for (name, target, extra) in jobs {
            text += &format!(
                "  - job_name: {name}\n    static_configs:\n      - targets: [\"{target}\"]\n{extra}"
            );
        }
        std::fs::write(&config, text).expect("config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (cargo xtask setup installs it)");
        Self { child, port, _dir: dir }
    }

    /// Every result of an instant query (`data.result`), empty when it failed.
    pub fn results(&self, promql: &str) -> Vec<serde_json::Value> {
        self.api("query", &[("query", promql)])["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The answer of `GET /api/v1/<path>` with these form parameters (`Null` when it failed).
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let mut curl = Command::new("curl");
        curl.args(["-sf", "-G", &format!("http://127.0.0.1:{}/api/v1/{path}", self.port)]);
        for (key, value) in params {
            curl.arg("--data-urlencode").arg(format!("{key}={value}"));
        }
        curl.output()
            .ok()
            .and_then(|out| serde_json::from_slice(&out.stdout).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The value of an instant query's single result, if there is exactly one.
    pub fn query(&self, promql: &str) -> Option<f64> {
        match self.results(promql).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
