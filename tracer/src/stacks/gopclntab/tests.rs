//! Tests of the pclntab reader: hand-made tables of every format, and real Go binaries built
//! from tests/programs/gopclntab/main.go with Debian's Go (1.19) and the newer releases that
//! `cargo xtask setup` installs (xtask/src/setup.rs, `TEST_GO_VERSIONS`), each in every way of
//! `VARIANTS` (plain, stripped, PIE, linked by the C linker), checked against what the Go runtime
//! itself says about its pcs.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::*;

// ---------------------------------------------------------------------------------------------
// Hand-made tables.

struct Spec {
    name: &'static str,
    /// Offset of the entry from the text start, and the function's length.
    entry: u64,
    len: u64,
    file: &'static str,
    /// (line, bytes of code on it), in pc order.
    lines: &'static [(i32, u64)],
}

const TEXT: u64 = 0x40_1000;

const SPECS: &[Spec] = &[
    Spec {
        name: "main.first",
        entry: 0,
        len: 0x40,
        file: "/src/a.go",
        lines: &[(10, 0x10), (12, 0x30)],
    },
    Spec {
        name: "main.(*server).handle",
        entry: 0x40,
        len: 0x20,
        file: "/src/b.go",
        lines: &[(7, 0x08), (3, 0x08), (900, 0x10)],
    },
    Spec {
        name: "main.Map[...]",
        entry: 0x60,
        len: 0x100,
        file: "/src/a.go",
        lines: &[(20, 0x100)],
    },
];

/// The runtime's pc-value encoding: zig-zag value delta and pc delta (÷ quantum) varints from
/// the value -1, ended by a zero byte.
fn pcvalue_table(steps: &[(i32, u64)], quantum: u64) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    let mut prev = -1i32;
    for &(value, len) in steps {
        let d = value - prev;
        varint(&mut out, ((d << 1) ^ (d >> 31)) as u32);
        varint(&mut out, (len / quantum) as u32);
        prev = value;
    }
    out.push(0);
    out
}

struct Table {
    big_endian: bool,
    ptr: u8,
    data: Vec<u8>,
}

impl Table {
    fn u32(&mut self, v: u32) {
        self.data.extend(if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
    }
    fn word(&mut self, v: u64) {
        if self.ptr == 4 {
            self.u32(v as u32);
        } else {
            self.data.extend(if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
        }
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        let b = if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        self.data[at..at + 4].copy_from_slice(&b);
    }
    fn put_word(&mut self, at: usize, v: u64) {
        if self.ptr == 4 {
            self.put_u32(at, v as u32);
        } else {
            let b = if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
            self.data[at..at + 8].copy_from_slice(&b);
        }
    }
}

/// A table of `version` describing SPECS, laid out as the linker lays it out.
fn hand_made(version: GoPclntabVersion, ptr: u8, big_endian: bool, header_text: u64) -> Vec<u8> {
    let magic = match version {
        GoPclntabVersion::Go12 => 0xffff_fffb,
        GoPclntabVersion::Go116 => 0xffff_fffa,
        GoPclntabVersion::Go118 => 0xffff_fff0,
        GoPclntabVersion::Go120 => 0xffff_fff1,
    };
    let mut t = Table { big_endian, ptr, data: Vec::new() };
    t.u32(magic);
    t.data.extend([0, 0, 1, ptr]);
    let files: Vec<&str> = {
        let mut f: Vec<&str> = SPECS.iter().map(|s| s.file).collect();
        f.dedup();
        f.sort();
        f.dedup();
        f
    };
    let file_index = |f: &str| files.iter().position(|x| *x == f).unwrap();
    let p = usize::from(ptr);
    let n = SPECS.len() as u64;

    // Names, files and pc tables, as standalone blobs with their offsets.
    let mut names = Vec::new();
    let name_offs: Vec<u32> = SPECS
        .iter()
        .map(|s| {
            let off = names.len() as u32;
            names.extend(s.name.as_bytes());
            names.push(0);
            off
        })
        .collect();
    let mut filetab = Vec::new();
    let file_offs: Vec<u32> = files
        .iter()
        .map(|f| {
            let off = filetab.len() as u32;
            filetab.extend(f.as_bytes());
            filetab.push(0);
            off
        })
        .collect();
    // pc table offset 0 means "no table": start with a pad byte.
    let mut pctab = vec![0u8];
    let mut pc_offs = Vec::new();
    for s in SPECS {
        // Go 1.2 file numbers start at 1 (0 is not a file).
        let fno = file_index(s.file) as i32 + i32::from(version == GoPclntabVersion::Go12);
        let pcfile = pctab.len() as u32;
        pctab.extend(pcvalue_table(&[(fno, s.len)], 1));
        let pcln = pctab.len() as u32;
        pctab.extend(pcvalue_table(s.lines, 1));
        pc_offs.push((pcfile, pcln));
    }

    match version {
        GoPclntabVersion::Go12 => {
            t.word(n);
            let functab = t.data.len();
            t.data.resize(functab + (2 * SPECS.len() + 1) * p + 4, 0);
            let mut records = Vec::new();
            for (i, s) in SPECS.iter().enumerate() {
                records.push(t.data.len());
                t.word(TEXT + s.entry);
                for v in [0, 0, 0, 0, pc_offs[i].0, pc_offs[i].1, 0, 0] {
                    t.u32(v);
                }
            }
            let names_at = t.data.len() as u32;
            t.data.extend(&names);
            for (i, &r) in records.iter().enumerate() {
                t.put_u32(r + p, names_at + name_offs[i]);
            }
            let strings_at = t.data.len() as u32;
            t.data.extend(&filetab);
            let filetab_at = t.data.len();
            t.u32(files.len() as u32 + 1);
            for off in &file_offs {
                t.u32(strings_at + off);
            }
            let pctab_at = t.data.len() as u32;
            t.data.extend(&pctab);
            for (i, &r) in records.iter().enumerate() {
                t.put_u32(r + p + 16, pctab_at + pc_offs[i].0);
                t.put_u32(r + p + 20, pctab_at + pc_offs[i].1);
            }
            for (i, s) in SPECS.iter().enumerate() {
                t.put_word(functab + 2 * i * p, TEXT + s.entry);
                t.put_word(functab + (2 * i + 1) * p, records[i] as u64);
            }
            let last = SPECS.last().unwrap();
            t.put_word(functab + 2 * SPECS.len() * p, TEXT + last.entry + last.len);
            t.put_u32(functab + (2 * SPECS.len() + 1) * p, filetab_at as u32);
        }
        _ => {
            let modern = version >= GoPclntabVersion::Go118;
            let words = if modern { 8 } else { 7 };
            let header = t.data.len();
            t.data.resize(header + words * p, 0);
            let funcname_at = t.data.len() as u64;
            t.data.extend(&names);
            let cutab_at = t.data.len() as u64;
            for off in &file_offs {
                t.u32(*off);
            }
            let filetab_at = t.data.len() as u64;
            t.data.extend(&filetab);
            let pctab_at = t.data.len() as u64;
            t.data.extend(&pctab);
            let pcln_at = t.data.len();
            let fs = if modern { 4 } else { p };
            let records_at = (2 * SPECS.len() + 1) * fs;
            let record_len = if version == GoPclntabVersion::Go120 {
                44
            } else if modern {
                40
            } else {
                p + 36
            };
            let mut header_words = vec![n, files.len() as u64];
            if modern {
                header_words.push(header_text);
            }
            header_words.extend([funcname_at, cutab_at, filetab_at, pctab_at, pcln_at as u64]);
            for (i, w) in header_words.into_iter().enumerate() {
                t.put_word(header + i * p, w);
            }
            let entry = |t: &mut Table, off: u64| {
                if modern { t.u32(off as u32) } else { t.word(TEXT + off) }
            };
            for (i, s) in SPECS.iter().enumerate() {
                entry(&mut t, s.entry);
                let rec = (records_at + i * record_len) as u64;
                if modern { t.u32(rec as u32) } else { t.word(rec) }
            }
            let last = SPECS.last().unwrap();
            entry(&mut t, last.entry + last.len);
            for (i, s) in SPECS.iter().enumerate() {
                entry(&mut t, s.entry);
                let fields = [name_offs[i], 0, 0, 0, pc_offs[i].0, pc_offs[i].1, 0, 0];
                for v in fields {
                    t.u32(v);
                }
                if version == GoPclntabVersion::Go120 {
                    t.u32(1); // startLine
                }
                t.data.extend([0, 0, 0, 0]); // funcID, flag, pad, nfuncdata
            }
        }
    }
    t.data
}

/// Every pc of every SPECS function gets its name, entry, file and line; pcs outside get none.
fn check_hand_made(tab: &GoPclntab) {
    for s in SPECS {
        let mut pc = TEXT + s.entry;
        for &(line, len) in s.lines {
            for at in [pc, pc + len - 1] {
                let f = tab.lookup(at).unwrap_or_else(|| panic!("no function at {at:#x}"));
                assert_eq!(f.function, s.name, "{at:#x}");
                assert_eq!(f.entry, TEXT + s.entry, "{at:#x}");
                assert_eq!(f.file.as_deref(), Some(s.file), "{at:#x}");
                assert_eq!(f.line, Some(line as u32), "{at:#x}");
                assert!(f.inlined.is_empty());
            }
            pc += len;
        }
    }
    let last = SPECS.last().unwrap();
    assert_eq!(tab.lookup(TEXT - 1), None);
    assert_eq!(tab.lookup(TEXT + last.entry + last.len), None);
    assert_eq!(tab.function_count(), SPECS.len() as u64);
}

#[test]
fn hand_made_tables_of_every_format() {
    use GoPclntabVersion::*;
    for version in [Go12, Go116, Go118, Go120] {
        for (ptr, big_endian) in [(8, false), (4, false), (8, true), (4, true)] {
            let data = hand_made(version, ptr, big_endian, TEXT);
            let tab = GoPclntab::from_table(&data, None)
                .unwrap_or_else(|e| panic!("{version:?} ptr {ptr} be {big_endian}: {e}"));
            assert_eq!(tab.version(), version);
            check_hand_made(&tab);
        }
    }
}

#[test]
fn text_start_given_overrides_the_header_and_is_needed_without_it() {
    for version in [GoPclntabVersion::Go118, GoPclntabVersion::Go120] {
        // Go 1.26+ headers no longer record the text start.
        let data = hand_made(version, 8, false, 0);
        assert_eq!(GoPclntab::from_table(&data, None).unwrap_err(), GoPclntabError::NoTextStart);
        let tab = GoPclntab::from_table(&data, Some(TEXT)).unwrap();
        assert_eq!(tab.text_start(), TEXT);
        check_hand_made(&tab);
        // A header value that is wrong (unrelocated) loses to the caller's.
        let data = hand_made(version, 8, false, 0x1234);
        check_hand_made(&GoPclntab::from_table(&data, Some(TEXT)).unwrap());
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let mut data = hand_made(GoPclntabVersion::Go120, 8, false, TEXT);
    let err = |d: &[u8]| GoPclntab::from_table(d, None).unwrap_err();

    let mut bad = data.clone();
    bad[..4].copy_from_slice(&0xffff_fff5u32.to_le_bytes());
    assert_eq!(err(&bad), GoPclntabError::UnknownMagic(0xffff_fff5));
    assert!(err(&bad).to_string().contains("0xfffffff5"), "{}", err(&bad));

    let mut bad = data.clone();
    bad[7] = 3;
    assert!(matches!(err(&bad), GoPclntabError::BadHeader(_)), "{:?}", err(&bad));

    assert!(matches!(err(&data[..20]), GoPclntabError::Truncated { what: "header", .. }));

    // The function table runs past the end: nfunc is huge.
    data[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
    match err(&data) {
        GoPclntabError::Truncated { what: "function table", offset, len } => {
            assert_eq!(len, data.len());
            assert!(offset > 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(err(&data).to_string().contains("function table at offset"), "{}", err(&data));

    assert!(matches!(GoPclntab::from_elf(b"not an elf"), Err(GoPclntabError::Elf(_))));
}

#[test]
fn an_elf_without_go_has_no_table() {
    let elf = std::fs::read("/bin/true").unwrap();
    assert_eq!(GoPclntab::from_elf(&elf).unwrap_err(), GoPclntabError::NotFound);
}

#[test]
fn misaligned_input_reads_the_same() {
    let elf = go_binaries()["1.19-stripped"].elf.clone();
    let mut shifted = vec![0u8; elf.len() + 1];
    shifted[1..].copy_from_slice(&elf);
    let a = GoPclntab::from_elf(&elf).unwrap();
    let b = GoPclntab::from_elf(&shifted[1..]).unwrap();
    let pc = go_binaries()["1.19-stripped"].funcs[0].pc;
    assert_eq!(a.lookup(pc), b.lookup(pc));
    assert!(a.lookup(pc).is_some());
}

// ---------------------------------------------------------------------------------------------
// Real binaries.

/// Where `cargo xtask setup` installs the newer Go releases (xtask/src/setup.rs).
const TEST_GO_DIR: &str = "/usr/local/lib/tracer-test-go";
const NEWER_GO: &[&str] = &["1.22.10", "1.27.3"];

/// What Go said about one pc: `runtime.FuncForPC(pc)`'s name and `FileLine(pc)`, and the
/// frame `runtime.CallersFrames` gives for it (at pc - 1 for a return address).
struct GoSays {
    pc: u64,
    func: (String, String, u32),
    frame: (String, String, u32),
}

struct Built {
    /// The executable's bytes.
    elf: Vec<u8>,
    /// Run-time address minus ELF address.
    bias: u64,
    funcs: Vec<GoSays>,
}

fn program_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/gopclntab")
}

/// Builds the test program with `go`, runs it and reads what it printed.
fn build_and_run(go: &Path, label: &str, flags: &[&str]) -> Built {
    let version = Command::new(go).arg("version").output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        panic!(
            "{label}: `{} version` failed ({version:?}): run `cargo xtask setup`, which installs \
             golang-go (Debian's Go) and the newer Go releases into {TEST_GO_DIR}",
            go.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("tracer-gopclntab-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("prog");
    let out = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&exe)
        .args(flags)
        .arg("main.go")
        .current_dir(program_dir())
        // Internal linking without cgo unless the C linker is asked for; no toolchain or module
        // downloads; the build cache outside the repository.
        .env("CGO_ENABLED", if flags.iter().any(|f| f.contains("external")) { "1" } else { "0" })
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", std::env::temp_dir().join("tracer-test-gocache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{label}: go build: {}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success(), "{label}: {}", String::from_utf8_lossy(&run.stderr));
    let elf = std::fs::read(&exe).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let stdout = String::from_utf8(run.stdout).unwrap();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
    let mut base = None;
    let mut funcs: Vec<GoSays> = Vec::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "base" => base = Some(hex(f[1])),
            "func" => funcs.push(GoSays {
                pc: hex(f[1]),
                func: (f[2].into(), f[3].into(), f[4].parse().unwrap()),
                frame: Default::default(),
            }),
            "frame" => {
                // One frame per pc: Callers already gave inlined calls pcs of their own.
                assert_eq!(f[2], "0", "{label}: more than one frame for a pc: {line}");
                let last = funcs.last_mut().unwrap();
                assert_eq!(last.pc, hex(f[1]));
                last.frame = (f[3].into(), f[4].into(), f[5].parse().unwrap());
            }
            _ => panic!("{label}: unexpected line {line:?}"),
        }
    }
    let file = object::File::parse(&*elf).unwrap();
    let lowest = file.segments().map(|s| s.address()).min().unwrap() & !0xfff;
    Built { bias: base.unwrap() - lowest, elf, funcs }
}

/// How each Go release builds the test program: plain; stripped; stripped PIE; stripped and
/// linked by the C linker (as cgo programs are), where the text of Go starts after C's, not at
/// `.text`; the same as PIE.
const VARIANTS: &[(&str, &[&str])] = &[
    ("plain", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-ldflags=-s -w", "-buildmode=pie"]),
    ("external", &["-ldflags=-s -w -linkmode=external"]),
    ("external-pie", &["-ldflags=-s -w -linkmode=external", "-buildmode=pie"]),
];

/// Each test binary, built once: "<go version>-<variant>".
fn go_binaries() -> &'static HashMap<String, Built> {
    static BUILT: OnceLock<HashMap<String, Built>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut gos = vec![("1.19".to_string(), PathBuf::from("go"))];
        for v in NEWER_GO {
            gos.push((v.to_string(), Path::new(TEST_GO_DIR).join(v).join("go/bin/go")));
        }
        let mut jobs = Vec::new();
        for (v, go) in &gos {
            for (variant, flags) in VARIANTS {
                jobs.push((format!("{v}-{variant}"), go.clone(), *flags));
            }
        }
        // Two at a time: the machine has two cores.
        let mut built = HashMap::new();
        for pair in jobs.chunks(2) {
            std::thread::scope(|s| {
                let handles: Vec<_> = pair
                    .iter()
                    .map(|(label, go, flags)| {
                        s.spawn(move || (label.clone(), build_and_run(go, label, flags)))
                    })
                    .collect();
                for h in handles {
                    let (label, b) = h.join().unwrap();
                    built.insert(label, b);
                }
            });
        }
        built
    })
}

/// Checks that the reader says what Go said about every printed pc, and that each inlined
/// call it expands is the frame Go gave the pc Callers recorded for it.
fn check_against_go(label: &str, version: GoPclntabVersion) {
    let b = &go_binaries()[label];
    let tab = GoPclntab::from_elf(&b.elf).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(tab.version(), version, "{label}");
    assert!(tab.has_inline_trees(), "{label}: inline trees not found");
    let mut wrong = Vec::new();
    let mut expanded = 0;
    for (i, said) in b.funcs.iter().enumerate() {
        let pc = said.pc - b.bias;
        let Some(frame) = tab.lookup(pc) else {
            wrong.push(format!("{pc:#x}: nothing, Go said {:?}", said.func));
            continue;
        };
        let (name, file, line) = frame.innermost();
        let ours = (name.to_string(), file.unwrap_or("?").to_string(), line.unwrap_or(0));
        if ours != said.func {
            wrong.push(format!("{pc:#x}: {ours:?}, Go said {:?}", said.func));
        }
        // CallersFrames looks a return address up at pc - 1, an entry at itself.
        let at = if pc > frame.entry { pc - 1 } else { pc };
        let frame = tab.lookup(at).unwrap();
        // Outermost (the physical function) to innermost, then reversed: the order in which
        // Callers recorded the inlined calls' pcs.
        let mut chain = vec![(
            frame.function.clone(),
            frame.file.clone().unwrap_or_default(),
            frame.line.unwrap_or(0),
        )];
        chain.extend(frame.inlined.iter().map(|f| {
            (f.function.clone(), f.file.clone().unwrap_or_default(), f.line.unwrap_or(0))
        }));
        chain.reverse();
        for (depth, ours) in chain.iter().enumerate() {
            let Some(go) = b.funcs.get(i + depth) else { break };
            if *ours != go.frame {
                wrong.push(format!(
                    "{at:#x} depth {depth}: {ours:?}, Go's frame for pc {:#x} was {:?}",
                    go.pc, go.frame
                ));
            }
        }
        expanded += chain.len() - 1;
    }
    assert!(
        wrong.is_empty(),
        "{label}: {} mismatches over {} printed pcs:\n{}",
        wrong.len(),
        b.funcs.len(),
        wrong.join("\n")
    );
    assert!(b.funcs.len() >= 25, "{label}: only {} pcs printed", b.funcs.len());
    assert!(expanded >= 2, "{label}: no inlined call expanded");
    for name in ["main.openDB", "main.(*server).handle", "main.Map[...]", "net.Dial"] {
        assert!(b.funcs.iter().any(|f| f.func.0 == name), "{label}: {name} not printed");
    }
}

/// Every variant of one Go release; the failures of all of them at once.
fn check_release(version: &str, format: GoPclntabVersion) {
    let failed: Vec<String> = VARIANTS
        .iter()
        .filter_map(|(variant, _)| {
            let label = format!("{version}-{variant}");
            let result = std::panic::catch_unwind(|| check_against_go(&label, format));
            result.err().map(|_| label)
        })
        .collect();
    assert!(failed.is_empty(), "wrong (see above): {failed:?}");
}

#[test]
fn go_1_19() {
    check_release("1.19", GoPclntabVersion::Go118);
}

#[test]
fn go_1_22() {
    check_release("1.22.10", GoPclntabVersion::Go120);
}

#[test]
fn go_1_27() {
    check_release("1.27.3", GoPclntabVersion::Go120);
}

/// An ELF with its section headers gone too (e_shoff, e_shnum, e_shstrndx zeroed).
fn without_section_headers(elf: &[u8]) -> Vec<u8> {
    let mut elf = elf.to_vec();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "64-bit ELF");
    elf[0x28..0x30].fill(0); // e_shoff
    elf[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    elf
}

/// Without section headers the table is found by its magic, the text start and the inline
/// trees through the module data: lookups are the same as with them.
#[test]
fn found_without_section_headers() {
    let labels = ["1.19-stripped", "1.22.10-stripped", "1.27.3-stripped", "1.27.3-pie"];
    let external = ["1.19-external-pie", "1.22.10-external-pie", "1.27.3-external-pie"];
    for label in labels.into_iter().chain(external) {
        let b = &go_binaries()[label];
        let with = GoPclntab::from_elf(&b.elf).unwrap();
        let bare = without_section_headers(&b.elf);
        assert!(object::File::parse(&*bare).unwrap().sections().next().is_none());
        let without = GoPclntab::from_elf(&bare).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(without.text_start(), with.text_start(), "{label}");
        assert!(without.has_inline_trees(), "{label}");
        for f in &b.funcs {
            let pc = f.pc - b.bias;
            assert_eq!(without.lookup(pc), with.lookup(pc), "{label} {pc:#x}");
            assert_eq!(without.lookup(pc - 1), with.lookup(pc - 1), "{label} {pc:#x}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: truncated and mutated copies of a real table never panic.

use crate::test_support::Rng;

/// The table's bytes (from its section) and pcs to look up, of a real Go 1.19 and Go 1.27
/// binary.
fn real_tables() -> Vec<(Vec<u8>, u64, Vec<u64>)> {
    ["1.19-stripped", "1.27.3-stripped"]
        .iter()
        .map(|label| {
            let b = &go_binaries()[*label];
            let file = object::File::parse(&*b.elf).unwrap();
            let data = find_section(&file).unwrap().unwrap().0.to_vec();
            let text = GoPclntab::from_elf(&b.elf).unwrap().text_start();
            let pcs = b.funcs.iter().flat_map(|f| [f.pc - b.bias, f.pc - b.bias - 1]).collect();
            (data, text, pcs)
        })
        .collect()
}

fn exercise(tab: &GoPclntab, pcs: &[u64], rng: &mut Rng) {
    for &pc in pcs {
        let _ = tab.try_lookup(pc);
    }
    for _ in 0..32 {
        let _ = tab.try_lookup(tab.text_start().wrapping_add(rng.next() % 0x20_0000));
    }
}

#[test]
fn truncated_tables_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (data, text, pcs) in real_tables() {
        // Every length up to the header's end, then a few hundred spread over the table.
        let lens = (0..128).chain((0..300).map(|i| i * data.len() / 300));
        for len in lens {
            if let Ok(tab) = GoPclntab::from_table(&data[..len], Some(text)) {
                exercise(&tab, &pcs, &mut rng);
            }
        }
    }
}

#[test]
fn mutated_tables_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for (data, text, pcs) in real_tables() {
        for round in 0..300 {
            let mut bad = data.clone();
            // Early rounds hit the header and function table, later ones anywhere.
            let span = if round < 100 { 4096.min(bad.len()) } else { bad.len() };
            for _ in 0..1 + rng.below(16) {
                let at = rng.below(span);
                bad[at] = rng.next() as u8;
            }
            if let Ok(tab) = GoPclntab::from_table(&bad, Some(text)) {
                exercise(&tab, &pcs, &mut rng);
            }
        }
    }
}

#[test]
fn mutated_elf_files_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let b = &go_binaries()["1.19-stripped"];
    let pcs: Vec<u64> = b.funcs.iter().map(|f| f.pc).collect();
    let bare = without_section_headers(&b.elf);
    for round in 0..120 {
        let mut bad = if round % 2 == 0 { b.elf.clone() } else { bare.clone() };
        let len = bad.len();
        // Half the rounds hit the ELF and program headers (segment addresses and sizes).
        let span = if round % 4 < 2 { 0x200 } else { len };
        for _ in 0..1 + rng.below(64) {
            let at = rng.below(span);
            bad[at] = rng.next() as u8;
        }
        if round % 3 == 0 {
            bad.truncate(rng.below(len));
        }
        if let Ok(tab) = GoPclntab::from_elf(&bad) {
            exercise(&tab, &pcs, &mut rng);
        }
    }
}
