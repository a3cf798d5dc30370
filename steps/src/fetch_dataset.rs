//! The `fetch-dataset` step: brings a data set in the MSD layout (dataset.json, imagesTr/, labelsTr/)
//! into the cache, from a local path or URL, or generates one.
//!
//! ```yaml
//! fetch: { uses: fetch-dataset,
//!          with: { source: https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar,
//!                  md5: 240a19d752f0d9e9101544901065d872 } }
//! ```
//! `source` is one of:
//! - a plain path (relative to the workflow file) or a `file://` URL: a directory in the MSD layout, a
//!   `.tar` / `.tar.gz` / `.tgz` archive, or a single file. Its *content* is part of the cache key
//!   (declared through `local_files`), so replacing the data reruns the step.
//! - an `https://` or `http://` URL: streamed to disk with resume (the partial download survives a
//!   failed attempt, and the next one asks for the rest with `Range`), retried on connection errors
//!   and 5xx. The URL and the checksums are the step's identity in the key — nothing else is known
//!   before downloading — so give `md5` or `sha256` to be sure the bytes are what you think.
//! - `s3://bucket/key`: with the `aws` feature (on in the `wf` binary), through the SDK (`wf-aws`):
//!   signed with the default credential chain when it has credentials, anonymous otherwise (public
//!   buckets); `AWS_ENDPOINT_URL` or `WF_S3_ENDPOINT` selects another endpoint (path style). Without
//!   the feature, public buckets only, fetched anonymously as `https://bucket.s3.amazonaws.com/key`
//!   (path style, `https://s3.amazonaws.com/bucket/key`, for bucket names with dots, which the
//!   wildcard certificate does not cover), `WF_S3_ENDPOINT` replacing the endpoint.
//! - `synthetic`: BraTS-like data from `wf_imaging::synth` (`cases`, `shape`, `seed`, `test`), the
//!   same generator as `wf synth`.
//!
//! `md5` / `sha256` are checked before the file is used; a mismatch fails the step. Archives are
//! extracted safely: absolute member paths, `..` components, links pointing out of the archive and
//! device or fifo members are refused, each naming the member. The data set's root is the directory
//! holding dataset.json (the MSD tar nests it in `Task01_BrainTumour/`); macOS `._*` files are
//! dropped. Every file dataset.json lists under `training` and `test` must exist.

use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use serde_json::Value as Json;
use sha2::Digest;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CheckContext, Diagnostics, ParamSpec, Params, RemoteTask, RunContext, Slots,
    Step, StepError,
};
use wf_imaging::ImagingError;
use wf_imaging::msd::{DATASET_JSON, MsdDataset};

pub struct FetchDataset;

static SHAPE: ParamType = ParamType::List(&ParamType::Int { min: 4, max: 4096 });

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "source",
        ParamType::Str,
        "a path (relative to the workflow file), file://, https://, http:// or s3://bucket/key URL, or `synthetic`",
    ),
    ParamSpec::optional(
        "md5",
        ParamType::Str,
        "\"\"",
        "expected MD5 of the downloaded or local file, 32 hex digits",
    ),
    ParamSpec::optional(
        "sha256",
        ParamType::Str,
        "\"\"",
        "expected SHA-256 of the downloaded or local file, 64 hex digits",
    ),
    ParamSpec::optional(
        "cases",
        ParamType::int_min(1),
        "8",
        "synthetic only: number of training cases",
    ),
    ParamSpec::optional(
        "shape",
        SHAPE,
        "[96,96,64]",
        "synthetic only: volume size [x, y, z]",
    ),
    ParamSpec::optional(
        "seed",
        ParamType::int_min(0),
        "0",
        "synthetic only: generator seed",
    ),
    ParamSpec::optional(
        "test",
        ParamType::int_min(0),
        "0",
        "synthetic only: number of unlabelled test cases (imagesTs/)",
    ),
];

/// Params that only mean something for `source: synthetic`.
const SYNTHETIC_ONLY: &[&str] = &["cases", "shape", "seed", "test"];

/// Attempts per download without progress; an attempt that received bytes resets the count, so a
/// long download over a flaky link keeps resuming.
const TRIES: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
struct FetchParams {
    source: String,
    md5: String,
    sha256: String,
    cases: usize,
    shape: Vec<usize>,
    seed: u64,
    test: usize,
}

fn decode(params: &Params) -> Result<FetchParams, StepError> {
    params
        .decode()
        .map_err(|e| StepError::new(format!("invalid params: {e}")))
}

/// Where the data comes from, parsed from `source`.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A local path as written: relative to the workflow directory, or absolute.
    Local(String),
    Http(String),
    S3 {
        bucket: String,
        key: String,
    },
    Synthetic,
}

const SOURCE_HELP: &str =
    "use a path, file:///abs/path, https://..., http://..., s3://bucket/key, or `synthetic`";

fn parse_source(s: &str) -> Result<Source, String> {
    if s == "synthetic" {
        return Ok(Source::Synthetic);
    }
    if s.trim().is_empty() {
        return Err("is empty".into());
    }
    let Some((scheme, rest)) = split_scheme(s) else {
        return Ok(Source::Local(s.to_string()));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            // `file://localhost/x` and `file:///x` name the same file; anything else after `//` is
            // taken as a path relative to the workflow, which is what people mean by `file://data/x`.
            let path = match rest.strip_prefix("localhost") {
                Some(p) if p.starts_with('/') => p,
                _ => rest,
            };
            let path = percent_decode(path).ok_or("has a malformed %-escape")?;
            if path.is_empty() {
                return Err("names no file".into());
            }
            Ok(Source::Local(path))
        }
        "http" | "https" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() {
                return Err("has no host".into());
            }
            Ok(Source::Http(s.to_string()))
        }
        "s3" => {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() {
                return Err("must be s3://bucket/key".into());
            }
            Ok(Source::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })
        }
        other => Err(format!("has an unknown URL scheme `{other}://`")),
    }
}

/// `scheme://rest`, where scheme is a valid URL scheme; anything else is a path.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)))
        .then_some((scheme, rest))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The anonymous HTTPS URL of a public S3 object (see the module docs).
#[cfg_attr(feature = "aws", allow(dead_code))]
fn s3_url(bucket: &str, key: &str, endpoint: Option<&str>) -> String {
    let key: String = key
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect();
    match endpoint {
        Some(e) => format!("{}/{bucket}/{key}", e.trim_end_matches('/')),
        None if bucket.contains('.') => format!("https://s3.amazonaws.com/{bucket}/{key}"),
        None => format!("https://{bucket}.s3.amazonaws.com/{key}"),
    }
}

/// Expected digests, lower-case hex; empty when not given.
struct Expected {
    md5: String,
    sha256: String,
}

impl Expected {
    fn from(p: &FetchParams) -> Result<Self, StepError> {
        for (name, value, len) in [("md5", &p.md5, 32), ("sha256", &p.sha256, 64)] {
            if let Some(why) = hex_problem(value, len) {
                return Err(StepError::new(format!("`{name}` {why}")));
            }
        }
        Ok(Expected {
            md5: p.md5.to_ascii_lowercase(),
            sha256: p.sha256.to_ascii_lowercase(),
        })
    }

    fn any(&self) -> bool {
        !self.md5.is_empty() || !self.sha256.is_empty()
    }

    /// Reads `file` once, computing only the digests that were asked for.
    fn verify(&self, file: &Path, what: &str, cx: &RunContext<'_>) -> Result<(), StepError> {
        if !self.any() {
            return Ok(());
        }
        cx.progress.message(&format!("verifying {what}"));
        let mut f = File::open(file).map_err(|e| io_step(file, e))?;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut md5 = (!self.md5.is_empty()).then(md5::Md5::new);
        let mut sha = (!self.sha256.is_empty()).then(sha2::Sha256::new);
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        let mut ticker = Ticker::new();
        loop {
            if cx.cancel.is_cancelled() {
                return Err(StepError::new("interrupted"));
            }
            let n = f.read(&mut buf).map_err(|e| io_step(file, e))?;
            if n == 0 {
                break;
            }
            if let Some(h) = md5.as_mut() {
                h.update(&buf[..n]);
            }
            if let Some(h) = sha.as_mut() {
                h.update(&buf[..n]);
            }
            done += n as u64;
            if ticker.due() {
                cx.progress.advance(done, total);
            }
        }
        let checks = [
            ("md5", &self.md5, md5.map(|h| hex::encode(h.finalize()))),
            (
                "sha256",
                &self.sha256,
                sha.map(|h| hex::encode(h.finalize())),
            ),
        ];
        for (name, expected, actual) in checks {
            if let Some(actual) = actual
                && actual != *expected
            {
                return Err(StepError::new(format!(
                    "{what}: {name} mismatch: expected {expected}, actual {actual}"
                )));
            }
        }
        Ok(())
    }
}

/// Why `value` is not `len` hex digits (`None`: fine, or empty = not given).
fn hex_problem(value: &str, len: usize) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if !value.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(format!(
            "must be {len} hex digits, found `{value}` (not hex)"
        ));
    }
    (value.len() != len).then(|| {
        format!(
            "must be {len} hex digits, found {} in `{value}`",
            value.len()
        )
    })
}

fn io_step(path: &Path, e: io::Error) -> StepError {
    StepError::new(format!("{}: {e}", path.display()))
}

/// Rate-limits progress events: the reporter needs a few per second, not one per buffer.
struct Ticker(Instant);
impl Ticker {
    fn new() -> Self {
        Ticker(Instant::now())
    }
    fn due(&mut self) -> bool {
        if self.0.elapsed() >= Duration::from_millis(250) {
            self.0 = Instant::now();
            true
        } else {
            false
        }
    }
}

impl Step for FetchDataset {
    fn kind(&self) -> &'static str {
        "fetch-dataset"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "bring an MSD-layout data set in from a path, URL or s3:// (checksummed, safely extracted), or generate one"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(&[])
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        ArtifactType::Dataset
    }

    fn check(&self, params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        let step = cx.step_id;
        for (name, len) in [("md5", 32), ("sha256", 64)] {
            let value = params.get(name).and_then(Json::as_str).unwrap_or("");
            if let Some(why) = hex_problem(value, len) {
                diags.error(
                    params.span_of(name),
                    format!("step `{step}`: `{name}` {why}"),
                );
            }
        }
        let Some(src) = params.get("source").and_then(Json::as_str) else {
            return;
        };
        let at = params.span_of("source");
        let source = match parse_source(src) {
            Ok(s) => s,
            Err(why) => {
                diags.error_with_help(
                    at,
                    format!("step `{step}`: source `{src}` {why}"),
                    SOURCE_HELP,
                );
                return;
            }
        };
        if source != Source::Synthetic {
            for name in SYNTHETIC_ONLY {
                if params.node(name).is_some() {
                    diags.error(
                        params.span_of(name),
                        format!("step `{step}`: `{name}` applies only to `source: synthetic`"),
                    );
                }
            }
        }
        let checksummed: Vec<&str> = ["md5", "sha256"]
            .into_iter()
            .filter(|n| {
                params
                    .get(n)
                    .and_then(Json::as_str)
                    .is_some_and(|v| !v.is_empty())
            })
            .collect();
        match source {
            Source::Synthetic => {
                for name in checksummed {
                    diags.error(
                        params.span_of(name),
                        format!("step `{step}`: `{name}` checks a downloaded or local file; `source: synthetic` has none"),
                    );
                }
                if let Some(n) = params.get("shape").and_then(Json::as_array).map(Vec::len)
                    && n != 3
                {
                    diags.error(
                        params.span_of("shape"),
                        format!("step `{step}`: `shape` must list 3 sizes [x, y, z], found {n}"),
                    );
                }
            }
            Source::Local(path) => {
                let full = cx.workflow_dir.join(&path);
                if !full.exists() {
                    diags.error(
                        at,
                        format!(
                            "step `{step}`: source `{path}` does not exist (paths are relative to the workflow file)"
                        ),
                    );
                } else if full.is_dir() {
                    for name in checksummed {
                        diags.error(
                            params.span_of(name),
                            format!("step `{step}`: `{name}` checks a file, but source `{path}` is a directory"),
                        );
                    }
                }
            }
            Source::Http(_) | Source::S3 { .. } => {}
        }
    }

    /// A local source's content is part of the key: the engine hashes the file or directory (with
    /// its memo), so replacing the data under the same path is a miss. Absolute paths are declared
    /// too — the engine resolves them as they are — since a key blind to them would serve stale data.
    fn local_files(&self, params: &Params) -> Vec<String> {
        let source = params.get("source").and_then(Json::as_str).unwrap_or("");
        match parse_source(source) {
            Ok(Source::Local(path)) => vec![path],
            _ => Vec::new(),
        }
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let p = decode(cx.params)?;
        let source = parse_source(&p.source)
            .map_err(|why| StepError::new(format!("source `{}` {why}", p.source)))?;
        let expected = Expected::from(&p)?;
        match source {
            Source::Synthetic => synthesize(cx, &p)?,
            Source::Local(path) => {
                let full = cx.workflow_dir.join(&path);
                let meta = fs::metadata(&full).map_err(|e| {
                    StepError::new(format!("source `{path}` ({}): {e}", full.display()))
                })?;
                if meta.is_dir() {
                    if expected.any() {
                        return Err(StepError::new(format!(
                            "`md5`/`sha256` check a file, but source `{path}` is a directory"
                        )));
                    }
                    let root = find_msd_root(&full)?.ok_or_else(|| no_dataset_json(&path))?;
                    cx.progress.message(&format!("copying {}", root.display()));
                    place(&root, cx.out_dir, Mode::Copy, None, 0)?;
                } else {
                    expected.verify(&full, &format!("source `{path}`"), cx)?;
                    let name = file_name(&path);
                    unpack(cx, &full, &name, Mode::Copy, &path)?;
                }
            }
            Source::Http(url) => {
                let file = download(cx, &url, &expected)?;
                unpack(cx, &file, &url_file_name(&url), Mode::Move, &url)?;
            }
            #[cfg(feature = "aws")]
            Source::S3 { bucket, key } => {
                let what = format!("s3://{bucket}/{key}");
                let dst = cx.scratch_dir.join("download").join(url_file_name(&key));
                cx.progress.message(&format!("downloading {what}"));
                wf_aws::s3::fetch_object(&bucket, &key, &dst).map_err(|e| {
                    StepError::with_detail(
                        e.to_string(),
                        "s3:// sources are read with the default AWS credentials when there are any, \
                         anonymously otherwise (public buckets); AWS_ENDPOINT_URL or WF_S3_ENDPOINT \
                         selects another endpoint",
                    )
                })?;
                expected.verify(&dst, &what, cx)?;
                unpack(cx, &dst, &url_file_name(&key), Mode::Move, &what)?;
            }
            #[cfg(not(feature = "aws"))]
            Source::S3 { bucket, key } => {
                let endpoint = std::env::var("WF_S3_ENDPOINT")
                    .ok()
                    .filter(|e| !e.is_empty());
                let url = s3_url(&bucket, &key, endpoint.as_deref());
                let file = download(cx, &url, &expected).map_err(|e| {
                    let hint = "s3:// sources are fetched anonymously: only public buckets work until the `aws/` crate adds signed requests";
                    StepError::with_detail(
                        format!("s3://{bucket}/{key}: {}", e.message),
                        match e.detail {
                            Some(d) => format!("{d}\n{hint}"),
                            None => hint.to_string(),
                        },
                    )
                })?;
                unpack(
                    cx,
                    &file,
                    &url_file_name(&url),
                    Mode::Move,
                    &format!("s3://{bucket}/{key}"),
                )?;
            }
        }
        let (training, test) = validate_layout(cx.out_dir)?;
        cx.progress
            .message(&format!("{training} training cases, {test} test cases"));
        Ok(())
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }
}

fn synthesize(cx: &RunContext<'_>, p: &FetchParams) -> Result<(), StepError> {
    let shape: [usize; 3] = p.shape.as_slice().try_into().map_err(|_| {
        StepError::new(format!(
            "`shape` must list 3 sizes [x, y, z], found {}",
            p.shape.len()
        ))
    })?;
    cx.progress.message(&format!(
        "generating {} synthetic cases of {shape:?} (seed {})",
        p.cases, p.seed
    ));
    let opts = wf_imaging::synth::SynthOptions {
        cases: p.cases,
        test: p.test,
        shape,
        seed: p.seed,
        threads: cx.threads,
        ..Default::default()
    };
    wf_imaging::synth::generate_with(cx.out_dir, &opts)
        .map_err(|e| StepError::new(format!("synthetic data: {e}")))?;
    Ok(())
}

fn no_dataset_json(what: &str) -> StepError {
    StepError::new(format!(
        "{what}: no dataset.json found, so this is not a data set in the MSD layout (dataset.json, imagesTr/, labelsTr/)"
    ))
}

/// The last path component, for telling archives apart by name.
fn file_name(path: &str) -> String {
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source".into())
}

/// A safe local file name from a URL's last path segment.
fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or("");
    let last = percent_decode(last).unwrap_or_else(|| last.to_string());
    let safe: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') {
        "download".into()
    } else {
        safe
    }
}

// ---------------------------------------------------------------------------------------------
// Download

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
fn download(cx: &RunContext<'_>, url: &str, expected: &Expected) -> Result<PathBuf, StepError> {
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

// ---------------------------------------------------------------------------------------------
// Archives

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Tar,
    TarGz,
    Single,
}

fn is_tar_header(h: &[u8]) -> bool {
    h.len() >= 262 && &h[257..262] == b"ustar"
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// By name first; a URL may carry no telling name, so then by content.
fn archive_kind(name: &str, path: &Path) -> io::Result<Kind> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".tar") {
        return Ok(Kind::Tar);
    }
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        return Ok(Kind::TarGz);
    }
    let mut head = [0u8; 512];
    let n = read_full(&mut File::open(path)?, &mut head)?;
    if is_tar_header(&head[..n]) {
        return Ok(Kind::Tar);
    }
    if head[..n].starts_with(&[0x1f, 0x8b]) {
        let mut inner = [0u8; 512];
        let mut gz = MultiGzDecoder::new(File::open(path)?);
        if let Ok(k) = read_full(&mut gz, &mut inner)
            && is_tar_header(&inner[..k])
        {
            return Ok(Kind::TarGz);
        }
    }
    Ok(Kind::Single)
}

/// Puts a fetched file into `out_dir`: an archive is extracted and its MSD root moved there, any
/// other file is placed as it is.
fn unpack(
    cx: &RunContext<'_>,
    file: &Path,
    name: &str,
    mode: Mode,
    what: &str,
) -> Result<(), StepError> {
    let kind = archive_kind(name, file).map_err(|e| io_step(file, e))?;
    if kind == Kind::Single {
        let dest = cx.out_dir.join(file_name(name));
        return transfer(file, &dest, mode);
    }
    let scratch = cx.scratch_dir.join("extract");
    fs::create_dir_all(&scratch).map_err(|e| io_step(&scratch, e))?;
    cx.progress.message(&format!("extracting {what}"));
    extract(cx, file, kind == Kind::TarGz, &scratch, what)?;
    let confine = fs::canonicalize(&scratch).map_err(|e| io_step(&scratch, e))?;
    // Links first, while every target is still where the archive put it, and before anything
    // (dataset.json included) is read through one.
    resolve_links(&scratch, &scratch, &confine)?;
    let root = find_msd_root(&scratch)?.ok_or_else(|| no_dataset_json(what))?;
    place(&root, cx.out_dir, Mode::Move, Some(&confine), 0)
}

/// Replaces each symbolic link under `dir` by a copy of the file it points to, refusing links that
/// resolve outside `confine` (the canonical extraction directory) — including those that only
/// escape through another link, which the check on the link's text cannot see — and links to
/// directories.
fn resolve_links(dir: &Path, base: &Path, confine: &Path) -> Result<(), StepError> {
    for e in read_dir_sorted(dir)? {
        let p = e.path();
        let ft = e.file_type().map_err(|err| io_step(&p, err))?;
        if ft.is_dir() {
            resolve_links(&p, base, confine)?;
            continue;
        }
        if !ft.is_symlink() {
            continue;
        }
        let member = p.strip_prefix(base).unwrap_or(&p).display().to_string();
        let target = fs::canonicalize(&p).map_err(|err| {
            StepError::new(format!("archive member `{member}` is a broken link: {err}"))
        })?;
        if !target.starts_with(confine) {
            return Err(StepError::new(format!(
                "refusing archive member `{member}`: a link to outside the archive"
            )));
        }
        let meta = fs::metadata(&target).map_err(|err| io_step(&target, err))?;
        if !meta.is_file() {
            // A directory link would be copied as a tree: a few links to `.` make that grow
            // exponentially. Data sets have no need for them.
            return Err(StepError::new(format!(
                "refusing archive member `{member}`: a link to a directory or special file"
            )));
        }
        fs::remove_file(&p).map_err(|err| io_step(&p, err))?;
        fs::copy(&target, &p).map_err(|err| io_step(&target, err))?;
    }
    Ok(())
}

/// Counts the bytes read through it, for progress over the compressed archive.
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}
impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// Why a member path may not be extracted.
fn member_path_problem(path: &Path) -> Option<&'static str> {
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Some("absolute paths are not allowed");
            }
            Component::ParentDir => return Some("`..` components are not allowed"),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    None
}

/// Whether a symbolic link at `member` pointing to `target` stays inside the archive, judged by
/// its text (links through earlier links are caught when the tree is placed, by canonical path).
fn link_escapes(member: &Path, target: &Path) -> bool {
    if target.has_root() {
        return true;
    }
    let mut depth: usize = member.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for c in target.components() {
        match c {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

fn extract(
    cx: &RunContext<'_>,
    archive: &Path,
    gz: bool,
    dest: &Path,
    what: &str,
) -> Result<(), StepError> {
    let file = File::open(archive).map_err(|e| io_step(archive, e))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    let counted = Counting {
        inner: BufReader::with_capacity(1 << 20, file),
        n: read.clone(),
    };
    let reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.set_unpack_xattrs(false);
    let corrupt = |e: io::Error| StepError::new(format!("{what}: not a readable tar archive: {e}"));
    let mut ticker = Ticker::new();
    for entry in ar.entries().map_err(corrupt)? {
        if cx.cancel.is_cancelled() {
            return Err(StepError::new("interrupted"));
        }
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        let shown = path.display().to_string();
        let refuse = |why: String| {
            StepError::new(format!("{what}: refusing archive member `{shown}`: {why}"))
        };
        if let Some(why) = member_path_problem(&path) {
            return Err(refuse(why.into()));
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::GNUSparse | T::Directory => {}
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .unwrap_or_default()
                    .into_owned();
                if link_escapes(&path, &target) {
                    return Err(refuse(format!(
                        "a symbolic link to `{}`, outside the archive",
                        target.display()
                    )));
                }
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .unwrap_or_default()
                    .into_owned();
                if let Some(why) = member_path_problem(&target) {
                    return Err(refuse(format!(
                        "a hard link to `{}`: {why}",
                        target.display()
                    )));
                }
            }
            T::Char | T::Block => return Err(refuse("device files are not allowed".into())),
            T::Fifo => return Err(refuse("fifos are not allowed".into())),
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => return Err(refuse(format!("unsupported member type {other:?}"))),
        }
        if path.components().all(|c| c == Component::CurDir) {
            continue;
        }
        // unpack_in re-checks, by canonical path, that nothing is written through a link out of `dest`.
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(refuse("its path leaves the archive".into())),
            Err(e) => return Err(refuse(e.to_string())),
        }
        if ticker.due() {
            cx.progress.advance(read.load(Ordering::Relaxed), total);
        }
    }
    cx.progress.advance(total, total);
    Ok(())
}

/// macOS metadata that archives made on a Mac carry next to every file.
fn is_junk(name: &str) -> bool {
    name.starts_with("._") || name == "__MACOSX" || name == ".DS_Store"
}

/// The shallowest directory (up to 3 levels down) holding a dataset.json; two at the same depth are
/// ambiguous.
fn find_msd_root(dir: &Path) -> Result<Option<PathBuf>, StepError> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..4 {
        let found: Vec<&PathBuf> = level
            .iter()
            .filter(|d| d.join("dataset.json").is_file())
            .collect();
        match found.as_slice() {
            [] => {}
            [one] => return Ok(Some((*one).clone())),
            many => {
                return Err(StepError::new(format!(
                    "more than one data set (dataset.json) found: {}",
                    many.iter()
                        .map(|d| d.strip_prefix(dir).unwrap_or(d).display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut next = Vec::new();
        for d in &level {
            for e in read_dir_sorted(d)? {
                let name = e.file_name().to_string_lossy().into_owned();
                if !is_junk(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    Ok(None)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<fs::DirEntry>, StepError> {
    let mut v = fs::read_dir(dir)
        .and_then(|it| it.collect::<io::Result<Vec<_>>>())
        .map_err(|e| io_step(dir, e))?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The source is ours (extracted, downloaded): rename.
    Move,
    /// The source is the user's: copy. (Never hard links: the store makes committed files
    /// read-only, which would reach through a link into the user's data.)
    Copy,
}

fn transfer(from: &Path, to: &Path, mode: Mode) -> Result<(), StepError> {
    if mode == Mode::Move && fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(|e| io_step(from, e))?;
    Ok(())
}

/// Fills `dst` with the tree under `src`, minus macOS junk. Links are replaced by what they point
/// to; with `confine`, a link resolving outside it is refused (the archive case).
fn place(
    src: &Path,
    dst: &Path,
    mode: Mode,
    confine: Option<&Path>,
    depth: usize,
) -> Result<(), StepError> {
    if depth > 64 {
        return Err(StepError::new(format!(
            "{}: directories nested too deep (a link loop?)",
            src.display()
        )));
    }
    for e in read_dir_sorted(src)? {
        let name = e.file_name();
        if is_junk(&name.to_string_lossy()) {
            continue;
        }
        let from = e.path();
        let to = dst.join(&name);
        let ft = e.file_type().map_err(|err| io_step(&from, err))?;
        let (from, ft, mode) = if ft.is_symlink() {
            let target = fs::canonicalize(&from)
                .map_err(|err| StepError::new(format!("{}: broken link: {err}", from.display())))?;
            if let Some(root) = confine
                && !target.starts_with(root)
            {
                return Err(StepError::new(format!(
                    "refusing archive member `{}`: a link to outside the archive",
                    from.strip_prefix(root).unwrap_or(&from).display()
                )));
            }
            let meta = fs::metadata(&target).map_err(|err| io_step(&target, err))?;
            // The target may be placed elsewhere too, so it is copied, never moved.
            (target, meta.file_type(), Mode::Copy)
        } else {
            (from, ft, mode)
        };
        if ft.is_dir() {
            fs::create_dir_all(&to).map_err(|err| io_step(&to, err))?;
            place(&from, &to, mode, confine, depth + 1)?;
        } else if ft.is_file() {
            transfer(&from, &to, mode)?;
        } else {
            return Err(StepError::new(format!(
                "{}: not a regular file or directory",
                from.display()
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MSD layout

/// Checks `root` against its dataset.json (`wf_imaging::msd`); returns (training, test) case counts.
fn validate_layout(root: &Path) -> Result<(usize, usize), StepError> {
    let path = root.join(DATASET_JSON);
    let bytes = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(no_dataset_json("the fetched data"));
        }
        Err(e) => return Err(io_step(&path, e)),
    };
    // Named by its file name: the staging path it lies in means nothing to the user.
    let ds = MsdDataset::from_slice(&bytes, DATASET_JSON).map_err(layout_error)?;
    ds.check_layout(root).map_err(layout_error)?;
    Ok((ds.training.len(), ds.test.len()))
}

/// The message; for missing files, every one of them in the detail.
fn layout_error(e: ImagingError) -> StepError {
    match &e {
        ImagingError::MsdMissing { missing, .. } => StepError::with_detail(
            e.to_string(),
            missing
                .iter()
                .map(|(entry, path)| format!("{entry}: {path}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => StepError::new(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wf_engine::step::{CancelToken, NoProgress};
    use wf_engine::store::Staging;
    use wf_engine::{LoadError, Store};

    /// Params as the engine makes them: defaults filled in.
    pub(super) fn params(values: &[(&str, Json)]) -> Params {
        Params::with_defaults(
            PARAMS,
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    struct Ran {
        result: Result<(), StepError>,
        staging: Staging,
        _store: Store,
        _cache: tempfile::TempDir,
    }

    fn run(wf_dir: &Path, values: &[(&str, Json)]) -> Ran {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let staging = store.stage("fetch").unwrap();
        let params = params(values);
        let cancel = CancelToken::default();
        let cx = RunContext {
            step_id: "fetch",
            workflow_dir: wf_dir,
            params: &params,
            inputs: &BTreeMap::new(),
            out_dir: &staging.out,
            scratch_dir: &staging.scratch,
            log_path: &staging.log,
            seed: 0,
            threads: 2,
            local_files: &BTreeMap::new(),
            cancel: &cancel,
            progress: &NoProgress,
            store: &store,
        };
        let result = FetchDataset.run(&cx);
        Ran {
            result,
            staging,
            _store: store,
            _cache: cache,
        }
    }

    /// A tiny MSD tree: 2 training cases, 1 test case, plus macOS junk.
    fn msd_tree(dir: &Path) {
        for sub in ["imagesTr", "labelsTr", "imagesTs"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for i in 1..=2 {
            fs::write(
                dir.join(format!("imagesTr/BRATS_00{i}.nii.gz")),
                format!("img{i}"),
            )
            .unwrap();
            fs::write(
                dir.join(format!("labelsTr/BRATS_00{i}.nii.gz")),
                format!("lbl{i}"),
            )
            .unwrap();
        }
        fs::write(dir.join("imagesTs/BRATS_003.nii.gz"), "test3").unwrap();
        fs::write(dir.join("imagesTr/._BRATS_001.nii.gz"), "mac").unwrap();
        fs::write(
            dir.join("dataset.json"),
            serde_json::json!({
                "name": "BRATS", "numTraining": 2, "numTest": 1,
                "training": [
                    {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
                    {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}],
                "test": ["./imagesTs/BRATS_003.nii.gz"]
            })
            .to_string(),
        )
        .unwrap();
    }

    fn assert_msd(out: &Path) {
        assert!(out.join("dataset.json").is_file());
        assert_eq!(
            fs::read_to_string(out.join("imagesTr/BRATS_002.nii.gz")).unwrap(),
            "img2"
        );
        assert_eq!(
            fs::read_to_string(out.join("labelsTr/BRATS_001.nii.gz")).unwrap(),
            "lbl1"
        );
        assert!(out.join("imagesTs/BRATS_003.nii.gz").is_file());
        assert!(
            !out.join("imagesTr/._BRATS_001.nii.gz").exists(),
            "macOS junk is dropped"
        );
    }

    /// A tar.gz of an MSD tree nested in `Task01_BrainTumour/`, as the real one is.
    fn msd_tar_gz(path: &Path) {
        let t = tempfile::tempdir().unwrap();
        msd_tree(&t.path().join("Task01_BrainTumour"));
        let gz =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        b.append_dir_all("Task01_BrainTumour", t.path().join("Task01_BrainTumour"))
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }

    /// A tar with one raw member whose name and link bypass tar::Builder's own path checks.
    fn raw_tar(path: &Path, name: &str, kind: tar::EntryType, link: Option<&str>) {
        raw_tar_n(path, &[(name, kind, link)]);
    }

    fn raw_tar_n(path: &Path, members: &[(&str, tar::EntryType, Option<&str>)]) {
        let t = tempfile::tempdir().unwrap();
        msd_tree(t.path());
        let mut b = tar::Builder::new(File::create(path).unwrap());
        b.append_dir_all(".", t.path()).unwrap();
        for &(name, kind, link) in members {
            raw_member(&mut b, name, kind, link);
        }
        b.finish().unwrap();
    }

    fn raw_member(
        b: &mut tar::Builder<File>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"evil"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn err(r: &Ran) -> String {
        let e = r.result.as_ref().expect_err("the step should fail");
        format!("{}\n{}", e.message, e.detail.clone().unwrap_or_default())
    }

    #[test]
    fn sources_parse() {
        assert_eq!(parse_source("synthetic"), Ok(Source::Synthetic));
        assert_eq!(
            parse_source("data/x.tar"),
            Ok(Source::Local("data/x.tar".into()))
        );
        assert_eq!(
            parse_source("file:///d/a%20b.tar"),
            Ok(Source::Local("/d/a b.tar".into()))
        );
        assert_eq!(
            parse_source("file://localhost/d/x"),
            Ok(Source::Local("/d/x".into()))
        );
        assert_eq!(
            parse_source("file://rel/x"),
            Ok(Source::Local("rel/x".into()))
        );
        assert_eq!(
            parse_source("HTTPS://h/x.tar"),
            Ok(Source::Http("HTTPS://h/x.tar".into()))
        );
        assert_eq!(
            parse_source("s3://b/k/x.tar"),
            Ok(Source::S3 {
                bucket: "b".into(),
                key: "k/x.tar".into()
            })
        );
        assert!(parse_source("s3://b").is_err());
        assert!(parse_source("https:///x").is_err());
        assert!(parse_source("ftp://h/x").unwrap_err().contains("`ftp://`"));
        assert!(parse_source("").is_err());
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            s3_url("b", "k/a b.tar", None),
            "https://b.s3.amazonaws.com/k/a%20b.tar"
        );
        assert_eq!(s3_url("my.b", "k", None), "https://s3.amazonaws.com/my.b/k");
        assert_eq!(
            s3_url("b", "k", Some("http://127.0.0.1:9/")),
            "http://127.0.0.1:9/b/k"
        );
    }

    #[test]
    fn url_names_are_safe() {
        assert_eq!(url_file_name("https://h/a/Task01.tar?x=1"), "Task01.tar");
        assert_eq!(url_file_name("https://h/a/..%2F..%2Fx"), ".._.._x");
        assert_eq!(url_file_name("https://h/"), "download");
        assert_eq!(url_file_name("https://h/.."), "download");
    }

    #[test]
    fn links_are_judged_by_where_they_point() {
        assert!(!link_escapes(Path::new("a/b/l"), Path::new("../c")));
        assert!(!link_escapes(Path::new("a/l"), Path::new("..")));
        assert!(link_escapes(Path::new("a/l"), Path::new("../..")));
        assert!(link_escapes(Path::new("l"), Path::new("/etc/passwd")));
        assert!(link_escapes(Path::new("./l"), Path::new("x/../../y")));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 10-99/100"), (Some(10), Some(100)));
        assert_eq!(content_range("bytes */100"), (None, Some(100)));
        assert_eq!(content_range("bytes 0-9/*"), (Some(0), None));
        assert_eq!(content_range("junk"), (None, None));
    }

    #[test]
    fn a_directory_source_is_copied() {
        let wf = tempfile::tempdir().unwrap();
        msd_tree(&wf.path().join("data/Task01"));
        let r = run(wf.path(), &[("source", "data".into())]);
        r.result.as_ref().unwrap();
        assert_msd(&r.staging.out);
        // Copied, never linked: the user's files stay theirs.
        assert!(
            wf.path()
                .join("data/Task01/imagesTr/._BRATS_001.nii.gz")
                .exists()
        );
    }

    #[test]
    fn a_file_url_tar_gz_is_extracted_and_checked() {
        let wf = tempfile::tempdir().unwrap();
        let tar = wf.path().join("Task01.tar.gz");
        msd_tar_gz(&tar);
        let bytes = fs::read(&tar).unwrap();
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        let md5 = hex::encode(md5::Md5::digest(&bytes));
        let url = format!("file://{}", tar.display());
        let r = run(
            wf.path(),
            &[
                ("source", url.clone().into()),
                ("sha256", sha.to_uppercase().into()),
                ("md5", md5.clone().into()),
            ],
        );
        r.result.as_ref().unwrap();
        assert_msd(&r.staging.out);

        let wrong = "0".repeat(32);
        let r = run(
            wf.path(),
            &[
                ("source", "Task01.tar.gz".into()),
                ("md5", wrong.clone().into()),
            ],
        );
        let e = err(&r);
        assert!(
            e.contains(&format!("md5 mismatch: expected {wrong}, actual {md5}")),
            "{e}"
        );
    }

    #[test]
    fn a_plain_tar_without_a_telling_name_is_sniffed() {
        let wf = tempfile::tempdir().unwrap();
        let t = tempfile::tempdir().unwrap();
        msd_tree(t.path());
        let mut b = tar::Builder::new(File::create(wf.path().join("blob")).unwrap());
        b.append_dir_all(".", t.path()).unwrap();
        b.finish().unwrap();
        drop(b);
        let r = run(wf.path(), &[("source", "blob".into())]);
        r.result.as_ref().unwrap();
        assert_msd(&r.staging.out);
    }

    #[test]
    fn hostile_archives_are_refused() {
        use tar::EntryType as T;
        let cases: &[(&str, T, Option<&str>, &str)] = &[
            ("../evil", T::Regular, None, "`..` components"),
            ("imagesTr/../../evil", T::Regular, None, "`..` components"),
            ("/tmp/wf-evil-abs", T::Regular, None, "absolute paths"),
            (
                "escape",
                T::Symlink,
                Some("../../outside"),
                "outside the archive",
            ),
            (
                "abs-link",
                T::Symlink,
                Some("/etc/passwd"),
                "outside the archive",
            ),
            ("hard", T::Link, Some("../x"), "a hard link"),
            ("hard-abs", T::Link, Some("/etc/passwd"), "a hard link"),
            ("dev", T::Char, None, "device files"),
            ("pipe", T::Fifo, None, "fifos"),
            (
                "imagesTr/up",
                T::Symlink,
                Some(".."),
                "a link to a directory",
            ),
        ];
        for (name, kind, link, why) in cases {
            let wf = tempfile::tempdir().unwrap();
            raw_tar(&wf.path().join("x.tar"), name, *kind, *link);
            let r = run(wf.path(), &[("source", "x.tar".into())]);
            let e = err(&r);
            assert!(
                e.contains(&format!("refusing archive member `{name}`")),
                "{name}: {e}"
            );
            assert!(e.contains(why), "{name}: {e}");
            assert!(!wf.path().parent().unwrap().join("evil").exists());
        }
        assert!(!Path::new("/tmp/wf-evil-abs").exists());
    }

    #[test]
    fn a_link_escaping_through_another_link_is_refused() {
        use tar::EntryType as T;
        let wf = tempfile::tempdir().unwrap();
        // `a/l/m` looks like `a/m` by its text, but `a/l` is the root, so `m` lands beside `a`,
        // pointing above the extraction directory.
        raw_tar_n(
            &wf.path().join("x.tar"),
            &[
                ("a/", T::Directory, None),
                ("a/l", T::Symlink, Some("..")),
                ("a/l/m", T::Symlink, Some("..")),
            ],
        );
        let e = err(&run(wf.path(), &[("source", "x.tar".into())]));
        assert!(
            e.contains("refusing archive member `a/l`")
                || e.contains("refusing archive member `m`"),
            "{e}"
        );
    }

    #[test]
    fn a_link_inside_the_archive_is_materialized() {
        let wf = tempfile::tempdir().unwrap();
        raw_tar(
            &wf.path().join("x.tar"),
            "imagesTr/alias.nii.gz",
            tar::EntryType::Symlink,
            Some("BRATS_001.nii.gz"),
        );
        let r = run(wf.path(), &[("source", "x.tar".into())]);
        r.result.as_ref().unwrap();
        let alias = r.staging.out.join("imagesTr/alias.nii.gz");
        assert!(
            !fs::symlink_metadata(&alias)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(alias).unwrap(), "img1");
    }

    #[test]
    fn a_missing_listed_file_is_named() {
        let wf = tempfile::tempdir().unwrap();
        msd_tree(wf.path());
        fs::remove_file(wf.path().join("labelsTr/BRATS_002.nii.gz")).unwrap();
        let r = run(wf.path(), &[("source", ".".into())]);
        let e = err(&r);
        assert!(
            e.contains("training[1].label: ./labelsTr/BRATS_002.nii.gz"),
            "{e}"
        );
    }

    #[test]
    fn num_training_must_match() {
        let wf = tempfile::tempdir().unwrap();
        msd_tree(wf.path());
        let ds = fs::read_to_string(wf.path().join("dataset.json")).unwrap();
        fs::write(
            wf.path().join("dataset.json"),
            ds.replace("\"numTraining\":2", "\"numTraining\":3"),
        )
        .unwrap();
        let e = err(&run(wf.path(), &[("source", ".".into())]));
        assert!(e.contains("numTraining is 3"), "{e}");
    }

    #[test]
    fn data_without_dataset_json_is_not_a_dataset() {
        let wf = tempfile::tempdir().unwrap();
        fs::write(wf.path().join("x.nii.gz"), "x").unwrap();
        let e = err(&run(wf.path(), &[("source", "x.nii.gz".into())]));
        assert!(e.contains("no dataset.json"), "{e}");
    }

    #[test]
    fn synthetic_generates_an_msd_dataset() {
        let wf = tempfile::tempdir().unwrap();
        let r = run(
            wf.path(),
            &[
                ("source", "synthetic".into()),
                ("cases", 2.into()),
                ("test", 1.into()),
                ("shape", serde_json::json!([8, 8, 6])),
            ],
        );
        r.result.as_ref().unwrap();
        let (training, test) = validate_layout(&r.staging.out).unwrap();
        assert_eq!((training, test), (2, 1));
    }

    #[test]
    fn local_sources_are_part_of_the_key() {
        let f = |s: &str| FetchDataset.local_files(&params(&[("source", s.into())]));
        assert_eq!(f("data/x.tar"), vec!["data/x.tar"]);
        assert_eq!(f("file:///d/x.tar"), vec!["/d/x.tar"]);
        assert!(f("https://h/x.tar").is_empty());
        assert!(f("synthetic").is_empty());
    }

    fn diagnostics(with: &str, dir: &Path) -> Vec<(usize, String)> {
        let yaml = format!("name: t\nsteps:\n  fetch:\n    uses: fetch-dataset\n    with:\n{with}");
        match wf_engine::load_str(&yaml, Path::new("wf.yaml"), dir, &crate::registry()) {
            Ok(_) => Vec::new(),
            Err(LoadError::Invalid(list)) => list
                .0
                .into_iter()
                .map(|d| (d.span.line, d.message))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn check_reports_every_problem_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        let d = diagnostics(
            "      source: ftp://h/x.tar\n      md5: abc\n      sha256: zz\n",
            dir.path(),
        );
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            d[0].0 == 6 && d[0].1.contains("unknown URL scheme `ftp://`"),
            "{d:?}"
        );
        assert!(
            d[1].0 == 7 && d[1].1.contains("`md5` must be 32 hex digits, found 3"),
            "{d:?}"
        );
        assert!(d[2].0 == 8 && d[2].1.contains("not hex"), "{d:?}");

        let d = diagnostics(
            "      source: https://h/x.tar\n      cases: 3\n      shape: [8, 8, 8]\n",
            dir.path(),
        );
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].0 == 7
                && d[0]
                    .1
                    .contains("`cases` applies only to `source: synthetic`"),
            "{d:?}"
        );
        assert_eq!(d[1].0, 8);

        let d = diagnostics("      source: nowhere/x.tar\n", dir.path());
        assert!(
            d.len() == 1 && d[0].0 == 6 && d[0].1.contains("`nowhere/x.tar` does not exist"),
            "{d:?}"
        );

        let d = diagnostics(
            "      source: data\n      md5: 0123456789abcdef0123456789abcdef\n",
            dir.path(),
        );
        assert!(
            d.len() == 1 && d[0].0 == 7 && d[0].1.contains("is a directory"),
            "{d:?}"
        );

        let d = diagnostics(
            "      source: synthetic\n      shape: [8, 8]\n      cases: 2\n",
            dir.path(),
        );
        assert!(
            d.len() == 1 && d[0].0 == 7 && d[0].1.contains("3 sizes"),
            "{d:?}"
        );

        let ok = diagnostics(
            "      source: s3://bucket/Task01.tar\n      sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF\n",
            dir.path(),
        );
        assert!(ok.is_empty(), "{ok:?}");
    }
}
