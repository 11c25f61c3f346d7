//! Privilege separation (docs/security.md, "Two processes"): `tracer run` forks, before any
//! thread starts, into
//!
//! - the **monitor**, which keeps the privileges: it loads and reads the BPF objects, scans the
//!   kernel's sockets in every network namespace, reads other processes' /proc entries and
//!   binaries, and attaches uprobes;
//! - the **client part**, which serves the API socket and the metrics endpoint (bound by the
//!   monitor before the fork), so that every byte a client sends (API request lines, HTTP
//!   requests, TLS handshakes, credentials) is parsed by a process with no capabilities and
//!   not running as root. It forwards the requests that parsed to the monitor as typed frames
//!   ([`wire`]) and relays the answers.
//!
//! The parts share no memory after the fork. Either ends the other: the client part exits
//! when the monitor closes the link, and the monitor stops with an error when the client part
//! goes (a supervisor restarts both).
mod clients;
mod fds;
pub mod inspector;
mod launcher;
pub mod monitor;
mod restarts;
mod seccomp;
pub mod wire;

use std::{
    io,
    os::{fd::FromRawFd, unix::net::UnixStream},
    time::{Duration, Instant},
};

use crate::{api::answers::PrivilegesStatus, export::WebConfig, names::Switch};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "privilege separation must fork before any thread starts, but {0} run already (a bug: \
         please report it)"
    )]
    Threads(usize),
    #[error("privilege separation: {what}: {source}")]
    Os { what: &'static str, source: io::Error },
    #[error(
        "--clients-user {0}: no such user; name an existing unprivileged user (or a numeric \
         uid, with its gid after a colon)"
    )]
    NoSuchUser(String),
    #[error(
        "--clients-user {0}: that is root; the part that serves clients must run as an \
         unprivileged user"
    )]
    Root(String),
    #[error(
        "cannot become {user} for the part that serves clients ({source}): that needs \
         CAP_SETUID and CAP_SETGID; run the daemon as root, or turn the separation off with \
         --privsep off"
    )]
    Drop { user: String, source: io::Error },
    #[error(
        "the part that serves clients still runs as uid {uid} with {caps} capabilities after \
         dropping them; refusing to serve clients from it"
    )]
    StillPrivileged { uid: u32, caps: u32 },
}

/// Who serves clients by default: the unprivileged account every distribution has, else the
/// kernel's overflow uid it stands for.
pub const DEFAULT_CLIENTS_USER: &str = "nobody";
const OVERFLOW_ID: u32 = 65534;

/// The user the client part becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientsUser {
    /// As given (for messages).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl ClientsUser {
    /// `NAME` from the password database, or `UID[:GID]` (the gid defaults to the uid).
    pub fn resolve(name: &str) -> Result<Self, Error> {
        let user = if let Some((uid, gid)) = numeric(name) {
            Self { name: name.to_owned(), uid, gid }
        } else {
            let (uid, gid) = lookup(name)
                .or((name == DEFAULT_CLIENTS_USER).then_some((OVERFLOW_ID, OVERFLOW_ID)))
                .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
            Self { name: name.to_owned(), uid, gid }
        };
        if user.uid == 0 {
            return Err(Error::Root(name.to_owned()));
        }
        Ok(user)
    }
}

fn numeric(name: &str) -> Option<(u32, u32)> {
    match name.split_once(':') {
        Some((uid, gid)) => Some((uid.parse().ok()?, gid.parse().ok()?)),
        None => name.parse().ok().map(|uid| (uid, uid)),
    }
}

/// The password database's entry, read from /etc/passwd (what getpwnam reads here too, and
/// the same in a static build).
fn lookup(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// The two sides of a fork.
pub enum Part {
    Monitor { link: UnixStream, child: libc::pid_t },
    Child { link: UnixStream, monitor: libc::pid_t },
}

/// Forks into the monitor and an unprivileged part (the client part, the inspector part),
/// joined by a socketpair. Must run before any
/// thread starts (a fork copies only the calling thread; locks others held would stay held).
pub fn split() -> Result<Part, Error> {
    let threads = thread_count();
    if threads > 1 {
        return Err(Error::Threads(threads));
    }
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    let rc = unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    };
    if rc != 0 {
        return Err(Error::Os { what: "socketpair", source: io::Error::last_os_error() });
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (monitor_end, clients_end) =
        unsafe { (UnixStream::from_raw_fd(fds[0]), UnixStream::from_raw_fd(fds[1])) };
    // SAFETY: getpid has no preconditions.
    let monitor = unsafe { libc::getpid() };
    // SAFETY: the process is single-threaded (checked above), so the child is a whole copy.
    match unsafe { libc::fork() } {
        -1 => Err(Error::Os { what: "fork", source: io::Error::last_os_error() }),
        0 => {
            drop(monitor_end);
            Ok(Part::Child { link: clients_end, monitor })
        }
        child => {
            drop(clients_end);
            Ok(Part::Monitor { link: monitor_end, child })
        }
    }
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|n| n.trim().parse().ok()))
        })
        .unwrap_or(1)
}

/// The client part from the fork on: drops every privilege (and, with `seccomp`, every system
/// call a server does not make), then serves `api` and `metrics`
/// until the monitor closes the link. Terminal and service signals are the monitor's to act on:
/// this part ignores them and ends with the link.
pub fn run_clients(
    link: UnixStream,
    monitor: libc::pid_t,
    user: &ClientsUser,
    api: std::os::unix::net::UnixListener,
    metrics: Option<std::net::TcpListener>,
    web: WebConfig,
    seccomp: Switch,
) -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let privileges = drop_privileges(user)?;
    // Killed with the monitor, whatever kills it: listeners held by an orphan would keep a
    // restarted daemon from binding. Set after the uid change, which clears it.
    // SAFETY: prctl with these options reads only its integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != monitor {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if seccomp == Switch::On {
        seccomp::install(&[]).map_err(|e| anyhow::anyhow!("installing the seccomp filter: {e}"))?;
    }
    runtime.block_on(async move {
        let (query_tx, query_rx) = tokio::sync::mpsc::channel(64);
        let (scrape_tx, scrape_rx) = tokio::sync::mpsc::channel(8);
        let clients = crate::api::server::Clients::default();
        tokio::spawn(crate::api::server::serve(api, query_tx, clients.clone()));
        if let Some(listener) = metrics {
            tokio::spawn(crate::export::serve(listener, scrape_tx, web));
        }
        link.set_nonblocking(true)?;
        let link = tokio::net::UnixStream::from_std(link)?;
        let filtered = seccomp == Switch::On;
        clients::relay(link, privileges, filtered, query_rx, scrape_rx, clients).await?;
        Ok(())
    })
}

/// Becomes `user` with no capabilities left in any set (the bounding set too, so nothing it
/// executes could regain one; `no_new_privs` is set already), then checks it from /proc.
pub(super) fn drop_privileges(user: &ClientsUser) -> Result<PrivilegesStatus, Error> {
    let failed = |source| Error::Drop { user: user.name.clone(), source };
    // The bounding set empty, while CAP_SETPCAP is still there (the fork took the daemon's
    // sets before it narrowed them). A daemon started without CAP_SETPCAP leaves the bounding
    // set as it is: no_new_privs already keeps anything executed from gaining from it.
    let permitted = crate::privileges::permitted_of_self().map_err(failed)?;
    crate::privileges::narrow_bounding_set(0, permitted).map_err(failed)?;
    // SAFETY: setgroups with an empty list reads nothing.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // SAFETY: plain id changes; the kernel checks the privilege.
    if unsafe { libc::setresgid(user.gid, user.gid, user.gid) } != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // Leaving uid 0 for good clears the permitted and effective capabilities.
    // SAFETY: as above.
    if unsafe { libc::setresuid(user.uid, user.uid, user.uid) } != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    let now = crate::privileges::Privileges::of_self()
        .ok_or_else(|| failed(io::Error::other("cannot read /proc/self/status")))?;
    if now.effective_uid == 0 || now.effective != 0 {
        return Err(Error::StillPrivileged {
            uid: now.effective_uid,
            caps: now.effective.count_ones(),
        });
    }
    Ok(PrivilegesStatus {
        uid: now.effective_uid,
        effective_capabilities: now.names(),
        no_new_privs: now.no_new_privs,
    })
}

/// Waits up to `grace` for the client part to exit after the monitor closed the link, then
/// kills it; returns how it ended, for the log.
pub fn reap(child: libc::pid_t, grace: Duration) -> String {
    let until = Instant::now() + grace;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing its status into `status`.
        let rc = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if rc == child {
            return describe(status);
        }
        if rc < 0 {
            return format!("could not be waited for ({})", io::Error::last_os_error());
        }
        if Instant::now() >= until {
            // SAFETY: signalling our own child.
            if unsafe { libc::kill(child, libc::SIGKILL) } != 0 {
                // It runs as another uid: without CAP_KILL (--drop-capability) the kernel
                // refuses, and it would refuse its parent-death signal too.
                return format!(
                    "had not exited {} ms after its link closed and cannot be killed ({}): it \
                     outlives the daemon, pid {child}",
                    grace.as_millis(),
                    io::Error::last_os_error()
                );
            }
            // SAFETY: as above, blocking until it is gone.
            unsafe { libc::waitpid(child, &mut status, 0) };
            return "was killed after it did not exit".to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A wait status in words.
pub fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
        "was killed by SIGSYS: it made a system call outside its seccomp allow-list (a bug: \
         please report it with the daemon's kernel; --seccomp off runs without the filter)"
            .to_owned()
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_user_is_a_name_or_numeric_and_never_root() {
        assert_eq!(
            ClientsUser::resolve("65534").unwrap(),
            ClientsUser { name: "65534".into(), uid: 65534, gid: 65534 }
        );
        assert_eq!(ClientsUser::resolve("1000:100").unwrap().gid, 100);
        assert!(matches!(ClientsUser::resolve("root"), Err(Error::Root(_))));
        assert!(matches!(ClientsUser::resolve("0:5"), Err(Error::Root(_))));
        assert!(matches!(ClientsUser::resolve("no-such-user-here"), Err(Error::NoSuchUser(_))));
        assert!(matches!(ClientsUser::resolve("12:x"), Err(Error::NoSuchUser(_))));
    }
}
