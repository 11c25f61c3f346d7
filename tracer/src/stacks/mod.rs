//! Opener stacks: the user-space code that opened each connection, as frames.
//! [`symbolize`] pins a process's binaries and names addresses (blazesym); [`gopclntab`] reads
//! Go's own symbol table, which names functions in stripped Go binaries.
pub mod gopclntab;
pub mod store;
pub mod symbolize;

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
