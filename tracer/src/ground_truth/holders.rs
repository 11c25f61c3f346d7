//! Which processes hold which socket: `/proc/<pid>/fd/*` links of the form `socket:[INODE]`.
use std::{collections::HashMap, fs};

/// A process holding a socket descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub pid: u32,
    /// CLOCK_BOOTTIME ns, the same clock as the events' `start_time_ns`.
    pub start_time_ns: u64,
    pub comm: String,
}

/// Numeric entries of /proc.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Socket inode -> processes holding it. Processes that exit mid-scan are skipped.
pub fn scan_holders() -> HashMap<u64, Vec<Holder>> {
    let mut map: HashMap<u64, Vec<Holder>> = HashMap::new();
    let ticks = clock_ticks_per_second();
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let mut holder: Option<Holder> = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let Some(inode) = target.to_str().and_then(socket_inode) else { continue };
            if holder.is_none() {
                holder = process_identity(pid, ticks);
            }
            if let Some(h) = &holder {
                let entry = map.entry(inode).or_default();
                // Two descriptors of one process on the same socket count once.
                if !entry.iter().any(|e| e.pid == h.pid) {
                    entry.push(h.clone());
                }
            }
        }
    }
    map
}

/// The inode of a `/proc/<pid>/fd/*` link to a socket (`socket:[INODE]`).
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// pid, start time and comm from /proc/<pid>/stat.
pub fn process_identity(pid: u32, ticks_per_second: u64) -> Option<Holder> {
    parse_stat(pid, &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?, ticks_per_second)
}

/// pid, start time and comm from the text of /proc/<pid>/stat.
pub fn parse_stat(pid: u32, stat: &str, ticks_per_second: u64) -> Option<Holder> {
    // comm is in parentheses and may contain spaces or parentheses: split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // Fields after comm start at field 3 (state); starttime is field 22.
    let start_ticks: u64 = stat.get(close + 2..)?.split_whitespace().nth(19)?.parse().ok()?;
    let start_time_ns = start_ticks.saturating_mul(1_000_000_000 / ticks_per_second.max(1));
    Some(Holder { pid, start_time_ns, comm })
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn this_process_holds_its_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).expect("link");
        let inode: u64 = link
            .to_string_lossy()
            .trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .expect("inode");
        let holders = scan_holders();
        let me = std::process::id();
        assert!(holders.get(&inode).is_some_and(|h| h.iter().any(|h| h.pid == me)));
    }

    #[test]
    fn parses_comm_with_spaces_and_parentheses() {
        let me = process_identity(std::process::id(), clock_ticks_per_second()).expect("own stat");
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time_ns > 0);
    }
}
