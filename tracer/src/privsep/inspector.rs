//! The inspector part (docs/security.md, "A third process"): a process forked off at start,
//! like the client part, that parses other processes' files for the daemon, so that the
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
//! one it crashes on (a parser panic is caught and answered as an error instead). Once it has
//! ended, inspections are refused with the reason, and `tracer status` shows it.
use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::net::UnixStream,
    },
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{ClientsUser, Error, Part, fds, seccomp};
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
}

impl Link {
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
            match self.exchange(&Request::AddFile { id }, Some(file.file().as_fd()))? {
                Answer::Added(Ok(())) => {}
                Answer::Added(Err(why)) => log::debug!("the inspector part refused a file: {why}"),
                other => return Err(out_of_turn(&other)),
            }
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

/// The daemon's handle on the inspector part: two links, so that the event loop's unwind
/// rules never wait behind a symbolization or a Go binary (the part serves each on a thread
/// of its own).
#[derive(Debug)]
pub struct Inspector {
    /// Go binaries and symbolization; `None` once the part ended.
    main: Mutex<Option<Link>>,
    /// Unwind rules, asked from the event loop.
    unwind: Mutex<Option<Link>>,
    status: Mutex<PartStatus>,
    pid: libc::pid_t,
}

impl Inspector {
    fn go_binary(&self, file: &File) -> Result<GoHttpBinary, String> {
        match self.on(&self.main, |link| link.exchange(&Request::GoBinary, Some(file.as_fd())))? {
            Answer::GoBinary(answer) => answer,
            other => Err(self.end(out_of_turn(&other).to_string())),
        }
    }

    /// Runs `exchange` on `which` link; a failure ends the part (killed, as it may hang).
    fn on<T>(
        &self,
        which: &Mutex<Option<Link>>,
        exchange: impl FnOnce(&mut Link) -> io::Result<T>,
    ) -> Result<T, String> {
        let mut guard = which.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(link) = guard.as_mut() else {
            return Err(self.ended());
        };
        match exchange(link) {
            Ok(answer) => Ok(answer),
            Err(e) => {
                *guard = None;
                drop(guard);
                let why = match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        format!("it did not answer within {} s", ANSWER_TIMEOUT.as_secs())
                    }
                    io::ErrorKind::UnexpectedEof => "it closed its link".to_owned(),
                    _ => format!("its link failed ({e})"),
                };
                // Both links go: the part is killed (CAP_KILL: it runs as another uid).
                for other in [&self.main, &self.unwind] {
                    if let Ok(mut other) = other.try_lock() {
                        *other = None;
                    }
                }
                // SAFETY: signalling our own child.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                Err(self
                    .end(format!("{why}; it {}", super::reap(self.pid, Duration::from_secs(1)))))
            }
        }
    }

    /// Records why the part ended (the first reason); returns the refusal every inspection
    /// gets from now on.
    fn end(&self, why: String) -> String {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.ended.is_none() {
            log::error!(
                "the part that inspects binaries ended: {why}; Go binaries are not inspected, \
                 stacks not symbolized"
            );
            status.ended = Some(why);
        }
        drop(status);
        self.ended()
    }

    fn ended(&self) -> String {
        let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        format!(
            "the part that inspects binaries ended ({})",
            status.ended.as_deref().unwrap_or("unknown why")
        )
    }

    fn status(&self) -> PartStatus {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
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
        let answer = self.inspector.on(&self.inspector.main, |link| {
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
            link.exchange(&request, None)
        });
        match answer {
            Ok(Answer::Symbolized { resolved, modules, module_bytes, errors, last_error })
                if resolved.len() == addresses.len() =>
            {
                self.modules = (modules, module_bytes);
                self.errors = errors;
                self.last_error = last_error;
                resolved
            }
            Ok(other) => {
                let why = format!("its answer did not fit the request ({other:?})");
                self.last_error = Some(self.inspector.end(why));
                unresolved(process, addresses, kind)
            }
            Err(why) => {
                self.last_error = Some(why);
                unresolved(process, addresses, kind)
            }
        }
    }

    fn sweep(&mut self) -> usize {
        self.inspector.on(&self.inspector.main, Link::forget_dead).unwrap_or(0)
    }

    fn loaded_modules(&self) -> (usize, u64) {
        self.modules
    }

    fn errors(&self) -> (u64, Option<&str>) {
        (self.errors, self.last_error.as_deref())
    }
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
        let answer = self.0.on(&self.0.unwind, |link| {
            let ids = link.ids(&[file])?;
            link.exchange(&Request::Rule { file: ids[0], offset, role }, None)
        });
        match answer {
            Ok(Answer::Rule(rule)) => rule,
            Ok(other) => {
                self.0.end(out_of_turn(&other).to_string());
                FrameRule::Unknown
            }
            Err(_) => FrameRule::Unknown,
        }
    }
}

/// Forks the inspector part off, as `user`, under its seccomp allow-list when `seccomp` is on.
/// Must run before any thread starts, like [`super::split`]. The daemon gets its handle once the
/// part said it dropped every privilege; the part itself never returns.
pub fn spawn(user: &ClientsUser, seccomp: Switch) -> anyhow::Result<Inspector> {
    // The second link (unwind rules); the first comes with the fork.
    let (unwind_daemon, unwind_part) = UnixStream::pair()?;
    match super::split()? {
        Part::Child { link, monitor } => {
            drop(unwind_daemon);
            let code = match serve(link, unwind_part, monitor, user, seccomp) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tracer: the part that inspects binaries: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
        Part::Monitor { mut link, child } => {
            drop(unwind_part);
            link.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            unwind_daemon.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            let hello = fds::receive::<Answer>(&mut link, MAX_ANSWER_BYTES);
            let Ok(Some((Answer::Hello { pid, privileges, seccomp }, _))) = hello else {
                let how = super::reap(child, Duration::from_secs(2));
                anyhow::bail!("the part that inspects binaries did not start: it {how}");
            };
            let status = PartStatus { pid, privileges, seccomp, ended: None };
            let held =
                |stream| Mutex::new(Some(Link { stream, files: HashMap::new(), next_id: 0 }));
            Ok(Inspector {
                main: held(link),
                unwind: held(unwind_daemon),
                status: Mutex::new(status),
                pid: child,
            })
        }
    }
}

/// The inspector part from the fork on: closes every descriptor it inherited but its links
/// and the standard ones, drops every privilege, then answers on each link, on a thread each,
/// until the daemon closes them.
fn serve(
    mut main: UnixStream,
    unwind: UnixStream,
    monitor: libc::pid_t,
    user: &ClientsUser,
    seccomp: Switch,
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
        .spawn(move || answer_all(unwind))
        .map_err(os("starting its second thread"))?;
    answer_all(main).map_err(os("answering"))?;
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
fn answer_all(mut link: UnixStream) -> io::Result<()> {
    let mut served = Served::default();
    while let Some((request, fd)) = fds::receive::<Request>(&mut link, MAX_REQUEST_BYTES)? {
        let answer = served.answer(request, fd.map(File::from));
        fds::send(&mut link, &answer, None)?;
    }
    Ok(())
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
fn close_inherited(keep: &[&UnixStream]) {
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
