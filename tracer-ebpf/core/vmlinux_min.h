/* The few kernel types the probes read, declared with preserve_access_index so that every
 * access is a CO-RE relocation resolved against the running kernel's BTF at load time.
 * Only the members we read are declared; anonymous unions of the kernel are traversed by
 * libbpf's field matching, so they are flattened here. Never add offsets by hand. */
#ifndef TRACER_VMLINUX_MIN_H
#define TRACER_VMLINUX_MIN_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	__s64 counter;
} atomic_long_t;

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	unsigned long skc_flags; /* newer kernels keep sk_flags here */
};

struct socket;

struct sock {
	struct sock_common __sk_common;
	/* A bitfield before 5.6: read it with BPF_CORE_READ_BITFIELD_PROBED only. */
	__u16 sk_protocol;
	struct socket *sk_socket;
	int sk_err;
};

/* What went through a TCP connection (struct tcp_sock begins with struct sock). */
struct tcp_sock {
	__u64 bytes_received;
	__u64 bytes_acked;
};

/* The socket's bound port, kept when the kernel unhashes a socket that reached CLOSE (and
 * zeroes skc_num). */
struct inet_sock {
	__be16 inet_sport;
};

/* Older kernels (5.10 among them) have sk_flags in struct sock itself. */
struct sock___flags_in_sock {
	unsigned long sk_flags;
};

struct inode {
	unsigned long i_ino;
};

struct file {
	atomic_long_t f_count; /* up to 6.12 */
	void *private_data;
	struct inode *f_inode;
};

/* 6.13 replaced f_count by a file_ref_t; the ___ suffix makes this a second local view of
 * struct file for CO-RE. */
typedef struct {
	atomic_long_t refcnt;
} file_ref_t;

struct file___ref {
	file_ref_t f_ref;
};

struct socket {
	struct file *file;
	struct sock *sk;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live;
};

/* The v2 cgroup id is its directory's kernfs node id: a u64 since 5.5 (a union kernfs_node_id
 * before), so on every kernel with task iterators (5.8+). */
struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
};

/* The context of an iter/task program (the kernel wraps each member in a union). */
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

struct task_struct {
	int pid;
	int tgid;
	struct css_set *cgroups;
	struct signal_struct *signal;
	struct task_struct *group_leader;
	struct files_struct *files;
	__u64 start_boottime;
	char comm[16];
	/* Base of the kernel stack, whose top holds the user registers (x86-64). */
	void *stack;
};

/* x86-64: the user registers saved at kernel entry. */
struct pt_regs {
	unsigned long bp;
	unsigned long sp;
	unsigned long ip;
};

#pragma clang attribute pop

/* Only asked of the kernel's BTF (bpf_core_enum_value_exists): does this helper exist here?
 * The value is never used. */
enum bpf_func_id {
	BPF_FUNC_get_current_task_btf = 158,
	BPF_FUNC_task_pt_regs = 175,
};

enum sock_flags {
	SOCK_DEAD = 0,
};

#endif
