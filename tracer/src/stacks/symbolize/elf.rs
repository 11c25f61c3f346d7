//! The little of an ELF file's layout the symbolizer needs itself (blazesym reads the rest):
//! the loadable segments, to turn a file offset into the virtual address a fallback resolver
//! (Go's `.gopclntab`) works in, and whether the file has a `.gopclntab` section. ELF64
//! little-endian only (the targets tracer runs on); anything else is "not ELF" here, and every
//! count and size is bounded before it is read.
use std::{fs::File, io, os::unix::fs::FileExt};

/// A `PT_LOAD` segment: `filesz` bytes at file `offset` are mapped at `vaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
}

/// A section header, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSection {
    /// `.gopclntab`, or `.data.rel.ro.gopclntab` in position-independent Go binaries.
    pub name: String,
    /// Offset of the section's bytes in the file.
    pub offset: u64,
    pub size: u64,
    /// Its virtual address (`sh_addr`).
    pub addr: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfLayout {
    pub loads: Vec<Load>,
    /// The Go symbol table, when the binary has one (Go binaries keep it when stripped).
    pub gopclntab: Option<ElfSection>,
}

impl ElfLayout {
    /// The virtual address the byte at file `offset` is loaded at.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| offset >= l.offset && offset - l.offset < l.filesz)
            .map(|l| l.vaddr.wrapping_add(offset - l.offset))
    }
}

/// Bounds on what a header may make this read (a corrupt one must not allocate gigabytes).
const MAX_ENTSIZE: u64 = 256;
const MAX_PHNUM: u64 = 4096;
const MAX_SHNUM: u64 = 1 << 16;
const MAX_SHSTRTAB: u64 = 1 << 20;
const PT_LOAD: u32 = 1;
const SHN_XINDEX: u64 = 0xffff;

/// What [`read_layout`] reads from: a file, or bytes (the fuzz target's).
pub trait ReadAt {
    /// Fills `buf` from `offset`; an error when the input ends before.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Reads the layout, or `None` when the file is not a little-endian ELF64 file.
pub fn read_layout(file: &(impl ReadAt + ?Sized)) -> io::Result<Option<ElfLayout>> {
    let mut ehdr = [0u8; 64];
    if read_at(file, &mut ehdr, 0).is_err() {
        return Ok(None);
    }
    // \x7fELF, ELFCLASS64, ELFDATA2LSB
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let phoff = u64_at(&ehdr, 0x20);
    let shoff = u64_at(&ehdr, 0x28);
    let phentsize = u64::from(u16_at(&ehdr, 0x36));
    let phnum = u64::from(u16_at(&ehdr, 0x38));
    let shentsize = u64::from(u16_at(&ehdr, 0x3a));
    let mut shnum = u64::from(u16_at(&ehdr, 0x3c));
    let mut shstrndx = u64::from(u16_at(&ehdr, 0x3e));

    let mut layout = ElfLayout::default();
    if (56..=MAX_ENTSIZE).contains(&phentsize) && phnum <= MAX_PHNUM {
        let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
        read_at(file, &mut phdrs, phoff)?;
        for ph in phdrs.chunks_exact(phentsize as usize) {
            if u32_at(ph, 0) == PT_LOAD {
                layout.loads.push(Load {
                    offset: u64_at(ph, 0x08),
                    vaddr: u64_at(ph, 0x10),
                    filesz: u64_at(ph, 0x20),
                });
            }
        }
    }

    if shoff == 0 || !(64..=MAX_ENTSIZE).contains(&shentsize) {
        return Ok(Some(layout));
    }
    // Extended numbering: the real count and string table index are in section 0.
    if shnum == 0 || shstrndx == SHN_XINDEX {
        let mut sh0 = [0u8; 64];
        read_at(file, &mut sh0, shoff)?;
        if shnum == 0 {
            shnum = u64_at(&sh0, 0x20);
        }
        if shstrndx == SHN_XINDEX {
            shstrndx = u64::from(u32_at(&sh0, 0x28));
        }
    }
    if shnum > MAX_SHNUM || shstrndx >= shnum {
        return Ok(Some(layout));
    }
    let mut shdrs = vec![0u8; (shentsize * shnum) as usize];
    read_at(file, &mut shdrs, shoff)?;
    let shdr = |i: u64| &shdrs[(i * shentsize) as usize..][..64];
    let strtab = shdr(shstrndx);
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20));
    if str_size > MAX_SHSTRTAB {
        return Ok(Some(layout));
    }
    let mut names = vec![0u8; str_size as usize];
    read_at(file, &mut names, str_off)?;
    for i in 0..shnum {
        let sh = shdr(i);
        let name_off = u32_at(sh, 0) as usize;
        let Some(name) = names.get(name_off..) else { continue };
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name.ends_with(b".gopclntab") {
            layout.gopclntab = Some(ElfSection {
                name: String::from_utf8_lossy(name).into_owned(),
                offset: u64_at(sh, 0x18),
                size: u64_at(sh, 0x20),
                addr: u64_at(sh, 0x10),
            });
            break;
        }
    }
    Ok(Some(layout))
}

fn read_at(file: &(impl ReadAt + ?Sized), buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_an_executable_load_and_no_gopclntab() {
        let file = File::open("/proc/self/exe").unwrap();
        let layout = read_layout(&file).unwrap().expect("an ELF64 file");
        assert!(!layout.loads.is_empty());
        assert_eq!(layout.gopclntab, None);
        // The address of a function of this binary, as a file offset, maps back to the same
        // virtual address relative to the load bias.
        let first = layout.loads[0];
        assert_eq!(layout.vaddr_of(first.offset), Some(first.vaddr));
        assert_eq!(layout.vaddr_of(u64::MAX), None);
    }

    #[test]
    fn non_elf_and_truncated_files_are_not_elf() {
        let dir = std::env::temp_dir().join(format!("tracer-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, b"\x7fELF").unwrap();
        assert_eq!(read_layout(&File::open(&short).unwrap()).unwrap(), None);
        let text = dir.join("text");
        std::fs::write(&text, vec![b'#'; 200]).unwrap();
        assert_eq!(read_layout(&File::open(&text).unwrap()).unwrap(), None);
        // An ELF header whose program headers lie past the end of the file: an error, not a
        // panic.
        let mut bad = vec![0u8; 64];
        bad[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bad[0x20..0x28].copy_from_slice(&1_000_000u64.to_le_bytes());
        bad[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bad[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let badf = dir.join("bad");
        std::fs::write(&badf, &bad).unwrap();
        assert!(read_layout(&File::open(&badf).unwrap()).is_err());
        // Section headers with an out-of-range string table index: no sections, no panic.
        bad[0x20..0x28].copy_from_slice(&0u64.to_le_bytes());
        bad[0x38..0x3a].copy_from_slice(&0u16.to_le_bytes());
        bad[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        bad[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        bad[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        bad[0x3e..0x40].copy_from_slice(&7u16.to_le_bytes());
        bad.extend_from_slice(&[0u8; 64]);
        std::fs::write(&badf, &bad).unwrap();
        assert_eq!(read_layout(&File::open(&badf).unwrap()).unwrap(), Some(ElfLayout::default()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
