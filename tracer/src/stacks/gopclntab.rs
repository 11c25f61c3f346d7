//! Go's own symbol table, the pclntab: every function's name and entry and its pc→file:line
//! tables. The Go runtime needs it for tracebacks, so it survives `go build -ldflags "-s -w"`,
//! which drops the ELF symbol table and DWARF that a general symbolizer reads.
//!
//! Formats, told apart by the table's first four bytes (read little- or big-endian):
//! - `0xfffffff1`, Go 1.20 and later: as 1.18, with `startLine` added to each function record
//!   and a smaller inline-tree entry. Go 1.22 still records the start of the text in the
//!   header; Go 1.27 writes 0 there (it must come from elsewhere, see [`GoPclntab::from_elf`])
//!   and links the inline trees (`go:func.*`) into the table and the module data into its own
//!   `.go.module` section;
//! - `0xfffffff0`, Go 1.18–1.19: function entries are 32-bit offsets from the start of the text;
//! - `0xfffffffa`, Go 1.16–1.17: separate name, compilation-unit, file and pc tables; entries
//!   are absolute pointer-sized addresses;
//! - `0xfffffffb`, Go 1.2–1.15: one table holding everything, file numbers index a global file
//!   table.
//!
//! The layouts are those of Go's `debug/gosym/pclntab.go`, `runtime/symtab.go` (`pcHeader`,
//! `moduledata`, `pcvalue`), `runtime/runtime2.go` (`_func`) and `runtime/symtabinl.go`
//! (`inlinedCall`). Inlined frames are decoded for Go 1.18 and later (the inline trees are
//! found through the `go:func.*` symbol or the module data); for older tables a lookup names
//! the function that holds the pc, with the file:line of the innermost inlined code.
//!
//! The input is untrusted (any process's executable): every offset is bounds-checked and every
//! loop bounded, so a truncated or hostile table yields an error or `None`, never a panic.

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// What is wrong with a file or table that [`GoPclntab`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoPclntabError {
    #[error("not a readable ELF file: {0}")]
    Elf(String),
    #[error(
        "no Go pclntab: no .gopclntab section and no valid table header in the loaded segments"
    )]
    NotFound,
    #[error(
        "unknown pclntab magic {0:#010x} (known: 0xfffffff1, 0xfffffff0, 0xfffffffa, 0xfffffffb)"
    )]
    UnknownMagic(u32),
    #[error("malformed pclntab header: {0}")]
    BadHeader(&'static str),
    #[error("pclntab truncated: {what} at offset {offset} is past the table's end ({len} bytes)")]
    Truncated { what: &'static str, offset: u64, len: usize },
    #[error("malformed pclntab entry: {0}")]
    Malformed(&'static str),
    #[error(
        "the start of the Go text is unknown: the table does not record it and the file has no \
         runtime.text symbol, no module data pointing at the table and no .text section"
    )]
    NoTextStart,
}

type Result<T> = std::result::Result<T, GoPclntabError>;

/// The table formats, oldest first (the magic numbers are in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GoPclntabVersion {
    /// Go 1.2 to 1.15.
    Go12,
    /// Go 1.16 and 1.17.
    Go116,
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

impl GoPclntabVersion {
    fn from_magic(magic: u32) -> Option<Self> {
        match magic {
            0xffff_fffb => Some(Self::Go12),
            0xffff_fffa => Some(Self::Go116),
            0xffff_fff0 => Some(Self::Go118),
            0xffff_fff1 => Some(Self::Go120),
            _ => None,
        }
    }
}

/// What the table says about one pc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFrame {
    /// The (physical) function whose code holds the pc, e.g. `main.openDB`,
    /// `net.(*Dialer).DialContext`, `main.Map[...]`.
    pub function: String,
    /// The function's entry, a virtual address as in the ELF file.
    pub entry: u64,
    /// The pc's position in `function`'s own source: the pc's line, or, when the pc is in code
    /// inlined into `function`, the line of the outermost inlined call. `None` where the table
    /// has no entry (assembly stubs without line tables) or the entry is malformed.
    pub file: Option<String>,
    /// The line of that position (see `file`).
    pub line: Option<u32>,
    /// The calls inlined at the pc, outermost first: each names the inlined function and the
    /// position in it; the last one's position is the pc's own. Empty when nothing is inlined
    /// there or the inline trees are not available ([`GoPclntab::has_inline_trees`]).
    pub inlined: Vec<GoInlinedFrame>,
}

/// A call inlined at a pc; see [`GoFrame::inlined`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoInlinedFrame {
    /// The inlined function, as Go prints it.
    pub function: String,
    /// The position in it: the call site of the next inlined call, or for the last one the
    /// pc's own position.
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl GoFrame {
    /// The innermost function at the pc and the pc's own position: what Go's
    /// `runtime.FuncForPC(pc)` names and its `FileLine(pc)` returns.
    pub fn innermost(&self) -> (&str, Option<&str>, Option<u32>) {
        match self.inlined.last() {
            Some(f) => (&f.function, f.file.as_deref(), f.line),
            None => (&self.function, self.file.as_deref(), self.line),
        }
    }
}

/// A parsed pclntab (a copy of it: it does not borrow the file it came from).
#[derive(Debug, Clone)]
pub struct GoPclntab {
    data: Vec<u8>,
    hdr: Header,
    /// Function entries of Go 1.18+ tables are offsets from this address.
    text_start: u64,
    inline: Option<InlineTrees>,
}

/// Where the inline trees (`go:func.*`, the base of Go 1.18+ funcdata offsets) are.
#[derive(Debug, Clone)]
enum InlineTrees {
    /// Inside the table itself (Go 1.2x links `go:func.*` into `.gopclntab`), at this offset.
    InTable(u64),
    /// Elsewhere in read-only data: a copy of the bytes from `go:func.*` on.
    Copied(Vec<u8>),
}

/// The parsed header: table offsets relative to the start of the table.
#[derive(Debug, Clone, Copy)]
struct Header {
    version: GoPclntabVersion,
    big_endian: bool,
    quantum: u8,
    ptr_size: u8,
    nfunc: u64,
    /// Go 1.2: entries in the global file table.
    nfiles: u64,
    /// Go 1.18+: the header's own text start (0 when not recorded).
    text_start: u64,
    funcnametab: u64,
    cutab: u64,
    filetab: u64,
    pctab: u64,
    /// Base of the `_func` records' offsets.
    funcdata: u64,
    functab: u64,
}

/// `_PCDATA_InlTreeIndex` and `_FUNCDATA_InlTree` (runtime/symtab.go, internal/abi).
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u32 = 3;
/// Deeper inlining than this is treated as a cycle in a hostile table.
const MAX_INLINE_DEPTH: usize = 64;

/// Bounds-checked reads from a byte slice; every failure names what was read and where.
#[derive(Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl<'a> Reader<'a> {
    fn truncated(&self, what: &'static str, offset: u64) -> GoPclntabError {
        GoPclntabError::Truncated { what, offset, len: self.data.len() }
    }

    fn bytes(&self, offset: u64, n: usize, what: &'static str) -> Result<&'a [u8]> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.data.get(start..start.checked_add(n)?))
            .ok_or_else(|| self.truncated(what, offset))
    }

    fn u8(&self, offset: u64, what: &'static str) -> Result<u8> {
        Ok(self.bytes(offset, 1, what)?[0])
    }

    fn u32(&self, offset: u64, what: &'static str) -> Result<u32> {
        let b: [u8; 4] =
            self.bytes(offset, 4, what)?.try_into().map_err(|_| self.truncated(what, offset))?;
        Ok(if self.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    fn u64(&self, offset: u64, what: &'static str) -> Result<u64> {
        let b: [u8; 8] =
            self.bytes(offset, 8, what)?.try_into().map_err(|_| self.truncated(what, offset))?;
        Ok(if self.big_endian { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) })
    }

    /// A 4- or 8-byte unsigned value.
    fn word(&self, offset: u64, size: u8, what: &'static str) -> Result<u64> {
        if size == 4 { self.u32(offset, what).map(u64::from) } else { self.u64(offset, what) }
    }

    /// A NUL-terminated string (names and paths; invalid UTF-8 is replaced).
    fn cstr(&self, offset: u64, what: &'static str) -> Result<String> {
        let start = usize::try_from(offset).map_err(|_| self.truncated(what, offset))?;
        let rest = self.data.get(start..).ok_or_else(|| self.truncated(what, offset))?;
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| self.truncated(what, offset))?;
        Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
    }

    /// A pc-value table varint (at most 5 bytes for 32 bits); returns it and its length.
    fn varint(&self, offset: u64) -> Result<(u32, u64)> {
        let mut value = 0u32;
        for i in 0..5u32 {
            let b = self.u8(offset + u64::from(i), "pc-value table")?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value, u64::from(i) + 1));
            }
        }
        Err(GoPclntabError::Malformed("pc-value varint longer than 5 bytes"))
    }
}

/// `a + b`, an offset; overflow is an offset past any table.
fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or(GoPclntabError::Malformed("offset overflows"))
}

fn mul(a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b).ok_or(GoPclntabError::Malformed("table size overflows"))
}

impl Header {
    fn parse(data: &[u8]) -> Result<Self> {
        let le = Reader { data, big_endian: false };
        let magic_le = le.u32(0, "header magic")?;
        let magic_be = u32::from_be_bytes(magic_le.to_le_bytes());
        let (version, big_endian) = match (
            GoPclntabVersion::from_magic(magic_le),
            GoPclntabVersion::from_magic(magic_be),
        ) {
            (Some(v), _) => (v, false),
            (None, Some(v)) => (v, true),
            (None, None) => return Err(GoPclntabError::UnknownMagic(magic_le)),
        };
        let r = Reader { data, big_endian };
        let head = r.bytes(4, 4, "header")?;
        if head[0] != 0 || head[1] != 0 {
            return Err(GoPclntabError::BadHeader("padding bytes after the magic are not zero"));
        }
        let (quantum, ptr_size) = (head[2], head[3]);
        if !matches!(quantum, 1 | 2 | 4) {
            return Err(GoPclntabError::BadHeader("pc quantum is not 1, 2 or 4"));
        }
        if !matches!(ptr_size, 4 | 8) {
            return Err(GoPclntabError::BadHeader("pointer size is not 4 or 8"));
        }
        let word = |i: u64| r.word(8 + i * u64::from(ptr_size), ptr_size, "header");
        let mut h = Header {
            version,
            big_endian,
            quantum,
            ptr_size,
            nfunc: word(0)?,
            nfiles: 0,
            text_start: 0,
            funcnametab: 0,
            cutab: 0,
            filetab: 0,
            pctab: 0,
            funcdata: 0,
            functab: 0,
        };
        match version {
            GoPclntabVersion::Go118 | GoPclntabVersion::Go120 => {
                h.nfiles = word(1)?;
                h.text_start = word(2)?;
                h.funcnametab = word(3)?;
                h.cutab = word(4)?;
                h.filetab = word(5)?;
                h.pctab = word(6)?;
                h.funcdata = word(7)?;
                h.functab = h.funcdata;
            }
            GoPclntabVersion::Go116 => {
                h.nfiles = word(1)?;
                h.funcnametab = word(2)?;
                h.cutab = word(3)?;
                h.filetab = word(4)?;
                h.pctab = word(5)?;
                h.funcdata = word(6)?;
                h.functab = h.funcdata;
            }
            GoPclntabVersion::Go12 => {
                // Names, pc tables and records are offsets from the table's start.
                h.functab = 8 + u64::from(ptr_size);
                let functab_end = add(h.functab, h.functab_size()?)?;
                h.filetab = u64::from(r.u32(functab_end, "file table offset")?);
                h.nfiles = u64::from(r.u32(h.filetab, "file table")?);
            }
        }
        let len = data.len() as u64;
        if h.version >= GoPclntabVersion::Go116 {
            let tables = [h.funcnametab, h.cutab, h.filetab, h.pctab, h.funcdata];
            if let Some(&off) = tables.iter().find(|&&off| off > len) {
                return Err(r.truncated("header table offset", off));
            }
        }
        let functab_end = add(h.functab, h.functab_size()?)?;
        if functab_end > len {
            return Err(r.truncated("function table", h.functab));
        }
        Ok(h)
    }

    /// Size of one function-table field: a 32-bit offset in Go 1.18+, a pointer before.
    fn field_size(&self) -> u8 {
        if self.version >= GoPclntabVersion::Go118 { 4 } else { self.ptr_size }
    }

    /// `nfunc` (pc, record offset) pairs and the end pc.
    fn functab_size(&self) -> Result<u64> {
        mul(add(mul(self.nfunc, 2)?, 1)?, u64::from(self.field_size()))
    }

    /// What a table found by scanning for its magic must also satisfy: tables in the order
    /// the linker writes them, at least one function, and ascending entries at the start.
    fn plausible(&self, data: &[u8]) -> bool {
        if self.nfunc == 0 {
            return false;
        }
        if self.version >= GoPclntabVersion::Go116 {
            let order = [self.funcnametab, self.cutab, self.filetab, self.pctab, self.funcdata];
            if order.windows(2).any(|w| w[0] > w[1]) || self.funcnametab < 8 {
                return false;
            }
        }
        let r = Reader { data, big_endian: self.big_endian };
        let fs = u64::from(self.field_size());
        let n = self.nfunc.min(16);
        let pcs: Option<Vec<u64>> = (0..=n)
            .map(|i| r.word(self.functab + 2 * i * fs, self.field_size(), "").ok())
            .collect();
        pcs.is_some_and(|pcs| pcs.windows(2).all(|w| w[0] <= w[1]))
    }
}

/// Sizes and field offsets of an inline tree entry.
struct InlinedCallLayout {
    size: u64,
    name_off: u64,
    parent_pc: u64,
}

/// One function record (`_func`) and its entry.
#[derive(Clone, Copy)]
struct Func {
    /// Offset of the record in the table.
    off: u64,
    entry: u64,
}

impl GoPclntab {
    /// Reads the pclntab of an ELF executable (any class and byte order).
    ///
    /// The table is the `.gopclntab` section (`.data.rel.ro.gopclntab` in some PIE builds);
    /// when the section headers are stripped too, the loaded segments are scanned for a valid
    /// table header. Go 1.18+ entries are offsets from the start of the text, taken from, in
    /// order: the `runtime.text` symbol, the table header, the module data (`runtime.firstmoduledata`,
    /// found by its pointer to the table), the `.text` section. The inline trees are found
    /// through the `go:func.*` symbol or the module data; without either, lookups return no
    /// inlined frames.
    pub fn from_elf(elf: &[u8]) -> Result<Self> {
        // object reads headers in place and wants them aligned: copy a misaligned input.
        let copy;
        let elf = if elf.as_ptr().align_offset(8) == 0 {
            elf
        } else {
            let mut buf = vec![0u8; elf.len() + 8];
            let start = buf.as_ptr().align_offset(8).min(8);
            buf[start..start + elf.len()].copy_from_slice(elf);
            copy = buf;
            &copy[start..start + elf.len()]
        };
        let file = object::File::parse(elf).map_err(|e| GoPclntabError::Elf(e.to_string()))?;
        let image = Image::new(&file);

        let (table, table_vaddr) = match find_section(&file)? {
            Some(found) => found,
            None => image.scan_for_table().ok_or(GoPclntabError::NotFound)?,
        };
        let hdr = Header::parse(table)?;

        let symbols = Symbols::read(&file);
        let moduledata = if hdr.version >= GoPclntabVersion::Go116 {
            table_vaddr.and_then(|va| image.find_moduledata(&file, &hdr, va))
        } else {
            None
        };
        let text_start = if hdr.version >= GoPclntabVersion::Go118 {
            symbols
                .runtime_text
                .or((hdr.text_start != 0).then_some(hdr.text_start))
                .or(moduledata.and_then(|m| m.text))
                .or_else(|| section_address(&file, ".text"))
                .ok_or(GoPclntabError::NoTextStart)?
        } else {
            0
        };
        let mut tab = GoPclntab { data: table.to_vec(), hdr, text_start, inline: None };
        if hdr.version >= GoPclntabVersion::Go118 {
            let gofunc = symbols
                .gofunc
                .or_else(|| moduledata.and_then(|m| tab.gofunc_from_moduledata(&image, m)));
            tab.inline = gofunc.and_then(|g| tab.inline_trees_at(&image, table_vaddr, g));
        }
        Ok(tab)
    }

    /// Reads a pclntab given as bytes (e.g. a section read by the caller). `text_start` is the
    /// address that Go 1.18+ entries are offsets from (`runtime.text`); `None` takes the one the
    /// header records, an error if it records none. No inline trees: they are outside the table.
    pub fn from_table(table: &[u8], text_start: Option<u64>) -> Result<Self> {
        let hdr = Header::parse(table)?;
        let text_start = if hdr.version >= GoPclntabVersion::Go118 {
            text_start
                .or((hdr.text_start != 0).then_some(hdr.text_start))
                .ok_or(GoPclntabError::NoTextStart)?
        } else {
            0
        };
        Ok(GoPclntab { data: table.to_vec(), hdr, text_start, inline: None })
    }

    pub fn version(&self) -> GoPclntabVersion {
        self.hdr.version
    }

    /// The address Go 1.18+ entries are offsets from (0 for older tables).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// The number of functions in the table.
    pub fn function_count(&self) -> u64 {
        self.hdr.nfunc
    }

    /// Whether lookups can expand inlined calls ([`GoFrame::inlined`]).
    pub fn has_inline_trees(&self) -> bool {
        self.inline.is_some()
    }

    /// The function holding `pc`, a virtual address as in the ELF file (the caller subtracts a
    /// PIE's load bias, and for a return address passes the call's pc, `pc - 1`, as Go's
    /// tracebacks do). `None` when no function holds it or its record is unreadable.
    pub fn lookup(&self, pc: u64) -> Option<GoFrame> {
        self.try_lookup(pc).ok().flatten()
    }

    /// [`Self::lookup`], saying what is malformed when the function's record is.
    pub fn try_lookup(&self, pc: u64) -> Result<Option<GoFrame>> {
        let Some(func) = self.find_func(pc)? else {
            return Ok(None);
        };
        let function = self.func_name(func)?;
        let mut inlined = Vec::new();
        let mut at = pc;
        if self.inline.is_some() {
            while let Some((name, parent_pc)) = self.inlined_call(func, at)? {
                if inlined.len() == MAX_INLINE_DEPTH {
                    return Err(GoPclntabError::Malformed("inline tree deeper than 64 calls"));
                }
                let (file, line) = self.file_line(func, at);
                inlined.push(GoInlinedFrame { function: name, file, line });
                at = add(func.entry, parent_pc)?;
            }
            inlined.reverse();
        }
        let (file, line) = self.file_line(func, at);
        Ok(Some(GoFrame { function, entry: func.entry, file, line, inlined }))
    }

    /// The pcs of the first `limit` function-table entries and the end pc after them, as far
    /// as they read (what the fuzz target looks up).
    #[doc(hidden)]
    pub fn table_pcs(&self, limit: u64) -> Vec<u64> {
        (0..=self.hdr.nfunc.min(limit)).map_while(|i| self.functab_pc(i).ok()).collect()
    }

    fn reader(&self) -> Reader<'_> {
        Reader { data: &self.data, big_endian: self.hdr.big_endian }
    }

    /// The i'th function-table field (even: entry, odd: record offset).
    fn functab_field(&self, i: u64) -> Result<u64> {
        let fs = self.hdr.field_size();
        self.reader().word(add(self.hdr.functab, mul(i, u64::from(fs))?)?, fs, "function table")
    }

    /// The pc of the i'th function table entry (i = nfunc is the end of the last function).
    fn functab_pc(&self, i: u64) -> Result<u64> {
        let v = self.functab_field(mul(i, 2)?)?;
        if self.hdr.version >= GoPclntabVersion::Go118 { add(v, self.text_start) } else { Ok(v) }
    }

    fn find_func(&self, pc: u64) -> Result<Option<Func>> {
        let n = self.hdr.nfunc;
        if n == 0 || pc < self.functab_pc(0)? || pc >= self.functab_pc(n)? {
            return Ok(None);
        }
        // The last entry at or below pc: functab_pc(lo) <= pc < functab_pc(hi).
        let (mut lo, mut hi) = (0, n);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.functab_pc(mid)? <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.func_at(lo).map(Some)
    }

    /// The i'th function of the table (i < nfunc).
    fn func_at(&self, i: u64) -> Result<Func> {
        let off = add(self.hdr.funcdata, self.functab_field(add(mul(i, 2)?, 1)?)?)?;
        let entry = if self.hdr.version >= GoPclntabVersion::Go118 {
            add(u64::from(self.reader().u32(off, "function record")?), self.text_start)?
        } else {
            self.reader().word(off, self.hdr.ptr_size, "function record")?
        };
        Ok(Func { off, entry })
    }

    /// The entry (a virtual address as in the ELF file) of the function named `name`, as Go
    /// prints it (e.g. `net/http.(*persistConn).roundTrip`): how the function addresses of a
    /// stripped binary are found. A scan of the whole table; `None` when no function has the
    /// name.
    pub fn function_entry(&self, name: &str) -> Result<Option<u64>> {
        for i in 0..self.hdr.nfunc {
            let func = self.func_at(i)?;
            if self.func_name(func)? == name {
                return Ok(Some(func.entry));
            }
        }
        Ok(None)
    }

    /// Field n (1-based, 32-bit) of a `_func` record after its entry: 1 nameOff, 5 pcfile,
    /// 6 pcln, 7 npcdata, 8 cuOffset.
    fn func_field(&self, func: Func, n: u64) -> Result<u32> {
        let entry_size = u64::from(self.hdr.field_size());
        self.reader().u32(add(func.off, entry_size + 4 * (n - 1))?, "function record")
    }

    fn func_name(&self, func: Func) -> Result<String> {
        let nameoff = self.func_field(func, 1)?;
        self.name_at(nameoff, "function name")
    }

    /// The function name at `nameoff` in the name table, as Go prints it.
    fn name_at(&self, nameoff: u32, what: &'static str) -> Result<String> {
        let raw = self.reader().cstr(add(self.hdr.funcnametab, u64::from(nameoff))?, what)?;
        Ok(name_for_print(raw))
    }

    /// The value of a pc-value table (offset `table` into the pc tables) at `pc`, decoded as
    /// the runtime's `pcvalue` does: (value delta, pc delta) varint pairs from the entry on.
    fn pcvalue(&self, table: u32, entry: u64, target: u64) -> Result<Option<i32>> {
        if table == 0 {
            return Ok(None);
        }
        let r = self.reader();
        let mut p = add(self.hdr.pctab, u64::from(table))?;
        let (mut pc, mut value) = (entry, -1i32);
        // Each step reads at least two bytes, so the loop ends with the table.
        loop {
            let first = pc == entry;
            let (uvdelta, n) = r.varint(p)?;
            p += n;
            if uvdelta == 0 && !first {
                return Ok(None);
            }
            let vdelta = if uvdelta & 1 != 0 { !(uvdelta >> 1) } else { uvdelta >> 1 };
            let (pcdelta, n) = r.varint(p)?;
            p += n;
            pc = add(pc, u64::from(pcdelta) * u64::from(self.hdr.quantum))?;
            value = value.wrapping_add(vdelta as i32);
            if target < pc {
                return Ok(Some(value));
            }
        }
    }

    /// The file:line at pc in the function; each `None` when its table has no entry there or
    /// is malformed.
    fn file_line(&self, func: Func, pc: u64) -> (Option<String>, Option<u32>) {
        let file = self.file_at(func, pc).ok().flatten();
        let line = self
            .func_field(func, 6)
            .and_then(|pcln| self.pcvalue(pcln, func.entry, pc))
            .ok()
            .flatten()
            .and_then(|l| u32::try_from(l).ok());
        (file, line)
    }

    fn file_at(&self, func: Func, pc: u64) -> Result<Option<String>> {
        let Some(fno) = self.pcvalue(self.func_field(func, 5)?, func.entry, pc)? else {
            return Ok(None);
        };
        let r = self.reader();
        if self.hdr.version == GoPclntabVersion::Go12 {
            // File numbers index the global file table; 0 is not a file.
            let Ok(fno) = u64::try_from(fno) else { return Ok(None) };
            if fno == 0 || fno >= self.hdr.nfiles {
                return Ok(None);
            }
            let off = r.u32(add(self.hdr.filetab, 4 * fno)?, "file table")?;
            return r.cstr(u64::from(off), "file name").map(Some);
        }
        // File numbers index the function's compilation unit's slice of the CU table.
        let Ok(fno) = u64::try_from(fno) else { return Ok(None) };
        let cu = u64::from(self.func_field(func, 8)?);
        let slot = add(self.hdr.cutab, mul(add(cu, fno)?, 4)?)?;
        let off = r.u32(slot, "compilation unit table")?;
        if off == u32::MAX {
            return Ok(None);
        }
        r.cstr(add(self.hdr.filetab, u64::from(off))?, "file name").map(Some)
    }

    /// Size of a Go 1.18+ `_func` record before its pcdata offsets.
    fn func_record_size(&self) -> u64 {
        if self.hdr.version >= GoPclntabVersion::Go120 { 44 } else { 40 }
    }

    /// The layout of an inline tree entry (`inlinedCall`): Go 1.18-1.19 `{parent int16, funcID
    /// uint8, _ byte, file, line, func_, parentPc int32}`; Go 1.20+ `{funcID uint8, _ [3]byte,
    /// nameOff, parentPc, startLine int32}`.
    fn inlined_call_layout(&self) -> InlinedCallLayout {
        if self.hdr.version >= GoPclntabVersion::Go120 {
            InlinedCallLayout { size: 16, name_off: 4, parent_pc: 8 }
        } else {
            InlinedCallLayout { size: 20, name_off: 12, parent_pc: 16 }
        }
    }

    /// The table offset of the inline tree of a Go 1.18+ function, if it has one, relative to
    /// `go:func.*`.
    fn inline_tree_offset(&self, func: Func) -> Result<Option<u32>> {
        let r = self.reader();
        let size = self.func_record_size();
        let npcdata = u64::from(self.func_field(func, 7)?);
        let nfuncdata = r.u8(add(func.off, size - 1)?, "function record")?;
        if u32::from(nfuncdata) <= FUNCDATA_INL_TREE {
            return Ok(None);
        }
        let slot = add(add(func.off, size)?, 4 * (npcdata + u64::from(FUNCDATA_INL_TREE)))?;
        let off = r.u32(slot, "function record funcdata")?;
        Ok((off != u32::MAX).then_some(off))
    }

    /// The inlined call at pc (innermost first): its function's name and the offset from the
    /// entry of the pc whose position is its call site.
    fn inlined_call(&self, func: Func, pc: u64) -> Result<Option<(String, u64)>> {
        let Some(tree) = self.inline_tree_offset(func)? else { return Ok(None) };
        let npcdata = self.func_field(func, 7)?;
        if npcdata <= PCDATA_INL_TREE_INDEX {
            return Ok(None);
        }
        let slot =
            add(add(func.off, self.func_record_size())?, 4 * u64::from(PCDATA_INL_TREE_INDEX))?;
        let table = self.reader().u32(slot, "function record pcdata")?;
        let Some(index) = self.pcvalue(table, func.entry, pc)? else { return Ok(None) };
        let Ok(index) = u64::try_from(index) else { return Ok(None) };
        let layout = self.inlined_call_layout();
        let call = add(u64::from(tree), mul(index, layout.size)?)?;
        let (bytes, base) = match &self.inline {
            Some(InlineTrees::InTable(at)) => (&self.data[..], *at),
            Some(InlineTrees::Copied(bytes)) => (&bytes[..], 0),
            None => return Ok(None),
        };
        let r = Reader { data: bytes, big_endian: self.hdr.big_endian };
        let call = add(base, call)?;
        let name_off = r.u32(add(call, layout.name_off)?, "inline tree")?;
        let parent_pc = r.u32(add(call, layout.parent_pc)?, "inline tree")?;
        let name = self.name_at(name_off, "inlined function name")?;
        Ok(Some((name, u64::from(parent_pc))))
    }

    /// `go:func.*` from the module data: the word that, taken as the base of the first
    /// functions' inline trees, makes them read as inline trees (names that start names,
    /// parent pcs inside the function). The word's index moved between Go versions.
    fn gofunc_from_moduledata(&self, image: &Image<'_>, m: ModuleData) -> Option<u64> {
        let candidates: Vec<u64> = (32..48)
            .filter_map(|i| {
                image.word(m.vaddr.checked_add(i * u64::from(self.hdr.ptr_size))?, &self.hdr)
            })
            .filter(|&v| v != 0 && image.bytes_at(v).is_some())
            .collect();
        // Up to 8 functions that have an inline tree, with their lengths.
        let mut probes = Vec::new();
        for i in 0..self.hdr.nfunc {
            if probes.len() == 8 {
                break;
            }
            let (Ok(start), Ok(end)) = (self.functab_pc(i), self.functab_pc(i + 1)) else {
                break;
            };
            let Ok(Some(func)) = self.find_func(start) else { continue };
            if let Ok(Some(tree)) = self.inline_tree_offset(func) {
                probes.push((tree, end.saturating_sub(start)));
            }
        }
        if probes.is_empty() {
            return None;
        }
        let layout = self.inlined_call_layout();
        let names = Reader { data: &self.data, big_endian: self.hdr.big_endian };
        candidates.into_iter().find(|&gofunc| {
            probes.iter().all(|&(tree, len)| {
                let Some(bytes) = image.bytes_at(gofunc.saturating_add(u64::from(tree))) else {
                    return false;
                };
                let r = Reader { data: bytes, big_endian: self.hdr.big_endian };
                let (Ok(name_off), Ok(parent_pc)) =
                    (r.u32(layout.name_off, ""), r.u32(layout.parent_pc, ""))
                else {
                    return false;
                };
                let name = self.hdr.funcnametab.saturating_add(u64::from(name_off));
                let starts_name = name_off == 0 || names.u8(name - 1, "").ok() == Some(0);
                let named = names.cstr(name, "").is_ok_and(|n| !n.is_empty());
                starts_name && named && u64::from(parent_pc) < len
            })
        })
    }

    /// The inline trees at `gofunc`: inside the table when the table holds them, else a copy
    /// of the bytes from there to the end of the segment (or to the table, if it follows).
    fn inline_trees_at(
        &self,
        image: &Image<'_>,
        table_vaddr: Option<u64>,
        gofunc: u64,
    ) -> Option<InlineTrees> {
        if let Some(tv) = table_vaddr
            && gofunc >= tv
            && gofunc - tv < self.data.len() as u64
        {
            return Some(InlineTrees::InTable(gofunc - tv));
        }
        let mut bytes = image.bytes_at(gofunc)?;
        if let Some(tv) = table_vaddr
            && tv > gofunc
            && let Some(before) = usize::try_from(tv - gofunc).ok().and_then(|n| bytes.get(..n))
        {
            bytes = before;
        }
        Some(InlineTrees::Copied(bytes.to_vec()))
    }
}

/// A name as Go prints it (the runtime's `funcNameForPrint`): the type arguments of a generic
/// function's instantiation, which the table may spell as shapes (`main.Map[go.shape.int]`),
/// become `[...]`.
fn name_for_print(raw: String) -> String {
    match (raw.find('['), raw.rfind(']')) {
        (Some(open), Some(close)) if close > open => {
            format!("{}[...]{}", &raw[..open], &raw[close + 1..])
        }
        _ => raw,
    }
}

/// The `.gopclntab` section's bytes and address, if the file has one.
fn find_section<'a>(file: &object::File<'a>) -> Result<Option<(&'a [u8], Option<u64>)>> {
    let Some(section) = file.sections().find(|s| s.name().is_ok_and(|n| n.ends_with(".gopclntab")))
    else {
        return Ok(None);
    };
    let data = section.data().map_err(|e| GoPclntabError::Elf(e.to_string()))?;
    Ok(Some((data, Some(section.address()))))
}

fn section_address(file: &object::File<'_>, name: &str) -> Option<u64> {
    file.section_by_name(name).map(|s| s.address())
}

/// The symbols that help: present only in unstripped binaries.
#[derive(Default)]
struct Symbols {
    runtime_text: Option<u64>,
    gofunc: Option<u64>,
}

impl Symbols {
    fn read(file: &object::File<'_>) -> Self {
        let mut found = Symbols::default();
        for sym in file.symbols() {
            match sym.name() {
                Ok("runtime.text") => found.runtime_text = Some(sym.address()),
                // Renamed from go.func.* in Go 1.20.
                Ok("go:func.*" | "go.func.*") => found.gofunc = Some(sym.address()),
                _ => {}
            }
        }
        found
    }
}

/// The file's loaded segments: reads by virtual address.
struct Image<'a> {
    /// (virtual address, file bytes) of each loadable segment.
    segments: Vec<(u64, &'a [u8])>,
}

/// The module data (`runtime.firstmoduledata`) found for the table.
#[derive(Clone, Copy)]
struct ModuleData {
    vaddr: u64,
    /// `moduledata.text`, the start of the text (0 taken as unknown).
    text: Option<u64>,
}

impl<'a> Image<'a> {
    fn new(file: &object::File<'a>) -> Self {
        let segments =
            file.segments().filter_map(|s| Some((s.address(), s.data().ok()?))).collect();
        Image { segments }
    }

    /// The segment bytes from `vaddr` to the end of the segment's file data.
    fn bytes_at(&self, vaddr: u64) -> Option<&'a [u8]> {
        self.segments.iter().find_map(|&(start, data)| {
            let off = usize::try_from(vaddr.checked_sub(start)?).ok()?;
            data.get(off..).filter(|rest| !rest.is_empty())
        })
    }

    fn word(&self, vaddr: u64, hdr: &Header) -> Option<u64> {
        let r = Reader { data: self.bytes_at(vaddr)?, big_endian: hdr.big_endian };
        r.word(0, hdr.ptr_size, "").ok()
    }

    /// A table found by its magic: the first plausible header in a loaded segment, at a 4-byte
    /// aligned address.
    fn scan_for_table(&self) -> Option<(&'a [u8], Option<u64>)> {
        const MAGICS: [u32; 4] = [0xffff_fff1, 0xffff_fff0, 0xffff_fffa, 0xffff_fffb];
        for &(start, data) in &self.segments {
            let mut off = start.wrapping_neg() as usize % 4;
            while off + 16 <= data.len() {
                let head = [data[off], data[off + 1], data[off + 2], data[off + 3]];
                let is_magic = MAGICS
                    .iter()
                    .any(|m| u32::from_le_bytes(head) == *m || u32::from_be_bytes(head) == *m);
                if is_magic {
                    let candidate = &data[off..];
                    if Header::parse(candidate).is_ok_and(|h| h.plausible(candidate)) {
                        return Some((candidate, Some(start.wrapping_add(off as u64))));
                    }
                }
                off += 4;
            }
        }
        None
    }

    /// The module data: a pointer-aligned word equal to the table's address whose next word
    /// (the `funcnametab` slice's pointer) is the table's function-name table. Tried first at
    /// the `.go.module` section (Go 1.2x links `runtime.firstmoduledata` there).
    fn find_moduledata(
        &self,
        file: &object::File<'a>,
        hdr: &Header,
        table_vaddr: u64,
    ) -> Option<ModuleData> {
        let ps = u64::from(hdr.ptr_size);
        let is_moduledata = |vaddr: u64| {
            self.word(vaddr, hdr) == Some(table_vaddr)
                && vaddr.checked_add(ps).and_then(|va| self.word(va, hdr))
                    == table_vaddr.checked_add(hdr.funcnametab)
        };
        let found =
            section_address(file, ".go.module").filter(|&va| is_moduledata(va)).or_else(|| {
                self.segments.iter().find_map(|&(start, data)| {
                    let r = Reader { data, big_endian: hdr.big_endian };
                    let mut off = start.wrapping_neg() % ps;
                    while off + ps <= data.len() as u64 {
                        if r.word(off, hdr.ptr_size, "").ok() == Some(table_vaddr)
                            && is_moduledata(start.wrapping_add(off))
                        {
                            return Some(start.wrapping_add(off));
                        }
                        off += ps;
                    }
                    None
                })
            })?;
        // moduledata.text: after pcHeader, six slices, findfunctab, minpc and maxpc.
        let text = found.checked_add(22 * ps).and_then(|va| self.word(va, hdr)).filter(|&t| t != 0);
        Some(ModuleData { vaddr: found, text })
    }
}

#[cfg(test)]
mod tests;
