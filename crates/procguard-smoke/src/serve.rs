//! The target's "serve" mode: say who it is, then wait, and never outlive
//! the run: it exits when its stdin closes (the smoke test closes it, or
//! dies) or after a bounded time, whichever comes first.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// How long a target waits at most (`--serve-timeout` default).
pub const DEFAULT_SERVE_SECONDS: u64 = 120;

/// Why the target stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// Its stdin reached end of file (or failed).
    StdinClosed,
    /// The time was up.
    TimedOut,
}

/// The line a target prints first: `ready PID TID` (its main thread).
#[must_use]
pub fn ready_line(pid: u32, tid: u32) -> String {
    format!("ready {pid} {tid}")
}

/// Parses [`ready_line`]'s line into (PID, TID).
///
/// # Errors
/// The line is not `ready PID TID`.
pub fn parse_ready(line: &str) -> Result<(u32, u32), String> {
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["ready", pid, tid] => match (pid.parse(), tid.parse()) {
            (Ok(pid), Ok(tid)) => Ok((pid, tid)),
            _ => Err(format!("bad ready line {line:?}")),
        },
        _ => Err(format!("expected \"ready PID TID\", got {line:?}")),
    }
}

/// Prints the ready line for (`pid`, `tid`) on `out`, then waits until
/// `stdin` ends or `timeout` passes. The reader thread is left behind when
/// the time is up; the process exits right after anyway.
///
/// # Errors
/// Writing the ready line failed.
pub fn serve<R: Read + Send + 'static>(
    stdin: R,
    out: &mut dyn Write,
    pid: u32,
    tid: u32,
    timeout: Duration,
) -> std::io::Result<ServeEnd> {
    let (closed, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = stdin;
        let _ = std::io::copy(&mut stdin, &mut std::io::sink());
        let _ = closed.send(());
    });
    writeln!(out, "{}", ready_line(pid, tid))?;
    out.flush()?;
    Ok(match wait.recv_timeout(timeout) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => ServeEnd::StdinClosed,
        Err(mpsc::RecvTimeoutError::Timeout) => ServeEnd::TimedOut,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A stdin that never ends.
    struct Forever;

    impl Read for Forever {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
    }

    #[test]
    fn serve_prints_the_ready_line_and_returns_when_stdin_closes() {
        let mut out = Vec::new();
        let started = Instant::now();
        let end = serve(
            &b"ignored input"[..],
            &mut out,
            42,
            43,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(end, ServeEnd::StdinClosed);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(String::from_utf8(out).unwrap(), "ready 42 43\n");
    }

    #[test]
    fn serve_gives_up_after_the_timeout() {
        let mut out = Vec::new();
        let started = Instant::now();
        let end = serve(Forever, &mut out, 1, 2, Duration::from_millis(200)).unwrap();
        assert_eq!(end, ServeEnd::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn the_ready_line_parses_back() {
        assert_eq!(parse_ready(&ready_line(4242, 4243)), Ok((4242, 4243)));
        assert_eq!(parse_ready("ready 1 2\r"), Ok((1, 2)));
        assert!(parse_ready("ready 1").is_err());
        assert!(parse_ready("ready x 2")
            .unwrap_err()
            .contains("bad ready line"));
        assert!(parse_ready("").is_err());
    }
}
