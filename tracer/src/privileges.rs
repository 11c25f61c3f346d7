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

pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

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
        (0..64u32)
            .filter(|&c| self.has(c))
            .map(|c| NAMES.get(c as usize).map_or_else(|| format!("cap_{c}"), |n| (*n).to_owned()))
            .collect()
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
