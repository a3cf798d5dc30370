//! End-to-end tests of wf's AWS side against the emulator (tests/cloud/emulator.py: moto on
//! loopback, completed with Step Functions runs of SageMaker jobs that run `wf worker`) and against
//! loopback servers that misbehave on purpose. The first test that needs the emulator starts it
//! (tests/cloud/emulator.sh serve) unless MOTO_ENDPOINT names one already running; when it cannot
//! be started (no python3, no network for its packages, WF_NO_EMULATOR=1) those tests print SKIP
//! with the reason and pass, so `cargo test` passes anywhere.

#[path = "cloud/support.rs"]
mod support;

use std::path::Path;
use support::*;

/// Two `command` steps; each appends its id to runs.log in the workflow directory (outside any
/// cache), so a test can tell which commands really executed in which checkout.
fn shared_workflow(dir: &Path, cache: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            r#"name: shared
cache: {cache}
steps:
  a: {{ uses: command, with: {{ run: "echo a >> runs.log; echo hello > $WF_OUT/greeting.txt; mkdir -p $WF_OUT/bin; printf 'echo hi' > $WF_OUT/bin/hi.sh; chmod +x $WF_OUT/bin/hi.sh" }} }}
  b: {{ uses: command, inputs: {{ src: a }}, with: {{ run: "echo b >> runs.log; cat $WF_IN_src/greeting.txt $WF_IN_src/greeting.txt > $WF_OUT/twice.txt" }} }}
"#
        ),
    )
    .unwrap();
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn a_second_checkout_gets_cache_hits_from_s3() {
    let Some(moto) = moto("a_second_checkout_gets_cache_hits_from_s3") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("shared");
    let cache = format!("s3://{bucket}/team");
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    shared_workflow(&a, &cache);
    shared_workflow(&b, &cache);

    let local_a = a.join("local").to_string_lossy().into_owned();
    let first = wf_with(
        &a,
        Some(&moto),
        &[("WF_LOCAL_CACHE", &local_a)],
        &["run", "wf.yaml", "--json"],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let v = json(&first);
    assert_eq!(
        statuses(&v),
        vec![("a".into(), "ran".into()), ("b".into(), "ran".into())]
    );
    // The local working copy is where $WF_LOCAL_CACHE says.
    assert!(Path::new(&local_a).join("entries").is_dir());

    // Everything a reader needs is in S3, in the layout of docs/cloud.md.
    for step in v["steps"].as_array().unwrap() {
        let key = step["key"].as_str().unwrap();
        let artifact = step["output"]["digest"].as_str().unwrap();
        let entry = moto
            .get(&bucket, &format!("team/entries/{key}.json"))
            .expect("entry published");
        let entry: serde_json::Value = serde_json::from_slice(&entry).unwrap();
        assert_eq!(entry["artifact"], artifact);
        assert_eq!(entry["key"], key);
        let manifest = moto
            .get(&bucket, &format!("team/manifests/{artifact}.txt"))
            .expect("manifest published");
        assert_eq!(
            blake3_hex(&manifest),
            artifact,
            "manifest hashes to the artifact"
        );
    }
    let a_artifact = v["steps"][0]["output"]["digest"].as_str().unwrap();
    assert_eq!(
        moto.get(&bucket, &format!("team/trees/{a_artifact}/greeting.txt"))
            .as_deref(),
        Some(&b"hello\n"[..])
    );
    assert!(
        moto.get(&bucket, &format!("team/trees/{a_artifact}/bin/hi.sh"))
            .is_some()
    );
    assert_eq!(
        moto.get(&bucket, &format!("team/objects/{}", blake3_hex(b"hello\n")))
            .as_deref(),
        Some(&b"hello\n"[..])
    );

    // Checkout b: fresh local cache, same S3 cache. `plan` sees the hits without downloading.
    let local_b = b.join("local").to_string_lossy().into_owned();
    let env_b = [("WF_LOCAL_CACHE", local_b.as_str())];
    let plan = wf_with(&b, Some(&moto), &env_b, &["plan", "wf.yaml", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let p = json(&plan);
    for s in p["steps"].as_array().unwrap() {
        assert_eq!(s["cache"], "hit", "{p}");
        assert!(
            s["reason"].as_str().unwrap().contains(&cache),
            "reason names the S3 cache: {p}"
        );
    }
    let second = wf_with(&b, Some(&moto), &env_b, &["run", "wf.yaml", "--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let w = json(&second);
    assert_eq!(
        statuses(&w),
        vec![("a".into(), "cached".into()), ("b".into(), "cached".into())]
    );
    assert!(!b.join("runs.log").exists(), "no command ran in checkout b");
    assert_eq!(
        std::fs::read_to_string(a.join("runs.log")).unwrap(),
        "a\nb\n"
    );
    // Same keys, same artifacts, and the bytes are in b's local store (executable bit included).
    for (x, y) in v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["steps"].as_array().unwrap())
    {
        assert_eq!(x["key"], y["key"]);
        assert_eq!(x["output"]["digest"], y["output"]["digest"]);
    }
    let out_b = Path::new(w["steps"][1]["output"]["path"].as_str().unwrap());
    assert!(out_b.starts_with(std::fs::canonicalize(&local_b).unwrap()));
    assert_eq!(
        std::fs::read_to_string(out_b.join("twice.txt")).unwrap(),
        "hello\nhello\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let a_out = Path::new(w["steps"][0]["output"]["path"].as_str().unwrap());
    let mode = std::fs::metadata(a_out.join("bin/hi.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "executable bit survives S3: {mode:o}");
    // The local copy in b verifies like any local cache.
    let verify = wf_with(
        &b,
        Some(&moto),
        &env_b,
        &["cache", "verify", "--cache", &local_b],
    );
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
}

#[test]
fn a_local_result_is_published_when_the_cache_moves_to_s3() {
    let Some(moto) = moto("a_local_result_is_published_when_the_cache_moves_to_s3") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("late");
    let t = tempfile::tempdir().unwrap();
    // First a purely local run...
    shared_workflow(t.path(), ".wf/cache");
    let local = wf_with(t.path(), Some(&moto), &[], &["run", "wf.yaml", "--json"]);
    assert_eq!(local.status.code(), Some(0), "{}", stderr(&local));
    // ...then the same working copy with an S3 layer: local hits, now published.
    let url = format!("s3://{bucket}");
    let out = wf_with(
        t.path(),
        Some(&moto),
        &[],
        &["run", "wf.yaml", "--json", "--cache", &url],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    for s in v["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "cached");
        let key = s["key"].as_str().unwrap();
        // `s3://bucket` alone means the prefix wf-cache (docs/cloud.md §1).
        assert!(
            moto.get(&bucket, &format!("wf-cache/entries/{key}.json"))
                .is_some(),
            "entry {key} published"
        );
    }
}

#[test]
fn a_missing_bucket_is_named() {
    let Some(moto) = moto("a_missing_bucket_is_named") else {
        return;
    };
    let _shared = moto.shared();
    let t = tempfile::tempdir().unwrap();
    let bucket = format!("wf-no-such-bucket-{}", std::process::id());
    shared_workflow(t.path(), &format!("s3://{bucket}/p"));
    let out = wf_with(t.path(), Some(&moto), &[], &["run", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("s3://{bucket}")), "{err}");
    assert!(err.contains("bucket does not exist"), "{err}");
    assert!(!t.path().join("runs.log").exists());
}

/// Restores moto's default (no IAM enforcement) even when the test fails.
struct IamOff<'a>(&'a Moto);
impl Drop for IamOff<'_> {
    fn drop(&mut self) {
        self.0.enforce_iam(false);
    }
}

#[test]
fn access_denied_is_reported_with_the_object_and_the_cause() {
    let Some(moto) = moto("access_denied_is_reported_with_the_object_and_the_cause") else {
        return;
    };
    let _exclusive = moto.exclusive();
    let bucket = moto.bucket("denied");
    let user = format!("wf-reader-{}", std::process::id());
    moto.query(
        "iam",
        &format!("Action=CreateUser&UserName={user}&Version=2010-05-08"),
    );
    // May list the bucket (so opening the cache works), may not read or write objects.
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:ListBucket","s3:HeadBucket"],"Resource":"*"}]}"#;
    moto.query(
        "iam",
        &format!(
            "Action=PutUserPolicy&UserName={user}&PolicyName=list-only&PolicyDocument={}&Version=2010-05-08",
            urlencode(policy)
        ),
    );
    let keys = moto.query(
        "iam",
        &format!("Action=CreateAccessKey&UserName={user}&Version=2010-05-08"),
    );
    let id = xml_value(&keys, "AccessKeyId").unwrap();
    let secret = xml_value(&keys, "SecretAccessKey").unwrap();
    let t = tempfile::tempdir().unwrap();
    shared_workflow(t.path(), &format!("s3://{bucket}/p"));
    moto.enforce_iam(true);
    let _off = IamOff(&moto);
    let out = wf_with(
        t.path(),
        Some(&moto),
        &[
            ("AWS_ACCESS_KEY_ID", id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
            ("AWS_MAX_ATTEMPTS", "2"),
        ],
        &["run", "wf.yaml", "--json"],
    );
    drop(_off);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let v = json(&out);
    let msg = v["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("s3://{bucket}/p/entries/")), "{msg}");
    assert!(msg.contains("AccessDenied") && msg.contains("403"), "{msg}");
    assert!(msg.contains("permission"), "{msg}");
    assert!(!t.path().join("runs.log").exists(), "nothing ran: {err}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Throttling and server errors are retried by the SDK (AWS_MAX_ATTEMPTS attempts) and then
/// reported with the status and the number of attempts. No emulator needed: a loopback server
/// answers every request with the error and counts them.
#[test]
fn throttling_and_server_errors_are_retried_then_reported() {
    for (status, body, what) in [
        (
            "503 Slow Down",
            "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
            "503",
        ),
        (
            "500 Internal Server Error",
            "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>",
            "500",
        ),
    ] {
        let server = FlakyServer::start(status, body, 20);
        let t = tempfile::tempdir().unwrap();
        shared_workflow(t.path(), "s3://flaky-bucket/p");
        let mut cmd = std::process::Command::new(wf_bin());
        cmd.args(["run", "wf.yaml"])
            .current_dir(t.path())
            .env("AWS_ENDPOINT_URL", &server.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "3")
            .env_remove("AWS_PROFILE");
        let out = cmd.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(server.hits(), 3, "three attempts, then give up: {err}");
        assert!(err.contains(what), "{err}");
        assert!(err.contains("gave up after 3 attempts"), "{err}");
        assert!(err.contains("s3://flaky-bucket"), "{err}");
    }
}

/// A small MSD-layout data set as a tar (made by `wf synth` and the system `tar`).
fn msd_tar(dir: &Path) -> Vec<u8> {
    let data = dir.join("synth");
    let out = std::process::Command::new(wf_bin())
        .args(["synth", "--cases", "2", "--shape", "8,8,6", "--out"])
        .arg(data.join("Task01_BrainTumour"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tar = dir.join("task.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&data)
        .arg("Task01_BrainTumour")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(tar).unwrap()
}

/// fetch-dataset reads `s3://` through the SDK: signed with the credentials in the environment,
/// or anonymously when there are none (a public bucket); the md5 is checked either way.
#[test]
fn fetch_dataset_reads_s3_sources_through_the_sdk() {
    let Some(moto) = moto("fetch_dataset_reads_s3_sources_through_the_sdk") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("data");
    let t = tempfile::tempdir().unwrap();
    let tar = msd_tar(t.path());
    // A public object, as in the MSD bucket: readable without credentials.
    moto.put_with(
        &bucket,
        "msd/Task01.tar",
        &tar,
        &[("x-amz-acl", "public-read")],
    );
    let md5 = {
        let out = std::process::Command::new("md5sum")
            .arg(t.path().join("task.tar"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    for (name, anonymous) in [("signed", false), ("anonymous", true)] {
        let dir = t.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("wf.yaml"),
            format!(
                "name: fetch\nsteps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: s3://{bucket}/msd/Task01.tar, md5: {md5} }} }}\n  count: {{ uses: command, inputs: {{ d: fetch }}, with: {{ run: \"ls $WF_IN_d/imagesTr > $WF_OUT/cases.txt\" }} }}\n"
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(wf_bin());
        cmd.args(["run", "wf.yaml", "--json"]).current_dir(&dir);
        moto.env(&mut cmd);
        if anonymous {
            cmd.env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
                .env("AWS_CONFIG_FILE", dir.join("none"));
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let v = json(&out);
        let cases = Path::new(v["steps"][1]["output"]["path"].as_str().unwrap()).join("cases.txt");
        assert_eq!(
            std::fs::read_to_string(cases).unwrap().lines().count(),
            2,
            "{name}"
        );
    }
    // A missing key is an error naming the object and the service's answer.
    let dir = t.path().join("missing");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        format!("steps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: s3://{bucket}/nope.tar }} }}\n"),
    )
    .unwrap();
    let out = wf_with(&dir, Some(&moto), &[], &["run", "wf.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let msg = json(&out)["steps"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains(&format!("s3://{bucket}/nope.tar")), "{msg}");
    assert!(msg.contains("NoSuchKey") && msg.contains("404"), "{msg}");
}

/// Copies a tree (an artifact view is read-only; the copy is ordinary files).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn worker(moto: &Moto, root: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(wf_bin());
    cmd.arg("worker").args(args).env("WF_SM_ROOT", root);
    moto.env(&mut cmd);
    cmd.output().unwrap()
}

/// `wf worker` as a SageMaker job runs it: inputs where SageMaker mounts them (or, when not
/// mounted, from the cache), the key recomputed and checked, the output published entry-last.
#[test]
fn a_worker_runs_a_step_from_sagemaker_paths_and_publishes_it() {
    let Some(moto) = moto("a_worker_runs_a_step_from_sagemaker_paths_and_publishes_it") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("worker");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("local");
    let cloud = format!("s3://{bucket}/p");
    shared_workflow(&dir, &cloud);
    std::fs::write(
        dir.join("fails.yaml"),
        "steps:\n  bad: { uses: command, with: { run: \"echo disk on fire >&2; exit 3\" } }\n",
    )
    .unwrap();
    let local = dir.join("cache").to_string_lossy().into_owned();
    let env = [("WF_LOCAL_CACHE", local.as_str())];
    let out = wf_with(&dir, Some(&moto), &env, &["run", "wf.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    let (a, b) = (&v["steps"][0], &v["steps"][1]);
    let b_key = b["key"].as_str().unwrap();
    let input = format!("src={}", a["output"]["digest"].as_str().unwrap());
    let b_params = r#"{"run": "echo b >> runs.log; cat $WF_IN_src/greeting.txt $WF_IN_src/greeting.txt > $WF_OUT/twice.txt"}"#;
    // As if b had not been computed yet: a is in the cache, b is not.
    let b_entry = format!("p/entries/{b_key}.json");
    let forget_b = || {
        let (status, _) = moto.request("DELETE", &format!("/{bucket}/{b_entry}"), &[], b"");
        assert_eq!(status, 204);
        assert!(moto.get(&bucket, &b_entry).is_none());
    };
    forget_b();

    // A Processing job with its input mounted at /opt/ml/processing/input/src.
    let root = t.path().join("opt-ml");
    copy_tree(
        Path::new(a["output"]["path"].as_str().unwrap()),
        &root.join("processing/input/src"),
    );
    let args = [
        "command", "--step", "b", "--key", b_key, "--cache", &cloud, "--params", b_params,
        "--seed", "0", "--input", &input,
    ];
    let out = worker(&moto, &root, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("published"), "{}", stderr(&out));
    let entry: serde_json::Value =
        serde_json::from_slice(&moto.get(&bucket, &b_entry).unwrap()).unwrap();
    assert_eq!(
        entry["artifact"], b["output"]["digest"],
        "same bytes as the local run"
    );
    assert_eq!(
        moto.get(
            &bucket,
            &format!(
                "p/trees/{}/twice.txt",
                b["output"]["digest"].as_str().unwrap()
            )
        )
        .as_deref(),
        Some(&b"hello\nhello\n"[..])
    );
    // Published already: nothing to do.
    let again = worker(&moto, &root, &args);
    assert_eq!(again.status.code(), Some(0));
    assert!(stderr(&again).contains("already"), "{}", stderr(&again));

    // A key the worker does not compute from its arguments is refused, nothing published.
    let wrong = "0".repeat(64);
    let mut bad = args;
    bad[4] = &wrong;
    let out = worker(&moto, &root, &bad);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("differs from --key"),
        "{}",
        stderr(&out)
    );
    assert!(
        moto.get(&bucket, &format!("p/entries/{wrong}.json"))
            .is_none()
    );

    // Not mounted: the input comes from the cache.
    forget_b();
    let empty = t.path().join("empty-opt-ml");
    std::fs::create_dir_all(&empty).unwrap();
    let out = worker(&moto, &empty, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not mounted"), "{}", stderr(&out));
    assert!(moto.get(&bucket, &b_entry).is_some());

    // A failing step exits 1 with its stderr, and publishes nothing.
    let plan = wf_with(&dir, Some(&moto), &env, &["plan", "fails.yaml", "--json"]);
    let bad_key = json(&plan)["steps"][0]["key"].as_str().unwrap().to_string();
    let out = worker(
        &moto,
        &empty,
        &[
            "command",
            "--step",
            "bad",
            "--key",
            &bad_key,
            "--cache",
            &cloud,
            "--params",
            r#"{"run": "echo disk on fire >&2; exit 3"}"#,
            "--seed",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk on fire"), "{}", stderr(&out));
    assert!(
        moto.get(&bucket, &format!("p/entries/{bad_key}.json"))
            .is_none()
    );
}

/// The emulator with Step Functions and SageMaker jobs that run `wf worker` (tests/cloud/emulator.py),
/// or `None` with the reason printed.
fn moto_with_jobs(test: &str) -> Option<Moto> {
    let moto = moto(test)?;
    if moto.jobs {
        return Some(moto);
    }
    eprintln!(
        "SKIP {test}: the emulator at MOTO_ENDPOINT is not tests/cloud/emulator.py (WF_EMULATOR=jobs is not set), which runs Step Functions jobs' containers"
    );
    None
}

fn cloud_workflow(dir: &Path, bucket: &str, machine: &str, steps: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            r#"name: {machine}
cache: s3://{bucket}/p
steps:
{steps}targets:
  aws:
    region: us-east-1
    role_arn: arn:aws:iam::123456789012:role/wf
    image_uri: "local:{}"
    state_machine_name: {machine}
"#,
            wf_bin().display()
        ),
    )
    .unwrap();
}

/// deploy → start --wait → SUCCEEDED, every job a real `wf worker` publishing to the emulator's S3
/// with keys the state machine computed; a local checkout then sees both steps cached in S3; a second
/// execution finds every step cached; `wf status` reads the history back.
#[test]
fn deploy_and_start_run_steps_as_sagemaker_jobs_sharing_the_cache() {
    let Some(moto) =
        moto_with_jobs("deploy_and_start_run_steps_as_sagemaker_jobs_sharing_the_cache")
    else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("sfn");
    let machine = format!("wf-cmd-{}", std::process::id());
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("w");
    cloud_workflow(
        &dir,
        &bucket,
        &machine,
        "  a: { uses: command, with: { run: \"echo hello > $WF_OUT/greeting.txt\" } }\n  b: { uses: command, inputs: { src: a }, with: { run: \"cat $WF_IN_src/greeting.txt $WF_IN_src/greeting.txt > $WF_OUT/twice.txt\" } }\n",
    );
    let poll = [("WF_POLL_SECONDS", "0.5")];
    let out = wf_with(&dir, Some(&moto), &poll, &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("created"), "{}", stderr(&out));
    assert!(stdout(&out).trim().starts_with("arn:aws:states:us-east-1:"));
    let again = wf_with(&dir, Some(&moto), &poll, &["deploy", "wf.yaml"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stderr(&again).contains("up to date"), "{}", stderr(&again));
    assert_eq!(stdout(&again), stdout(&out), "same state machine");

    let run = wf_with(&dir, Some(&moto), &poll, &["start", "wf.yaml", "--wait"]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}\n{}", stderr(&run));
    assert!(text.contains("SUCCEEDED"), "{text}");
    for id in ["a", "b"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [id, "ran"]),
            "{text}"
        );
    }
    // Keys computed in the state machine are the local keys: a fresh checkout gets hits.
    let local = dir.join("fresh").to_string_lossy().into_owned();
    let plan = wf_with(
        &dir,
        Some(&moto),
        &[("WF_LOCAL_CACHE", &local)],
        &["plan", "wf.yaml", "--json"],
    );
    let p = json(&plan);
    for s in p["steps"].as_array().unwrap() {
        assert_eq!(s["cache"], "hit", "{p}");
    }
    let b_artifact = {
        let key = p["steps"][1]["key"].as_str().unwrap();
        let entry = moto.get(&bucket, &format!("p/entries/{key}.json")).unwrap();
        serde_json::from_slice::<serde_json::Value>(&entry).unwrap()["artifact"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        moto.get(&bucket, &format!("p/trees/{b_artifact}/twice.txt"))
            .as_deref(),
        Some(&b"hello\nhello\n"[..])
    );

    let second = wf_with(&dir, Some(&moto), &poll, &["start", "wf.yaml", "--wait"]);
    let text2 = stdout(&second);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{text2}\n{}",
        stderr(&second)
    );
    for id in ["a", "b"] {
        assert!(
            text2
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [id, "cached"]),
            "{text2}"
        );
    }
    let arn = text2.lines().next().unwrap().trim().to_string();
    assert!(arn.contains(":execution:"), "{text2}");
    let status = wf_with(&dir, Some(&moto), &[], &["status", &arn]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).contains("SUCCEEDED"), "{}", stdout(&status));
    assert!(stdout(&status).contains("cached"), "{}", stdout(&status));
}

/// A job that fails (the emulator fails jobs named `fail-...`, i.e. steps named so) takes the Catch
/// path; `wf start --wait` exits 1 naming the step, and the step after it never runs.
#[test]
fn a_failed_job_fails_the_execution_naming_the_step() {
    let Some(moto) = moto_with_jobs("a_failed_job_fails_the_execution_naming_the_step") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("sfnfail");
    let machine = format!("wf-fail-{}", std::process::id());
    let t = tempfile::tempdir().unwrap();
    cloud_workflow(
        t.path(),
        &bucket,
        &machine,
        "  fail-early: { uses: command, with: { run: \"echo never > $WF_OUT/x\" } }\n  after: { uses: command, inputs: { x: fail-early }, with: { run: \"cp $WF_IN_x/x $WF_OUT/y\" } }\n",
    );
    let poll = [("WF_POLL_SECONDS", "0.5")];
    let out = wf_with(t.path(), Some(&moto), &poll, &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = wf_with(
        t.path(),
        Some(&moto),
        &poll,
        &["start", "wf.yaml", "--wait"],
    );
    let (o, e) = (stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(1), "{o}\n{e}");
    assert!(e.contains("step `fail-early` failed"), "{o}\n{e}");
    assert!(o.contains("FAILED"), "{o}");
    assert!(!o.contains("after"), "the next step never started: {o}");
    assert!(moto.keys(&bucket, "p/entries/").is_empty());
}

/// `workflows/brats.yaml` as compiled for the cloud, on data the emulator can hold: the same steps,
/// targets and instance counts, with the 7 GB download replaced by a small synthetic MSD tar in the
/// emulator's S3, smaller crops and copies, a tiny network and one epoch (params change keys, not
/// the structure of the state machine).
fn brats_for_emulator(dir: &Path, bucket: &str, name: &str, md5: &str) {
    let mut y =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/brats.yaml"))
            .unwrap();
    let mut swap = |from: &str, to: &str| {
        assert!(
            y.contains(from),
            "workflows/brats.yaml no longer has `{from}`"
        );
        y = y.replacen(from, to, 1);
    };
    swap("name: brats", &format!("name: {name}"));
    swap(
        "source: https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar",
        &format!("source: s3://{bucket}/msd/Task01.tar"),
    );
    swap(
        "md5: 240a19d752f0d9e9101544901065d872",
        &format!("md5: {md5}"),
    );
    swap("roi: [128, 128, 64]", "roi: [16, 16, 16]");
    swap("copies_per_case: 101", "copies_per_case: 2");
    swap(
        "with: { epochs: 10, batch_size: 8, lr: 1.0e-4, val_fraction: 0.01, precision: bf16 }",
        "with: { epochs: 1, batch_size: 2, lr: 1.0e-3, val_fraction: 0.25, gpus: 0, channels: [4, 8, 16], strides: [2, 2], num_res_units: 1 }",
    );
    swap(
        "bucket: s3://wf-brats-123456789012/wf-cache",
        &format!("bucket: s3://{bucket}/wf-cache"),
    );
    swap(
        "image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/wf:latest",
        &format!("image_uri: \"local:{}\"", wf_bin().display()),
    );
    // Production settings: tags on everything, a KMS key, managed spot training.
    swap(
        "    steps:\n      fetch:",
        "    tags: { project: brats, team: imaging }\n    kms_key_id: alias/wf-brats\n    \
         log_level: ALL\n    tracing: true\n    steps:\n      fetch:",
    );
    swap(
        "max_runtime_seconds: 172800 }",
        "max_runtime_seconds: 172800,\n               spot: true, tags: { team: gpu } }",
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("brats.yaml"), y).unwrap();
}

/// Synthetic BraTS-like data (4 cases, 40x40x32) as an MSD tar, and its md5.
fn brats_data(dir: &Path) -> (Vec<u8>, String) {
    let out = std::process::Command::new(wf_bin())
        .args([
            "synth", "--cases", "4", "--shape", "40,40,32", "--seed", "1", "--out",
        ])
        .arg(dir.join("synth/Task01_BrainTumour"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tar = dir.join("task.tar");
    assert!(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.join("synth"))
            .arg("Task01_BrainTumour")
            .status()
            .unwrap()
            .success()
    );
    let out = std::process::Command::new("md5sum")
        .arg(&tar)
        .output()
        .unwrap();
    let md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (std::fs::read(tar).unwrap(), md5)
}

/// The parameters each Task state sent, by state name (from the execution history).
fn scheduled(moto: &Moto, execution: &str) -> Vec<(String, serde_json::Value)> {
    let h = moto.json_call(
        "states",
        "AWSStepFunctions.GetExecutionHistory",
        &serde_json::json!({ "executionArn": execution, "maxResults": 1000 }),
    );
    let mut state = String::new();
    let mut out = Vec::new();
    for e in h["events"].as_array().unwrap() {
        if let Some(name) = e["stateEnteredEventDetails"]["name"].as_str() {
            state = name.to_string();
        }
        if let Some(p) = e["taskScheduledEventDetails"]["parameters"].as_str() {
            out.push((state.clone(), serde_json::from_str(p).unwrap()));
        }
    }
    out
}

/// deploy + start --wait of workflows/brats.yaml: every job is a real `wf worker` (preprocessing,
/// training on the FSx file system's import path, export); the execution SUCCEEDS, the jobs and the
/// file system are configured as the blog's pipeline, the export is in S3, and a second execution
/// skips every step.
#[test]
fn brats_deploys_and_runs_in_the_emulator() {
    let Some(moto) = moto_with_jobs("brats_deploys_and_runs_in_the_emulator") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("brats");
    let t = tempfile::tempdir().unwrap();
    let (tar, md5) = brats_data(t.path());
    moto.put(&bucket, "msd/Task01.tar", &tar);
    let name = format!("brats{}", std::process::id());
    let dir = t.path().join("w");
    brats_for_emulator(&dir, &bucket, &name, &md5);
    let env = [("WF_POLL_SECONDS", "1")];
    let out = wf_with(&dir, Some(&moto), &env, &["deploy", "brats.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The state machine logs everything to its log group, is traced and carries the tags.
    let arn = stdout(&out).trim().to_string();
    let d = moto.json_call(
        "states",
        "AWSStepFunctions.DescribeStateMachine",
        &serde_json::json!({ "stateMachineArn": arn }),
    );
    let logging = &d["loggingConfiguration"];
    assert_eq!(logging["level"], "ALL", "{logging}");
    let group = logging["destinations"][0]["cloudWatchLogsLogGroup"]["logGroupArn"]
        .as_str()
        .unwrap_or_default();
    assert!(
        group.ends_with(&format!(":log-group:/aws/vendedlogs/states/wf-{name}:*")),
        "{logging}"
    );
    assert_eq!(d["tracingConfiguration"]["enabled"], true);
    let tags = moto.json_call(
        "states",
        "AWSStepFunctions.ListTagsForResource",
        &serde_json::json!({ "resourceArn": arn }),
    );
    let mut tags: Vec<(String, String)> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().into(),
                t["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            ("project".into(), "brats".into()),
            ("team".into(), "imaging".into())
        ]
    );
    let run = wf_with(&dir, Some(&moto), &env, &["start", "brats.yaml", "--wait"]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}\n{}", stderr(&run));
    assert!(text.contains("SUCCEEDED"), "{text}");
    let execution = text.lines().next().unwrap().trim().to_string();
    for id in ["fetch", "preprocess", "train", "export"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [id, "ran"]),
            "{id}: {text}"
        );
    }

    let tasks = scheduled(&moto, &execution);
    let params = |state: &str| {
        tasks
            .iter()
            .find(|(s, _)| s == state)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no task {state}: {:?}",
                    tasks.iter().map(|t| &t.0).collect::<Vec<_>>()
                )
            })
    };
    // Preprocessing: 20 instances, the images sharded by S3 key, labels and dataset.json replicated.
    let pre = params("preprocess.Run");
    assert_eq!(
        pre["ProcessingResources"]["ClusterConfig"]["InstanceCount"], 20,
        "{pre}"
    );
    assert_eq!(
        pre["ProcessingResources"]["ClusterConfig"]["InstanceType"],
        "ml.c5.9xlarge"
    );
    let inputs = pre["ProcessingInputs"].as_array().unwrap();
    let images = inputs
        .iter()
        .find(|i| {
            i["S3Input"]["LocalPath"]
                .as_str()
                .unwrap()
                .ends_with("/imagesTr")
        })
        .unwrap();
    assert_eq!(
        images["S3Input"]["S3DataDistributionType"], "ShardedByS3Key",
        "{pre}"
    );
    assert!(
        inputs
            .iter()
            .filter(|i| i != &images)
            .all(|i| i["S3Input"]["S3DataDistributionType"] == "FullyReplicated")
    );
    // Training reads the samples from the FSx for Lustre file system the state machine created.
    let fsx = params("train.Fsx.Create");
    assert_eq!(fsx["FileSystemType"], "LUSTRE", "{fsx}");
    assert_eq!(fsx["StorageCapacity"], 2400, "{fsx}");
    assert_eq!(
        fsx["LustreConfiguration"]["DeploymentType"], "SCRATCH_2",
        "{fsx}"
    );
    assert!(
        fsx["LustreConfiguration"]["ImportPath"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/wf-cache/trees/")),
        "{fsx}"
    );
    let train = params("train.Run");
    assert_eq!(train["ResourceConfig"]["InstanceCount"], 2, "{train}");
    let channel = &train["InputDataConfig"][0];
    assert_eq!(channel["ChannelName"], "samples", "{train}");
    assert_eq!(
        channel["DataSource"]["FileSystemDataSource"]["FileSystemType"], "FSxLustre",
        "{train}"
    );
    assert!(
        !train["VpcConfig"]["Subnets"].as_array().unwrap().is_empty(),
        "{train}"
    );
    assert!(
        tasks.iter().any(|(s, _)| s == "train.Fsx.Delete"),
        "the file system is deleted after training"
    );
    // Managed spot, metrics, tags and the KMS key, as sent to SageMaker.
    assert_eq!(train["EnableManagedSpotTraining"], true, "{train}");
    assert_eq!(train["StoppingCondition"]["MaxWaitTimeInSeconds"], 345_600);
    assert_eq!(
        train["AlgorithmSpecification"]["MetricDefinitions"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(train["OutputDataConfig"]["KmsKeyId"], "alias/wf-brats");
    for (state, p) in tasks
        .iter()
        .filter(|(s, _)| s.ends_with(".Run") || s.ends_with(".Commit"))
    {
        let step = state.split('.').next().unwrap();
        let tags: Vec<(&str, &str)> = p["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["Key"].as_str().unwrap(), t["Value"].as_str().unwrap()))
            .collect();
        let team = if step == "train" { "gpu" } else { "imaging" };
        assert_eq!(
            tags,
            [("wf:step", step), ("project", "brats"), ("team", team)],
            "{state}"
        );
    }

    // The export is in the cache, as a plain tree. A local run against the same cache computes
    // nothing but the fsx-import pass-through (the cloud writes no entry for it, docs/cloud.md §4).
    let cache = format!("s3://{bucket}/wf-cache");
    let local = dir.join("fresh").to_string_lossy().into_owned();
    let run_local = wf_with(
        &dir,
        Some(&moto),
        &[("WF_LOCAL_CACHE", &local)],
        &["run", "brats.yaml", "--json", "--cache", &cache],
    );
    assert_eq!(run_local.status.code(), Some(0), "{}", stderr(&run_local));
    let p = json(&run_local);
    assert_eq!(
        statuses(&p),
        [
            ("fetch", "cached"),
            ("preprocess", "cached"),
            ("stage", "ran"),
            ("train", "cached"),
            ("export", "cached")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec(),
        "{p}"
    );
    let export_key = p["steps"][4]["key"].as_str().unwrap().to_string();
    let entry: serde_json::Value = serde_json::from_slice(
        &moto
            .get(&bucket, &format!("wf-cache/entries/{export_key}.json"))
            .unwrap(),
    )
    .unwrap();
    let tree = format!("wf-cache/trees/{}/", entry["artifact"].as_str().unwrap());
    let files = moto.keys(&bucket, &tree);
    for f in ["model.safetensors", "config.json", "metrics.json"] {
        assert!(files.iter().any(|k| k.ends_with(f)), "{f} in {files:?}");
    }
    // What the jobs wrote is SSE-KMS under the workflow's key.
    for key in files
        .iter()
        .chain(&[format!("wf-cache/entries/{export_key}.json")])
    {
        let h = moto.head(&bucket, key);
        let header = |name: &str| {
            h.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        assert_eq!(
            header("x-amz-server-side-encryption"),
            "aws:kms",
            "{key}: {h:?}"
        );
        assert!(
            header("x-amz-server-side-encryption-aws-kms-key-id").ends_with("alias/wf-brats"),
            "{key}: {h:?}"
        );
    }

    // Everything is cached now: a second execution runs no job.
    let again = wf_with(&dir, Some(&moto), &env, &["start", "brats.yaml", "--wait"]);
    let text2 = stdout(&again);
    assert_eq!(again.status.code(), Some(0), "{text2}\n{}", stderr(&again));
    for id in ["fetch", "preprocess", "train", "export"] {
        assert!(
            text2
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [id, "cached"]),
            "{id}: {text2}"
        );
    }
}

/// A sharded-transform on 3 instances (docs/cloud.md §6): each instance of the emulated job sees only
/// its ShardedByS3Key share of `imagesTr/`, publishes a part, and the commit job merges the parts into
/// the very artifact a local `wf run` produces (same digest). A commit with a part missing fails
/// naming the case no part covers, and publishes nothing.
#[test]
fn a_sharded_step_on_three_instances_equals_a_local_run() {
    let Some(moto) = moto_with_jobs("a_sharded_step_on_three_instances_equals_a_local_run") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("shards");
    let t = tempfile::tempdir().unwrap();
    let (tar, md5) = brats_data(t.path());
    moto.put(&bucket, "msd/Task01.tar", &tar);
    let machine = format!("wf-shards-{}", std::process::id());
    let dir = t.path().join("w");
    let steps = format!(
        r#"  fetch: {{ uses: fetch-dataset, with: {{ source: "s3://{bucket}/msd/Task01.tar", md5: {md5} }} }}
  prep:
    uses: sharded-transform
    inputs: {{ dataset: fetch }}
    with:
      shards: 3
      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - rand-spatial-crop: {{ roi: [16, 16, 16] }}
        - rand-flip: {{ prob: 0.5, axis: 0 }}
      copies_per_case: 2
"#
    );
    cloud_workflow(&dir, &bucket, &machine, &steps);
    let env = [("WF_POLL_SECONDS", "0.5")];
    let out = wf_with(&dir, Some(&moto), &env, &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = wf_with(&dir, Some(&moto), &env, &["start", "wf.yaml", "--wait"]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}\n{}", stderr(&run));
    assert!(text.contains("SUCCEEDED"), "{text}");
    let execution = text.lines().next().unwrap().trim().to_string();
    let tasks = scheduled(&moto, &execution);
    let task = |state: &str| {
        tasks
            .iter()
            .find(|(s, _)| s == state)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no task {state}"))
    };
    assert_eq!(
        task("prep.Run")["ProcessingResources"]["ClusterConfig"]["InstanceCount"],
        3
    );
    let commit = task("prep.Commit");
    let commit_args: Vec<String> = commit["AppSpecification"]["ContainerArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let key = commit_args[commit_args.iter().position(|a| a == "--key").unwrap() + 1].clone();
    let entry_key = format!("p/entries/{key}.json");
    let entry: serde_json::Value =
        serde_json::from_slice(&moto.get(&bucket, &entry_key).expect("the commit published"))
            .unwrap();
    let cloud_artifact = entry["artifact"].as_str().unwrap().to_string();
    assert!(
        moto.keys(&bucket, &format!("p/staging/{key}/")).is_empty(),
        "the commit removes the parts"
    );
    assert!(
        moto.get(&bucket, &format!("p/trees/{cloud_artifact}/index.json"))
            .is_some()
    );

    // The same workflow run locally, on a local cache: the same key and the same artifact.
    let local = t.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let yaml = std::fs::read_to_string(dir.join("wf.yaml")).unwrap();
    let yaml = yaml.replacen(
        &format!("cache: s3://{bucket}/p"),
        &format!("cache: {}", t.path().join("local-cache").display()),
        1,
    );
    std::fs::write(local.join("wf.yaml"), yaml).unwrap();
    let lrun = wf_with(&local, Some(&moto), &[], &["run", "wf.yaml", "--json"]);
    assert_eq!(lrun.status.code(), Some(0), "{}", stderr(&lrun));
    let p = json(&lrun);
    let prep = &p["steps"][1];
    assert_eq!(prep["id"], "prep", "{p}");
    assert_eq!(prep["key"], key.as_str(), "{p}");
    assert_eq!(
        prep["output"]["digest"].as_str().unwrap(),
        cloud_artifact,
        "3 shards + commit give a local run's artifact"
    );

    // A commit that lacks part 2 fails naming the case no part covers, and writes no entry.
    let (_, _) = moto.request("DELETE", &format!("/{bucket}/{entry_key}"), &[], b"");
    assert!(moto.get(&bucket, &entry_key).is_none());
    let synth = t.path().join("synth/Task01_BrainTumour/dataset.json");
    let ds: serde_json::Value = serde_json::from_slice(&std::fs::read(synth).unwrap()).unwrap();
    let ids: Vec<String> = ds["training"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let image = c["image"].as_str().unwrap();
            let name = image.rsplit('/').next().unwrap();
            name.trim_end_matches(".gz")
                .trim_end_matches(".nii")
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 4);
    let header = "wf-manifest-v1\n";
    for (i, cases) in [(0, &ids[..2]), (1, &ids[2..3])] {
        let record = serde_json::json!({
            "shard": i,
            "done": cases.iter().map(|id| serde_json::json!({ "id": id, "files": [] })).collect::<Vec<_>>(),
            "skipped": [],
        });
        moto.put(
            &bucket,
            &format!("p/staging/{key}/part-{i}.cases.json"),
            record.to_string().as_bytes(),
        );
        moto.put(
            &bucket,
            &format!("p/staging/{key}/part-{i}.txt"),
            header.as_bytes(),
        );
    }
    let root = t.path().join("commit-root");
    std::fs::create_dir_all(&root).unwrap();
    let mut wargs = vec!["commit"];
    wargs.extend(commit_args.iter().map(String::as_str));
    let out = worker(&moto, &root, &wargs);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("part 2 of 3 is missing"), "{e}");
    assert!(
        e.contains(&format!("1 of 4 cases are in no part: {}", ids[3])),
        "{e}"
    );
    assert!(moto.get(&bucket, &entry_key).is_none(), "no entry: {e}");
}

/// `wf run --executor sagemaker`: the local engine orchestrates; fetch, preprocess, train and export
/// run as SageMaker jobs (real `wf worker`s in the emulator), fsx-import locally, training from an
/// FSx file system; outputs come back through the S3 cache, and a rerun is all cached.
#[test]
fn run_with_the_sagemaker_executor() {
    let Some(moto) = moto_with_jobs("run_with_the_sagemaker_executor") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("executor");
    let t = tempfile::tempdir().unwrap();
    let (tar, md5) = brats_data(t.path());
    moto.put(&bucket, "msd/Task01.tar", &tar);
    let name = format!("bratsx{}", std::process::id());
    let dir = t.path().join("w");
    brats_for_emulator(&dir, &bucket, &name, &md5);
    let local = dir.join("local").to_string_lossy().into_owned();
    let env = [
        ("WF_POLL_SECONDS", "0.5"),
        ("WF_LOCAL_CACHE", local.as_str()),
    ];
    let run = wf_with(
        &dir,
        Some(&moto),
        &env,
        &["run", "brats.yaml", "--json", "--executor", "sagemaker"],
    );
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let v = json(&run);
    assert!(
        statuses(&v).iter().all(|(_, s)| s == "ran"),
        "{}",
        stderr(&run)
    );
    // The jobs, as SageMaker recorded them.
    let jobs = moto.json_call(
        "sagemaker",
        "SageMaker.ListTrainingJobs",
        &serde_json::json!({ "MaxResults": 100 }),
    );
    let ours = format!("s3://{bucket}/");
    let d = jobs["TrainingJobSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            moto.json_call(
                "sagemaker",
                "SageMaker.DescribeTrainingJob",
                &serde_json::json!({ "TrainingJobName": j["TrainingJobName"] }),
            )
        })
        .find(|d| {
            d["AlgorithmSpecification"]["ContainerArguments"]
                .to_string()
                .contains(&ours)
        })
        .expect("our training job");
    assert_eq!(
        d["AlgorithmSpecification"]["ContainerEntrypoint"],
        serde_json::json!(["wf", "worker", "train-unet"]),
        "{d}"
    );
    let channel = &d["InputDataConfig"][0];
    assert_eq!(channel["ChannelName"], "samples", "{d}");
    assert_eq!(
        channel["DataSource"]["FileSystemDataSource"]["FileSystemType"], "FSxLustre",
        "{d}"
    );
    assert_eq!(d["ResourceConfig"]["InstanceCount"], 2, "{d}");
    assert_eq!(
        d["ResourceConfig"]["InstanceType"], "ml.p4d.24xlarge",
        "{d}"
    );
    let args: Vec<String> = d["AlgorithmSpecification"]["ContainerArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let train_key = v["steps"][3]["key"].as_str().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--key" && w[1] == train_key),
        "{args:?}"
    );
    let pjobs = moto.json_call(
        "sagemaker",
        "SageMaker.ListProcessingJobs",
        &serde_json::json!({ "MaxResults": 100 }),
    );
    let p = pjobs["ProcessingJobSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| {
            j["ProcessingJobName"]
                .as_str()
                .unwrap()
                .starts_with("preprocess-")
        })
        .map(|j| {
            moto.json_call(
                "sagemaker",
                "SageMaker.DescribeProcessingJob",
                &serde_json::json!({ "ProcessingJobName": j["ProcessingJobName"] }),
            )
        })
        .find(|d| {
            d["AppSpecification"]["ContainerArguments"]
                .to_string()
                .contains(&ours)
        })
        .expect("our preprocessing job");
    let sharded: Vec<&serde_json::Value> = p["ProcessingInputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["S3Input"]["S3DataDistributionType"] == "ShardedByS3Key")
        .collect();
    assert_eq!(sharded.len(), 1, "{p}");
    assert!(
        sharded[0]["S3Input"]["S3Uri"]
            .as_str()
            .unwrap()
            .ends_with("/imagesTr/")
    );
    let pargs = p["AppSpecification"]["ContainerArguments"].to_string();
    assert!(pargs.contains("\"--shards\",\"20\""), "{pargs}");

    // Everything is in the cache now.
    let again = wf_with(
        &dir,
        Some(&moto),
        &env,
        &["run", "brats.yaml", "--json", "--executor", "sagemaker"],
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        statuses(&json(&again)).iter().all(|(_, s)| s == "cached"),
        "{}",
        stdout(&again)
    );
}

/// Steps that read nothing of each other run at once in the state machine, as they do locally: a
/// fan-out (`root` → `a`, `b`, `c`) whose leaves also form a diamond (`a`, `b` → `join`). Each job
/// records when its command started and ended; the three leaves overlap, and `join` starts after
/// the two it reads.
#[test]
fn independent_steps_run_at_once_in_the_emulator() {
    let Some(moto) = moto_with_jobs("independent_steps_run_at_once_in_the_emulator") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("parallel");
    let machine = format!("wf-par-{}", std::process::id());
    let t = tempfile::tempdir().unwrap();
    let times = t.path().join("times");
    std::fs::create_dir_all(&times).unwrap();
    let step = |id: &str, inputs: &str| {
        format!(
            "  {id}: {{ uses: command,{inputs} with: {{ run: \"date +%s.%N > {t}/{id}.start; sleep 2; date +%s.%N > {t}/{id}.end; echo {id} > $WF_OUT/{id}.txt\" }} }}\n",
            t = times.display()
        )
    };
    let steps = [
        step("root", ""),
        step("a", " inputs: { src: root },"),
        step("b", " inputs: { src: root },"),
        step("c", " inputs: { src: root },"),
        step("join", " inputs: { x: a, y: b },"),
    ]
    .concat();
    let dir = t.path().join("w");
    cloud_workflow(&dir, &bucket, &machine, &steps);
    let poll = [("WF_POLL_SECONDS", "0.5")];
    let out = wf_with(&dir, Some(&moto), &poll, &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = wf_with(&dir, Some(&moto), &poll, &["start", "wf.yaml", "--wait"]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}\n{}", stderr(&run));
    for id in ["root", "a", "b", "c", "join"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [id, "ran"]),
            "{id}: {text}"
        );
    }
    let at = |id: &str, what: &str| -> f64 {
        std::fs::read_to_string(times.join(format!("{id}.{what}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let leaves = ["a", "b", "c"];
    let last_start = leaves.iter().map(|id| at(id, "start")).fold(0.0, f64::max);
    let first_end = leaves
        .iter()
        .map(|id| at(id, "end"))
        .fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the leaves ran one after another: {:?}",
        leaves
            .iter()
            .map(|id| (at(id, "start"), at(id, "end")))
            .collect::<Vec<_>>()
    );
    assert!(at("root", "end") <= at("a", "start"));
    assert!(at("join", "start") >= at("a", "end").max(at("b", "end")));
}

/// The state machine's role may list the cache bucket but not read it. The first lookup's
/// AccessDenied is not a miss: it is retried with backoff, then fails the execution naming the
/// step and the S3 error, and no job runs (before, any lookup error meant "compute it again").
#[test]
fn access_denied_on_the_cache_fails_the_execution_instead_of_rerunning() {
    let Some(moto) =
        moto_with_jobs("access_denied_on_the_cache_fails_the_execution_instead_of_rerunning")
    else {
        return;
    };
    let _exclusive = moto.exclusive();
    let bucket = moto.bucket("sfndenied");
    let pid = std::process::id();
    let role = format!("wf-list-only-{pid}");
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"states.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    moto.query(
        "iam",
        &format!(
            "Action=CreateRole&RoleName={role}&AssumeRolePolicyDocument={}&Version=2010-05-08",
            urlencode(trust)
        ),
    );
    let list_only = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:ListBucket","sagemaker:*"],"Resource":"*"}]}"#;
    moto.query(
        "iam",
        &format!(
            "Action=PutRolePolicy&RoleName={role}&PolicyName=list-only&PolicyDocument={}&Version=2010-05-08",
            urlencode(list_only)
        ),
    );
    // Whoever starts the execution may do anything.
    let user = format!("wf-operator-{pid}");
    moto.query(
        "iam",
        &format!("Action=CreateUser&UserName={user}&Version=2010-05-08"),
    );
    let admin =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    moto.query(
        "iam",
        &format!(
            "Action=PutUserPolicy&UserName={user}&PolicyName=admin&PolicyDocument={}&Version=2010-05-08",
            urlencode(admin)
        ),
    );
    let keys = moto.query(
        "iam",
        &format!("Action=CreateAccessKey&UserName={user}&Version=2010-05-08"),
    );
    let id = xml_value(&keys, "AccessKeyId").unwrap();
    let secret = xml_value(&keys, "SecretAccessKey").unwrap();

    let machine = format!("wf-denied-{pid}");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("w");
    cloud_workflow(
        &dir,
        &bucket,
        &machine,
        "  a: { uses: command, with: { run: \"echo hello > $WF_OUT/greeting.txt\" } }\n",
    );
    let yaml = std::fs::read_to_string(dir.join("wf.yaml")).unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        yaml.replace("role/wf\n", &format!("role/{role}\n")),
    )
    .unwrap();
    let out = wf_with(&dir, Some(&moto), &[], &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    moto.enforce_iam(true);
    let off = IamOff(&moto);
    let run = wf_with(
        &dir,
        Some(&moto),
        &[
            ("WF_POLL_SECONDS", "0.5"),
            ("AWS_ACCESS_KEY_ID", id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ],
        &["start", "wf.yaml", "--wait"],
    );
    drop(off);
    let (o, e) = (stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(1), "{o}\n{e}");
    assert!(o.contains("FAILED"), "{o}");
    assert!(e.contains("step `a` failed"), "{o}\n{e}");
    assert!(e.contains("S3.") && e.contains("403"), "{o}\n{e}");
    let execution = o.lines().next().unwrap().trim().to_string();
    let h = moto.json_call(
        "states",
        "AWSStepFunctions.GetExecutionHistory",
        &serde_json::json!({ "executionArn": execution, "maxResults": 1000 }),
    );
    let events = h["events"].as_array().unwrap();
    let failed_reads = events.iter().filter(|e| e["type"] == "TaskFailed").count();
    assert_eq!(failed_reads, 4, "one read and 3 retries: {h}");
    assert!(
        !events
            .iter()
            .any(|e| e["stateEnteredEventDetails"]["name"] == "a.Run"),
        "the step must not run again: {h}"
    );
    assert!(moto.keys(&bucket, "p/entries/").is_empty());
}

/// Managed spot training: the emulator interrupts the training job as soon as its first
/// checkpoint is complete (as spot capacity is reclaimed), copies the checkpoint directory to
/// the CheckpointConfig's S3 location and starts the job again with it restored. train-unet
/// resumes from that checkpoint (the same resume a local run has) and the job completes with
/// every epoch.
#[test]
fn an_interrupted_spot_training_job_resumes_from_its_checkpoint() {
    let Some(moto) = moto_with_jobs("an_interrupted_spot_training_job_resumes_from_its_checkpoint")
    else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("spot");
    let machine = format!("wf-spot-{}", std::process::id());
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            r#"name: {machine}
cache: s3://{bucket}/p
seed: 3
steps:
  fetch:
    uses: fetch-dataset
    with: {{ source: synthetic, cases: 4, shape: [40, 40, 32], seed: 1 }}
  preprocess:
    uses: sharded-transform
    inputs: {{ dataset: fetch }}
    with:
      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - spacing: {{ pixdim: [1.5, 1.5, 2.0], mode: [bilinear, nearest] }}
        - orientation: {{ axcodes: RAS }}
        - rand-spatial-crop: {{ roi: [16, 16, 16] }}
        - normalize-intensity: {{ nonzero: true, channel_wise: true }}
      copies_per_case: 2
  train:
    uses: train-unet
    inputs: {{ samples: preprocess }}
    with: {{ epochs: 3, batch_size: 2, lr: 1.0e-3, val_fraction: 0.25, gpus: 0,
            channels: [4, 8, 16], strides: [2, 2], num_res_units: 1 }}
targets:
  aws:
    region: us-east-1
    role_arn: arn:aws:iam::123456789012:role/wf
    image_uri: "local:{}"
    state_machine_name: {machine}
    subnets: [subnet-1]
    security_groups: [sg-1]
    steps:
      train: {{ spot: true, tags: {{ "wf-emulator:interrupt": after-first-checkpoint }} }}
"#,
            wf_bin().display()
        ),
    )
    .unwrap();
    let env = [("WF_POLL_SECONDS", "0.5")];
    let out = wf_with(&dir, Some(&moto), &env, &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = wf_with(&dir, Some(&moto), &env, &["start", "wf.yaml", "--wait"]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}\n{}", stderr(&run));
    let execution = text.lines().next().unwrap().trim().to_string();
    let train = scheduled(&moto, &execution)
        .into_iter()
        .find(|(s, _)| s == "train.Run")
        .expect("train.Run")
        .1;
    assert_eq!(train["EnableManagedSpotTraining"], true, "{train}");
    let checkpoints = train["CheckpointConfig"]["S3Uri"].as_str().unwrap();
    let prefix = checkpoints
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap()
        .to_string();
    let saved = moto.keys(&bucket, &prefix);
    assert!(
        saved.iter().any(|k| k.ends_with("/checkpoint.json")),
        "the first attempt's checkpoint is in S3: {saved:?}"
    );
    let key = prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let entry: serde_json::Value = serde_json::from_slice(
        &moto
            .get(&bucket, &format!("p/entries/{key}.json"))
            .expect("train published its entry"),
    )
    .unwrap();
    let warnings: Vec<&str> = entry["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("resumed after an interruption from the checkpoint of epoch")),
        "{entry}"
    );
    let tree = format!("p/trees/{}/", entry["artifact"].as_str().unwrap());
    let metrics =
        String::from_utf8(moto.get(&bucket, &format!("{tree}metrics.jsonl")).unwrap()).unwrap();
    assert_eq!(metrics.lines().count(), 3, "every epoch: {metrics}");
}

/// A job whose worker exits non-zero fails its step at once (no retry unless `retries:` asks),
/// with the job's FailureReason as the execution's cause; `wf start --wait` prints the reason and
/// the command that shows the job's log, and `wf logs` prints it from CloudWatch Logs.
#[test]
fn a_failed_job_reports_its_reason_and_wf_logs_shows_its_log() {
    let Some(moto) = moto_with_jobs("a_failed_job_reports_its_reason_and_wf_logs_shows_its_log")
    else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("sfnlogs");
    let machine = format!("wf-logs-{}", std::process::id());
    let t = tempfile::tempdir().unwrap();
    cloud_workflow(
        t.path(),
        &bucket,
        &machine,
        "  broken: { uses: command, with: { run: \"echo the-words-of-the-broken-job >&2; exit 3\" } }\n  after: { uses: command, inputs: { x: broken }, with: { run: \"cp -r $WF_IN_x $WF_OUT/y\" } }\n",
    );
    let poll = [("WF_POLL_SECONDS", "0.5")];
    let out = wf_with(t.path(), Some(&moto), &poll, &["deploy", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = wf_with(
        t.path(),
        Some(&moto),
        &poll,
        &["start", "wf.yaml", "--wait"],
    );
    let (o, e) = (stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(1), "{o}\n{e}");
    let execution = o.lines().next().unwrap().trim().to_string();
    assert!(e.contains("step `broken` failed"), "{e}");
    assert!(e.contains("the-words-of-the-broken-job"), "the reason: {e}");
    assert!(
        e.contains(&format!("its job's log: wf logs {execution} broken")),
        "{e}"
    );
    let d = moto.json_call(
        "states",
        "AWSStepFunctions.DescribeExecution",
        &serde_json::json!({ "executionArn": execution }),
    );
    assert_eq!(d["error"], "wf.JobFailed", "{d}");
    let cause = d["cause"].as_str().unwrap_or_default();
    assert!(
        cause.starts_with("step `broken` (command): its SageMaker job failed: ")
            && cause.contains("the-words-of-the-broken-job"),
        "{cause}"
    );
    let submitted = scheduled(&moto, &execution)
        .iter()
        .filter(|(s, _)| s == "broken.Run")
        .count();
    assert_eq!(submitted, 1, "a failed job is not retried by default");

    for args in [
        vec!["logs", execution.as_str(), "broken"],
        vec!["logs", execution.as_str()],
    ] {
        let logs = wf_with(t.path(), Some(&moto), &[], &args);
        let text = stdout(&logs);
        assert_eq!(logs.status.code(), Some(0), "{text}\n{}", stderr(&logs));
        assert!(
            text.contains("== broken: /aws/sagemaker/ProcessingJobs broken-"),
            "{text}"
        );
        assert!(text.contains("the-words-of-the-broken-job"), "{text}");
    }
    let none = wf_with(t.path(), Some(&moto), &[], &["logs", &execution, "after"]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("ran no job for step `after` (steps with jobs: broken)"),
        "{}",
        stderr(&none)
    );
}

/// Objects at or above the multipart threshold (lowered here to 6 MiB) are uploaded in parts and
/// copied into the tree in parts, and a second checkout reads them back in ranges: the bytes are
/// the same, and S3 holds them as a 3-part upload (its ETag ends in `-3`).
#[test]
fn large_objects_travel_in_parts() {
    let Some(moto) = moto("large_objects_travel_in_parts") else {
        return;
    };
    let _shared = moto.shared();
    let bucket = moto.bucket("large");
    let cache = format!("s3://{bucket}/p");
    let t = tempfile::tempdir().unwrap();
    let size = 13 * 1024 * 1024;
    let yaml = format!(
        "name: large\ncache: {cache}\nsteps:\n  big: {{ uses: command, with: {{ run: \"yes wf-large-object | head -c {size} > $WF_OUT/big.bin\" }} }}\n"
    );
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("wf.yaml"), &yaml).unwrap();
    }
    let threshold = ("WF_S3_MULTIPART_THRESHOLD", "6291456");
    let local_a = a.join("local").to_string_lossy().into_owned();
    let first = wf_with(
        &a,
        Some(&moto),
        &[threshold, ("WF_LOCAL_CACHE", &local_a)],
        &["run", "wf.yaml", "--json"],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let v = json(&first);
    let artifact = v["steps"][0]["output"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let expected: Vec<u8> = b"wf-large-object\n"
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect();
    let object = format!("p/objects/{}", blake3_hex(&expected));
    for key in [object.as_str(), &format!("p/trees/{artifact}/big.bin")] {
        let (status, listing) = moto.request(
            "GET",
            &format!("/{bucket}?list-type=2&prefix={key}"),
            &[],
            b"",
        );
        assert_eq!(status, 200);
        let listing = String::from_utf8_lossy(&listing);
        assert!(
            listing.contains("-3&quot;</ETag>") || listing.contains("-3\"</ETag>"),
            "{key} is not a 3-part upload: {listing}"
        );
    }

    let local_b = b.join("local").to_string_lossy().into_owned();
    let second = wf_with(
        &b,
        Some(&moto),
        &[threshold, ("WF_LOCAL_CACHE", &local_b)],
        &["run", "wf.yaml", "--json"],
    );
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let w = json(&second);
    assert_eq!(statuses(&w), vec![("big".into(), "cached".into())]);
    let path = std::path::PathBuf::from(w["steps"][0]["output"]["path"].as_str().unwrap());
    let got = std::fs::read(path.join("big.bin")).unwrap();
    assert!(got == expected, "the bytes read back in ranges differ");
}
