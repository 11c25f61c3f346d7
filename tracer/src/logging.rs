//! The daemon's log: one line per record, logfmt (default) or JSON, with the record's key-value
//! fields (`log::warn!(pid = 1, rule = "growth"; "leak suspected")`) as fields of the line.
use std::{
    fmt::Write as _,
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use log::{Level, LevelFilter, Log, Metadata, Record, kv};

use crate::names::named_enum;

named_enum! {
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum LogFormat ("log format") {
        /// `key=value` pairs, one record a line.
        #[default]
        Logfmt => "logfmt",
        /// One JSON object a line.
        Json => "json",
    }
}

struct Logger {
    level: LevelFilter,
    format: LogFormat,
}

/// Installs the logger; later calls are ignored (tests may call it more than once).
pub fn init(level: LevelFilter, format: LogFormat) {
    if log::set_boxed_logger(Box::new(Logger { level, format })).is_ok() {
        log::set_max_level(level);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
            // aya's loader is very chatty at debug; keep it for trace.
            && (self.level >= LevelFilter::Trace || !metadata.target().starts_with("aya") || metadata.level() <= Level::Info)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match self.format {
            LogFormat::Logfmt => logfmt(record),
            LogFormat::Json => json(record),
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn flush(&self) {}
}

fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

/// `2026-11-24T04:07:00.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let now = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

fn logfmt_value(out: &mut String, value: &str) {
    if !value.is_empty()
        && value.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\')
    {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl<'kvs> kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        self.0.push((key.to_string(), value.to_string()));
        Ok(())
    }
}

fn fields(record: &Record<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let _ = record.key_values().visit(&mut Fields(&mut out));
    out
}

fn logfmt(record: &Record<'_>) -> String {
    let mut line = format!("time={} level={} msg=", timestamp(), level_name(record.level()));
    logfmt_value(&mut line, &record.args().to_string());
    for (key, value) in fields(record) {
        let _ = write!(line, " {key}=");
        logfmt_value(&mut line, &value);
    }
    line
}

fn json(record: &Record<'_>) -> String {
    let mut object = serde_json::Map::new();
    object.insert("time".into(), timestamp().into());
    object.insert("level".into(), level_name(record.level()).into());
    object.insert("msg".into(), record.args().to_string().into());
    for (key, value) in fields(record) {
        // Numbers stay numbers.
        let value =
            value.parse::<i64>().map(serde_json::Value::from).unwrap_or_else(|_| value.into());
        object.insert(key, value);
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_right_around_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }

    #[test]
    fn logfmt_quotes_only_when_needed() {
        let mut s = String::new();
        logfmt_value(&mut s, "growth");
        s.push(' ');
        logfmt_value(&mut s, "leak suspected \"now\"");
        assert_eq!(s, "growth \"leak suspected \\\"now\\\"\"");
    }
}
