//! Value parsers of the flags. The library's enums know their own names (`name()`, `FromStr`)
//! and do not depend on clap; [`Choice`] shows those names as clap's possible values.
use std::{fmt, time::Duration};

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use tracer::{
    api::protocol::TopBy,
    logging::LogFormat,
    probes::{ProbeMode, StackPolicy},
};

/// A library enum offered as a flag's possible values.
pub trait Choice: Clone + Send + Sync + Sized + std::str::FromStr<Err = String> + 'static {
    const ALL: &'static [Self];
    fn name(&self) -> &'static str;
    fn about(&self) -> Option<&'static str> {
        None
    }

    /// A parser that accepts exactly the names of [`Choice::ALL`], listed in `--help`.
    fn parser() -> impl TypedValueParser<Value = Self> {
        PossibleValuesParser::new(Self::ALL.iter().map(|v| {
            let value = PossibleValue::new(v.name());
            match v.about() {
                Some(about) => value.help(about),
                None => value,
            }
        }))
        .try_map(|name| name.parse::<Self>())
    }
}

impl Choice for ProbeMode {
    const ALL: &'static [Self] = &ProbeMode::ALL;
    fn name(&self) -> &'static str {
        ProbeMode::name(*self)
    }
    fn about(&self) -> Option<&'static str> {
        Some(ProbeMode::about(*self))
    }
}

impl Choice for StackPolicy {
    const ALL: &'static [Self] = &StackPolicy::ALL;
    fn name(&self) -> &'static str {
        StackPolicy::name(*self)
    }
    fn about(&self) -> Option<&'static str> {
        Some(StackPolicy::about(*self))
    }
}

impl Choice for tracer::gohttp::GoRequestPolicy {
    const ALL: &'static [Self] = &tracer::gohttp::GoRequestPolicy::ALL;
    fn name(&self) -> &'static str {
        tracer::gohttp::GoRequestPolicy::name(*self)
    }
    fn about(&self) -> Option<&'static str> {
        Some(tracer::gohttp::GoRequestPolicy::about(*self))
    }
}

impl Choice for tracer::names::Switch {
    const ALL: &'static [Self] = &tracer::names::Switch::ALL;
    fn name(&self) -> &'static str {
        tracer::names::Switch::name(*self)
    }
}

impl Choice for LogFormat {
    const ALL: &'static [Self] = &LogFormat::ALL;
    fn name(&self) -> &'static str {
        LogFormat::name(*self)
    }
    fn about(&self) -> Option<&'static str> {
        Some(match self {
            LogFormat::Logfmt => "key=value pairs, one record a line",
            LogFormat::Json => "one JSON object a line",
        })
    }
}

impl Choice for TopBy {
    const ALL: &'static [Self] = &TopBy::ALL;
    fn name(&self) -> &'static str {
        TopBy::name(*self)
    }
}

/// A duration flag's value: seconds or a duration with units ([`tracer::duration`]), shown in
/// `--help` with units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub const fn of(duration: Duration) -> Self {
        Self(duration)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&tracer::duration::format(self.0))
    }
}

/// A duration from 0 to a year ([`tracer::duration::parse`]).
pub fn parse_seconds(text: &str) -> Result<Seconds, String> {
    tracer::duration::parse(text).map(Seconds)
}

/// Like [`parse_seconds`], but more than zero.
pub fn parse_positive_seconds(text: &str) -> Result<Seconds, String> {
    let seconds = parse_seconds(text)?;
    if seconds.0.is_zero() {
        return Err(format!("{text}: expected more than 0 ({})", tracer::duration::ACCEPTED));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_fractions_and_units_and_refuse_what_would_overflow() {
        assert_eq!(parse_seconds("1.5"), Ok(Seconds(Duration::from_millis(1500))));
        assert_eq!(parse_seconds("0"), Ok(Seconds(Duration::ZERO)));
        assert_eq!(parse_seconds("1h30m"), Ok(Seconds(Duration::from_secs(5_400))));
        for bad in ["-1", "nan", "inf", "1e30", "31536001", "18446744073709551615", "x", "5y"] {
            let e = parse_seconds(bad).expect_err(bad);
            assert!(e.contains("from 0 to a year"), "{bad}: {e}");
        }
        assert!(parse_positive_seconds("0").is_err());
        assert!(parse_positive_seconds("0s").is_err());
        assert_eq!(Seconds(Duration::from_secs(15)).to_string(), "15s");
        assert_eq!(Seconds(Duration::from_secs(300)).to_string(), "5m");
    }

    #[test]
    fn choices_are_the_library_names() {
        for mode in ProbeMode::ALL {
            assert_eq!(mode.name().parse::<ProbeMode>(), Ok(mode));
        }
        assert!("fast".parse::<ProbeMode>().is_err());
    }
}
