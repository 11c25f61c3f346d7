//! Times the daemon's symbolizer service (tracer::stacks::symbolize::Symbolizer) on a real
//! program, for `cargo xtask bench`: the first stack of a process (its binaries read and
//! indexed) and the same stack again (answered from the cache). Needs root (map_files).
//!
//! ```text
//! symbolize_timing PROGRAM [--apart]
//! ```
//!
//! With `--apart`, the symbolizer resolves through an inspector part forked off first, as the
//! daemon does by default (tracer::privsep::inspector): the cost of parsing in another process.
//!
//! PROGRAM prints `name 0xaddress` lines, then `ready`, and waits on its stdin, as
//! tracer/tests/programs/opener_go does. Prints one JSON object: the binary's size, the times in
//! nanoseconds, and how many of the addresses resolved to the name the program printed (a timing
//! of a wrong answer would be worthless, so the exit status is 1 unless all of them did).
use std::{
    io::{BufRead, BufReader},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use tracer::{
    privsep::inspector::Inspection,
    stacks::symbolize::{AddressKind, ResolveState, Symbolizer, SymbolizerConfig},
};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("symbolize_timing: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let program = std::env::args().nth(1).ok_or("usage: symbolize_timing PROGRAM [--apart]")?;
    // Forked while this process has one thread, as `tracer run` does.
    let inspection = if std::env::args().nth(2).as_deref() == Some("--apart") {
        let user = tracer::privsep::ClientsUser::resolve(tracer::privsep::DEFAULT_CLIENTS_USER)
            .map_err(|e| e.to_string())?;
        let inspector = tracer::privsep::inspector::spawn(
            &user,
            tracer::names::Switch::On,
            tracer::privsep::inspector::Fault::default(),
        )
        .map_err(|e| format!("the inspector part: {e:#}"))?;
        Inspection::Apart(std::sync::Arc::new(inspector))
    } else {
        Inspection::Here
    };
    let size = std::fs::metadata(&program).map_err(|e| format!("{program}: {e}"))?.len();
    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let result = measure(&mut child, size, &inspection);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn measure(
    child: &mut std::process::Child,
    size: u64,
    inspection: &Inspection,
) -> Result<bool, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut names = Vec::new();
    let mut addresses = Vec::new();
    loop {
        let line = lines
            .next()
            .ok_or("the program exited before `ready`")?
            .map_err(|e| format!("reading the program: {e}"))?;
        let (name, value) =
            line.trim().split_once(' ').ok_or_else(|| format!("not `name value`: {line}"))?;
        if name == "ready" {
            break;
        }
        let address = u64::from_str_radix(value.trim_start_matches("0x"), 16)
            .map_err(|e| format!("{value}: {e}"))?;
        names.push(name.to_owned());
        addresses.push(address);
    }
    let pid = child.id();
    let config = SymbolizerConfig {
        fallback: Some(tracer::stacks::go_fallback()),
        elsewhere: inspection.resolver(),
        ..SymbolizerConfig::default()
    };
    let symbolizer = Symbolizer::start(config).map_err(|e| format!("symbolizer: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let started = Instant::now();
    symbolizer.pin(pid).map_err(|e| format!("pinning {pid}: {e}"))?;
    let pin_ns = started.elapsed().as_nanos();
    let resolve = || {
        let started = Instant::now();
        let out = rt.block_on(symbolizer.resolve_within(
            pid,
            &addresses,
            AddressKind::Exact,
            Duration::from_secs(30),
        ));
        (started.elapsed().as_nanos(), out)
    };
    let (first_ns, first) = resolve();
    let (cached_ns, _) = resolve();
    let named = first
        .iter()
        .zip(&names)
        .filter(|(r, name)| {
            r.state == ResolveState::Symbolized
                && r.frames.last().and_then(|f| f.function.as_deref()) == Some(name.as_str())
        })
        .count();
    symbolizer.shutdown();
    let unwind = unwind_timing(inspection)?;
    println!(
        "{}",
        serde_json::json!({
            "binary_bytes": size,
            "addresses": addresses.len(),
            "named": named,
            "pin_ns": pin_ns as u64,
            "first_stack_ns": first_ns as u64,
            "cached_stack_ns": cached_ns as u64,
            "unwind_sites": unwind.sites,
            "unwind_first_ns": unwind.first_ns,
            "unwind_next_ns": unwind.next_ns,
        })
    );
    Ok(named == addresses.len() && unwind.known == unwind.sites)
}

/// The C library functions whose unwind rules [`unwind_timing`] asks for: call sites where
/// connections are opened from, as the event path meets them.
const UNWIND_SITES: [&std::ffi::CStr; 12] = [
    c"connect",
    c"socket",
    c"close",
    c"accept4",
    c"read",
    c"write",
    c"sendto",
    c"recvfrom",
    c"setsockopt",
    c"getsockopt",
    c"shutdown",
    c"poll",
];

struct UnwindTiming {
    sites: usize,
    /// Rules found (not `Unknown`): every C library function has `.eh_frame` rules.
    known: usize,
    /// The first call site: the library's `.eh_frame` read, then searched.
    first_ns: u64,
    /// The median of the others: a search, plus a round trip to the inspector part when apart.
    next_ns: u64,
}

/// Unwind rules at the entry of C library functions of this very process, each asked once, as
/// the event path asks at a call site it has not met before (`Unwinder` caches rules after):
/// read here, or asked of the inspector part (one round trip each) with `Inspection::Apart`.
fn unwind_timing(inspection: &Inspection) -> Result<UnwindTiming, String> {
    use tracer::stacks::unwind::{AddressRole, FrameRule, ModuleCfi};
    let process = tracer::stacks::symbolize::pin_process(std::process::id())
        .map_err(|e| format!("pinning this process: {e}"))?;
    let mut sites = Vec::new();
    for name in UNWIND_SITES {
        // SAFETY: dlsym with a NUL-terminated name only looks the symbol up.
        let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as u64;
        let mapping = process
            .mapping_for(address)
            .ok_or_else(|| format!("{name:?} at {address:#x} is in no mapping"))?;
        let file = mapping.file.clone().ok_or_else(|| format!("{name:?}'s mapping has no file"))?;
        sites.push((file, mapping.file_offset(address)));
    }
    let rules = inspection.rules();
    let mut local: Option<ModuleCfi> = None;
    let mut times = Vec::new();
    let mut known = 0;
    for (file, offset) in &sites {
        let started = Instant::now();
        let rule = match &rules {
            Some(remote) => remote.rule(file, *offset, AddressRole::Current),
            None => {
                if local.is_none() {
                    let cache = object::ReadCache::new(file.file());
                    local = Some(
                        ModuleCfi::from_elf(&cache)
                            .map_err(|e| format!("the C library's unwind rules: {e}"))?,
                    );
                }
                local.as_ref().map_or(FrameRule::Unknown, |cfi| {
                    cfi.rule_for_offset(*offset, AddressRole::Current)
                })
            }
        };
        times.push(started.elapsed().as_nanos() as u64);
        known += usize::from(rule != FrameRule::Unknown);
    }
    let first_ns = times.first().copied().unwrap_or(0);
    let mut next = times[1..].to_vec();
    next.sort_unstable();
    Ok(UnwindTiming { sites: sites.len(), known, first_ns, next_ns: next[next.len() / 2] })
}
