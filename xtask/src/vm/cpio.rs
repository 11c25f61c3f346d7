//! A minimal writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//! Written here so building a guest needs no `cpio` tool and no root (device nodes are just
//! header fields). The archive is left uncompressed: a gzip initramfs would be decompressed by
//! an emulated CPU, which costs more boot time than reading a bigger file.
use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

pub struct Writer {
    out: BufWriter<File>,
    written: u64,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            next_ino: 1,
            dirs: HashSet::new(),
        })
    }

    /// Adds a directory (once; repeated calls are no-ops).
    pub fn dir(&mut self, name: &str) -> Result<()> {
        if self.dirs.contains(name) {
            return Ok(());
        }
        self.entry(name, S_IFDIR | 0o755, 0, (0, 0), &mut io::empty())?;
        self.dirs.insert(name.to_owned());
        Ok(())
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(name, S_IFREG | (mode & 0o7777), data.len() as u64, (0, 0), &mut &data[..])
    }

    /// Copies a file from the host, keeping its permission bits.
    pub fn host_file(&mut self, name: &str, source: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut f = File::open(source).with_context(|| format!("opening {}", source.display()))?;
        let meta = f.metadata().with_context(|| format!("stat {}", source.display()))?;
        let mode = S_IFREG | (meta.permissions().mode() & 0o7777);
        self.entry(name, mode, meta.len(), (0, 0), &mut f)
            .with_context(|| format!("adding {} to the initramfs", source.display()))
    }

    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(name, S_IFCHR | (mode & 0o7777), 0, (major, minor), &mut io::empty())
    }

    /// Writes the trailer entry and flushes.
    pub fn finish(mut self) -> Result<()> {
        self.entry("TRAILER!!!", 0, 0, (0, 0), &mut io::empty())?;
        self.out.flush().context("writing the initramfs")
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        rdev: (u32, u32),
        data: &mut dyn io::Read,
    ) -> Result<()> {
        // The kernel's unpacker does not create missing parents: add them first.
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent)?;
        }
        let size32 = u32::try_from(size).context("file too large for cpio")?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        // Field order of the newc header; names are stored without a leading slash.
        let fields =
            [ino, mode, 0, 0, nlink, 0, size32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        let copied = io::copy(data, &mut self.out)?;
        anyhow::ensure!(copied == size, "{name}: expected {size} bytes, read {copied}");
        self.written += copied;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header+name and data are each padded to a multiple of four bytes.
    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}
