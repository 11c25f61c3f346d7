/* CO-RE accessors called from the Rust programs. Compiled to LLVM bitcode by clang and linked
 * into the Rust object by bpf-linker, which inlines them; aya applies the relocations when it
 * loads the object. Keep every function small, total and free of side effects.
 *
 * Every kernel field access is written once, below, with the way it is read as its first
 * argument (S), one of three read styles:
 *
 *   PROBE   bpf_probe_read_kernel() through CO-RE relocations (BPF_CORE_READ): any kernel
 *           pointer, such as a kprobe's registers, the fd table, or the current task on kernels
 *           without bpf_get_current_task_btf().
 *   DIRECT  a plain load through a BTF-typed pointer: the socket argument of a tp_btf, fentry
 *           or fexit program, or the task from bpf_get_current_task_btf(). The verifier turns it
 *           into a fault-safe direct read instead of a helper call, and rejects it on any other
 *           pointer. inet_sock_set_state runs about ten times per connection, so this is most
 *           of the probes' cost. The relocations are the same: the structs are
 *           preserve_access_index.
 *   COPY    a field of struct sock taken from a copy of the socket's first TRACER_SK_COPY bytes
 *           on the stack, at its relocated offset (tracer_sk_summary). Only fields inside the
 *           copy.
 *
 * TRACER_SK_ACCESSOR expands one socket accessor into its two functions, tracer_sk_<name>
 * (PROBE) and tracer_sk_<name>_btf (DIRECT); the Rust side declares them with one macro too
 * (src/core_shim.rs). */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#define SHIM __attribute__((always_inline))

/* ---- Read styles. Each expands `obj->path` (path: a chain of members, no pointer hops). */

#define TRACER_READ(S, obj, path) TRACER_READ_##S(obj, path)
#define TRACER_READ_PROBE(obj, path) BPF_CORE_READ(obj, path)
#define TRACER_READ_DIRECT(obj, path) ((obj)->path)
#define TRACER_READ_COPY(copy, path)                                                   \
	(*(__typeof_unqual__(((struct sock *)0)->path) *)((copy) +                      \
							   bpf_core_field_offset(((struct sock *)0)->path)))

/* Copies the whole member into *dst, which must have its size. */
#define TRACER_READ_INTO(S, dst, obj, path) TRACER_READ_INTO_##S(dst, obj, path)
#define TRACER_READ_INTO_PROBE(dst, obj, path)                                          \
	({                                                                               \
		_Static_assert(sizeof(*(dst)) == sizeof((obj)->path), "size of " #path); \
		BPF_CORE_READ_INTO(dst, obj, path);                                      \
	})
#define TRACER_READ_INTO_DIRECT(dst, obj, path)                                         \
	({                                                                               \
		_Static_assert(sizeof(*(dst)) == sizeof((obj)->path), "size of " #path); \
		__builtin_memcpy(dst, &(obj)->path, sizeof(*(dst)));                     \
	})
#define TRACER_READ_INTO_COPY(dst, copy, path)                                                 \
	({                                                                                      \
		_Static_assert(sizeof(*(dst)) == sizeof(((struct sock *)0)->path), "size of " #path); \
		__builtin_memcpy(dst, &TRACER_READ_COPY(copy, path), sizeof(*(dst)));           \
	})

/* A member that was a bitfield on old kernels. DIRECT reads it as the plain field it became:
 * only for members that stopped being bitfields before 5.8, the oldest kernel tracer runs on. */
#define TRACER_READ_BITFIELD(S, obj, field) TRACER_READ_BITFIELD_##S(obj, field)
#define TRACER_READ_BITFIELD_PROBE(obj, field) BPF_CORE_READ_BITFIELD_PROBED(obj, field)
#define TRACER_READ_BITFIELD_DIRECT(obj, field) ((obj)->field)

/* ---- Every socket field the probes read, once. */

#define SK_FAMILY(S, sk) TRACER_READ(S, sk, __sk_common.skc_family)
#define SK_STATE(S, sk) TRACER_READ(S, sk, __sk_common.skc_state)
#define SK_LOCAL_PORT(S, sk) TRACER_READ(S, sk, __sk_common.skc_num)
#define SK_REMOTE_PORT_BE(S, sk) TRACER_READ(S, sk, __sk_common.skc_dport)
/* skc_num is zeroed once a socket in CLOSE gives its port back (a reset, a failed connect);
 * inet_sport keeps it, in network order. Always a probe read: it lies past struct sock, where
 * the verifier refuses a BTF-typed socket's loads (and the path is rare). */
#define SK_SOURCE_PORT(S, sk) __builtin_bswap16(TRACER_READ(PROBE, (struct inet_sock *)(sk), inet_sport))
#define SK_LOCAL_ADDR4(S, sk) TRACER_READ(S, sk, __sk_common.skc_rcv_saddr)
#define SK_REMOTE_ADDR4(S, sk) TRACER_READ(S, sk, __sk_common.skc_daddr)
#define SK_LOCAL_ADDR6_INTO(S, dst, sk) TRACER_READ_INTO(S, dst, sk, __sk_common.skc_v6_rcv_saddr)
#define SK_REMOTE_ADDR6_INTO(S, dst, sk) TRACER_READ_INTO(S, dst, sk, __sk_common.skc_v6_daddr)
#define SK_NET(S, sk) TRACER_READ(S, sk, __sk_common.skc_net.net)
/* A bitfield before 5.6; far past the copy. */
#define SK_PROTOCOL(S, sk) TRACER_READ_BITFIELD(S, sk, sk_protocol)
#define SK_SOCKET(S, sk) TRACER_READ(S, sk, sk_socket)
/* struct tcp_sock's byte counters: probe reads, like SK_SOURCE_PORT (past struct sock). */
#define TCP_BYTES_RECEIVED(S, sk) TRACER_READ(PROBE, (struct tcp_sock *)(sk), bytes_received)
#define TCP_BYTES_ACKED(S, sk) TRACER_READ(PROBE, (struct tcp_sock *)(sk), bytes_acked)
/* A positive errno once the kernel failed the socket (0 when none). */
#define SK_ERR(S, sk) ((__u32)TRACER_READ(S, sk, sk_err))
/* Older kernels (5.10 among them) have sk_flags in struct sock, newer ones skc_flags in
 * struct sock_common. */
#define SK_FLAGS(S, sk)                                                              \
	(bpf_core_field_exists(((struct sock___flags_in_sock *)0)->sk_flags)         \
		 ? TRACER_READ(S, (struct sock___flags_in_sock *)(sk), sk_flags)     \
		 : TRACER_READ(S, sk, __sk_common.skc_flags))
#define NET_INUM(S, net) TRACER_READ(S, net, ns.inum)
#define SOCKET_FILE(S, sock) TRACER_READ(S, sock, file)
/* 1 when the file holds no reference any more. 6.13 made f_count a file_ref_t (f_ref), which
 * holds (references - 1) and encodes dead/released as negative values. */
#define FILE_RELEASED(S, file)                                                       \
	(bpf_core_field_exists(((struct file___ref *)0)->f_ref)                      \
		 ? TRACER_READ(S, (struct file___ref *)(file), f_ref.refcnt.counter) < 0 \
		 : TRACER_READ(S, file, f_count.counter) == 0)

/* ---- What the probes ask of a socket, in any read style. */

/* 1 for an AF_INET/AF_INET6 TCP socket, else 0; the protocol is only read for those. */
#define TRACER_IS_TCP(family_expr, protocol_expr)                                   \
	({                                                                           \
		unsigned short tracer_family_ = (family_expr);                       \
		tracer_family_ != AF_INET && tracer_family_ != AF_INET6              \
			? 0                                                          \
			: (protocol_expr) == IPPROTO_TCP;                            \
	})
#define SK_IS_TCP(S, sk) TRACER_IS_TCP(SK_FAMILY(S, sk), SK_PROTOCOL(S, sk))

/* 1 once tcp_close() has orphaned the socket (SOCK_DEAD): no file, no owner any more. */
#define SK_ORPHANED(S, sk) ((SK_FLAGS(S, sk) >> bpf_core_enum_value(enum sock_flags, SOCK_DEAD)) & 1)

/* 1 when the socket's struct file has dropped its last reference: we are inside the
 * __fput() -> sock_close() -> tcp_close() of the process that released it. shutdown() runs
 * with the file still referenced by the fd table, so it never matches. */
#define SK_FILE_RELEASED(S, sk)                                                      \
	({                                                                           \
		struct socket *tracer_sock_ = SK_SOCKET(S, sk);                      \
		struct file *tracer_file_ = tracer_sock_ ? SOCKET_FILE(S, tracer_sock_) : 0; \
		tracer_file_ ? FILE_RELEASED(S, tracer_file_) : 0;                   \
	})

/* 1 when a process holds the socket through a struct socket: it was created by socket() or
 * handed out by accept(). A child still in its listener's queue has none. */
#define SK_HELD(S, sk) (SK_SOCKET(S, sk) != 0)

/* The inode number of the socket's file, as /proc/PID/fd shows it (`socket:[INODE]`); 0 when
 * no process holds it. */
#define SK_SOCKET_INODE(S, sk)                                                       \
	({                                                                           \
		struct socket *tracer_sock_ = SK_SOCKET(S, sk);                      \
		struct file *tracer_file_ = tracer_sock_ ? SOCKET_FILE(S, tracer_sock_) : 0; \
		struct inode *tracer_inode_ =                                        \
			tracer_file_ ? TRACER_READ(S, tracer_file_, f_inode) : 0;    \
		tracer_inode_ ? (__u64)TRACER_READ(S, tracer_inode_, i_ino) : 0;     \
	})

/* 1 when the socket ever had a peer: a never-connected socket (bound, or just created) has a
 * zero destination port, a reset or failed connection keeps its peer's. */
#define SK_HAS_PEER(S, sk) (SK_REMOTE_PORT_BE(S, sk) != 0)

#define SK_NETNS(S, sk)                                                              \
	({                                                                           \
		struct net *tracer_net_ = SK_NET(S, sk);                             \
		NET_INUM(S, tracer_net_);                                            \
	})

/* Mirrors tracer_common::Tuple (#[repr(C)]); 4-byte aligned in the event record. */
struct tracer_tuple {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u16 family;
};

/* An IPv4 address in the first word of a 16-byte field, the rest zero. The stores are volatile
 * so that LLVM cannot merge them into a memset, which the BPF backend turns into a call. */
static __always_inline void tracer_put_v4(__u8 field[16], __be32 addr)
{
	volatile __u32 *words = (volatile __u32 *)field;
	words[0] = addr;
	words[1] = 0;
	words[2] = 0;
	words[3] = 0;
}

/* The one tuple builder: fills *t from `src` (the socket, or its copy for COPY). */
#define TRACER_FILL_TUPLE(S, src, t)                                                 \
	do {                                                                         \
		unsigned short tracer_family_ = SK_FAMILY(S, src);                   \
		(t)->family = tracer_family_;                                        \
		(t)->local_port = SK_LOCAL_PORT(S, src);                             \
		(t)->remote_port = __builtin_bswap16(SK_REMOTE_PORT_BE(S, src));     \
		if (tracer_family_ == AF_INET) {                                     \
			tracer_put_v4((t)->local_addr, SK_LOCAL_ADDR4(S, src));      \
			tracer_put_v4((t)->remote_addr, SK_REMOTE_ADDR4(S, src));    \
		} else {                                                             \
			SK_LOCAL_ADDR6_INTO(S, &(t)->local_addr, src);               \
			SK_REMOTE_ADDR6_INTO(S, &(t)->remote_addr, src);             \
		}                                                                    \
	} while (0)

/* ---- The socket accessors the Rust side calls: each one definition, two functions. Only
 * tp_btf/fentry/fexit programs may call the _btf ones. */

#define TRACER_SK_ACCESSOR(type, name, EXPR)                                         \
	SHIM type tracer_sk_##name(struct sock *sk)                                  \
	{                                                                            \
		return EXPR(PROBE, sk);                                              \
	}                                                                            \
	SHIM type tracer_sk_##name##_btf(struct sock *sk)                            \
	{                                                                            \
		return EXPR(DIRECT, sk);                                             \
	}

/* The same for an accessor that fills a struct. */
#define TRACER_SK_FILLER(out_type, name, FILL)                                       \
	SHIM void tracer_sk_##name(struct sock *sk, out_type *out)                   \
	{                                                                            \
		FILL(PROBE, sk, out);                                                \
	}                                                                            \
	SHIM void tracer_sk_##name##_btf(struct sock *sk, out_type *out)             \
	{                                                                            \
		FILL(DIRECT, sk, out);                                               \
	}

TRACER_SK_ACCESSOR(int, is_tcp, SK_IS_TCP)
TRACER_SK_ACCESSOR(int, orphaned, SK_ORPHANED)
TRACER_SK_ACCESSOR(int, file_released, SK_FILE_RELEASED)
TRACER_SK_ACCESSOR(int, held, SK_HELD)
TRACER_SK_ACCESSOR(__u8, state, SK_STATE)
TRACER_SK_ACCESSOR(int, has_peer, SK_HAS_PEER)
TRACER_SK_ACCESSOR(__u32, netns, SK_NETNS)
TRACER_SK_ACCESSOR(__u16, source_port, SK_SOURCE_PORT)
TRACER_SK_ACCESSOR(__u32, error, SK_ERR)
TRACER_SK_ACCESSOR(__u64, bytes_received, TCP_BYTES_RECEIVED)
TRACER_SK_ACCESSOR(__u64, bytes_acked, TCP_BYTES_ACKED)
TRACER_SK_ACCESSOR(__u64, socket_inode, SK_SOCKET_INODE)
TRACER_SK_FILLER(struct tracer_tuple, tuple, TRACER_FILL_TUPLE)

/* Mirrors core_shim::SockSummary (#[repr(C)], no padding). */
struct tracer_sock_summary {
	struct tracer_tuple tuple;
	__u8 state;
	__u8 is_tcp;
	__u32 netns;
};

/* The Rust side asserts the same sizes: a field added on one side only would leave bytes of
 * the ring records unwritten. */
_Static_assert(sizeof(struct tracer_tuple) == 38, "tracer_tuple mirrors tracer_common::Tuple");
_Static_assert(sizeof(struct tracer_sock_summary) == 44, "mirrors core_shim::SockSummary");

/* Bytes copied from the start of the socket: past skc_v6_rcv_saddr, the last field the COPY
 * reads, on every kernel tracer runs on (88 bytes on x86-64), and within any full socket,
 * which is far larger. */
#define TRACER_SK_COPY 128

/* Everything an event needs from a socket that only probe reads may touch (kprobe registers,
 * the fd table): one bpf_probe_read_kernel() of the start of the socket instead of one per
 * field (10 before), then the fields are picked from the copy at their relocated offsets.
 * Falls back to field-by-field reads if a kernel ever moved them past the copy. */
SHIM void tracer_sk_summary(struct sock *sk, struct tracer_sock_summary *out)
{
	/* 8-byte loads (skc_net) are taken from it: the verifier wants stack loads aligned. */
	__u8 copy[TRACER_SK_COPY] __attribute__((aligned(8)));
	__u32 end = bpf_core_field_offset(((struct sock *)0)->__sk_common.skc_v6_rcv_saddr) + 16;

	if (end > TRACER_SK_COPY || bpf_probe_read_kernel(copy, sizeof(copy), sk)) {
		out->is_tcp = tracer_sk_is_tcp(sk);
		out->state = tracer_sk_state(sk);
		out->netns = tracer_sk_netns(sk);
		tracer_sk_tuple(sk, &out->tuple);
		return;
	}
	TRACER_FILL_TUPLE(COPY, copy, &out->tuple);
	out->state = SK_STATE(COPY, copy);
	/* The family as the tuple took it (the copy's bytes are unaligned loads); the protocol lies
	 * past the copy, and the namespace behind a pointer in it. */
	out->is_tcp = TRACER_IS_TCP(out->tuple.family, SK_PROTOCOL(PROBE, sk));
	out->netns = NET_INUM(PROBE, SK_NET(COPY, copy));
}

/* ---- The current task. */

/* bpf_get_current_task_btf() (5.11+) returns a BTF-typed task that plain loads may walk; on
 * older kernels this is a relocated 0, and the verifier drops the branches that use it. */
#define TRACER_HAS_TASK_BTF bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)

/* The fd array of `task` if `fd_num` is within its fd table, else NULL. */
#define TASK_FD_ARRAY(S, task, fd_num)                                               \
	({                                                                           \
		struct files_struct *tracer_files_ = TRACER_READ(S, task, files);    \
		struct fdtable *tracer_fdt_ = tracer_files_ ? TRACER_READ(S, tracer_files_, fdt) : 0; \
		tracer_fdt_ && (fd_num) < TRACER_READ(S, tracer_fdt_, max_fds)       \
			? TRACER_READ(S, tracer_fdt_, fd)                            \
			: 0;                                                         \
	})

/* Start time and command name of the thread-group leader of `task`. */
#define TASK_LEADER_IDENTITY(S, task, start_time_out, comm_out)                      \
	do {                                                                         \
		struct task_struct *tracer_leader_ = TRACER_READ(S, task, group_leader); \
		*(start_time_out) = TRACER_READ(S, tracer_leader_, start_boottime);  \
		TRACER_READ_INTO(S, (char(*)[16])(comm_out), tracer_leader_, comm);  \
	} while (0)

/* The struct sock behind file descriptor `fd` of the current task, or NULL. */
SHIM struct sock *tracer_fd_sock(__u32 fd)
{
	struct file **fds;
	struct file *file = 0;
	struct socket *sock;

	if (TRACER_HAS_TASK_BTF)
		fds = TASK_FD_ARRAY(DIRECT, bpf_get_current_task_btf(), fd);
	else
		fds = TASK_FD_ARRAY(PROBE, (struct task_struct *)bpf_get_current_task(), fd);
	/* A pointer to pointers: the verifier types no further, so probe reads from here on. */
	if (!fds || bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	/* A socket's file points back at it: rejects any non-socket private_data. */
	if (SOCKET_FILE(PROBE, sock) != file)
		return 0;
	return BPF_CORE_READ(sock, sk);
}

/* Start time (CLOCK_BOOTTIME ns) and command name of the current thread-group leader (threads
 * may rename themselves). comm is copied whole: the kernel keeps it NUL-terminated, and the
 * reader stops at the first NUL. */
SHIM void tracer_leader_identity(__u64 *start_time, char comm[16])
{
	if (TRACER_HAS_TASK_BTF)
		TASK_LEADER_IDENTITY(DIRECT, bpf_get_current_task_btf(), start_time, comm);
	else
		TASK_LEADER_IDENTITY(PROBE, (struct task_struct *)bpf_get_current_task(), start_time,
				     comm);
}

/* 1 when the current task is the last live thread of its process: do_exit() decrements
 * signal->live before the sched_process_exit tracepoint. */
SHIM int tracer_current_group_dead(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, signal, live.counter) == 0;
}

/* ---- The current task's user registers (x86-64), for unwinding the frames a frame-pointer
 * walk misses (docs/stacks.md). */

/* bpf_task_pt_regs() (5.15+) on the BTF-typed task; before, the registers sit at the top of
 * the task's kernel stack: THREAD_SIZE (16 KiB on x86-64 without KASAN) past task->stack,
 * less a struct pt_regs (x86-64 pads nothing there). A wrong guess there (a KASAN kernel)
 * yields an ip that differs from the stack's first frame, which userspace checks. */
#define TRACER_HAS_TASK_PT_REGS                                                      \
	(TRACER_HAS_TASK_BTF && bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
#define TRACER_THREAD_SIZE 16384

/* Mirrors tracer_common::stacks::UserRegs. */
struct tracer_user_regs {
	__u64 ip;
	__u64 sp;
	__u64 bp;
};
_Static_assert(sizeof(struct tracer_user_regs) == 24, "mirrors tracer_common::stacks::UserRegs");

#define USER_REGS_FILL(S, regs, out)                                                 \
	do {                                                                         \
		(out)->ip = TRACER_READ(S, regs, ip);                                \
		(out)->sp = TRACER_READ(S, regs, sp);                                \
		(out)->bp = TRACER_READ(S, regs, bp);                                \
	} while (0)

/* Fills *out with the current task's user ip, sp and bp; 0 on success. */
SHIM int tracer_user_regs(struct tracer_user_regs *out)
{
	struct task_struct *task;
	struct pt_regs *regs;
	void *stack;

	if (TRACER_HAS_TASK_PT_REGS) {
		regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
		USER_REGS_FILL(DIRECT, regs, out);
		return 0;
	}
	task = (struct task_struct *)bpf_get_current_task();
	stack = BPF_CORE_READ(task, stack);
	if (!stack)
		return -1;
	regs = (struct pt_regs *)((char *)stack + TRACER_THREAD_SIZE -
				  bpf_core_type_size(struct pt_regs));
	USER_REGS_FILL(PROBE, regs, out);
	return 0;
}

/* ---- The task iterator (iter/task): the v2 cgroup of each process. */

/* Mirrors tracer_common::TaskCgroup. */
struct tracer_task_cgroup {
	__u32 tgid;
	__u32 pad;
	__u64 start_time_ns;
	__u64 cgroup_id;
};
_Static_assert(sizeof(struct tracer_task_cgroup) == 24, "mirrors tracer_common::TaskCgroup");

/* Writes one record for each thread-group leader the iterator visits (it visits every thread).
 * The id is task->cgroups->dfl_cgrp->kn->id, what bpf_get_current_cgroup_id() reads in the
 * task's own context: no cgroup namespace is involved. Probe reads throughout: cgroups is an
 * RCU pointer, which direct loads handle differently across 5.8..6.x verifiers. */
SHIM int tracer_task_cgroup_iter(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct tracer_task_cgroup out = {};

	if (!task)
		return 0;
	out.tgid = BPF_CORE_READ(task, tgid);
	if (BPF_CORE_READ(task, pid) != (int)out.tgid)
		return 0;
	out.start_time_ns = BPF_CORE_READ(task, start_boottime);
	out.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	bpf_seq_write(seq, &out, sizeof(out));
	return 0;
}
