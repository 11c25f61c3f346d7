//! Go `net/http` request stacks, the foundation (issue 16, part 1): what a uprobe on a Go HTTP
//! client needs to know about the binary, read without running it. Nothing here attaches
//! probes yet.
//!
//! - [`buildinfo`]: recognises a Go executable and its toolchain version;
//! - [`layout`]: the chain of fields from the probed function's receiver (`*persistConn`) to
//!   the socket's descriptor, plain TCP and through `*tls.Conn`, and per-version offset tables
//!   for binaries without DWARF;
//! - [`dwarf`]: the same offsets from the binary's DWARF;
//! - [`inspect`]: all of it for one executable, with the probed functions' entry addresses
//!   (ELF symbols, or the `.gopclntab` for stripped binaries).
//!
//! HTTP/2 is out of scope: its requests go through `persistConn.alt`, never
//! `(*persistConn).roundTrip`.

pub mod buildinfo;
pub mod dwarf;
pub mod layout;

use object::{Object, ObjectSymbol};

use crate::{
    names::named_enum,
    stacks::gopclntab::{GoPclntab, GoPclntabError},
};
use buildinfo::{BuildInfoError, GoVersion};
use layout::ConnOffsets;

/// The function probed at entry: `Transport.roundTrip` calls it on the requesting goroutine
/// for every HTTP/1 request (plain or TLS) with the pooled or freshly dialed connection as
/// receiver, so the goroutine's stack there names the caller and the receiver names the
/// connection.
pub const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";

/// The functions to probe, in order.
pub const PROBED_FUNCTIONS: &[&str] = &[ROUND_TRIP];

/// The first method of `*net.TCPConn`'s `net.Conn` method table (the interface's methods in
/// name order: `Close` first). The probe checks that each `net.Conn` it follows has this
/// method there, so a connection of another type (a custom dialer's wrapper) is skipped
/// rather than read with `*net.TCPConn`'s offsets.
pub const TCP_CONN_CLOSE: &str = "net.(*TCPConn).Close";

named_enum! {
    /// Which Go processes' HTTP requests are probed (`--go-requests`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum GoRequestPolicy ("Go request policy") {
        /// None.
        Off => "off",
        /// The processes the leak detector marks suspect, while they are.
        #[default]
        Suspects => "suspects",
        /// Every Go process that holds a connection.
        All => "all",
    }
}

impl GoRequestPolicy {
    pub fn about(self) -> &'static str {
        match self {
            GoRequestPolicy::Off => "probe no Go process",
            GoRequestPolicy::Suspects => "Go processes whose open count is rising, while it is",
            GoRequestPolicy::All => "every Go process that holds a connection",
        }
    }
}

/// The first Go release with the register ABI on amd64 (receiver and arguments in registers).
pub const FIRST_REGISTER_ABI: GoVersion = GoVersion { major: 1, minor: 17, patch: 0 };

/// The register holding the receiver at a Go function's entry (register ABI, amd64): the first
/// integer argument register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Register {
    Rax,
}

/// Why a binary cannot be probed for requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoHttpError {
    #[error("not a readable ELF file: {0}")]
    Elf(String),
    #[error(transparent)]
    BuildInfo(#[from] BuildInfoError),
    #[error("Go version string {0:?} names no Go release")]
    UnknownVersion(String),
    #[error(
        "only amd64 Go binaries are supported (this one is {0}): the receiver's register and the \
         offsets are those of amd64"
    )]
    Architecture(String),
    #[error(
        "{version} predates Go's register ABI (Go 1.17): the receiver is on the stack, which is \
         not supported"
    )]
    StackAbi { version: GoVersion },
    #[error(
        "{version} has no offset table and the binary has no usable DWARF ({dwarf}): build it \
         without -w, or add the version's table (docs/stacks.md, \"Go net/http request stacks\")"
    )]
    NoOffsetTable { version: GoVersion, dwarf: String },
    #[error("function {0} is not in the binary (the program makes no HTTP/1 client requests)")]
    FunctionMissing(&'static str),
    #[error("the binary has no symbol table and its pclntab is unreadable: {0}")]
    Pclntab(#[from] GoPclntabError),
}

/// Where the offsets came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OffsetsSource {
    Dwarf,
    /// The table for this version (the binary has no DWARF, or it lacked a field: the reason).
    Table {
        dwarf: String,
    },
}

/// A probed function and its entry, a virtual address as in the ELF file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbedFunction {
    /// One of [`PROBED_FUNCTIONS`] (read back from the part that inspects binaries as one of
    /// them, never as any other name).
    pub name: &'static str,
    pub entry: u64,
    /// Where the entry's instruction is in the file: what a uprobe attaches to.
    pub file_offset: u64,
}

/// What probing a Go HTTP client binary needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoHttpBinary {
    /// The version string of the build information, e.g. `go1.22.10`.
    pub version_string: String,
    pub version: GoVersion,
    pub offsets: ConnOffsets,
    pub offsets_source: OffsetsSource,
    pub functions: Vec<ProbedFunction>,
    /// The entry of [`TCP_CONN_CLOSE`], a virtual address as in the ELF file.
    pub tcp_conn_close: u64,
    /// Position-independent (ET_DYN): its addresses move by the load bias of each process.
    pub position_independent: bool,
    /// The page-aligned address of the loadable segment at file offset 0: where a
    /// position-independent binary's mapping of offset 0 starts, less the load bias.
    pub first_segment: u64,
    /// Where the receiver is at each function's entry.
    pub receiver: Register,
}

/// A [`ProbedFunction`] as read: its name must be one of [`PROBED_FUNCTIONS`].
#[derive(serde::Deserialize)]
struct ProbedFunctionRead {
    name: String,
    entry: u64,
    file_offset: u64,
}

impl<'de> serde::Deserialize<'de> for ProbedFunction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let read = ProbedFunctionRead::deserialize(d)?;
        let name = PROBED_FUNCTIONS.iter().copied().find(|f| *f == read.name).ok_or_else(|| {
            serde::de::Error::custom(format!("{:?} is not a function the daemon probes", read.name))
        })?;
        Ok(Self { name, entry: read.entry, file_offset: read.file_offset })
    }
}

/// The largest executable [`inspect_file`] reads.
pub const MAX_BINARY_BYTES: u64 = 512 << 20;

/// [`inspect`] for the executable at `path`, which is only read whole when it is a Go binary:
/// the headers say so first (a `.go.buildinfo` section; binaries without section headers are
/// read and searched), so a daemon that probes every process does not read every binary.
pub fn inspect_file(path: &std::path::Path) -> Result<GoHttpBinary, GoHttpError> {
    let file = std::fs::File::open(path)
        .map_err(|e| GoHttpError::Elf(format!("cannot open {}: {e}", path.display())))?;
    inspect_open_file(&file).map_err(|e| match e {
        GoHttpError::Elf(why) => GoHttpError::Elf(format!("{}: {why}", path.display())),
        other => other,
    })
}

/// [`inspect_file`] for a file opened already (by the daemon, for the part that inspects
/// binaries: crate::privsep::inspector).
pub fn inspect_open_file(file: &std::fs::File) -> Result<GoHttpBinary, GoHttpError> {
    let size = file.metadata().map_err(|e| GoHttpError::Elf(e.to_string()))?.len();
    if size > MAX_BINARY_BYTES {
        return Err(GoHttpError::Elf(format!(
            "{size} bytes, more than the {MAX_BINARY_BYTES} read"
        )));
    }
    {
        let cache = object::ReadCache::new(file);
        let headers = object::File::parse(&cache).map_err(|e| GoHttpError::Elf(e.to_string()))?;
        let has_sections = headers.sections().next().is_some();
        if has_sections && headers.section_by_name(".go.buildinfo").is_none() {
            return Err(BuildInfoError::NotFound.into());
        }
    }
    // Positioned: the header reads above moved the file's offset.
    let mut bytes = vec![0u8; usize::try_from(size).map_err(|e| GoHttpError::Elf(e.to_string()))?];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, 0)
        .map_err(|e| GoHttpError::Elf(format!("cannot read it: {e}")))?;
    inspect(&bytes)
}

/// Reads everything about an executable's bytes; an error says why it cannot be probed.
pub fn inspect(elf: &[u8]) -> Result<GoHttpBinary, GoHttpError> {
    let info = buildinfo::read_elf(elf)?;
    let version = GoVersion::parse(&info.version)
        .ok_or_else(|| GoHttpError::UnknownVersion(info.version.clone()))?;
    let file = object::File::parse(elf).map_err(|e| GoHttpError::Elf(e.to_string()))?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(GoHttpError::Architecture(format!("{:?}", file.architecture())));
    }
    if version < FIRST_REGISTER_ABI {
        return Err(GoHttpError::StackAbi { version });
    }
    let (offsets, offsets_source) = match dwarf::offsets(&file) {
        Ok(Some(offsets)) => (offsets, OffsetsSource::Dwarf),
        other => {
            let why = match other {
                Ok(_) => "no DWARF".to_string(),
                Err(e) => e.to_string(),
            };
            let offsets = layout::table_for(version)
                .ok_or_else(|| GoHttpError::NoOffsetTable { version, dwarf: why.clone() })?;
            (offsets, OffsetsSource::Table { dwarf: why })
        }
    };
    let mut entries = Entries { file: &file, elf, pclntab: None };
    let mut functions = Vec::new();
    for &name in PROBED_FUNCTIONS {
        let entry = entries.entry(name)?;
        let file_offset = file_offset(&file, entry).ok_or(GoHttpError::FunctionMissing(name))?;
        functions.push(ProbedFunction { name, entry, file_offset });
    }
    Ok(GoHttpBinary {
        version_string: info.version,
        version,
        offsets,
        offsets_source,
        functions,
        tcp_conn_close: entries.entry(TCP_CONN_CLOSE)?,
        position_independent: file.kind() == object::ObjectKind::Dynamic,
        first_segment: {
            use object::ObjectSegment;
            file.segments()
                .find(|seg| seg.file_range().0 == 0)
                .map_or(0, |seg| seg.address() & !0xfff)
        },
        receiver: Register::Rax,
    })
}

impl GoHttpBinary {
    /// Where [`TCP_CONN_CLOSE`] is in process `pid`, which runs this binary from `path` (as
    /// /proc/PID/maps names it): its address as in the file, moved by the process's load bias
    /// when the binary is position-independent. `None` when the mapping is not found.
    pub fn tcp_conn_close_in(&self, maps: &str, path: &std::path::Path) -> Option<u64> {
        if !self.position_independent {
            return Some(self.tcp_conn_close);
        }
        // The mapping of file offset 0: its start is the first segment's address plus the bias.
        let start = maps.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (range, offset) = (f.first()?, f.get(2)?);
            (f.len() >= 6
                && std::path::Path::new(f[5]) == path
                && u64::from_str_radix(offset, 16).ok()? == 0)
                .then(|| u64::from_str_radix(range.split_once('-')?.0, 16).ok())
                .flatten()
        })?;
        Some(self.tcp_conn_close.wrapping_add(start.wrapping_sub(self.first_segment)))
    }
}

/// Function entries: from the ELF symbol table, else from the pclntab (read once).
struct Entries<'a, 'data> {
    file: &'a object::File<'data>,
    elf: &'data [u8],
    pclntab: Option<GoPclntab>,
}

impl Entries<'_, '_> {
    fn entry(&mut self, name: &'static str) -> Result<u64, GoHttpError> {
        let from_symbols = self
            .file
            .symbols()
            .find(|s| s.name() == Ok(name) && s.kind() == object::SymbolKind::Text)
            .map(|s| s.address());
        if let Some(entry) = from_symbols {
            return Ok(entry);
        }
        let tab = match self.pclntab.take() {
            Some(tab) => tab,
            None => GoPclntab::from_elf(self.elf)?,
        };
        let entry = tab.function_entry(name)?;
        self.pclntab = Some(tab);
        entry.ok_or(GoHttpError::FunctionMissing(name))
    }
}

/// The file offset of virtual address `address`: inside the section that holds it.
fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    use object::ObjectSection;
    file.sections().find_map(|section| {
        let start = section.address();
        let (offset, size) = section.file_range()?;
        (start <= address && address - start < size)
            .then(|| offset.checked_add(address - start))
            .flatten()
    })
}

#[cfg(test)]
mod tests;
