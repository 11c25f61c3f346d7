//! The inspector part (docs/security.md, "A third process"): a process started by the
//! [launcher](super::launcher) (forked off at start, like the client part), that parses other processes' files for the daemon, so that the
//! privileged daemon only opens them. It runs as `--clients-user` with no capabilities, under
//! a seccomp allow-list that lets it read files and nothing else (no socket, no exec): the
//! daemon opens each file (it has the privileges to) and passes the descriptor
//! ([`fds`](super::fds)); answers are plain values the daemon checks as it reads them.
//!
//! It inspects the Go binaries the request probes attach to (`gohttp`), symbolizes stacks
//! (blazesym and the `.gopclntab` fallback) and reads unwind rules (`.eh_frame`), on two
//! links: unwind rules, asked from the daemon's event loop, have their own, served by a
//! thread of their own. One request at a time per link, answered in order. A request that
//! takes longer than [`ANSWER_TIMEOUT`] (a parser caught in a loop) ends the part, and so does
//! one it crashes on (a parser panic is caught and answered as an error instead). Then the
//! files that request had it parse are quarantined (never handed over again), and the launcher
//! starts a new part, at most [`MAX_RESTARTS`] an hour; meanwhile inspections are refused with
//! the reason. `tracer status` shows the part, its restarts, why the last one ended, and the
//! quarantined files.
use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::{fs::MetadataExt, net::UnixStream},
    },
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    ClientsUser, Error, fds,
    launcher::{Launcher, Relaunched, Started},
    restarts::{FileKey, MAX_RESTARTS, Quarantine, RestartBudget},
    seccomp,
};
use crate::names::Switch;
use crate::{
    api::answers::{PartStatus, PrivilegesStatus},
    gohttp::{self, GoHttpBinary},
    stacks::{
        symbolize::{
            AddressKind, Mapping, PinnedFile, PinnedProcess, Resolve, ResolveState, Resolved,
            Resolver,
        },
        unwind::{AddressRole, FrameRule, ModuleCfi, RuleSource},
    },
};

/// The longest answer the daemon reads from the inspector part (frames of up to 127
/// addresses, each with its inlined functions).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The longest request the inspector part reads (the mappings of a process with many
/// libraries).
const MAX_REQUEST_BYTES: usize = 16 << 20;
/// How long the daemon waits for one answer (a large binary's DWARF, parsed at its first
/// symbolization, takes seconds at most).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// From the daemon. `GoBinary` and `AddFile` come with a descriptor.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    GoBinary,
    /// A pinned file, known as `id` on this link from now on.
    AddFile {
        id: u64,
    },
    /// Files no process pins any more.
    ForgetFiles {
        ids: Vec<u64>,
    },
    Symbolize {
        pid: u32,
        mappings: Vec<WireMapping>,
        addresses: Vec<u64>,
        kind: AddressKind,
    },
    Rule {
        file: u64,
        offset: u64,
        role: AddressRole,
    },
}

/// A mapping of a pinned process, its file by id.
#[derive(Debug, Serialize, Deserialize)]
struct WireMapping {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
    deleted: bool,
    file: Option<u64>,
}

/// From the inspector part.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Hello {
        pid: u32,
        privileges: PrivilegesStatus,
        seccomp: bool,
    },
    GoBinary(Result<GoHttpBinary, String>),
    Added(Result<(), String>),
    Forgotten,
    Symbolized {
        resolved: Vec<Resolved>,
        modules: usize,
        module_bytes: u64,
        errors: u64,
        last_error: Option<String>,
    },
    Rule(FrameRule),
}

/// Who parses the files the daemon opens.
#[derive(Clone, Debug, Default)]
pub enum Inspection {
    /// The daemon itself (`--privsep off`).
    #[default]
    Here,
    /// The inspector part.
    Apart(Arc<Inspector>),
}

impl Inspection {
    /// What probing the Go binary open as `file` needs, or why it cannot be probed.
    pub fn go_binary(&self, file: &File) -> Result<GoHttpBinary, String> {
        match self {
            Inspection::Here => inspect_go_binary(file),
            Inspection::Apart(inspector) => inspector.go_binary(file),
        }
    }

    /// The inspector part as `tracer status` shows it, when there is one.
    pub fn status(&self) -> Option<PartStatus> {
        match self {
            Inspection::Here => None,
            Inspection::Apart(inspector) => Some(inspector.status()),
        }
    }

    /// The launcher of inspector parts as `tracer status` shows it, when there is one.
    pub fn launcher_status(&self) -> Option<PartStatus> {
        match self {
            Inspection::Here => None,
            Inspection::Apart(inspector) => inspector.launcher_status(),
        }
    }

    /// The symbolizer's resolver, when the inspector part resolves.
    pub fn resolver(&self) -> Option<Box<dyn Resolve + Send>> {
        match self {
            Inspection::Here => None,
            Inspection::Apart(inspector) => Some(Box::new(RemoteResolver {
                inspector: Arc::clone(inspector),
                modules: (0, 0),
                errors: 0,
                last_error: None,
            })),
        }
    }

    /// The unwinder's rules, when the inspector part reads them.
    pub fn rules(&self) -> Option<Box<dyn RuleSource>> {
        match self {
            Inspection::Here => None,
            Inspection::Apart(inspector) => Some(Box::new(RemoteRules(Arc::clone(inspector)))),
        }
    }
}

/// [`gohttp::inspect_open_file`], a parser panic answered as an error.
fn inspect_go_binary(file: &File) -> Result<GoHttpBinary, String> {
    std::panic::catch_unwind(|| gohttp::inspect_open_file(file).map_err(|e| e.to_string()))
        .unwrap_or_else(|_| Err("its parser panicked (a bug: please report it)".into()))
}

/// One of the daemon's links to the inspector part, and the files it handed over on it.
#[derive(Debug)]
struct Link {
    stream: UnixStream,
    /// By the pinned file's address: the file, and its id on this link.
    files: HashMap<usize, (Weak<PinnedFile>, u64)>,
    next_id: u64,
    /// Which part it leads to (each new part has the next number).
    generation: u64,
    /// The file being handed over, while it is: the part parses its headers as it takes it.
    adding: Option<Culprit>,
}

impl Link {
    fn new(stream: UnixStream, generation: u64) -> Self {
        Self { stream, files: HashMap::new(), next_id: 0, generation, adding: None }
    }

    fn exchange(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> io::Result<Answer> {
        fds::send(&mut self.stream, request, fd)?;
        match fds::receive::<Answer>(&mut self.stream, MAX_ANSWER_BYTES)? {
            Some((answer, _)) => Ok(answer),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it closed its link")),
        }
    }

    /// The ids of `files` on this link, handing over those it does not have yet (and first
    /// forgetting those no process pins any more, whose addresses a new file may reuse).
    fn ids(&mut self, files: &[&Arc<PinnedFile>]) -> io::Result<Vec<u64>> {
        self.forget_dead()?;
        let mut ids = Vec::with_capacity(files.len());
        for file in files {
            let key = Arc::as_ptr(file) as usize;
            if let Some((_, id)) = self.files.get(&key) {
                ids.push(*id);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.adding = Some(Culprit::pinned(file, None));
            match self.exchange(&Request::AddFile { id }, Some(file.file().as_fd()))? {
                Answer::Added(Ok(())) => {}
                Answer::Added(Err(why)) => log::debug!("the inspector part refused a file: {why}"),
                other => return Err(out_of_turn(&other)),
            }
            self.adding = None;
            self.files.insert(key, (Arc::downgrade(file), id));
            ids.push(id);
        }
        Ok(ids)
    }

    /// Forgets the files no process pins any more; returns how many.
    fn forget_dead(&mut self) -> io::Result<usize> {
        let mut ids = Vec::new();
        self.files.retain(|_, (file, id)| {
            let live = file.strong_count() > 0;
            if !live {
                ids.push(*id);
            }
            live
        });
        if ids.is_empty() {
            return Ok(0);
        }
        let n = ids.len();
        match self.exchange(&Request::ForgetFiles { ids }, None)? {
            Answer::Forgotten => Ok(n),
            other => Err(out_of_turn(&other)),
        }
    }
}

fn out_of_turn(answer: &Answer) -> io::Error {
    io::Error::other(format!("it answered out of turn ({answer:?})"))
}

/// A file a request has the part parse: quarantined if the part ends on that request.
#[derive(Clone, Debug)]
struct Culprit {
    key: FileKey,
    path: String,
}

impl Culprit {
    fn pinned(file: &PinnedFile, path: Option<&str>) -> Self {
        let path = path.map_or_else(|| fd_target(file.file()), str::to_owned);
        Self { key: file.dev_ino(), path }
    }

    fn open(file: &File) -> Option<Self> {
        let meta = file.metadata().ok()?;
        Some(Self { key: (meta.dev(), meta.ino()), path: fd_target(file) })
    }
}

/// The path the kernel shows for an open file, for messages.
fn fd_target(file: &File) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_or_else(|_| "a file".to_owned(), |p| p.display().to_string())
}

/// Which of the two links.
#[derive(Clone, Copy)]
enum Which {
    Main,
    Unwind,
}

/// The part that runs now, or ran last.
#[derive(Debug)]
struct Current {
    pid: libc::pid_t,
    generation: u64,
    running: bool,
    status: PartStatus,
}

/// The launcher, and how many parts it started lately.
#[derive(Debug)]
struct Launching {
    /// `None` once it failed: no part is started again.
    launcher: Option<Launcher>,
    budget: RestartBudget,
}

/// The daemon's handle on the inspector part: two links, so that the event loop's unwind
/// rules never wait behind a symbolization or a Go binary (the part serves each on a thread
/// of its own). When the part ends, the launcher starts another (within [`RestartBudget`]),
/// and the files it ended on are quarantined. Locks are taken launching, then current, then
/// a link; a link's lock is never held while taking another.
#[derive(Debug)]
pub struct Inspector {
    /// Go binaries and symbolization; `None` while no part runs.
    main: Mutex<Option<Link>>,
    /// Unwind rules, asked from the event loop.
    unwind: Mutex<Option<Link>>,
    current: Mutex<Current>,
    launching: Mutex<Launching>,
    quarantine: Mutex<Quarantine>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inspector {
    fn go_binary(&self, file: &File) -> Result<GoHttpBinary, String> {
        let culprits: Vec<Culprit> = Culprit::open(file).into_iter().collect();
        self.on(Which::Main, &culprits, |link| {
            match link.exchange(&Request::GoBinary, Some(file.as_fd()))? {
                Answer::GoBinary(answer) => Ok(answer),
                other => Err(out_of_turn(&other)),
            }
        })?
    }

    fn link(&self, which: Which) -> &Mutex<Option<Link>> {
        match which {
            Which::Main => &self.main,
            Which::Unwind => &self.unwind,
        }
    }

    /// Runs `exchange` on `which` link. A failure ends the part (killed, as it may hang): the
    /// `culprits` (and a file being handed over) are quarantined unless the part was gone
    /// before the request (then it is asked once more, of the new part), and a new part is
    /// started. A quarantined culprit is refused without asking.
    fn on<T>(
        &self,
        which: Which,
        culprits: &[Culprit],
        mut exchange: impl FnMut(&mut Link) -> io::Result<T>,
    ) -> Result<T, String> {
        let keys: Vec<FileKey> = culprits.iter().map(|c| c.key).collect();
        if let Some(path) = lock(&self.quarantine).first_of(&keys) {
            return Err(format!(
                "an inspector part ended while it parsed {path}: it is not parsed again"
            ));
        }
        for attempt in 0..2 {
            let mut guard = lock(self.link(which));
            if guard.is_none() {
                drop(guard);
                self.start_if_due();
                guard = lock(self.link(which));
            }
            let Some(link) = guard.as_mut() else {
                return Err(self.refusal());
            };
            let generation = link.generation;
            let result = exchange(link);
            let adding = link.adding.take();
            let e = match result {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            *guard = None;
            drop(guard);
            // A part already gone fails the request's first write: nothing was parsed. Of a
            // part that ended during requests on both links, both are blamed: which one it
            // crashed on cannot be told.
            let gone_before =
                matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset);
            let why = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("it did not answer within {} s", ANSWER_TIMEOUT.as_secs())
                }
                io::ErrorKind::UnexpectedEof => "it closed its link".to_owned(),
                _ if gone_before => "it was gone".to_owned(),
                _ => format!("its link failed ({e})"),
            };
            let blamed: Vec<Culprit> = match adding {
                _ if gone_before => Vec::new(),
                Some(file) => vec![file],
                None => culprits.to_vec(),
            };
            let why = match blamed.first() {
                Some(file) => format!("{why} while parsing {}", file.path),
                None => why,
            };
            let mut quarantine = lock(&self.quarantine);
            for file in blamed {
                log::warn!(
                    "quarantined {}: the inspector part ended while parsing it; it is not \
                     parsed again",
                    file.path
                );
                quarantine.add(file.key, file.path);
            }
            drop(quarantine);
            self.replace(generation, why.clone());
            if !(gone_before && attempt == 0) {
                return Err(format!("the part that inspects binaries ended: {why}"));
            }
        }
        Err(self.refusal())
    }

    /// Ends part `generation` (unless that was done already) and starts another if the
    /// budget allows.
    fn replace(&self, generation: u64, why: String) {
        let mut launching = lock(&self.launching);
        let mut current = lock(&self.current);
        if current.generation != generation || !current.running {
            return;
        }
        current.running = false;
        for link in [&self.main, &self.unwind] {
            if let Ok(mut link) = link.try_lock() {
                *link = None;
            }
        }
        // Killed as it may hang (CAP_KILL: it runs as another uid); the launcher reaps it.
        // SAFETY: signalling the part, a process the daemon started.
        unsafe { libc::kill(current.pid, libc::SIGKILL) };
        let pid = current.pid;
        self.start(&mut launching, &mut current, Some(pid), Some(why));
    }

    /// Starts a part when none runs and the budget allows one again.
    fn start_if_due(&self) {
        let mut launching = lock(&self.launching);
        let mut current = lock(&self.current);
        if !current.running {
            self.start(&mut launching, &mut current, None, None);
        }
    }

    /// Has the launcher reap `ended` (a part just killed, which ended because `why`) and start
    /// a new part if the budget allows; installs its links.
    fn start(
        &self,
        launching: &mut Launching,
        current: &mut Current,
        ended: Option<libc::pid_t>,
        why: Option<String>,
    ) {
        let allowed = launching.launcher.is_some()
            && (ended.is_some() || !current.running)
            && launching.budget.take(Instant::now()).is_ok();
        let Some(launcher) = launching.launcher.as_mut() else {
            if let Some(why) = why {
                current.status.ended = Some(why);
            }
            return;
        };
        if ended.is_none() && !allowed {
            return;
        }
        let Relaunched { reaped, started } = match launcher.relaunch(ended, allowed) {
            Ok(answer) => answer,
            Err(e) => {
                launching.launcher = None;
                let failed = format!("the launcher of inspector parts failed ({e})");
                log::error!("{failed}: Go binaries are not inspected, stacks not symbolized");
                current.status.ended =
                    Some(why.map_or(failed.clone(), |w| format!("{w}; {failed}")));
                return;
            }
        };
        if let Some(why) = why {
            let end = reaped.map_or(why.clone(), |how| format!("{why}; it {how}"));
            log::error!("the part that inspects binaries ended: {end}");
            current.status.last_end = Some(end.clone());
            current.status.ended = Some(end);
        }
        if !allowed {
            let end = current.status.ended.take().unwrap_or_default();
            current.status.ended = Some(format!(
                "{end}; not restarted while {MAX_RESTARTS} parts have been started within an hour"
            ));
            log::error!(
                "the part that inspects binaries is not restarted while {MAX_RESTARTS} have been \
                 started within an hour: Go binaries are not inspected, stacks not symbolized"
            );
            return;
        }
        let started = match started {
            Some(Ok(started)) => started,
            Some(Err(e)) => {
                current.status.ended = Some(format!("no new part could be forked ({e})"));
                return;
            }
            None => return,
        };
        let generation = current.generation + 1;
        // Reaped with the next relaunch, whatever happens now.
        (current.pid, current.generation) = (started.pid, generation);
        match greet(&started) {
            Ok(status) => {
                let restarts = current.status.restarts + 1;
                let last_end = current.status.last_end.take();
                current.status = PartStatus { restarts, last_end, ..status };
                current.running = true;
                log::info!("a new part inspects binaries: pid {}", started.pid);
                *lock(&self.main) = Some(Link::new(started.main, generation));
                *lock(&self.unwind) = Some(Link::new(started.unwind, generation));
            }
            Err(e) => {
                // SAFETY: signalling the part just started.
                unsafe { libc::kill(started.pid, libc::SIGKILL) };
                current.status.ended = Some(format!("a new part did not start ({e})"));
            }
        }
    }

    /// Why inspections are refused now.
    fn refusal(&self) -> String {
        let current = lock(&self.current);
        format!(
            "the part that inspects binaries ended ({})",
            current.status.ended.as_deref().unwrap_or("unknown why")
        )
    }

    fn status(&self) -> PartStatus {
        let mut status = lock(&self.current).status.clone();
        let quarantine = lock(&self.quarantine);
        status.quarantined = quarantine.len() as u64;
        status.quarantined_files = quarantine.named();
        status
    }

    fn launcher_status(&self) -> Option<PartStatus> {
        lock(&self.launching).launcher.as_ref().map(Launcher::status)
    }
}

/// Waits for a new part's greeting; sets both links' timeouts.
fn greet(started: &Started) -> io::Result<PartStatus> {
    started.main.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    started.unwind.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut main = started.main.try_clone()?;
    match fds::receive::<Answer>(&mut main, MAX_ANSWER_BYTES)? {
        Some((Answer::Hello { pid, privileges, seccomp }, _)) => {
            Ok(PartStatus { pid, privileges, seccomp, ..PartStatus::default() })
        }
        Some((other, _)) => Err(out_of_turn(&other)),
        None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it closed its link")),
    }
}

/// The symbolizer's thread resolving through the inspector part.
struct RemoteResolver {
    inspector: Arc<Inspector>,
    modules: (usize, u64),
    errors: u64,
    last_error: Option<String>,
}

impl Resolve for RemoteResolver {
    fn symbolize(
        &mut self,
        process: &PinnedProcess,
        addresses: &[u64],
        kind: AddressKind,
    ) -> Vec<Resolved> {
        let files: Vec<&Arc<PinnedFile>> = process.files().collect();
        // The files the part parses for these addresses.
        let mut culprits: Vec<Culprit> = Vec::new();
        for &address in addresses {
            let Some(mapping) = process.mapping_for(kind.lookup(address)) else { continue };
            let Some(file) = &mapping.file else { continue };
            if culprits.iter().all(|c| c.key != file.dev_ino()) {
                culprits.push(Culprit::pinned(file, Some(&mapping.path)));
            }
        }
        let answer = self.inspector.on(Which::Main, &culprits, |link| {
            let ids = link.ids(&files)?;
            let id_of = |file: &Arc<PinnedFile>| {
                files.iter().position(|f| Arc::ptr_eq(f, file)).map(|i| ids[i])
            };
            let mappings = process
                .mappings()
                .iter()
                .map(|m| WireMapping {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    path: m.path.clone(),
                    deleted: m.deleted,
                    file: m.file.as_ref().and_then(id_of),
                })
                .collect();
            let request = Request::Symbolize {
                pid: process.pid(),
                mappings,
                addresses: addresses.to_vec(),
                kind,
            };
            match link.exchange(&request, None)? {
                answer @ Answer::Symbolized { .. } if answer_fits(&answer, addresses.len()) => {
                    Ok(answer)
                }
                other => {
                    Err(io::Error::other(format!("its answer did not fit the request ({other:?})")))
                }
            }
        });
        match answer {
            Ok(Answer::Symbolized { resolved, modules, module_bytes, errors, last_error }) => {
                self.modules = (modules, module_bytes);
                self.errors = errors;
                self.last_error = last_error;
                resolved
            }
            Ok(_) => unresolved(process, addresses, kind),
            Err(why) => {
                self.last_error = Some(why);
                unresolved(process, addresses, kind)
            }
        }
    }

    fn sweep(&mut self) -> usize {
        self.inspector.on(Which::Main, &[], Link::forget_dead).unwrap_or(0)
    }

    fn loaded_modules(&self) -> (usize, u64) {
        self.modules
    }

    fn errors(&self) -> (u64, Option<&str>) {
        (self.errors, self.last_error.as_deref())
    }
}

fn answer_fits(answer: &Answer, addresses: usize) -> bool {
    matches!(answer, Answer::Symbolized { resolved, .. } if resolved.len() == addresses)
}

/// `module+0xoffset` for each address: what is shown when the inspector part cannot answer.
fn unresolved(process: &PinnedProcess, addresses: &[u64], kind: AddressKind) -> Vec<Resolved> {
    addresses
        .iter()
        .map(|&a| {
            Resolved::placeholder(a, ResolveState::NoSymbol, process.mapping_for(kind.lookup(a)))
        })
        .collect()
}

/// The unwinder's rules, read by the inspector part.
struct RemoteRules(Arc<Inspector>);

impl RuleSource for RemoteRules {
    fn rule(&self, file: &Arc<PinnedFile>, offset: u64, role: AddressRole) -> FrameRule {
        let culprits = [Culprit::pinned(file, None)];
        let answer = self.0.on(Which::Unwind, &culprits, |link| {
            let ids = link.ids(&[file])?;
            match link.exchange(&Request::Rule { file: ids[0], offset, role }, None)? {
                Answer::Rule(rule) => Ok(rule),
                other => Err(out_of_turn(&other)),
            }
        });
        answer.unwrap_or(FrameRule::Unknown)
    }
}

/// Test-only fault injection (`tracer run --fault-inspector-crash-marker`): the part aborts
/// on a Go binary that ends with [`FAULT_MARKER`], as it would on a file that crashes a parser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub crash_on_marker: bool,
}

/// What a file ends with to crash the part under [`Fault::crash_on_marker`].
pub const FAULT_MARKER: &[u8] = b"tracer fault injection: crash the inspector part";

/// Forks the launcher of inspector parts off (as root with what it takes to start a part), and
/// has it start the first part: as `user`, under its seccomp allow-list when `seccomp` is on.
/// Must run before any thread starts, like [`super::split`]. The daemon gets its handle once the
/// part said it dropped every privilege.
pub fn spawn(user: &ClientsUser, seccomp: Switch, fault: Fault) -> anyhow::Result<Inspector> {
    let mut launcher = Launcher::spawn(user, seccomp, fault)?;
    let started = match launcher.relaunch(None, true)?.started {
        Some(Ok(started)) => started,
        Some(Err(e)) => anyhow::bail!("the part that inspects binaries could not start: {e}"),
        None => anyhow::bail!("the launcher of inspector parts started no part"),
    };
    let status = match greet(&started) {
        Ok(status) => status,
        Err(e) => {
            // SAFETY: signalling the part just started.
            unsafe { libc::kill(started.pid, libc::SIGKILL) };
            let how = launcher.relaunch(Some(started.pid), false).ok().and_then(|r| r.reaped);
            anyhow::bail!(
                "the part that inspects binaries did not start ({e}): it {}",
                how.unwrap_or_else(|| "could not be waited for".into())
            );
        }
    };
    Ok(Inspector {
        main: Mutex::new(Some(Link::new(started.main, 0))),
        unwind: Mutex::new(Some(Link::new(started.unwind, 0))),
        current: Mutex::new(Current { pid: started.pid, generation: 0, running: true, status }),
        launching: Mutex::new(Launching {
            launcher: Some(launcher),
            budget: RestartBudget::default(),
        }),
        quarantine: Mutex::new(Quarantine::default()),
    })
}

/// The inspector part from the fork on: closes every descriptor it inherited but its links
/// and the standard ones, drops every privilege, then answers on each link, on a thread each,
/// until the daemon closes them.
/// The inspector part, in the launcher's child: serves until the daemon closes its links, then
/// exits.
pub(super) fn run_part(
    main: UnixStream,
    unwind: UnixStream,
    launcher: libc::pid_t,
    user: &ClientsUser,
    seccomp: Switch,
    fault: Fault,
) -> ! {
    let code = match serve(main, unwind, launcher, user, seccomp, fault) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tracer: the part that inspects binaries: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(
    mut main: UnixStream,
    unwind: UnixStream,
    monitor: libc::pid_t,
    user: &ClientsUser,
    seccomp: Switch,
    fault: Fault,
) -> Result<(), Error> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    close_inherited(&[&main, &unwind]);
    // Set by `tracer run` at start already; this part needs it for its filter whoever forks it.
    crate::privileges::forbid_new_privileges()
        .map_err(|source| Error::Os { what: "setting no_new_privs", source })?;
    let privileges = super::drop_privileges(user)?;
    // SAFETY: prctl with these options reads only its integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != monitor {
        return Ok(());
    }
    // A parser's panic is answered as an error; printing it could take calls the filter
    // refuses (a backtrace reads files).
    std::panic::set_hook(Box::new(|_| {}));
    let filtered = seccomp == Switch::On;
    if filtered {
        seccomp::install(&seccomp::file_reading())
            .map_err(|source| Error::Os { what: "installing the seccomp filter", source })?;
    }
    let os = |what| move |source| Error::Os { what, source };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    fds::send(&mut main, &Answer::Hello { pid, privileges, seccomp: filtered }, None)
        .map_err(os("greeting the daemon"))?;
    let rules = std::thread::Builder::new()
        .name("unwind-rules".into())
        .spawn(move || answer_all(unwind, fault))
        .map_err(os("starting its second thread"))?;
    answer_all(main, fault).map_err(os("answering"))?;
    let _ = rules.join();
    Ok(())
}

/// What one link of the inspector part holds: the files handed over on it, by id, and what
/// was parsed of them.
#[derive(Default)]
struct Served {
    files: HashMap<u64, Arc<PinnedFile>>,
    cfi: HashMap<u64, Option<ModuleCfi>>,
    /// Made at the first symbolization (blazesym's is not `Send`: it stays on this thread).
    resolver: Option<Resolver>,
}

/// Answers each request on `link` in turn until it closes.
fn answer_all(mut link: UnixStream, fault: Fault) -> io::Result<()> {
    let mut served = Served::default();
    while let Some((request, fd)) = fds::receive::<Request>(&mut link, MAX_REQUEST_BYTES)? {
        if fault.crash_on_marker && matches!(request, Request::GoBinary) && ends_with_marker(&fd) {
            // A parser's memory error: SIGSEGV, without a system call the filter would refuse.
            // SAFETY: none; this is the fault injected on purpose (a test-only flag).
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        }
        let answer = served.answer(request, fd.map(File::from));
        fds::send(&mut link, &answer, None)?;
    }
    Ok(())
}

/// Whether the file ends with [`FAULT_MARKER`].
fn ends_with_marker(fd: &Option<std::os::fd::OwnedFd>) -> bool {
    use std::os::unix::fs::FileExt;
    let Some(fd) = fd else { return false };
    let Ok(file) = fd.try_clone().map(File::from) else { return false };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut tail = vec![0u8; FAULT_MARKER.len()];
    let at = size.saturating_sub(FAULT_MARKER.len() as u64);
    size >= at + FAULT_MARKER.len() as u64
        && file.read_at(&mut tail, at).is_ok()
        && tail == FAULT_MARKER
}

impl Served {
    fn answer(&mut self, request: Request, file: Option<File>) -> Answer {
        match request {
            Request::GoBinary => Answer::GoBinary(match &file {
                Some(file) => inspect_go_binary(file),
                None => Err("no file came with it".into()),
            }),
            Request::AddFile { id } => Answer::Added(match file {
                Some(file) => PinnedFile::from_file(file, true)
                    .map(|pinned| {
                        self.files.insert(id, Arc::new(pinned));
                    })
                    .map_err(|e| e.to_string()),
                None => Err("no file came with it".into()),
            }),
            Request::ForgetFiles { ids } => {
                for id in ids {
                    self.files.remove(&id);
                    self.cfi.remove(&id);
                }
                if let Some(resolver) = &mut self.resolver {
                    resolver.sweep();
                }
                Answer::Forgotten
            }
            Request::Symbolize { pid, mappings, addresses, kind } => {
                self.symbolize(pid, mappings, &addresses, kind)
            }
            Request::Rule { file, offset, role } => Answer::Rule(self.rule(file, offset, role)),
        }
    }

    fn symbolize(
        &mut self,
        pid: u32,
        mappings: Vec<WireMapping>,
        addresses: &[u64],
        kind: AddressKind,
    ) -> Answer {
        let mappings = mappings
            .into_iter()
            .map(|m| Mapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                path: m.path,
                deleted: m.deleted,
                file: m.file.and_then(|id| self.files.get(&id).cloned()),
            })
            .collect();
        let process = PinnedProcess::from_mappings(pid, mappings);
        let resolver = self
            .resolver
            .get_or_insert_with(|| Resolver::with_fallback(crate::stacks::go_fallback()));
        let resolved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            resolver.symbolize(&process, addresses, kind)
        }));
        let resolved = match resolved {
            Ok(resolved) => resolved,
            // The resolver's state may be half-updated: start afresh.
            Err(_) => {
                self.resolver = None;
                unresolved(&process, addresses, kind)
            }
        };
        let (modules, module_bytes) =
            self.resolver.as_ref().map_or((0, 0), Resolver::loaded_modules);
        let (errors, last_error) = self.resolver.as_ref().map_or((0, None), |r| {
            let (n, last) = r.errors();
            (n, last.map(str::to_owned))
        });
        Answer::Symbolized { resolved, modules, module_bytes, errors, last_error }
    }

    fn rule(&mut self, id: u64, offset: u64, role: AddressRole) -> FrameRule {
        let Some(file) = self.files.get(&id) else { return FrameRule::Unknown };
        let cfi = self.cfi.entry(id).or_insert_with(|| {
            std::panic::catch_unwind(|| {
                ModuleCfi::from_elf(&object::ReadCache::new(file.file())).ok()
            })
            .ok()
            .flatten()
        });
        let Some(cfi) = cfi.as_ref() else { return FrameRule::Unknown };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfi.rule_for_offset(offset, role)))
            .unwrap_or(FrameRule::Unknown)
    }
}

/// Closes every descriptor above stderr but `keep`: the listeners and the client part's link,
/// which the daemon held when it forked, are not this part's to hold.
pub(super) fn close_inherited(keep: &[&UnixStream]) {
    use std::os::fd::AsRawFd;
    let keep: Vec<i32> = keep.iter().map(|s| s.as_raw_fd()).collect();
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: closing a descriptor nothing in this process uses after the fork (the
        // directory's own descriptor is closed already, and EBADF is harmless).
        unsafe { libc::close(fd) };
    }
}
