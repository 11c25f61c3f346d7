//! `cargo xtask deploy-check` (part of `cargo xtask test`): the deployment files checked with
//! the tools their users run.
//! - The systemd unit: `systemd-analyze verify` inside a Debian root where the package is
//!   installed, and `systemd-analyze security --offline=yes` at most [`MAX_EXPOSURE`].
//! - The Debian package: its files, then installed, upgraded and purged with dpkg in a fresh
//!   Debian root (rootfs.rs). The purge must leave the root as it was before the install, but
//!   for dpkg's own records. Then booted with systemd as PID 1 under qemu (service_vm.rs).
//! - The Helm chart: `helm lint --strict` and `helm template` of each value set in its `ci/`
//!   for the oldest and newest Kubernetes release supported, each rendering validated strictly
//!   (kubernetes-validate, unknown fields refused) for that release and its monitoring objects
//!   with the prometheus-operator models; the plain manifests equal to the default rendering.
//! - The Grafana dashboard: checked against `@grafana/schema`'s types (tools.rs), at that
//!   schema's version, every query on the `datasource` variable (no datasource UID baked in).
//!   That its queries return data is tracer/tests/dashboard.rs's job.
//! - The container image: built offline, then read from its OCI archive: one layer holding the
//!   static binary and the two account files, nothing else (no shell), and its labels. Where
//!   a container can run here it is started (image.rs's `run_check`); otherwise the check says
//!   why not.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::{deb, image, rootfs, service_vm, tools};
use crate::setup;

/// The highest exposure `systemd-analyze security` may give the unit (docs/deploy.md lists the
/// settings that would lower it and the functions each would break).
pub const MAX_EXPOSURE: f64 = 3.3;

const UNIT: &str = "deploy/systemd/tracer.service";

/// The parts of the check, in the order they run; `--only` picks some.
pub const PARTS: &[&str] = &["chart", "dashboard", "image", "unit", "deb", "service-vm"];

#[derive(clap::Args)]
pub struct Args {
    /// Only these parts (comma-separated): chart, dashboard, image, unit, deb (its files, and
    /// install, upgrade and purge in a Debian root), service-vm (the package booted under
    /// systemd in qemu).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(PARTS))]
    only: Vec<String>,
}

impl Args {
    /// Every part: what `cargo xtask test` runs.
    pub fn all() -> Self {
        Self { only: Vec::new() }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

pub fn run(args: &Args) -> Result<()> {
    let root = crate::workspace_root();
    if args.runs("chart") {
        chart(&root)?;
    }
    if args.runs("dashboard") {
        dashboard(&root)?;
    }
    if args.runs("image") {
        image_contents(&image::build()?)?;
    }
    if args.runs("unit") {
        let exposure = unit_exposure(&root.join(UNIT))?;
        eprintln!("deploy-check: {UNIT}: exposure {exposure:.1} (at most {MAX_EXPOSURE:.1})");
    }
    if !(args.runs("deb") || args.runs("service-vm")) {
        return Ok(());
    }
    let first = deb::build("1")?;
    if args.runs("deb") {
        let second = deb::build("2")?;
        package_files(&root, &first)?;
        lifecycle(&root, &first, &second)?;
        eprintln!("deploy-check: the package installs, upgrades and purges cleanly");
    }
    if args.runs("service-vm") {
        service_vm::run(&first)?;
        eprintln!("deploy-check: the package's service runs under systemd in a booted Debian");
    }
    Ok(())
}

/// `systemd-analyze security --offline=yes`'s overall exposure of `unit`, refused above
/// [`MAX_EXPOSURE`].
fn unit_exposure(unit: &Path) -> Result<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .context("running systemd-analyze (Debian's package systemd)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for tracer.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| {
            format!("no overall exposure in systemd-analyze security's output:\n{text}")
        })?;
    if exposure > MAX_EXPOSURE {
        let findings: String =
            text.lines().filter(|l| l.contains('✗')).map(|l| format!("{l}\n")).collect();
        bail!("{}: exposure {exposure:.1} is above {MAX_EXPOSURE:.1}:\n{findings}", unit.display());
    }
    Ok(exposure)
}

/// What the package must hold: the binary, the unit, the conffile equal to deploy/tracer.toml,
/// a man page per command the binary has, the three completion scripts, the alert rules.
fn package_files(root: &Path, deb: &Path) -> Result<()> {
    let listing = setup::capture(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let files: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    let binary = setup::target_dir(root).join(setup::MUSL_TARGET).join("release/tracer");
    let help = setup::capture(Command::new(&binary).arg("--help"))?;
    let mut wanted: Vec<String> = [
        "/usr/bin/tracer",
        "/usr/lib/systemd/system/tracer.service",
        "/etc/tracer/tracer.toml",
        "/usr/share/man/man1/tracer.1.gz",
        "/usr/share/bash-completion/completions/tracer",
        "/usr/share/zsh/vendor-completions/_tracer",
        "/usr/share/fish/vendor_completions.d/tracer.fish",
        "/usr/share/tracer/prometheus/alerts.yml",
        "/usr/share/doc/tracer/copyright",
    ]
    .map(str::to_owned)
    .to_vec();
    // `Commands:` of --help: one page each (help is clap's own).
    let commands = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help");
    wanted.extend(commands.map(|c| format!("/usr/share/man/man1/tracer-{c}.1.gz")));
    let missing: Vec<&String> = wanted.iter().filter(|w| !files.contains(*w)).collect();
    ensure!(missing.is_empty(), "{} lacks {missing:?}; it holds:\n{listing}", deb.display());
    let conffiles = dpkg_control_file(deb, "conffiles")?;
    ensure!(
        conffiles.trim() == "/etc/tracer/tracer.toml",
        "conffiles should be /etc/tracer/tracer.toml alone, not {conffiles:?}"
    );
    Ok(())
}

fn dpkg_control_file(deb: &Path, name: &str) -> Result<String> {
    setup::capture(Command::new("dpkg-deb").arg("--info").arg(deb).arg(name))
}

/// Install, a change to the conffile, upgrade (the change kept), purge (nothing left) in a
/// fresh Debian root. dpkg runs the maintainer scripts in it (chroot), so systemd's helpers
/// enable the unit as they would on a host.
fn lifecycle(root: &Path, first: &Path, second: &Path) -> Result<()> {
    let dir = setup::target_dir(root).join("deploy-check/rootfs");
    rootfs::unpack(&dir)?;
    for deb in [first, second] {
        std::fs::copy(deb, dir.join("tmp").join(file_name(deb)))?;
    }
    let before = tree(&dir)?;
    let dpkg = |args: &[&str]| -> Result<String> {
        setup::capture(Command::new("dpkg").arg(format!("--root={}", dir.display())).args(args))
    };
    let chroot = |args: &[&str]| -> Result<String> {
        setup::capture(Command::new("chroot").arg(&dir).args(args))
    };
    let in_root = |deb: &Path| format!("{}/tmp/{}", dir.display(), file_name(deb));

    dpkg(&["--install", &in_root(first)])?;
    let version = chroot(&["/usr/bin/tracer", "--version"])?;
    ensure!(version.starts_with("tracer "), "tracer --version in the root: {version}");
    let conf = std::fs::read_to_string(dir.join("etc/tracer/tracer.toml"))?;
    ensure!(
        conf == std::fs::read_to_string(root.join("deploy/tracer.toml"))?,
        "/etc/tracer/tracer.toml is not deploy/tracer.toml"
    );
    let enabled = dir.join("etc/systemd/system/multi-user.target.wants/tracer.service");
    ensure!(enabled.is_symlink(), "the package did not enable tracer.service");
    // verify resolves ExecStart= and the man pages in Documentation= in the root.
    chroot(&["systemd-analyze", "verify", "--man=no", "tracer.service"])
        .context("systemd-analyze verify of the installed unit")?;

    let mut changed = conf.clone();
    changed.push_str("probe = \"tracepoint\"\n");
    std::fs::write(dir.join("etc/tracer/tracer.toml"), &changed)?;
    dpkg(&["--install", &in_root(second)])?;
    let status = chroot(&["dpkg-query", "-W", "-f=${Version} ${Status}", "tracer"])?;
    ensure!(status.starts_with("0.1.0-2 install ok installed"), "after the upgrade: {status}");
    ensure!(
        std::fs::read_to_string(dir.join("etc/tracer/tracer.toml"))? == changed,
        "the upgrade did not keep the changed /etc/tracer/tracer.toml"
    );

    dpkg(&["--purge", "tracer"])?;
    let after = tree(&dir)?;
    // dpkg's own database and log record the package's history: policy keeps them. /run is a
    // tmpfs on a running system (systemd-analyze verify left its marker there).
    let left: Vec<&String> = after
        .symmetric_difference(&before)
        .filter(|p| !["/var/lib/dpkg/", "/var/log/", "/run/"].iter().any(|d| p.starts_with(d)))
        .collect();
    ensure!(left.is_empty(), "the purge left the root changed: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Every path under `dir` (as seen inside it), with its kind and mode, for before/after.
fn tree(dir: &Path) -> Result<BTreeSet<String>> {
    fn walk(base: &Path, at: &PathBuf, out: &mut BTreeSet<String>) -> Result<()> {
        for entry in std::fs::read_dir(at).with_context(|| format!("reading {}", at.display()))? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let inside = format!("/{}", path.strip_prefix(base).unwrap_or(&path).display());
            use std::os::unix::fs::PermissionsExt;
            out.insert(format!("{inside} {:o}", meta.permissions().mode()));
            if meta.is_dir() {
                walk(base, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(dir, &dir.to_path_buf(), &mut out)?;
    Ok(out)
}

const CHART: &str = "deploy/helm/tracer";
/// `helm template` of the chart's defaults, for `kubectl apply` without helm.
const MANIFESTS: &str = "deploy/kubernetes/tracer.yaml";
/// The oldest and newest Kubernetes releases the chart supports (Chart.yaml's kubeVersion; the
/// newest kubernetes-validate knows).
const KUBE_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];
/// The plain manifests are rendered for the oldest release, so that they apply to every one
/// (AppArmor by annotation: the field came in 1.30).
const MANIFESTS_KUBE_VERSION: &str = KUBE_VERSIONS[0];
const NAMESPACE: &str = "tracer";
/// Each value set of the chart's `ci/` and the kinds its rendering must hold, no more.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("default-values.yaml", &["ConfigMap", "DaemonSet", "Service", "ServiceAccount"]),
    (
        "service-monitor-values.yaml",
        &[
            "ConfigMap",
            "DaemonSet",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ],
    ),
    (
        "pod-monitor-tolerations-values.yaml",
        &["ConfigMap", "DaemonSet", "PodMonitor", "ServiceAccount"],
    ),
    // hostOnly: no Service and no monitor, though the values ask for a ServiceMonitor.
    ("host-only-values.yaml", &["ConfigMap", "DaemonSet", "ServiceAccount"]),
];

fn chart(root: &Path) -> Result<()> {
    let chart = root.join(CHART);
    let alerts = root.join("deploy/prometheus/alerts.yml");
    ensure!(
        std::fs::read(chart.join("files/alerts.yml"))? == std::fs::read(&alerts)?,
        "{CHART}/files/alerts.yml differs from deploy/prometheus/alerts.yml: copy it over"
    );
    let sets: BTreeSet<String> = std::fs::read_dir(chart.join("ci"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let checked: BTreeSet<String> = VALUE_SETS.iter().map(|(f, _)| f.to_string()).collect();
    ensure!(sets == checked, "{CHART}/ci holds {sets:?}; the check knows {checked:?}");
    let helm = tools::helm()?;
    let out = setup::target_dir(root).join("deploy-check/helm");
    std::fs::create_dir_all(&out)?;
    for (values, kinds) in VALUE_SETS {
        let values_path = chart.join("ci").join(values);
        for kube in KUBE_VERSIONS {
            setup::capture(
                Command::new(&helm)
                    .args(["lint", "--strict", "--quiet", "--kube-version", kube, "--values"])
                    .arg(&values_path)
                    .arg(&chart),
            )
            .with_context(|| format!("helm lint with {values} for Kubernetes {kube}"))?;
            let rendered = render(&helm, &chart, &values_path, kube)?;
            let file = out.join(format!("{}-{kube}.yaml", values.trim_end_matches(".yaml")));
            std::fs::write(&file, &rendered)?;
            let found: BTreeSet<&str> =
                rendered.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
            let wanted: BTreeSet<&str> = kinds.iter().copied().collect();
            ensure!(
                found == wanted,
                "{values}, Kubernetes {kube}: kinds {found:?}, not {wanted:?}"
            );
            let minor = kube.rsplit_once('.').map_or(kube, |(m, _)| m);
            setup::capture(
                tools::kubernetes_validate()?
                    .args(["--strict", "--quiet", "--kubernetes-version", minor])
                    .arg(&file),
            )
            .with_context(|| format!("kubernetes-validate --strict of {}", file.display()))?;
            setup::capture(tools::validate_monitoring()?.arg(&file).arg(&alerts))
                .with_context(|| format!("the monitoring objects of {}", file.display()))?;
        }
        eprintln!(
            "deploy-check: {CHART} with ci/{values}: lint, template and schemas of Kubernetes {}",
            KUBE_VERSIONS.join(" and ")
        );
    }
    let manifests =
        render(&helm, &chart, &chart.join("ci/default-values.yaml"), MANIFESTS_KUBE_VERSION)?;
    let header = format!(
        "# tracer for `kubectl apply -f` (namespace {NAMESPACE}: `kubectl create namespace {NAMESPACE}` \
         first).\n# Generated: `helm template tracer {CHART} --namespace {NAMESPACE} --kube-version \
         {MANIFESTS_KUBE_VERSION}`;\n# cargo xtask deploy-check compares it (TRACER_BLESS=1 rewrites it).\n"
    );
    let manifests = header + &manifests;
    let path = root.join(MANIFESTS);
    if std::env::var_os("TRACER_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap_or(root))?;
        std::fs::write(&path, &manifests)?;
    }
    ensure!(
        std::fs::read_to_string(&path).unwrap_or_default() == manifests,
        "{MANIFESTS} is not the chart's default rendering: after an intended change to the chart, \
         TRACER_BLESS=1 cargo xtask deploy-check, and review the diff"
    );
    Ok(())
}

fn render(helm: &Path, chart: &Path, values: &Path, kube: &str) -> Result<String> {
    setup::capture(
        Command::new(helm)
            .args(["template", "tracer", "--namespace", NAMESPACE, "--kube-version", kube])
            .arg("--values")
            .arg(values)
            .arg(chart),
    )
    .with_context(|| format!("helm template with {} for Kubernetes {kube}", values.display()))
}

/// The image's one layer and its config, read from the OCI archive: exactly the binary
/// (static: no program interpreter) and the account files, the entrypoint, the labels.
fn image_contents(built: &image::Image) -> Result<()> {
    let root = crate::workspace_root();
    let dir = setup::target_dir(&root).join("deploy-check/image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    setup::run_cmd(Command::new("tar").arg("-C").arg(&dir).arg("-xf").arg(&built.archive))?;
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
        Ok(dir.join("blobs/sha256").join(hex))
    };
    let json = |path: &Path| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let index = json(&dir.join("index.json"))?;
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().context("a manifest")?)?)?;
    let config = json(&blob(manifest["config"]["digest"].as_str().context("a config")?)?)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    ensure!(layers.len() == 1, "the image should have one layer, not {}", layers.len());
    let layer = blob(layers[0]["digest"].as_str().context("a layer digest")?)?;
    let listing = setup::capture(Command::new("tar").arg("-tvf").arg(&layer))?;
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_owned())
        .collect();
    let wanted: BTreeSet<String> =
        ["etc/group", "etc/passwd", "usr/bin/tracer"].map(str::to_owned).into();
    ensure!(files == wanted, "the image holds {files:?}, not {wanted:?} (no shell, nothing else)");
    let unpacked = dir.join("layer");
    std::fs::create_dir_all(&unpacked)?;
    setup::run_cmd(Command::new("tar").arg("-C").arg(&unpacked).arg("-xf").arg(&layer))?;
    let elf = std::fs::read(unpacked.join("usr/bin/tracer"))?;
    ensure!(is_static_elf(&elf), "usr/bin/tracer in the image is not a static executable");
    let version = setup::tracer_version()?;
    let labels = &config["config"]["Labels"];
    for (key, value) in [
        ("org.opencontainers.image.version", Some(version.as_str())),
        ("org.opencontainers.image.title", Some("tracer")),
        ("org.opencontainers.image.revision", None),
        ("org.opencontainers.image.created", None),
    ] {
        let found = labels[key].as_str().unwrap_or_default();
        ensure!(!found.is_empty(), "the image has no label {key}: {labels}");
        if let Some(value) = value {
            ensure!(found == value, "label {key} is {found:?}, not {value:?}");
        }
    }
    let entrypoint = &config["config"]["Entrypoint"];
    ensure!(entrypoint == &serde_json::json!(["/usr/bin/tracer"]), "entrypoint {entrypoint}");
    eprintln!(
        "deploy-check: image {}: one layer, the static binary and the account files, labels set",
        built.reference
    );
    image::run_check(built)
}

/// An ELF executable without a PT_INTERP program header (no dynamic loader, no libc to load).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at =
        |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at =
        |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    const PT_INTERP: u32 = 3;
    // 64-bit little-endian only (the image is x86_64).
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(count))
        .all(|i| u32_at(phoff as usize + i * usize::from(entsize)).is_some_and(|t| t != PT_INTERP))
}

const DASHBOARD: &str = "deploy/grafana/tracer.json";

fn dashboard(root: &Path) -> Result<()> {
    let text = std::fs::read_to_string(root.join(DASHBOARD))?;
    let json: serde_json::Value = serde_json::from_str(&text).context(DASHBOARD)?;
    let version = tools::lint_dashboard(&text)?;
    ensure!(
        json["schemaVersion"] == version,
        "{DASHBOARD} has schemaVersion {}, the schema's is {version}",
        json["schemaVersion"]
    );
    // Every datasource reference is the variable, but Grafana's own (annotations).
    let mut refs = Vec::new();
    collect_datasources(&json, &mut refs);
    let baked: Vec<&String> =
        refs.iter().filter(|uid| *uid != "${datasource}" && *uid != "-- Grafana --").collect();
    ensure!(baked.is_empty(), "{DASHBOARD} names datasources by UID: {baked:?}");
    eprintln!(
        "deploy-check: {DASHBOARD}: fits @grafana/schema (schema version {version}), no datasource UID"
    );
    Ok(())
}

fn collect_datasources(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key == "datasource" {
                    out.push(v["uid"].as_str().unwrap_or("(none)").to_owned());
                }
                collect_datasources(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_datasources(v, out)),
        _ => {}
    }
}
