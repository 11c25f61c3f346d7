//! Looking into another process's BPF objects from outside, without changing it: the fill of the
//! daemon's ring buffer (which the daemon does not expose) and the run time of BPF programs.
//! Descriptors are copied with pidfd_getfd (root), read, and closed.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::procfs::{anon_fds, fdinfo_field};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_ENABLE_STATS: libc::c_int = 32;
const BPF_MAP_TYPE_RINGBUF: &str = "27";

/// A copy of descriptor `fd` of process `pid`.
fn steal_fd(pid: u32, fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscalls; each returned descriptor is owned exactly once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pidfd_open({pid})"));
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let local = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if local < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pidfd_getfd({pid}, {fd})"));
        }
        Ok(OwnedFd::from_raw_fd(local as i32))
    }
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The name of a BPF map or program (both info structs have it; at different offsets).
fn object_name(fd: &OwnedFd, name_offset: usize) -> Result<String> {
    let mut info = [0u8; 256];
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    let name = &info[name_offset..name_offset + 16];
    let len = name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// The producer and consumer positions of a ring buffer map, mapped read-only.
pub struct RingView {
    base: *const u8,
    page: usize,
    pub size: u64,
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only and only read with volatile loads.
unsafe impl Send for RingView {}

impl RingView {
    /// The ring buffer map named `name` held by `pid`.
    pub fn open(pid: u32, name: &str) -> Result<Self> {
        for (fd, info) in anon_fds(pid, "bpf-map") {
            if fdinfo_field(&info, "map_type") != Some(BPF_MAP_TYPE_RINGBUF) {
                continue;
            }
            let local = steal_fd(pid, fd)?;
            // bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, then name.
            if object_name(&local, 24)? != name {
                continue;
            }
            let size: u64 = fdinfo_field(&info, "max_entries")
                .and_then(|v| v.parse().ok())
                .context("ring size")?;
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            // SAFETY: a read-only shared mapping of the ring's two position pages (consumer, then
            // producer), which the kernel allows; unmapped in Drop.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    2 * page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    local.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error())
                    .context("mmap of the ring buffer positions");
            }
            return Ok(Self { base: base.cast(), page, size, _fd: local });
        }
        bail!("process {pid} holds no ring buffer map named {name}")
    }

    /// Bytes written by the kernel and not yet consumed by the daemon.
    pub fn fill(&self) -> u64 {
        // SAFETY: both positions are u64s at the start of their page, inside the mapping.
        let (consumer, producer) = unsafe {
            (
                std::ptr::read_volatile(self.base.cast::<u64>()),
                std::ptr::read_volatile(self.base.add(self.page).cast::<u64>()),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingView {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, 2 * self.page) };
    }
}

/// Samples a ring's fill in a thread until stopped; returns the highest fill seen.
pub struct FillSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl FillSampler {
    pub fn start(ring: RingView, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                max = max.max(ring.fill());
                samples += 1;
                std::thread::sleep(every);
            }
            (max, samples)
        });
        Self { stop, thread }
    }

    /// (highest fill in bytes, number of samples).
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

/// Keeps the kernel's BPF run-time statistics on while alive (BPF_ENABLE_STATS: they stop when
/// the last such descriptor closes, so a crash cannot leave them on).
pub struct StatsEnabled(#[allow(dead_code)] OwnedFd);

impl StatsEnabled {
    pub fn new() -> Result<Self> {
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let attr: u32 = 0;
        // SAFETY: a 4-byte attr read by the kernel; the returned fd is owned once.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, &attr as *const u32, 4usize) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
        }
        // SAFETY: a fresh descriptor from the kernel.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Cumulative run count and run time of one BPF program.
#[derive(Clone, Debug)]
pub struct ProgStats {
    pub id: u64,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Every BPF program `pid` holds, with its statistics (run time counts only while stats are on).
pub fn prog_stats(pid: u32) -> Result<Vec<ProgStats>> {
    let mut out = Vec::new();
    for (fd, info) in anon_fds(pid, "bpf-prog") {
        let num = |k: &str| fdinfo_field(&info, k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let id = num("prog_id");
        if out.iter().any(|p: &ProgStats| p.id == id) {
            continue;
        }
        // bpf_prog_info: name follows type, id, tag[8], two lengths, two pointers, load_time,
        // created_by_uid, nr_map_ids and map_ids: offset 64.
        let name = steal_fd(pid, fd)
            .and_then(|f| object_name(&f, 64))
            .unwrap_or_else(|_| format!("prog{id}"));
        out.push(ProgStats { id, name, run_cnt: num("run_cnt"), run_time_ns: num("run_time_ns") });
    }
    out.sort_by_key(|p| p.id);
    Ok(out)
}

/// `after - before` per program.
pub fn prog_delta(before: &[ProgStats], after: &[ProgStats]) -> Vec<ProgStats> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            ProgStats {
                id: a.id,
                name: a.name.clone(),
                run_cnt: a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt)),
                run_time_ns: a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns)),
            }
        })
        .collect()
}
