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
        Some(Self { effective_uid, effective })
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
    fn reads_the_effective_uid_and_names_every_capability() {
        let root = Privileges::parse(ROOT).expect("parsed");
        assert_eq!(root.effective_uid, 0);
        let names = root.names();
        assert_eq!(names.len(), 41);
        assert_eq!(names.first().map(String::as_str), Some("cap_chown"));
        assert!(root.has(CAP_BPF) && root.has(CAP_PERFMON));
        assert_eq!(names[CAP_BPF as usize], "cap_bpf");

        let some = "Uid:\t1000\t65534\t65534\t65534\nCapEff:\t0004000000003000\n";
        let some = Privileges::parse(some).expect("parsed");
        assert_eq!(some.effective_uid, 65534, "the second Uid field is the effective one");
        assert_eq!(some.names(), ["cap_net_admin", "cap_net_raw", "cap_50"]);
        assert!(!some.has(CAP_BPF));
        assert_eq!(Privileges::parse("Uid:\t0\t0\t0\t0\n"), None, "no CapEff");
    }
}
