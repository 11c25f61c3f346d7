//! The classic tracepoints' one fixed layout: the `ret` field of the syscall-exit records, which
//! the accept programs read at [`SYSCALL_EXIT_RET_OFFSET`]. Checked against the kernel's own
//! description before attaching rather than trusted.
use std::fs;

use tracer_common::SYSCALL_EXIT_RET_OFFSET;

use super::{
    error::{ProbeError, Result},
    preflight,
};

/// Fails unless `syscalls:<syscall>` has `long ret` at [`SYSCALL_EXIT_RET_OFFSET`].
pub fn check_ret_offset(syscall: &str) -> Result<()> {
    let format_file = preflight::tracefs_events().join("syscalls").join(syscall).join("format");
    let format = fs::read_to_string(&format_file)
        .map_err(|source| ProbeError::TracepointFormat { path: format_file.clone(), source })?;
    if has_ret_at(&format, SYSCALL_EXIT_RET_OFFSET) {
        Ok(())
    } else {
        Err(ProbeError::TracepointLayout {
            tracepoint: format!("syscalls:{syscall}"),
            expected: SYSCALL_EXIT_RET_OFFSET,
            format_file,
        })
    }
}

fn has_ret_at(format: &str, offset: usize) -> bool {
    format
        .lines()
        .any(|line| line.contains("long ret;") && line.contains(&format!("offset:{offset};")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ret_at_its_offset_in_a_format_file() {
        // /sys/kernel/tracing/events/syscalls/sys_exit_accept4/format of Linux 6.18.
        let format = "name: sys_exit_accept4\nID: 2233\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
            \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\n\
            print fmt: \"0x%lx\", REC->ret\n";
        assert!(has_ret_at(format, SYSCALL_EXIT_RET_OFFSET));
        assert!(!has_ret_at(format, 8));
    }
}
