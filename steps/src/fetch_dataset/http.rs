//! fetch-dataset's HTTP download: streamed to a partial file in the store, resumed with `Range`
//! after a dropped connection (within one attempt of the step and across attempts), retried on
//! connection errors and 5xx, checked against the expected digests before it is used.

use sha2::Digest;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wf_engine::{RunContext, StepError};

use super::source::{Expected, url_file_name};
use super::{Ticker, io_step};

/// Attempts per download without progress; an attempt that received bytes resets the count, so a
/// long download over a flaky link keeps resuming.
const TRIES: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_secs(1);

enum Failure {
    /// Worth another try (connection errors, 5xx, a body cut short); `progressed`: bytes arrived.
    Retry {
        reason: String,
        progressed: bool,
    },
    Fatal(StepError),
}

/// Downloads `url`, resuming a partial download left by an earlier attempt, verifies it, and returns
/// the complete file (in the step's scratch directory).
pub(super) fn download(
    cx: &RunContext<'_>,
    url: &str,
    expected: &Expected,
) -> Result<PathBuf, StepError> {
    // The partial download lives in the store, not in scratch (removed after each attempt of the
    // step), named by the URL so a rerun finds it; `wf cache gc --older-than` clears abandoned ones.
    let dir = cx.store.derived_dir("fetch-dataset-downloads");
    fs::create_dir_all(&dir).map_err(|e| io_step(&dir, e))?;
    let id = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    let part = dir.join(format!("{id}.part"));
    let lock_path = dir.join(format!("{id}.lock"));
    // Two runs fetching one URL would interleave appends to one file.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_step(&lock_path, e))?;
    lock.lock().map_err(|e| io_step(&lock_path, e))?;

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(concat!("wf/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    cx.progress.message(&format!("downloading {url}"));
    let mut failures = 0;
    let mut reasons = Vec::new();
    loop {
        if cx.cancel.is_cancelled() {
            return Err(StepError::new("interrupted"));
        }
        match attempt(cx, &agent, url, &part) {
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
                        format!("downloading {url} failed after {TRIES} tries: {reason}"),
                        reasons.join("\n"),
                    ));
                }
                let delay = RETRY_DELAY * 2u32.pow(failures - 1);
                cx.progress
                    .message(&format!("{reason}; retrying in {} s", delay.as_secs_f32()));
                sleep_unless_cancelled(cx, delay)?;
            }
        }
    }
    if let Err(e) = expected.verify(&part, url, cx) {
        // Bad bytes must not be resumed from; the next attempt starts over.
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    let dest = cx.scratch_dir.join(url_file_name(url));
    if fs::rename(&part, &dest).is_err() {
        // Scratch on another file system than the store: copy instead.
        fs::copy(&part, &dest).map_err(|e| io_step(&dest, e))?;
        let _ = fs::remove_file(&part);
    }
    Ok(dest)
}

fn sleep_unless_cancelled(cx: &RunContext<'_>, d: Duration) -> Result<(), StepError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cx.cancel.is_cancelled() {
            return Err(StepError::new("interrupted"));
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
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

/// One request: resumes `part` when it has bytes and the server honours `Range`.
fn attempt(
    cx: &RunContext<'_>,
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
) -> Result<(), Failure> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| transport_failure(url, e))?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let restart = |reason: String| {
        let _ = fs::remove_file(part);
        Failure::Retry {
            reason,
            progressed: false,
        }
    };
    let (append, total) = match status {
        206 => {
            let (start, total) =
                header("content-range").map_or((None, None), |v| content_range(&v));
            if start != Some(have) {
                return Err(restart(format!(
                    "{url}: asked for bytes from {have}, the server sent a range from {start:?}"
                )));
            }
            (true, total)
        }
        200 => (
            false,
            header("content-length").and_then(|v| v.trim().parse().ok()),
        ),
        416 if have > 0 => {
            // Nothing past what we have: complete if the server agrees on the length.
            let (_, total) = header("content-range").map_or((None, None), |v| content_range(&v));
            if total == Some(have) {
                return Ok(());
            }
            return Err(restart(format!(
                "{url}: the partial download ({have} bytes) does not match the server's file ({total:?} bytes)"
            )));
        }
        400..=499 => {
            let reason = resp.status().canonical_reason().unwrap_or("");
            return Err(Failure::Fatal(StepError::new(format!(
                "{url}: HTTP {status} {reason}"
            ))));
        }
        _ => {
            return Err(Failure::Retry {
                reason: format!("{url}: HTTP {status}"),
                progressed: false,
            });
        }
    };
    let mut file = if append {
        File::options().append(true).open(part)
    } else {
        File::create(part)
    }
    .map_err(|e| Failure::Fatal(io_step(part, e)))?;
    let start = if append { have } else { 0 };
    let total = total.unwrap_or(0);
    let mut done = start;
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 256 << 10];
    let mut ticker = Ticker::new();
    loop {
        if cx.cancel.is_cancelled() {
            return Err(Failure::Fatal(StepError::new("interrupted")));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(Failure::Retry {
                    reason: format!("{url}: connection lost after {done} bytes: {e}"),
                    progressed: done > start,
                });
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| Failure::Fatal(io_step(part, e)))?;
        done += n as u64;
        if ticker.due() {
            cx.progress.advance(done, total);
        }
    }
    file.flush().map_err(|e| Failure::Fatal(io_step(part, e)))?;
    cx.progress.advance(done, total.max(done));
    if total > 0 && done != total {
        return Err(Failure::Retry {
            reason: format!("{url}: the body ended after {done} of {total} bytes"),
            progressed: done > start,
        });
    }
    Ok(())
}

fn transport_failure(url: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => Failure::Retry {
            reason: format!("{url}: {e}"),
            progressed: false,
        },
        e => Failure::Fatal(StepError::new(format!("{url}: {e}"))),
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
}
