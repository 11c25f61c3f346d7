//! Every hook of every probe mode, as one table, and the one routine that attaches a mode's
//! hooks from it. docs/kernels.md's "Hooks of each mode" is rendered from the same table (a test
//! compares them), and another test checks it against the kernel object.
//!
//! Rows are in attach order: each mode's own hooks first, as they are the ones a kernel may
//! refuse, then those of every mode.
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, TracePoint},
};
use aya_obj::btf::BtfKind;
use tracer_common::programs;

use super::{ProbeMode, error::Result, kprobe::Kprobes, program, step, tracepoint};

/// How a program hooks into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// A BTF-enabled raw tracepoint: typed arguments, read with plain loads.
    TpBtf,
    /// A classic tracepoint of `category`, attached through tracefs.
    TracePoint { category: &'static str },
    /// A BPF trampoline at the function's entry.
    FEntry,
    /// A BPF trampoline at the function's return.
    FExit,
    /// Created through tracefs `kprobe_events` (kprobe.rs explains why).
    KProbe,
    /// The same, on the function's return.
    KRetProbe,
    /// A BPF iterator over kernel objects of `target`, run on demand rather than attached to
    /// an event; loaded apart from the hooks (task_cgroups.rs), and never fatal.
    Iter,
    /// A uprobe at the entry of `target`, a function of the programs it follows: loaded on
    /// first use and attached per process on demand (go_requests.rs), never by a mode.
    UProbe,
}

/// A hook attached only on kernels whose BTF says so: one program per signature of a function
/// whose arguments changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requires {
    /// The kernel's BTF has this struct (`note`: the kernels that do).
    Struct { name: &'static str, note: &'static str },
    /// The kernel's BTF lacks this struct.
    NoStruct { name: &'static str, note: &'static str },
}

impl Requires {
    fn holds(self, btf: &Btf) -> bool {
        let has = |name| btf.id_by_type_name_kind(name, BtfKind::Struct).is_ok();
        match self {
            Requires::Struct { name, .. } => has(name),
            Requires::NoStruct { name, .. } => !has(name),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The program in the kernel object (`tracer_common::programs`).
    pub program: &'static str,
    pub kind: HookKind,
    /// The kernel function or tracepoint.
    pub target: &'static str,
    /// The probe modes that attach it.
    pub modes: &'static [ProbeMode],
    pub requires: Option<Requires>,
    /// What it reports (docs/kernels.md).
    pub reports: &'static str,
}

const FENTRY: &[ProbeMode] = &[ProbeMode::Fentry];
const KPROBE: &[ProbeMode] = &[ProbeMode::Kprobe];
const TRACEPOINT: &[ProbeMode] = &[ProbeMode::Tracepoint];
const EVERY_MODE: &[ProbeMode] = &[ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint];

/// Linux 6.10 changed `inet_csk_accept`'s arguments (and added struct proto_accept_arg with
/// them); an fexit program finds the return value after the arguments, so each signature has
/// its program.
const ACCEPT_ARG: &str = "proto_accept_arg";

pub const HOOKS: &[Hook] = &[
    Hook {
        program: programs::TCP_CONNECT_FENTRY,
        kind: HookKind::FEntry,
        target: "tcp_connect",
        modes: FENTRY,
        requires: None,
        reports: "connect starts (owner)",
    },
    Hook {
        program: programs::TCP_CLOSE_FENTRY,
        kind: HookKind::FEntry,
        target: "tcp_close",
        modes: FENTRY,
        requires: None,
        reports: "release (releasing process)",
    },
    Hook {
        program: programs::INET_CSK_ACCEPT_FEXIT,
        kind: HookKind::FExit,
        target: "inet_csk_accept",
        modes: FENTRY,
        requires: Some(Requires::Struct { name: ACCEPT_ARG, note: "6.10+" }),
        reports: "accept (owner)",
    },
    Hook {
        program: programs::INET_CSK_ACCEPT_FEXIT_PRE_6_10,
        kind: HookKind::FExit,
        target: "inet_csk_accept",
        modes: FENTRY,
        requires: Some(Requires::NoStruct { name: ACCEPT_ARG, note: "before 6.10" }),
        reports: "accept (owner)",
    },
    Hook {
        program: programs::TCP_CONNECT_KPROBE,
        kind: HookKind::KProbe,
        target: "tcp_connect",
        modes: KPROBE,
        requires: None,
        reports: "connect starts (owner)",
    },
    Hook {
        program: programs::TCP_CLOSE_KPROBE,
        kind: HookKind::KProbe,
        target: "tcp_close",
        modes: KPROBE,
        requires: None,
        reports: "release (releasing process)",
    },
    Hook {
        program: programs::INET_CSK_ACCEPT_KRETPROBE,
        kind: HookKind::KRetProbe,
        target: "inet_csk_accept",
        modes: KPROBE,
        requires: None,
        reports: "accept (owner)",
    },
    Hook {
        program: programs::TCP_DESTROY_SOCK,
        kind: HookKind::TpBtf,
        target: "tcp_destroy_sock",
        modes: TRACEPOINT,
        requires: None,
        reports: "release (releasing process) of a socket closed while already in CLOSE",
    },
    Hook {
        program: programs::INET_SOCK_SET_STATE,
        kind: HookKind::TpBtf,
        target: "inet_sock_set_state",
        modes: EVERY_MODE,
        requires: None,
        reports: "established, state changes, failed connects; in tracepoint mode also connect \
                  starts (CLOSE → SYN_SENT) and releases (a change while the file is dying)",
    },
    Hook {
        program: programs::SCHED_PROCESS_EXIT,
        kind: HookKind::TpBtf,
        target: "sched_process_exit",
        modes: EVERY_MODE,
        requires: None,
        reports: "process exit",
    },
    Hook {
        program: programs::SCHED_PROCESS_EXEC,
        kind: HookKind::TpBtf,
        target: "sched_process_exec",
        modes: EVERY_MODE,
        requires: None,
        reports: "process exec (its new command name)",
    },
    Hook {
        program: programs::SYS_EXIT_ACCEPT4,
        kind: HookKind::TracePoint { category: "syscalls" },
        target: "sys_exit_accept4",
        modes: EVERY_MODE,
        requires: None,
        reports: "accept (owner)",
    },
    Hook {
        program: programs::SYS_EXIT_ACCEPT,
        kind: HookKind::TracePoint { category: "syscalls" },
        target: "sys_exit_accept",
        modes: EVERY_MODE,
        requires: None,
        reports: "accept (owner)",
    },
    Hook {
        program: programs::TASK_CGROUPS,
        kind: HookKind::Iter,
        target: "task",
        modes: EVERY_MODE,
        requires: None,
        reports: "the v2 cgroup id of every process, run at start-up and reconcile for \
                  processes known only from scans; optional: a refusal leaves them at cgroup id 0",
    },
    Hook {
        program: programs::GO_ROUND_TRIP,
        kind: HookKind::UProbe,
        target: "net/http.(*persistConn).roundTrip",
        modes: EVERY_MODE,
        requires: None,
        reports: "a Go HTTP/1 request's goroutine stack and its connection's socket; attached \
                  per Go process on demand (not yet by the daemon)",
    },
];

/// The hooks `mode` attaches on the kernel described by `btf`, in attach order.
pub fn of_mode(mode: ProbeMode, btf: &Btf) -> impl Iterator<Item = &'static Hook> + '_ {
    HOOKS
        .iter()
        .filter(move |hook| hook.modes.contains(&mode))
        .filter(|hook| hook.requires.is_none_or(|requires| requires.holds(btf)))
}

/// Loads and attaches every hook of `mode`. kprobe mode's probes live outside `ebpf`: they are
/// returned, and detached when dropped.
pub(super) fn attach(ebpf: &mut Ebpf, btf: &Btf, mode: ProbeMode) -> Result<Option<Kprobes>> {
    let mut kprobes = None;
    for hook in of_mode(mode, btf) {
        let name = hook.program;
        match hook.kind {
            HookKind::TpBtf => {
                let prog: &mut BtfTracePoint = program(ebpf, name)?;
                prog.load(hook.target, btf).map_err(step("load", name))?;
                prog.attach().map_err(step("attach", name))?;
            }
            HookKind::TracePoint { category } => {
                // The syscall-exit programs read `ret` at a fixed offset of the record.
                if category == "syscalls" {
                    tracepoint::check_ret_offset(hook.target)?;
                }
                let prog: &mut TracePoint = program(ebpf, name)?;
                prog.load().map_err(step("load", name))?;
                prog.attach(category, hook.target).map_err(step("attach", name))?;
            }
            HookKind::FEntry => {
                let prog: &mut FEntry = program(ebpf, name)?;
                prog.load(hook.target, btf).map_err(step("load", name))?;
                prog.attach().map_err(step("attach", name))?;
            }
            HookKind::FExit => {
                let prog: &mut FExit = program(ebpf, name)?;
                prog.load(hook.target, btf).map_err(step("load", name))?;
                prog.attach().map_err(step("attach", name))?;
            }
            HookKind::KProbe | HookKind::KRetProbe => {
                let set = match &mut kprobes {
                    Some(set) => set,
                    None => kprobes.insert(Kprobes::open()?),
                };
                let is_return = hook.kind == HookKind::KRetProbe;
                set.attach(ebpf, name, hook.target, is_return)?;
            }
            // Loaded by Probes::load_mode after the hooks, where its failure is not fatal.
            HookKind::Iter => {}
            // Attached per process, on demand (Probes::attach_go_requests).
            HookKind::UProbe => {}
        }
    }
    Ok(kprobes)
}

/// docs/kernels.md's "Hooks of each mode" table.
pub fn docs_table() -> String {
    const MODES: [ProbeMode; 3] = [ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint];
    let mut out = String::from("| program | hook |");
    for mode in MODES {
        out.push_str(&format!(" {mode} |"));
    }
    out.push_str(" reports |\n|");
    out.push_str(&" --- |".repeat(MODES.len() + 3));
    out.push('\n');
    for hook in HOOKS {
        let mut cell = match hook.kind {
            HookKind::TpBtf => format!("tp_btf `{}`", hook.target),
            HookKind::TracePoint { category } => format!("tracepoint `{category}:{}`", hook.target),
            HookKind::FEntry => format!("fentry `{}`", hook.target),
            HookKind::FExit => format!("fexit `{}`", hook.target),
            HookKind::KProbe => format!("kprobe `{}`", hook.target),
            HookKind::KRetProbe => format!("kretprobe `{}`", hook.target),
            HookKind::Iter => format!("iter `{}`", hook.target),
            HookKind::UProbe => format!("uprobe `{}`", hook.target),
        };
        match hook.requires {
            Some(Requires::Struct { name, note }) => {
                cell.push_str(&format!(", where BTF has `struct {name}` ({note})"));
            }
            Some(Requires::NoStruct { name, note }) => {
                cell.push_str(&format!(", where BTF lacks `struct {name}` ({note})"));
            }
            None => {}
        }
        out.push_str(&format!("| `{}` | {cell} |", hook.program));
        for mode in MODES {
            out.push_str(if hook.modes.contains(&mode) { " ✓ |" } else { " |" });
        }
        out.push_str(&format!(" {} |\n", hook.reports));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::*;

    /// The ELF section aya-ebpf's attribute macros put a program of this row in.
    fn section(hook: &Hook) -> String {
        match hook.kind {
            HookKind::TpBtf => format!("tp_btf/{}", hook.target),
            HookKind::TracePoint { category } => format!("tracepoint/{category}/{}", hook.target),
            HookKind::FEntry => format!("fentry/{}", hook.target),
            HookKind::FExit => format!("fexit/{}", hook.target),
            // The function is given to the tracefs probe, not to the macro.
            HookKind::KProbe => "kprobe".to_owned(),
            HookKind::KRetProbe => "kretprobe".to_owned(),
            HookKind::Iter => format!("iter/{}", hook.target),
            // The binary and offset are given at attach, not to the macro.
            HookKind::UProbe => "uprobe".to_owned(),
        }
    }

    #[test]
    fn the_table_names_every_program_of_the_kernel_object_with_its_hook() {
        let elf = object::File::parse(super::super::EBPF_OBJECT).expect("the embedded object");
        let in_object: BTreeMap<String, String> = elf
            .symbols()
            .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_global())
            .filter_map(|symbol| {
                let section = elf.section_by_index(symbol.section_index()?).ok()?;
                let section = section.name().ok()?;
                // .text holds the compiler's helpers (memcpy, ...), not programs.
                let name = symbol.name().ok()?;
                (section != ".text").then(|| (name.to_owned(), section.to_owned()))
            })
            .collect();
        let in_table: BTreeMap<String, String> =
            HOOKS.iter().map(|hook| (hook.program.to_owned(), section(hook))).collect();
        assert_eq!(in_table.len(), HOOKS.len(), "a program appears in two rows");
        assert_eq!(in_table, in_object);
    }

    #[test]
    fn each_mode_attaches_its_own_hooks_before_the_common_ones() {
        for mode in [ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint] {
            let rows: Vec<&Hook> = HOOKS.iter().filter(|hook| hook.modes.contains(&mode)).collect();
            let first_common = rows.iter().position(|hook| hook.modes == EVERY_MODE).unwrap();
            assert!(rows[first_common..].iter().all(|hook| hook.modes == EVERY_MODE), "{mode}");
        }
    }

    #[test]
    fn variants_chosen_by_btf_exclude_each_other() {
        // Whatever the kernel's BTF, exactly one variant of a hook attaches.
        for hook in HOOKS {
            let Some(requires) = hook.requires else { continue };
            let opposite = match requires {
                Requires::Struct { name, .. } => Requires::NoStruct { name, note: "" },
                Requires::NoStruct { name, .. } => Requires::Struct { name, note: "" },
            };
            let same_name = |a: Requires, b: Requires| match (a, b) {
                (Requires::Struct { name: x, .. }, Requires::Struct { name: y, .. })
                | (Requires::NoStruct { name: x, .. }, Requires::NoStruct { name: y, .. }) => {
                    x == y
                }
                _ => false,
            };
            let others = HOOKS.iter().filter(|other| {
                other.kind == hook.kind && other.target == hook.target && other.modes == hook.modes
            });
            let opposites =
                others.filter(|other| other.requires.is_some_and(|r| same_name(r, opposite)));
            assert_eq!(opposites.count(), 1, "{}", hook.program);
        }
    }

    #[test]
    fn docs_show_this_table() {
        let docs = include_str!("../../../docs/kernels.md");
        let table = docs
            .split("\n## Hooks of each mode\n")
            .nth(1)
            .and_then(|section| section.trim_start_matches('\n').split("\n\n").next())
            .expect("docs/kernels.md has a table under \"## Hooks of each mode\"");
        let rendered = docs_table();
        assert_eq!(
            format!("{table}\n"),
            rendered,
            "docs/kernels.md's \"Hooks of each mode\" differs from hooks::HOOKS; render:\n{rendered}"
        );
    }
}
