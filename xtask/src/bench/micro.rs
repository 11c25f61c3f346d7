//! Runs the criterion micro-benchmarks (tracer/benches/pipeline.rs) and reads their results back
//! from criterion's JSON files.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// Benchmarks reported, as criterion names their result directories.
const BENCHES: [&str; 5] = [
    "decode/records",
    "table_apply/empty",
    "table_apply/100k_sockets",
    "decode_and_apply/empty",
    "decode_and_apply/100k_sockets",
];

#[derive(Clone, Debug)]
pub struct MicroResult {
    pub name: String,
    /// Median events per second.
    pub events_per_second: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Micro {
    pub results: Vec<MicroResult>,
    /// The benchmark's own line about the table's heap bytes per socket.
    pub memory_line: Option<String>,
}

pub fn run(root: &Path, smoke: bool) -> Result<Micro> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(["bench", "--package", "tracer", "--bench", "pipeline", "--"]);
    if smoke {
        cmd.args(["--warm-up-time", "0.2", "--measurement-time", "0.5"]);
    }
    let out = cmd.output().context("running cargo bench -p tracer")?;
    if !out.status.success() {
        bail!("cargo bench -p tracer failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let memory_line =
        stdout.lines().find_map(|l| l.strip_prefix("table memory: ")).map(str::to_owned);
    let mut results = Vec::new();
    for name in BENCHES {
        let dir = root.join("target/criterion").join(name).join("new");
        let read = |file: &str| -> Result<serde_json::Value> {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        };
        let elements = read("benchmark.json")?["throughput"]["Elements"]
            .as_f64()
            .context("no Elements throughput")?;
        let ns = read("estimates.json")?["median"]["point_estimate"]
            .as_f64()
            .context("no median estimate")?;
        results
            .push(MicroResult { name: name.to_owned(), events_per_second: elements / (ns * 1e-9) });
    }
    Ok(Micro { results, memory_line })
}
