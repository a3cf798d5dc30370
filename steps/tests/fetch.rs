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
use wf_engine::{Params, RunContext, Status, Step, StepError, Store};
use wf_steps::fetch_dataset::FetchDataset;

/// What the server does for one path.
#[derive(Default)]
struct Route {
    body: Vec<u8>,
    /// Answer with this status and no data.
    status: Option<u16>,
    /// Answer 500 this many times first.
    fail: AtomicUsize,
    /// Cut the connection when the body reaches this offset, this many times.
    drop_at: usize,
    drops: AtomicUsize,
    /// Answer 200 with the whole body even when asked for a range.
    ignore_range: bool,
}

impl Route {
    fn body(body: Vec<u8>) -> Route {
        Route {
            body,
            ..Route::default()
        }
    }
}

/// A one-connection-at-a-time HTTP/1.1 server on loopback; stops when dropped.
struct Server {
    addr: SocketAddr,
    /// `PATH RANGE` of every request, in order.
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let routes: HashMap<String, Route> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = handle(s, &routes, &log2);
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
    // The query is not part of the route (the S3 SDK adds `?x-id=GetObject`).
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let range = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("range")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("{path} {range}").trim().to_string());
    let reply = |s: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
        write!(s, "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n")?;
        s.write_all(body)?;
        s.flush()
    };
    let Some(route) = routes.get(&path) else {
        return reply(&mut s, "404 Not Found", "Content-Length: 4\r\n", b"nope");
    };
    if let Some(code) = route.status {
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
    let len = route.body.len();
    let start = match range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
    {
        Some(n) if !route.ignore_range => n.parse::<usize>().ok(),
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
    let headers = format!("Content-Length: {}\r\n{extra}", len - from);
    if route.drops.load(Ordering::SeqCst) > 0 {
        route.drops.fetch_sub(1, Ordering::SeqCst);
        // Promise the whole body, send part of it, hang up.
        let cut = route.drop_at.max(from);
        reply(&mut s, status, &headers, &route.body[from..cut])?;
        return s.shutdown(std::net::Shutdown::Both);
    }
    reply(&mut s, status, &headers, &route.body[from..])
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
    let wf_dir = tempfile::tempdir().unwrap();
    let staging = store.stage("fetch").unwrap();
    let params = params(values);
    let cancel = CancelToken::default();
    let cx = RunContext {
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
        cancel: &cancel,
        progress: &NoProgress,
        store,
    };
    FetchDataset.run(&cx)?;
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

/// Fake image bytes, large enough that a cut lands mid-body.
fn image(i: u8) -> Vec<u8> {
    (0..40_000u32)
        .map(|k| (k.wrapping_mul(2654435761) >> 13) as u8 ^ i)
        .collect()
}

/// `Task01_BrainTumour/` with 2 training cases and macOS junk, as a tar.gz.
fn msd_tar_gz() -> Vec<u8> {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("Task01_BrainTumour");
    for sub in ["imagesTr", "labelsTr"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    for i in 1..=2u8 {
        fs::write(root.join(format!("imagesTr/BRATS_00{i}.nii.gz")), image(i)).unwrap();
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
    assert_eq!(
        server.requests(),
        vec![
            "/Task01.tar.gz".to_string(),
            format!("/Task01.tar.gz bytes={half}-")
        ]
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
            .all(|r| *r == format!("/t.tar.gz bytes={half}-")),
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
