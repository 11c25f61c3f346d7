//! Go's build information: the `.go.buildinfo` blob every Go executable carries (Go's
//! `debug/buildinfo` reads it for `go version -m`), from which a Go binary and its toolchain
//! version are recognised.
//!
//! The blob starts, 16-byte aligned in the writable data, with a 32-byte header: the magic
//! `"\xff Go buildinf:"` (14 bytes), the pointer size, and a flags byte (bit 0: big-endian,
//! bit 1: strings inline). Then:
//! - Go 1.18 and later (strings inline): from offset 32, the version and the module information
//!   as two uvarint-length-prefixed strings;
//! - before 1.18: at offset 16 two pointers to Go string headers (data pointer, length), the
//!   version's and the module information's, which point elsewhere in the loaded image.
//!
//! The input is untrusted (any process's executable): every read is bounds-checked, so bad
//! bytes give an error, never a panic.

use object::{Object, ObjectSection, ObjectSegment};

/// The blob's magic, its first 14 bytes.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE: u8 = 2;
/// Longest version or module-information string accepted; Go's reader stops at 64 KiB too.
const MAX_STRING: u64 = 64 << 10;

/// Why no Go build information could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildInfoError {
    #[error("not a readable ELF file: {0}")]
    Elf(String),
    #[error("not a Go executable: no Go build information (.go.buildinfo) found")]
    NotFound,
    #[error("malformed Go build information: {0}")]
    Malformed(&'static str),
}

/// How the blob stores its strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildInfoFormat {
    /// Before Go 1.18: pointers to string headers.
    Pointers,
    /// Go 1.18 and later: the strings themselves.
    Inline,
}

/// What the build information says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The toolchain's version string, e.g. `go1.22.10` (as `runtime.Version()` returns it).
    pub version: String,
    /// The module information (`go version -m`), often empty for programs built from files.
    pub modinfo: String,
    pub ptr_size: u8,
    pub big_endian: bool,
    pub format: BuildInfoFormat,
}

/// Reads the build information of an ELF executable: the `.go.buildinfo` section, or, when
/// the section headers are gone, the first 16-byte-aligned magic in a writable loaded segment.
pub fn read_elf(elf: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    let file = object::File::parse(elf).map_err(|e| BuildInfoError::Elf(e.to_string()))?;
    let image = Image::new(&file);
    if let Some(section) = file.section_by_name(".go.buildinfo") {
        let data = section.data().map_err(|e| BuildInfoError::Elf(e.to_string()))?;
        return parse(data, |addr, len| image.read(addr, len));
    }
    for segment in file.segments() {
        let Ok(data) = segment.data() else { continue };
        let writable = matches!(
            segment.flags(),
            object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_W != 0
        );
        if !writable {
            continue;
        }
        let found = (0..data.len()).step_by(16).find(|&at| data[at..].starts_with(MAGIC));
        if let Some(at) = found {
            return parse(&data[at..], |addr, len| image.read(addr, len));
        }
    }
    Err(BuildInfoError::NotFound)
}

/// Parses a blob starting at its magic; `read(addr, len)` reads the loaded image (for the
/// pointer format).
pub fn parse<'a>(
    blob: &'a [u8],
    read: impl Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<BuildInfo, BuildInfoError> {
    let header = blob.get(..HEADER_LEN).ok_or(BuildInfoError::Malformed("header truncated"))?;
    if !header.starts_with(MAGIC) {
        return Err(BuildInfoError::NotFound);
    }
    let ptr_size = header[14];
    let flags = header[15];
    let big_endian = flags & FLAG_BIG_ENDIAN != 0;
    let (version, modinfo, format) = if flags & FLAG_INLINE != 0 {
        let mut at = HEADER_LEN;
        let version = inline_string(blob, &mut at)?;
        let modinfo = inline_string(blob, &mut at)?;
        (version, modinfo, BuildInfoFormat::Inline)
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return Err(BuildInfoError::Malformed("pointer size is neither 4 nor 8"));
        }
        let word = |bytes: &[u8], at: u64| -> Result<u64, BuildInfoError> {
            word(bytes, at, ptr_size, big_endian)
                .ok_or(BuildInfoError::Malformed("pointer truncated"))
        };
        let string = |header_addr: u64| -> Result<String, BuildInfoError> {
            let size = u64::from(ptr_size);
            let hdr = read(header_addr, 2 * size)
                .ok_or(BuildInfoError::Malformed("string header outside the loaded image"))?;
            let (data, len) = (word(hdr, 0)?, word(hdr, size)?);
            if len > MAX_STRING {
                return Err(BuildInfoError::Malformed("string longer than 64 KiB"));
            }
            let bytes = read(data, len)
                .ok_or(BuildInfoError::Malformed("string data outside the loaded image"))?;
            Ok(String::from_utf8_lossy(bytes).into_owned())
        };
        let version = string(word(header, 16)?)?;
        let modinfo = string(word(header, 16 + u64::from(ptr_size))?)?;
        (version, modinfo, BuildInfoFormat::Pointers)
    };
    if version.is_empty() {
        return Err(BuildInfoError::Malformed("empty version"));
    }
    Ok(BuildInfo { version, modinfo, ptr_size, big_endian, format })
}

fn word(bytes: &[u8], at: u64, size: u8, big_endian: bool) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let b = bytes.get(at..at.checked_add(usize::from(size))?)?;
    Some(match (size, big_endian) {
        (4, false) => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
        (4, true) => u64::from(u32::from_be_bytes(b.try_into().ok()?)),
        (_, false) => u64::from_le_bytes(b.try_into().ok()?),
        (_, true) => u64::from_be_bytes(b.try_into().ok()?),
    })
}

/// A uvarint-length-prefixed string at `*at`, advancing `*at` past it.
fn inline_string(blob: &[u8], at: &mut usize) -> Result<String, BuildInfoError> {
    let mut len = 0u64;
    let mut shift = 0;
    loop {
        let b = *blob.get(*at).ok_or(BuildInfoError::Malformed("string length truncated"))?;
        *at += 1;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(BuildInfoError::Malformed("string length varint too long"));
        }
    }
    if len > MAX_STRING {
        return Err(BuildInfoError::Malformed("string longer than 64 KiB"));
    }
    let end = at.checked_add(len as usize).ok_or(BuildInfoError::Malformed("string truncated"))?;
    let bytes = blob.get(*at..end).ok_or(BuildInfoError::Malformed("string truncated"))?;
    *at = end;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The loaded segments, for reading by virtual address.
struct Image<'a> {
    segments: Vec<(u64, &'a [u8])>,
}

impl<'a> Image<'a> {
    fn new(file: &object::File<'a>) -> Self {
        let segments =
            file.segments().filter_map(|s| Some((s.address(), s.data().ok()?))).collect();
        Image { segments }
    }

    fn read(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
        self.segments.iter().find_map(|&(start, data)| {
            let off = usize::try_from(addr.checked_sub(start)?).ok()?;
            data.get(off..off.checked_add(usize::try_from(len).ok()?)?)
        })
    }
}

/// A Go toolchain version, as far as layouts and ABIs depend on it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    /// 0 for a release candidate or `go1.N` itself.
    pub patch: u32,
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl GoVersion {
    /// Parses `go1.22.10`, `go1.21rc2`, `go1.19`, `go1.22.10 X:boringcrypto` (experiments after
    /// a space), `devel go1.23-abcdef ...`; `None` for what names no release.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("devel ").unwrap_or(s);
        let s = s.split_whitespace().next()?.strip_prefix("go")?;
        let mut parts = s.splitn(3, '.');
        let number = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            let digits = p.find(|c: char| !c.is_ascii_digit()).map_or(p, |end| &p[..end]);
            digits.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        let patch = match parts.next() {
            Some(p) => number(Some(p))?,
            None => 0,
        };
        Some(GoVersion { major, minor, patch })
    }
}
