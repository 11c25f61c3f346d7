//! What the guests run: the `tracer` package's integration tests, its examples and the `tracer`
//! binary, built static for musl and staged as
//!
//! ```text
//! vmtest/deps/<test>       integration test executables
//! vmtest/examples/<name>   what tests/common::example_path() finds (<exe dir>/../examples)
//! vmtest/tracer            TRACER_BIN
//! vmtest/programs/<name>   Go test programs built on the host (TRACER_TEST_GO_PROGRAMS)
//! vmtest/run-tests.sh      runs every test in every mode, prints the markers guest.rs reads
//! vmtest/config.sh         this run's modes, filter and timeout
//! ```
//!
//! The same staged tree runs natively for the host row, and goes into the guests' initramfs
//! under `/vmtest` with busybox as the rest of the userland.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::cpio;
use crate::setup::{MUSL_TARGET, capture};

pub struct Payload {
    /// The staged `vmtest` directory.
    pub dir: PathBuf,
    /// Names of the integration test executables under `deps/`.
    pub tests: Vec<String>,
}

/// Settings of one run, written to `config.sh` for the script.
pub struct RunConfig<'a> {
    /// Integration test executables to run (all when empty), and to leave out.
    pub only: &'a [String],
    pub skip: &'a [String],
    pub modes: &'a [&'a str],
    pub filter: Option<&'a str>,
    pub test_timeout_secs: u64,
    /// Non-zero: the tests' daemons drop every Nth release in the kernel (a deliberately wrong
    /// probe, to show that the matrix catches it).
    pub fault_drop_every_nth_release: u32,
}

/// Builds the test executables for musl and stages them under `<cache>/payload/vmtest`.
pub fn build(root: &Path, cache: &Path, config: &RunConfig) -> Result<Payload> {
    eprintln!("vm-test: building the tracer tests for {MUSL_TARGET}");
    let output = Command::new("cargo")
        .args(["test", "--package", "tracer", "--features", "root-tests"])
        .args(["--target", MUSL_TARGET, "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the tracer tests for {MUSL_TARGET} failed ({})", output.status);
    }
    let mut artifacts = Artifacts::parse(&String::from_utf8_lossy(&output.stdout))?;
    artifacts.tests = select(artifacts.tests, config)?;

    let dir = cache.join("payload").join("vmtest");
    let _ = fs::remove_dir_all(&dir);
    for sub in ["deps", "examples"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    for (name, path) in &artifacts.tests {
        stage_binary(path, &dir.join("deps").join(name))?;
    }
    for (name, path) in &artifacts.examples {
        stage_binary(path, &dir.join("examples").join(name))?;
    }
    stage_binary(&artifacts.tracer, &dir.join("tracer"))?;
    let wanted: Vec<&GoProgram> = GO_PROGRAMS
        .iter()
        .filter(|p| artifacts.tests.iter().any(|(name, _)| name == p.test))
        .collect();
    if !wanted.is_empty() {
        build_go_programs(root, &dir.join("programs"), &wanted)?;
    }
    write_file(&dir.join("run-tests.sh"), RUN_TESTS, 0o755)?;

    let tests: Vec<String> = artifacts.tests.into_iter().map(|(name, _)| name).collect();
    write_file(&dir.join("config.sh"), &config_script(&tests, config), 0o644)?;
    Ok(Payload { dir, tests })
}

/// Applies --tests and --skip. A name in --tests that is not built is an error; one in --skip is
/// only noted (the default skip list may name tests that another branch lacks).
fn select(tests: Vec<(String, PathBuf)>, config: &RunConfig) -> Result<Vec<(String, PathBuf)>> {
    let known = |name: &String| tests.iter().any(|(t, _)| t == name);
    let names = || tests.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(unknown) = config.only.iter().find(|n| !known(n)) {
        bail!(
            "--tests {unknown}: no such integration test of the tracer package (there are: {})",
            names()
        );
    }
    for unknown in config.skip.iter().filter(|n| !known(n)) {
        eprintln!("vm-test: note: --skip {unknown}: no such integration test");
    }
    let chosen: Vec<_> = tests
        .into_iter()
        .filter(|(t, _)| {
            (config.only.is_empty() || config.only.contains(t)) && !config.skip.contains(t)
        })
        .collect();
    if chosen.is_empty() {
        bail!("--tests/--skip leave no test to run");
    }
    Ok(chosen)
}

struct Artifacts {
    tests: Vec<(String, PathBuf)>,
    examples: Vec<(String, PathBuf)>,
    tracer: PathBuf,
}

impl Artifacts {
    /// Reads cargo's `compiler-artifact` messages: integration tests are targets of kind `test`.
    fn parse(json_lines: &str) -> Result<Self> {
        let mut tests = Vec::new();
        let mut examples = Vec::new();
        let mut tracer = None;
        for line in json_lines.lines().filter(|l| l.starts_with('{')) {
            let msg: serde_json::Value =
                serde_json::from_str(line).context("parsing cargo's JSON output")?;
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = msg["executable"].as_str() else { continue };
            let name = msg["target"]["name"].as_str().unwrap_or_default().to_owned();
            let is_kind = |k: &str| {
                msg["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|x| x == k))
            };
            let is_test_build = msg["profile"]["test"].as_bool().unwrap_or(false);
            if is_kind("test") {
                tests.push((name, PathBuf::from(exe)));
            } else if is_kind("example") && !is_test_build {
                examples.push((name, PathBuf::from(exe)));
            } else if is_kind("bin") && name == "tracer" && !is_test_build {
                tracer = Some(PathBuf::from(exe));
            }
        }
        if tests.is_empty() {
            bail!("cargo built no integration test of the tracer package");
        }
        tests.sort();
        let tracer = tracer.context("cargo did not report the tracer binary")?;
        Ok(Self { tests, examples, tracer })
    }
}

/// A Go program of the tests, built on the host for the guests (they have no Go).
struct GoProgram {
    /// The test executable that runs it.
    test: &'static str,
    /// Its source, under tracer/tests/programs.
    source: &'static str,
    /// The name tests/common's `go_program` looks for.
    name: &'static str,
    stripped: bool,
}

/// Every Go program a guest test runs: the opener-stack leaker, plain and stripped, and the
/// pool-health HTTP server and clients.
const GO_PROGRAMS: [GoProgram; 5] = [
    GoProgram { test: "stacks", source: "leaker_go", name: "leaker", stripped: false },
    GoProgram { test: "stacks", source: "leaker_go", name: "leaker-stripped", stripped: true },
    GoProgram { test: "health", source: "pool_go", name: "pool", stripped: false },
    GoProgram { test: "go_requests", source: "go_requests", name: "go-requests", stripped: false },
    GoProgram {
        test: "go_requests",
        source: "go_requests",
        name: "go-requests-stripped",
        stripped: true,
    },
];

/// Builds `programs`, static (`CGO_ENABLED=0`), into `out` under the names the tests look for
/// (`TRACER_TEST_GO_PROGRAMS`). Not stripped of DWARF by `stage_binary`: the guest symbolizes
/// them.
fn build_go_programs(root: &Path, out: &Path, programs: &[&GoProgram]) -> Result<()> {
    let go = crate::setup::which("go").context(
        "the stacks and health tests need Go on the host to build their programs for the guests: run `cargo xtask setup` (golang-go), or --skip stacks,health",
    )?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cache = cache_of(root);
    for program in programs {
        let source = root.join("tracer/tests/programs").join(program.source);
        let mut cmd = Command::new(&go);
        cmd.arg("build").arg("-o").arg(out.join(program.name));
        if program.stripped {
            cmd.arg("-ldflags=-s -w");
        }
        cmd.arg("main.go")
            .current_dir(&source)
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache.join("cache"))
            .env("GOPATH", cache.join("path"));
        let status = cmd.status().context("running go build")?;
        if !status.success() {
            bail!("go build of {} failed ({status})", source.display());
        }
    }
    Ok(())
}

/// Go's build cache for the guests' programs, beside the VM cache.
fn cache_of(root: &Path) -> PathBuf {
    super::cache_dir(root).join("go")
}

/// Copies without debug info: it is most of each executable's size, and the initramfs is read
/// into guest memory whole. Falls back to a plain copy where `strip` is missing.
fn stage_binary(from: &Path, to: &Path) -> Result<()> {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn config_script(tests: &[String], config: &RunConfig) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    format!(
        "TESTS={}\nMODES={}\nFILTER={}\nTEST_TIMEOUT={}\nFAULT={}\n",
        quote(&tests.join(" ")),
        quote(&config.modes.join(" ")),
        quote(config.filter.unwrap_or_default()),
        config.test_timeout_secs,
        config.fault_drop_every_nth_release
    )
}

/// Runs each test executable once per mode. Each step is framed by marker lines
/// (`@@VMTEST ...`) that guest.rs parses from the serial console or the host pipe; `timeout`
/// keeps one hung test from costing the rest of the matrix. POSIX sh: busybox in the guest,
/// the system shell on the host.
const RUN_TESTS: &str = r#"#!/bin/sh
ROOT=${VMTEST_ROOT:-/vmtest}
. "$ROOT/config.sh"
# Emulated guests are slow: give the tests' waits more room than on real hardware.
export TRACER_BIN="$ROOT/tracer" RUST_BACKTRACE=1 TRACER_TEST_WAIT_SECS=120
[ -d "$ROOT/programs" ] && export TRACER_TEST_GO_PROGRAMS="$ROOT/programs"
[ "$FAULT" != 0 ] && export TRACER_TEST_FAULT_DROP_RELEASE="$FAULT"
set --
[ -n "$FILTER" ] && set -- "$FILTER"
echo "@@VMTEST kernel $(uname -r)"
# After a guest kernel crash the host boots the guest again with vmtest.resume=MODE:TEST
# (see /init): the steps before that one have run already.
RESUME=${VMTEST_RESUME:-}
for mode in $MODES; do
  for t in $TESTS; do
    if [ -n "$RESUME" ]; then
      [ "$mode:$t" = "$RESUME" ] || continue
      RESUME=
    fi
    echo "@@VMTEST begin $mode $t"
    TRACER_TEST_PROBE=$mode timeout -s KILL "$TEST_TIMEOUT" "$ROOT/deps/$t" --test-threads 1 "$@"
    echo "@@VMTEST end $mode $t $?"
  done
done
echo "@@VMTEST done"
"#;

/// The guest's /init: the mounts the tracer and its tests expect, loopback, then the tests.
/// `poweroff -f` halts without an init system; with `-no-reboot` qemu then exits.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
# Host tools live in /usr/bin, busybox applets in /bin and /sbin: the host ones come first.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
# Enabling a trace event while record-cmd is on (the default) registers ftrace's probes on the
# scheduler's wakeup and switch tracepoints: every daemon start and stop (the never-run count's
# instance) then patches those hot paths, and under TCG that crashed guests (an int3 Oops in
# ttwu_do_activate, soft lockups). The count does not need task names.
echo 0 > /sys/kernel/tracing/options/record-cmd
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "vmtest: insmod $m failed"
done
busybox ip link set lo up
for arg in $(cat /proc/cmdline); do
  case "$arg" in vmtest.resume=*) export VMTEST_RESUME="${arg#vmtest.resume=}" ;; esac
done
sh /vmtest/run-tests.sh
sync
poweroff -f
"#;

/// Host programs copied into the guest (with their shared libraries) when the host has them,
/// because the tests run them and busybox lacks them or their options: `ss` (ground truth),
/// `ip netns`, util-linux `setpriv`, and `python3` for the peer scripts in tracer/tests/peers.
const HOST_TOOLS: &[&str] = &["ss", "ip", "setpriv", "python3", "sysctl"];
/// Only system directories: a PATH entry such as a pyenv shim is not a program to copy.
const SYSTEM_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// Parts of the Python standard library that no test needs (about half its size).
const PYTHON_SKIP: &[&str] = &[
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "site-packages",
    "dist-packages",
    "venv",
];
const BUSYBOX: &str = "/bin/busybox";

/// Packs the staged payload, a static busybox, the host tools, the kernel's modules (`modules`:
/// the `.ko` files and `order`) and /init into an uncompressed initramfs.
pub fn initramfs(root: &Path, payload: &Payload, modules: &Path, out: &Path) -> Result<()> {
    if !is_static(Path::new(BUSYBOX)) {
        bail!(
            "{BUSYBOX} is missing or not static: install Debian's busybox-static (`cargo xtask setup`)"
        );
    }
    let mut cpio = cpio::Writer::create(out)?;
    // Mount points, and the directories `busybox --install` fills.
    for dir in
        ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "root", "etc"]
    {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.host_file("bin/busybox", Path::new(BUSYBOX))?;
    cpio.file("init", 0o755, INIT.as_bytes())?;
    cpio.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n")?;
    cpio.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )?;
    cpio.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    add_host_tools(&mut cpio)?;
    // Test data found through env!("CARGO_MANIFEST_DIR"), a host path compiled into the tests.
    let tests_dir = root.join("tracer/tests");
    add_tree(&mut cpio, &tests_dir, &guest_path(&tests_dir), &|p| {
        p.extension().is_some_and(|e| e == "rs")
    })?;
    add_tree(&mut cpio, &payload.dir, "vmtest", &|_| false)?;
    add_tree(&mut cpio, modules, "modules", &|_| false)?;
    cpio.finish()
}

/// The name of a host path inside the archive (same place, no leading slash).
fn guest_path(host: &Path) -> String {
    host.display().to_string().trim_start_matches('/').to_owned()
}

/// Adds a directory tree, skipping what `skip` says and entries that cannot be read (dangling
/// symlinks). Symlinks are followed: the guest gets plain files.
fn add_tree(
    cpio: &mut cpio::Writer,
    dir: &Path,
    name: &str,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<()> {
    cpio.dir(name)?;
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if skip(&path) {
            continue;
        }
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let child = format!("{name}/{file_name}");
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => add_tree(cpio, &path, &child, skip)?,
            Ok(m) if m.is_file() => cpio.host_file(&child, &path)?,
            _ => {}
        }
    }
    Ok(())
}

fn add_host_tools(cpio: &mut cpio::Writer) -> Result<()> {
    let mut libs: Vec<String> = Vec::new();
    for tool in HOST_TOOLS {
        let Some(path) =
            SYSTEM_BIN_DIRS.iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
        else {
            eprintln!(
                "vm-test: note: no {tool} on the host; tests that run it will fail in the guests"
            );
            continue;
        };
        let Ok(deps) = shared_libraries(&path) else { continue };
        // Same place as on the host, so programs that locate their files from it work (python).
        cpio.host_file(&guest_path(&path), &path)?;
        libs.extend(deps);
        if *tool == "python3" {
            add_python_stdlib(cpio, &path)?;
        }
    }
    libs.sort();
    libs.dedup();
    for lib in &libs {
        cpio.host_file(lib.trim_start_matches('/'), Path::new(lib))?;
    }
    Ok(())
}

/// /usr/lib/python3.N for the interpreter that /usr/bin/python3 points to.
fn add_python_stdlib(cpio: &mut cpio::Writer, python: &Path) -> Result<()> {
    let real =
        fs::canonicalize(python).with_context(|| format!("resolving {}", python.display()))?;
    let version = real.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stdlib = Path::new("/usr/lib").join(version);
    if !version.starts_with("python3.") || !stdlib.join("os.py").is_file() {
        eprintln!(
            "vm-test: note: no standard library for {} at {}",
            real.display(),
            stdlib.display()
        );
        return Ok(());
    }
    let skip = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| PYTHON_SKIP.contains(&n) || n.starts_with("config-"))
    };
    add_tree(cpio, &stdlib, &guest_path(&stdlib), &skip)
}

/// Absolute paths of a dynamic executable's libraries and loader, from `ldd`.
fn shared_libraries(exe: &Path) -> Result<Vec<String>> {
    let out = capture(Command::new("ldd").arg(exe))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(p.to_owned());
        }
    }
    Ok(libs)
}

fn is_static(exe: &Path) -> bool {
    // ldd says "not a dynamic executable" (exit 1) or "statically linked" (static-pie).
    exe.is_file()
        && Command::new("ldd").arg(exe).output().is_ok_and(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("statically linked")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_integration_tests_examples_and_the_binary_from_cargo_json() {
        let lines = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tracer"},"profile":{"test":true},"executable":"/t/deps/tracer-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"tracer"},"profile":{"test":false},"executable":"/t/tracer"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"pipeline"},"profile":{"test":true},"executable":"/t/deps/pipeline-2"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["example"],"name":"workload"},"profile":{"test":false},"executable":"/t/examples/workload"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ];
        let a = Artifacts::parse(&lines.join("\n")).expect("parse");
        assert_eq!(a.tests, vec![("pipeline".to_owned(), PathBuf::from("/t/deps/pipeline-2"))]);
        assert_eq!(
            a.examples,
            vec![("workload".to_owned(), PathBuf::from("/t/examples/workload"))]
        );
        assert_eq!(a.tracer, PathBuf::from("/t/tracer"));
    }

    #[test]
    fn the_test_script_resumes_at_the_step_a_crashed_boot_was_in() {
        let root = std::env::temp_dir().join(format!("xtask-resume-{}", std::process::id()));
        let deps = root.join("deps");
        fs::create_dir_all(&deps).expect("temp dir");
        let config = RunConfig {
            only: &[],
            skip: &[],
            modes: &["auto", "kprobe"],
            filter: None,
            test_timeout_secs: 10,
            fault_drop_every_nth_release: 0,
        };
        let tests = ["a".to_owned(), "b".to_owned()];
        write_file(&root.join("config.sh"), &config_script(&tests, &config), 0o644)
            .expect("config");
        write_file(&root.join("run-tests.sh"), RUN_TESTS, 0o755).expect("script");
        for t in &tests {
            write_file(&deps.join(t), "#!/bin/sh\nexit 0\n", 0o755).expect("test");
        }
        let steps = |resume: &str| {
            let out = std::process::Command::new("sh")
                .arg(root.join("run-tests.sh"))
                .env("VMTEST_ROOT", &root)
                .env("VMTEST_RESUME", resume)
                .output()
                .expect("sh");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("@@VMTEST begin ").map(str::to_owned))
                .collect::<Vec<_>>()
        };
        assert_eq!(steps(""), ["auto a", "auto b", "kprobe a", "kprobe b"]);
        assert_eq!(steps("kprobe:a"), ["kprobe a", "kprobe b"]);
        assert_eq!(steps("auto:b"), ["auto b", "kprobe a", "kprobe b"]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn selects_tests_by_name() {
        let tests =
            || vec![("a".to_owned(), PathBuf::from("/a")), ("b".to_owned(), PathBuf::from("/b"))];
        let skip = ["b".to_owned(), "gone".to_owned()];
        let config = RunConfig {
            only: &[],
            skip: &skip,
            modes: &[],
            filter: None,
            test_timeout_secs: 1,
            fault_drop_every_nth_release: 0,
        };
        assert_eq!(
            select(tests(), &config).expect("select"),
            vec![("a".to_owned(), PathBuf::from("/a"))]
        );
        let only = ["c".to_owned()];
        let config = RunConfig {
            only: &only,
            skip: &[],
            modes: &[],
            filter: None,
            test_timeout_secs: 1,
            fault_drop_every_nth_release: 0,
        };
        assert!(select(tests(), &config).is_err());
    }

    #[test]
    fn quotes_the_filter_for_the_shell() {
        let config = RunConfig {
            only: &[],
            skip: &[],
            modes: &["auto", "kprobe"],
            filter: Some("it's"),
            test_timeout_secs: 60,
            fault_drop_every_nth_release: 0,
        };
        let script = config_script(&["pipeline".into()], &config);
        assert!(script.contains(r"FILTER='it'\''s'"), "{script}");
        assert!(script.contains("MODES='auto kprobe'"));
    }
}
