//! What the daemon runs with: its effective uid and capabilities, read from
//! `/proc/self/status` (the preflight check and `tracer status` read them here, docs/security.md).

/// The capabilities' names as the kernel numbers them (include/uapi/linux/capability.h),
/// lower case as capsh(1) prints them.
const NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_KILL: u32 = 5;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A capability the daemon keeps after start-up, and why (docs/security.md renders this table:
/// a test compares them).
pub struct Kept {
    pub capability: u32,
    /// What uses it after start-up.
    pub used_by: &'static str,
    /// What breaks without it (tests/capabilities.rs shows it break, with `--drop-capability`).
    pub without: &'static str,
    /// A capability the kernel accepts in its place: this one is not kept when that one is.
    pub implied_by: Option<u32>,
}

/// Every capability the daemon may keep (in the kernel's order) once the part that serves
/// clients is forked off; it drops the others from every set, the bounding set included
/// (docs/security.md). What only start-up needs (binding, the limits it raises, the uid change
/// of the part that serves clients) is done before the drop; loading the probes comes after.
pub const KEPT: &[Kept] = &[
    Kept {
        capability: CAP_DAC_READ_SEARCH,
        used_by: "reading what root has no read permission on: binaries (mode 0111, or another \
                  user's 0700) through /proc/PID/map_files and exe; other users' /proc/PID/fd \
                  listings (descriptor counts); container name sources",
        without: "such binaries' stacks are not symbolized (`pins_failed`); other users' \
                  descriptor counts and fd_exhaustion go; some container names stay unknown",
        implied_by: None,
    },
    Kept {
        capability: CAP_KILL,
        used_by: "signals to the part that serves clients (another uid): SIGKILL when it has not \
                  exited 2 s after its link closed, and the parent-death signal the kernel sends \
                  it in the daemon's name when the daemon dies",
        without: "a stuck part that serves clients outlives the daemon and keeps the socket \
                  and port: a restarted daemon cannot bind",
        implied_by: None,
    },
    Kept {
        capability: CAP_SYS_PTRACE,
        used_by: "other users' processes: /proc/PID/map_files, fd links, exe, root and ns/net \
                  (symbolization, holders, Go binaries, namespaces to scan)",
        without: "other users' programs are not symbolized (`pins_failed`), their holders and \
                  Go binaries go unseen",
        implied_by: None,
    },
    Kept {
        capability: CAP_SYS_ADMIN,
        used_by: "/proc/PID/map_files; setns into every network namespace for the sock_diag \
                  dumps and sysctls; it also grants what cap_bpf and cap_perfmon do",
        without: "no stack is symbolized (`pins_failed`); reconcile, pool health and port \
                  exhaustion see only the daemon's own network namespace",
        implied_by: None,
    },
    Kept {
        capability: CAP_PERFMON,
        used_by: "perf events: attaching the probes (after the drop) and the uprobes of Go \
                  programs that become suspects later",
        without: "the probes cannot attach: refused at start",
        implied_by: Some(CAP_SYS_ADMIN),
    },
    Kept {
        capability: CAP_BPF,
        used_by: "bpf(2): loading the probes (after the drop), and the Go request probes of \
                  programs that become suspects later",
        without: "the probes cannot load: refused at start",
        implied_by: Some(CAP_SYS_ADMIN),
    },
];

/// The number of a capability by its name (`cap_sys_admin`, as capsh(1) prints it; case and
/// the `cap_` prefix optional).
pub fn capability_by_name(name: &str) -> Option<u32> {
    let name = name.to_ascii_lowercase();
    let name = if name.starts_with("cap_") { name } else { format!("cap_{name}") };
    NAMES.iter().position(|n| *n == name).map(|n| n as u32)
}

/// The name of capability `capability` (`cap_N` for one this build does not name).
pub fn capability_name(capability: u32) -> String {
    NAMES.get(capability as usize).map_or_else(|| format!("cap_{capability}"), |n| (*n).to_owned())
}

/// The set the daemon keeps from `permitted`, without the capabilities in `dropped`: the
/// [`KEPT`] ones it has, less those the kernel accepts another kept one in place of.
pub fn kept_set(permitted: u64, dropped: u64) -> u64 {
    let have = |cap: u32| permitted & !dropped & (1 << cap) != 0;
    KEPT.iter()
        .filter(|k| have(k.capability) && !k.implied_by.is_some_and(have))
        .map(|k| 1u64 << k.capability)
        .sum()
}

/// This process's permitted capabilities, from `/proc/self/status`.
pub fn permitted_of_self() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapPrm in /proc/self/status"))
}

/// Drops from the bounding set every capability not in `keep` (when `permitted` holds
/// CAP_SETPCAP, which that takes; it goes last, with the capset or uid change that follows),
/// and empties the ambient set: nothing executed later could regain what was dropped.
pub fn narrow_bounding_set(keep: u64, permitted: u64) -> std::io::Result<()> {
    const CAP_SETPCAP: u64 = 8;
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..64u32 {
            // SAFETY: prctl with these options reads only its integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } < 0 {
                break;
            }
            if keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: as above.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    // SAFETY: as above; EINVAL on kernels without ambient capabilities (none to clear).
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    Ok(())
}

/// The `KEPT` table as docs/security.md shows it.
pub fn kept_table() -> String {
    let mut out =
        String::from("| capability | used after start-up for | without it |\n|---|---|---|\n");
    for k in KEPT {
        let name = capability_name(k.capability);
        let unless = k
            .implied_by
            .map(|c| format!(" (kept only without `{}`, which grants it)", capability_name(c)))
            .unwrap_or_default();
        out.push_str(&format!("| `{name}`{unless} | {} | {} |\n", k.used_by, k.without));
    }
    out
}

/// The effective, permitted and bounding sets become [`kept_set`] (inheritable and ambient
/// empty); returns that set. Capabilities are a thread's: call this while the process has one
/// thread, so that every thread it starts afterwards inherits the reduced sets.
pub fn keep_only_kept(dropped: u64) -> std::io::Result<u64> {
    let permitted = permitted_of_self()?;
    // A daemon started with fewer capabilities (not root) keeps what it has of the list.
    let kept = kept_set(permitted, dropped);
    keep_only(kept, permitted)?;
    Ok(kept)
}

/// The effective, permitted and bounding sets become `kept`, a subset of `permitted`
/// (inheritable and ambient empty). The calling thread's, like [`keep_only_kept`].
pub fn keep_only(kept: u64, permitted: u64) -> std::io::Result<()> {
    narrow_bounding_set(kept, permitted)?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let half = |shift: u32| {
        let bits = (kept >> shift) as u32;
        Data { effective: bits, permitted: bits, inheritable: 0 }
    };
    let data = [half(0), half(32)];
    // SAFETY: capset reads a v3 header and two data structs, as given.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A process's effective uid and capability set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privileges {
    pub effective_uid: u32,
    /// The effective set, one bit per capability number.
    pub effective: u64,
    /// No program it executes can gain privileges (`PR_SET_NO_NEW_PRIVS`): setuid bits and
    /// file capabilities are ignored.
    pub no_new_privs: bool,
}

/// Sets `no_new_privs` on the calling thread, which every thread and process it creates
/// afterwards inherits: called first thing in `main`, before any thread starts, so the whole
/// process has it. tracer executes no program, so this takes nothing it uses; it closes the
/// path by which a compromised tracer could gain privileges through a setuid program.
pub fn forbid_new_privileges() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS reads only its integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl Privileges {
    /// The calling process's, or `None` when `/proc/self/status` cannot be read.
    pub fn of_self() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/self/status").ok()?)
    }

    /// From the text of a `/proc/PID/status` file (`Uid:` real, effective, ...; `CapEff:` hex).
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let effective_uid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
        let effective = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
        let no_new_privs = field("NoNewPrivs:") == Some("1");
        Some(Self { effective_uid, effective, no_new_privs })
    }

    pub fn has(&self, capability: u32) -> bool {
        capability < 64 && self.effective & (1 << capability) != 0
    }

    /// The effective capabilities' names, in the kernel's order (`cap_N` for one this build
    /// does not name).
    pub fn names(&self) -> Vec<String> {
        (0..64u32).filter(|&c| self.has(c)).map(capability_name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\ttracer\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
                        CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                        CapEff:\t000001ffffffffff\n";

    #[test]
    fn this_process_can_forbid_itself_new_privileges() {
        // Harmless for the test process: it executes only what it could before. The flag is
        // the calling thread's (a test runs on a thread of its own): read that thread's status.
        forbid_new_privileges().expect("prctl");
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        assert!(Privileges::parse(&status).expect("parsed").no_new_privs);
    }

    #[test]
    fn docs_security_md_shows_the_capabilities_kept() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
                .expect("docs/security.md");
        let table = kept_table();
        assert!(doc.contains(&table), "docs/security.md should show this table:\n{table}");
        let mut caps: Vec<u32> = KEPT.iter().map(|k| k.capability).collect();
        caps.sort_unstable();
        caps.dedup();
        assert_eq!(caps.len(), KEPT.len(), "a capability kept twice");
    }

    #[test]
    fn the_kept_set_is_what_is_permitted_of_the_table_less_what_another_grants() {
        let bit = |c: u32| 1u64 << c;
        let root = u64::MAX >> (64 - 41);
        let without_bpf_ones =
            bit(CAP_DAC_READ_SEARCH) | bit(CAP_KILL) | bit(CAP_SYS_PTRACE) | bit(CAP_SYS_ADMIN);
        assert_eq!(kept_set(root, 0), without_bpf_ones, "cap_sys_admin grants cap_bpf's part");
        // Dropping cap_sys_admin keeps the two it stood in for.
        assert_eq!(
            kept_set(root, bit(CAP_SYS_ADMIN)),
            bit(CAP_DAC_READ_SEARCH)
                | bit(CAP_KILL)
                | bit(CAP_SYS_PTRACE)
                | bit(CAP_PERFMON)
                | bit(CAP_BPF)
        );
        // A daemon given only what BPF needs (file capabilities) keeps just that.
        assert_eq!(kept_set(bit(CAP_BPF) | bit(CAP_PERFMON), 0), bit(CAP_BPF) | bit(CAP_PERFMON));
        assert_eq!(kept_set(root, without_bpf_ones) & without_bpf_ones, 0);
        assert_eq!(capability_by_name("CAP_SYS_PTRACE"), Some(CAP_SYS_PTRACE));
        assert_eq!(capability_by_name("sys_admin"), Some(CAP_SYS_ADMIN));
        assert_eq!(capability_by_name("cap_nonsense"), None);
        assert_eq!(capability_name(CAP_BPF), "cap_bpf");
        assert_eq!(capability_name(60), "cap_60");
    }

    #[test]
    fn reads_the_effective_uid_and_names_every_capability() {
        let root = Privileges::parse(ROOT).expect("parsed");
        assert_eq!(root.effective_uid, 0);
        let names = root.names();
        assert_eq!(names.len(), 41);
        assert_eq!(names.first().map(String::as_str), Some("cap_chown"));
        assert!(root.has(CAP_BPF) && root.has(CAP_PERFMON));
        assert!(!root.no_new_privs, "no NoNewPrivs line");
        let locked = Privileges::parse(&format!("{ROOT}NoNewPrivs:\t1\n")).expect("parsed");
        assert!(locked.no_new_privs);
        assert_eq!(names[CAP_BPF as usize], "cap_bpf");

        let some = "Uid:\t1000\t65534\t65534\t65534\nCapEff:\t0004000000003000\n";
        let some = Privileges::parse(some).expect("parsed");
        assert_eq!(some.effective_uid, 65534, "the second Uid field is the effective one");
        assert_eq!(some.names(), ["cap_net_admin", "cap_net_raw", "cap_50"]);
        assert!(!some.has(CAP_BPF));
        assert_eq!(Privileges::parse("Uid:\t0\t0\t0\t0\n"), None, "no CapEff");
    }
}
