//! Per-workload overrides: a rule's thresholds, or the rule itself, set for the processes whose
//! command name matches a glob (`postgres:idle=off`, `backup-*:close-wait-after=600`), or whose
//! container, pod and namespace do (`namespace=shop,container=api:idle=off`). The first
//! override whose selector matches a process applies to it; every setting it leaves out keeps
//! the daemon-wide value. Written on the command line as `--workload SELECTOR:KEY=VALUE,...`
//! and in the config file as a `[workload."SELECTOR"]` table (docs/leak-detection.md).
use std::{fmt, str::FromStr};

use super::Rule;
use crate::containers::Container;

/// What an override is matched against: a process's command name and its container (`None`
/// for a host process, or while its cgroup is not resolved).
#[derive(Clone, Copy, Debug, Default)]
pub struct Workload<'a> {
    pub comm: &'a str,
    pub container: Option<&'a Container>,
}

impl<'a> From<&'a str> for Workload<'a> {
    fn from(comm: &'a str) -> Self {
        Self { comm, container: None }
    }
}

impl<'a> From<&'a String> for Workload<'a> {
    fn from(comm: &'a String) -> Self {
        Self { comm, container: None }
    }
}

/// The parts of a process a selector can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Comm,
    /// The container's name, or its id.
    Container,
    Pod,
    Namespace,
}

impl Field {
    const ALL: [Field; 4] = [Field::Comm, Field::Container, Field::Pod, Field::Namespace];

    fn name(self) -> &'static str {
        match self {
            Field::Comm => "comm",
            Field::Container => "container",
            Field::Pod => "pod",
            Field::Namespace => "namespace",
        }
    }

    /// Whether `glob` matches this part of `w`; a part the process does not have (a host
    /// process's pod) never matches.
    fn matches(self, glob: &str, w: &Workload<'_>) -> bool {
        let g = |text: &str| glob_match(glob.as_bytes(), text.as_bytes());
        match (self, w.container) {
            (Field::Comm, _) => g(w.comm),
            (_, None) => false,
            (Field::Container, Some(c)) => c.name.as_deref().is_some_and(g) || g(&c.id),
            (Field::Pod, Some(c)) => c.pod.as_deref().is_some_and(g),
            (Field::Namespace, Some(c)) => c.namespace.as_deref().is_some_and(g),
        }
    }
}

/// The settings an override can change, by the `tracer run` flag that sets them daemon-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub growth_min: Option<u32>,
    pub close_wait_min: Option<u32>,
    pub close_wait_after_ns: Option<u64>,
    pub held_closed_after_ns: Option<u64>,
    pub age_threshold_ns: Option<u64>,
    pub port_pressure_percent: Option<u32>,
    pub fd_headroom_percent: Option<u32>,
    pub fd_exhaustion_within_ns: Option<u64>,
    pub unread_min: Option<u32>,
    pub idle_min: Option<u32>,
    pub unread_after_ns: Option<u64>,
    pub idle_after_ns: Option<u64>,
    /// Turns the `idle` rule on for the matching processes, as `--idle-alert-after` does.
    pub idle_alert_after_ns: Option<u64>,
}

/// Keys that take a count or a percentage, then keys that take seconds.
const COUNT_KEYS: [&str; 6] =
    ["leak-growth-min", "close-wait-min", "port-pressure", "fd-headroom", "unread-min", "idle-min"];
const SECONDS_KEYS: [&str; 7] = [
    "close-wait-after",
    "held-closed-after",
    "age-threshold",
    "fd-exhaustion-within",
    "unread-after",
    "idle-after",
    "idle-alert-after",
];

/// One `--workload` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadOverride {
    /// The selector as written: a glob over the command name (`*` any run of characters, `?`
    /// one character), or `FIELD=GLOB,...` over `comm`, `container`, `pod`, `namespace`.
    pub pattern: String,
    /// The selector, parsed: every (field, glob) must match.
    pub selector: Vec<(Field, String)>,
    /// Rules turned on or off, in the order given.
    pub rules: Vec<(Rule, bool)>,
    pub thresholds: Thresholds,
}

impl WorkloadOverride {
    pub fn matches<'w>(&self, workload: impl Into<Workload<'w>>) -> bool {
        let w = workload.into();
        self.selector.iter().all(|(field, glob)| field.matches(glob, &w))
    }

    /// Whether the selector names a container, pod or namespace (not only the command name).
    pub fn by_placement(&self) -> bool {
        self.selector.iter().any(|(f, _)| *f != Field::Comm)
    }

    /// Whether it turns `rule` on (`Some(true)`) or off, or leaves it alone.
    pub fn rule(&self, rule: Rule) -> Option<bool> {
        self.rules.iter().rev().find(|(r, _)| *r == rule).map(|(_, on)| *on)
    }
}

/// The first override matching `workload` (a command name, or a [`Workload`]).
pub fn find<'a, 'w>(
    overrides: &'a [WorkloadOverride],
    workload: impl Into<Workload<'w>>,
) -> Option<&'a WorkloadOverride> {
    let w = workload.into();
    overrides.iter().find(|o| o.matches(w))
}

/// `GLOB` (a command name) or `FIELD=GLOB,FIELD=GLOB...`.
fn parse_selector(text: &str) -> Result<Vec<(Field, String)>, String> {
    if !text.contains('=') {
        return Ok(vec![(Field::Comm, text.to_owned())]);
    }
    let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
    let mut out: Vec<(Field, String)> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (key, glob) = part.split_once('=').ok_or_else(|| {
            format!("selector {text:?}: {part:?} is not FIELD=GLOB (fields: {})", names.join(", "))
        })?;
        let field = Field::ALL.into_iter().find(|f| f.name() == key.trim()).ok_or_else(|| {
            format!("selector {text:?}: unknown field {key:?}; one of {}", names.join(", "))
        })?;
        if glob.trim().is_empty() {
            return Err(format!("selector {text:?}: {key}= has no glob"));
        }
        if out.iter().any(|(f, _)| *f == field) {
            return Err(format!("selector {text:?}: {key} is given twice"));
        }
        out.push((field, glob.trim().to_owned()));
    }
    Ok(out)
}

/// Whether `text` matches `pattern` (`*` any run of bytes, `?` one byte), in at most
/// (pattern length x text length) steps: only the latest `*` is ever retried, one byte further
/// each time (what an earlier `*` matched never needs to change once a later one is reached).
/// Patterns come from API clients (`tracer trace --comm`) and are matched on the event loop:
/// the recursive matching this replaces was exponential in the stars (`**************b` took
/// seconds against a 15-byte command name, which the `api_request` fuzz target's time budget
/// now catches).
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the latest `*`: the pattern position, and the text position it is retried from.
    let mut retry: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                retry = Some((p, t));
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match retry {
                Some((after_star, from)) => {
                    p = after_star;
                    t = from + 1;
                    retry = Some((after_star, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A duration setting ([`crate::duration::parse`]: seconds, or with units), in nanoseconds.
fn seconds_ns(key: &str, value: &str) -> Result<u64, String> {
    let d = crate::duration::parse(value).map_err(|e| format!("{key}={e}"))?;
    Ok(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl FromStr for WorkloadOverride {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (pattern, settings) = text.split_once(':').ok_or_else(|| {
            format!(
                "{text:?}: expected SELECTOR:KEY=VALUE[,KEY=VALUE...], e.g. postgres:age=off or \
                 namespace=shop,container=api:idle=off"
            )
        })?;
        if pattern.is_empty() {
            return Err(format!("{text:?}: the selector before `:` is empty"));
        }
        let selector = parse_selector(pattern)?;
        let mut out =
            WorkloadOverride { pattern: pattern.to_owned(), selector, ..Default::default() };
        for setting in settings.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("{setting:?}: expected KEY=VALUE"))?;
            let (key, value) = (key.trim(), value.trim());
            if let Some(rule) = Rule::ALL.into_iter().find(|r| r.name() == key) {
                let on = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("{key}={value}: a rule is `on` or `off`")),
                };
                out.rules.push((rule, on));
                continue;
            }
            let count = || -> Result<u32, String> {
                value.parse().map_err(|_| format!("{key}={value}: expected a whole number"))
            };
            let t = &mut out.thresholds;
            match key {
                "leak-growth-min" => t.growth_min = Some(count()?),
                "close-wait-min" => t.close_wait_min = Some(count()?),
                "port-pressure" => t.port_pressure_percent = Some(percent(key, count()?)?),
                "fd-headroom" => t.fd_headroom_percent = Some(percent(key, count()?)?),
                "unread-min" => t.unread_min = Some(at_least_one(key, count()?)?),
                "idle-min" => t.idle_min = Some(at_least_one(key, count()?)?),
                "close-wait-after" => t.close_wait_after_ns = Some(seconds_ns(key, value)?),
                "held-closed-after" => t.held_closed_after_ns = Some(seconds_ns(key, value)?),
                "age-threshold" => t.age_threshold_ns = Some(seconds_ns(key, value)?),
                "fd-exhaustion-within" => t.fd_exhaustion_within_ns = Some(seconds_ns(key, value)?),
                "unread-after" => t.unread_after_ns = Some(positive_ns(key, value)?),
                "idle-after" => t.idle_after_ns = Some(positive_ns(key, value)?),
                "idle-alert-after" => t.idle_alert_after_ns = Some(positive_ns(key, value)?),
                _ => {
                    let rules: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                    return Err(format!(
                        "unknown key {key:?}: one of the rules ({}) with on/off, or {}, {}",
                        rules.join(", "),
                        COUNT_KEYS.join(", "),
                        SECONDS_KEYS.join(", ")
                    ));
                }
            }
        }
        Ok(out)
    }
}

fn at_least_one(key: &str, value: u32) -> Result<u32, String> {
    if value >= 1 { Ok(value) } else { Err(format!("{key}={value}: expected at least 1")) }
}

/// Seconds that must be above zero, as their `tracer run` flags require.
fn positive_ns(key: &str, value: &str) -> Result<u64, String> {
    match seconds_ns(key, value)? {
        0 => Err(format!("{key}={value}: expected more than 0 seconds")),
        ns => Ok(ns),
    }
}

fn percent(key: &str, value: u32) -> Result<u32, String> {
    if (1..=100).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{key}={value}: expected a percentage from 1 to 100"))
    }
}

/// The canonical form, as `tracer status` lists it.
impl fmt::Display for WorkloadOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .rules
            .iter()
            .map(|(r, on)| format!("{}={}", r.name(), if *on { "on" } else { "off" }))
            .collect();
        let t = &self.thresholds;
        let secs = |ns: u64| ns as f64 / 1e9;
        let counts = [
            t.growth_min,
            t.close_wait_min,
            t.port_pressure_percent,
            t.fd_headroom_percent,
            t.unread_min,
            t.idle_min,
        ];
        for (key, value) in COUNT_KEYS.iter().zip(counts) {
            if let Some(v) = value {
                parts.push(format!("{key}={v}"));
            }
        }
        let durations = [
            t.close_wait_after_ns,
            t.held_closed_after_ns,
            t.age_threshold_ns,
            t.fd_exhaustion_within_ns,
            t.unread_after_ns,
            t.idle_after_ns,
            t.idle_alert_after_ns,
        ];
        for (key, value) in SECONDS_KEYS.iter().zip(durations) {
            if let Some(v) = value {
                parts.push(format!("{key}={}", secs(v)));
            }
        }
        write!(f, "{}:{}", self.pattern, parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_thresholds_and_prints_them_back() {
        let o: WorkloadOverride =
            "backup-*:age=off,close-wait-after=600,fd-headroom=20".parse().unwrap();
        assert_eq!(o.rule(Rule::Age), Some(false));
        assert_eq!(o.rule(Rule::Growth), None);
        assert_eq!(o.thresholds.close_wait_after_ns, Some(600_000_000_000));
        assert_eq!(o.to_string(), "backup-*:age=off,fd-headroom=20,close-wait-after=600");
        assert_eq!(o.to_string().parse::<WorkloadOverride>(), Ok(o));
    }

    #[test]
    fn idle_and_unread_are_rules_and_have_thresholds() {
        let o: WorkloadOverride =
            "backup-agent:unread-after=900,idle=off,unread-min=10".parse().unwrap();
        assert_eq!(o.rule(Rule::Idle), Some(false));
        assert_eq!(o.rule(Rule::Unread), None);
        assert_eq!(o.thresholds.unread_after_ns, Some(900_000_000_000));
        assert_eq!(o.thresholds.unread_min, Some(10));
        assert_eq!(o.to_string(), "backup-agent:idle=off,unread-min=10,unread-after=900");
        assert_eq!(o.to_string().parse::<WorkloadOverride>(), Ok(o));
        let o: WorkloadOverride =
            "pool*:idle-alert-after=120,idle-min=30,idle-after=60".parse().unwrap();
        assert_eq!(o.thresholds.idle_alert_after_ns, Some(120_000_000_000));
        assert_eq!(
            (o.thresholds.idle_min, o.thresholds.idle_after_ns),
            (Some(30), Some(60_000_000_000))
        );
        assert!("x:unread-after=0".parse::<WorkloadOverride>().is_err());
        assert!("x:idle-min=0".parse::<WorkloadOverride>().is_err());
        assert!("x:unread=off".parse::<WorkloadOverride>().is_ok());
    }

    #[test]
    fn refuses_unknown_keys_naming_the_known_ones() {
        let e = "x:bogus=1".parse::<WorkloadOverride>().unwrap_err();
        assert!(e.contains("growth") && e.contains("close-wait-after"), "{e}");
        assert!("x:growth=maybe".parse::<WorkloadOverride>().is_err());
        assert!(":growth=off".parse::<WorkloadOverride>().is_err());
        assert!("x:port-pressure=0".parse::<WorkloadOverride>().is_err());
    }

    #[test]
    fn globs_match_whole_command_names_and_the_first_match_wins() {
        let list: Vec<WorkloadOverride> =
            ["post*:age=on", "*:age=off"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(find(&list, "postgres").and_then(|o| o.rule(Rule::Age)), Some(true));
        assert_eq!(find(&list, "nginx").and_then(|o| o.rule(Rule::Age)), Some(false));
        assert!(glob_match(b"a?c", b"abc") && !glob_match(b"a?c", b"abbc"));
        assert!(!glob_match(b"post", b"postgres"));
    }

    /// The recursive definition of a glob match (exponential in the stars: small inputs only).
    fn glob_definition(pattern: &[u8], text: &[u8]) -> bool {
        match (pattern.first(), text.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                glob_definition(&pattern[1..], text)
                    || (!text.is_empty() && glob_definition(pattern, &text[1..]))
            }
            (Some(b'?'), Some(_)) => glob_definition(&pattern[1..], &text[1..]),
            (Some(p), Some(t)) if p == t => glob_definition(&pattern[1..], &text[1..]),
            _ => false,
        }
    }

    /// Every word of up to `max` letters of `alphabet`.
    fn words(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|w| {
                    alphabet.iter().map(move |&c| {
                        let mut w = w.clone();
                        w.push(c);
                        w
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn globs_match_as_defined_and_stars_cost_no_backtracking() {
        let texts = words(b"ab", 5);
        for pattern in words(b"ab*?", 5) {
            for text in &texts {
                assert_eq!(
                    glob_match(&pattern, text),
                    glob_definition(&pattern, text),
                    "{:?} against {:?}",
                    String::from_utf8_lossy(&pattern),
                    String::from_utf8_lossy(text)
                );
            }
        }
        // Hostile patterns from API clients: answered at once.
        let started = std::time::Instant::now();
        let mut stars = vec![b'*'; 60_000];
        stars.push(b'b');
        assert!(!glob_match(&stars, &[b'a'; 15]));
        assert!(!glob_match(&b"*a".repeat(30_000), &[b'b'; 64]));
        assert!(glob_match(&b"*a".repeat(32), &[b'a'; 64]));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    fn api_container() -> Container {
        Container {
            id: "0123456789abcdef".into(),
            name: Some("api".into()),
            runtime: crate::containers::Runtime::Containerd,
            pod: Some("checkout-7d9f".into()),
            namespace: Some("shop".into()),
            pod_uid: None,
            cgroup: "/kubepods.slice/x".into(),
            role: crate::containers::Role::Workload,
        }
    }

    #[test]
    fn selectors_match_container_pod_and_namespace() {
        let api = api_container();
        let in_api = Workload { comm: "java", container: Some(&api) };
        let host = Workload { comm: "java", container: None };
        let o: WorkloadOverride = "namespace=shop,container=api:idle=off".parse().unwrap();
        assert!(o.matches(in_api) && !o.matches(host) && o.by_placement());
        assert_eq!(o.to_string(), "namespace=shop,container=api:idle=off");
        assert_eq!(o.to_string().parse::<WorkloadOverride>(), Ok(o));

        let o: WorkloadOverride = "pod=checkout-*,comm=ja*:age=on".parse().unwrap();
        assert!(o.matches(in_api));
        assert!(!o.matches(Workload { comm: "python", container: Some(&api) }), "all must match");
        let o: WorkloadOverride = "container=0123*:age=on".parse().unwrap();
        assert!(o.matches(in_api), "a container id glob");
        assert!(!"namespace=other:age=on".parse::<WorkloadOverride>().unwrap().matches(in_api));
        // The old form is a command-name glob, matching host and container processes alike.
        let o: WorkloadOverride = "ja*:age=on".parse().unwrap();
        assert!(o.matches(in_api) && o.matches(host) && !o.by_placement());
        // A host process has no pod: `pod=*` selects processes in pods only.
        assert!(!"pod=*:age=on".parse::<WorkloadOverride>().unwrap().matches(host));

        let list: Vec<WorkloadOverride> =
            ["namespace=shop:age=on", "java:age=off"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(find(&list, in_api).and_then(|o| o.rule(Rule::Age)), Some(true));
        assert_eq!(find(&list, host).and_then(|o| o.rule(Rule::Age)), Some(false));
    }

    #[test]
    fn selectors_refuse_unknown_fields_and_empty_globs() {
        let e = "ns=shop:age=on".parse::<WorkloadOverride>().unwrap_err();
        assert!(e.contains("namespace") && e.contains("container"), "{e}");
        assert!("namespace=:age=on".parse::<WorkloadOverride>().is_err());
        assert!("pod=a,pod=b:age=on".parse::<WorkloadOverride>().is_err());
        assert!("namespace=shop,api:age=on".parse::<WorkloadOverride>().is_err());
    }
}
