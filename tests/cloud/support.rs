//! Helpers for tests against the AWS emulator (tests/cloud/emulator.py: moto on loopback) and
//! against tiny loopback HTTP servers. Nothing here may reach beyond 127.0.0.1.
//!
//! The emulator is the one at MOTO_ENDPOINT when that is set (`.ci/run` starts one for the whole
//! run with `tests/cloud/emulator.sh`); otherwise the first test that needs it starts one for this
//! test process with `tests/cloud/emulator.sh serve`. Tests print `SKIP <test>: <reason>` and pass
//! when there is none (WF_NO_EMULATOR=1, or what is missing to start one).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Tests that switch moto's IAM enforcement on take this exclusively; every other emulator test
/// holds it shared, so none of them runs while requests are being denied.
static AUTH: RwLock<()> = RwLock::new(());

/// The emulator this test process started, or why it could not.
static STARTED: OnceLock<Result<Started, String>> = OnceLock::new();

/// How long installing (the first time: about a minute) and starting the emulator may take.
const START_TIMEOUT: Duration = Duration::from_secs(600);

struct Started {
    endpoint: String,
    /// The emulator runs until the other end of this pipe closes, i.e. until this process ends,
    /// however it ends; it is never written to.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

fn is_loopback(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

/// Runs `tests/cloud/emulator.sh serve` and waits for its `MOTO_ENDPOINT=...` line; the reason
/// when there is none (the script names what is missing on its last `emulator: ` line).
fn start_emulator() -> Result<Started, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("tests/cloud/emulator.sh"))
        .arg("serve")
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group: a timeout can stop the script with everything it started.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run bash for tests/cloud/emulator.sh: {e}"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut out = BufReader::new(stdout);
        if out.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = ready_tx.send(line.trim().to_string());
        }
        // Keep reading until the script ends, so that it never writes into a closed pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    let said = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("emulator: ").map(str::to_string))
            .collect::<Vec<_>>()
    });
    match ready.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.starts_with("MOTO_ENDPOINT=") => {
            let endpoint = line["MOTO_ENDPOINT=".len()..].to_string();
            assert!(
                is_loopback(&endpoint),
                "tests/cloud/emulator.sh answered {endpoint}, not a loopback address"
            );
            Ok(Started {
                endpoint,
                _stdin: Mutex::new(stdin),
                _child: Mutex::new(child),
            })
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            #[cfg(unix)]
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "tests/cloud/emulator.sh serve did not start the emulator within {} s",
                START_TIMEOUT.as_secs()
            ))
        }
        Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            drop(stdin);
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let said = said.join().unwrap_or_default();
            Err(said.last().cloned().unwrap_or_else(|| {
                format!("tests/cloud/emulator.sh serve ended ({status}) without starting it")
            }))
        }
    }
}

/// The emulator, or `None` (after printing why the test is skipped). Refuses to go on when any
/// endpoint setting points away from loopback: these tests must never reach AWS.
pub fn moto(test: &str) -> Option<Moto> {
    for var in ["AWS_ENDPOINT_URL", "MOTO_ENDPOINT"] {
        if let Ok(v) = std::env::var(var) {
            assert!(
                is_loopback(&v),
                "{var}={v} is not a loopback address: refusing to run cloud tests"
            );
        }
    }
    if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT")
        && !endpoint.is_empty()
    {
        // Started outside (e.g. by .ci/run); WF_EMULATOR=jobs says it is tests/cloud/emulator.py.
        let jobs = std::env::var("WF_EMULATOR").is_ok_and(|v| v == "jobs");
        return Some(Moto { endpoint, jobs });
    }
    if std::env::var("WF_NO_EMULATOR").is_ok_and(|v| !v.is_empty() && v != "0") {
        eprintln!("SKIP {test}: WF_NO_EMULATOR is set, so no AWS emulator is started");
        return None;
    }
    match STARTED.get_or_init(start_emulator) {
        Ok(started) => Some(Moto {
            endpoint: started.endpoint.clone(),
            jobs: true,
        }),
        Err(why) => {
            eprintln!("SKIP {test}: no AWS emulator: {why}");
            None
        }
    }
}

pub struct Moto {
    pub endpoint: String,
    /// Step Functions executions whose SageMaker jobs run `local:` images (tests/cloud/emulator.py),
    /// not only stock moto.
    pub jobs: bool,
}

impl Moto {
    pub fn shared(&self) -> RwLockReadGuard<'static, ()> {
        AUTH.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exclusive(&self) -> RwLockWriteGuard<'static, ()> {
        AUTH.write().unwrap_or_else(|e| e.into_inner())
    }

    fn addr(&self) -> String {
        self.endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// A request with a dummy S3 signature: moto checks signatures only with IAM enforcement on,
    /// but treats unsigned requests as anonymous (private objects: 403).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut all = headers.to_vec();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            all.push((
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            ));
        }
        http(&self.addr(), method, path, &all, body)
    }

    /// The response headers of a HEAD of `bucket/key` (names lowercased).
    pub fn head(&self, bucket: &str, key: &str) -> Vec<(String, String)> {
        let addr = self.addr();
        let mut s = TcpStream::connect(&addr).expect("emulator reachable");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let req = format!(
            "HEAD /{bucket}/{key} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        out
    }

    /// A bucket unique to this test process and name.
    pub fn bucket(&self, name: &str) -> String {
        let bucket = format!("wf-{name}-{}", std::process::id());
        let (status, body) = self.request("PUT", &format!("/{bucket}"), &[], b"");
        assert!(
            status == 200 || status == 409,
            "create bucket {bucket}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        bucket
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self.request("GET", &format!("/{bucket}/{key}"), &[], b"");
        match status {
            200 => Some(body),
            404 => None,
            s => panic!("GET {bucket}/{key}: {s} {}", String::from_utf8_lossy(&body)),
        }
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.put_with(bucket, key, body, &[]);
    }

    pub fn put_with(&self, bucket: &str, key: &str, body: &[u8], headers: &[(&str, &str)]) {
        let (status, resp) = self.request("PUT", &format!("/{bucket}/{key}"), headers, body);
        assert_eq!(
            status,
            200,
            "PUT {bucket}/{key}: {}",
            String::from_utf8_lossy(&resp)
        );
    }

    /// Keys under `prefix` (ListObjectsV2, first page is enough for tests).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"),
            &[],
            b"",
        );
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        text.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// A query-protocol call (IAM, STS, ...) routed by the service in the credential scope.
    pub fn query(&self, service: &str, form: &str) -> String {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=00"
        );
        let (status, body) = self.request(
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        );
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "{service} {form}: {text}");
        text
    }

    /// A JSON-protocol call (Step Functions, SageMaker, FSx), e.g.
    /// `json_call("states", "AWSStepFunctions.GetExecutionHistory", ...)`.
    pub fn json_call(
        &self,
        service: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=00"
        );
        let (status, resp) = self.request(
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                ("X-Amz-Target", target),
                ("Content-Type", "application/x-amz-json-1.0"),
            ],
            body.to_string().as_bytes(),
        );
        let text = String::from_utf8_lossy(&resp).into_owned();
        assert_eq!(status, 200, "{target}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{target}: {e}: {text}"))
    }

    /// Switches IAM enforcement on (`Some(0)`) or off (`None`).
    pub fn enforce_iam(&self, on: bool) {
        let body: &[u8] = if on { b"0" } else { b"inf" };
        let (status, _) = self.request("POST", "/moto-api/reset-auth", &[], body);
        assert_eq!(status, 200);
    }

    /// Environment for a `wf` child process talking to the emulator.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("WF_LOG");
    }
}

/// `<tag>value</tag>` from an XML text.
pub fn xml_value(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..start + end].to_string())
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("emulator reachable");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line `{status_line}`"));
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    (status, body)
}

/// A loopback server answering every request with the same status and body, counting requests.
/// It stops by itself after `limit` requests or 60 s.
pub struct FlakyServer {
    pub endpoint: String,
    pub hits: Arc<AtomicUsize>,
}

impl FlakyServer {
    pub fn start(status: &'static str, body: &'static str, limit: usize) -> FlakyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline && counter.load(Ordering::SeqCst) < limit {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                // Read the request head and body (Content-Length) before answering.
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut sink = vec![0; length];
                let _ = reader.read_exact(&mut sink);
                counter.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
            }
        });
        FlakyServer { endpoint, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub fn wf_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_wf"))
}

/// Runs `wf` in `dir` with the emulator's environment plus `extra`.
pub fn wf_with(dir: &Path, moto: Option<&Moto>, extra: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(wf_bin());
    cmd.args(args).current_dir(dir);
    if let Some(m) = moto {
        m.env(&mut cmd);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("wf runs")
}

// The output helpers every end-to-end test uses, shared with the other test binaries.
#[path = "../common/mod.rs"]
mod common;
pub use common::{json, statuses, stderr, stdout};
