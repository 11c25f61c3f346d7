//! The seccomp allow-list of the part that serves clients (docs/security.md, "Two
//! processes"): what a tokio runtime needs to accept, read, write and close sockets, run
//! bcrypt on a blocking thread and allocate. Anything else (opening a file, creating or
//! connecting a socket, executing a program, ptrace, bpf, namespaces) kills the process, so
//! that the daemon stops and names the signal rather than running on with a part that does
//! what it never should.
//!
//! A classic BPF program, written out here rather than pulled from a crate: the list is short,
//! and what it allows should be read in one place.
use std::io;

/// Which syscalls pass, by number, on every architecture; `ioctl` passes only for FIONBIO
/// (below).
const ALLOWED_EVERYWHERE: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_fcntl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    // Threads of the blocking pool (bcrypt): created, named, ended.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The older calls x86_64 still has (aarch64 has only their successors, above).
#[cfg(target_arch = "x86_64")]
const ALLOWED_HERE: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_poll];
#[cfg(target_arch = "aarch64")]
const ALLOWED_HERE: &[libc::c_long] = &[];

/// What the part that inspects binaries adds: reading and sizing the files it is handed, and
/// opening files by path, which blazesym does (the handed-over descriptors by
/// `/proc/self/fd/N`, the real path it resolves from them, and the separate debug information
/// a binary's build ID names). Running as nobody with no capability, it can open only what
/// any user can read.
pub fn file_reading() -> Vec<libc::c_long> {
    let mut calls = vec![
        libc::SYS_pread64,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_openat,
        libc::SYS_readlinkat,
    ];
    // The older calls musl's x86_64 build makes for the same (seen with strace).
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_readlink, libc::SYS_open, libc::SYS_stat, libc::SYS_lstat]);
    calls
}

fn allowed(extra: &[libc::c_long]) -> impl Iterator<Item = libc::c_long> + '_ {
    ALLOWED_EVERYWHERE.iter().chain(ALLOWED_HERE).chain(extra).copied()
}

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

// Classic BPF opcodes (linux/filter.h) and seccomp's (linux/seccomp.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
// Offsets into struct seccomp_data.
const NR: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// The low half of the second argument (little-endian): ioctl's request.
const ARG1_LOW: u32 = 16 + 8;
const FIONBIO: u32 = 0x5421;

/// The filter: the architecture, then each allowed number (the common list and `extra`), then
/// ioctl's one request.
fn program(extra: &[libc::c_long]) -> Vec<libc::sock_filter> {
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let jump = |n: usize| u8::try_from(n).expect("the allow-list fits an 8-bit jump");
    let mut p = vec![
        op(LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another ABI's numbers (x32, a 32-bit compat call) mean other syscalls: refused.
        op(JEQ_K, 1, 0, ARCH),
        op(RET_K, 0, 0, RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, NR),
    ];
    // After the n checks: [n] ioctl?, [n+1] load its request, [n+2] FIONBIO?, [n+3] KILL,
    // [n+4] ALLOW. Jumps count from the next instruction.
    let n = allowed(extra).count();
    for (i, nr) in allowed(extra).enumerate() {
        p.push(op(JEQ_K, jump(n + 3 - i), 0, nr as u32));
    }
    // tokio and std set sockets non-blocking with FIONBIO; no other request passes.
    p.push(op(JEQ_K, 0, 2, libc::SYS_ioctl as u32));
    p.push(op(LD_W_ABS, 0, 0, ARG1_LOW));
    p.push(op(JEQ_K, 1, 0, FIONBIO));
    p.push(op(RET_K, 0, 0, RET_KILL_PROCESS));
    p.push(op(RET_K, 0, 0, RET_ALLOW));
    p
}

/// Installs the filter, with the common list and `extra`, on the calling thread; threads it
/// creates later inherit it. Needs `no_new_privs` (set at start).
pub fn install(extra: &[libc::c_long]) -> io::Result<()> {
    let filter = program(extra);
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::other("filter too long"))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl reads `prog`, which points at `filter`, alive for the call.
    let rc = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _, 0, 0)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel would, over a seccomp_data of `nr`, `arch` and the
    /// second argument's low half.
    fn verdict(nr: libc::c_long, arch: u32, arg1: u32) -> u32 {
        verdict_with(&[], nr, arch, arg1)
    }

    fn verdict_with(extra: &[libc::c_long], nr: libc::c_long, arch: u32, arg1: u32) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[24..28].copy_from_slice(&arg1.to_le_bytes());
        let p = program(extra);
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let op = p[pc];
            match op.code {
                LD_W_ABS => {
                    let at = op.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                    pc += 1;
                }
                JEQ_K => pc += 1 + usize::from(if acc == op.k { op.jt } else { op.jf }),
                RET_K => return op.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_allow_list_passes_what_a_server_needs_and_kills_the_rest() {
        for nr in allowed(&[]) {
            assert_eq!(verdict(nr, ARCH, 0), RET_ALLOW, "syscall {nr}");
        }
        // The inspector's file reading passes only in its own filter, which still refuses
        // sockets, programs, ptrace and BPF.
        let files = file_reading();
        for nr in &files {
            assert_eq!(verdict(*nr, ARCH, 0), RET_KILL_PROCESS, "syscall {nr}");
            assert_eq!(verdict_with(&files, *nr, ARCH, 0), RET_ALLOW, "syscall {nr}");
        }
        for denied in [libc::SYS_socket, libc::SYS_execve, libc::SYS_ptrace, libc::SYS_bpf] {
            assert_eq!(verdict_with(&files, denied, ARCH, 0), RET_KILL_PROCESS, "{denied}");
        }
        assert_eq!(verdict(libc::SYS_ioctl, ARCH, FIONBIO), RET_ALLOW);
        // TIOCSTI (a terminal's input) and anything else through ioctl.
        assert_eq!(verdict(libc::SYS_ioctl, ARCH, 0x5412), RET_KILL_PROCESS);
        for denied in [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_ptrace,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_kill,
            libc::SYS_process_vm_readv,
        ] {
            assert_eq!(verdict(denied, ARCH, 0), RET_KILL_PROCESS, "syscall {denied}");
        }
        // An allowed number under another ABI is another call.
        assert_eq!(verdict(libc::SYS_read, 0x4000_0003, 0), RET_KILL_PROCESS);
    }
}
