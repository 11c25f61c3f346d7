//! The symbolizer against real programs this test builds: a C program (`cc -O1 -g
//! -fno-omit-frame-pointer`) and a Go program (unstripped, and stripped for the fallback
//! hook), from tests/programs/. Each prints the addresses of named functions and waits on its
//! stdin; the tests pin it through /proc/PID/map_files and check the names and lines, also
//! from another mount namespace, and after the process exited and its binary was deleted.
//! Needs root (map_files needs CAP_SYS_ADMIN), `cc` and `go` (`cargo xtask setup`). The
//! timings are printed (`--nocapture`), not asserted.
mod common;

use std::{
    cell::RefCell,
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    rc::Rc,
    time::{Duration, Instant},
};

use tracer::stacks::symbolize::{
    AddressKind, FallbackFrame, FallbackModule, ModuleFallback, ResolveState, Resolved, Resolver,
    Symbolizer, SymbolizerConfig, pin_process,
};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/programs");

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests open /proc/PID/map_files, which needs CAP_SYS_ADMIN: run them as root \
         (cargo xtask test does)"
    );
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("symbolize").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    dir
}

fn run_tool(cmd: &mut Command, tool: &str, package: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}): run `cargo xtask setup`, which installs {package}")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds tests/programs/opener.c into `dir`.
fn build_c(dir: &Path) -> PathBuf {
    let out = dir.join("opener");
    run_tool(
        Command::new("cc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .arg(Path::new(PROGRAMS).join("opener.c")),
        "cc",
        "gcc",
    );
    out
}

/// Builds tests/programs/opener_go into `dir`, stripped of symbols and DWARF if asked.
fn build_go(dir: &Path, stripped: bool) -> PathBuf {
    let out = dir.join(if stripped { "opener-go-stripped" } else { "opener-go" });
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    cmd.arg("main.go")
        .current_dir(Path::new(PROGRAMS).join("opener_go"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"));
    run_tool(&mut cmd, "go", "golang-go");
    out
}

/// The 1-based line of `LINE:<name>` in a test program's source.
fn marker_line(source: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(Path::new(PROGRAMS).join(source)).expect("read source");
    let marker = format!("LINE:{name} ");
    let index = text
        .lines()
        .position(|l| format!("{l} ").contains(&marker))
        .unwrap_or_else(|| panic!("no marker {marker:?} in {source}"));
    u32::try_from(index + 1).expect("a line number fits u32")
}

/// A running test program: its pid and the addresses it printed (`name 0xaddr` lines, up to
/// `ready`). Killed on drop.
struct Program {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    addresses: HashMap<String, u64>,
}

impl Program {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn the program");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut addresses = HashMap::new();
        loop {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).expect("read the program's output");
            assert!(read > 0, "program exited before `ready`");
            let (name, value) = line.trim().split_once(' ').expect("a `name value` line");
            if name == "ready" {
                break;
            }
            let hex = value.trim_start_matches("0x");
            let address = u64::from_str_radix(hex, 16).expect("a hex address");
            addresses.insert(name.to_owned(), address);
        }
        let pid = child.id();
        Self { child, stdin, pid, addresses }
    }

    fn address(&self, name: &str) -> u64 {
        self.addresses[name]
    }

    /// Ends the process and reaps it: its pid no longer exists afterwards.
    fn kill(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        self.child.wait().expect("reap the program");
        assert!(!Path::new(&format!("/proc/{}", self.pid)).exists());
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `line` is right for a function's entry address marked `LINE:<name>` on its
/// declaration: the line table maps an entry without a prologue to the declaration and to the
/// body's first line (rows at one address), and the last row counts, as for addr2line.
fn is_entry_line(line: Option<u32>, source: &str, name: &str) -> bool {
    let declaration = marker_line(source, name);
    line.is_some_and(|l| l == declaration || l == declaration + 1)
}

/// The function (outermost frame) and the line it names.
fn function_and_line(r: &Resolved) -> (Option<&str>, Option<u32>) {
    let frame = r.frames.last().expect("at least one frame");
    (frame.function.as_deref(), frame.line)
}

fn check_c_functions(program: &Program, resolved: &[Resolved], binary_path: &str) {
    for (r, name) in resolved.iter().zip(["leak_connections", "tidy_close"]) {
        assert_eq!(r.state, ResolveState::Symbolized, "{name}: {r:?}");
        assert_eq!(r.address, program.address(name));
        let frame = r.frames.last().expect("at least one frame");
        assert_eq!(frame.function.as_deref(), Some(name), "{r:?}");
        assert!(frame.file.as_deref().is_some_and(|f| f.ends_with("opener.c")), "{r:?}");
        assert!(is_entry_line(frame.line, "opener.c", name), "{r:?}");
        assert_eq!(frame.module.as_deref(), Some(binary_path), "{r:?}");
    }
}

fn c_addresses(program: &Program) -> Vec<u64> {
    vec![program.address("leak_connections"), program.address("tidy_close")]
}

#[test]
fn c_functions_and_lines_through_a_pinned_process() {
    require_root();
    let dir = scratch("c");
    let binary = build_c(&dir);
    let program = Program::spawn(&mut Command::new(&binary));
    let pinned = pin_process(program.pid).unwrap();
    let path = binary.to_str().unwrap();
    let main_mapping =
        pinned.mapping_for(program.address("tidy_close")).expect("a mapping holds tidy_close");
    assert_eq!(main_mapping.path, path);
    let file = main_mapping.file.as_ref().expect("the binary is pinned");
    assert!(file.build_id().is_some_and(|id| !id.is_empty()), "gcc writes a GNU build ID");
    assert!(pinned.skipped().is_empty(), "{:?}", pinned.skipped());

    let mut resolver = Resolver::default();
    let resolved = resolver.symbolize(&pinned, &c_addresses(&program), AddressKind::Exact);
    check_c_functions(&program, &resolved, path);

    // A return address is read inside its call: the caller, at the call's line.
    let ret = program.address("return_in_main");
    let resolved = resolver.symbolize(&pinned, &[ret], AddressKind::Return);
    assert_eq!(
        function_and_line(&resolved[0]),
        (Some("main"), Some(marker_line("opener.c", "call")))
    );
    assert_eq!(resolved[0].frames.last().unwrap().offset, main_mapping.file_offset(ret));

    // libc is pinned too, and named from its symbol table.
    let libc = pinned
        .mappings()
        .iter()
        .find(|m| m.path.contains("libc.so"))
        .expect("the C program maps libc");
    let resolved = resolver.symbolize(&pinned, &[libc.start + 0x100], AddressKind::Exact);
    assert_eq!(resolved[0].frames[0].module.as_deref(), Some(libc.path.as_str()));
}

#[test]
fn go_functions_with_dwarf_and_the_timings_of_the_service() {
    require_root();
    let dir = scratch("go");
    let binary = build_go(&dir, false);
    let size = std::fs::metadata(&binary).unwrap().len();
    let program = Program::spawn(&mut Command::new(&binary));
    let names = [
        "main.openDB",
        "main.leakConnections",
        "main.main",
        "net/http.Get",
        "database/sql.Open",
        "encoding/json.Marshal",
        "encoding/xml.Marshal",
        "html/template.New",
        "net/rpc.Dial",
    ];
    let addresses: Vec<u64> = names.iter().map(|n| program.address(n)).collect();

    let symbolizer = Symbolizer::start(SymbolizerConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let pin_started = Instant::now();
    symbolizer.pin(program.pid).unwrap();
    let pin_time = pin_started.elapsed();
    let started = Instant::now();
    let first = rt.block_on(symbolizer.resolve_within(
        program.pid,
        &addresses,
        AddressKind::Exact,
        Duration::from_secs(30),
    ));
    let first_time = started.elapsed();
    for (r, name) in first.iter().zip(names) {
        assert_eq!(r.state, ResolveState::Symbolized, "{name}: {r:?}");
        assert_eq!(r.frames.last().unwrap().function.as_deref(), Some(name), "{r:?}");
    }
    for name in ["main.openDB", "main.leakConnections"] {
        let r = &first[names.iter().position(|n| *n == name).unwrap()];
        let frame = r.frames.last().unwrap();
        assert!(frame.file.as_deref().is_some_and(|f| f.ends_with("main.go")), "{r:?}");
        assert!(is_entry_line(frame.line, "opener_go/main.go", name), "{r:?}");
    }

    let started = Instant::now();
    let again = rt.block_on(symbolizer.resolve_within(
        program.pid,
        &addresses,
        AddressKind::Exact,
        Duration::from_secs(30),
    ));
    let cached_time = started.elapsed();
    assert_eq!(again, first);
    let stats = symbolizer.stats();
    assert_eq!(stats.requests, 1, "the second query was answered from the cache: {stats:?}");
    assert_eq!(stats.cached_addresses, names.len());

    // A fresh resolver, for the cost of the first stack without the service around it.
    let pinned = pin_process(program.pid).unwrap();
    let mut resolver = Resolver::default();
    let started = Instant::now();
    resolver.symbolize(&pinned, &addresses, AddressKind::Exact);
    let resolver_first = started.elapsed();
    let started = Instant::now();
    resolver.symbolize(&pinned, &addresses, AddressKind::Exact);
    let resolver_second = started.elapsed();
    println!(
        "timing: Go binary {:.1} MB: pin {pin_time:?}; first stack of {} addresses through the \
         service {first_time:?} (resolver alone {resolver_first:?}, then {resolver_second:?} \
         uncached); cached stack {cached_time:?}",
        size as f64 / 1e6,
        names.len()
    );
    println!("stats: {}", serde_json::to_string(&symbolizer.stats()).unwrap());
    symbolizer.shutdown();
}

#[test]
fn a_binary_visible_only_in_another_mount_namespace() {
    require_root();
    let dir = scratch("mntns");
    let binary = build_c(&dir);
    // Inside a private mount namespace, a tmpfs over `hidden` holds the copy that runs: from
    // here `hidden` is empty.
    let (mut cmd, inside) = common::in_private_mount_namespace(&binary, &dir.join("hidden"), &[]);
    let program = Program::spawn(&mut cmd);
    assert!(!inside.exists(), "{} is visible from the host mount namespace", inside.display());
    let pinned = pin_process(program.pid).unwrap();
    let path = inside.to_str().unwrap();
    let mapping = pinned.mapping_for(program.address("leak_connections")).unwrap();
    assert_eq!(mapping.path, path, "maps shows the path inside the namespace");
    let resolved =
        Resolver::default().symbolize(&pinned, &c_addresses(&program), AddressKind::Exact);
    check_c_functions(&program, &resolved, path);
}

#[test]
fn an_exited_process_whose_binary_was_deleted() {
    require_root();
    let dir = scratch("exited");
    let binary = build_c(&dir);
    let mut program = Program::spawn(&mut Command::new(&binary));
    let addresses = c_addresses(&program);
    let path = binary.to_str().unwrap().to_owned();

    // Both ways: a pinned process with a resolver, and the service, each pinned before exit.
    let pinned = pin_process(program.pid).unwrap();
    let symbolizer = Symbolizer::start(SymbolizerConfig::default()).unwrap();
    symbolizer.pin(program.pid).unwrap();
    program.kill();
    std::fs::remove_file(&binary).unwrap();

    let resolved = Resolver::default().symbolize(&pinned, &addresses, AddressKind::Exact);
    check_c_functions(&program, &resolved, &path);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let resolved = rt.block_on(symbolizer.resolve_within(
        program.pid,
        &addresses,
        AddressKind::Exact,
        Duration::from_secs(30),
    ));
    check_c_functions(&program, &resolved, &path);
    symbolizer.shutdown();
}

/// Descriptors of this process that point at `path` (deleted or not).
fn open_descriptors_of(path: &Path) -> usize {
    let target = path.to_str().expect("a UTF-8 path");
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|link| link.to_str().is_some_and(|l| l.trim_end_matches(" (deleted)") == target))
        .count()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_service_answers_in_time_shares_files_and_forgets() {
    require_root();
    let dir = scratch("service");
    let go = build_go(&dir, false);
    let c = build_c(&dir);
    let go_program = Program::spawn(&mut Command::new(&go));
    let c_one = Program::spawn(&mut Command::new(&c));
    let c_two = Program::spawn(&mut Command::new(&c));
    let symbolizer = Symbolizer::start(SymbolizerConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();

    // Two processes of one binary share its descriptor.
    symbolizer.pin(c_one.pid).unwrap();
    let one = symbolizer.stats().pinned_files;
    symbolizer.pin(c_two.pid).unwrap();
    assert_eq!(symbolizer.stats().pinned_files, one, "the second process pinned no new file");
    assert_eq!(open_descriptors_of(&c), 1);

    // The Go binary's DWARF takes a while to load: a query that may not wait is answered at
    // once with module+offset, and the thread finishes for the next one.
    symbolizer.pin(go_program.pid).unwrap();
    let address = go_program.address("main.openDB");
    let started = Instant::now();
    let now = rt.block_on(symbolizer.resolve_within(
        go_program.pid,
        &[address],
        AddressKind::Exact,
        Duration::ZERO,
    ));
    assert!(started.elapsed() < Duration::from_millis(50), "waited {:?}", started.elapsed());
    assert_eq!(now[0].state, ResolveState::Pending, "{now:?}");
    let placeholder = now[0].frames[0].to_string();
    assert!(placeholder.starts_with(&format!("{}+0x", go.display())), "{placeholder}");
    wait_for("the thread to cache main.openDB", || {
        symbolizer.cached(go_program.pid, &[address], AddressKind::Exact)[0].state
            == ResolveState::Symbolized
    });
    assert_eq!(symbolizer.stats().timeouts, 1);

    // The C processes, symbolized, then forgotten one by one: the shared file stays open
    // until the last one is forgotten, then its descriptors (ours and blazesym's) close.
    for p in [&c_one, &c_two] {
        let resolved = rt.block_on(symbolizer.resolve_within(
            p.pid,
            &c_addresses(p),
            AddressKind::Exact,
            Duration::from_secs(30),
        ));
        check_c_functions(p, &resolved, c.to_str().unwrap());
    }
    let before = symbolizer.stats();
    assert_eq!(before.pinned_processes, 3);
    assert_eq!(before.cached_addresses, 5);
    assert!(before.cached_bytes > 0);
    assert!(before.loaded_modules >= 2, "{before:?}");
    assert!(open_descriptors_of(&c) >= 1);
    symbolizer.forget(c_one.pid);
    assert!(open_descriptors_of(&c) >= 1, "c_two still pins the binary");
    let after_one = symbolizer.stats();
    assert_eq!((after_one.pinned_processes, after_one.cached_addresses), (2, 3));
    symbolizer.forget(c_two.pid);
    wait_for("the C binary's descriptors to close", || open_descriptors_of(&c) == 0);
    symbolizer.forget(go_program.pid);
    wait_for("everything to be freed", || {
        let s = symbolizer.stats();
        (s.pinned_processes, s.pinned_files, s.cached_addresses, s.cached_bytes, s.loaded_modules)
            == (0, 0, 0, 0, 0)
    });
    assert_eq!(open_descriptors_of(&go), 0);
    symbolizer.shutdown();
}

/// Records the virtual addresses it is asked about and names one.
struct Recorder {
    asked: Rc<RefCell<Vec<u64>>>,
    name_at: u64,
}

impl ModuleFallback for Recorder {
    fn resolve(&self, vaddr: u64) -> Vec<FallbackFrame> {
        self.asked.borrow_mut().push(vaddr);
        if vaddr != self.name_at {
            return Vec::new();
        }
        vec![FallbackFrame {
            function: "from.fallback".into(),
            file: Some("fallback.go".into()),
            line: Some(42),
            inlined: false,
        }]
    }
}

#[test]
fn a_stripped_go_binary_goes_to_the_fallback_hook() {
    require_root();
    let dir = scratch("stripped");
    let binary = build_go(&dir, true);
    let program = Program::spawn(&mut Command::new(&binary));
    let pinned = pin_process(program.pid).unwrap();
    let address = program.address("main.openDB");
    let file = pinned.mapping_for(address).unwrap().file.as_ref().unwrap();
    assert_eq!(file.gopclntab().map(|s| s.name.as_str()), Some(".gopclntab"));

    // Without a hook blazesym has nothing to go on.
    let alone = Resolver::default().symbolize(&pinned, &[address], AddressKind::Exact);
    assert_eq!(alone[0].state, ResolveState::NoSymbol, "{alone:?}");

    // With one, it is asked at the ELF virtual address (a non-PIE Go binary runs at its link
    // addresses, so it is the address itself), and its frame is the answer.
    let asked = Rc::new(RefCell::new(Vec::new()));
    let modules = Rc::new(RefCell::new(Vec::new()));
    let (asked_in, modules_in) = (Rc::clone(&asked), Rc::clone(&modules));
    let mut resolver = Resolver::with_fallback(move |module: &FallbackModule<'_>| {
        modules_in.borrow_mut().push(module.path.to_owned());
        Some(Box::new(Recorder { asked: Rc::clone(&asked_in), name_at: address })
            as Box<dyn ModuleFallback>)
    });
    let next = program.address("main.leakConnections");
    let resolved = resolver.symbolize(&pinned, &[address, next], AddressKind::Exact);
    assert_eq!(resolved[0].state, ResolveState::Symbolized, "{resolved:?}");
    let frame = &resolved[0].frames[0];
    assert_eq!(frame.to_string(), "from.fallback (fallback.go:42)");
    assert_eq!(frame.module.as_deref(), binary.to_str());
    assert_eq!(resolved[1].state, ResolveState::NoSymbol, "the hook knew nothing there");
    assert_eq!(*asked.borrow(), vec![address, next]);
    assert_eq!(*modules.borrow(), vec![binary.to_str().unwrap().to_owned()], "one hook per module");
}

#[test]
fn a_stripped_go_binary_is_named_by_its_own_symbol_table() {
    require_root();
    let dir = scratch("stripped-pclntab");
    let binary = build_go(&dir, true);
    let program = Program::spawn(&mut Command::new(&binary));
    let pinned = pin_process(program.pid).unwrap();
    let names = ["main.openDB", "main.leakConnections", "main.main", "net/http.Get"];
    let addresses: Vec<u64> = names.iter().map(|n| program.address(n)).collect();
    let mut resolver = Resolver::with_fallback(tracer::stacks::go_fallback());
    let resolved = resolver.symbolize(&pinned, &addresses, AddressKind::Exact);
    for (name, r) in names.iter().zip(&resolved) {
        assert_eq!(r.state, ResolveState::Symbolized, "{name}: {r:?}");
        let frame = r.frames.last().expect("a frame");
        assert_eq!(frame.function.as_deref(), Some(*name), "{r:?}");
        assert!(frame.file.as_deref().is_some_and(|f| f.ends_with(".go")), "{r:?}");
    }
}
