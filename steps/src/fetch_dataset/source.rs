//! fetch-dataset's sources: parsing `source` (a path, `file://`, `http(s)://`, `s3://`, `synthetic`),
//! bringing each kind into the output, and the `md5` / `sha256` checks on what was fetched.

use sha2::Digest;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use wf_engine::{Count, RunContext, StepError, Unit, plural};

use super::archive::{Limits, unpack};
use super::http::download;
use super::tree::{Mode, find_msd_root, place};
use super::{FetchParams, Ticker, io_step, no_dataset_json};

/// Where the data comes from, parsed from `source`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Source {
    /// A local path as written: relative to the workflow directory, or absolute.
    Local(String),
    Http(String),
    S3 {
        bucket: String,
        key: String,
    },
    Synthetic,
}

pub(super) const SOURCE_HELP: &str =
    "use a path, file:///abs/path, https://..., http://..., s3://bucket/key, or `synthetic`";

pub(super) fn parse_source(s: &str) -> Result<Source, String> {
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

impl Source {
    /// Brings the data into `cx.out_dir`: a data set in the MSD layout, unchecked as yet.
    pub(super) fn fetch(
        self,
        cx: &RunContext<'_>,
        p: &FetchParams,
        expected: &Expected,
    ) -> Result<(), StepError> {
        let limits = &Limits {
            bytes: p.max_extract_bytes,
            files: p.max_extract_files,
        };
        match self {
            Source::Synthetic => synthesize(cx, p)?,
            Source::Local(path) => {
                let full = cx.workflow_dir.join(&path);
                let meta = fs::metadata(&full).map_err(|e| {
                    StepError::new(format!("source `{path}` ({}): {e}", full.display()))
                })?;
                if !meta.is_dir() && !meta.is_file() {
                    // A fifo would block the step until someone writes to it, a device may never
                    // end (`/dev/zero`): neither is a data set.
                    return Err(StepError::new(format!(
                        "source `{path}` is not a regular file or directory (a fifo, socket or device)"
                    )));
                }
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
                    unpack(cx, &full, &name, Mode::Copy, &path, limits)?;
                }
            }
            Source::Http(url) => {
                let file = download(cx, &url, expected)?;
                let shown = wf_engine::redact::url(&url).into_owned();
                unpack(cx, &file, &url_file_name(&url), Mode::Move, &shown, limits)?;
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
                unpack(cx, &dst, &url_file_name(&key), Mode::Move, &what, limits)?;
            }
            #[cfg(not(feature = "aws"))]
            Source::S3 { bucket, key } => {
                let endpoint = std::env::var("WF_S3_ENDPOINT")
                    .ok()
                    .filter(|e| !e.is_empty());
                let url = s3_url(&bucket, &key, endpoint.as_deref());
                let file = download(cx, &url, expected).map_err(|e| {
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
                    limits,
                )?;
            }
        }
        Ok(())
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
        "generating {} of {shape:?} (seed {})",
        plural(p.cases, "synthetic case"),
        p.seed
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

/// Expected digests, lower-case hex; empty when not given.
pub(super) struct Expected {
    md5: String,
    sha256: String,
}

impl Expected {
    pub(super) fn from(p: &FetchParams) -> Result<Self, StepError> {
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
    pub(super) fn verify(
        &self,
        file: &Path,
        what: &str,
        cx: &RunContext<'_>,
    ) -> Result<(), StepError> {
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
                cx.progress.advance(Count::new(done, total, Unit::Byte));
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
pub(super) fn hex_problem(value: &str, len: usize) -> Option<String> {
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

/// The last path component, for telling archives apart by name.
pub(super) fn file_name(path: &str) -> String {
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source".into())
}

/// A safe local file name from a URL's last path segment.
pub(super) fn url_file_name(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch_dataset::testutil::*;

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
}
