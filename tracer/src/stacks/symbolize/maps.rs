//! A parser of `/proc/PID/maps` lines that never panics: a line it cannot read is an error
//! naming the line, and the caller skips it.
//!
//! A line is `start-end perms offset major:minor inode [path]`. The path is padded to a column
//! with spaces, may itself contain spaces, ends in ` (deleted)` when the file was unlinked or
//! replaced, and is absent for anonymous memory. Pseudo paths are bracketed (`[vdso]`,
//! `[stack]`, `[anon:name]`); others have no leading slash (`anon_inode:[perf_event]`).

/// What a mapping maps, as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapsPath {
    /// No path: anonymous memory (heap arenas, JIT code, goroutine stacks).
    Anonymous,
    /// A file, by the path the process sees (in its own mount namespace). `deleted`: the
    /// kernel appended ` (deleted)` (removed from `path`): the file was unlinked or replaced.
    File { path: String, deleted: bool },
    /// A bracketed pseudo path: `[vdso]`, `[vsyscall]`, `[stack]`, `[heap]`, `[anon:name]`.
    Pseudo(String),
    /// Anything else (`anon_inode:[perf_event]`, `/dev/zero` shown by other names, ...).
    Other(String),
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// `p` (private, copy on write) rather than `s`.
    pub private: bool,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub path: MapsPath,
}

impl MapsEntry {
    /// The name of this mapping's entry in `/proc/PID/map_files/` (`%lx-%lx`, no padding,
    /// whereas `maps` pads to 8 digits).
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }

    /// Executable code backed by a file: what a user-space return address can point into.
    pub fn is_executable_file(&self) -> bool {
        self.executable && self.inode != 0 && matches!(self.path, MapsPath::File { .. })
    }
}

/// A line that is not in the format above (`reason` says which field).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable /proc/PID/maps line ({reason}): {line:?}")]
pub struct MapsLineError {
    pub line: String,
    pub reason: &'static str,
}

/// Parses one line (with or without its trailing newline).
pub fn parse_line(line: &str) -> Result<MapsEntry, MapsLineError> {
    let err = |reason| MapsLineError { line: line.to_owned(), reason };
    let line_body = line.strip_suffix('\n').unwrap_or(line);
    let mut rest = line_body;
    let mut field = || -> Option<&str> {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (token, after) = trimmed.split_at(end);
        rest = after;
        (!token.is_empty()).then_some(token)
    };
    let range = field().ok_or_else(|| err("no address range"))?;
    let perms = field().ok_or_else(|| err("no permissions"))?;
    let offset = field().ok_or_else(|| err("no offset"))?;
    let dev = field().ok_or_else(|| err("no device"))?;
    let inode = field().ok_or_else(|| err("no inode"))?;

    let (start, end) = range.split_once('-').ok_or_else(|| err("address range without '-'"))?;
    let start = u64::from_str_radix(start, 16).map_err(|_| err("start address not hex"))?;
    let end = u64::from_str_radix(end, 16).map_err(|_| err("end address not hex"))?;
    if end < start {
        return Err(err("end address below start"));
    }
    let perms = perms.as_bytes();
    if perms.len() != 4 {
        return Err(err("permissions not four characters"));
    }
    let offset = u64::from_str_radix(offset, 16).map_err(|_| err("offset not hex"))?;
    let (major, minor) = dev.split_once(':').ok_or_else(|| err("device without ':'"))?;
    let dev_major = u32::from_str_radix(major, 16).map_err(|_| err("device major not hex"))?;
    let dev_minor = u32::from_str_radix(minor, 16).map_err(|_| err("device minor not hex"))?;
    let inode = inode.parse::<u64>().map_err(|_| err("inode not decimal"))?;

    // The path starts after the padding; only leading spaces are padding (a path may end with
    // a space).
    let path = rest.trim_start_matches(' ');
    let path = if path.is_empty() {
        MapsPath::Anonymous
    } else if path.starts_with('/') {
        match path.strip_suffix(" (deleted)") {
            Some(path) => MapsPath::File { path: path.to_owned(), deleted: true },
            None => MapsPath::File { path: path.to_owned(), deleted: false },
        }
    } else if path.starts_with('[') {
        MapsPath::Pseudo(path.to_owned())
    } else {
        MapsPath::Other(path.to_owned())
    };
    Ok(MapsEntry {
        start,
        end,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        private: perms[3] == b'p',
        offset,
        dev_major,
        dev_minor,
        inode,
        path,
    })
}

/// Parses a whole `maps` file: the entries, and the lines that did not parse.
pub fn parse(contents: &str) -> (Vec<MapsEntry>, Vec<MapsLineError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for line in contents.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Ok(entry) => entries.push(entry),
            Err(e) => errors.push(e),
        }
    }
    (entries, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, deleted: bool) -> MapsPath {
        MapsPath::File { path: path.into(), deleted }
    }

    #[test]
    fn executable_file_mapping() {
        let e = parse_line(
            "55d4c5a1b000-55d4c5a20000 r-xp 00002000 fd:01 1311026                    /usr/bin/cat\n",
        )
        .unwrap();
        assert_eq!((e.start, e.end, e.offset), (0x55d4c5a1b000, 0x55d4c5a20000, 0x2000));
        assert!(e.readable && !e.writable && e.executable && e.private);
        assert_eq!((e.dev_major, e.dev_minor, e.inode), (0xfd, 1, 1311026));
        assert_eq!(e.path, file("/usr/bin/cat", false));
        assert!(e.is_executable_file());
        assert_eq!(e.map_files_name(), "55d4c5a1b000-55d4c5a20000");
    }

    #[test]
    fn map_files_name_is_unpadded() {
        let e = parse_line("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon")
            .unwrap();
        assert_eq!(e.map_files_name(), "400000-452000");
    }

    #[test]
    fn deleted_file() {
        let e =
            parse_line("7f1c2e400000-7f1c2e428000 r-xp 00000000 00:2a 42 /tmp/build/app (deleted)")
                .unwrap();
        assert_eq!(e.path, file("/tmp/build/app", true));
        assert!(e.is_executable_file());
    }

    #[test]
    fn spaces_in_path() {
        let e = parse_line(
            "7f0000000000-7f0000001000 r-xp 00001000 08:01 77      /opt/my app/lib with  spaces.so",
        )
        .unwrap();
        assert_eq!(e.path, file("/opt/my app/lib with  spaces.so", false));
        // A trailing space belongs to the name; a deleted file with spaces keeps them.
        let e = parse_line("7f0000000000-7f0000001000 r-xp 0 08:01 77 /a b  (deleted)").unwrap();
        assert_eq!(e.path, file("/a b ", true));
        let e = parse_line("7f0000000000-7f0000001000 r-xp 0 08:01 77 /trailing ").unwrap();
        assert_eq!(e.path, file("/trailing ", false));
    }

    #[test]
    fn pseudo_and_anonymous() {
        let e = parse_line("7ffd4b5e5000-7ffd4b5e7000 r-xp 00000000 00:00 0  [vdso]").unwrap();
        assert_eq!(e.path, MapsPath::Pseudo("[vdso]".into()));
        assert!(e.executable && !e.is_executable_file());
        let e = parse_line("7f5a8c000000-7f5a8c021000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(e.path, MapsPath::Anonymous);
        let e = parse_line("7f5a8c000000-7f5a8c021000 rwxp 00000000 00:00 0").unwrap();
        assert_eq!(e.path, MapsPath::Anonymous);
        assert!(!e.is_executable_file(), "JIT code has no file");
        let e = parse_line("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]")
            .unwrap();
        assert_eq!(e.path, MapsPath::Pseudo("[vsyscall]".into()));
        let e = parse_line("7f00-7f10 rw-p 0 00:00 0 [anon:glibc malloc]").unwrap();
        assert_eq!(e.path, MapsPath::Pseudo("[anon:glibc malloc]".into()));
        let e = parse_line("7f00-7f10 rw-s 0 00:0e 2071 anon_inode:[perf_event]").unwrap();
        assert_eq!(e.path, MapsPath::Other("anon_inode:[perf_event]".into()));
        assert!(!e.private);
    }

    #[test]
    fn memfd_is_a_file() {
        let e = parse_line("7f00-7f10 r-xp 0 00:01 3456 /memfd:jit-code (deleted)").unwrap();
        assert_eq!(e.path, file("/memfd:jit-code", true));
        assert!(e.is_executable_file());
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for (line, reason) in [
            ("", "no address range"),
            ("7f00-7f10", "no permissions"),
            ("7f00-7f10 r-xp", "no offset"),
            ("7f00-7f10 r-xp 0", "no device"),
            ("7f00-7f10 r-xp 0 08:01", "no inode"),
            ("7f007f10 r-xp 0 08:01 1 /x", "address range without '-'"),
            ("zz-7f10 r-xp 0 08:01 1 /x", "start address not hex"),
            ("7f00-zz r-xp 0 08:01 1 /x", "end address not hex"),
            ("7f10-7f00 r-xp 0 08:01 1 /x", "end address below start"),
            ("7f00-7f10 r-x 0 08:01 1 /x", "permissions not four characters"),
            ("7f00-7f10 r-xp g 08:01 1 /x", "offset not hex"),
            ("7f00-7f10 r-xp 0 0801 1 /x", "device without ':'"),
            ("7f00-7f10 r-xp 0 0x:01 1 /x", "device major not hex"),
            ("7f00-7f10 r-xp 0 08:0y 1 /x", "device minor not hex"),
            ("7f00-7f10 r-xp 0 08:01 -1 /x", "inode not decimal"),
            ("ffffffffffffffffff-0 r-xp 0 08:01 1 /x", "start address not hex"),
            ("7f00-7f10 r-xp 0 08:01 1é /x", "inode not decimal"),
        ] {
            assert_eq!(parse_line(line).unwrap_err().reason, reason, "{line:?}");
        }
    }

    #[test]
    fn whole_file_keeps_good_lines_and_reports_bad_ones() {
        let (entries, errors) = parse(
            "00400000-00401000 r-xp 00000000 08:01 5 /bin/a\n\
             garbage\n\
             \n\
             7ffd4b5e5000-7ffd4b5e7000 r-xp 00000000 00:00 0  [vdso]\n",
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, "garbage");
    }

    #[test]
    fn parses_this_process() {
        let contents = std::fs::read_to_string("/proc/self/maps").unwrap();
        let (entries, errors) = parse(&contents);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(entries.iter().any(MapsEntry::is_executable_file));
    }
}
