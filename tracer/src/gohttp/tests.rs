//! Tests of the Go binary reader: hand-made build-info blobs, and real Go HTTP clients built
//! from tests/programs/gohttp/main.go with Debian's Go (1.19) and the newer releases that
//! `cargo xtask setup` installs, plain and with `-ldflags=-s -w`. The DWARF of each plain build
//! is the ground truth the offset tables are checked against; the running program, which
//! reports its idle connections' `*persistConn` addresses and descriptors, is the ground truth
//! for the chain (read through /proc/PID/mem of the test's own child).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use object::{Object, ObjectSection};

use super::buildinfo::{BuildInfoFormat, parse};
use super::layout::{FIELDS, TABLES, table_for};
use super::*;

// ---------------------------------------------------------------------------------------------
// Versions and hand-made build info.

#[test]
fn versions_parse_as_go_prints_them() {
    let v = |major, minor, patch| Some(GoVersion { major, minor, patch });
    assert_eq!(GoVersion::parse("go1.22.10"), v(1, 22, 10));
    assert_eq!(GoVersion::parse("go1.19"), v(1, 19, 0));
    assert_eq!(GoVersion::parse("go1.21rc2"), v(1, 21, 0));
    assert_eq!(GoVersion::parse("go1.22.10 X:boringcrypto"), v(1, 22, 10));
    assert_eq!(GoVersion::parse("devel go1.23-1a2b3c4 Tue"), v(1, 23, 0));
    assert_eq!(GoVersion::parse("1.22.10"), None);
    assert_eq!(GoVersion::parse("go"), None);
    assert_eq!(GoVersion::parse("gox.y"), None);
    assert!(GoVersion::parse("go1.9.9") < GoVersion::parse("go1.10.0"));
}

/// A pre-1.18 blob: header with two pointers to string headers elsewhere in "memory".
fn pointer_blob(ptr: u8, big_endian: bool) -> (Vec<u8>, Vec<u8>) {
    const MEM_BASE: u64 = 0x1000;
    let put = |out: &mut Vec<u8>, v: u64| {
        let b = if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        if ptr == 4 {
            out.extend(if big_endian { &b[4..] } else { &b[..4] });
        } else {
            out.extend(b);
        }
    };
    // Memory: version bytes, modinfo bytes, then the two string headers.
    let (version, modinfo) = (b"go1.16.15".as_slice(), b"path\tex".as_slice());
    let mut mem = Vec::new();
    mem.extend(version);
    mem.extend(modinfo);
    let headers = MEM_BASE + mem.len() as u64;
    put(&mut mem, MEM_BASE);
    put(&mut mem, version.len() as u64);
    put(&mut mem, MEM_BASE + version.len() as u64);
    put(&mut mem, modinfo.len() as u64);
    let mut blob = b"\xff Go buildinf:".to_vec();
    blob.push(ptr);
    blob.push(u8::from(big_endian));
    put(&mut blob, headers);
    put(&mut blob, headers + 2 * u64::from(ptr));
    blob.resize(32, 0);
    (blob, mem)
}

fn read_mem<'a>(mem: &'a [u8]) -> impl Fn(u64, u64) -> Option<&'a [u8]> {
    move |addr, len| {
        let off = usize::try_from(addr.checked_sub(0x1000)?).ok()?;
        mem.get(off..off.checked_add(usize::try_from(len).ok()?)?)
    }
}

#[test]
fn pointer_format_of_go_before_1_18() {
    for ptr in [4, 8] {
        for big_endian in [false, true] {
            let (blob, mem) = pointer_blob(ptr, big_endian);
            let info = parse(&blob, read_mem(&mem)).unwrap();
            assert_eq!(info.version, "go1.16.15");
            assert_eq!(info.modinfo, "path\tex");
            assert_eq!((info.ptr_size, info.big_endian), (ptr, big_endian));
            assert_eq!(info.format, BuildInfoFormat::Pointers);
            // Memory cut short anywhere: an error, never a panic.
            for len in 0..mem.len() {
                assert!(parse(&blob, read_mem(&mem[..len])).is_err(), "{ptr} {big_endian} {len}");
            }
        }
    }
}

#[test]
fn inline_format_and_its_errors() {
    let mut blob = b"\xff Go buildinf:\x08\x02".to_vec();
    blob.resize(32, 0);
    blob.push(9);
    blob.extend(b"go1.22.10");
    // A length over 127 takes two varint bytes.
    blob.extend([0x80, 0x01]);
    blob.extend([b'm'; 128]);
    let info = parse(&blob, |_, _| None).unwrap();
    assert_eq!(info.version, "go1.22.10");
    assert_eq!(info.modinfo.len(), 128);
    assert_eq!(info.format, BuildInfoFormat::Inline);
    for len in 0..blob.len() {
        assert!(parse(&blob[..len], |_, _| None).is_err(), "{len}");
    }
    let mut bad = blob.clone();
    bad[0] = 0;
    assert_eq!(parse(&bad, |_, _| None), Err(BuildInfoError::NotFound));
    let mut bad = blob.clone();
    bad[32..42].copy_from_slice(&[0xff; 10]);
    assert!(matches!(parse(&bad, |_, _| None), Err(BuildInfoError::Malformed(_))));
}

#[test]
fn a_program_without_go_is_not_go() {
    let elf = std::fs::read("/bin/true").unwrap();
    assert_eq!(buildinfo::read_elf(&elf), Err(BuildInfoError::NotFound));
    assert_eq!(inspect(&elf), Err(GoHttpError::BuildInfo(BuildInfoError::NotFound)));
    assert!(matches!(inspect(b"not an elf"), Err(GoHttpError::BuildInfo(BuildInfoError::Elf(_)))));
}

#[test]
fn a_file_reads_as_its_bytes_and_a_binary_without_go_is_refused_from_its_headers() {
    assert_eq!(
        inspect_file(Path::new("/bin/true")),
        Err(GoHttpError::BuildInfo(BuildInfoError::NotFound))
    );
    let b = &go_binaries()["1.19"];
    let dir = std::env::temp_dir().join(format!("tracer-gohttp-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [("plain", &b.plain), ("stripped", &b.stripped)] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(inspect_file(&path), inspect(bytes), "{name}");
        assert!(inspect_file(&path).is_ok(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tables_do_not_overlap() {
    for (i, (a, _)) in TABLES.iter().enumerate() {
        assert!(a.first <= a.last, "{a:?}");
        for (b, _) in &TABLES[i + 1..] {
            assert!(a.last < b.first, "{a:?} overlaps or is out of order with {b:?}");
        }
    }
    assert_eq!(table_for(GoVersion { major: 1, minor: 20, patch: 0 }), None);
    assert_eq!(table_for(GoVersion { major: 2, minor: 19, patch: 0 }), None);
}

// ---------------------------------------------------------------------------------------------
// Real binaries.

/// Where `cargo xtask setup` installs the newer Go releases (xtask/src/setup.rs).
const TEST_GO_DIR: &str = "/usr/local/lib/tracer-test-go";
const NEWER_GO: &[&str] = &["1.22.10", "1.27.3"];

struct Built {
    /// What `go version` says, e.g. `go1.19.8`.
    go_version: String,
    plain: Vec<u8>,
    /// Built with `-ldflags=-s -w`: no symbol table, no DWARF.
    stripped: Vec<u8>,
    /// Built with `-ldflags=-w`: the symbol table, no DWARF.
    no_dwarf: Vec<u8>,
}

fn go_build(go: &Path, label: &str, flags: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("tracer-gohttp-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("prog");
    let out = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&exe)
        .args(flags)
        .arg("main.go")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/gohttp"))
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", std::env::temp_dir().join("tracer-test-gocache"))
        .output()
        .unwrap();
    let elf = std::fs::read(&exe);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{label}: go build: {}", String::from_utf8_lossy(&out.stderr));
    elf.unwrap()
}

/// The test program built by every installed Go, by version label, once.
fn go_binaries() -> &'static HashMap<String, Built> {
    static BUILT: OnceLock<HashMap<String, Built>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut gos = vec![("1.19".to_string(), PathBuf::from("go"))];
        for v in NEWER_GO {
            gos.push((v.to_string(), Path::new(TEST_GO_DIR).join(v).join("go/bin/go")));
        }
        let mut built = HashMap::new();
        for (label, go) in gos {
            let version = Command::new(&go).arg("version").output();
            let Some(out) = version.ok().filter(|o| o.status.success()) else {
                panic!(
                    "{label}: `{} version` failed: run `cargo xtask setup`, which installs \
                     golang-go (Debian's Go) and the newer Go releases into {TEST_GO_DIR}",
                    go.display()
                );
            };
            // "go version go1.19.8 linux/amd64"
            let go_version =
                String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2).unwrap().to_string();
            // The two builds of a release in parallel: the machine has two cores.
            let (plain, stripped) = std::thread::scope(|s| {
                let plain = s.spawn(|| go_build(&go, &format!("{label}-plain"), &[]));
                let stripped = go_build(&go, &format!("{label}-stripped"), &["-ldflags=-s -w"]);
                (plain.join().unwrap(), stripped)
            });
            let no_dwarf = go_build(&go, &format!("{label}-no-dwarf"), &["-ldflags=-w"]);
            built.insert(label, Built { go_version, plain, stripped, no_dwarf });
        }
        built
    })
}

fn check_release(label: &str) {
    let b = &go_binaries()[label];
    let version = GoVersion::parse(&b.go_version).unwrap();

    // The plain build: the version, the offsets from DWARF, the entry from the symbol table.
    let plain = inspect(&b.plain).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(plain.version_string, b.go_version, "{label}");
    assert_eq!(plain.version, version);
    assert_eq!(plain.offsets_source, OffsetsSource::Dwarf, "{label}");
    assert_eq!(plain.receiver, Register::Rax);
    // What keeps the tables honest: this release's table is exactly what its DWARF says.
    let table = table_for(version).unwrap_or_else(|| {
        panic!("{label}: no offset table for {version}; DWARF says {:?}", plain.offsets)
    });
    for ((f, dwarf), table) in FIELDS.iter().zip(plain.offsets.to_array()).zip(table.to_array()) {
        assert_eq!(dwarf, table, "{label}: {}.{}: DWARF vs table", f.type_name, f.member);
    }
    // The pclntab of the same file names the same entries as its symbols.
    let tab = GoPclntab::from_elf(&b.plain).unwrap();
    for f in &plain.functions {
        assert_eq!(tab.function_entry(f.name).unwrap(), Some(f.entry), "{label}: {}", f.name);
    }

    // The stripped build: no symbols, no DWARF; the same version, the table's offsets, and the
    // same entries (the linker lays the text out alike) through the pclntab.
    let file = object::File::parse(&*b.stripped).unwrap();
    assert_eq!(file.symbols().count(), 0, "{label}: -s left symbols");
    let stripped = inspect(&b.stripped).unwrap_or_else(|e| panic!("{label} -s -w: {e}"));
    assert_eq!(stripped.version_string, b.go_version);
    assert_eq!(
        stripped.offsets_source,
        OffsetsSource::Table { dwarf: "no DWARF".into() },
        "{label} -s -w"
    );
    assert_eq!(stripped.offsets, plain.offsets, "{label} -s -w");
    assert_eq!(stripped.functions, plain.functions, "{label} -s -w");
    assert_eq!(stripped.tcp_conn_close, plain.tcp_conn_close, "{label} -s -w");
    assert!(!plain.position_independent, "{label}: Go's default build is not PIE");

    // Without DWARF but with symbols (`-w`): the table's offsets, the entry from the symbols.
    let file = object::File::parse(&*b.no_dwarf).unwrap();
    assert!(file.symbols().count() > 0, "{label}: -w dropped the symbols");
    let no_dwarf = inspect(&b.no_dwarf).unwrap_or_else(|e| panic!("{label} -w: {e}"));
    assert_eq!(no_dwarf.offsets_source, OffsetsSource::Table { dwarf: "no DWARF".into() });
    assert_eq!(no_dwarf.offsets, plain.offsets, "{label} -w");
    assert_eq!(no_dwarf.functions, plain.functions, "{label} -w");

    // Build info found by scanning the segments when the section headers are gone.
    let bare = without_section_headers(&b.stripped);
    assert_eq!(buildinfo::read_elf(&bare).unwrap().version, b.go_version, "{label}: no sections");
}

#[test]
fn go_1_19() {
    check_release("1.19");
}

#[test]
fn go_1_22() {
    check_release("1.22.10");
}

#[test]
fn go_1_27() {
    check_release("1.27.3");
}

/// The ELF with its section header table dropped (ELF64 little-endian).
fn without_section_headers(elf: &[u8]) -> Vec<u8> {
    let mut out = elf.to_vec();
    out[0x28..0x30].fill(0); // e_shoff
    out[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    out
}

/// The stripped 1.19 binary with its build-info version overwritten by `fake` (same length).
fn with_version(fake: &str) -> Vec<u8> {
    let b = &go_binaries()["1.19"];
    let mut elf = b.stripped.clone();
    let real = b.go_version.as_bytes();
    assert_eq!(real.len(), fake.len());
    let file = object::File::parse(&*b.stripped).unwrap();
    let (start, _) = file.section_by_name(".go.buildinfo").unwrap().file_range().unwrap();
    let start = start as usize;
    let at = start + elf[start..].windows(real.len()).position(|w| w == real).unwrap();
    elf[at..at + real.len()].copy_from_slice(fake.as_bytes());
    elf
}

#[test]
fn a_version_without_a_table_is_reported_never_guessed() {
    // 1.20 lies between two tabled releases with equal layouts: still not assumed.
    assert_eq!(go_binaries()["1.19"].go_version.len(), "go1.20.1".len());
    match inspect(&with_version("go1.20.1")) {
        Err(e @ GoHttpError::NoOffsetTable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("go1.20.1") && text.contains("no DWARF"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // With DWARF the version needs no table.
    assert_eq!(inspect(&go_binaries()["1.19"].plain).unwrap().offsets_source, OffsetsSource::Dwarf);
    // Before the register ABI.
    assert_eq!(
        inspect(&with_version("go1.16.1")),
        Err(GoHttpError::StackAbi { version: GoVersion { major: 1, minor: 16, patch: 1 } })
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input.

use crate::test_support::Rng;

#[test]
fn truncated_and_mutated_build_info_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for label in ["1.19", "1.27.3"] {
        let elf = &go_binaries()[label].stripped;
        let file = object::File::parse(&**elf).unwrap();
        let blob = file.section_by_name(".go.buildinfo").unwrap().data().unwrap().to_vec();
        for len in 0..blob.len() {
            let _ = parse(&blob[..len], |_, _| None);
        }
        for _ in 0..2000 {
            let mut bad = blob.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bad.len().min(64));
                bad[at] = rng.next() as u8;
            }
            // Pointer format with random pointers into the real file, too.
            let _ = parse(&bad, |addr, len| {
                let a = usize::try_from(addr % elf.len() as u64).ok()?;
                elf.get(a..a.checked_add(usize::try_from(len).ok()?)?)
            });
        }
        // Whole files: truncated, and with the build info's bytes mutated.
        let (start, size) = file.section_by_name(".go.buildinfo").unwrap().file_range().unwrap();
        for len in (0..elf.len()).step_by(elf.len() / 64) {
            let _ = inspect(&elf[..len]);
        }
        for _ in 0..64 {
            let mut bad = elf.clone();
            let at = start as usize + rng.below(size as usize);
            bad[at] = rng.next() as u8;
            let _ = inspect(&bad);
        }
    }
}

#[test]
fn mutated_dwarf_never_panics() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let elf = &go_binaries()["1.19"].plain;
    let file = object::File::parse(&**elf).unwrap();
    let sections: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.contains("debug_info") || n.contains("debug_abbrev")))
        .filter_map(|s| s.file_range())
        .collect();
    assert!(!sections.is_empty());
    for round in 0..24 {
        let mut bad = elf.clone();
        let (start, size) = sections[round % sections.len()];
        // The first bytes of a compressed section are its header and the zlib stream's start.
        let span = if round % 2 == 0 { 64.min(size) } else { size } as usize;
        for _ in 0..1 + rng.below(8) {
            let at = start as usize + rng.below(span);
            bad[at] = rng.next() as u8;
        }
        let _ = inspect(&bad);
    }
}

// ---------------------------------------------------------------------------------------------
// The chain in a live process.

/// A running test program, killed and its directory removed on drop (also when a test fails).
struct Running {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `elf` and follows the chain from each idle *persistConn it reports, in its memory,
/// with the offsets `inspect` gave: the descriptor found must be the one the program reports.
fn check_chain_live(label: &str, elf: &[u8]) {
    use std::io::BufRead;
    use std::os::unix::fs::{FileExt, PermissionsExt};

    let go = inspect(elf).unwrap_or_else(|e| panic!("{label}: {e}"));
    let offsets = go.offsets;
    let dir =
        std::env::temp_dir().join(format!("tracer-gohttp-live-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("prog");
    std::fs::write(&exe, elf).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new(&exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running { child, dir };
    let pid = running.child.id();
    let stdout = std::io::BufReader::new(running.child.stdout.take().unwrap());
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    // Where Close is in this process (moved by the load bias when the build is PIE): the maps
    // are complete once the program has written its first line.
    let mut stdout = stdout.lines();
    let first = stdout.next().unwrap().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let close = go.tcp_conn_close_in(&maps, &exe).unwrap_or_else(|| panic!("{label}: {maps}"));
    let read = |addr: u64| {
        let mut word = [0u8; 8];
        mem.read_exact_at(&mut word, addr).ok().map(|()| u64::from_le_bytes(word))
    };
    let mut kinds = Vec::new();
    for line in std::iter::once(first).chain(stdout.map(Result::unwrap)) {
        if line == "ready" {
            break;
        }
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!((f.len(), f[0]), (4, "conn"), "{label}: {line}");
        let pconn = u64::from_str_radix(f[2], 16).unwrap();
        let fd: i64 = f[3].parse().unwrap();
        // The program's own descriptor is a socket (ground truth from /proc).
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(target.to_string_lossy().starts_with("socket:["), "{label}: {target:?}");
        // Each connection is a *net.TCPConn, whose itab starts with the Close found by inspect:
        // with any other first method the chain refuses.
        assert_eq!(offsets.follow(pconn, close, read), Some(fd), "{label}: {line}");
        assert_eq!(offsets.follow(pconn, close + 1, read), None, "{label}: {line}");
        kinds.push(f[1].to_string());
    }
    assert_eq!(kinds, ["plain", "tls"], "{label}: the program did not report both connections");
}

#[test]
fn the_chain_reaches_the_socket_in_a_live_process() {
    for (label, b) in go_binaries() {
        check_chain_live(&format!("{label}-plain"), &b.plain);
        check_chain_live(&format!("{label}-stripped"), &b.stripped);
    }
}

/// A position-independent build (`-buildmode=pie`, as some distributions build Go programs)
/// loads at a random address: the method the chain checks is placed by the process's bias.
#[test]
fn a_position_independent_build_is_followed_at_its_load_address() {
    let pie = go_build(Path::new("go"), "1.19-pie", &["-buildmode=pie"]);
    let go = inspect(&pie).unwrap();
    assert!(go.position_independent);
    check_chain_live("1.19-pie", &pie);
}
