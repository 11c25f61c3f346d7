//! `tracer top --watch`: redraws in place like top(1) until q or Ctrl-C, and always gives the
//! terminal back as it found it; with `--json`, prints one answer after another instead.
use std::{
    io::{IsTerminal, Read, Write},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// Puts the terminal in non-canonical, no-echo, no-signal mode; restores it on drop (so that
/// Ctrl-C, read as a byte, ends the loop cleanly instead of killing a half-drawn screen).
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: valid fd and fully initialised termios.
        (unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } == 0).then_some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the settings read in `enter`.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// Waits up to `timeout` for a key; true when it asks to quit (q, Q, Ctrl-C, or end of input).
fn quit_requested(timeout: Duration) -> bool {
    let mut poll =
        libc::pollfd { fd: std::io::stdin().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready =
        unsafe { libc::poll(&mut poll, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    if ready <= 0 {
        return false;
    }
    let mut byte = [0u8; 1];
    match std::io::stdin().read(&mut byte) {
        Ok(0) => true,
        Ok(_) => matches!(byte[0], b'q' | b'Q' | 0x03),
        Err(_) => false,
    }
}

/// `--watch` with `--json`: each frame as it is, one every `period`, until the reader goes
/// away (or Ctrl-C); no terminal control, so the output stays a stream of JSON documents.
pub fn stream(
    period: Duration,
    mut frame: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    loop {
        let started = Instant::now();
        if !super::output::emit(&frame()?)? {
            return Ok(());
        }
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}

pub fn run(
    period: Duration,
    mut frame: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive { RawMode::enter() } else { None };
    let mut out = std::io::stdout();
    loop {
        let started = Instant::now();
        let text = frame()?;
        // Home, clear, draw; \r\n because the terminal may not translate \n in this mode.
        write!(out, "\x1b[H\x1b[2J{}", text.replace('\n', "\r\n"))?;
        write!(out, "\r\n(every {:.1}s; q to quit)", period.as_secs_f64())?;
        out.flush()?;
        let wait = period.saturating_sub(started.elapsed());
        if interactive {
            if quit_requested(wait) {
                break;
            }
        } else {
            std::thread::sleep(wait);
        }
    }
    writeln!(out, "\r")?;
    Ok(())
}
