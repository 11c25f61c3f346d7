//! Runs one target (a qemu guest, or the staged payload natively for the host row), records its
//! console to a log file, and follows the `@@VMTEST` markers of run-tests.sh. A watchdog kills a
//! target that makes no progress: no kernel marker within the boot timeout, or no marker for
//! longer than one test may take.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

const MARKER: &str = "@@VMTEST ";

/// One test executable run in one mode.
pub struct Step {
    pub mode: String,
    pub test: String,
    /// Exit status from the script; None when the target stopped before the step ended.
    pub rc: Option<i32>,
    /// Host wall time of the step.
    pub elapsed: Duration,
    /// Panic messages from the step's output, to show next to the table.
    pub panics: Vec<String>,
}

pub struct Observed {
    /// `uname -r` as the target reported it.
    pub kernel: Option<String>,
    /// Launch to the first marker: boot time for a guest.
    pub boot: Option<Duration>,
    pub steps: Vec<Step>,
    /// Set when the target did not reach `done`: a timeout, a crash, qemu failing.
    pub problem: Option<String>,
    pub total: Duration,
    pub log: PathBuf,
    /// The guest kernel's own report when it oopsed or panicked (first lines, call trace).
    pub kernel_crash: Option<String>,
    /// Steps during which the guest kernel crashed and that ran again in a new boot.
    pub resumed_after: Vec<Resumed>,
}

impl Observed {
    /// The step the guest kernel crashed in, when it did and the step never ended.
    pub fn crashed_step(&self) -> Option<(&str, &str)> {
        self.kernel_crash.as_ref()?;
        let step = self.steps.last().filter(|s| s.rc.is_none())?;
        Some((&step.mode, &step.test))
    }

    /// Folds in the run of a new boot that started again at the step this one crashed in.
    pub fn resume_with(&mut self, again: Observed) {
        if let (Some(step), Some(crash)) = (self.steps.pop(), self.kernel_crash.take()) {
            self.resumed_after.push(Resumed {
                step: format!("{} {}", step.mode, step.test),
                crash,
                log: self.log.clone(),
            });
        }
        self.steps.extend(again.steps);
        self.problem = again.problem;
        self.kernel_crash = again.kernel_crash;
        self.total += again.total;
        self.log = again.log;
    }
}

/// A guest kernel crash that a new boot got past.
pub struct Resumed {
    /// `MODE TEST` of the step that ran when the kernel crashed.
    pub step: String,
    /// The kernel's crash report.
    pub crash: String,
    /// The console log of the boot that crashed.
    pub log: PathBuf,
}

/// Console lines that start a guest kernel's crash report.
const CRASH_STARTS: &[&str] =
    &["BUG:", "Oops:", "int3:", "general protection fault", "kernel BUG", "Kernel panic"];
/// How many console lines of a crash report are kept for the summary.
const CRASH_LINES: usize = 40;

pub struct Limits {
    pub boot: Duration,
    /// Longest silence allowed between two markers once booted.
    pub step: Duration,
}

enum Line {
    Marker(Instant, String),
    Output(String),
}

/// Starts `cmd` with stdout and stderr captured to `log` and follows it until `done`, exit or timeout.
/// With `echo`, every console line is also printed, prefixed with `label`.
pub fn run(
    label: &str,
    mut cmd: Command,
    log: &Path,
    limits: &Limits,
    echo: bool,
) -> Result<Observed> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let sink = Arc::new(Mutex::new(file));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    let readers = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        let sink = Arc::clone(&sink);
        let label = label.to_owned();
        thread::spawn(move || forward(stream, &tx, &sink, echo.then_some(label.as_str())))
    })
    .collect::<Vec<_>>();
    drop(tx);

    let mut seen = Observed {
        kernel: None,
        boot: None,
        steps: Vec::new(),
        problem: None,
        total: Duration::ZERO,
        log: log.to_owned(),
        kernel_crash: None,
        resumed_after: Vec::new(),
    };
    let mut crash: Vec<String> = Vec::new();
    let mut deadline = started + limits.boot;
    let mut step_started = started;
    let mut output: Vec<String> = Vec::new();
    let mut tail: Vec<String> = Vec::new();
    let mut done = false;
    while !done {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Line::Output(line)) => {
                if (!crash.is_empty() || CRASH_STARTS.iter().any(|s| line.contains(s)))
                    && crash.len() < CRASH_LINES
                {
                    crash.push(line.clone());
                }
                output.push(line.clone());
                tail.push(line);
                if tail.len() > 12 {
                    tail.remove(0);
                }
            }
            Ok(Line::Marker(at, marker)) => {
                deadline = at + limits.step;
                let words: Vec<&str> = marker.split_whitespace().collect();
                match words.as_slice() {
                    ["kernel", release] => {
                        seen.kernel = Some((*release).to_owned());
                        seen.boot = Some(at - started);
                    }
                    ["begin", mode, test] => {
                        step_started = at;
                        output.clear();
                        seen.steps.push(Step {
                            mode: (*mode).to_owned(),
                            test: (*test).to_owned(),
                            rc: None,
                            elapsed: Duration::ZERO,
                            panics: Vec::new(),
                        });
                    }
                    ["end", mode, test, rc] => {
                        if let Some(step) =
                            seen.steps.last_mut().filter(|s| s.mode == *mode && s.test == *test)
                        {
                            step.rc = rc.parse().ok();
                            step.elapsed = at - step_started;
                            step.panics = panics(&output);
                            if !echo {
                                let verdict = if step.rc == Some(0) {
                                    "pass".to_owned()
                                } else {
                                    format!("FAIL (exit {rc})")
                                };
                                eprintln!(
                                    "vm-test: {label} {mode} {test}: {verdict} in {:.1}s",
                                    step.elapsed.as_secs_f64()
                                );
                            }
                        }
                    }
                    ["done"] => done = true,
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let what = match seen.steps.last() {
                    None if seen.kernel.is_none() => {
                        format!("did not boot within {}s", limits.boot.as_secs())
                    }
                    Some(step) if step.rc.is_none() => format!(
                        "timed out: no progress for {}s in {} {}",
                        limits.step.as_secs(),
                        step.mode,
                        step.test
                    ),
                    _ => format!("timed out: no progress for {}s", limits.step.as_secs()),
                };
                seen.problem = Some(what);
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                seen.problem = Some(format!(
                    "stopped before finishing ({status}); last output:\n    {}",
                    tail.join("\n    ")
                ));
                break;
            }
        }
    }
    // After `done` the guest powers off by itself; give it a moment before killing it.
    stop(&mut child, if done { Duration::from_secs(30) } else { Duration::ZERO });
    for reader in readers {
        let _ = reader.join();
    }
    seen.total = started.elapsed();
    if !crash.is_empty() && !done {
        seen.kernel_crash = Some(crash.join("\n"));
    }
    Ok(seen)
}

/// Copies a stream to the log line by line, and sends markers and plain lines to the watchdog.
fn forward(
    stream: Box<dyn Read + Send>,
    tx: &mpsc::Sender<Line>,
    sink: &Mutex<File>,
    echo: Option<&str>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
        if let Ok(mut log) = sink.lock() {
            let _ = writeln!(log, "{line}");
        }
        if let Some(label) = echo {
            eprintln!("[{label}] {line}");
        }
        // A marker may follow other text on the same console line (a test's unterminated output).
        let msg = match line.find(MARKER) {
            Some(at) => Line::Marker(Instant::now(), line[at + MARKER.len()..].trim().to_owned()),
            None => Line::Output(line),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// libtest prints "thread '...' panicked at file:line:col:" followed by the message; an
/// `assert_eq!` ends its message with `left:` and `right:` lines, after whatever it printed
/// (often a whole JSON document, which the log keeps in full). The summary is the header, the
/// message's first line and those two lines, each cut short.
fn panics(output: &[String]) -> Vec<String> {
    fn cut(text: &str, chars: usize) -> String {
        match text.char_indices().nth(chars) {
            Some((at, _)) => format!("{} ...", &text[..at]),
            None => text.to_owned(),
        }
    }
    let mut found = Vec::new();
    for (i, line) in output.iter().enumerate() {
        if !line.contains("panicked at") {
            continue;
        }
        let message: Vec<&str> = output[i + 1..]
            .iter()
            .map(|m| m.trim())
            .take_while(|m| !m.starts_with("note:") && !m.contains("panicked at"))
            .collect();
        let first = message.first().copied().unwrap_or_default();
        let mut summary = cut(&format!("{} {first}", line.trim()), 300);
        // Both sides of an assertion, the complaints an `eventually` saw on the way (when each
        // first showed) and the daemon's own account: what a failure in CI is diagnosed from.
        for detail in message.iter().skip(1) {
            let kept = if detail.starts_with("left:") || detail.starts_with("right:") {
                cut(detail, 120)
            } else if detail.starts_with("after ") && detail.contains("s: ") {
                cut(detail, 300)
            } else if detail.starts_with("daemon status:") {
                cut(detail, 600)
            } else {
                continue;
            };
            summary.push_str(" | ");
            summary.push_str(&kept);
        }
        found.push(summary);
    }
    found.dedup();
    found.truncate(5);
    found
}

/// Waits up to `grace` for the child to exit, then kills it (the process we started, by handle).
fn stop(child: &mut Child, grace: Duration) {
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn a_panic_summary_keeps_the_first_line_and_both_sides_of_an_assertion() {
        let output = lines(&[
            "running 1 test",
            "thread 'close_wait' (2567) panicked at tracer/tests/stacks.rs:403:9:",
            "assertion `left == right` failed: groups [3], in other groups 0: {",
            "  \"pid\": 7",
            "}",
            "  left: 3",
            " right: 4",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
            "test close_wait ... FAILED",
        ]);
        assert_eq!(
            panics(&output),
            vec![
                "thread 'close_wait' (2567) panicked at tracer/tests/stacks.rs:403:9: assertion \
                 `left == right` failed: groups [3], in other groups 0: { | left: 3 | right: 4"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn a_panic_summary_keeps_what_an_eventually_saw_and_the_daemon_status() {
        let output = lines(&[
            "thread 'ports' (35) panicked at tracer/tests/common/mod.rs:423:25:",
            "port_exhaustion against the client: no alert yet",
            "complaints seen:",
            "  after 0.0s: no alert yet",
            "daemon status: {\"mode\":\"kprobe\"}",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]);
        assert_eq!(
            panics(&output),
            vec![
                "thread 'ports' (35) panicked at tracer/tests/common/mod.rs:423:25: \
                 port_exhaustion against the client: no alert yet | after 0.0s: no alert yet | \
                 daemon status: {\"mode\":\"kprobe\"}"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn follows_markers_and_failures_of_a_script() {
        let dir = std::env::temp_dir().join(format!("xtask-guest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = "echo '@@VMTEST kernel 1.2.3'; echo '@@VMTEST begin tracepoint pipeline'; \
                      echo \"thread 'a' panicked at src/x.rs:1:2:\"; echo 'boom'; \
                      printf 'no newline'; echo '@@VMTEST end tracepoint pipeline 101'; echo '@@VMTEST done'";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let limits = Limits { boot: Duration::from_secs(10), step: Duration::from_secs(10) };
        let seen = run("t", cmd, &dir.join("log"), &limits, false).expect("run");
        assert_eq!(seen.kernel.as_deref(), Some("1.2.3"));
        assert!(seen.problem.is_none());
        assert_eq!(seen.steps.len(), 1);
        assert_eq!(seen.steps[0].rc, Some(101));
        assert_eq!(
            seen.steps[0].panics,
            vec!["thread 'a' panicked at src/x.rs:1:2: boom".to_owned()]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_kernel_crash_names_its_step_and_a_new_boot_takes_over_from_it() {
        let dir = std::env::temp_dir().join(format!("xtask-guest-crash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let limits = Limits { boot: Duration::from_secs(10), step: Duration::from_secs(10) };
        let crashing = "echo '@@VMTEST kernel 6'; echo '@@VMTEST begin auto a'; \
                        echo '@@VMTEST end auto a 0'; echo '@@VMTEST begin kprobe a'; \
                        echo '[  869.2] int3: 0000 [#1] PREEMPT SMP NOPTI'; \
                        echo '[  869.2] RIP: 0010:tcp_rcv+0x2a/0x90'; \
                        echo '[  869.2] Kernel panic - not syncing: Fatal exception in interrupt'";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", crashing]);
        let mut seen = run("t", cmd, &dir.join("first.log"), &limits, false).expect("run");
        assert_eq!(seen.crashed_step(), Some(("kprobe", "a")));
        let crash = seen.kernel_crash.clone().expect("the crash report");
        assert!(crash.starts_with("[  869.2] int3:") && crash.contains("RIP:"), "{crash}");

        let resumed = "echo '@@VMTEST kernel 6'; echo '@@VMTEST begin kprobe a'; \
                       echo '@@VMTEST end kprobe a 0'; echo '@@VMTEST done'";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", resumed]);
        let again = run("t", cmd, &dir.join("second.log"), &limits, false).expect("run");
        assert_eq!(again.crashed_step(), None);
        seen.resume_with(again);
        let steps: Vec<_> =
            seen.steps.iter().map(|s| (s.mode.as_str(), s.test.as_str(), s.rc)).collect();
        assert_eq!(steps, [("auto", "a", Some(0)), ("kprobe", "a", Some(0))]);
        assert!(seen.problem.is_none() && seen.kernel_crash.is_none());
        assert_eq!(seen.resumed_after.len(), 1);
        assert_eq!(seen.resumed_after[0].step, "kprobe a");
        assert_eq!(seen.resumed_after[0].log, dir.join("first.log"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reports_a_target_that_hangs() {
        let dir = std::env::temp_dir().join(format!("xtask-guest-hang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '@@VMTEST kernel 1'; echo '@@VMTEST begin auto t'; exec sleep 30"]);
        let limits = Limits { boot: Duration::from_secs(5), step: Duration::from_millis(300) };
        let seen = run("t", cmd, &dir.join("log"), &limits, false).expect("run");
        assert!(
            seen.problem.as_deref().is_some_and(|p| p.contains("no progress")),
            "{:?}",
            seen.problem
        );
        assert_eq!(seen.steps[0].rc, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
