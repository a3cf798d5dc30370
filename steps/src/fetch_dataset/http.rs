//! fetch-dataset's HTTP download: streamed to a partial file in the store, resumed with `Range`
//! after a dropped connection (within one attempt of the step and across attempts) only while the
//! server's file is the one the partial download came from (`If-Range` with the first response's
//! strong ETag or Last-Modified; without either, a cut download starts over), retried on
//! connection errors and 5xx, checked against the expected digests before it is used.
//!
//! For a URL without a checksum, [`validators`] reads the server's validators with a HEAD when the
//! key is computed (`Step::external_state`): `etag <ETag>`, else `last-modified <date>, length <n>`.
//! The download then refuses a response whose validators differ from those in the key, so bytes of
//! one version are never stored under the key of another.
//!
//! Every wait polls the cancel token: the request and each read run on a helper thread
//! ([`cancellable`], [`Pump`]), so Ctrl-C ends the step within a fraction of a second even when the
//! server stalls (the helper ends on its own when its read times out). URLs are shown with their
//! credentials redacted (`wf_engine::redact`).

use sha2::Digest;
use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};
use wf_engine::{CancelToken, Count, RunContext, StepError, Unit, plural, redact};

use super::source::{Expected, url_file_name};
use super::{Ticker, io_step};

/// Attempts per download without progress; an attempt that received bytes resets the count, so a
/// long download over a flaky link keeps resuming.
const TRIES: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often a wait looks at the cancel token.
const POLL: Duration = Duration::from_millis(100);

enum Failure {
    /// Worth another try (connection errors, 5xx, a body cut short); `progressed`: bytes arrived.
    Retry {
        reason: String,
        progressed: bool,
    },
    Fatal(StepError),
}

fn interrupted() -> StepError {
    StepError::new("interrupted")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(concat!("wf/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Runs `f` on its own thread and waits for its result, polling `cancel`. Interrupted, it returns
/// at once; the thread ends by itself when its I/O returns or times out.
fn cancellable<T: Send + 'static>(
    cancel: &CancelToken,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StepError> {
    let (tx, rx) = sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    loop {
        if cancel.is_cancelled() {
            return Err(interrupted());
        }
        match rx.recv_timeout(POLL) {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(StepError::new("a download thread ended unexpectedly"));
            }
        }
    }
}

/// A response body read on a helper thread, chunk by chunk, so the reader can wait with a timeout.
struct Pump(Receiver<io::Result<Vec<u8>>>);

impl Pump {
    fn new(mut reader: impl Read + Send + 'static) -> Pump {
        let (tx, rx) = sync_channel(4);
        std::thread::spawn(move || {
            loop {
                let mut buf = vec![0u8; 256 << 10];
                let sent = match reader.read(&mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        let end = n == 0;
                        tx.send(Ok(buf)).is_ok() && !end
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        false
                    }
                };
                // The reader went away (interrupted) or the body ended: stop.
                if !sent {
                    break;
                }
            }
        });
        Pump(rx)
    }

    /// The next chunk (empty at the end of the body), or `None` while nothing arrived within `POLL`.
    fn next(&self) -> Option<io::Result<Vec<u8>>> {
        match self.0.recv_timeout(POLL) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the body reader stopped",
            ))),
        }
    }
}

/// Waits for the download lock of a URL, polling the cancel token.
fn lock_polling(
    cx: &RunContext<'_>,
    lock: &File,
    path: &Path,
    shown: &str,
) -> Result<(), StepError> {
    let mut told = false;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {
                if !told {
                    cx.progress
                        .message(&format!("waiting for another run downloading {shown}"));
                    told = true;
                }
                sleep_unless_cancelled(cx.cancel, Duration::from_millis(200))?;
            }
            Err(TryLockError::Error(e)) => return Err(io_step(path, e)),
        }
    }
}

/// Downloads `url`, resuming a partial download left by an earlier attempt, verifies it, and returns
/// the complete file (in the step's scratch directory).
pub(super) fn download(
    cx: &RunContext<'_>,
    url: &str,
    expected: &Expected,
) -> Result<PathBuf, StepError> {
    let shown = redact::url(url).into_owned();
    // The partial download lives in the store, not in scratch (removed after each attempt of the
    // step), named by the URL so a rerun finds it; `wf cache gc --older-than` clears abandoned ones.
    let dir = cx.store.derived_dir("fetch-dataset-downloads");
    fs::create_dir_all(&dir).map_err(|e| io_step(&dir, e))?;
    let id = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    let part = Partial {
        data: dir.join(format!("{id}.part")),
        validator: dir.join(format!("{id}.validator")),
    };
    let lock_path = dir.join(format!("{id}.lock"));
    // Two runs fetching one URL would interleave appends to one file.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_step(&lock_path, e))?;
    lock_polling(cx, &lock, &lock_path, &shown)?;

    let agent = agent();
    cx.progress.message(&format!("downloading {shown}"));
    let mut failures = 0;
    let mut reasons = Vec::new();
    loop {
        if cx.cancel.is_cancelled() {
            return Err(interrupted());
        }
        match attempt(cx, &agent, url, &shown, &part) {
            Ok(()) => break,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry { reason, progressed }) => {
                if progressed {
                    failures = 0;
                }
                failures += 1;
                reasons.push(reason.clone());
                if failures >= TRIES {
                    return Err(StepError::with_detail(
                        format!("downloading {shown} failed after {TRIES} tries: {reason}"),
                        reasons.join("\n"),
                    ));
                }
                let delay = RETRY_DELAY * 2u32.pow(failures - 1);
                cx.progress
                    .message(&format!("{reason}; retrying in {} s", delay.as_secs_f32()));
                sleep_unless_cancelled(cx.cancel, delay)?;
            }
        }
    }
    if let Err(e) = expected.verify(&part.data, &shown, cx) {
        // Bad bytes must not be resumed from; the next attempt starts over.
        part.discard();
        return Err(e);
    }
    let dest = cx.scratch_dir.join(url_file_name(url));
    if fs::rename(&part.data, &dest).is_err() {
        // Scratch on another file system than the store: copy instead.
        fs::copy(&part.data, &dest).map_err(|e| io_step(&dest, e))?;
    }
    part.discard();
    Ok(dest)
}

fn sleep_unless_cancelled(cancel: &CancelToken, d: Duration) -> Result<(), StepError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.is_cancelled() {
            return Err(interrupted());
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

/// A partial download and the validator of the response it came from (its `If-Range`).
struct Partial {
    data: PathBuf,
    validator: PathBuf,
}

impl Partial {
    fn discard(&self) {
        let _ = fs::remove_file(&self.data);
        let _ = fs::remove_file(&self.validator);
    }

    /// Bytes to resume from and the validator to resume with; a partial download without a
    /// validator cannot be told from another version's bytes, so it is dropped.
    fn resumable(&self) -> Option<(u64, String)> {
        let have = fs::metadata(&self.data).map(|m| m.len()).unwrap_or(0);
        if have == 0 {
            return None;
        }
        match fs::read_to_string(&self.validator) {
            Ok(v) if !v.trim().is_empty() => Some((have, v.trim().to_string())),
            _ => {
                self.discard();
                None
            }
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` or `bytes */TOTAL` → (START, TOTAL); `None` parts unknown.
fn content_range(v: &str) -> (Option<u64>, Option<u64>) {
    let Some(rest) = v.trim().strip_prefix("bytes ") else {
        return (None, None);
    };
    let (range, total) = rest.split_once('/').unwrap_or((rest, "*"));
    let start = range.split('-').next().and_then(|s| s.trim().parse().ok());
    (start, total.trim().parse().ok())
}

/// The headers of a response that this module looks at.
#[derive(Debug, Default)]
struct Headers {
    etag: Option<String>,
    last_modified: Option<String>,
    content_length: Option<u64>,
    content_range: Option<String>,
}

impl Headers {
    fn of<B>(resp: &ureq::http::Response<B>) -> Headers {
        let get = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Headers {
            etag: get("etag"),
            last_modified: get("last-modified"),
            content_length: get("content-length").and_then(|v| v.parse().ok()),
            content_range: get("content-range"),
        }
    }

    /// The file's full length: the total of a `Content-Range`, else the `Content-Length`.
    fn file_length(&self) -> Option<u64> {
        match &self.content_range {
            Some(r) => content_range(r).1,
            None => self.content_length,
        }
    }

    /// The key's description of the file (see the module docs); `None` without a validator.
    fn state(&self) -> Option<String> {
        if let Some(etag) = &self.etag {
            return Some(format!("etag {etag}"));
        }
        let modified = self.last_modified.as_ref()?;
        Some(match self.file_length() {
            Some(n) => format!("last-modified {modified}, length {n}"),
            None => format!("last-modified {modified}, length unknown"),
        })
    }

    /// What `If-Range` may carry: a strong ETag, else the Last-Modified date (RFC 9110 §13.1.5).
    fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

/// Why a HEAD of a file got no headers: a refusal (`HTTP 404 Not Found`), or every try failed.
enum HeadError {
    Status(String),
    Tries(Vec<String>),
}

/// The headers of the file at `url`, read with a HEAD (a one-byte GET where the server does not
/// allow HEAD, as for a presigned GET URL), retried like a download. The outer error: cancelled.
fn head(
    url: &str,
    shown: &str,
    cancel: &CancelToken,
) -> Result<Result<Headers, HeadError>, StepError> {
    let agent = agent();
    let mut reasons = Vec::new();
    for n in 0..TRIES {
        if n > 0 {
            sleep_unless_cancelled(cancel, RETRY_DELAY * 2u32.pow(n - 1))?;
        }
        let (a, u) = (agent.clone(), url.to_string());
        let mut resp = match cancellable(cancel, move || a.head(&u).call())? {
            Ok(r) => r,
            Err(e) => {
                reasons.push(format!("{shown}: {}", redact::text(&e.to_string())));
                continue;
            }
        };
        if matches!(resp.status().as_u16(), 403 | 405 | 501) {
            let (a, u) = (agent.clone(), url.to_string());
            resp = match cancellable(cancel, move || {
                a.get(&u).header("Range", "bytes=0-0").call()
            })? {
                Ok(r) => r,
                Err(e) => {
                    reasons.push(format!("{shown}: {}", redact::text(&e.to_string())));
                    continue;
                }
            };
        }
        let status = resp.status();
        if status.is_server_error() {
            reasons.push(format!("{shown}: HTTP {}", status.as_u16()));
            continue;
        }
        if !status.is_success() {
            return Ok(Err(HeadError::Status(format!(
                "{shown}: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ))));
        }
        // The body, if any (the one-byte GET), is dropped unread with the response.
        return Ok(Ok(Headers::of(&resp)));
    }
    Ok(Err(HeadError::Tries(reasons)))
}

/// The validators of the file at `url` (`head`).
pub(super) fn validators(url: &str, cancel: &CancelToken) -> Result<String, StepError> {
    let shown = redact::url(url).into_owned();
    match head(url, &shown, cancel)? {
        Ok(headers) => headers.state().ok_or_else(|| {
            StepError::new(format!(
                "{shown}: the server sends neither an ETag nor a Last-Modified date, so a change of the file could not be seen; give `sha256` (or `md5`) to key the step by the file's content"
            ))
        }),
        Err(HeadError::Status(status)) => Err(StepError::new(format!(
            "{status} (asked for its ETag or Last-Modified, which key a source without a checksum)"
        ))),
        Err(HeadError::Tries(reasons)) => {
            let last = reasons.last().cloned().unwrap_or_default();
            Err(StepError::with_detail(
                format!(
                    "cannot read the validators of {shown} (they key a source without a checksum) after {TRIES} tries: {last}"
                ),
                format!(
                    "{}\ngive `sha256` (or `md5`) to key the step by the file's content instead",
                    reasons.join("\n")
                ),
            ))
        }
    }
}

/// The length of the file at `url` as its server announces it (`head`): `Ok(None)` when it names
/// none; `Err` says why it could not be asked.
pub(super) fn announced_length(url: &str, cancel: &CancelToken) -> Result<Option<u64>, String> {
    let shown = redact::url(url).into_owned();
    match head(url, &shown, cancel) {
        Ok(Ok(headers)) => Ok(headers.file_length()),
        Ok(Err(HeadError::Status(status))) => Err(status),
        Ok(Err(HeadError::Tries(reasons))) => Err(reasons.last().cloned().unwrap_or_default()),
        Err(e) => Err(e.message),
    }
}

/// One request: resumes `part` when it has bytes, a validator, and the server honours `Range`.
fn attempt(
    cx: &RunContext<'_>,
    agent: &ureq::Agent,
    url: &str,
    shown: &str,
    part: &Partial,
) -> Result<(), Failure> {
    let resume = part.resumable();
    let have = resume.as_ref().map_or(0, |(n, _)| *n);
    let mut req = agent.get(url);
    if let Some((have, validator)) = &resume {
        req = req
            .header("Range", format!("bytes={have}-"))
            .header("If-Range", validator.as_str());
    }
    let resp = cancellable(cx.cancel, move || req.call())
        .map_err(Failure::Fatal)?
        .map_err(|e| transport_failure(shown, e))?;
    let status = resp.status().as_u16();
    let headers = Headers::of(&resp);
    let restart = |reason: String| {
        part.discard();
        Failure::Retry {
            reason,
            progressed: false,
        }
    };
    let append = match status {
        206 => {
            let (start, _) = headers
                .content_range
                .as_deref()
                .map_or((None, None), content_range);
            if start != Some(have) {
                return Err(restart(format!(
                    "{shown}: asked for bytes from {have}, the server sent a range from {start:?}"
                )));
            }
            true
        }
        200 => false,
        416 if have > 0 => {
            // Nothing past what we have: complete if the server agrees on the length.
            let total = headers.file_length();
            if total == Some(have) {
                return Ok(());
            }
            let theirs =
                total.map_or_else(|| "of unknown length".to_string(), |t| plural(t, "byte"));
            return Err(restart(format!(
                "{shown}: the partial download ({}) does not match the server's file ({theirs})",
                plural(have, "byte")
            )));
        }
        400..=499 => {
            let reason = resp.status().canonical_reason().unwrap_or("");
            return Err(Failure::Fatal(StepError::new(format!(
                "{shown}: HTTP {status} {reason}"
            ))));
        }
        _ => {
            return Err(Failure::Retry {
                reason: format!("{shown}: HTTP {status}"),
                progressed: false,
            });
        }
    };
    // The key holds the validators read before the run: bytes of another version are refused.
    if let (Some(keyed), Some(now)) = (cx.external, headers.state())
        && keyed != now
    {
        return Err(Failure::Fatal(StepError::new(format!(
            "{shown}: the file changed on the server since the step's key was computed ({keyed} -> {now}); run again to fetch the new file"
        ))));
    }
    if !append {
        // A fresh start: remember what to resume it with, if anything.
        let _ = fs::remove_file(&part.validator);
        if let Some(v) = headers.if_range() {
            fs::write(&part.validator, v)
                .map_err(|e| Failure::Fatal(io_step(&part.validator, e)))?;
        }
    }
    let mut file = if append {
        File::options().append(true).open(&part.data)
    } else {
        File::create(&part.data)
    }
    .map_err(|e| Failure::Fatal(io_step(&part.data, e)))?;
    let start = if append { have } else { 0 };
    let total = headers.file_length().unwrap_or(0);
    let mut done = start;
    let body = Pump::new(resp.into_body().into_reader());
    let mut ticker = Ticker::new();
    loop {
        if cx.cancel.is_cancelled() {
            return Err(Failure::Fatal(interrupted()));
        }
        let chunk = match body.next() {
            None => continue,
            Some(Ok(c)) if c.is_empty() => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(Failure::Retry {
                    reason: format!(
                        "{shown}: connection lost after {}: {}",
                        plural(done, "byte"),
                        redact::text(&e.to_string())
                    ),
                    progressed: done > start,
                });
            }
        };
        file.write_all(&chunk)
            .map_err(|e| Failure::Fatal(io_step(&part.data, e)))?;
        done += chunk.len() as u64;
        if ticker.due() {
            cx.progress.advance(Count::new(done, total, Unit::Byte));
        }
    }
    file.flush()
        .map_err(|e| Failure::Fatal(io_step(&part.data, e)))?;
    cx.progress
        .advance(Count::new(done, total.max(done), Unit::Byte));
    if total > 0 && done != total {
        return Err(Failure::Retry {
            reason: format!(
                "{shown}: the body ended after {done} of {}",
                plural(total, "byte")
            ),
            progressed: done > start,
        });
    }
    Ok(())
}

fn transport_failure(shown: &str, e: ureq::Error) -> Failure {
    let text = redact::text(&e.to_string()).into_owned();
    match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => Failure::Retry {
            reason: format!("{shown}: {text}"),
            progressed: false,
        },
        _ => Failure::Fatal(StepError::new(format!("{shown}: {text}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 10-99/100"), (Some(10), Some(100)));
        assert_eq!(content_range("bytes */100"), (None, Some(100)));
        assert_eq!(content_range("bytes 0-9/*"), (Some(0), None));
        assert_eq!(content_range("junk"), (None, None));
    }

    #[test]
    fn states_and_if_range_values() {
        let h = Headers {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Mon, 01 Jan 2024 00:00:00 GMT".into()),
            content_length: Some(10),
            content_range: None,
        };
        assert_eq!(h.state().unwrap(), "etag \"abc\"");
        assert_eq!(h.if_range(), Some("\"abc\""));
        // A weak ETag keys the file but cannot resume it; the date can.
        let weak = Headers {
            etag: Some("W/\"abc\"".into()),
            ..h
        };
        assert_eq!(weak.if_range(), Some("Mon, 01 Jan 2024 00:00:00 GMT"));
        let dated = Headers {
            last_modified: Some("Tue, 02 Jan 2024 00:00:00 GMT".into()),
            content_range: Some("bytes 0-0/1234".into()),
            content_length: Some(1),
            ..Headers::default()
        };
        assert_eq!(
            dated.state().unwrap(),
            "last-modified Tue, 02 Jan 2024 00:00:00 GMT, length 1234"
        );
        assert!(Headers::default().state().is_none());
        assert!(Headers::default().if_range().is_none());
    }
}
