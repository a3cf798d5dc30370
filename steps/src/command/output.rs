//! A command's output, bounded: stdout and stderr go to the step's log up to [`LOG_CAP`] bytes (then a
//! note, and the rest is read and dropped so the command never blocks on a full pipe); the last
//! [`TAIL_BYTES`] of stderr stay in memory for the failure message.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most a step's log holds of its command's output.
pub const LOG_CAP: u64 = 64 << 20;
/// The stderr kept in memory: the failure message shows its last [`TAIL_LINES`] lines.
pub const TAIL_BYTES: usize = 8 << 10;
pub const TAIL_LINES: usize = 20;
/// How long output may still arrive once the command's processes have ended.
const DRAIN: Duration = Duration::from_secs(5);

/// What a finished capture kept.
#[derive(Debug)]
pub struct Captured {
    /// The last lines of stderr ("…" marks a line cut at the front).
    pub tail: String,
    /// Bytes of output beyond the log's cap.
    pub dropped: u64,
    /// A stream was still open when the capture stopped waiting.
    pub unfinished: bool,
}

struct State {
    log: File,
    logged: u64,
    dropped: u64,
    tail: Tail,
    open: usize,
}

/// Reads the command's streams on threads of their own.
pub struct Capture {
    shared: Arc<(Mutex<State>, Condvar)>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Capture {
    pub fn start(
        log: File,
        stdout: Option<impl Read + Send + 'static>,
        stderr: Option<impl Read + Send + 'static>,
    ) -> Capture {
        let shared = Arc::new((
            Mutex::new(State {
                log,
                logged: 0,
                dropped: 0,
                tail: Tail::default(),
                open: 0,
            }),
            Condvar::new(),
        ));
        let streams: [(Option<Box<dyn Read + Send>>, bool); 2] = [
            (stdout.map(|s| Box::new(s) as _), false),
            (stderr.map(|s| Box::new(s) as _), true),
        ];
        for (stream, is_stderr) in streams {
            let Some(mut stream) = stream else { continue };
            lock(&shared.0).open += 1;
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    lock(&shared.0).take(&buf[..n], is_stderr);
                }
                lock(&shared.0).open -= 1;
                shared.1.notify_all();
            });
        }
        Capture { shared }
    }

    /// Waits until both streams are closed (at most a few seconds: the command's processes have
    /// ended, so only one wf could not end still holds them), or `cancelled()`.
    pub fn finish(self, cancelled: &dyn Fn() -> bool) -> Captured {
        let (m, cv) = &*self.shared;
        let t0 = Instant::now();
        let mut s = lock(m);
        while s.open > 0 && t0.elapsed() < DRAIN && !cancelled() {
            s = cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if s.dropped > 0 {
            let note = format!("[wf: {} more bytes of output were not logged]\n", s.dropped);
            let _ = s.log.write_all(note.as_bytes());
        }
        Captured {
            tail: s.tail.render(),
            dropped: s.dropped,
            unfinished: s.open > 0,
        }
    }
}

impl State {
    fn take(&mut self, bytes: &[u8], is_stderr: bool) {
        if is_stderr {
            self.tail.push(bytes);
        }
        let room = LOG_CAP.saturating_sub(self.logged).min(bytes.len() as u64) as usize;
        if room > 0 {
            let _ = self.log.write_all(&bytes[..room]);
            self.logged += room as u64;
        }
        if room < bytes.len() {
            if self.dropped == 0 {
                let note = format!(
                    "\n[wf: log capped at {} MiB; later output of the command is not logged]\n",
                    LOG_CAP >> 20
                );
                let _ = self.log.write_all(note.as_bytes());
            }
            self.dropped += (bytes.len() - room) as u64;
        }
    }
}

/// The last [`TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
    /// Bytes were dropped at the front.
    cut: bool,
}

impl Tail {
    fn push(&mut self, more: &[u8]) {
        let more = &more[more.len().saturating_sub(TAIL_BYTES)..];
        let excess = (self.bytes.len() + more.len()).saturating_sub(TAIL_BYTES);
        if excess > 0 {
            self.bytes.drain(..excess);
            self.cut = true;
        }
        self.bytes.extend(more);
    }

    /// The last [`TAIL_LINES`] lines.
    fn render(&self) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let lines: Vec<&str> = text.split('\n').collect();
        let skip = lines.len().saturating_sub(TAIL_LINES);
        let mut out = lines[skip..].join("\n");
        // The first line kept starts where the buffer was cut.
        if self.cut && skip == 0 {
            out.insert(0, '…');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_of_the_last_bytes() {
        let mut t = Tail::default();
        assert_eq!(t.render(), "");
        for i in 0..100 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let r = t.render();
        assert_eq!(r.lines().count(), TAIL_LINES);
        assert!(r.starts_with("line 80\n") && r.ends_with("line 99"), "{r}");

        let mut t = Tail::default();
        t.push(b"first\n");
        t.push(&vec![b'x'; 3 * TAIL_BYTES]);
        t.push(b"\nlast\n");
        let r = t.render();
        assert!(r.len() <= TAIL_BYTES + 4, "{}", r.len());
        assert!(r.starts_with("…xxx") && r.ends_with("xxx\nlast"));
    }

    #[test]
    fn the_log_stops_at_its_cap_with_a_note_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut s = State {
            log: File::create(&path).unwrap(),
            logged: LOG_CAP - 3,
            dropped: 0,
            tail: Tail::default(),
            open: 0,
        };
        s.take(b"abcdef", true);
        s.take(b"gh", false);
        assert_eq!((s.logged, s.dropped), (LOG_CAP, 5));
        assert_eq!(s.tail.render(), "abcdef");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("abc\n[wf: log capped at 64 MiB;"),
            "{text}"
        );
    }
}
