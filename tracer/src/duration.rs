//! Durations as users write them: the one parser behind every duration flag and setting
//! (`--leak-interval 30s`, `--close-wait-after 5m`, `backup-*:close-wait-after=1h30m`). A
//! plain number is seconds, as the flags have always taken; units are `ms`, `s`, `m`, `h`
//! and `d`, one or more in a row, each with a whole or decimal number.
use std::time::Duration;

/// The longest duration any setting takes: a year. Longer values are refused rather than left
/// to overflow a deadline or a nanosecond count.
pub const MAX_SECONDS: u64 = 365 * 86_400;

const UNITS: [(&str, f64); 5] =
    [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3_600.0), ("d", 86_400.0)];

/// What a refused value is told: the accepted forms and the range.
pub const ACCEPTED: &str = "expected seconds (90, 1.5) or a duration with units ms, s, m, h, d \
                            (500ms, 30s, 5m, 1h30m), from 0 to a year";

/// Parses `text` (see the module's documentation).
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let refused = || format!("{text:?}: {ACCEPTED}");
    let seconds = match trimmed.parse::<f64>() {
        Ok(plain) => plain,
        Err(_) => with_units(trimmed).ok_or_else(refused)?,
    };
    if !seconds.is_finite() || !(0.0..=MAX_SECONDS as f64).contains(&seconds) {
        return Err(refused());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| refused())
}

/// `1h30m` as seconds; `None` unless every part is a number followed by a unit.
fn with_units(text: &str) -> Option<f64> {
    let mut rest = text;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let (_, scale) = UNITS.iter().find(|(unit, _)| *unit == &rest[..letters])?;
        total += number * scale;
        rest = &rest[letters..];
    }
    Some(total)
}

/// `d` the way [`parse`] reads it back, in the largest units that keep it exact: `90s` is
/// `1m30s`, `0.5s` is `500ms`, `1.25s` stays `1.25s`.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let whole = d.as_secs();
    let nanos = d.subsec_nanos();
    if whole == 0 && nanos.is_multiple_of(1_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    let mut out = String::new();
    let mut left = whole;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    if nanos > 0 {
        let fraction = format!("{:.9}", f64::from(nanos) / 1e9);
        out.push_str(&format!("{left}{}s", fraction.trim_start_matches('0').trim_end_matches('0')));
    } else if left > 0 {
        out.push_str(&format!("{left}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_seconds_and_units_add_up() {
        let s = |secs: f64| Ok(Duration::from_secs_f64(secs));
        for (text, want) in [
            ("90", s(90.0)),
            ("1.5", s(1.5)),
            (" 0 ", s(0.0)),
            ("500ms", s(0.5)),
            ("30s", s(30.0)),
            ("5m", s(300.0)),
            ("1h30m", s(5_400.0)),
            ("1.5h", s(5_400.0)),
            ("2d", s(172_800.0)),
            ("1m0.5s", s(60.5)),
            ("365d", s(MAX_SECONDS as f64)),
        ] {
            assert_eq!(parse(text), want, "{text}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_accepted_forms() {
        for bad in [
            "", "s", "-1", "-5m", "5x", "5 m", "m5", "1h30", "1..5s", "nan", "inf", "1e30", "366d",
            "31536001", "5M", "1h-30m",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("500ms, 30s, 5m, 1h30m") && e.contains("a year"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats_read_back_the_same() {
        for (secs, text) in [
            (0.0, "0s"),
            (0.5, "500ms"),
            (1.25, "1.25s"),
            (15.0, "15s"),
            (90.0, "1m30s"),
            (300.0, "5m"),
            (3_600.0, "1h"),
            (5_400.0, "1h30m"),
            (86_400.0 + 1.5, "1d1.5s"),
        ] {
            let d = Duration::from_secs_f64(secs);
            assert_eq!(format(d), text);
            assert_eq!(parse(text), Ok(d), "{text}");
        }
    }
}
