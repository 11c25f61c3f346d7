//! `tracer run --config FILE`: a TOML file whose keys are `tracer run`'s long flag names
//! (`probe = "tracepoint"`, `leak-interval = 5`, `metrics-addr = "0.0.0.0:9855"`; `_` may stand
//! for `-`), read into arguments by the library (`tracer::config_file`). Every entry is checked
//! here by the same parser as the flag itself, so a bad key or value is reported with its line,
//! and nothing starts half-configured. Flags given on the command line override the file.
use std::path::Path;

use clap::{CommandFactory, Parser};
use tracer::config_file::ConfigError;

use super::Cli;

/// The arguments the file stands for, as `--flag value` pairs, in file order.
pub fn args_from_file(path: &Path) -> Result<Vec<String>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    let run = run_command();
    let is_flag = |flag: &str| run.get_arguments().any(|a| a.get_long() == Some(flag));
    let mut args = Vec::new();
    for entry in tracer::config_file::entries(&text, &shown, is_flag)? {
        // The flag's own parser decides, exactly as on the command line.
        let probe =
            ["tracer", "run"].iter().map(|s| s.to_string()).chain(entry.args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(probe) {
            let message = e.to_string();
            let first =
                message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            return Err(ConfigError::BadValue {
                path: shown,
                line: entry.line,
                key: entry.key,
                message: first,
            });
        }
        args.extend(entry.args);
    }
    Ok(args)
}

/// The command line with `--config FILE` replaced by the file's flags, placed before the
/// command line's own so that those override the file.
pub fn expand(argv: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let Some(at) = argv.iter().position(|a| a == "--config" || a.starts_with("--config=")) else {
        return Ok(argv);
    };
    let (path, consumed) = match argv[at].strip_prefix("--config=") {
        Some(p) => (p.to_owned(), 1),
        None => (argv.get(at + 1).cloned().unwrap_or_default(), 2),
    };
    let from_file = args_from_file(Path::new(&path))?;
    let run_at = argv.iter().position(|a| a == "run").unwrap_or(1);
    let mut out: Vec<String> = Vec::with_capacity(argv.len() + from_file.len());
    for (i, arg) in argv.iter().enumerate() {
        if i >= at && i < at + consumed {
            continue;
        }
        out.push(arg.clone());
        if i == run_at {
            out.extend(from_file.iter().cloned());
        }
    }
    Ok(out)
}

/// `tracer run` as its `--help` shows it: the global flags (`--log-level`, `--socket`) too.
fn run_command() -> clap::Command {
    let mut command = Cli::command();
    command.build();
    command.find_subcommand("run").cloned().unwrap_or_default()
}

#[cfg(test)]
/// The packaged `/etc/tracer/tracer.toml` (`deploy/tracer.toml`): every flag of `tracer run`
/// that a file may set, under its help, commented out at its default, grouped by `--help`'s
/// headings. A test keeps the committed file equal to this, and parses it uncommented.
pub fn commented_defaults() -> String {
    let run = run_command();
    let mut out = String::from(
        "# tracer's daemon configuration: `tracer run --config /etc/tracer/tracer.toml`, as the\n\
         # systemd unit starts it. Keys are `tracer run`'s long flag names (`tracer run --help`,\n\
         # tracer-run(1)); a flag on the command line overrides the key. Every key is shown\n\
         # commented out at its default: uncomment one to change it.\n",
    );
    let mut heading: Option<String> = None;
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(long, "config" | "help" | "workload") {
            continue;
        }
        let this_heading = arg.get_help_heading().map(str::to_owned);
        if this_heading != heading {
            heading = this_heading;
            if let Some(h) = &heading {
                out.push_str(&format!("\n# ---- {h} ----\n"));
            }
        }
        out.push('\n');
        let mut help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        if !help.ends_with('.') {
            help.push('.');
        }
        for line in wrap(&help, 94) {
            out.push_str(&format!("# {line}\n"));
        }
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !choices.is_empty() && choices.len() <= 8 {
            out.push_str(&format!("# One of: {}.\n", choices.join(", ")));
        }
        let value = match defaults.as_slice() {
            [] => {
                let name = arg
                    .get_value_names()
                    .and_then(|n| n.first())
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "VALUE".to_owned());
                out.push_str("# No default.\n");
                format!("\"<{name}>\"")
            }
            values => toml_value(&values.join(",")),
        };
        out.push_str(&format!("#{long} = {value}\n"));
    }
    out.push_str(
        "\n# ---- Per-workload overrides (--workload), first match applies ----\n\n\
         # [workload.\"postgres\"]\n\
         # age = \"off\"\n\
         # [workload.\"namespace=shop,container=api\"]\n\
         # close-wait-after = \"10m\"\n",
    );
    out
}

#[cfg(test)]
/// A default as TOML: integers bare, the rest quoted.
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() {
        text.to_owned()
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// deploy/tracer.toml is what [`commented_defaults`] renders (the package installs it as
    /// /etc/tracer/tracer.toml). After a change to `tracer run`'s flags:
    /// `TRACER_BLESS=1 cargo test -p tracer --bin tracer packaged_config`.
    #[test]
    fn the_packaged_config_file_lists_every_run_flag_at_its_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tracer.toml");
        let rendered = commented_defaults();
        if std::env::var_os("TRACER_BLESS").is_some() {
            std::fs::write(&path, &rendered).expect("write deploy/tracer.toml");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == rendered,
            "deploy/tracer.toml differs from the flags of `tracer run`; after an intended \
             change: TRACER_BLESS=1 cargo test -p tracer --bin tracer packaged_config"
        );
    }

    /// Every default in the packaged file, uncommented, is a value its flag takes, and the
    /// whole file then starts the daemon with its defaults.
    #[test]
    fn the_packaged_config_file_uncommented_parses_to_the_defaults() {
        let text = commented_defaults();
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .filter(|l| !l.ends_with("\"") || !l.contains("\"<"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.lines().count() > 30, "{uncommented}");
        let f = write(&uncommented);
        let args = args_from_file(&f.0).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let from_file = Cli::try_parse_from(
            ["tracer".to_owned(), "run".to_owned()].into_iter().chain(args.iter().cloned()),
        )
        .expect("parses");
        let plain = Cli::try_parse_from(["tracer", "run"]).expect("parses");
        assert_eq!(format!("{from_file:?}"), format!("{plain:?}"));
    }

    fn write(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("tracer-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&path, text).expect("write");
                Self(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_flags_come_first_and_the_command_line_overrides_them() {
        let f = write("probe = \"tracepoint\"\nleak_interval = 5\nmetrics-addr = \"off\"\n");
        let argv: Vec<String> =
            ["tracer", "run", "--config", f.0.to_str().expect("utf-8"), "--leak-interval", "2"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let expanded = expand(argv).expect("valid");
        let cli = Cli::try_parse_from(&expanded).expect("parses");
        let super::super::Command::Run(run) = cli.command else { panic!("run") };
        assert_eq!(run.probe, tracer::probes::ProbeMode::Tracepoint);
        assert_eq!(run.leaks.leak_interval.0, std::time::Duration::from_secs(2), "the flag wins");
        assert!(run.metrics_addr.0.is_none());
        // Durations take units in the file as on the command line.
        let f = write("close-wait-after = \"1h30m\"\n[workload.pg]\nclose-wait-after = \"5m\"\n");
        let argv = ["tracer", "run"]
            .iter()
            .map(|s| s.to_string())
            .chain(args_from_file(&f.0).expect("valid"));
        let cli = Cli::try_parse_from(argv).expect("parses");
        let super::super::Command::Run(run) = cli.command else { panic!("run") };
        assert_eq!(run.leaks.close_wait_after.0, std::time::Duration::from_secs(5_400));
        let f = write("close-wait-after = \"1h30\"\n");
        let e = args_from_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("1h30m"), "{e}");
    }

    #[test]
    fn workload_tables_become_overrides_checked_by_the_flags_parser() {
        let f = write(
            "[workload.postgres]\nage = \"off\"\n[workload.\"backup-*\"]\nclose-wait-after = 600\n",
        );
        let args = args_from_file(&f.0).expect("valid");
        assert_eq!(
            args,
            ["--workload", "postgres:age=off", "--workload", "backup-*:close-wait-after=600"]
        );
        let argv = ["tracer", "run"].iter().map(|s| s.to_string()).chain(args);
        let cli = Cli::try_parse_from(argv).expect("parses");
        let super::super::Command::Run(run) = cli.command else { panic!("run") };
        assert_eq!(run.leaks.workload.len(), 2);
        assert_eq!(run.leaks.workload[1].to_string(), "backup-*:close-wait-after=600");
        // A container selector is a quoted table name, as a glob is.
        let f = write("[workload.\"namespace=shop,container=api\"]\nidle = \"off\"\n");
        let args = args_from_file(&f.0).expect("valid");
        assert_eq!(args, ["--workload", "namespace=shop,container=api:idle=off"]);
        let argv = ["tracer", "run"].iter().map(|s| s.to_string()).chain(args);
        let cli = Cli::try_parse_from(argv).expect("parses");
        let super::super::Command::Run(run) = cli.command else { panic!("run") };
        assert!(run.leaks.workload[0].by_placement());
        let f = write("[workload.x]\nbogus = 1\n");
        let e = args_from_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("workload") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_line() {
        let f = write("probe = \"auto\"\n\nleak-intervl = 5\n");
        let e = args_from_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("leak-intervl"), "{e}");
        let f = write("ring-bytes = \"lots\"\n");
        let e = args_from_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("ring-bytes") && e.contains("lots"), "{e}");
        let f = write("probe = [1]\n");
        assert!(args_from_file(&f.0).unwrap_err().to_string().contains("expected a string"));
        let f = write("probe = \n");
        assert!(args_from_file(&f.0).unwrap_err().to_string().contains("config file"));
    }
}
