//! `tracer run --config FILE`: a TOML file whose keys are `tracer run`'s long flag names
//! (`probe = "tracepoint"`, `leak-interval = 5`, `metrics-addr = "0.0.0.0:9855"`; `_` may stand
//! for `-`), turned into the `--flag value` arguments it stands for. Which keys are flags, and
//! whether each value is one its flag takes, is the command line's to say (the binary's
//! `cli/config.rs` asks clap): this part only reads the file, so that it is one piece of code
//! with its own fuzz target (`crate::fuzzing::config_file`).

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "config file {path}, line {line}: unknown key `{key}` (keys are `tracer run` flags: see `tracer run --help`)"
    )]
    UnknownKey { path: String, line: usize, key: String },
    #[error("config file {path}, line {line}: bad value for `{key}`: {message}")]
    BadValue { path: String, line: usize, key: String, message: String },
}

/// One key of the file, as arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key as written.
    pub key: String,
    /// Its line (1-based; 0 when it cannot be told, e.g. a key inside an inline table).
    pub line: usize,
    /// `--flag value`, `--flag` (true), nothing (false), or one `--workload SELECTOR:...` pair
    /// per `[workload."SELECTOR"]` table.
    pub args: Vec<String>,
}

/// The entries of config `text` (shown as `path` in errors), in file order. `is_flag(name)`
/// says whether `--name` is a flag of `tracer run`; a key that is not is refused.
pub fn entries(
    text: &str,
    path: &str,
    is_flag: impl Fn(&str) -> bool,
) -> Result<Vec<Entry>, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let line = line_of(text, key);
        if flag == "config" || !is_flag(&flag) {
            return Err(ConfigError::UnknownKey { path: path.to_owned(), line, key: key.clone() });
        }
        let bad = |message: String| ConfigError::BadValue {
            path: path.to_owned(),
            line,
            key: key.clone(),
            message,
        };
        let args: Vec<String> = match value {
            // [workload."GLOB"] tables: one --workload GLOB:KEY=VALUE,... each.
            toml::Value::Table(workloads) if flag == "workload" => {
                workload_args(workloads).map_err(bad)?
            }
            toml::Value::Boolean(true) => vec![format!("--{flag}")],
            toml::Value::Boolean(false) => Vec::new(),
            toml::Value::String(s) => vec![format!("--{flag}"), s.clone()],
            toml::Value::Integer(i) => vec![format!("--{flag}"), i.to_string()],
            toml::Value::Float(f) => vec![format!("--{flag}"), f.to_string()],
            other => {
                return Err(bad(format!(
                    "expected a string, number or boolean, found {}",
                    other.type_str()
                )));
            }
        };
        out.push(Entry { key: key.clone(), line, args });
    }
    Ok(out)
}

/// `[workload."GLOB"]` tables as `--workload` arguments, in file order.
fn workload_args(workloads: &toml::Table) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for (glob, settings) in workloads {
        let toml::Value::Table(settings) = settings else {
            return Err(format!(
                "[workload.{glob:?}] must be a table of settings (e.g. age = \"off\")"
            ));
        };
        let mut parts = Vec::new();
        for (key, value) in settings {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(on) => if *on { "on" } else { "off" }.to_owned(),
                other => {
                    return Err(format!(
                        "{glob}.{key}: expected a value, found {}",
                        other.type_str()
                    ));
                }
            };
            parts.push(format!("{}={value}", key.replace('_', "-")));
        }
        args.push("--workload".to_owned());
        args.push(format!("{glob}:{}", parts.join(",")));
    }
    Ok(args)
}

/// The 1-based line where `key` is set (`key =` or `"key" =`), 0 when none is found.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.strip_prefix(&format!("\"{key}\""))
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}
