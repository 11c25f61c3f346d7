//! The launcher of inspector parts (docs/security.md, "A third process"): a process forked off
//! at start, while the daemon still has one thread, whose only work is to fork a new inspector
//! part when the daemon asks, so that one that ended (a parser crashed, hung, or was killed)
//! can be replaced although the daemon itself can no longer fork safely (it runs threads) nor
//! become another user (it keeps none of the capabilities that takes).
//!
//! It keeps CAP_SETUID, CAP_SETGID and CAP_SETPCAP (what a new part takes to drop to
//! `--clients-user` with an empty bounding set) and nothing else, runs as root, and reads
//! nothing but the daemon's fixed requests on its link. Each part it forks is its child: it
//! reaps them and says how each ended. It dies with the daemon (parent-death signal), and its
//! parts die with it.
use std::{
    io,
    os::{fd::AsFd, unix::net::UnixStream},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{ClientsUser, Error, Part, fds, inspector};
use crate::{
    api::answers::{PartStatus, PrivilegesStatus},
    names::Switch,
};

/// What the launcher keeps: what a new part takes to become `--clients-user` and empty its
/// bounding set (CAP_SETGID for setgroups and setresgid, CAP_SETUID, CAP_SETPCAP).
const LAUNCHER_CAPABILITIES: u64 = 1 << 6 | 1 << 7 | 1 << 8;

const MAX_FRAME_BYTES: usize = 64 << 10;

/// From the daemon.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// Reap this part (the daemon killed it, or it ended) and say how it ended.
    reap: Option<i32>,
    /// Then fork a new one.
    start: bool,
}

/// From the launcher.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Hello {
        pid: u32,
        privileges: PrivilegesStatus,
    },
    /// How the reaped part ended, and the new part's pid (its two links follow, one frame
    /// each, each with its descriptor).
    Done {
        reaped: Option<String>,
        started: Option<Result<i32, String>>,
    },
    Link,
}

/// The daemon's handle on the launcher.
#[derive(Debug)]
pub struct Launcher {
    link: UnixStream,
    status: PartStatus,
}

/// What a relaunch did: how the reaped part ended, and the part started (or why none could be).
pub struct Relaunched {
    pub reaped: Option<String>,
    pub started: Option<Result<Started, String>>,
}

/// A part the launcher started: its pid, and the daemon's ends of its two links.
pub struct Started {
    pub pid: libc::pid_t,
    pub main: UnixStream,
    pub unwind: UnixStream,
}

impl Launcher {
    /// Forks the launcher off. Must run before any thread starts, like [`super::split`].
    pub fn spawn(
        user: &ClientsUser,
        seccomp: Switch,
        fault: inspector::Fault,
    ) -> anyhow::Result<Launcher> {
        match super::split()? {
            Part::Child { link, monitor } => {
                let code = match serve(link, monitor, user, seccomp, fault) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("tracer: the launcher of inspector parts: {e}");
                        1
                    }
                };
                std::process::exit(code)
            }
            Part::Monitor { mut link, child } => {
                link.set_read_timeout(Some(inspector::ANSWER_TIMEOUT))?;
                let hello = fds::receive::<Answer>(&mut link, MAX_FRAME_BYTES);
                let Ok(Some((Answer::Hello { pid, privileges }, _))) = hello else {
                    let how = super::reap(child, Duration::from_secs(2));
                    anyhow::bail!("the launcher of inspector parts did not start: it {how}");
                };
                let status = PartStatus { pid, privileges, ..PartStatus::default() };
                Ok(Launcher { link, status })
            }
        }
    }

    /// Reaps `previous` (which must be dead or killed already), then starts a new part when
    /// `start`; returns how `previous` ended and the new part.
    pub fn relaunch(
        &mut self,
        previous: Option<libc::pid_t>,
        start: bool,
    ) -> io::Result<Relaunched> {
        fds::send(&mut self.link, &Request { reap: previous, start }, None)?;
        let (reaped, started) = match self.receive()? {
            (Answer::Done { reaped, started }, _) => (reaped, started),
            (other, _) => {
                return Err(io::Error::other(format!("answered out of turn ({other:?})")));
            }
        };
        let started = match started {
            None => None,
            Some(Err(why)) => Some(Err(why)),
            Some(Ok(pid)) => {
                let mut end = || match self.receive()? {
                    (Answer::Link, Some(fd)) => Ok(UnixStream::from(fd)),
                    _ => Err(io::Error::other("a part's link did not come")),
                };
                let (main, unwind) = (end()?, end()?);
                Some(Ok(Started { pid, main, unwind }))
            }
        };
        Ok(Relaunched { reaped, started })
    }

    fn receive(&mut self) -> io::Result<(Answer, Option<std::os::fd::OwnedFd>)> {
        fds::receive::<Answer>(&mut self.link, MAX_FRAME_BYTES)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "it closed its link"))
    }

    pub fn status(&self) -> PartStatus {
        self.status.clone()
    }
}

/// The launcher from the fork on.
fn serve(
    mut link: UnixStream,
    daemon: libc::pid_t,
    user: &ClientsUser,
    seccomp: Switch,
    fault: inspector::Fault,
) -> Result<(), Error> {
    let os = |what| move |source| Error::Os { what, source };
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    inspector::close_inherited(&[&link]);
    crate::privileges::forbid_new_privileges().map_err(os("setting no_new_privs"))?;
    let permitted = crate::privileges::permitted_of_self().map_err(os("reading capabilities"))?;
    crate::privileges::keep_only(LAUNCHER_CAPABILITIES & permitted, permitted)
        .map_err(os("dropping capabilities"))?;
    // SAFETY: prctl with these options reads only its integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != daemon {
        return Ok(());
    }
    let now = crate::privileges::Privileges::of_self().ok_or_else(|| Error::Os {
        what: "reading /proc/self/status",
        source: io::ErrorKind::NotFound.into(),
    })?;
    let privileges = PrivilegesStatus {
        uid: now.effective_uid,
        effective_capabilities: now.names(),
        no_new_privs: now.no_new_privs,
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    fds::send(&mut link, &Answer::Hello { pid, privileges }, None).map_err(os("greeting"))?;
    while let Some((request, _)) =
        fds::receive::<Request>(&mut link, MAX_FRAME_BYTES).map_err(os("reading a request"))?
    {
        let reaped = request.reap.map(|pid| super::reap(pid, Duration::from_secs(5)));
        if !request.start {
            fds::send(&mut link, &Answer::Done { reaped, started: None }, None)
                .map_err(os("answering"))?;
            continue;
        }
        let (unwind_daemon, unwind_part) = UnixStream::pair().map_err(os("socketpair"))?;
        match super::split() {
            Ok(Part::Child { link: main_part, monitor }) => {
                drop(unwind_daemon);
                inspector::run_part(main_part, unwind_part, monitor, user, seccomp, fault)
            }
            Ok(Part::Monitor { link: main_daemon, child }) => {
                drop(unwind_part);
                let done = Answer::Done { reaped, started: Some(Ok(child)) };
                fds::send(&mut link, &done, None).map_err(os("answering"))?;
                for end in [&main_daemon, &unwind_daemon] {
                    fds::send(&mut link, &Answer::Link, Some(end.as_fd()))
                        .map_err(os("handing a link over"))?;
                }
            }
            Err(e) => {
                let done = Answer::Done { reaped, started: Some(Err(e.to_string())) };
                fds::send(&mut link, &done, None).map_err(os("answering"))?;
            }
        }
    }
    Ok(())
}
