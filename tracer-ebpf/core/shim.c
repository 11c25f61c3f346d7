/* CO-RE accessors called from the Rust programs. Compiled to LLVM bitcode by clang and linked
 * into the Rust object by bpf-linker, which inlines them; aya applies the relocations when it
 * loads the object. Keep every function small, total and free of side effects. */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#define SHIM __attribute__((always_inline))

/* Mirrors tracer_common::Tuple (#[repr(C)]); 4-byte aligned in the event record. */
struct tracer_tuple {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u16 family;
};

/* Probe-read accessors: tracer_sk_summary falls back on these, and orphaned/file_released
 * serve AnySock directly. */

/* 1 for an AF_INET/AF_INET6 TCP socket, else 0. */
SHIM int tracer_sk_is_tcp(struct sock *sk)
{
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) == IPPROTO_TCP;
}

/* 1 once tcp_close() has orphaned the socket (SOCK_DEAD): no file, no owner any more. */
SHIM int tracer_sk_orphaned(struct sock *sk)
{
	unsigned long flags;

	if (bpf_core_field_exists(((struct sock___flags_in_sock *)0)->sk_flags))
		flags = BPF_CORE_READ((struct sock___flags_in_sock *)sk, sk_flags);
	else
		flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	return (flags >> bpf_core_enum_value(enum sock_flags, SOCK_DEAD)) & 1;
}

/* 1 when the socket's struct file has dropped its last reference: we are inside the
 * __fput() -> sock_close() -> tcp_close() of the process that released it. shutdown() runs
 * with the file still referenced by the fd table, so it never matches. */
SHIM int tracer_sk_file_released(struct sock *sk)
{
	struct file *file = BPF_CORE_READ(sk, sk_socket, file);
	if (!file)
		return 0;
	if (bpf_core_field_exists(((struct file___ref *)0)->f_ref)) {
		/* file_ref_t holds (references - 1); the dead/released encodings are negative. */
		__s64 refcnt = BPF_CORE_READ((struct file___ref *)file, f_ref.refcnt.counter);
		return refcnt < 0;
	}
	return BPF_CORE_READ(file, f_count.counter) == 0;
}

SHIM __u8 tracer_sk_state(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_state);
}

SHIM __u32 tracer_sk_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

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

SHIM void tracer_sk_tuple(struct sock *sk, struct tracer_tuple *t)
{
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	t->family = family;
	t->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->remote_port = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		tracer_put_v4(t->local_addr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		tracer_put_v4(t->remote_addr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else {
		BPF_CORE_READ_INTO(&t->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->remote_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

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

/* Bytes copied from the start of the socket: past skc_v6_rcv_saddr on every kernel tracer runs
 * on (88 bytes on x86-64), and within any full socket, which is far larger. */
#define TRACER_SK_COPY 128
#define TRACER_SK_FIELD(copy, type, field) \
	(*(type *)((copy) + bpf_core_field_offset(((struct sock *)0)->field)))

/* Everything an event needs from a socket that only probe reads may touch (kprobe registers,
 * the fd table): one bpf_probe_read_kernel() of the start of the socket instead of one per
 * field (10 before), then the fields are picked from the copy at their relocated offsets.
 * Falls back to field-by-field reads if a kernel ever moved them past the copy. */
SHIM void tracer_sk_summary(struct sock *sk, struct tracer_sock_summary *out)
{
	/* 8-byte loads (skc_net) are taken from it: the verifier wants stack loads aligned. */
	__u8 copy[TRACER_SK_COPY] __attribute__((aligned(8)));
	__u32 end = bpf_core_field_offset(((struct sock *)0)->__sk_common.skc_v6_rcv_saddr) + 16;
	unsigned short family;
	struct net *net;

	if (end > TRACER_SK_COPY || bpf_probe_read_kernel(copy, sizeof(copy), sk)) {
		out->is_tcp = tracer_sk_is_tcp(sk);
		out->state = tracer_sk_state(sk);
		out->netns = tracer_sk_netns(sk);
		tracer_sk_tuple(sk, &out->tuple);
		return;
	}
	family = TRACER_SK_FIELD(copy, unsigned short, __sk_common.skc_family);
	out->state = TRACER_SK_FIELD(copy, __u8, __sk_common.skc_state);
	out->is_tcp = (family == AF_INET || family == AF_INET6) &&
		      BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) == IPPROTO_TCP;
	net = TRACER_SK_FIELD(copy, struct net *, __sk_common.skc_net.net);
	out->netns = BPF_CORE_READ(net, ns.inum);
	out->tuple.family = family;
	out->tuple.local_port = TRACER_SK_FIELD(copy, __u16, __sk_common.skc_num);
	out->tuple.remote_port = __builtin_bswap16(TRACER_SK_FIELD(copy, __be16, __sk_common.skc_dport));
	if (family == AF_INET) {
		tracer_put_v4(out->tuple.local_addr, TRACER_SK_FIELD(copy, __be32, __sk_common.skc_rcv_saddr));
		tracer_put_v4(out->tuple.remote_addr, TRACER_SK_FIELD(copy, __be32, __sk_common.skc_daddr));
	} else {
		__builtin_memcpy(out->tuple.local_addr,
				 &TRACER_SK_FIELD(copy, struct in6_addr, __sk_common.skc_v6_rcv_saddr), 16);
		__builtin_memcpy(out->tuple.remote_addr,
				 &TRACER_SK_FIELD(copy, struct in6_addr, __sk_common.skc_v6_daddr), 16);
	}
}

/* ---- The same accessors for a BTF-typed socket pointer (the argument of a tp_btf, fentry or
 * fexit program): plain loads, which the verifier turns into fault-safe direct memory reads,
 * instead of one bpf_probe_read_kernel() call per field. inet_sock_set_state runs about ten
 * times per connection, so this is most of the probes' cost. The relocations are the same:
 * the structs above are preserve_access_index. Only tp_btf/fentry/fexit may call these (the
 * verifier rejects a plain load through an untyped pointer). sk_protocol has not been a
 * bitfield since 5.6, below the 5.8 that tracer needs. */

SHIM int tracer_sk_is_tcp_btf(struct sock *sk)
{
	unsigned short family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	return sk->sk_protocol == IPPROTO_TCP;
}

SHIM int tracer_sk_orphaned_btf(struct sock *sk)
{
	unsigned long flags;

	if (bpf_core_field_exists(((struct sock___flags_in_sock *)0)->sk_flags))
		flags = ((struct sock___flags_in_sock *)sk)->sk_flags;
	else
		flags = sk->__sk_common.skc_flags;
	return (flags >> bpf_core_enum_value(enum sock_flags, SOCK_DEAD)) & 1;
}

SHIM int tracer_sk_file_released_btf(struct sock *sk)
{
	struct socket *sock = sk->sk_socket;
	struct file *file;

	if (!sock)
		return 0;
	file = sock->file;
	if (!file)
		return 0;
	if (bpf_core_field_exists(((struct file___ref *)0)->f_ref))
		return ((struct file___ref *)file)->f_ref.refcnt.counter < 0;
	return file->f_count.counter == 0;
}

SHIM __u8 tracer_sk_state_btf(struct sock *sk)
{
	return sk->__sk_common.skc_state;
}

/* 1 when the socket ever had a peer: a never-connected socket (bound, or just created) has a
 * zero destination port, a reset or failed connection keeps its peer's. */
SHIM int tracer_sk_has_peer_btf(struct sock *sk)
{
	return sk->__sk_common.skc_dport != 0;
}

SHIM __u32 tracer_sk_netns_btf(struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

SHIM void tracer_sk_tuple_btf(struct sock *sk, struct tracer_tuple *t)
{
	unsigned short family = sk->__sk_common.skc_family;
	t->family = family;
	t->local_port = sk->__sk_common.skc_num;
	t->remote_port = __builtin_bswap16(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		tracer_put_v4(t->local_addr, sk->__sk_common.skc_rcv_saddr);
		tracer_put_v4(t->remote_addr, sk->__sk_common.skc_daddr);
	} else {
		__builtin_memcpy(t->local_addr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(t->remote_addr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	}
}

/* bpf_get_current_task_btf() (5.11+) returns a BTF-typed task that plain loads may walk; on
 * older kernels this is a relocated 0, and the verifier drops the branches that use it. */
#define TRACER_HAS_TASK_BTF bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)

/* The fd table of the current task, or NULL. */
static __always_inline struct fdtable *tracer_current_fdt(void)
{
	if (TRACER_HAS_TASK_BTF) {
		struct files_struct *files = bpf_get_current_task_btf()->files;
		return files ? files->fdt : 0;
	}
	return BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), files, fdt);
}

/* The struct sock behind file descriptor `fd` of the current task, or NULL. */
SHIM struct sock *tracer_fd_sock(__u32 fd)
{
	struct fdtable *fdt = tracer_current_fdt();
	struct file **fds;
	struct file *file = 0;
	struct socket *sock;

	if (!fdt)
		return 0;
	if (TRACER_HAS_TASK_BTF) {
		if (fd >= fdt->max_fds)
			return 0;
		fds = fdt->fd;
	} else {
		if (fd >= BPF_CORE_READ(fdt, max_fds))
			return 0;
		fds = BPF_CORE_READ(fdt, fd);
	}
	/* A pointer to pointers: the verifier types no further, so probe reads from here on. */
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	/* A socket's file points back at it: rejects any non-socket private_data. */
	if (BPF_CORE_READ(sock, file) != file)
		return 0;
	return BPF_CORE_READ(sock, sk);
}

/* Start time (CLOCK_BOOTTIME ns) and command name of the current thread-group leader (threads
 * may rename themselves). comm is copied whole: the kernel keeps it NUL-terminated, and the
 * reader stops at the first NUL. */
SHIM void tracer_leader_identity(__u64 *start_time, char comm[16])
{
	if (TRACER_HAS_TASK_BTF) {
		struct task_struct *leader = bpf_get_current_task_btf()->group_leader;

		*start_time = leader->start_boottime;
		__builtin_memcpy(comm, leader->comm, 16);
		return;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	*start_time = BPF_CORE_READ(leader, start_boottime);
	bpf_probe_read_kernel(comm, 16, &leader->comm);
}

/* 1 when the current task is the last live thread of its process: do_exit() decrements
 * signal->live before the sched_process_exit tracepoint. */
SHIM int tracer_current_group_dead(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, signal, live.counter) == 0;
}
