//! A scriptable TCP client/server used by the integration tests (and handy by hand).
//!
//! It reads one command per line on stdin and answers one line on stdout (`ok ...` or
//! `err ...`), so a test can drive exact sequences and know when each step is done:
//!
//! ```text
//! pid                         -> ok <pid>
//! listen <ip> [backlog] [port] -> ok <port>         (listener index = order of creation)
//! accept <listener> <n>       -> ok                  accept n, hold them
//! accept-bg <listener> <n>    -> ok                  accept n in a thread (already blocked
//!                                                     in accept() when this returns)
//! wait-bg                     -> ok                  join the background acceptors
//! serve-churn <listener> <n>  -> ok                  thread: accept, read to EOF, close, n times
//! connect <ip:port> <n>       -> ok <local ports>    blocking connects, held
//! connect-nowait <ip:port> <n> -> ok                 non-blocking connects, held (may stay SYN_SENT)
//! connect-refused <ip:port> <n> -> ok                connects that must be refused (RST)
//! churn <ip:port> <n>         -> ok                  connect, write 1 byte, close; n times
//! close <n>                   -> ok                  close the n oldest held connections
//! shutdown-wr <n>             -> ok                  shutdown(SHUT_WR) on the n oldest
//! send <n> <bytes>            -> ok                  write that many bytes on each of the n oldest
//! reset <n>                   -> ok                  SO_LINGER 0 + close the n oldest (peer gets RST)
//! held                        -> ok <count>
//! fork-hold <n>               -> ok <child pid>      fork a child that holds the n oldest held
//!                                                     connections (and no other descriptor) until
//!                                                     killed; they then have two holders
//!
//! Background patterns for the leak tests (each runs in its own thread until exit):
//! serve-bg <listener> <mode>  -> ok   accept forever; mode `echo` closes when the peer does,
//!                                     `hold` never closes (CLOSE_WAIT piles up),
//!                                     `idle-close:<ms>:<k>` also closes its k oldest every ms
//! close-served <k>            -> ok <count>  close the k oldest connections that serve-bg holds
//!                                     (every listener's, in one list); count: those left
//! served-peers                -> ok <fd>=<peer> ...  what serve-bg holds: descriptor, and the
//!                                     peer's address as accept() returned it
//! trickle-bg <ip:port> <ms>   -> ok   one new connection every ms, never closed (a leak)
//! churn-leak-bg <ip:port> <ms> -> ok  every ms: open two, close one (a leak under churn)
//! pool-bg <ip:port> <size> <ms> -> ok keep `size` connections, reopening any the peer closed
//! oscillate-bg <ip:port> <low> <high> <ms> -> ok  one step every ms between low and high
//! exit                        -> (exits holding whatever it holds)
//! ```
use std::{
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    str::FromStr,
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Socket, Type};

#[derive(Default)]
struct Workload {
    listeners: Vec<TcpListener>,
    held: Vec<Socket>,
    background: Vec<JoinHandle<Vec<TcpStream>>>,
    bg_held: Vec<TcpStream>,
    /// What serve-bg threads hold (hold and idle-close modes), oldest first.
    served: Served,
}

fn main() {
    let mut w = Workload::default();
    let stdin = io::stdin();
    let mut out = io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            std::process::exit(0);
        }
        let reply = match w.run(&words) {
            Ok(text) => format!("ok{}{text}", if text.is_empty() { "" } else { " " }),
            Err(e) => format!("err {e}"),
        };
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
}

fn arg<T: FromStr>(words: &[&str], i: usize) -> io::Result<T> {
    words
        .get(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| io::Error::other(format!("argument {i} missing or invalid")))
}

impl Workload {
    fn run(&mut self, words: &[&str]) -> io::Result<String> {
        match words.first().copied().unwrap_or("") {
            "pid" => Ok(std::process::id().to_string()),
            "listen" => {
                let ip: std::net::IpAddr = arg(words, 1)?;
                let backlog: i32 = arg(words, 2).unwrap_or(1024);
                let port: u16 = arg(words, 3).unwrap_or(0);
                let socket =
                    Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddr::new(ip, port).into())?;
                socket.listen(backlog)?;
                let listener: TcpListener = socket.into();
                let port = listener.local_addr()?.port();
                self.listeners.push(listener);
                Ok(port.to_string())
            }
            "accept" => {
                let listener = listener(&self.listeners, arg(words, 1)?)?;
                for _ in 0..arg::<usize>(words, 2)? {
                    let (stream, _) = listener.accept()?;
                    self.held.push(stream.into());
                }
                Ok(String::new())
            }
            "accept-bg" => {
                let listener = listener(&self.listeners, arg(words, 1)?)?.try_clone()?;
                let n: usize = arg(words, 2)?;
                self.background.push(std::thread::spawn(move || {
                    (0..n).filter_map(|_| listener.accept().ok().map(|(s, _)| s)).collect()
                }));
                // Give the thread time to block in accept().
                std::thread::sleep(Duration::from_millis(200));
                Ok(String::new())
            }
            "serve-churn" => {
                let listener = listener(&self.listeners, arg(words, 1)?)?.try_clone()?;
                let n: usize = arg(words, 2)?;
                self.background.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    for _ in 0..n {
                        if let Ok((mut s, _)) = listener.accept() {
                            while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
                        }
                    }
                    Vec::new()
                }));
                Ok(String::new())
            }
            "wait-bg" => {
                for handle in self.background.drain(..) {
                    let streams =
                        handle.join().map_err(|_| io::Error::other("acceptor panicked"))?;
                    self.bg_held.extend(streams);
                }
                self.held.extend(self.bg_held.drain(..).map(Socket::from));
                Ok(String::new())
            }
            "connect" => {
                let addr: SocketAddr = arg(words, 1)?;
                let mut ports = Vec::new();
                for _ in 0..arg::<usize>(words, 2)? {
                    let stream = TcpStream::connect(addr)?;
                    ports.push(stream.local_addr()?.port().to_string());
                    self.held.push(stream.into());
                }
                Ok(ports.join(" "))
            }
            "connect-nowait" => {
                let addr: SocketAddr = arg(words, 1)?;
                for _ in 0..arg::<usize>(words, 2)? {
                    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                    socket.set_nonblocking(true)?;
                    match socket.connect(&addr.into()) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                        Err(e) => return Err(e),
                    }
                    self.held.push(socket);
                }
                Ok(String::new())
            }
            "connect-refused" => {
                let addr: SocketAddr = arg(words, 1)?;
                for _ in 0..arg::<usize>(words, 2)? {
                    match TcpStream::connect(addr) {
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Err(e),
                        Ok(_) => return Err(io::Error::other("connect was not refused")),
                    }
                }
                Ok(String::new())
            }
            "churn" => {
                let addr: SocketAddr = arg(words, 1)?;
                for _ in 0..arg::<usize>(words, 2)? {
                    let mut stream = TcpStream::connect(addr)?;
                    stream.write_all(b"x")?;
                }
                Ok(String::new())
            }
            "close" => {
                let n = arg::<usize>(words, 1)?.min(self.held.len());
                self.held.drain(..n);
                Ok(String::new())
            }
            "send" => {
                let data = vec![b'x'; arg(words, 2)?];
                for s in self.held.iter().take(arg(words, 1)?) {
                    let mut s: &Socket = s;
                    s.write_all(&data)?;
                }
                Ok(String::new())
            }
            "shutdown-wr" => {
                for s in self.held.iter().take(arg(words, 1)?) {
                    s.shutdown(std::net::Shutdown::Write)?;
                }
                Ok(String::new())
            }
            "reset" => {
                let n = arg::<usize>(words, 1)?.min(self.held.len());
                for s in self.held.drain(..n) {
                    s.set_linger(Some(Duration::ZERO))?;
                }
                Ok(String::new())
            }
            "held" => Ok(self.held.len().to_string()),
            "fork-hold" => fork_holder(&self.held[..arg::<usize>(words, 1)?.min(self.held.len())]),
            "serve-bg" => {
                let listener = listener(&self.listeners, arg(words, 1)?)?.try_clone()?;
                let mode: String = arg(words, 2)?;
                let held = std::sync::Arc::clone(&self.served);
                std::thread::spawn(move || serve(listener, &mode, held));
                Ok(String::new())
            }
            "close-served" => {
                let mut served =
                    self.served.lock().map_err(|_| io::Error::other("a server thread panicked"))?;
                let n = arg::<usize>(words, 1)?.min(served.len());
                served.drain(..n);
                Ok(served.len().to_string())
            }
            "served-peers" => {
                use std::os::fd::AsRawFd;
                let served =
                    self.served.lock().map_err(|_| io::Error::other("a server thread panicked"))?;
                let pairs: Vec<String> =
                    served.iter().map(|(s, peer)| format!("{}={peer}", s.as_raw_fd())).collect();
                Ok(pairs.join(" "))
            }
            "trickle-bg" | "churn-leak-bg" | "pool-bg" | "oscillate-bg" => {
                let addr: SocketAddr = arg(words, 1)?;
                let numbers: Vec<u64> = words[2..].iter().filter_map(|w| w.parse().ok()).collect();
                let pattern = words[0].to_owned();
                std::thread::spawn(move || client_pattern(&pattern, addr, &numbers));
                Ok(String::new())
            }
            other => Err(io::Error::other(format!("unknown command {other:?}"))),
        }
    }
}

/// Forks a child that keeps only `keep`'s descriptors and waits to be killed; its pid.
fn fork_holder(keep: &[Socket]) -> io::Result<String> {
    use std::os::fd::AsRawFd;
    let keep: Vec<i32> = keep.iter().map(AsRawFd::as_raw_fd).collect();
    // Everything open now (collected before the fork: the child only closes and waits).
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // SAFETY: ignoring SIGCHLD makes the kernel reap our holders; nothing here waits for them.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // SAFETY: the child runs only async-signal-safe calls (close, pause) on memory allocated
    // before the fork, then never returns.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            for fd in open.iter().filter(|fd| !keep.contains(fd)) {
                // SAFETY: closing a descriptor of this (child) process.
                unsafe { libc::close(*fd) };
            }
            loop {
                // SAFETY: waits for a signal; the holder lives until killed.
                unsafe { libc::pause() };
            }
        }
        child => Ok(child.to_string()),
    }
}

fn listener(listeners: &[TcpListener], index: usize) -> io::Result<&TcpListener> {
    listeners.get(index).ok_or_else(|| io::Error::other("no such listener"))
}

/// Accepts forever; see `serve-bg` in the module docs.
/// What serve-bg threads hold: each connection with its peer's address from accept() (a
/// socket the peer reset no longer reports it).
type Served = std::sync::Arc<std::sync::Mutex<Vec<(TcpStream, SocketAddr)>>>;

fn serve(listener: TcpListener, mode: &str, held: Served) {
    let idle_close: Option<(u64, usize)> = mode
        .strip_prefix("idle-close:")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(ms, k)| Some((ms.parse().ok()?, k.parse().ok()?)));
    if let Some((every_ms, k)) = idle_close {
        let held = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(every_ms));
                if let Ok(mut list) = held.lock() {
                    let n = k.min(list.len());
                    list.drain(..n);
                }
            }
        });
    }
    loop {
        let Ok((stream, peer)) = listener.accept() else { continue };
        if mode == "hold" || idle_close.is_some() {
            if let Ok(mut list) = held.lock() {
                list.push((stream, peer));
            }
        } else {
            // echo: close when the peer does.
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf), Ok(k) if k > 0) {}
            });
        }
    }
}

/// True when the peer has closed `stream` (EOF without blocking).
fn peer_closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let _ = stream.set_nonblocking(true);
    let closed = matches!(stream.peek(&mut byte), Ok(0));
    let _ = stream.set_nonblocking(false);
    closed
}

/// The client side of the background patterns; see the module docs.
fn client_pattern(pattern: &str, addr: SocketAddr, numbers: &[u64]) {
    let at = |i: usize| numbers.get(i).copied().unwrap_or(100);
    let mut held: std::collections::VecDeque<TcpStream> = std::collections::VecDeque::new();
    let connect = || TcpStream::connect(addr).ok();
    match pattern {
        "trickle-bg" => loop {
            held.extend(connect());
            std::thread::sleep(Duration::from_millis(at(0)));
        },
        "churn-leak-bg" => loop {
            held.extend(connect());
            held.extend(connect());
            held.pop_front();
            std::thread::sleep(Duration::from_millis(at(0)));
        },
        "pool-bg" => {
            let size = at(0) as usize;
            loop {
                held.retain(|s| !peer_closed(s));
                while held.len() < size {
                    match connect() {
                        Some(s) => held.push_back(s),
                        None => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(at(1)));
            }
        }
        "oscillate-bg" => {
            let (low, high) = (at(0) as usize, at(1) as usize);
            let mut rising = true;
            loop {
                if rising {
                    held.extend(connect());
                    rising = held.len() < high;
                } else {
                    held.pop_front();
                    rising = held.len() <= low;
                }
                std::thread::sleep(Duration::from_millis(at(2)));
            }
        }
        _ => {}
    }
}
