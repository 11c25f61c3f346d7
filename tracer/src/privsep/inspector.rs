//! The inspector part (docs/security.md, "Three processes"): a process forked off at start,
//! like the client part, that parses other processes' binaries for the daemon, so that the
//! privileged daemon only opens them. It runs as `--clients-user` with no capabilities, under
//! a seccomp allow-list that lets it read the descriptors it is handed and nothing else (no
//! `open`): the daemon opens each file (it has the privileges to) and passes the descriptor
//! with the request ([`fds`](super::fds)); the answer is a plain value the daemon checks as it
//! reads it.
//!
//! Today it inspects the Go binaries the request probes attach to (`gohttp`). One request at a
//! time, answered in order; a request that takes longer than [`ANSWER_TIMEOUT`] (a parser
//! caught in a loop) ends the part, and so does one it crashes on (a parser panic is caught and
//! answered as an error instead). Once it has ended, each inspection is refused with the reason,
//! and `tracer status` shows it.
use std::{
    fs::File,
    io,
    os::{fd::AsFd, unix::net::UnixStream},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{ClientsUser, Error, Part, Privsep, fds, seccomp};
use crate::{
    api::answers::{PartStatus, PrivilegesStatus},
    gohttp::{self, GoHttpBinary},
};

/// The longest answer the daemon reads from the inspector part.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// The longest request the inspector part reads.
const MAX_REQUEST_BYTES: usize = 64 << 10;
/// How long the daemon waits for one answer (the largest Go binary takes well under a second).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// From the daemon, each with the descriptor of the file to read.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    GoBinary,
}

/// From the inspector part.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Hello { pid: u32, privileges: PrivilegesStatus, seccomp: bool },
    GoBinary(Result<GoHttpBinary, String>),
}

/// Who parses the binaries the daemon opens.
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
}

/// [`gohttp::inspect_open_file`], a parser panic answered as an error.
fn inspect_go_binary(file: &File) -> Result<GoHttpBinary, String> {
    std::panic::catch_unwind(|| gohttp::inspect_open_file(file).map_err(|e| e.to_string()))
        .unwrap_or_else(|_| Err("its parser panicked (a bug: please report it)".into()))
}

/// The daemon's handle on the inspector part.
#[derive(Debug)]
pub struct Inspector {
    /// The link, while the part runs; requests take turns on it.
    link: Mutex<Option<UnixStream>>,
    status: Mutex<PartStatus>,
    pid: libc::pid_t,
}

impl Inspector {
    fn go_binary(&self, file: &File) -> Result<GoHttpBinary, String> {
        match self.ask(&Request::GoBinary, file)? {
            Answer::GoBinary(answer) => answer,
            other => Err(self.end(format!("it answered out of turn ({other:?})"))),
        }
    }

    fn ask(&self, request: &Request, file: &File) -> Result<Answer, String> {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(stream) = link.as_mut() else {
            return Err(self.ended());
        };
        let asked = fds::send(stream, request, Some(file.as_fd()))
            .and_then(|()| fds::receive::<Answer>(stream, MAX_ANSWER_BYTES));
        match asked {
            Ok(Some((answer, _))) => Ok(answer),
            Ok(None) => {
                *link = None;
                Err(self.end(format!("it {}", self.wait())))
            }
            Err(e) => {
                *link = None;
                let why = if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
                {
                    format!("it did not answer within {} s", ANSWER_TIMEOUT.as_secs())
                } else {
                    format!("its link failed ({e})")
                };
                // SAFETY: signalling our own child (CAP_KILL: it runs as another uid).
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                Err(self.end(format!("{why}; it was killed, and {}", self.wait())))
            }
        }
    }

    /// How the part ended, once it has (waiting for it at most a second).
    fn wait(&self) -> String {
        for _ in 0..50 {
            let mut status = 0;
            // SAFETY: waitpid on our own child, writing its status into `status`.
            if unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } == self.pid {
                return super::describe(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        "had not exited a second after its link closed".to_owned()
    }

    /// Records why the part ended; returns the refusal every inspection gets from now on.
    fn end(&self, why: String) -> String {
        log::error!("the part that inspects binaries ended: {why}; Go binaries are not inspected");
        self.status.lock().unwrap_or_else(PoisonError::into_inner).ended = Some(why);
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

/// Forks the inspector part off, as `user`, under its seccomp allow-list when `seccomp` is on.
/// Must run before any thread starts, like [`super::split`]. The daemon gets its handle once the
/// part said it dropped every privilege; the part itself never returns.
pub fn spawn(user: &ClientsUser, seccomp: Privsep) -> anyhow::Result<Inspector> {
    match super::split()? {
        Part::Child { link, monitor } => {
            let code = match serve(link, monitor, user, seccomp) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tracer: the part that inspects binaries: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
        Part::Monitor { mut link, child } => {
            link.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            let hello = fds::receive::<Answer>(&mut link, MAX_ANSWER_BYTES);
            let Ok(Some((Answer::Hello { pid, privileges, seccomp }, _))) = hello else {
                let how = super::reap(child, Duration::from_secs(2));
                anyhow::bail!("the part that inspects binaries did not start: it {how}");
            };
            let status = PartStatus { pid, privileges, seccomp, ended: None };
            Ok(Inspector { link: Mutex::new(Some(link)), status: Mutex::new(status), pid: child })
        }
    }
}

/// The inspector part from the fork on: closes every descriptor it inherited but its link
/// and the standard ones, drops every privilege, then answers until the link closes.
fn serve(
    mut link: UnixStream,
    monitor: libc::pid_t,
    user: &ClientsUser,
    seccomp: Privsep,
) -> Result<(), Error> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    close_inherited(&link);
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
    let filtered = seccomp == Privsep::On;
    if filtered {
        seccomp::install(seccomp::FILE_READING)
            .map_err(|source| Error::Os { what: "installing the seccomp filter", source })?;
    }
    let os = |what| move |source| Error::Os { what, source };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    fds::send(&mut link, &Answer::Hello { pid, privileges, seccomp: filtered }, None)
        .map_err(os("greeting the daemon"))?;
    while let Some((request, fd)) =
        fds::receive::<Request>(&mut link, MAX_REQUEST_BYTES).map_err(os("reading a request"))?
    {
        let answer = match (request, fd) {
            (Request::GoBinary, Some(fd)) => Answer::GoBinary(inspect_go_binary(&File::from(fd))),
            (Request::GoBinary, None) => Answer::GoBinary(Err("no file came with it".into())),
        };
        fds::send(&mut link, &answer, None).map_err(os("answering"))?;
    }
    Ok(())
}

/// Closes every descriptor above stderr but `keep`: the listeners and the client part's link,
/// which the daemon held when it forked, are not this part's to hold.
fn close_inherited(keep: &UnixStream) {
    use std::os::fd::AsRawFd;
    let keep = keep.as_raw_fd();
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        // SAFETY: closing a descriptor nothing in this process uses after the fork (the
        // directory's own descriptor is closed already, and EBADF is harmless).
        unsafe { libc::close(fd) };
    }
}
