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
//!   failed attempt, and the next one asks for the rest with `Range` and `If-Range`, so a file that
//!   changed in between comes whole; without an `ETag` or `Last-Modified` there is no resume),
//!   retried on connection errors and 5xx. With `md5` or `sha256` the key holds the URL and the
//!   checksum. Without, it also holds the server's validators (`ETag`, else `Last-Modified` and
//!   length), read with a HEAD whenever the key is computed (`Step::external_state`), so a changed
//!   file is a miss; such a step cannot be compiled for the cloud. Credentials in the URL are
//!   shown as `***` (`wf_engine::redact`).
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
//! device or fifo members are refused, each naming the member, and extraction stops at
//! `max_extract_bytes` / `max_extract_files` (defaults sized for the largest MSD tasks with room to
//! spare). A local source that is neither a regular file nor a directory (a fifo, a device) is
//! refused, and every wait polls the cancel token. The data set's root is the directory holding
//! dataset.json (the MSD tar nests it in `Task01_BrainTumour/`); macOS `._*` files are dropped.
//! dataset.json is then checked by `wf_imaging::msd`, the same type the steps reading the data set
//! use: a `training` list whose every entry has an image and a label, `numTraining` (when given)
//! agreeing with it, unique case ids, and every file listed under `training` and `test` present
//! inside the root.
//!
//! The step is here; the rest by concern: `source` (parsing `source`, fetching each kind, checksums),
//! `http` (download with resume and retries), `archive` (tar / tar.gz, safely), `tree` (placing the
//! data set's tree into the output).

mod archive;
mod http;
mod source;
#[cfg(test)]
mod testutil;
mod tree;

use serde::Deserialize;
use serde_json::Value as Json;
use std::fmt::Display;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CancelToken, CheckContext, Diagnostics, Facts, ParamSpec, Params, RemoteTask,
    RunContext, SizeEstimate, Slots, Step, StepError, plural, redact,
};
use wf_imaging::ImagingError;
use wf_imaging::msd::{DATASET_JSON, MsdDataset};
use wf_imaging::synth::{SynthOptions, affine_for};

use crate::facts::{DatasetFacts, Grid, Known};
use source::{Expected, SOURCE_HELP, Source, hex_problem, parse_source};

pub struct FetchDataset;

static SHAPE: ParamType = ParamType::List(&ParamType::Int { min: 4, max: 4096 });

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "source",
        ParamType::Str,
        "a path (relative to the workflow file), `file://`, `http(s)://` (streamed, resumable, retried), `s3://bucket/key` (the AWS credential chain, or anonymous for public buckets), or `synthetic`",
    ),
    ParamSpec::optional(
        "md5",
        ParamType::Str,
        "\"\"",
        "expected MD5 of the downloaded or local file (empty: none)",
    )
    .shape("32 hex digits", || hex_schema(32)),
    ParamSpec::optional(
        "sha256",
        ParamType::Str,
        "\"\"",
        "expected SHA-256 of the downloaded or local file (empty: none)",
    )
    .shape("64 hex digits", || hex_schema(64)),
    ParamSpec::optional(
        "cases",
        ParamType::int_min(1),
        "8",
        "`synthetic` only: training cases",
    ),
    ParamSpec::optional(
        "shape",
        SHAPE,
        "[96,96,64]",
        "`synthetic` only: volume size [x, y, z]",
    )
    .shape("list of 3 integers in 4..=4096", || {
        let mut s = SHAPE.json_schema();
        s["minItems"] = 3.into();
        s["maxItems"] = 3.into();
        s
    }),
    ParamSpec::optional(
        "seed",
        ParamType::int_min(0),
        "0",
        "`synthetic` only: generator seed",
    ),
    ParamSpec::optional(
        "test",
        ParamType::int_min(0),
        "0",
        "`synthetic` only: unlabelled test cases (`imagesTs/`)",
    ),
    // Limits refuse, they never change what a successful extraction yields: not in the key.
    ParamSpec::optional(
        "max_extract_bytes",
        ParamType::int_min(1),
        "68719476736",
        "archives: most bytes extraction may write (default 64 GiB), links copied out included",
    )
    .not_in_key(),
    ParamSpec::optional(
        "max_extract_files",
        ParamType::int_min(1),
        "100000",
        "archives: most members extraction may write",
    )
    .not_in_key(),
];

/// Params that only mean something for an archive.
const ARCHIVE_ONLY: &[&str] = &["max_extract_bytes", "max_extract_files"];

/// What `check` accepts for a checksum of `len` hex digits: those, or nothing.
fn hex_schema(len: usize) -> Json {
    serde_json::json!({ "type": "string", "pattern": format!("^([0-9a-fA-F]{{{len}}})?$") })
}

/// Params that only mean something for `source: synthetic`.
const SYNTHETIC_ONLY: &[&str] = &["cases", "shape", "seed", "test"];

#[derive(Debug, Deserialize)]
struct FetchParams {
    source: String,
    md5: String,
    sha256: String,
    cases: usize,
    shape: Vec<usize>,
    seed: u64,
    test: usize,
    max_extract_bytes: u64,
    max_extract_files: u64,
}

fn decode(params: &Params) -> Result<FetchParams, StepError> {
    params
        .decode()
        .map_err(|e| StepError::new(format!("invalid params: {e}")))
}

/// `check`'s findings for one step: each names the step and points at the param it is about.
struct Findings<'a> {
    step: &'a str,
    params: &'a Params,
    diags: &'a mut Diagnostics,
}

impl Findings<'_> {
    fn fail(&mut self, param: &str, message: impl Display) {
        let span = self.params.span_of(param);
        self.diags
            .error(span, format!("step `{}`: {message}", self.step));
    }

    fn fail_with_help(&mut self, param: &str, message: impl Display, help: &str) {
        let span = self.params.span_of(param);
        self.diags
            .error_with_help(span, format!("step `{}`: {message}", self.step), help);
    }

    /// A string param; `""` when absent or not a string (its type is reported elsewhere).
    fn str(&self, param: &str) -> &str {
        self.params.get(param).and_then(Json::as_str).unwrap_or("")
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
        let mut f = Findings {
            step: cx.step_id,
            params,
            diags,
        };
        for (name, len) in [("md5", 32), ("sha256", 64)] {
            if let Some(why) = hex_problem(f.str(name), len) {
                f.fail(name, format!("`{name}` {why}"));
            }
        }
        let Some(src) = params.get("source").and_then(Json::as_str) else {
            return;
        };
        let source = match parse_source(src) {
            Ok(s) => s,
            Err(why) => {
                let src = redact::text(src);
                f.fail_with_help("source", format!("source `{src}` {why}"), SOURCE_HELP);
                return;
            }
        };
        if source != Source::Synthetic {
            for name in SYNTHETIC_ONLY {
                if params.node(name).is_some() {
                    f.fail(
                        name,
                        format!("`{name}` applies only to `source: synthetic`"),
                    );
                }
            }
        }
        let checksummed: Vec<&str> = ["md5", "sha256"]
            .into_iter()
            .filter(|n| !f.str(n).is_empty())
            .collect();
        match source {
            Source::Synthetic => {
                for name in ARCHIVE_ONLY {
                    if params.node(name).is_some() {
                        f.fail(
                            name,
                            format!(
                                "`{name}` bounds archive extraction; `source: synthetic` has none"
                            ),
                        );
                    }
                }
                for name in checksummed {
                    f.fail(
                        name,
                        format!("`{name}` checks a downloaded or local file; `source: synthetic` has none"),
                    );
                }
                if let Some(n) = params.get("shape").and_then(Json::as_array).map(Vec::len)
                    && n != 3
                {
                    f.fail(
                        "shape",
                        format!("`shape` must list 3 sizes [x, y, z], found {n}"),
                    );
                }
            }
            Source::Local(path) => {
                let full = cx.workflow_dir.join(&path);
                if !full.exists() {
                    f.fail(
                        "source",
                        format!(
                            "source `{path}` does not exist (paths are relative to the workflow file)"
                        ),
                    );
                } else if full.is_dir() {
                    for name in checksummed {
                        f.fail(
                            name,
                            format!("`{name}` checks a file, but source `{path}` is a directory"),
                        );
                    }
                } else if !full.is_file() {
                    f.fail(
                        "source",
                        format!(
                            "source `{path}` is not a regular file or directory (a fifo, socket or device)"
                        ),
                    );
                }
            }
            Source::Http(_) | Source::S3 { .. } => {}
        }
    }

    /// Synthetic data: its `cases`, 4 channels and the `shape` on a 1 mm grid. A local directory:
    /// the case count and channels of its dataset.json (one small file read; archives are not
    /// opened at validation). A URL: nothing until it is fetched.
    fn facts(&self, params: &Params, cx: &CheckContext<'_>) -> Option<Facts> {
        let p = decode(params).ok()?;
        let id = cx.step_id;
        let facts = match parse_source(&p.source).ok()? {
            Source::Synthetic => DatasetFacts {
                cases: Some(Known::new(
                    p.cases,
                    params.span_of("cases"),
                    format!("`cases` of step `{id}`"),
                )),
                channels: Some(SynthOptions::default().channels),
                grid: <[usize; 3]>::try_from(p.shape.as_slice())
                    .ok()
                    .map(|shape| {
                        Known::new(
                            Grid {
                                shape,
                                affine: affine_for(SynthOptions::default().affine, shape),
                            },
                            params.span_of("shape"),
                            format!("`shape` of step `{id}`"),
                        )
                    }),
            },
            Source::Local(path) => {
                let root = tree::find_msd_root(&cx.workflow_dir.join(&path)).ok()??;
                let ds = MsdDataset::read(&root.join(DATASET_JSON)).ok()?;
                DatasetFacts {
                    cases: Some(Known::new(
                        ds.cases().ok()?.len(),
                        params.span_of("source"),
                        format!("the dataset.json of step `{id}`"),
                    )),
                    channels: ds.modality.as_ref().map(|m| m.len()).filter(|&n| n > 0),
                    grid: None,
                }
            }
            Source::Http(_) | Source::S3 { .. } => return None,
        };
        Some(Facts::new(facts))
    }

    /// A URL's size is asked of its server when a run is planned (`announced_size`).
    fn output_size(&self, params: &Params, _cx: &CheckContext<'_>) -> Option<SizeEstimate> {
        let source = params.get("source").and_then(Json::as_str)?;
        matches!(parse_source(source), Ok(Source::Http(_))).then_some(SizeEstimate::Ask)
    }

    /// The download's `Content-Length` (a `HEAD`): at least that much is written, and the extracted
    /// files come on top (an archive's contents are not known before it is read).
    fn announced_size(&self, params: &Params, cancel: &CancelToken) -> SizeEstimate {
        let source = params.get("source").and_then(Json::as_str).unwrap_or("");
        let Ok(Source::Http(url)) = parse_source(source) else {
            return SizeEstimate::Unknown {
                why: "size unknown until fetched".into(),
            };
        };
        match http::announced_length(&url, cancel) {
            Ok(Some(bytes)) => SizeEstimate::Bytes {
                bytes,
                how: "the download's length as the server announces it; its extracted files come on top".into(),
                help: Some(
                    "use a cache on a larger disk (`--cache DIR`)".into(),
                ),
                span: params.span_of("source"),
            },
            Ok(None) => SizeEstimate::Unknown {
                why: "size unknown until fetched (the server announces no length)".into(),
            },
            Err(why) => SizeEstimate::Unknown {
                why: format!("size unknown until fetched ({why})"),
            },
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

    /// An `http(s)` source without `md5` / `sha256`: nothing in the params pins the file, so the
    /// key holds the server's validators, read with a HEAD whenever the key is computed (as DVC
    /// does for imported URLs). A checksum pins the content instead: no request at plan time.
    fn external_source(&self, params: &Params) -> Option<String> {
        let str_of = |name: &str| params.get(name).and_then(Json::as_str).unwrap_or("");
        match parse_source(str_of("source")) {
            Ok(Source::Http(url)) if str_of("md5").is_empty() && str_of("sha256").is_empty() => {
                Some(format!("`{}`", redact::url(&url)))
            }
            _ => None,
        }
    }

    /// `etag <ETag>`, else `last-modified <date>, length <n>` (`http::validators`). A server that
    /// cannot be asked, or that names neither, is an error rather than a key by URL alone: such a
    /// key could only serve whatever was fetched before the file changed, which is what this
    /// state is for. A checksum (`sha256`) keys the step without asking the server.
    fn external_state(&self, params: &Params, cancel: &CancelToken) -> Result<String, StepError> {
        let source = params.get("source").and_then(Json::as_str).unwrap_or("");
        match parse_source(source) {
            Ok(Source::Http(url)) => http::validators(&url, cancel),
            _ => Err(StepError::new(format!(
                "source `{}` has no server to ask",
                redact::text(source)
            ))),
        }
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        self.fetch(cx).map_err(|e| StepError {
            // URLs are shown redacted where they are formatted; this catches any that slip through
            // (a library's message quoting the URL).
            message: redact::text(&e.message).into_owned(),
            detail: e.detail.map(|d| redact::text(&d).into_owned()),
        })
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }
}

impl FetchDataset {
    fn fetch(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let p = decode(cx.params)?;
        let source = parse_source(&p.source)
            .map_err(|why| StepError::new(format!("source `{}` {why}", redact::text(&p.source))))?;
        let expected = Expected::from(&p)?;
        source.fetch(cx, &p, &expected)?;
        let (training, test) = validate_layout(cx.out_dir)?;
        cx.progress.note(&format!(
            "{}, {}",
            plural(training, "training case"),
            plural(test, "test case")
        ));
        Ok(())
    }
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

fn no_dataset_json(what: &str) -> StepError {
    StepError::new(format!(
        "{what}: no dataset.json found, so this is not a data set in the MSD layout (dataset.json, imagesTr/, labelsTr/)"
    ))
}

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
    // Two entries of one case would overwrite each other's samples downstream: refused here, where
    // the data set comes in, with the same rule the readers apply.
    ds.cases().map_err(layout_error)?;
    Ok((ds.training.len(), ds.test.len()))
}

/// How many missing files the detail lists; the message already says how many there are.
const MISSING_LISTED: usize = 20;

/// The message; for missing files, the first `MISSING_LISTED` of them in the detail and a count of
/// the rest (a data set with a wrong root misses every file: hundreds of lines say no more).
fn layout_error(e: ImagingError) -> StepError {
    match &e {
        ImagingError::MsdMissing { missing, .. } => {
            let mut lines: Vec<String> = missing
                .iter()
                .take(MISSING_LISTED)
                .map(|(entry, path)| format!("{entry}: {path}"))
                .collect();
            if missing.len() > MISSING_LISTED {
                lines.push(format!(
                    "… and {} more missing files",
                    missing.len() - MISSING_LISTED
                ));
            }
            StepError::with_detail(e.to_string(), lines.join("\n"))
        }
        _ => StepError::new(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testutil::*;
    use wf_engine::LoadError;

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
    fn many_missing_files_are_counted_not_all_listed() {
        let missing: Vec<(String, String)> = (0..500)
            .map(|i| {
                (
                    format!("training[{i}].image"),
                    format!("./imagesTr/c{i}.nii.gz"),
                )
            })
            .collect();
        let e = layout_error(ImagingError::MsdMissing {
            file: "/data/dataset.json".into(),
            missing,
        });
        let detail = e.detail.as_deref().unwrap_or("");
        assert_eq!(detail.lines().count(), MISSING_LISTED + 1, "{detail}");
        assert!(
            detail.contains("training[0].image: ./imagesTr/c0.nii.gz"),
            "{detail}"
        );
        assert!(detail.ends_with("… and 480 more missing files"), "{detail}");
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
    fn two_training_entries_of_one_case_are_refused() {
        let wf = tempfile::tempdir().unwrap();
        msd_tree(wf.path());
        let ds = fs::read_to_string(wf.path().join("dataset.json")).unwrap();
        fs::write(
            wf.path().join("dataset.json"),
            ds.replace("imagesTr/BRATS_002.nii.gz", "imagesTr/BRATS_001.nii.gz"),
        )
        .unwrap();
        let e = err(&run(wf.path(), &[("source", ".".into())]));
        assert!(e.contains("both have case id `BRATS_001`"), "{e}");
    }

    /// A fifo as `source:` never blocks the step: it is refused as it is (and Ctrl-C would end
    /// any wait).
    #[test]
    fn a_fifo_source_does_not_hang() {
        let wf = tempfile::tempdir().unwrap();
        let fifo = wf.path().join("pipe.tar");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let cancel = wf_engine::CancelToken::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (dir, c2) = (wf.path().to_path_buf(), cancel.clone());
        std::thread::spawn(move || {
            let r = run_cancellable(&dir, &[("source", "pipe.tar".into())], &c2);
            let _ = tx.send(err(&r));
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        cancel.cancel();
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(3))
            .expect("the step ends within 3 s");
        assert!(e.contains("pipe.tar"), "{e}");
        let d = diagnostics("      source: pipe.tar\n", wf.path());
        assert!(
            d.len() == 1 && d[0].1.contains("not a regular file or directory"),
            "{d:?}"
        );
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
