//! `cargo xtask image`: tracer's container image, built offline with podman from
//! deploy/image/Containerfile: the static musl binary (no libc to match on the node) on an
//! empty base, with `/etc/passwd` and `/etc/group` naming root and nobody, and OCI labels. No
//! base image is pulled (`FROM scratch`, `--pull=never`). Saved as an OCI archive in
//! target/image/, ready for `podman load` or `skopeo copy` to a registry.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::setup;

pub const NAME: &str = "tracer";

/// What `build` made.
pub struct Image {
    /// `tracer:VERSION`.
    pub reference: String,
    /// The OCI archive.
    pub archive: PathBuf,
}

pub fn build() -> Result<Image> {
    let root = crate::workspace_root();
    let version = setup::tracer_version()?;
    let binary =
        setup::build_release("tracer", setup::Artifact::Bin("tracer"), Some(setup::MUSL_TARGET))?;
    let target = setup::target_dir(&root);
    let context = target.join("image/context");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc"))?;
    std::fs::create_dir_all(rootfs.join("usr/bin"))?;
    for (file, to) in [
        ("Containerfile", context.join("Containerfile")),
        ("passwd", rootfs.join("etc/passwd")),
        ("group", rootfs.join("etc/group")),
    ] {
        std::fs::copy(root.join("deploy/image").join(file), to)
            .with_context(|| format!("copying deploy/image/{file}"))?;
    }
    std::fs::copy(&binary, rootfs.join("usr/bin/tracer"))
        .with_context(|| format!("copying {}", binary.display()))?;
    let reference = format!("{NAME}:{version}");
    let revision =
        setup::capture(Command::new("git").current_dir(&root).args(["rev-parse", "HEAD"]))
            .map(|r| r.trim().to_owned())
            .unwrap_or_default();
    let created = setup::capture(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let labels = [
        ("org.opencontainers.image.title", "tracer".to_owned()),
        (
            "org.opencontainers.image.description",
            "System-wide TCP connection lifecycle tracer and leak detector (eBPF)".to_owned(),
        ),
        ("org.opencontainers.image.version", version.clone()),
        ("org.opencontainers.image.revision", revision),
        ("org.opencontainers.image.created", created.trim().to_owned()),
        ("org.opencontainers.image.licenses", "MIT OR Apache-2.0".to_owned()),
        // Where the source is: this clone's origin, when it has one.
        ("org.opencontainers.image.source", origin(&root)),
    ];
    let mut build = Command::new("podman");
    build.args(["build", "--pull=never", "--format", "oci", "--tag", &reference]);
    for (key, value) in &labels {
        if !value.is_empty() {
            build.arg("--label").arg(format!("{key}={value}"));
        }
    }
    build.arg("--file").arg(context.join("Containerfile")).arg(&context);
    setup::capture(&mut build).context("podman build (Debian's package podman)")?;
    let archive = target.join(format!("image/{NAME}-{version}.oci.tar"));
    let _ = std::fs::remove_file(&archive);
    setup::capture(
        Command::new("podman")
            .args(["save", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&reference),
    )?;
    eprintln!("image: {reference}, saved as {}", archive.display());
    Ok(Image { reference, archive })
}

fn origin(root: &std::path::Path) -> String {
    setup::capture(Command::new("git").current_dir(root).args(["remote", "get-url", "origin"]))
        .map(|u| u.trim().to_owned())
        .unwrap_or_default()
}

/// Starts the image and scrapes its `/metrics`, as a DaemonSet pod would run it (host PID and
/// network namespaces, /sys). With podman where a container can run; where podman cannot (no
/// working OCI runtime, as on hosts with hybrid cgroups or without CAP_SYS_RESOURCE), from the
/// same kernel parts a runtime would use: a private mount namespace with the image's files as
/// root (chroot), a fresh /proc, /sys and /dev bound in, tmpfs on /run and /tmp. The reason
/// podman could not is printed.
pub fn run_check(built: &Image) -> Result<()> {
    let root = crate::workspace_root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let name = "tracer-deploy-check";
    let _ = Command::new("podman").args(["rm", "--force", name]).output();
    let podman = Command::new("podman")
        .args(["run", "--detach", "--rm", "--name", name, "--pull=never"])
        .args(["--network=host", "--pid=host", "--privileged"])
        .args(["--volume", "/sys/kernel/btf:/sys/kernel/btf:ro", &built.reference])
        .args(["run", "--metrics-addr", &addr])
        .output()
        .context("running podman")?;
    if podman.status.success() {
        let scraped = scrape(&addr);
        let _ = Command::new("podman").args(["stop", "--time", "10", name]).output();
        let body = scraped?;
        eprintln!(
            "deploy-check: the image runs under podman and serves /metrics ({} bytes)",
            body.len()
        );
        return Ok(());
    }
    let why = String::from_utf8_lossy(&podman.stderr);
    let why = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no reason given").trim();
    eprintln!(
        "deploy-check: podman cannot run a container on this machine ({why}); the image's files \
         run from kernel parts instead"
    );
    let files = setup::target_dir(&root).join("deploy-check/image/layer");
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(files.join(dir))?;
    }
    let script = format!(
        "set -e; cd {files}; mount -t proc proc proc; mount --rbind /sys sys; mount --rbind /dev dev; \
         mount -t tmpfs tmpfs run; mount -t tmpfs tmpfs tmp; \
         exec chroot . /usr/bin/tracer run --metrics-addr {addr}",
        files = files.display()
    );
    let log = files.with_file_name("daemon.log");
    let mut daemon = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("unshare (util-linux)")?;
    let scraped = scrape(&addr);
    // SIGTERM, as a runtime stops a container: the daemon detaches its probes and exits.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait()?;
    let body = scraped.with_context(|| {
        format!(
            "the image's daemon (log: {}): {}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    anyhow::ensure!(
        status.success(),
        "the image's daemon ended with {status} on SIGTERM (log: {})",
        log.display()
    );
    eprintln!(
        "deploy-check: the image's files started, served /metrics ({} bytes) and stopped cleanly",
        body.len()
    );
    Ok(())
}

/// `/metrics` at `addr` once it carries tracer's build info, within 60 s.
fn scrape(addr: &str) -> Result<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let body = setup::capture(
            Command::new("curl")
                .args(["--silent", "--fail", "--max-time", "5"])
                .arg(format!("http://{addr}/metrics")),
        )
        .unwrap_or_default();
        if body.contains("tcp_tracer_build_info{") {
            return Ok(body);
        }
        if std::time::Instant::now() > until {
            anyhow::bail!("no tracer metrics at http://{addr}/metrics within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
