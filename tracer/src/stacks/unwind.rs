//! Recovers the frames a frame-pointer walk misses at the top of an opener stack: the kernel
//! walks the user stack by frame pointers, and a function without one (Debian's C library is
//! built without them: `connect`, `accept`) hides its caller, the very function that opened
//! the connection. The kernel also sends the user registers (ip, sp, bp) and a window of the
//! stack above sp; from these, the module's call-frame information (`.eh_frame`, parsed by
//! gimli) gives the missing return addresses.
//!
//! Which functions need it is decided by their unwind information, never by file name: while
//! the frame's CFA (canonical frame address) is computed from rsp, the function keeps no frame
//! pointer at that address and its caller is recovered from the window; once it is computed from
//! rbp, the function has set up its frame pointer, and the kernel's walk from bp is right from
//! there. The pure part ([`recover`]) takes the rules as a function, so it is tested without
//! files; [`ModuleCfi`] reads them from real ELF files.
use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment, ReadRef};
use tracer_common::stacks::StackRecord;

use super::symbolize::{PinnedFile, PinnedProcess};

/// Frames recovered at most above the first one: a C library wrapper (one frame in Debian 12's
/// glibc) and a few helpers between it and the syscall, as newer glibc cancellation has.
pub const MAX_RECOVERED: usize = 4;

/// Call-site rules kept (about 40 bytes each); the cache starts over when full.
const MAX_CACHED_RULES: usize = 16 * 1024;

/// The largest `.eh_frame` (plus `.eh_frame_hdr`) read from one module.
const MAX_CFI_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("not an ELF file tracer can read: {0}")]
    Elf(#[from] object::Error),
    #[error("no .eh_frame section (nothing to unwind with)")]
    NoEhFrame,
    #[error(".eh_frame is {0} bytes, more than the {MAX_CFI_BYTES} read")]
    TooLarge(u64),
}

/// How to find the caller of the function executing at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FrameRule {
    /// The CFA is rbp-based: the function has a frame pointer, the kernel's walk covers its
    /// caller.
    FramePointer,
    /// The CFA is `sp + cfa_offset`; the return address is saved at `cfa + ra_offset`, and the
    /// caller's rbp at `cfa + bp_offset` (`None`: rbp is unchanged).
    StackPointer { cfa_offset: i64, ra_offset: i64, bp_offset: Option<i64> },
    /// No unwind information here, or rules this does not follow (expressions).
    Unknown,
}

/// Whether an address is where the thread entered the kernel (the next instruction to run) or a
/// return address (the call before it belongs to the caller's code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AddressRole {
    Current,
    Return,
}

/// The frames of a stack with the missing ones recovered: `frames` (innermost first, from the
/// kernel's frame-pointer walk, `frames[0] == ip`) with the return addresses found by unwinding
/// from (ip, sp, bp) through `window` (the stack from sp up) inserted after `frames[0]`. A
/// recovered address that the walk already had next is not inserted twice; the walk's frames
/// are dropped if the unwound functions had changed rbp (it did not start from a frame
/// pointer then). `None` when nothing was recovered.
pub fn recover(
    ip: u64,
    sp: u64,
    bp: u64,
    window: &[u64],
    frames: &[u64],
    mut rule_at: impl FnMut(u64, AddressRole) -> FrameRule,
) -> Option<Vec<u64>> {
    if frames.first() != Some(&ip) || ip == 0 {
        return None;
    }
    let read = |address: u64| -> Option<u64> {
        let delta = address.checked_sub(sp)?;
        if delta % 8 != 0 {
            return None;
        }
        window.get(usize::try_from(delta / 8).ok()?).copied()
    };
    let entry_bp = bp;
    let (mut pc, mut sp, mut bp, mut role) = (ip, sp, bp, AddressRole::Current);
    let mut recovered = Vec::new();
    while recovered.len() < MAX_RECOVERED {
        let FrameRule::StackPointer { cfa_offset, ra_offset, bp_offset } = rule_at(pc, role) else {
            break;
        };
        let Some(cfa) = sp.checked_add_signed(cfa_offset) else { break };
        let Some(ra) = cfa.checked_add_signed(ra_offset).and_then(read) else { break };
        if ra == 0 {
            break;
        }
        if let Some(offset) = bp_offset {
            let Some(saved) = cfa.checked_add_signed(offset).and_then(read) else { break };
            bp = saved;
        }
        recovered.push(ra);
        (pc, sp, role) = (ra, cfa, AddressRole::Return);
    }
    // The frame-pointer walk continues from the caller's caller: drop what it already has.
    while recovered.last().is_some_and(|last| frames.get(1) == Some(last)) {
        recovered.pop();
    }
    if recovered.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(frames.len() + recovered.len());
    out.push(frames[0]);
    out.extend(recovered);
    // The kernel walked from the bp the thread entered with: that is the caller's frame chain
    // only if the unwound frames left rbp as it was (glibc's wrappers never touch it). If one
    // saved and reused it, the walk started from a value that is no frame pointer.
    if bp == entry_bp {
        out.extend_from_slice(&frames[1..]);
    }
    Some(out)
}

/// A module's call-frame information, copied out of its ELF file.
pub struct ModuleCfi {
    eh_frame: Vec<u8>,
    /// `.eh_frame_hdr`'s sorted search table, when the module has one.
    eh_frame_hdr: Option<Vec<u8>>,
    bases: BaseAddresses,
    /// PT_LOAD segments: (file offset, virtual address, size in the file).
    loads: Vec<(u64, u64, u64)>,
}

impl ModuleCfi {
    /// Reads `.eh_frame`, `.eh_frame_hdr` and the load segments from an ELF file.
    pub fn from_elf<'data, R: ReadRef<'data>>(data: R) -> Result<Self, UnwindError> {
        let file = object::File::parse(data)?;
        let eh_frame = file.section_by_name(".eh_frame").ok_or(UnwindError::NoEhFrame)?;
        let hdr = file.section_by_name(".eh_frame_hdr");
        // Sizes are the file's word: a hostile one must not overflow the sum.
        let size = eh_frame.size().saturating_add(hdr.as_ref().map_or(0, ObjectSection::size));
        if size > MAX_CFI_BYTES {
            return Err(UnwindError::TooLarge(size));
        }
        let mut bases = BaseAddresses::default().set_eh_frame(eh_frame.address());
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        let eh_frame_hdr = match &hdr {
            Some(h) => {
                bases = bases.set_eh_frame_hdr(h.address());
                Some(h.data()?.to_vec())
            }
            None => None,
        }
        .filter(|h| search_table_is_sound(h, &bases, eh_frame.address(), eh_frame.size()));
        let mut loads = Vec::new();
        for segment in file.segments() {
            let (offset, filesz) = segment.file_range();
            loads.push((offset, segment.address(), filesz));
        }
        Ok(Self { eh_frame: eh_frame.data()?.to_vec(), eh_frame_hdr, bases, loads })
    }

    /// The virtual address (as the ELF file lays it out) of file offset `offset`.
    pub fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(start, _, size)| (*start..start.saturating_add(*size)).contains(&offset))
            .and_then(|(start, vaddr, _)| vaddr.checked_add(offset - start))
    }

    /// The rule at file offset `offset`.
    pub fn rule_for_offset(&self, offset: u64, role: AddressRole) -> FrameRule {
        match self.vaddr_of_offset(offset) {
            Some(vaddr) => self.rule_at(vaddr, role),
            None => FrameRule::Unknown,
        }
    }

    /// The rule at virtual address `vaddr`.
    pub fn rule_at(&self, vaddr: u64, role: AddressRole) -> FrameRule {
        // A return address is looked up one byte back: inside the call, in its function.
        let lookup = match role {
            AddressRole::Current => vaddr,
            AddressRole::Return => vaddr.saturating_sub(1),
        };
        let eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        let mut ctx = UnwindContext::new();
        // The sorted search table of .eh_frame_hdr (a few header fields to parse); without it,
        // a linear search of .eh_frame.
        let parsed = self
            .eh_frame_hdr
            .as_deref()
            .and_then(|hdr| EhFrameHdr::new(hdr, LittleEndian).parse(&self.bases, 8).ok());
        let row = match parsed.as_ref().and_then(|p| p.table()) {
            Some(table) => table.unwind_info_for_address(
                &eh_frame,
                &self.bases,
                &mut ctx,
                lookup,
                EhFrame::cie_from_offset,
            ),
            None => eh_frame.unwind_info_for_address(
                &self.bases,
                &mut ctx,
                lookup,
                EhFrame::cie_from_offset,
            ),
        };
        let Ok(row) = row else { return FrameRule::Unknown };
        let CfaRule::RegisterAndOffset { register, offset } = *row.cfa() else {
            return FrameRule::Unknown;
        };
        if register == X86_64::RBP {
            return FrameRule::FramePointer;
        }
        if register != X86_64::RSP {
            return FrameRule::Unknown;
        }
        let Some(RegisterRule::Offset(ra_offset)) = row.register(X86_64::RA) else {
            return FrameRule::Unknown;
        };
        let bp_offset = match row.register(X86_64::RBP) {
            None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => None,
            Some(RegisterRule::Offset(o)) => Some(o),
            Some(_) => return FrameRule::Unknown,
        };
        FrameRule::StackPointer { cfa_offset: offset, ra_offset, bp_offset }
    }
}

/// Whether `.eh_frame_hdr` describes this `.eh_frame` and its search table points only into it.
/// gimli follows an entry by subtracting the section's address from it, which overflows on an
/// entry below it (a panic in debug builds, found by the `eh_frame` fuzz target): a table that
/// is not sound is not used, and lookups search `.eh_frame` itself. Read once per module.
fn search_table_is_sound(hdr: &[u8], bases: &BaseAddresses, eh_frame: u64, size: u64) -> bool {
    let Ok(parsed) = EhFrameHdr::new(hdr, LittleEndian).parse(bases, 8) else { return false };
    if parsed.eh_frame_ptr().direct().ok() != Some(eh_frame) {
        return false;
    }
    let Some(table) = parsed.table() else { return true };
    let mut entries = table.iter(bases);
    loop {
        match entries.next() {
            Ok(Some((_, fde))) => match fde.direct() {
                Ok(at) if at >= eh_frame && at - eh_frame < size => {}
                _ => return false,
            },
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Counts of what recovery did, for `tracer status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindCounters {
    /// Stacks that got at least one frame back.
    pub recovered: u64,
}

/// Where the rules come from when the files are parsed in another process (the inspector
/// part): the rule at file offset `offset` of `file`.
pub trait RuleSource: Send {
    fn rule(&self, file: &Arc<PinnedFile>, offset: u64, role: AddressRole) -> FrameRule;
}

/// The daemon's side: [`ModuleCfi`] of each module met, read once per file while a process
/// pins it, or the rules of a [`RuleSource`].
#[derive(Default)]
pub struct Unwinder {
    /// Parses elsewhere when set.
    elsewhere: Option<Box<dyn RuleSource>>,
    /// By the pinned file's address (its `Arc`): the file and what it held (`None`: no usable
    /// unwind information, asked once).
    modules: HashMap<usize, (Weak<PinnedFile>, Option<Arc<ModuleCfi>>)>,
    /// Rules met, by (file, file offset, role).
    rules: HashMap<(usize, u64, AddressRole), FrameRule>,
    counters: UnwindCounters,
}

impl Unwinder {
    /// An unwinder that asks `source` for rules, parsing no file itself.
    pub fn with_rules(source: Box<dyn RuleSource>) -> Self {
        Self { elsewhere: Some(source), ..Self::default() }
    }

    pub fn counters(&self) -> UnwindCounters {
        self.counters
    }

    /// `record`'s frames with the frames its C library wrapper hid recovered, or `None`.
    pub fn recover(&mut self, process: &PinnedProcess, record: &StackRecord) -> Option<Vec<u64>> {
        let window = record.window();
        if window.is_empty() {
            return None;
        }
        let regs = record.regs;
        let frames = recover(regs.ip, regs.sp, regs.bp, window, record.frames(), |pc, role| {
            let lookup = if role == AddressRole::Return { pc.saturating_sub(1) } else { pc };
            let Some(mapping) = process.mapping_for(lookup) else { return FrameRule::Unknown };
            let Some(file) = &mapping.file else { return FrameRule::Unknown };
            self.rule(file, mapping.file_offset(pc), role)
        });
        if frames.is_some() {
            self.counters.recovered += 1;
        }
        frames
    }

    /// The rule at file offset `offset` of `file`, from the cache when this call site was met
    /// before: a process opens its connections from a few call sites, and a search of
    /// `.eh_frame` costs microseconds on the event loop, a cache hit tens of nanoseconds.
    fn rule(&mut self, file: &Arc<PinnedFile>, offset: u64, role: AddressRole) -> FrameRule {
        let key = (Arc::as_ptr(file) as usize, offset, role);
        if let Some(rule) = self.rules.get(&key) {
            return *rule;
        }
        if self.elsewhere.is_some() {
            // Held for `sweep`, which clears the rules once a file goes (its address may be
            // reused by a new one).
            let live = self
                .modules
                .get(&key.0)
                .is_some_and(|(weak, _)| weak.upgrade().is_some_and(|l| Arc::ptr_eq(&l, file)));
            if !live {
                self.modules.insert(key.0, (Arc::downgrade(file), None));
            }
        }
        let rule = match &self.elsewhere {
            Some(source) => source.rule(file, offset, role),
            None => match self.module(file) {
                Some(cfi) => cfi.rule_for_offset(offset, role),
                None => FrameRule::Unknown,
            },
        };
        if self.rules.len() >= MAX_CACHED_RULES {
            self.rules.clear();
        }
        self.rules.insert(key, rule);
        rule
    }

    fn module(&mut self, file: &Arc<PinnedFile>) -> Option<Arc<ModuleCfi>> {
        let key = Arc::as_ptr(file) as usize;
        if let Some((weak, cfi)) = self.modules.get(&key)
            && weak.upgrade().is_some_and(|live| Arc::ptr_eq(&live, file))
        {
            return cfi.clone();
        }
        let cache = object::ReadCache::new(file.file());
        let cfi = ModuleCfi::from_elf(&cache)
            .map_err(|e| log::debug!("no unwind information in {}: {e}", file.fd_path().display()))
            .ok()
            .map(Arc::new);
        self.modules.insert(key, (Arc::downgrade(file), cfi.clone()));
        cfi
    }

    /// Drops the modules no pinned process holds any more.
    pub fn sweep(&mut self) {
        let before = self.modules.len();
        self.modules.retain(|_, (weak, _)| weak.strong_count() > 0);
        if self.modules.len() != before {
            // Keyed by file addresses, which a new file may reuse.
            self.rules.clear();
        }
    }
}

#[cfg(test)]
mod tests;
