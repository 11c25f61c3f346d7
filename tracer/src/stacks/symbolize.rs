//! User-space addresses of opener stacks as frames: function, file, line, module.
//!
//! Three layers:
//! - [`pin_process`] reads `/proc/PID/maps` and opens every executable file mapping through
//!   `/proc/PID/map_files/<start>-<end>`. That open works for binaries in another mount
//!   namespace (a container's) and for deleted or replaced binaries, and the descriptor it
//!   returns keeps the file readable after the process exited. It needs CAP_SYS_ADMIN.
//! - [`Resolver`] symbolizes addresses of a [`PinnedProcess`] with blazesym, by file offset in
//!   `/proc/self/fd/N`: nothing of the live process is read, so an exited process symbolizes
//!   as a live one. A [`FallbackFactory`] can name what blazesym cannot (a stripped Go binary,
//!   through its `.gopclntab`). A `Resolver` is not `Send` (blazesym's symbolizer is not).
//! - [`Symbolizer`] is the service the daemon uses: one dedicated thread owns a `Resolver`;
//!   requests travel over a bounded queue and are answered on a oneshot channel, so nothing
//!   symbolizes on the event loop. Results are cached per (pid, address, kind) as owned strings,
//!   readable after the process exited, until [`Symbolizer::forget`]. A query waits a bounded
//!   time ([`Symbolizer::resolve_within`]): what is not ready yet is `module+0xoffset`, and
//!   the thread finishes it for the next query. Every cache is bounded ([`Limits`]) and
//!   reports its size ([`Symbolizer::stats`]).
//!
//! Addresses are absolute addresses in the process. Offsets shown are file offsets in the
//! module (as `/proc/PID/maps` counts them). In position-independent executables and shared
//! libraries the code segment's file offsets and virtual addresses usually coincide, so this is
//! also the address `objdump` and `addr2line` use; a non-PIE binary (Go's default) links at
//! 0x400000, and there the address `objdump` shows is the offset plus 0x400000.
//!
//! Left to the caller: a pid is a process until [`Symbolizer::forget`]; forget it when the
//! process exits, before the pid can be reused. An `exec` replaces a pid's mappings: the next
//! pin of that pid (explicit, or the thread's on an address outside every pinned mapping)
//! drops its cached frames unless every old mapping is still there. Code mapped without a file
//! (JIT) and the vDSO are shown as `[vdso]+0xoffset` or the bare offset.

pub(crate) mod elf;
pub(crate) mod maps;

use std::{
    collections::HashMap,
    fmt,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Duration,
};

use blazesym::symbolize::{
    self as blaze, CodeInfo, Input, Sym, Symbolized,
    source::{Elf, Source},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use elf::ElfSection;
pub use maps::{
    MapsEntry, MapsLineError, MapsPath, parse as parse_maps, parse_line as parse_maps_line,
};

/// What failed, naming the path or the call.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("reading /proc/{pid}/maps: {source}")]
    ReadMaps { pid: u32, source: io::Error },

    #[error(
        "no executable mapping of process {pid} could be opened; first failure: {path}: {source} \
         (opening /proc/PID/map_files needs CAP_SYS_ADMIN)",
        path = path.display()
    )]
    NothingPinned { pid: u32, path: PathBuf, source: io::Error },

    #[error("pinning process {pid} would exceed the limit of {limit} {what}")]
    Limit { pid: u32, what: &'static str, limit: usize },

    #[error("the symbolizer's queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },

    #[error("the symbolizer thread has stopped")]
    Stopped,

    #[error("starting the symbolizer thread: {0}")]
    Spawn(io::Error),
}

/// One frame of a stack. An address yields several frames when the compiler inlined functions
/// there: innermost first, each `inlined` but the last (the function the code belongs to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Frame {
    /// The function, demangled; `None` when nothing named the address.
    pub function: Option<String>,
    /// The source file, as the debug information names it.
    pub file: Option<String>,
    /// The line in `file`.
    pub line: Option<u32>,
    /// The binary, by the path the process sees (in its mount namespace), or a pseudo path
    /// (`[vdso]`); `None` when no pinned mapping holds the address.
    pub module: Option<String>,
    /// Offset in `module`'s file (or the address itself when `module` is `None`).
    pub offset: u64,
    /// This function was inlined into the next frame.
    pub inlined: bool,
}

impl fmt::Display for Frame {
    /// `function (file:line)`, or `module+0xoffset` when unnamed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.function {
            Some(function) => {
                f.write_str(function)?;
                match (&self.file, self.line) {
                    (Some(file), Some(line)) => write!(f, " ({file}:{line})")?,
                    (Some(file), None) => write!(f, " ({file})")?,
                    _ => {}
                }
                if self.inlined {
                    f.write_str(" [inlined]")?;
                }
                Ok(())
            }
            None => match &self.module {
                Some(module) => write!(f, "{module}+{:#x}", self.offset),
                None => write!(f, "{:#x}", self.offset),
            },
        }
    }
}

/// How far an address got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolveState {
    /// Named (by debug information, the symbol table, or a fallback resolver).
    Symbolized,
    /// In a pinned module, but nothing names it: the frame is `module+0xoffset`.
    NoSymbol,
    /// Not symbolized within the time the caller gave: `module+0xoffset` for now.
    Pending,
    /// No pinned mapping holds it (unknown process, or code mapped by a process that exited
    /// before it was pinned again).
    Unmapped,
}

/// One address and its frames (at least one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resolved {
    pub address: u64,
    pub state: ResolveState,
    pub frames: Vec<Frame>,
}

impl Resolved {
    pub(crate) fn placeholder(
        address: u64,
        state: ResolveState,
        mapping: Option<&Mapping>,
    ) -> Self {
        let (module, offset) = match mapping {
            Some(m) => (m.module(), m.file_offset(address)),
            None => (None, address),
        };
        let frame =
            Frame { function: None, file: None, line: None, module, offset, inlined: false };
        Self { address, state, frames: vec![frame] }
    }

    /// An estimate of the heap bytes this holds, for the cache's bound.
    fn heap_bytes(&self) -> usize {
        let strings = |f: &Frame| {
            [&f.function, &f.file, &f.module]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::capacity))
                .sum::<usize>()
        };
        self.frames.capacity() * size_of::<Frame>() + self.frames.iter().map(strings).sum::<usize>()
    }
}

/// What the addresses are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// Return addresses, as a captured user stack holds (the first one, the instruction after
    /// the `syscall`, too): looked up at `address - 1`, inside the call instruction, so that
    /// the line is the call's, and a call that ends a function is not read as the next one.
    Return,
    /// Addresses of instructions themselves (a function's entry, a sampled instruction
    /// pointer): looked up as they are.
    Exact,
}

impl AddressKind {
    pub(crate) fn lookup(self, address: u64) -> u64 {
        match self {
            Self::Return => address.saturating_sub(1),
            Self::Exact => address,
        }
    }
}

/// Identifies a file's contents the way blazesym's cache does: one pinned file per distinct
/// binary, however many processes map it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// An executable file kept open: readable by `/proc/self/fd/N` as long as this lives, whatever
/// happens to the process or the path.
#[derive(Debug)]
pub struct PinnedFile {
    file: File,
    fd_path: PathBuf,
    key: FileKey,
    build_id: Option<Vec<u8>>,
    layout: Option<elf::ElfLayout>,
}

impl PinnedFile {
    /// Opens `path`; reads its ELF layout and build ID unless `parsed_elsewhere` (the daemon
    /// with an inspector part: it only opens the files, and hands them over).
    fn open(path: &std::path::Path, parsed_elsewhere: bool) -> io::Result<Self> {
        Self::from_file(File::open(path)?, !parsed_elsewhere)
    }

    /// Pins `file`, open already (the inspector part gets the daemon's); with `parse`, reads
    /// its ELF layout and build ID.
    pub fn from_file(file: File, parse: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // Both are cheap (headers and notes); a file that is not ELF has neither.
        let layout = if parse { elf::read_layout(&file).ok().flatten() } else { None };
        let build_id = match layout {
            Some(_) => blazesym::helper::read_elf_build_id(&fd_path)
                .ok()
                .flatten()
                .map(|id| id.into_owned()),
            None => None,
        };
        Ok(Self { file, fd_path, key, build_id, layout })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its device and inode: the same file whichever process maps it.
    pub fn dev_ino(&self) -> (u64, u64) {
        (self.key.dev, self.key.ino)
    }

    /// `/proc/self/fd/N`: this process's path to the file.
    pub fn fd_path(&self) -> &std::path::Path {
        &self.fd_path
    }

    /// The GNU build ID, when the file has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.key.size
    }

    /// The `.gopclntab` section, when the file has one.
    pub fn gopclntab(&self) -> Option<&ElfSection> {
        self.layout.as_ref()?.gopclntab.as_ref()
    }
}

/// An executable mapping of a pinned process.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The path as the process sees it (without ` (deleted)`), or a pseudo path (`[vdso]`);
    /// empty for anonymous executable memory.
    pub path: String,
    /// The kernel showed the file as deleted when it was pinned.
    pub deleted: bool,
    /// The open file; `None` for the vDSO and anonymous memory.
    pub file: Option<Arc<PinnedFile>>,
}

impl Mapping {
    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// The file offset of `address` (which this mapping holds).
    pub fn file_offset(&self, address: u64) -> u64 {
        address.wrapping_sub(self.start).wrapping_add(self.offset)
    }

    fn module(&self) -> Option<String> {
        (!self.path.is_empty()).then(|| self.path.clone())
    }

    fn same_as(&self, other: &Mapping) -> bool {
        self.start == other.start
            && self.end == other.end
            && self.offset == other.offset
            && self.file.as_ref().map(|f| f.key) == other.file.as_ref().map(|f| f.key)
    }
}

/// A process's executable mappings with their files held open: symbolizes its addresses even
/// after it exited.
#[derive(Debug)]
pub struct PinnedProcess {
    pid: u32,
    /// Sorted by `start`.
    mappings: Vec<Mapping>,
    skipped: Vec<String>,
}

impl PinnedProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// What could not be pinned, one line each (an unreadable `maps` line, a mapping whose
    /// map_files entry did not open): kept to be reported, never fatal on its own.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The mapping holding `address`.
    pub fn mapping_for(&self, address: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= address);
        i.checked_sub(1).map(|i| &self.mappings[i]).filter(|m| m.contains(address))
    }

    /// The distinct open files.
    pub fn files(&self) -> impl Iterator<Item = &Arc<PinnedFile>> {
        let mut seen = Vec::<FileKey>::new();
        self.mappings.iter().filter_map(|m| m.file.as_ref()).filter(move |f| {
            let new = !seen.contains(&f.key);
            if new {
                seen.push(f.key);
            }
            new
        })
    }

    /// A process pinned by another one (the daemon, for the inspector part): its mappings,
    /// with the files it handed over.
    pub fn from_mappings(pid: u32, mut mappings: Vec<Mapping>) -> Self {
        mappings.sort_by_key(|m| m.start);
        Self { pid, mappings, skipped: Vec::new() }
    }

    /// Every mapping of `self` is in `newer` too (same range, offset and file).
    fn is_subset_of(&self, newer: &PinnedProcess) -> bool {
        self.mappings.iter().all(|m| newer.mappings.iter().any(|n| m.same_as(n)))
    }
}

/// Pins process `pid`: reads its maps and opens each executable file mapping through
/// `/proc/PID/map_files/`. Fails when the maps cannot be read (the process is gone) or when
/// executable file mappings exist and none opened (no CAP_SYS_ADMIN).
pub fn pin_process(pid: u32) -> Result<PinnedProcess, SymbolizeError> {
    pin_with(pid, false, &|_| None)
}

/// [`pin_process`], reusing the files `known` already holds open (no second descriptor, no
/// second parse).
fn pin_with(
    pid: u32,
    parsed_elsewhere: bool,
    known: &dyn Fn(&FileKey) -> Option<Arc<PinnedFile>>,
) -> Result<PinnedProcess, SymbolizeError> {
    let maps_path = format!("/proc/{pid}/maps");
    let contents =
        std::fs::read(&maps_path).map_err(|source| SymbolizeError::ReadMaps { pid, source })?;
    let (entries, bad_lines) = maps::parse(&String::from_utf8_lossy(&contents));
    let mut skipped: Vec<String> = bad_lines.iter().map(ToString::to_string).collect();
    let mut first_failure = None;
    let mut opened: Vec<Arc<PinnedFile>> = Vec::new();
    let mut mappings = Vec::new();
    for entry in entries.into_iter().filter(|e| e.executable) {
        let (path, deleted) = match &entry.path {
            MapsPath::File { path, deleted } => (path.clone(), *deleted),
            MapsPath::Pseudo(p) | MapsPath::Other(p) => (p.clone(), false),
            MapsPath::Anonymous => (String::new(), false),
        };
        let mut file = None;
        if entry.is_executable_file() {
            let link = PathBuf::from(format!("/proc/{pid}/map_files/{}", entry.map_files_name()));
            match PinnedFile::open(&link, parsed_elsewhere) {
                Ok(f) => {
                    let shared = opened
                        .iter()
                        .find(|o| o.key == f.key)
                        .cloned()
                        .or_else(|| known(&f.key))
                        .unwrap_or_else(|| Arc::new(f));
                    if !opened.iter().any(|o| Arc::ptr_eq(o, &shared)) {
                        opened.push(Arc::clone(&shared));
                    }
                    file = Some(shared);
                }
                Err(e) => {
                    skipped.push(format!("{} ({path}): {e}", link.display()));
                    first_failure.get_or_insert((link, e));
                    continue;
                }
            }
        }
        mappings.push(Mapping {
            start: entry.start,
            end: entry.end,
            offset: entry.offset,
            path,
            deleted,
            file,
        });
    }
    if opened.is_empty()
        && let Some((path, source)) = first_failure
    {
        return Err(SymbolizeError::NothingPinned { pid, path, source });
    }
    mappings.sort_by_key(|m| m.start);
    Ok(PinnedProcess { pid, mappings, skipped })
}

/// Names what blazesym cannot in one module (a Go binary stripped of its symbol table and
/// DWARF still has its `.gopclntab`). Made once per module by a [`FallbackFactory`] and kept
/// as long as the module is pinned.
pub trait ModuleFallback {
    /// The frames at virtual address `vaddr` (as the ELF file's program headers lay it out),
    /// innermost first; empty when it knows nothing there.
    fn resolve(&self, vaddr: u64) -> Vec<FallbackFrame>;
}

/// A frame a fallback resolver found (module and offset are the symbolizer's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
}

/// The module a [`FallbackFactory`] is offered: only ELF files with a `.gopclntab` section.
pub struct FallbackModule<'a> {
    pub file: &'a File,
    /// The path as the process saw it (for messages).
    pub path: &'a str,
    pub section: &'a ElfSection,
}

/// Builds the fallback resolver of a module, or `None` when it cannot read it. Consulted
/// when blazesym finds no symbol, or a symbol without a source line, in an ELF file that has
/// a `.gopclntab` section. Runs on the symbolizer's thread.
pub type FallbackFactory =
    Box<dyn Fn(&FallbackModule<'_>) -> Option<Box<dyn ModuleFallback>> + Send>;

/// A [`FallbackFactory`] that need not be `Send` (a [`Resolver`] stays on its thread).
type LocalFallbackFactory = Box<dyn Fn(&FallbackModule<'_>) -> Option<Box<dyn ModuleFallback>>>;

/// What the resolver knows of a module it symbolized in.
struct ModuleState {
    file: Weak<PinnedFile>,
    fd_path: PathBuf,
    /// `None`: not built yet; `Some(None)`: the factory could not read the module.
    fallback: Option<Option<Box<dyn ModuleFallback>>>,
}

/// What the symbolizer's thread resolves with: a [`Resolver`] of its own, or the inspector
/// part's through its link (crate::privsep::inspector).
pub trait Resolve {
    /// Symbolizes `addresses` of `process`, one [`Resolved`] each, in order.
    fn symbolize(
        &mut self,
        process: &PinnedProcess,
        addresses: &[u64],
        kind: AddressKind,
    ) -> Vec<Resolved>;
    /// Frees what is held for modules no process pins any more; returns how many.
    fn sweep(&mut self) -> usize;
    /// Modules whose data is held, and their files' total size.
    fn loaded_modules(&self) -> (usize, u64);
    /// Modules that could not be read, and the last such error.
    fn errors(&self) -> (u64, Option<&str>);
}

impl Resolve for Resolver {
    fn symbolize(
        &mut self,
        process: &PinnedProcess,
        addresses: &[u64],
        kind: AddressKind,
    ) -> Vec<Resolved> {
        Resolver::symbolize(self, process, addresses, kind)
    }

    fn sweep(&mut self) -> usize {
        Resolver::sweep(self)
    }

    fn loaded_modules(&self) -> (usize, u64) {
        Resolver::loaded_modules(self)
    }

    fn errors(&self) -> (u64, Option<&str>) {
        Resolver::errors(self)
    }
}

/// Symbolizes addresses of pinned processes on the thread that owns it (blazesym's
/// symbolizer is not `Send`). Keeps each module's parsed debug information until
/// [`Resolver::sweep`] finds no process pins the module any more.
pub struct Resolver {
    blaze: blaze::Symbolizer,
    fallback: Option<LocalFallbackFactory>,
    modules: HashMap<FileKey, ModuleState>,
    errors: u64,
    last_error: Option<String>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    /// A resolver with blazesym alone.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A resolver that asks `factory`'s resolvers where blazesym names nothing (see
    /// [`FallbackFactory`]).
    pub fn with_fallback(
        factory: impl Fn(&FallbackModule<'_>) -> Option<Box<dyn ModuleFallback>> + 'static,
    ) -> Self {
        Self::build(Some(Box::new(factory)))
    }

    fn build(fallback: Option<LocalFallbackFactory>) -> Self {
        let blaze = blaze::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self { blaze, fallback, modules: HashMap::new(), errors: 0, last_error: None }
    }

    /// Symbolizes `addresses` of `process`, one [`Resolved`] each, in order.
    pub fn symbolize(
        &mut self,
        process: &PinnedProcess,
        addresses: &[u64],
        kind: AddressKind,
    ) -> Vec<Resolved> {
        let mut out: Vec<Option<Resolved>> = vec![None; addresses.len()];
        // Per mapping (index), the addresses it holds: one blazesym call per module.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, &address) in addresses.iter().enumerate() {
            let lookup = kind.lookup(address);
            let index = process.mappings.partition_point(|m| m.start <= lookup).checked_sub(1);
            match index.filter(|&m| process.mappings[m].contains(lookup)) {
                Some(m) if process.mappings[m].file.is_some() => {
                    match groups.iter_mut().find(|(g, _)| *g == m) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((m, vec![i])),
                    }
                }
                Some(m) => {
                    let mapping = &process.mappings[m];
                    out[i] =
                        Some(Resolved::placeholder(address, ResolveState::NoSymbol, Some(mapping)));
                }
                None => out[i] = Some(Resolved::placeholder(address, ResolveState::Unmapped, None)),
            }
        }
        for (m, members) in groups {
            let mapping = &process.mappings[m];
            let lookups: Vec<u64> = members.iter().map(|&i| kind.lookup(addresses[i])).collect();
            for (&i, resolved) in
                members.iter().zip(self.symbolize_in(mapping, &lookups, &members, addresses))
            {
                out[i] = Some(resolved);
            }
        }
        out.into_iter()
            .zip(addresses)
            .map(|(r, &a)| {
                r.unwrap_or_else(|| Resolved::placeholder(a, ResolveState::NoSymbol, None))
            })
            .collect()
    }

    fn symbolize_in(
        &mut self,
        mapping: &Mapping,
        lookups: &[u64],
        members: &[usize],
        addresses: &[u64],
    ) -> Vec<Resolved> {
        let Some(file) = mapping.file.as_ref() else { return Vec::new() };
        self.track(file);
        let offsets: Vec<u64> = lookups.iter().map(|&a| mapping.file_offset(a)).collect();
        let module = mapping.module();
        let source = Source::Elf(Elf::new(&file.fd_path));
        let symbolized = match self.blaze.symbolize(&source, Input::FileOffset(&offsets)) {
            Ok(symbolized) => symbolized,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(format!("symbolizing in {}: {e}", mapping.path));
                Vec::new()
            }
        };
        let mut resolved: Vec<Resolved> = members
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let address = addresses[i];
                let offset = mapping.file_offset(address);
                match symbolized.get(j) {
                    Some(Symbolized::Sym(sym)) => Resolved {
                        address,
                        state: ResolveState::Symbolized,
                        frames: frames_of(sym, module.as_deref(), offset),
                    },
                    _ => Resolved::placeholder(address, ResolveState::NoSymbol, Some(mapping)),
                }
            })
            .collect();
        // Go's own table, where blazesym found no name or no line.
        if let Some(section) = file.gopclntab() {
            for (j, r) in resolved.iter_mut().enumerate() {
                let has_line = r.frames.last().is_some_and(|f| f.line.is_some());
                if r.state == ResolveState::Symbolized && has_line {
                    continue;
                }
                let Some(vaddr) = file.layout.as_ref().and_then(|l| l.vaddr_of(offsets[j])) else {
                    continue;
                };
                let frames = self.fallback_frames(file, mapping, section, vaddr);
                if !frames.is_empty() {
                    let offset = mapping.file_offset(r.address);
                    r.state = ResolveState::Symbolized;
                    r.frames = frames
                        .into_iter()
                        .map(|f| Frame {
                            function: Some(f.function),
                            file: f.file,
                            line: f.line,
                            module: module.clone(),
                            offset,
                            inlined: f.inlined,
                        })
                        .collect();
                }
            }
        }
        resolved
    }

    fn fallback_frames(
        &mut self,
        file: &Arc<PinnedFile>,
        mapping: &Mapping,
        section: &ElfSection,
        vaddr: u64,
    ) -> Vec<FallbackFrame> {
        let Some(factory) = &self.fallback else { return Vec::new() };
        let Some(state) = self.modules.get_mut(&file.key) else { return Vec::new() };
        let fallback = state.fallback.get_or_insert_with(|| {
            factory(&FallbackModule { file: &file.file, path: &mapping.path, section })
        });
        fallback.as_ref().map(|f| f.resolve(vaddr)).unwrap_or_default()
    }

    /// Remembers that blazesym holds data of `file` (by its fd path), to evict it once no
    /// process pins it.
    fn track(&mut self, file: &Arc<PinnedFile>) {
        let state = self.modules.entry(file.key).or_insert_with(|| ModuleState {
            file: Arc::downgrade(file),
            fd_path: file.fd_path.clone(),
            fallback: None,
        });
        if !Weak::ptr_eq(&state.file, &Arc::downgrade(file)) {
            // The same file pinned again after it was released, maybe under another fd.
            let stale = std::mem::replace(&mut state.fd_path, file.fd_path.clone());
            state.file = Arc::downgrade(file);
            state.fallback = None;
            let _ = self.blaze.evict(&blaze::evict::Elf::new(stale).into());
        }
    }

    /// Frees blazesym's data (parsed DWARF, its own descriptor) of every module no process
    /// pins any more. Returns how many it freed.
    pub fn sweep(&mut self) -> usize {
        let dead: Vec<FileKey> = self
            .modules
            .iter()
            .filter(|(_, s)| s.file.strong_count() == 0)
            .map(|(k, _)| *k)
            .collect();
        for key in &dead {
            if let Some(state) = self.modules.remove(key) {
                let _ = self.blaze.evict(&blaze::evict::Elf::new(state.fd_path).into());
            }
        }
        dead.len()
    }

    /// Modules whose data blazesym holds, and their files' total size.
    pub fn loaded_modules(&self) -> (usize, u64) {
        let live = self.modules.values().filter_map(|s| s.file.upgrade());
        live.fold((0, 0), |(n, bytes), f| (n + 1, bytes + f.size()))
    }

    /// Errors blazesym reported (a module it could not read), and the last one.
    pub fn errors(&self) -> (u64, Option<&str>) {
        (self.errors, self.last_error.as_deref())
    }
}

/// blazesym reports inlined functions outermost first, each with the location inside it; a
/// stack lists the innermost first.
fn frames_of(sym: &Sym<'_>, module: Option<&str>, offset: u64) -> Vec<Frame> {
    let frame = |name: &str, code: Option<&CodeInfo<'_>>, inlined: bool| Frame {
        function: Some(name.to_owned()),
        file: code.map(|c| c.to_path().to_string_lossy().into_owned()),
        line: code.and_then(|c| c.line),
        module: module.map(str::to_owned),
        offset,
        inlined,
    };
    let mut frames: Vec<Frame> =
        sym.inlined.iter().rev().map(|f| frame(&f.name, f.code_info.as_ref(), true)).collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref(), false));
    frames
}

/// Bounds of the [`Symbolizer`]'s state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Processes pinned at once; past it [`Symbolizer::pin`] refuses.
    pub max_pinned_processes: usize,
    /// Distinct files held open (each costs a descriptor, and a second one while blazesym
    /// holds its data); past it [`Symbolizer::pin`] refuses.
    pub max_pinned_files: usize,
    /// Addresses cached; past it the least recently used quarter is dropped.
    pub max_cached_addresses: usize,
    /// Estimated bytes of the cached frames; past it, the same.
    pub max_cached_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pinned_processes: 4096,
            max_pinned_files: 512,
            max_cached_addresses: 65_536,
            max_cached_bytes: 32 << 20,
        }
    }
}

/// The [`Symbolizer`]'s sizes and counts, for `tracer status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SymbolizerStats {
    pub pinned_processes: usize,
    /// Distinct files held open, and their total size.
    pub pinned_files: usize,
    pub pinned_file_bytes: u64,
    pub cached_addresses: usize,
    /// Estimated heap bytes of the cached frames.
    pub cached_bytes: usize,
    /// Modules whose debug information the thread holds, and their files' total size.
    pub loaded_modules: usize,
    pub loaded_module_bytes: u64,
    /// Requests sent to the thread.
    pub requests: u64,
    /// Queries answered with placeholders because the thread had not answered in time.
    pub timeouts: u64,
    /// Requests refused because the queue was full.
    pub queue_full: u64,
    pub pin_failures: u64,
    pub evicted_addresses: u64,
    /// Modules blazesym could not read, and the last such error.
    pub errors: u64,
    pub last_error: Option<String>,
}

type CacheKey = (u64, AddressKind);

struct CacheEntry {
    resolved: Resolved,
    last_used: u64,
    bytes: usize,
}

/// Frames per (pid, address, kind), bounded by count and estimated bytes. Per pid, so that
/// forgetting a process costs its own entries only; eviction drops the least recently used
/// quarter at once (a selection over the ticks), so it costs O(1) per insertion amortized.
#[derive(Default)]
struct FrameCache {
    by_pid: HashMap<u32, HashMap<CacheKey, CacheEntry>>,
    entries: usize,
    bytes: usize,
    tick: u64,
    evicted: u64,
}

/// Per entry, beyond its frames: the key, the entry, the map's slot.
const CACHE_ENTRY_OVERHEAD: usize = 96;

impl FrameCache {
    fn get(&mut self, pid: u32, key: CacheKey) -> Option<&Resolved> {
        self.tick += 1;
        let entry = self.by_pid.get_mut(&pid)?.get_mut(&key)?;
        entry.last_used = self.tick;
        Some(&entry.resolved)
    }

    fn insert(&mut self, pid: u32, key: CacheKey, resolved: Resolved, limits: &Limits) {
        self.tick += 1;
        let bytes = resolved.heap_bytes() + CACHE_ENTRY_OVERHEAD;
        let entry = CacheEntry { resolved, last_used: self.tick, bytes };
        match self.by_pid.entry(pid).or_default().insert(key, entry) {
            Some(old) => self.bytes -= old.bytes,
            None => self.entries += 1,
        }
        self.bytes += bytes;
        if self.entries > limits.max_cached_addresses || self.bytes > limits.max_cached_bytes {
            self.evict_quarter();
        }
    }

    fn evict_quarter(&mut self) {
        let mut ticks: Vec<u64> =
            self.by_pid.values().flat_map(|m| m.values().map(|e| e.last_used)).collect();
        if ticks.is_empty() {
            return;
        }
        let nth = ticks.len() / 4;
        let (_, threshold, _) = ticks.select_nth_unstable(nth);
        let threshold = *threshold;
        let (mut entries, mut bytes, mut evicted) = (0, 0, 0);
        self.by_pid.retain(|_, m| {
            m.retain(|_, e| {
                let keep = e.last_used > threshold;
                if keep {
                    entries += 1;
                    bytes += e.bytes;
                } else {
                    evicted += 1;
                }
                keep
            });
            !m.is_empty()
        });
        (self.entries, self.bytes) = (entries, bytes);
        self.evicted += evicted;
    }

    fn forget(&mut self, pid: u32) {
        if let Some(m) = self.by_pid.remove(&pid) {
            self.entries -= m.len();
            self.bytes -= m.values().map(|e| e.bytes).sum::<usize>();
        }
    }
}

/// State shared by the callers and the thread.
#[derive(Default)]
struct Shared {
    processes: HashMap<u32, Arc<PinnedProcess>>,
    /// Every file pinned, to share one descriptor among the processes that map it.
    files: HashMap<FileKey, Weak<PinnedFile>>,
    cache: FrameCache,
    /// Another process parses the files (the inspector part): pins only open them.
    parsed_elsewhere: bool,
}

impl Shared {
    fn live_files(&mut self) -> usize {
        self.files.retain(|_, f| f.strong_count() > 0);
        self.files.len()
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    timeouts: AtomicU64,
    queue_full: AtomicU64,
    pin_failures: AtomicU64,
    errors: AtomicU64,
    loaded_modules: AtomicUsize,
    loaded_module_bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

enum Request {
    Symbolize {
        pid: u32,
        addresses: Vec<u64>,
        kind: AddressKind,
        reply: oneshot::Sender<Vec<Resolved>>,
    },
    /// Wake up to free the data of modules no longer pinned.
    Sweep,
    Stop,
}

/// How the [`Symbolizer`] is set up.
pub struct SymbolizerConfig {
    pub limits: Limits,
    /// Requests waiting for the thread at most; past it requests are refused (and queries
    /// answer with placeholders).
    pub queue_capacity: usize,
    pub fallback: Option<FallbackFactory>,
    /// Resolves on the thread instead of a [`Resolver`] of its own (with `fallback`): the
    /// inspector part's. The pinned files are then only opened here, never parsed.
    pub elsewhere: Option<Box<dyn Resolve + Send>>,
}

impl Default for SymbolizerConfig {
    fn default() -> Self {
        Self { limits: Limits::default(), queue_capacity: 1024, fallback: None, elsewhere: None }
    }
}

/// The symbolization service: a thread that owns the [`Resolver`], a bounded queue to it, and
/// the caches the callers read without waiting for it. [`pin`](Self::pin) works in the
/// caller's thread, as it must catch the process alive: it reads /proc/PID/maps and opens
/// each binary not pinned yet (0.3-0.4 ms measured for a Go binary; a process with many
/// libraries costs more the first time, so call it off the event loop). Every other call only
/// locks the shared state briefly.
pub struct Symbolizer {
    tx: SyncSender<Request>,
    shared: Arc<Mutex<Shared>>,
    counters: Arc<Counters>,
    limits: Limits,
    queue_capacity: usize,
    thread: Option<JoinHandle<()>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves maps that are still consistent enough to read.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Symbolizer {
    /// Starts the thread.
    pub fn start(config: SymbolizerConfig) -> Result<Self, SymbolizeError> {
        let SymbolizerConfig { limits, queue_capacity, fallback, elsewhere } = config;
        let queue_capacity = queue_capacity.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_capacity);
        let shared = Arc::new(Mutex::new(Shared {
            parsed_elsewhere: elsewhere.is_some(),
            ..Shared::default()
        }));
        let counters = Arc::new(Counters::default());
        let thread = {
            let (shared, counters, limits) =
                (Arc::clone(&shared), Arc::clone(&counters), limits.clone());
            std::thread::Builder::new()
                .name("symbolizer".into())
                .spawn(move || run(&rx, &shared, &counters, &limits, fallback, elsewhere))
                .map_err(SymbolizeError::Spawn)?
        };
        Ok(Self { tx, shared, counters, limits, queue_capacity, thread: Some(thread) })
    }

    /// Pins process `pid` now, in the caller's thread (its files must be opened before it
    /// exits). Pinning a pinned pid again reads its maps again (new libraries); if a mapping
    /// it had is gone (an exec, a reused pid), its cached frames are dropped.
    pub fn pin(&self, pid: u32) -> Result<PinSummary, SymbolizeError> {
        let result = install_pin(&self.shared, &self.limits, pid);
        if result.is_err() {
            self.counters.pin_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The pinned mappings of process `pid`, if it is pinned.
    pub fn pinned(&self, pid: u32) -> Option<Arc<PinnedProcess>> {
        lock(&self.shared).processes.get(&pid).cloned()
    }

    /// Forgets process `pid`: its cached frames, and its files once no other pinned process
    /// maps them (the thread then frees their parsed data and closes its descriptors).
    pub fn forget(&self, pid: u32) {
        let removed = {
            let mut shared = lock(&self.shared);
            shared.cache.forget(pid);
            shared.processes.remove(&pid)
        };
        if removed.is_some() {
            drop(removed);
            lock(&self.shared).live_files();
            let _ = self.tx.try_send(Request::Sweep);
        }
    }

    /// Asks the thread to symbolize; the answer comes on the returned channel. Refused, not
    /// blocking, when the queue is full.
    pub fn symbolize(
        &self,
        pid: u32,
        addresses: Vec<u64>,
        kind: AddressKind,
    ) -> Result<oneshot::Receiver<Vec<Resolved>>, SymbolizeError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Request::Symbolize { pid, addresses, kind, reply }) {
            Ok(()) => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                Err(SymbolizeError::QueueFull { capacity: self.queue_capacity })
            }
            Err(TrySendError::Disconnected(_)) => Err(SymbolizeError::Stopped),
        }
    }

    /// What is known now, without waiting: cached frames, and `module+0xoffset` (state
    /// [`ResolveState::Pending`]) for the rest.
    pub fn cached(&self, pid: u32, addresses: &[u64], kind: AddressKind) -> Vec<Resolved> {
        let mut shared = lock(&self.shared);
        let process = shared.processes.get(&pid).cloned();
        addresses
            .iter()
            .map(|&address| match shared.cache.get(pid, (address, kind)) {
                Some(resolved) => resolved.clone(),
                None => {
                    let mapping =
                        process.as_ref().and_then(|p| p.mapping_for(kind.lookup(address)));
                    Resolved::placeholder(address, ResolveState::Pending, mapping)
                }
            })
            .collect()
    }

    /// Symbolizes, waiting at most `timeout`: what the thread has not answered by then stays
    /// `module+0xoffset` ([`ResolveState::Pending`]), and the thread caches it for the next
    /// query. Never waits when everything is cached.
    pub async fn resolve_within(
        &self,
        pid: u32,
        addresses: &[u64],
        kind: AddressKind,
        timeout: Duration,
    ) -> Vec<Resolved> {
        let mut out = self.cached(pid, addresses, kind);
        let missing: Vec<usize> =
            (0..out.len()).filter(|&i| out[i].state == ResolveState::Pending).collect();
        if missing.is_empty() {
            return out;
        }
        let wanted = missing.iter().map(|&i| addresses[i]).collect();
        let Ok(rx) = self.symbolize(pid, wanted, kind) else { return out };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answers)) => {
                for (i, answer) in missing.into_iter().zip(answers) {
                    out[i] = answer;
                }
            }
            _ => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }

    /// Sizes and counts.
    pub fn stats(&self) -> SymbolizerStats {
        let c = &self.counters;
        let mut shared = lock(&self.shared);
        let pinned_files = shared.live_files();
        let pinned_file_bytes =
            shared.files.values().filter_map(Weak::upgrade).map(|f| f.size()).sum();
        SymbolizerStats {
            pinned_processes: shared.processes.len(),
            pinned_files,
            pinned_file_bytes,
            cached_addresses: shared.cache.entries,
            cached_bytes: shared.cache.bytes,
            loaded_modules: c.loaded_modules.load(Ordering::Relaxed),
            loaded_module_bytes: c.loaded_module_bytes.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            queue_full: c.queue_full.load(Ordering::Relaxed),
            pin_failures: c.pin_failures.load(Ordering::Relaxed),
            evicted_addresses: shared.cache.evicted,
            errors: c.errors.load(Ordering::Relaxed),
            last_error: c.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Stops the thread after the requests already queued, and waits for it.
    pub fn shutdown(mut self) {
        // A blocking send: the thread drains the queue, so there is room soon.
        if self.tx.send(Request::Stop).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for Symbolizer {
    fn drop(&mut self) {
        // Not joined: the thread ends once it sees the queue closed, after its current request.
        let _ = self.tx.try_send(Request::Stop);
    }
}

/// What [`Symbolizer::pin`] pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PinSummary {
    pub mappings: usize,
    /// Distinct files of this process held open.
    pub files: usize,
    /// What could not be pinned (see [`PinnedProcess::skipped`]).
    pub skipped: Vec<String>,
}

fn install_pin(
    shared: &Mutex<Shared>,
    limits: &Limits,
    pid: u32,
) -> Result<PinSummary, SymbolizeError> {
    {
        let shared = lock(shared);
        if !shared.processes.contains_key(&pid)
            && shared.processes.len() >= limits.max_pinned_processes
        {
            return Err(SymbolizeError::Limit {
                pid,
                what: "pinned processes",
                limit: limits.max_pinned_processes,
            });
        }
    }
    let parsed_elsewhere = lock(shared).parsed_elsewhere;
    let pinned = pin_with(pid, parsed_elsewhere, &|key| {
        lock(shared).files.get(key).and_then(Weak::upgrade)
    })?;
    let summary = PinSummary {
        mappings: pinned.mappings.len(),
        files: pinned.files().count(),
        skipped: pinned.skipped.clone(),
    };
    let mut guard = lock(shared);
    let shared = &mut *guard;
    let live = shared.live_files();
    let new: Vec<&Arc<PinnedFile>> =
        pinned.files().filter(|f| !shared.files.contains_key(&f.key)).collect();
    if live + new.len() > limits.max_pinned_files {
        return Err(SymbolizeError::Limit {
            pid,
            what: "pinned files",
            limit: limits.max_pinned_files,
        });
    }
    for file in new {
        shared.files.insert(file.key, Arc::downgrade(file));
    }
    let pinned = Arc::new(pinned);
    if let Some(old) = shared.processes.insert(pid, Arc::clone(&pinned))
        && !old.is_subset_of(&pinned)
    {
        shared.cache.forget(pid);
    }
    Ok(summary)
}

/// The thread: answers requests in order until stopped or until every sender is gone.
fn run(
    rx: &Receiver<Request>,
    shared: &Mutex<Shared>,
    counters: &Counters,
    limits: &Limits,
    fallback: Option<FallbackFactory>,
    elsewhere: Option<Box<dyn Resolve + Send>>,
) {
    let mut resolver: Box<dyn Resolve> = match (elsewhere, fallback) {
        (Some(elsewhere), _) => elsewhere,
        (None, Some(factory)) => Box::new(Resolver::with_fallback(factory)),
        (None, None) => Box::new(Resolver::new()),
    };
    while let Ok(request) = rx.recv() {
        match request {
            Request::Symbolize { pid, addresses, kind, reply } => {
                // The caller may have stopped waiting; the answer is cached either way.
                let _ = reply.send(answer(&mut *resolver, shared, limits, pid, &addresses, kind));
            }
            Request::Sweep => {}
            Request::Stop => break,
        }
        resolver.sweep();
        let (modules, bytes) = resolver.loaded_modules();
        counters.loaded_modules.store(modules, Ordering::Relaxed);
        counters.loaded_module_bytes.store(bytes, Ordering::Relaxed);
        let (errors, last) = resolver.errors();
        counters.errors.store(errors, Ordering::Relaxed);
        if let Some(last) = last {
            *counters.last_error.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(last.to_owned());
        }
    }
}

fn answer(
    resolver: &mut dyn Resolve,
    shared: &Mutex<Shared>,
    limits: &Limits,
    pid: u32,
    addresses: &[u64],
    kind: AddressKind,
) -> Vec<Resolved> {
    let (mut process, mut out) = {
        let mut shared = lock(shared);
        let process = shared.processes.get(&pid).cloned();
        let out: Vec<Option<Resolved>> =
            addresses.iter().map(|&a| shared.cache.get(pid, (a, kind)).cloned()).collect();
        (process, out)
    };
    let missing: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
    if missing.is_empty() {
        return out.into_iter().flatten().collect();
    }
    // Not pinned yet, or an address outside what was pinned (a library loaded since): pin
    // (again) while the process lives.
    let unmapped = |p: &PinnedProcess| {
        missing.iter().any(|&i| p.mapping_for(kind.lookup(addresses[i])).is_none())
    };
    if process.as_deref().is_none_or(unmapped) && install_pin(shared, limits, pid).is_ok() {
        process = lock(shared).processes.get(&pid).cloned();
    }
    let wanted: Vec<u64> = missing.iter().map(|&i| addresses[i]).collect();
    let resolved = match &process {
        Some(p) => resolver.symbolize(p, &wanted, kind),
        None => {
            wanted.iter().map(|&a| Resolved::placeholder(a, ResolveState::Unmapped, None)).collect()
        }
    };
    {
        let mut guard = lock(shared);
        let shared = &mut *guard;
        // Cache only what was read against the process as pinned now (not forgotten or
        // re-pinned meanwhile), and never a miss that a later pin could fill.
        let current = process
            .as_ref()
            .is_some_and(|p| shared.processes.get(&pid).is_some_and(|c| Arc::ptr_eq(c, p)));
        for r in &resolved {
            if current && matches!(r.state, ResolveState::Symbolized | ResolveState::NoSymbol) {
                shared.cache.insert(pid, (r.address, kind), r.clone(), limits);
            }
        }
    }
    for (i, r) in missing.into_iter().zip(resolved) {
        out[i] = Some(r);
    }
    out.into_iter()
        .zip(addresses)
        .map(|(r, &a)| r.unwrap_or_else(|| Resolved::placeholder(a, ResolveState::Unmapped, None)))
        .collect()
}

#[cfg(test)]
mod tests;
