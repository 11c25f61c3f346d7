//! README.md and docs/ against the command line, so that they cannot drift from it:
//! - every flag they name exists, for the command they name it with (`tracer top --json`,
//!   `cargo xtask vm-test --tests`, the nearest command named before it in its paragraph, list
//!   item, table row or code line); a flag named without a command must be one of tracer's or
//!   of `cargo xtask`'s (read from their clap definitions);
//! - every flag of every `tracer` command (hidden ones aside) is in README.md;
//! - every default they state is the one `--help` shows, and every `a|b|c` list of values is
//!   the flag's possible values;
//! - README.md links every doc in docs/, and every repository path the docs name exists;
//! - docs/architecture.md's diagram is today's source tree and kernel hooks;
//! - README.md names the pinned toolchain and tools `cargo xtask setup` installs.
//!
//! A default is read where the docs state one in one of these forms, right after the flag:
//! `` `--ring-bytes N` (8 MiB) ``, `` `--reconcile-interval` (1m by default) ``,
//! `` (`--drain-interval-ms`, 100 ms) ``, `` `--metrics-addr …` (default `127.0.0.1:9855`) ``,
//! `` `--probe auto` (the default) ``, and in the default column of a table whose first column
//! names the flags (docs/leak-detection.md's tuning table).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use clap::{Arg, CommandFactory};

use super::Cli;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(path: &str) -> String {
    let full = format!("{ROOT}/{path}");
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// Markdown files under `dir` (relative to the repository), sorted.
fn markdown_in(dir: &str) -> Vec<String> {
    let full = format!("{ROOT}/{dir}");
    let mut names: Vec<String> = std::fs::read_dir(&full)
        .unwrap_or_else(|e| panic!("cannot list {full}: {e}"))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .collect();
    names.sort();
    names
}

/// README.md, then every doc in docs/: (path, text).
fn docs() -> Vec<(String, String)> {
    std::iter::once("README.md".to_owned())
        .chain(markdown_in("docs").into_iter().map(|name| format!("docs/{name}")))
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

/// The pieces of a doc a command applies within: each line of a code block, each table row,
/// each list item, each paragraph; whitespace collapsed.
fn units(text: &str) -> Vec<String> {
    let mut units = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut in_code = false;
    let flush = |current: &mut Vec<&str>, units: &mut Vec<String>| {
        if !current.is_empty() {
            units.push(current.join(" ").split_whitespace().collect::<Vec<_>>().join(" "));
            current.clear();
        }
    };
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            flush(&mut current, &mut units);
            in_code = !in_code;
            continue;
        }
        if in_code || trimmed.starts_with('|') {
            flush(&mut current, &mut units);
            units.push(line.to_owned());
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            flush(&mut current, &mut units);
            if !trimmed.is_empty() {
                units.push(line.to_owned());
            }
            continue;
        }
        let item = trimmed.starts_with("- ")
            || trimmed.starts_with("* ")
            || trimmed.split_once(". ").is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if item {
            flush(&mut current, &mut units);
        }
        current.push(line);
    }
    flush(&mut current, &mut units);
    units
}

/// The command a flag belongs to, from the nearest command named before it in its unit.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Context {
    /// No command named: one of tracer's flags.
    None,
    Tracer(String),
    Xtask,
    /// Another program (`cargo test`, `perf report`): not checked.
    Other,
}

/// Commands named in `unit`, by byte position.
fn commands_named(unit: &str, subcommands: &[String]) -> Vec<(usize, Context)> {
    let mut found = Vec::new();
    let word_start = |at: usize| {
        unit[..at].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    };
    for (at, _) in unit.match_indices("tracer ") {
        if !word_start(at) {
            continue;
        }
        let rest = &unit[at + "tracer ".len()..];
        let word: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
        if subcommands.contains(&word) {
            found.push((at, Context::Tracer(word)));
        }
    }
    for (at, _) in unit.match_indices("cargo ") {
        if word_start(at) {
            let xtask = unit[at..].starts_with("cargo xtask");
            found.push((at, if xtask { Context::Xtask } else { Context::Other }));
        }
    }
    for other in ["perf record", "perf report", "promtool ", "systemd-analyze ", "helm ", "dpkg "] {
        found.extend(unit.match_indices(other).map(|(at, _)| (at, Context::Other)));
    }
    found.sort_by_key(|(at, _)| *at);
    found
}

/// One flag named in a doc.
#[derive(Debug)]
struct Mention {
    doc: String,
    flag: String,
    context: Context,
    /// The backticked text the mention starts, if it starts one (`--ring-bytes N`).
    span: Option<String>,
    /// What follows that span, up to the end of the unit.
    after: String,
    unit: String,
    /// Byte position of the mention in `unit`.
    at: usize,
}

impl Mention {
    /// The unit around the mention, for messages.
    fn excerpt(&self) -> String {
        let start = self.unit[..self.at].char_indices().rev().nth(50).map_or(0, |(i, _)| i);
        let end = self.unit[self.at..]
            .char_indices()
            .nth(70)
            .map_or(self.unit.len(), |(i, _)| i + self.at);
        format!("…{}…", &self.unit[start..end])
    }
}

fn mentions(doc: &str, text: &str, subcommands: &[String]) -> Vec<Mention> {
    let mut out = Vec::new();
    for unit in units(text) {
        let named = commands_named(&unit, subcommands);
        for (at, _) in unit.match_indices("--") {
            let before = unit[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_') {
                continue;
            }
            let name: String = unit[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            let name = name.trim_end_matches('-');
            if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                continue;
            }
            let context = named
                .iter()
                .rev()
                .find(|(named_at, _)| *named_at < at)
                .map_or(Context::None, |(_, c)| c.clone());
            let (span, after) = match (before, unit[at..].split_once('`')) {
                (Some('`'), Some((span, after))) => (Some(span.to_owned()), after.to_owned()),
                _ => (None, String::new()),
            };
            out.push(Mention {
                doc: doc.to_owned(),
                flag: name.to_owned(),
                context,
                span,
                after,
                unit: unit.clone(),
                at,
            });
        }
    }
    out
}

/// Each `tracer` subcommand's arguments, the global ones included.
fn tracer_commands() -> BTreeMap<String, Vec<Arg>> {
    let mut cli = Cli::command();
    cli.build();
    cli.get_subcommands()
        .filter(|c| c.get_name() != "help")
        .map(|c| (c.get_name().to_owned(), c.get_arguments().cloned().collect()))
        .collect()
}

fn long_names(args: &[Arg]) -> BTreeSet<String> {
    args.iter()
        .filter_map(Arg::get_long)
        .map(str::to_owned)
        .chain(["help".to_owned(), "version".to_owned()])
        .collect()
}

/// Long flags of `cargo xtask`, read from its clap attributes (`#[arg(long …)]` on a field).
fn xtask_flags() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                // The attribute being read (it may span lines), then whether it makes a flag.
                let mut attr: Option<String> = None;
                let mut pending = false;
                for line in text.lines().map(str::trim) {
                    if let Some(open) = attr.as_mut() {
                        open.push_str(line);
                    } else if line.starts_with("#[arg(") {
                        attr = Some(line.to_owned());
                    } else if pending && !line.starts_with("#[") && !line.starts_with("//") {
                        let field = line.trim_start_matches("pub ").split(':').next();
                        let field = field.unwrap_or_default().trim();
                        if line.contains(':')
                            && field.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        {
                            out.insert(field.replace('_', "-"));
                        }
                        pending = false;
                    }
                    if attr.as_ref().is_some_and(|a| a.ends_with(")]")) {
                        let done = attr.take().unwrap_or_default();
                        pending = done.contains("long");
                        if let Some(name) = done.split("long = \"").nth(1) {
                            out.insert(name.split('"').next().unwrap_or_default().to_owned());
                            pending = false;
                        }
                    }
                }
            }
        }
    }
    let mut flags = BTreeSet::new();
    walk(&Path::new(ROOT).join("xtask/src"), &mut flags);
    flags.extend(["help".to_owned()]);
    flags
}

#[test]
fn every_flag_the_docs_name_exists() {
    let commands = tracer_commands();
    let subcommands: Vec<String> = commands.keys().cloned().collect();
    let every_tracer_flag: BTreeSet<String> =
        commands.values().flat_map(|args| long_names(args)).collect();
    let xtask = xtask_flags();
    assert!(xtask.contains("no-vm") && xtask.contains("tests"), "xtask flags not found: {xtask:?}");
    let mut wrong = Vec::new();
    for (doc, text) in docs() {
        for m in mentions(&doc, &text, &subcommands) {
            let ok = match &m.context {
                Context::Tracer(sub) => long_names(&commands[sub]).contains(&m.flag),
                Context::Xtask => xtask.contains(&m.flag),
                Context::Other => true,
                Context::None => every_tracer_flag.contains(&m.flag) || xtask.contains(&m.flag),
            };
            if !ok {
                let whose = match &m.context {
                    Context::Tracer(sub) => format!("`tracer {sub}`"),
                    Context::Xtask => "`cargo xtask`".to_owned(),
                    _ => "any tracer or xtask command".to_owned(),
                };
                wrong.push(format!(
                    "{}: --{} is not a flag of {whose}: {}",
                    m.doc,
                    m.flag,
                    m.excerpt()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "flags the docs name that do not exist:\n{}", wrong.join("\n"));
}

#[test]
fn every_tracer_flag_is_in_the_readme() {
    let commands = tracer_commands();
    let subcommands: Vec<String> = commands.keys().cloned().collect();
    let readme = mentions("README.md", &read("README.md"), &subcommands);
    let mut missing = Vec::new();
    for (sub, args) in &commands {
        for arg in args.iter().filter(|a| !a.is_hide_set()) {
            let Some(flag) = arg.get_long() else { continue };
            if flag == "help" || flag == "version" {
                continue;
            }
            let documented = readme.iter().any(|m| {
                m.flag == flag
                    && (m.context == Context::Tracer(sub.clone())
                        || (m.context == Context::None && (sub == "run" || arg.is_global_set())))
            });
            if !documented {
                missing.push(format!("tracer {sub} --{flag}"));
            }
        }
    }
    assert!(missing.is_empty(), "flags README.md does not mention:\n{}", missing.join("\n"));
}

/// A stated default in the docs' words ("8 MiB", "60 s", "100 ms", "off") against `--help`'s.
fn same_default(flag: &str, stated: &str, help: Option<&str>) -> bool {
    let stated = stated.trim().trim_matches('`').trim();
    let Some(help) = help else {
        // No default: the docs may only say it is off.
        return stated == "off";
    };
    if stated == help {
        return true;
    }
    let (number, unit) = stated.split_once(' ').unwrap_or((stated, ""));
    let Ok(number) = number.replace(',', "").parse::<f64>() else { return false };
    let Ok(help) = help.parse::<f64>() else { return false };
    let in_ms = flag.ends_with("-ms");
    let value = match unit {
        "" => number,
        "KiB" => number * 1024.0,
        "MiB" => number * 1024.0 * 1024.0,
        "GiB" => number * 1024.0 * 1024.0 * 1024.0,
        "ms" if in_ms => number,
        "ms" => number / 1000.0,
        "s" | "min" | "h" => {
            let seconds = number
                * match unit {
                    "min" => 60.0,
                    "h" => 3_600.0,
                    _ => 1.0,
                };
            if in_ms { seconds * 1000.0 } else { seconds }
        }
        _ => return false,
    };
    value == help
}

/// The default a mention states right after its flag, if it states one.
fn stated_default(m: &Mention) -> Option<String> {
    let span = m.span.as_deref()?;
    let rest = m.after.trim_start_matches([',', ' ', '(']);
    if rest.starts_with("the default") {
        return span.split_once(' ').map(|(_, value)| value.trim().to_owned());
    }
    let rest = match rest.strip_prefix("default ").or_else(|| rest.strip_prefix("by default ")) {
        Some(rest) => rest.trim_start_matches('*'),
        None if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
        None => return None,
    };
    if let Some(quoted) = rest.strip_prefix('`') {
        return quoted.split('`').next().map(str::to_owned);
    }
    let end = rest.find([':', ')', ',', ';']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_end_matches(" by default").to_owned())
}

/// (doc, flags, stated defaults) of each row of a table with a "default" column.
fn table_defaults(doc: &str, text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut rows = Vec::new();
    let mut column = None;
    for line in text.lines() {
        let Some(inner) = line.trim().strip_prefix('|') else {
            column = None;
            continue;
        };
        let cells: Vec<&str> = inner.trim_end_matches('|').split('|').map(str::trim).collect();
        if cells.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) {
            continue;
        }
        let Some(at) = column else {
            column = Some(cells.iter().position(|c| c.eq_ignore_ascii_case("default")));
            continue;
        };
        let Some(at) = at else { continue };
        let flags: Vec<String> = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|t| t.strip_prefix("--"))
            .map(str::to_owned)
            .collect();
        let stated = cells.get(at).copied().unwrap_or_default();
        if flags.is_empty() || stated == "—" || stated == "-" {
            continue;
        }
        let stated: Vec<String> = stated.split(", ").map(str::to_owned).collect();
        rows.push((doc.to_owned(), flags, stated));
    }
    rows
}

#[test]
fn every_default_the_docs_state_is_the_one_help_shows() {
    let commands = tracer_commands();
    let subcommands: Vec<String> = commands.keys().cloned().collect();
    let arg = |context: &Context, flag: &str| -> Option<Arg> {
        let mut candidates: Vec<&Arg> = match context {
            Context::Tracer(sub) => commands[sub].iter().collect(),
            Context::None => commands.values().flatten().collect(),
            _ => return None,
        };
        candidates.retain(|a| a.get_long() == Some(flag));
        candidates.first().map(|a| (*a).clone())
    };
    let help_default = |arg: &Arg| -> Option<String> {
        let values: Vec<String> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        (!values.is_empty()).then(|| values.join(","))
    };

    let mut checked = 0;
    let mut wrong = Vec::new();
    for (doc, text) in docs() {
        for m in mentions(&doc, &text, &subcommands) {
            let Some(arg) = arg(&m.context, &m.flag) else { continue };
            if let Some(stated) = stated_default(&m) {
                checked += 1;
                let help = help_default(&arg);
                if !same_default(&m.flag, &stated, help.as_deref()) {
                    wrong.push(format!(
                        "{doc}: --{} default {stated:?}, --help: {help:?} ({})",
                        m.flag,
                        m.excerpt()
                    ));
                }
            }
            // `--probe auto|fentry|…`: the flag's possible values.
            let listed = m.span.as_deref().and_then(|s| s.split_once(' ')).map(|(_, v)| v);
            let possible: BTreeSet<String> =
                arg.get_possible_values().iter().map(|v| v.get_name().to_owned()).collect();
            if let Some(listed) = listed.filter(|v| v.contains('|') && !possible.is_empty()) {
                let listed: BTreeSet<String> = listed
                    .split('|')
                    .filter(|v| !v.chars().any(|c| c.is_ascii_uppercase()))
                    .map(str::to_owned)
                    .collect();
                if listed != possible {
                    wrong.push(format!(
                        "{doc}: --{} values {listed:?}, --help: {possible:?}",
                        m.flag
                    ));
                }
            }
        }
        for (doc, flags, stated) in table_defaults(&doc, &text) {
            if flags.len() != stated.len() {
                wrong.push(format!(
                    "{doc}: {} flags but {} defaults: {flags:?}",
                    flags.len(),
                    stated.len()
                ));
                continue;
            }
            for (flag, stated) in flags.iter().zip(&stated) {
                let Some(arg) = arg(&Context::None, flag) else {
                    wrong.push(format!("{doc}: no flag --{flag}"));
                    continue;
                };
                checked += 1;
                let help = help_default(&arg);
                if !same_default(flag, stated, help.as_deref()) {
                    wrong.push(format!("{doc}: --{flag} default {stated:?}, --help: {help:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "defaults the docs state wrongly:\n{}", wrong.join("\n"));
    // README's bullets and the tuning table alone state more than this.
    assert!(checked >= 15, "only {checked} stated defaults found: did the forms change?");
}

#[test]
fn the_readme_lists_every_doc() {
    let readme = read("README.md");
    let section = readme.split("\n## Documentation\n").nth(1).expect("README.md: ## Documentation");
    let section = section.split("\n## ").next().unwrap_or(section);
    let missing: Vec<String> = markdown_in("docs")
        .into_iter()
        .filter(|name| !section.contains(&format!("](docs/{name})")))
        .collect();
    assert!(missing.is_empty(), "README.md's Documentation list lacks docs/{missing:?}");
}

/// Whether `path` names something in the repository: from its root, or from one of the source
/// roots the docs name files relative to (`daemon/memory.rs`, `core/shim.c`).
fn exists_in_repo(path: &str) -> bool {
    ["", "tracer/src/", "tracer/", "tracer-ebpf/", "tracer-ebpf/src/", "xtask/src/"]
        .iter()
        .any(|base| Path::new(ROOT).join(format!("{base}{path}")).exists())
}

/// Every relative link and every backticked repository path in README.md and docs/ exists
/// (build outputs under `target/` aside).
#[test]
fn every_path_the_docs_name_exists() {
    let mut missing = Vec::new();
    for (doc, text) in docs() {
        let dir = Path::new(&doc).parent().unwrap_or(Path::new(""));
        for (at, _) in text.match_indices("](") {
            let target = text[at + 2..].split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            if !Path::new(ROOT).join(dir).join(target).exists() {
                missing.push(format!("{doc}: link to {target}"));
            }
        }
        let prose: String = text.split("```").step_by(2).collect::<Vec<_>>().join("\n");
        for token in prose.split('`').skip(1).step_by(2) {
            let path_like = token.contains('/')
                && !token.contains(char::is_whitespace)
                // Absolute paths, home directories, npm scopes (`@grafana/schema`).
                && !token.starts_with(['/', '~', '@'])
                && !token.starts_with("target/")
                && !token.contains("://")
                && !token.contains(['<', '{', '*', '=', '"']);
            if path_like && !exists_in_repo(token) {
                missing.push(format!("{doc}: `{token}`"));
            }
        }
    }
    assert!(missing.is_empty(), "paths the docs name that do not exist:\n{}", missing.join("\n"));
}

/// The kernel hooks of tracer-ebpf: (attach kind, hooked function or tracepoint).
fn kernel_hooks() -> BTreeSet<(String, String)> {
    let dir = Path::new(ROOT).join("tracer-ebpf/src");
    let mut hooks = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("tracer-ebpf/src").filter_map(Result::ok) {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            let Some(attr) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) else {
                continue;
            };
            let (kind, args) = attr.split_once('(').unwrap_or((attr, ""));
            let kind = match kind {
                "btf_tracepoint" => "tp_btf",
                "fentry" | "fexit" | "kprobe" | "kretprobe" | "tracepoint" => kind,
                _ => continue,
            };
            let quoted = |key: &str| {
                args.split(&format!("{key} = \"")).nth(1).and_then(|r| r.split('"').next())
            };
            let name = match quoted("function").or_else(|| quoted("name")) {
                Some(name) => name.to_owned(),
                // kprobe programs are named after their function: `tcp_close_kprobe`.
                None => {
                    let Some(program) = lines.next().and_then(|l| l.strip_prefix("pub fn ")) else {
                        continue;
                    };
                    let program = program.split('(').next().unwrap_or_default();
                    program.rsplit_once('_').map_or(program, |(f, _)| f).to_owned()
                }
            };
            hooks.insert((kind.to_owned(), name));
        }
    }
    hooks
}

/// docs/architecture.md's diagram is today's tree: every module of tracer/src (and the
/// binary's cli/) is in it, everything it names exists, and it shows every kernel hook of
/// every probe mode.
#[test]
fn the_architecture_diagram_is_the_tree() {
    let doc = read("docs/architecture.md");
    let diagram = doc.split("```").nth(1).expect("docs/architecture.md opens with its diagram");
    let words: BTreeSet<&str> = diagram
        .split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '/' | '.' | '-' | ':')))
        .map(|w| w.trim_end_matches([':', '.']))
        .filter(|w| !w.is_empty())
        .collect();
    let src = Path::new(ROOT).join("tracer/src");
    let mut wrong = Vec::new();

    let mut modules: Vec<String> = std::fs::read_dir(&src)
        .expect("tracer/src")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let is_dir = e.path().is_dir();
            (is_dir || name.ends_with(".rs"))
                .then(|| if is_dir { format!("{name}/") } else { name })
        })
        .filter(|name| name != "lib.rs" && name != "main.rs")
        .collect();
    modules.sort();
    for module in &modules {
        if !words.contains(module.as_str()) {
            wrong.push(format!("tracer/src/{module} is not in the diagram"));
        }
    }
    // Everything named like a module exists somewhere under tracer/src (export/'s metrics/).
    let under_src = |name: &str| -> bool {
        fn find(dir: &Path, name: &str) -> bool {
            std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).any(|e| {
                let path = e.path();
                let file = e.file_name().to_string_lossy().into_owned();
                let matches = if path.is_dir() { format!("{file}/") == name } else { file == name };
                matches || (path.is_dir() && find(&path, name))
            })
        }
        find(&src, name)
    };
    for word in &words {
        let module_like = word.ends_with(".rs") || (word.ends_with('/') && !word.contains("//"));
        if module_like && !word.starts_with('/') && !under_src(word) {
            wrong.push(format!("the diagram names {word}, which tracer/src does not have"));
        }
    }
    // Each hook on a line that also names its kind (`kprobe tcp_close`).
    for (kind, hook) in kernel_hooks() {
        let shown = diagram.lines().any(|line| {
            let words: Vec<&str> =
                line.split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | ':'))).collect();
            words.contains(&kind.as_str())
                && words.iter().any(|w| *w == hook || w.rsplit(':').next() == Some(hook.as_str()))
        });
        if !shown {
            wrong.push(format!("the diagram does not show the {kind} hook {hook}"));
        }
    }
    for mode in ["fentry", "kprobe", "tracepoint"] {
        if !diagram.contains(&format!("{mode} mode")) {
            wrong.push(format!("the diagram does not show {mode} mode"));
        }
    }
    assert!(wrong.is_empty(), "docs/architecture.md's diagram:\n{}", wrong.join("\n"));
}

/// The string constant `name` of a Rust source file of the repository.
fn string_const(path: &str, name: &str) -> String {
    let text = read(path);
    let marker = format!("const {name}: &str = \"");
    let rest = text.split(&marker).nth(1).unwrap_or_else(|| panic!("{path} has no {name}"));
    rest.split('"').next().unwrap_or_default().to_owned()
}

/// README.md names the pinned tools `cargo xtask setup` installs, at the pinned versions.
#[test]
fn the_readme_names_the_pinned_tools() {
    let readme = read("README.md").split_whitespace().collect::<Vec<_>>().join(" ");
    // The one pin, which tracer/build.rs and xtask/src/setup.rs both read.
    let nightly = read("tracer-ebpf/ebpf-toolchain").trim().to_owned();
    let linker = string_const("xtask/src/setup.rs", "BPF_LINKER_VERSION");
    let llvm = string_const("xtask/src/setup.rs", "LLVM_CONFIG");
    let llvm = llvm.rsplit('-').next().unwrap_or_default();
    for phrase in [
        format!("the nightly pinned in `tracer-ebpf/ebpf-toolchain` (`{nightly}`)"),
        format!("`bpf-linker` {linker}"),
        format!("`clang-{llvm}`, `llvm-{llvm}-dev`"),
    ] {
        assert!(readme.contains(&phrase), "README.md should say \"{phrase}\"");
    }
}
