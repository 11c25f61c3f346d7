//! A scriptable TCP client/server used by the integration tests (and handy by hand).
//!
//! It reads one command per line on stdin and answers one line on stdout (`ok ...` or
//! `err ...`), so a test can drive exact sequences and know when each step is done:
//!
//! ```text
//! pid                         -> ok <pid>
//! listen <ip> [backlog]       -> ok <port>          (listener index = order of creation)
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
//! reset <n>                   -> ok                  SO_LINGER 0 + close the n oldest (peer gets RST)
//! held                        -> ok <count>
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
                let socket = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
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
                    let streams = handle.join().map_err(|_| io::Error::other("acceptor panicked"))?;
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
            other => Err(io::Error::other(format!("unknown command {other:?}"))),
        }
    }

}

fn listener(listeners: &[TcpListener], index: usize) -> io::Result<&TcpListener> {
    listeners.get(index).ok_or_else(|| io::Error::other("no such listener"))
}
