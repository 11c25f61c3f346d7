//! The `task_cgroups` iterator (`iter/task`): the v2 cgroup id of every process, read in the
//! kernel from each task's own cgroup (what `bpf_get_current_cgroup_id()` returns in its
//! context), so it does not depend on the daemon's cgroup namespace, unlike `/proc/PID/cgroup`,
//! whose paths are relative to the reader's. Processes known only from scans (connections
//! older than the daemon, holders found by reconcile) take their cgroup id from it.
//!
//! It is loaded apart from the hooks, and a kernel that refuses it costs only those ids: the
//! daemon says so in its log and the processes keep cgroup id 0 ("unknown").
//!
//! Each run attaches a new iterator link and reads the file the kernel makes from it; reading
//! is blocking and proportional to the host's thread count (docs/kernels.md has the figure),
//! so it runs at start-up and off the event loop at reconcile, never per event.
use std::{collections::HashMap, fs::File, io::Read};

use aya::{Btf, Ebpf, programs::Iter};
use tracer_common::{TaskCgroup, programs::TASK_CGROUPS};

use crate::table::ProcessKey;

/// The v2 cgroup id of each process, by the identity events and scans give it.
pub type CgroupIds = HashMap<ProcessKey, u64>;

#[derive(Debug, thiserror::Error)]
pub enum TaskCgroupsError {
    #[error(
        "the task iterator (iter/task) is unavailable on this kernel: {0}; processes known \
         only from scans (connections older than the daemon, holders found by reconcile) show \
         cgroup id 0 (unknown) until one of their events carries it"
    )]
    Unavailable(String),

    #[error("cannot run the task iterator: {0}")]
    Program(#[from] aya::programs::ProgramError),

    #[error("cannot open the task iterator's output: {0}")]
    Link(#[from] aya::programs::links::LinkError),

    #[error("cannot read the task iterator's output: {0}")]
    Read(#[from] std::io::Error),

    #[error(
        "the task iterator wrote {0} bytes, not a whole number of {size}-byte records (a \
         kernel object and daemon of different builds: rebuild tracer)",
        size = RECORD
    )]
    Malformed(usize),
}

const RECORD: usize = size_of::<TaskCgroup>();

/// Loads (verifies) the iterator program; attaching happens on each run.
pub(super) fn load(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), TaskCgroupsError> {
    let prog: &mut Iter = ebpf
        .program_mut(TASK_CGROUPS)
        .ok_or_else(|| TaskCgroupsError::Unavailable(format!("no program `{TASK_CGROUPS}`")))?
        .try_into()?;
    prog.load("task", btf)?;
    Ok(())
}

/// Starts one run: the file to read its records from (with [`read`]).
pub(super) fn start(ebpf: &mut Ebpf) -> Result<File, TaskCgroupsError> {
    let prog: &mut Iter = ebpf
        .program_mut(TASK_CGROUPS)
        .ok_or_else(|| TaskCgroupsError::Unavailable(format!("no program `{TASK_CGROUPS}`")))?
        .try_into()?;
    let id = prog.attach()?;
    // The file holds the link: it is gone once the file is read and dropped.
    Ok(prog.take_link(id)?.into_file()?)
}

/// Reads a run to its end (blocking) and parses it.
pub fn read(mut file: File) -> Result<CgroupIds, TaskCgroupsError> {
    let mut bytes = Vec::with_capacity(64 * 1024);
    file.read_to_end(&mut bytes)?;
    parse(&bytes)
}

/// The records of a run, by process. A process with two records (impossible within a run)
/// keeps the last one.
pub fn parse(bytes: &[u8]) -> Result<CgroupIds, TaskCgroupsError> {
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(TaskCgroupsError::Malformed(bytes.len()));
    }
    let field = |record: &[u8], at: usize, len: usize| -> u64 {
        let mut word = [0u8; 8];
        word[..len].copy_from_slice(&record[at..at + len]);
        u64::from_ne_bytes(word)
    };
    Ok(bytes
        .chunks_exact(RECORD)
        .map(|record| {
            let tgid = field(record, 0, 4) as u32;
            let start_time_ns = field(record, 8, 8);
            (ProcessKey::new(tgid, start_time_ns), field(record, 16, 8))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tgid: u32, start_time_ns: u64, cgroup_id: u64) -> Vec<u8> {
        let r = TaskCgroup { tgid, _pad: 0, start_time_ns, cgroup_id };
        let mut out = Vec::new();
        out.extend_from_slice(&r.tgid.to_ne_bytes());
        out.extend_from_slice(&r._pad.to_ne_bytes());
        out.extend_from_slice(&r.start_time_ns.to_ne_bytes());
        out.extend_from_slice(&r.cgroup_id.to_ne_bytes());
        out
    }

    #[test]
    fn records_map_each_process_to_its_cgroup() {
        let mut bytes = record(1, 20_000_000, 1);
        bytes.extend(record(4242, 1_234_567_891, 0x1_0000_0007));
        let ids = parse(&bytes).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[&ProcessKey::new(1, 20_000_000)], 1);
        // Keys use the start time at the resolution /proc gives it, as events and scans do.
        assert_eq!(ids[&ProcessKey::new(4242, 1_230_000_000)], 0x1_0000_0007);
    }

    #[test]
    fn an_empty_run_has_no_processes() {
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_partial_record_is_an_error_not_a_guess() {
        let mut bytes = record(7, 0, 9);
        bytes.pop();
        assert!(matches!(parse(&bytes), Err(TaskCgroupsError::Malformed(23))));
    }
}
