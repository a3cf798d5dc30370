//! fetch-dataset against a real HTTP server on 127.0.0.1: Range requests, resume after a dropped
//! connection (within one step attempt and across attempts), retries on 5xx, 4xx errors, checksums,
//! `s3://` through `WF_S3_ENDPOINT`, and a whole workflow run through the engine library.

use serde_json::Value as Json;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wf_engine::step::{CancelToken, NoProgress};
use wf_engine::store::Staging;
use wf_engine::{Params, Progress, RunContext, Status, Step, StepError, Store};
use wf_steps::fetch_dataset::FetchDataset;

/// Which validators the server sends with a file.
#[derive(Default, Clone, Copy, PartialEq)]
enum Validators {
    /// `ETag` and `Last-Modified`.
    #[default]
    Both,
    LastModified,
    None,
}

/// What the server does for one path.
#[derive(Default)]
struct Route {
    /// The file, and how many times it changed (its validators follow it).
    body: Mutex<(Vec<u8>, u32)>,
    /// Answer with this status and no data.
    status: Option<u16>,
    /// Answer a HEAD with this status (e.g. 405: HEAD not allowed, as for a presigned GET URL).
    head_status: Option<u16>,
    /// Answer 500 this many times first.
    fail: AtomicUsize,
    /// Cut the connection when the body reaches this offset, this many times.
    drop_at: usize,
    drops: AtomicUsize,
    /// After the first cut, the file becomes this one.
    changes_to: Mutex<Option<Vec<u8>>>,
    /// Answer 200 with the whole body even when asked for a range.
    ignore_range: bool,
    validators: Validators,
    /// Send the body up to this offset, then nothing more until the server stops.
    stall_at: Option<usize>,
}

impl Route {
    fn body(body: Vec<u8>) -> Route {
        Route {
            body: Mutex::new((body, 0)),
            ..Route::default()
        }
    }

    /// The validators of the current file: (ETag, Last-Modified).
    fn validators(&self) -> (Option<String>, Option<String>) {
        let (body, version) = &*self.body.lock().unwrap();
        let etag = format!("\"{}\"", &sha256(body)[..16]);
        let date = format!("Mon, 01 Jan 2024 00:00:{:02} GMT", version % 60);
        match self.validators {
            Validators::Both => (Some(etag), Some(date)),
            Validators::LastModified => (None, Some(date)),
            Validators::None => (None, None),
        }
    }

    fn replace(&self, body: Vec<u8>) {
        let mut b = self.body.lock().unwrap();
        b.0 = body;
        b.1 += 1;
    }
}

/// A one-connection-at-a-time HTTP/1.1 server on loopback; stops when dropped.
struct Server {
    addr: SocketAddr,
    routes: Arc<HashMap<String, Route>>,
    /// `PATH RANGE` of every GET (with ` if-range=V` when asked), `HEAD PATH` of every HEAD, in order.
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let routes: Arc<HashMap<String, Route>> = Arc::new(
            routes
                .into_iter()
                .map(|(p, r)| (p.to_string(), r))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (routes2, log2, stop2) = (routes.clone(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = handle(s, &routes2, &log2, &stop2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            addr,
            routes,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The file at `path` changes.
    fn replace(&self, path: &str, body: Vec<u8>) {
        self.routes[path].replace(body);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    mut s: TcpStream,
    routes: &HashMap<String, Route>,
    log: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let method = head.split_whitespace().next().unwrap_or("").to_string();
    // The query is not part of the route (the S3 SDK adds `?x-id=GetObject`).
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let range = header("range").unwrap_or_default();
    let if_range = header("if-range");
    let entry = if method == "HEAD" {
        format!("HEAD {path}")
    } else {
        let mut e = format!("{path} {range}").trim().to_string();
        if let Some(v) = &if_range {
            e.push_str(&format!(" if-range={v}"));
        }
        e
    };
    log.lock().unwrap().push(entry);
    let reply = |s: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
        write!(s, "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n")?;
        if method != "HEAD" {
            s.write_all(body)?;
        }
        s.flush()
    };
    let Some(route) = routes.get(&path) else {
        return reply(&mut s, "404 Not Found", "Content-Length: 4\r\n", b"nope");
    };
    if let Some(code) = route
        .status
        .or(route.head_status.filter(|_| method == "HEAD"))
    {
        return reply(
            &mut s,
            &format!("{code} Status"),
            "Content-Length: 4\r\n",
            b"nope",
        );
    }
    if route.fail.load(Ordering::SeqCst) > 0 {
        route.fail.fetch_sub(1, Ordering::SeqCst);
        return reply(
            &mut s,
            "500 Internal Server Error",
            "Content-Length: 4\r\n",
            b"oops",
        );
    }
    let body = route.body.lock().unwrap().0.clone();
    let (etag, modified) = route.validators();
    let mut validators = String::new();
    if let Some(e) = &etag {
        validators.push_str(&format!("ETag: {e}\r\n"));
    }
    if let Some(m) = &modified {
        validators.push_str(&format!("Last-Modified: {m}\r\n"));
    }
    let len = body.len();
    // RFC 9110 If-Range: the range only while the file is the one the validator names.
    let current = if_range
        .as_ref()
        .is_none_or(|v| Some(v) == etag.as_ref() || Some(v) == modified.as_ref());
    let start = match range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
    {
        Some(n) if !route.ignore_range && current => n.parse::<usize>().ok(),
        _ => None,
    };
    if let Some(start) = start
        && start >= len
    {
        return reply(
            &mut s,
            "416 Range Not Satisfiable",
            &format!("Content-Range: bytes */{len}\r\nContent-Length: 0\r\n"),
            b"",
        );
    }
    let (status, from, extra) = match start {
        Some(st) => (
            "206 Partial Content",
            st,
            format!("Content-Range: bytes {st}-{}/{len}\r\n", len - 1),
        ),
        None => ("200 OK", 0, String::new()),
    };
    let headers = format!("Content-Length: {}\r\n{validators}{extra}", len - from);
    if method == "HEAD" {
        return reply(&mut s, status, &headers, b"");
    }
    if let Some(at) = route.stall_at {
        reply(&mut s, status, &headers, &body[from..at.max(from)])?;
        // Keep the connection open, sending nothing, until the server stops.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    if route.drops.load(Ordering::SeqCst) > 0 {
        route.drops.fetch_sub(1, Ordering::SeqCst);
        // Promise the whole body, send part of it, hang up.
        let cut = route.drop_at.max(from);
        reply(&mut s, status, &headers, &body[from..cut])?;
        if let Some(next) = route.changes_to.lock().unwrap().take() {
            route.replace(next);
        }
        return s.shutdown(std::net::Shutdown::Both);
    }
    reply(&mut s, status, &headers, &body[from..])
}

/// Params as the engine makes them: defaults filled in.
fn params(values: &[(&str, Json)]) -> Params {
    Params::with_defaults(
        FetchDataset.params(),
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

/// Runs the step once against `store`; checks the output on success.
fn run(store: &Store, values: &[(&str, Json)]) -> Result<(), StepError> {
    let staging = fetch(store, values, &CancelToken::default(), &NoProgress)?;
    let out = &staging.out;
    assert!(out.join("dataset.json").is_file());
    assert_eq!(
        fs::read(out.join("imagesTr/BRATS_002.nii.gz")).unwrap(),
        image(2)
    );
    assert!(out.join("labelsTr/BRATS_001.nii.gz").is_file());
    assert!(!out.join("imagesTr/._BRATS_001.nii.gz").exists());
    Ok(())
}

/// Runs the step once; the staging area holds its output.
fn fetch(
    store: &Store,
    values: &[(&str, Json)],
    cancel: &CancelToken,
    progress: &dyn Progress,
) -> Result<Staging, StepError> {
    let wf_dir = tempfile::tempdir().unwrap();
    let staging = store.stage("fetch").unwrap();
    let params = params(values);
    let cx = RunContext {
        resume_dir: None,
        step_id: "fetch",
        workflow_dir: wf_dir.path(),
        params: &params,
        inputs: &BTreeMap::new(),
        out_dir: &staging.out,
        scratch_dir: &staging.scratch,
        log_path: &staging.log,
        seed: 0,
        threads: 2,
        local_files: &BTreeMap::new(),
        external: None,
        cancel,
        progress,
        store,
    };
    FetchDataset.run(&cx)?;
    Ok(staging)
}

/// Every progress line and warning, for checking what a user would see.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);
impl Progress for Lines {
    fn message(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn warn(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn advance(&self, _count: wf_engine::Count) {}
}

/// Fake image bytes, large enough that a cut lands mid-body.
fn image(i: u8) -> Vec<u8> {
    (0..40_000u32)
        .map(|k| (k.wrapping_mul(2654435761) >> 13) as u8 ^ i)
        .collect()
}

/// `Task01_BrainTumour/` with 2 training cases and macOS junk, as a tar.gz.
fn msd_tar_gz() -> Vec<u8> {
    msd_tar_gz_of(0)
}

/// [`msd_tar_gz`] whose images are `image(i + salt)`: another version of the same file.
fn msd_tar_gz_of(salt: u8) -> Vec<u8> {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("Task01_BrainTumour");
    for sub in ["imagesTr", "labelsTr"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    for i in 1..=2u8 {
        fs::write(
            root.join(format!("imagesTr/BRATS_00{i}.nii.gz")),
            image(i + salt),
        )
        .unwrap();
        fs::write(root.join(format!("labelsTr/BRATS_00{i}.nii.gz")), [i; 100]).unwrap();
    }
    fs::write(root.join("imagesTr/._BRATS_001.nii.gz"), "mac").unwrap();
    let ds = serde_json::json!({
        "numTraining": 2,
        "training": [
            {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
            {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}],
        "test": []
    });
    fs::write(root.join("dataset.json"), ds.to_string()).unwrap();
    let path = t.path().join("x.tar.gz");
    let gz =
        flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append_dir_all("Task01_BrainTumour", &root).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    fs::read(path).unwrap()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn store() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    (t, s)
}

#[test]
fn a_dropped_download_resumes_with_a_range_request() {
    let body = msd_tar_gz();
    let half = body.len() / 2;
    let sum = sha256(&body);
    let server = Server::start(vec![(
        "/Task01.tar.gz",
        Route {
            drop_at: half,
            drops: AtomicUsize::new(1),
            ..Route::body(body)
        },
    )]);
    let (_t, store) = store();
    run(
        &store,
        &[
            ("source", server.url("/Task01.tar.gz").into()),
            ("sha256", sum.into()),
        ],
    )
    .unwrap();
    let log = server.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], "/Task01.tar.gz");
    // Resumed only while the file is the one the first response named.
    assert!(
        log[1].starts_with(&format!("/Task01.tar.gz bytes={half}- if-range=\"")),
        "{log:?}"
    );
}

#[test]
fn a_partial_download_survives_a_failed_attempt_of_the_step() {
    let body = msd_tar_gz();
    let half = body.len() / 2;
    // The first cut makes progress; the next three resumed requests get nothing: the step fails
    // after 3 tries without progress, keeping the first half for the next attempt.
    let server = Server::start(vec![(
        "/t.tar.gz",
        Route {
            drop_at: half,
            drops: AtomicUsize::new(4),
            ..Route::body(body.clone())
        },
    )]);
    let (_t, store) = store();
    let src = server.url("/t.tar.gz");
    let e = run(&store, &[("source", src.clone().into())]).unwrap_err();
    assert!(e.message.contains("failed after 3 tries"), "{e:?}");
    run(
        &store,
        &[("source", src.into()), ("sha256", sha256(&body).into())],
    )
    .unwrap();
    let log = server.requests();
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(log[0], "/t.tar.gz");
    assert!(
        log[1..]
            .iter()
            .all(|r| r.starts_with(&format!("/t.tar.gz bytes={half}- if-range="))),
        "{log:?}"
    );
}

#[test]
fn a_server_ignoring_ranges_restarts_the_download() {
    let body = msd_tar_gz();
    let server = Server::start(vec![(
        "/t.tgz",
        Route {
            drop_at: body.len() / 3,
            drops: AtomicUsize::new(1),
            ignore_range: true,
            ..Route::body(body.clone())
        },
    )]);
    let (_t, store) = store();
    run(
        &store,
        &[
            ("source", server.url("/t.tgz").into()),
            ("sha256", sha256(&body).into()),
        ],
    )
    .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn server_errors_are_retried_then_reported() {
    let body = msd_tar_gz();
    let server = Server::start(vec![
        (
            "/flaky.tar.gz",
            Route {
                fail: AtomicUsize::new(2),
                ..Route::body(body.clone())
            },
        ),
        (
            "/down.tar.gz",
            Route {
                fail: AtomicUsize::new(100),
                ..Route::body(body)
            },
        ),
        (
            "/gone.tar.gz",
            Route {
                status: Some(404),
                ..Route::default()
            },
        ),
        (
            "/private.tar.gz",
            Route {
                status: Some(403),
                ..Route::default()
            },
        ),
    ]);
    let (_t, store) = store();
    run(&store, &[("source", server.url("/flaky.tar.gz").into())]).unwrap();

    let url = server.url("/down.tar.gz");
    let e = run(&store, &[("source", url.clone().into())]).unwrap_err();
    assert!(
        e.message
            .contains(&format!("downloading {url} failed after 3 tries")),
        "{e:?}"
    );
    assert!(e.message.contains("HTTP 500"), "{e:?}");

    for (path, code) in [("/gone.tar.gz", 404), ("/private.tar.gz", 403)] {
        let url = server.url(path);
        let e = run(&store, &[("source", url.clone().into())]).unwrap_err();
        assert!(e.message.contains(&format!("{url}: HTTP {code}")), "{e:?}");
    }
    let log = server.requests();
    let count = |p: &str| log.iter().filter(|r| r.starts_with(p)).count();
    assert_eq!(count("/flaky"), 3);
    assert_eq!(count("/down"), 3);
    assert_eq!(count("/gone"), 1, "a 4xx is not retried");
}

#[test]
fn a_checksum_mismatch_fails_and_the_bytes_are_not_resumed_from() {
    let body = msd_tar_gz();
    let server = Server::start(vec![("/t.tar.gz", Route::body(body.clone()))]);
    let (_t, store) = store();
    let src = server.url("/t.tar.gz");
    let wrong = "ab".repeat(32);
    let e = run(
        &store,
        &[
            ("source", src.clone().into()),
            ("sha256", wrong.clone().into()),
        ],
    )
    .unwrap_err();
    let want = format!(
        "sha256 mismatch: expected {wrong}, actual {}",
        sha256(&body)
    );
    assert!(e.message.contains(&want), "{e:?}");
    run(
        &store,
        &[("source", src.into()), ("sha256", sha256(&body).into())],
    )
    .unwrap();
    assert_eq!(
        server.requests(),
        vec!["/t.tar.gz", "/t.tar.gz"],
        "the second download starts over"
    );
}

#[test]
fn s3_sources_are_fetched_from_the_endpoint() {
    let body = msd_tar_gz();
    let server = Server::start(vec![(
        "/bucket/msd/Task01.tar.gz",
        Route::body(body.clone()),
    )]);
    // SAFETY: the only test in this binary that touches the environment, and nothing here reads
    // WF_S3_ENDPOINT except an s3:// source.
    unsafe { std::env::set_var("WF_S3_ENDPOINT", server.url("")) };
    // With the `aws` feature the SDK looks for credentials: never on the instance metadata
    // address (nothing but loopback may be contacted), so none are found and the read is anonymous.
    unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
    let (_t, store) = store();
    run(
        &store,
        &[("source", "s3://bucket/msd/Task01.tar.gz".into())],
    )
    .unwrap();
    let e = run(&store, &[("source", "s3://bucket/private.tar".into())]).unwrap_err();
    assert!(
        e.message.contains("s3://bucket/private.tar") && e.message.contains("HTTP 404"),
        "{e:?}"
    );
    assert!(e.detail.unwrap_or_default().contains("public buckets"));
}

/// A workflow fetching from loopback and consuming the Dataset, run twice through the engine: the
/// second run is served from the cache without asking the server again.
#[test]
fn a_workflow_fetches_once_then_hits_the_cache() {
    let body = msd_tar_gz();
    let sum = sha256(&body);
    let server = Server::start(vec![("/Task01.tar.gz", Route::body(body))]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: fetch-e2e\nsteps:\n  fetch:\n    uses: fetch-dataset\n    with: {{ source: \"{}\", sha256: {sum} }}\n  \
         list:\n    uses: command\n    inputs: {{ ds: fetch }}\n    with: {{ run: \"ls $WF_IN_ds/imagesTr > $WF_OUT/list.txt\" }}\n",
        server.url("/Task01.tar.gz")
    );
    let path = dir.path().join("wf.yaml");
    fs::write(&path, yaml).unwrap();
    let registry = wf_steps::registry();
    let wf = Arc::new(wf_engine::load(&path, &registry).unwrap());
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run_once = || {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        rt.block_on(wf_engine::exec::run(
            wf.clone(),
            store.clone(),
            wf_engine::RunOptions {
                jobs: 2,
                threads: 2,
                ..Default::default()
            },
            CancelToken::default(),
            tx,
        ))
    };
    let first = run_once();
    let statuses: Vec<_> = first
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status, s.error.clone()))
        .collect();
    assert!(statuses.iter().all(|s| s.1 == Status::Ran), "{statuses:?}");
    let second = run_once();
    assert!(second.steps.iter().all(|s| s.status == Status::Cached));
    assert_eq!(server.requests().len(), 1);
    let listed = first.steps.iter().find(|s| s.id == "list").unwrap();
    let list = fs::read_to_string(listed.output.as_ref().unwrap().path.join("list.txt")).unwrap();
    assert_eq!(list, "BRATS_001.nii.gz\nBRATS_002.nii.gz\n");
}

/// A local directory source: its content is in the key, so editing a file reruns the step and
/// leaving it alone is a cache hit.
#[test]
fn a_local_source_is_keyed_by_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("data/Task01.tar.gz");
    fs::create_dir_all(tgz.parent().unwrap()).unwrap();
    fs::write(&tgz, msd_tar_gz()).unwrap();
    let path = dir.path().join("wf.yaml");
    fs::write(
        &path,
        "name: local\nsteps:\n  fetch: { uses: fetch-dataset, with: { source: data/Task01.tar.gz } }\n",
    )
    .unwrap();
    let registry = wf_steps::registry();
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run_once = || {
        let wf = Arc::new(wf_engine::load(&path, &registry).unwrap());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let summary = rt.block_on(wf_engine::exec::run(
            wf,
            store.clone(),
            wf_engine::RunOptions {
                jobs: 1,
                threads: 2,
                ..Default::default()
            },
            CancelToken::default(),
            tx,
        ));
        let s = &summary.steps[0];
        assert!(s.error.is_none(), "{:?} {:?}", s.error, s.detail);
        s.status
    };
    assert_eq!(run_once(), Status::Ran);
    assert_eq!(run_once(), Status::Cached);
    // Same path, other bytes (a gzip of the same tar at another level).
    let tar = {
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(File::open(&tgz).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    fs::write(&tgz, gz.finish().unwrap()).unwrap();
    assert_eq!(run_once(), Status::Ran);
}

/// A cut download of a file without `ETag` or `Last-Modified` starts over: nothing tells the bytes
/// already here from another version's.
#[test]
fn without_a_validator_a_cut_download_starts_over() {
    let body = msd_tar_gz();
    let server = Server::start(vec![(
        "/t.tar.gz",
        Route {
            drop_at: body.len() / 2,
            drops: AtomicUsize::new(1),
            validators: Validators::None,
            ..Route::body(body)
        },
    )]);
    let (_t, store) = store();
    run(&store, &[("source", server.url("/t.tar.gz").into())]).unwrap();
    assert_eq!(server.requests(), vec!["/t.tar.gz", "/t.tar.gz"]);
}

/// The file changes on the server while the download is cut: the resume asks with `If-Range`, the
/// server answers with the whole new file, and the output is the new file (never half of each).
#[test]
fn a_file_changed_between_attempts_is_fetched_whole() {
    for (validators, want) in [
        (Validators::Both, "if-range=\""),
        (
            Validators::LastModified,
            "if-range=Mon, 01 Jan 2024 00:00:00 GMT",
        ),
    ] {
        let old = msd_tar_gz();
        let new = msd_tar_gz_of(7);
        let half = old.len() / 2;
        let server = Server::start(vec![(
            "/t.tar.gz",
            Route {
                drop_at: half,
                drops: AtomicUsize::new(1),
                changes_to: Mutex::new(Some(new.clone())),
                validators,
                ..Route::body(old)
            },
        )]);
        let (_t, store) = store();
        let out = fetch(
            &store,
            &[("source", server.url("/t.tar.gz").into())],
            &CancelToken::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(
            fs::read(out.out.join("imagesTr/BRATS_002.nii.gz")).unwrap(),
            image(9)
        );
        let log = server.requests();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(
            log[1].starts_with(&format!("/t.tar.gz bytes={half}- {want}")),
            "{log:?}"
        );
    }
}

/// Credentials in a URL (userinfo, a presigned signature) appear in no message.
#[test]
fn credentials_in_urls_are_never_shown() {
    let server = Server::start(vec![(
        "/gone.tar.gz",
        Route {
            status: Some(404),
            ..Route::default()
        },
    )]);
    let (_t, store) = store();
    let url = format!(
        "http://alice:hunter2@{}/gone.tar.gz?X-Amz-Credential=AKIAXXX&X-Amz-Signature=deadbeef&v=1",
        server.addr
    );
    let lines = Lines::default();
    let e = fetch(
        &store,
        &[("source", url.into())],
        &CancelToken::default(),
        &lines,
    )
    .unwrap_err();
    let shown = format!(
        "{}\n{}\n{}",
        e.message,
        e.detail.unwrap_or_default(),
        lines.0.lock().unwrap().join("\n")
    );
    for secret in ["hunter2", "alice", "AKIAXXX", "deadbeef"] {
        assert!(!shown.contains(secret), "{secret} shown in: {shown}");
    }
    assert!(
        shown.contains("/gone.tar.gz?X-Amz-Credential=***&X-Amz-Signature=***&v=1: HTTP 404"),
        "{shown}"
    );
}

/// A body that stops arriving (the connection stays open) ends on Ctrl-C within a second or two,
/// not after the read timeout.
#[test]
fn a_stalled_download_stops_when_cancelled() {
    let body = msd_tar_gz();
    let server = Server::start(vec![(
        "/slow.tar.gz",
        Route {
            stall_at: Some(body.len() / 3),
            ..Route::body(body)
        },
    )]);
    let url = server.url("/slow.tar.gz");
    let cancel = CancelToken::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let c2 = cancel.clone();
    std::thread::spawn(move || {
        let (_t, store) = store();
        let r = fetch(&store, &[("source", url.into())], &c2, &NoProgress).map(|_| ());
        let _ = tx.send(r);
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    cancel.cancel();
    let r = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the step ends within 3 s of the cancel");
    let e = r.unwrap_err();
    assert!(e.message.contains("interrupted"), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// A workflow fetching a URL without a checksum: the key holds the server's validators (read with
/// a HEAD), so a cached run asks only for them, and a changed file is a miss that `wf plan` names.
#[test]
fn a_changed_file_on_the_server_is_a_miss() {
    let server = Server::start(vec![("/Task01.tar.gz", Route::body(msd_tar_gz()))]);
    let dir = tempfile::tempdir().unwrap();
    // Credentials in the URL: kept out of the run record.
    let url = format!(
        "http://bob:s3cret@{}/Task01.tar.gz?X-Amz-Signature=feedface",
        server.addr
    );
    let yaml = format!(
        "name: fetch-head\nsteps:\n  fetch:\n    uses: fetch-dataset\n    with: {{ source: \"{url}\" }}\n"
    );
    let path = dir.path().join("wf.yaml");
    fs::write(&path, yaml).unwrap();
    let registry = wf_steps::registry();
    let wf = Arc::new(wf_engine::load(&path, &registry).unwrap());
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run_once = || {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let summary = rt.block_on(wf_engine::exec::run(
            wf.clone(),
            store.clone(),
            wf_engine::RunOptions {
                jobs: 1,
                threads: 2,
                ..Default::default()
            },
            CancelToken::default(),
            tx,
        ));
        let s = summary.steps[0].clone();
        assert!(s.error.is_none(), "{:?} {:?}", s.error, s.detail);
        s
    };
    let first = run_once();
    assert_eq!(first.status, Status::Ran);
    assert_eq!(
        server.requests(),
        vec!["HEAD /Task01.tar.gz", "/Task01.tar.gz"]
    );
    assert_eq!(run_once().status, Status::Cached);
    assert_eq!(
        server.requests().len(),
        3,
        "a hit asks only for the validators"
    );

    server.replace("/Task01.tar.gz", msd_tar_gz_of(5));
    let plan = wf_engine::exec::plan(&wf, &store, &Default::default()).unwrap();
    assert_eq!(plan[0].cache, "miss");
    assert!(
        plan[0].reason.starts_with("source changed ("),
        "{}",
        plan[0].reason
    );
    let second = run_once();
    assert_eq!(second.status, Status::Ran);
    assert_ne!(second.key, first.key);
    let out = second.output.unwrap().path;
    assert_eq!(
        fs::read(out.join("imagesTr/BRATS_001.nii.gz")).unwrap(),
        image(6)
    );

    let record = fs::read_to_string(dir.path().join("cache/runs/fetch-head/fetch.json")).unwrap();
    for secret in ["s3cret", "feedface"] {
        assert!(!record.contains(secret), "{record}");
    }
    assert!(record.contains("\"external\""), "{record}");
}

/// What a HEAD tells, by server: the ETag; else Last-Modified and the length; a server that does
/// not allow HEAD (a presigned GET URL) is asked with a one-byte GET; no validator at all, or no
/// answer, is an error naming the URL.
#[test]
fn validators_are_read_with_a_head() {
    let body = msd_tar_gz();
    let len = body.len();
    let server = Server::start(vec![
        ("/both", Route::body(body.clone())),
        (
            "/modified",
            Route {
                validators: Validators::LastModified,
                ..Route::body(body.clone())
            },
        ),
        (
            "/presigned",
            Route {
                head_status: Some(403),
                ..Route::body(body.clone())
            },
        ),
        (
            "/none",
            Route {
                validators: Validators::None,
                ..Route::body(body.clone())
            },
        ),
        (
            "/gone",
            Route {
                status: Some(404),
                ..Route::default()
            },
        ),
    ]);
    let state = |path: &str, extra: &[(&str, Json)]| {
        let mut values = vec![("source", Json::from(server.url(path)))];
        values.extend(extra.iter().cloned());
        let p = params(&values);
        FetchDataset
            .external_source(&p)
            .map(|_| FetchDataset.external_state(&p, &CancelToken::default()))
    };
    let etag = format!("\"{}\"", &sha256(&body)[..16]);
    assert_eq!(
        state("/both", &[]).unwrap().unwrap(),
        format!("etag {etag}")
    );
    assert_eq!(
        state("/modified", &[]).unwrap().unwrap(),
        format!("last-modified Mon, 01 Jan 2024 00:00:00 GMT, length {len}")
    );
    assert_eq!(
        state("/presigned", &[]).unwrap().unwrap(),
        format!("etag {etag}")
    );
    let e = state("/none", &[]).unwrap().unwrap_err();
    assert!(
        e.message.contains("neither an ETag nor a Last-Modified"),
        "{e:?}"
    );
    let e = state("/gone", &[]).unwrap().unwrap_err();
    assert!(
        e.message
            .contains(&format!("{}: HTTP 404", server.url("/gone"))),
        "{e:?}"
    );
    // A checksum pins the file: no external state, no request.
    let n = server.requests().len();
    assert!(state("/both", &[("sha256", sha256(&body).into())]).is_none());
    assert_eq!(server.requests().len(), n);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("/presigned bytes=0-0")),
        "{:?}",
        server.requests()
    );
}

/// `wf run --executor sagemaker` would submit a job whose worker cannot recompute a key holding the
/// server's validators: the step fails before anything is submitted.
#[test]
fn a_remote_executor_is_not_given_a_step_keyed_by_a_server() {
    struct Refusing;
    impl wf_engine::RemoteExecutor for Refusing {
        fn name(&self) -> String {
            "the test executor".into()
        }
        fn takes(&self, _wf: &wf_engine::Workflow, _i: usize) -> bool {
            true
        }
        fn execute(
            &self,
            _wf: &wf_engine::Workflow,
            _i: usize,
            _key: &wf_engine::StepKey,
            _components: &wf_engine::key::KeyComponents,
            _inputs: &BTreeMap<String, wf_engine::InputArtifact>,
            _progress: &dyn Progress,
            _cancel: &wf_engine::CancelToken,
        ) -> Result<(), StepError> {
            panic!("nothing may be submitted")
        }
    }
    let server = Server::start(vec![("/t.tar.gz", Route::body(msd_tar_gz()))]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wf.yaml");
    fs::write(
        &path,
        format!(
            "name: remote\nsteps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: \"{}\" }} }}\n",
            server.url("/t.tar.gz")
        ),
    )
    .unwrap();
    let registry = wf_steps::registry();
    let wf = Arc::new(wf_engine::load(&path, &registry).unwrap());
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = rt.block_on(wf_engine::exec::run(
        wf,
        store,
        wf_engine::RunOptions {
            jobs: 1,
            threads: 1,
            executor: Some(Arc::new(Refusing)),
            ..Default::default()
        },
        CancelToken::default(),
        tx,
    ));
    let s = &summary.steps[0];
    assert_eq!(s.status, Status::Failed);
    let e = s.error.clone().unwrap_or_default();
    assert!(
        e.starts_with(
            "the test executor cannot run this step: its key holds the current state of `http://"
        ),
        "{e}"
    );
}
