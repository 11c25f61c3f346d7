//! Opener stacks: the user-space code that opened each connection, as frames.
//! [`symbolize`] pins a process's binaries and names addresses (blazesym); [`gopclntab`] reads
//! Go's own symbol table, which names functions in stripped Go binaries; [`groups`] is what
//! answers and leak evidence show of connections grouped by stack.
pub mod gopclntab;
pub mod groups;
pub mod store;
pub mod symbolize;
pub mod unwind;

use std::os::unix::fs::FileExt;

use gopclntab::GoPclntab;
use symbolize::{FallbackFactory, FallbackFrame, FallbackModule, ModuleFallback};

/// The largest binary whose Go symbol table the fallback reads (it reads the whole file once).
const GO_FALLBACK_MAX_BYTES: u64 = 512 << 20;

/// The symbolizer's fallback for Go binaries: where blazesym finds no symbol (a stripped
/// binary, `-ldflags "-s -w"`, the norm in container images), Go's own `.gopclntab` still
/// names the function and its file:line.
pub fn go_fallback() -> FallbackFactory {
    Box::new(|module: &FallbackModule<'_>| {
        let table = read_go_table(module)
            .map_err(|e| log::debug!("no Go symbol table in {}: {e}", module.path))
            .ok()?;
        Some(Box::new(GoFallback(table)) as Box<dyn ModuleFallback>)
    })
}

fn read_go_table(module: &FallbackModule<'_>) -> Result<GoPclntab, String> {
    let size = module.file.metadata().map_err(|e| format!("stat: {e}"))?.len();
    if size > GO_FALLBACK_MAX_BYTES {
        return Err(format!("{size} bytes, more than the {GO_FALLBACK_MAX_BYTES} read"));
    }
    let mut bytes = vec![0u8; usize::try_from(size).map_err(|e| e.to_string())?];
    // Positioned reads: the descriptor is shared with the symbolizer.
    module.file.read_exact_at(&mut bytes, 0).map_err(|e| format!("read: {e}"))?;
    GoPclntab::from_elf(&bytes).map_err(|e| e.to_string())
}

struct GoFallback(GoPclntab);

impl ModuleFallback for GoFallback {
    fn resolve(&self, vaddr: u64) -> Vec<FallbackFrame> {
        let Some(frame) = self.0.lookup(vaddr) else { return Vec::new() };
        // Innermost first: the inlined calls (listed outermost first), then the function
        // whose code holds the address.
        let mut frames: Vec<FallbackFrame> = frame
            .inlined
            .iter()
            .rev()
            .map(|f| FallbackFrame {
                function: f.function.clone(),
                file: f.file.clone(),
                line: f.line,
                inlined: true,
            })
            .collect();
        frames.push(FallbackFrame {
            function: frame.function,
            file: frame.file,
            line: frame.line,
            inlined: false,
        });
        frames
    }
}

/// The first frame of `frames` (innermost first) outside the language runtime, the standard
/// library and the C library: the code a user recognises as theirs (`main.openDB`, not
/// `syscall.connect` or `__libc_connect`).
pub fn leading_function(frames: &[symbolize::Frame]) -> Option<String> {
    frames.iter().find(|f| !is_runtime(f)).and_then(|f| f.function.clone())
}

/// A frame of Go's runtime or standard library, or of the C library or dynamic loader.
fn is_runtime(frame: &symbolize::Frame) -> bool {
    let Some(function) = frame.function.as_deref() else { return true };
    let module = frame.module.as_deref().unwrap_or_default();
    let file_name = module.rsplit('/').next().unwrap_or_default();
    if file_name.starts_with("libc.so") || file_name.starts_with("ld-linux") {
        return true;
    }
    is_go_std(function)
}

/// `net.(*Dialer).DialContext`, `internal/poll.(*FD).Init`, `runtime.goexit`: a Go function
/// whose import path's first element has no dot (the standard library's), other than `main`.
fn is_go_std(function: &str) -> bool {
    // The package path ends at the first '.' after the last '/'.
    let after_slash = function.rfind('/').map_or(0, |i| i + 1);
    let Some(dot) = function[after_slash..].find('.') else { return false };
    let package = &function[..after_slash + dot];
    let first = package.split('/').next().unwrap_or_default();
    // C and C++ symbols have no package: `leak_connections`, `ns::f` (no '.' before '(').
    if package.is_empty() || package.contains(['(', ':', ' ', '<']) {
        return false;
    }
    package != "main" && !first.contains('.')
}

#[cfg(test)]
mod leading_tests {
    use super::*;

    fn frame(function: &str, module: &str) -> symbolize::Frame {
        symbolize::Frame {
            function: Some(function.into()),
            file: None,
            line: None,
            module: Some(module.into()),
            offset: 0,
            inlined: false,
        }
    }

    #[test]
    fn the_leading_function_skips_runtime_std_and_libc() {
        let go = [
            frame("syscall.connect", "/app"),
            frame("net.(*netFD).connect", "/app"),
            frame("internal/poll.(*FD).Init", "/app"),
            frame("main.openDB", "/app"),
            frame("main.main", "/app"),
        ];
        assert_eq!(leading_function(&go).as_deref(), Some("main.openDB"));
        let module = [frame("net.Dial", "/app"), frame("github.com/acme/db.(*Pool).dial", "/app")];
        assert_eq!(leading_function(&module).as_deref(), Some("github.com/acme/db.(*Pool).dial"));
        let c = [
            frame("__libc_connect", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            frame("leak_connections", "/app"),
        ];
        assert_eq!(leading_function(&c).as_deref(), Some("leak_connections"));
        assert_eq!(leading_function(&[frame("runtime.goexit", "/app")]), None);
    }
}
