//! `wf worker <kind>`: the entrypoint inside a SageMaker job (docs/cloud.md §5). Recomputes the
//! step key from its arguments (refusing to publish under a key it did not compute), reads inputs
//! where SageMaker mounted them (verified against their manifests; downloaded from the cache when
//! not mounted), runs the step through the same `Step::run` as a local run, and publishes the output
//! to the S3 cache with the entry last. With `--shards N` (N > 1) an instance publishes only its
//! part, and `wf worker commit` merges the parts (docs/cloud.md §6). Exit codes: 0 published (or already there), 1 the step
//! failed, 2 invalid arguments.
//!
//! SageMaker's paths are under `/opt/ml`, or `$WF_SM_ROOT` (tests run a worker on any machine):
//! `processing/input/<slot>/` (Processing), `input/data/<slot>/` (Training), and the hosts in
//! `input/config/resourceconfig.json` (Training) or `config/resourceconfig.json` (Processing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wf_engine::key::{KEY_SCHEMA, KeyComponents, canonical_json};

use wf_engine::store::Producer;
use wf_engine::{
    ArtifactDigest, CancelToken, FileDigest, InputArtifact, Params, Progress, RunContext, Store,
};

pub const EXIT_OK: u8 = 0;
pub const EXIT_STEP_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The step kind (`uses:`).
    pub kind: String,
    /// The step id (for messages).
    #[arg(long)]
    pub step: String,
    /// The key the state machine computed; the worker recomputes it and refuses a mismatch.
    #[arg(long)]
    pub key: String,
    /// The S3 cache, s3://bucket/prefix.
    #[arg(long)]
    pub cache: String,
    /// All params as canonical JSON, or s3://.../params/<sha256>.json.
    #[arg(long)]
    pub params: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// An input as SLOT=DIGEST (repeatable).
    #[arg(long = "input", value_name = "SLOT=DIGEST")]
    pub inputs: Vec<String>,
    /// Digest of the step's declared local files (P/files/<digest>.txt).
    #[arg(long)]
    pub files: Option<String>,
    /// Instances of a sharded job.
    #[arg(long)]
    pub shards: Option<u32>,
    /// With `wf worker commit`: the kind of the sharded step whose parts are merged.
    #[arg(long = "kind", value_name = "KIND")]
    pub commit_kind: Option<String>,
}

/// A failure with its exit code.
struct Exit(u8, String);

fn invalid(msg: impl Into<String>) -> Exit {
    Exit(EXIT_INVALID, msg.into())
}

fn failed(msg: impl Into<String>) -> Exit {
    Exit(EXIT_STEP_FAILED, msg.into())
}

pub fn main(args: WorkerArgs) -> u8 {
    match run(&args) {
        Ok(msg) => {
            eprintln!("wf worker {} `{}`: {msg}", args.kind, args.step);
            EXIT_OK
        }
        Err(Exit(code, msg)) => {
            eprintln!("wf worker {} `{}`: error: {msg}", args.kind, args.step);
            code
        }
    }
}

/// `/opt/ml`, or `$WF_SM_ROOT`.
pub fn sm_root() -> PathBuf {
    std::env::var_os("WF_SM_ROOT")
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ml"))
}

/// `hosts` and `current_host` of the job, if SageMaker wrote a resource config.
fn hosts(root: &Path) -> Option<(Vec<String>, String)> {
    for rel in [
        "input/config/resourceconfig.json",
        "config/resourceconfig.json",
    ] {
        let Ok(text) = std::fs::read_to_string(root.join(rel)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let hosts = v["hosts"]
            .as_array()?
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect();
        let current = v["current_host"].as_str()?.to_string();
        return Some((hosts, current));
    }
    None
}

/// Where SageMaker mounted input `slot`, if it did.
fn mounted(root: &Path, slot: &str) -> Option<PathBuf> {
    [
        root.join("processing/input").join(slot),
        root.join("input/data").join(slot),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

struct StderrProgress {
    warnings: std::sync::Mutex<Vec<String>>,
}

impl Progress for StderrProgress {
    fn message(&self, msg: &str) {
        eprintln!("  {msg}");
    }
    fn warn(&self, msg: &str) {
        eprintln!("  warning: {msg}");
        self.warnings
            .lock()
            .expect("warnings lock")
            .push(msg.to_string());
    }
    fn advance(&self, _done: u64, _total: u64) {}
}

fn run(args: &WorkerArgs) -> Result<String, Exit> {
    // `wf worker commit --kind K`: the commit job after a sharded job (docs/cloud.md §6).
    let committing = args.kind == "commit";
    let kind = match (committing, &args.commit_kind) {
        (false, _) => args.kind.as_str(),
        (true, Some(k)) => k.as_str(),
        (true, None) => return Err(invalid("`wf worker commit` needs --kind KIND")),
    };
    let registry = wf_steps::registry();
    let step = registry.get(kind).ok_or_else(|| {
        invalid(format!(
            "unknown step kind `{kind}` (this image knows: {})",
            registry.kinds().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let key = wf_engine::StepKey::from_hex(&args.key)
        .ok_or_else(|| invalid(format!("--key {}: not a 64-hex step key", args.key)))?;
    let cache = wf_aws::S3Cache::open(&args.cache, None)
        .map_err(|e| invalid(format!("cache {}: {e}", args.cache)))?;

    let params_text = if args.params.starts_with("s3://") {
        let url = wf_aws::S3Url::parse(&args.params).map_err(invalid)?;
        let bytes = cache
            .block_on(cache.bucket().get(&url.prefix))
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| invalid(format!("--params {}: no such object", args.params)))?;
        String::from_utf8(bytes).map_err(|_| invalid("--params: not UTF-8"))?
    } else {
        args.params.clone()
    };
    let values: BTreeMap<String, serde_json::Value> = serde_json::from_str(&params_text)
        .map_err(|e| invalid(format!("--params: not a JSON object: {e}")))?;
    let params = Params::with_defaults(step.params(), values);

    let mut inputs = BTreeMap::new();
    for i in &args.inputs {
        let (slot, digest) = i
            .split_once('=')
            .ok_or_else(|| invalid(format!("--input {i}: expected SLOT=DIGEST")))?;
        let digest = ArtifactDigest::from_hex(digest)
            .ok_or_else(|| invalid(format!("--input {i}: not a 64-hex artifact digest")))?;
        inputs.insert(slot.to_string(), digest);
    }
    // Slot types: fixed by the kind, or (open slots: the command step) not known here, where
    // `Files` is as good as any since such steps do not look at types.
    let mut slot_types = BTreeMap::new();
    for slot in inputs.keys() {
        let ty = match step.inputs() {
            wf_engine::Slots::Open => wf_engine::ArtifactType::Files,
            wf_engine::Slots::Fixed(slots) => slots
                .iter()
                .find(|(s, _)| s == slot)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    invalid(format!(
                        "--input {slot}: `{}` has no input slot `{slot}`",
                        args.kind
                    ))
                })?,
        };
        slot_types.insert(slot.clone(), ty);
    }
    if let wf_engine::Slots::Fixed(slots) = step.inputs() {
        for (slot, _) in slots {
            if !inputs.contains_key(*slot) {
                return Err(invalid(format!("missing --input {slot}=DIGEST")));
            }
        }
    }

    // Declared files: P/files/<digest>.txt lists them; their bytes are objects in the cache.
    let work = tempfile::Builder::new()
        .prefix("wf-worker-")
        .tempdir()
        .map_err(|e| failed(format!("cannot create a working directory: {e}")))?;
    let workflow_dir = work.path().join("workflow");
    std::fs::create_dir_all(&workflow_dir).map_err(|e| failed(e.to_string()))?;
    let mut files = BTreeMap::new();
    if let Some(d) = &args.files {
        let text = cache
            .get(&format!("files/{d}.txt"))
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| invalid(format!("--files {d}: no files/{d}.txt in the cache")))?;
        if blake3::hash(&text).to_hex().as_str() != d {
            return Err(invalid(format!("files/{d}.txt does not hash to {d}")));
        }
        for line in String::from_utf8_lossy(&text).lines() {
            let (path, digest) = line
                .split_once('\t')
                .and_then(|(p, d)| Some((p.to_string(), FileDigest::from_hex(d)?)))
                .ok_or_else(|| invalid(format!("files/{d}.txt: bad line `{line}`")))?;
            files.insert(path, digest);
        }
    }

    let components = KeyComponents {
        schema: KEY_SCHEMA,
        kind: step.kind().to_string(),
        version: step.version(),
        params: canonical_json(&params.key_value()),
        seed: step.seeded().then_some(args.seed),
        inputs: inputs.clone(),
        files: files.clone(),
    };
    if components.key() != key {
        return Err(invalid(format!(
            "the key computed here ({}) differs from --key {} (image and state machine disagree: a step version or the key encoding changed); not publishing.\n{}",
            components.key(),
            args.key,
            components.canonical_string()
        )));
    }
    use wf_engine::RemoteCache as _;
    if cache
        .lookup(&key)
        .map_err(|e| failed(e.to_string()))?
        .is_some()
    {
        return Ok(format!(
            "{} is already in {}",
            key.short(),
            cache.location()
        ));
    }
    // A sharded job on several instances (docs/cloud.md §6): each instance publishes a part, the
    // commit job merges them. Only `sharded-transform` knows how to.
    let shards = args.shards.filter(|n| *n > 1);
    if (committing || shards.is_some()) && kind != "sharded-transform" {
        return Err(invalid(format!(
            "`{kind}` cannot run sharded (--shards / wf worker commit): only sharded-transform can"
        )));
    }
    if committing {
        let n = shards.ok_or_else(|| invalid("`wf worker commit` needs --shards N (N > 1)"))?;
        return commit_parts(
            &cache,
            &key,
            &components,
            step.as_ref(),
            &params,
            args,
            &inputs,
            n,
        );
    }

    let store = Store::open(&work.path().join("cache")).map_err(|e| failed(e.to_string()))?;
    for (path, digest) in &files {
        let dst = workflow_dir.join(path);
        let rel = format!("objects/{}", digest.to_hex());
        let bytes = cache
            .get(&rel)
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| failed(format!("declared file `{path}`: no {rel} in the cache")))?;
        if FileDigest::of_bytes(&bytes) != *digest {
            return Err(failed(format!("declared file `{path}`: {rel} is damaged")));
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed(e.to_string()))?;
        }
        std::fs::write(&dst, bytes).map_err(|e| failed(format!("{}: {e}", dst.display())))?;
    }

    let root = sm_root();
    // This instance's shard: the position of current_host in hosts.
    let shard = match shards {
        None => None,
        Some(n) => {
            let (hosts, current) = hosts(&root).ok_or_else(|| {
                invalid("--shards: no resourceconfig.json names this instance's host")
            })?;
            let i = hosts.iter().position(|h| *h == current).ok_or_else(|| {
                invalid(format!(
                    "current_host {current} is not among hosts {hosts:?}"
                ))
            })?;
            if hosts.len() != n as usize {
                return Err(invalid(format!(
                    "--shards {n}, but the job has {} hosts",
                    hosts.len()
                )));
            }
            Some(i)
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut resolved = BTreeMap::new();
    for (slot, digest) in &inputs {
        let ty = slot_types[slot];
        let manifest = cache
            .manifest_of(digest)
            .map_err(|e| failed(format!("input `{slot}`: {e}")))?;
        store
            .add_manifest(&manifest)
            .map_err(|e| failed(e.to_string()))?;
        let meta = root.join("processing/input").join(format!("{slot}-meta"));
        let path = match mounted(&root, slot) {
            Some(dir) if meta.is_dir() && shard.is_some() => {
                let part = work.path().join("inputs").join(slot);
                shard_input(&dir, &meta, &manifest, &part)
                    .map_err(|e| failed(format!("input `{slot}` (shard): {e}")))?;
                part
            }
            _ if shard.is_some() => {
                return Err(invalid(format!(
                    "--shards: input `{slot}` is not mounted as a sharded Dataset (docs/cloud.md §5)"
                )));
            }
            Some(dir) if meta.is_dir() => {
                let full = work.path().join("inputs").join(slot);
                sharded_input(&cache, &dir, &meta, &manifest, &full)
                    .map_err(|e| failed(format!("input `{slot}` (sharded): {e}")))?;
                let problems = wf_engine::manifest::verify_tree(&full, &manifest, threads);
                if !problems.is_empty() {
                    return Err(failed(format!(
                        "input `{slot}` does not match artifact {}: {}",
                        digest.short(),
                        problems.join("; ")
                    )));
                }
                full
            }
            Some(dir) => {
                let problems = wf_engine::manifest::verify_tree(&dir, &manifest, threads);
                if !problems.is_empty() {
                    return Err(failed(format!(
                        "input `{slot}` mounted at {} does not match artifact {}: {}",
                        dir.display(),
                        digest.short(),
                        problems.join("; ")
                    )));
                }
                dir
            }
            None => {
                eprintln!("  input `{slot}` is not mounted: downloading it from the cache");
                cache
                    .fetch_artifact(digest, &store)
                    .map_err(|e| failed(format!("input `{slot}`: {e}")))?
                    .1
            }
        };
        resolved.insert(
            slot.clone(),
            InputArtifact {
                ty,
                digest: *digest,
                path,
            },
        );
    }

    let staging = store.stage(&args.step).map_err(|e| failed(e.to_string()))?;
    let progress = StderrProgress {
        warnings: Default::default(),
    };
    let cancel = CancelToken::default();
    let cx = RunContext {
        step_id: &args.step,
        workflow_dir: &workflow_dir,
        params: &params,
        inputs: &resolved,
        out_dir: &staging.out,
        scratch_dir: &staging.scratch,
        log_path: &staging.log,
        seed: args.seed,
        threads,
        local_files: &files,
        cancel: &cancel,
        progress: &progress,
        store: &store,
    };

    if let Some(i) = shard {
        return publish_part(&cache, &key, &cx, &staging, i, threads);
    }
    if let Err(e) = step.run(&cx) {
        let log = std::fs::read_to_string(&staging.log).unwrap_or_default();
        let mut msg = e.message;
        if let Some(d) = e.detail {
            msg.push('\n');
            msg.push_str(&d);
        }
        if !log.trim().is_empty() {
            msg.push_str("\n--- step log ---\n");
            msg.push_str(log.trim_end());
        }
        return Err(failed(msg));
    }
    if let Some((hosts, current)) = hosts(&root)
        && hosts.first().is_some_and(|h| *h != current)
    {
        return Ok(format!(
            "done on {current}; {} publishes",
            hosts.first().map(String::as_str).unwrap_or("?")
        ));
    }
    let producer = Producer {
        workflow: std::env::var("TRAINING_JOB_NAME")
            .or_else(|_| std::env::var("PROCESSING_JOB_NAME"))
            .unwrap_or_else(|_| "wf worker".to_string()),
        step: args.step.clone(),
    };
    let warnings = progress.warnings.lock().expect("warnings lock").clone();
    let entry = store
        .commit(
            &staging,
            &key,
            &components,
            step.output(&params),
            producer,
            warnings,
            threads,
        )
        .map_err(|e| failed(format!("committing the output: {e}")))?;
    cache
        .publish_entry(&store, &entry)
        .map_err(|e| failed(format!("publishing the output: {e}")))?;
    Ok(format!(
        "published {} -> {} ({} files) to {}",
        key.short(),
        entry.artifact.short(),
        entry.files,
        cache.location()
    ))
}

/// Rebuilds a sharded Dataset input as one tree: `imagesTr/` (ShardedByS3Key) and `labelsTr/` from
/// the mount, `dataset.json` from `<slot>-meta/`, anything else (e.g. `imagesTs/`) from the cache.
/// For a job without `--shards` (one instance), which must see every training image; instances of a
/// job with `--shards N` use `shard_input` and publish parts instead (docs/cloud.md §6).
fn sharded_input(
    cache: &wf_aws::S3Cache,
    mount: &Path,
    meta: &Path,
    manifest: &wf_engine::manifest::Manifest,
    out: &Path,
) -> Result<(), String> {
    let images = manifest
        .entries
        .iter()
        .filter(|e| e.path.starts_with("imagesTr/"));
    let total = images.clone().count();
    let seen = images.filter(|e| mount.join(&e.path).is_file()).count();
    if seen < total {
        return Err(format!(
            "this instance sees {seen} of {total} training images but was not given --shards N (a job on several instances must pass it, docs/cloud.md §5)"
        ));
    }
    for e in &manifest.entries {
        let dst = out.join(&e.path);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| format!("{}: {err}", parent.display()))?;
        }
        let src = [mount.join(&e.path), meta.join(&e.path)]
            .into_iter()
            .find(|p| p.is_file());
        match src {
            Some(src) => {
                if std::fs::hard_link(&src, &dst).is_err() {
                    std::fs::copy(&src, &dst).map_err(|err| format!("{}: {err}", src.display()))?;
                }
            }
            None => {
                let rel = format!("objects/{}", e.digest.to_hex());
                let bytes = cache
                    .get(&rel)
                    .map_err(|err| err.to_string())?
                    .ok_or_else(|| format!("`{}` is neither mounted nor in the cache", e.path))?;
                std::fs::write(&dst, bytes).map_err(|err| format!("{}: {err}", dst.display()))?;
            }
        }
    }
    Ok(())
}

/// A shard's share of a sharded Dataset input: the images this instance was given, the replicated
/// labels and `dataset.json`, each checked against the artifact's manifest. Images of other shards
/// are absent; nothing else is fetched.
fn shard_input(
    mount: &Path,
    meta: &Path,
    manifest: &wf_engine::manifest::Manifest,
    out: &Path,
) -> Result<(), String> {
    for e in &manifest.entries {
        let src = [mount.join(&e.path), meta.join(&e.path)]
            .into_iter()
            .find(|p| p.is_file());
        let Some(src) = src else { continue };
        let digest = wf_engine::manifest::hash_file(&src)
            .map_err(|err| format!("{}: {err}", src.display()))?;
        if digest != e.digest {
            return Err(format!(
                "`{}` does not match the artifact's manifest",
                e.path
            ));
        }
        let dst = out.join(&e.path);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| format!("{}: {err}", parent.display()))?;
        }
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|err| format!("{}: {err}", src.display()))?;
        }
    }
    if !out.join("dataset.json").is_file() {
        return Err("dataset.json is not mounted".into());
    }
    Ok(())
}

fn part_key(i: usize) -> (String, String) {
    (format!("part-{i}.txt"), format!("part-{i}.cases.json"))
}

/// Shard `i`: processes the cases whose image this instance has, uploads the files as
/// `objects/<blake3>`, then `staging/<key>/part-<i>.cases.json` (the step's case records) and, last,
/// `staging/<key>/part-<i>.txt` (the manifest of its files) — docs/cloud.md §6. No entry.
fn publish_part(
    cache: &wf_aws::S3Cache,
    key: &wf_engine::StepKey,
    cx: &RunContext<'_>,
    staging: &wf_engine::store::Staging,
    i: usize,
    threads: usize,
) -> Result<String, Exit> {
    let input = &cx.inputs["dataset"].path;
    let have = |image: &str| input.join(image).is_file();
    let (cases, skipped) = wf_steps::sharded_transform::process_cases(cx, Some(&have))
        .map_err(|e| failed(e.message + &e.detail.map(|d| format!("\n{d}")).unwrap_or_default()))?;
    let files = wf_engine::manifest::list_files(&staging.out).map_err(|e| failed(e.to_string()))?;
    let paths: Vec<PathBuf> = files.iter().map(|(_, p, _)| p.clone()).collect();
    let mut entries = Vec::with_capacity(files.len());
    for ((rel, path, meta), digest) in files
        .iter()
        .zip(wf_engine::manifest::hash_files(&paths, threads))
    {
        entries.push(wf_engine::manifest::ManifestEntry {
            path: rel.clone(),
            size: meta.len(),
            digest: digest.map_err(|e| failed(format!("{}: {e}", path.display())))?,
            executable: wf_engine::manifest::is_executable(meta),
        });
    }
    let bucket = cache.bucket();
    cache
        .block_on(async {
            for (e, path) in entries.iter().zip(&paths) {
                let k = cache.object_key(e);
                if !bucket.exists(&k).await? {
                    bucket.upload(&k, path).await?;
                }
            }
            Ok::<(), wf_aws::AwsError>(())
        })
        .map_err(|e| failed(format!("uploading the shard's files: {e}")))?;
    let part = wf_engine::manifest::Manifest { entries };
    let record = serde_json::json!({ "shard": i, "cases": cases, "skipped": skipped });
    let (txt, json) = part_key(i);
    let dir = format!("staging/{}", key.to_hex());
    cache
        .block_on(async {
            bucket
                .put(
                    &cache.url().key(&format!("{dir}/{json}")),
                    serde_json::to_vec_pretty(&record).expect("json"),
                )
                .await?;
            bucket
                .put(
                    &cache.url().key(&format!("{dir}/{txt}")),
                    part.canonical_text().into_bytes(),
                )
                .await
        })
        .map_err(|e| failed(format!("publishing part {i}: {e}")))?;
    Ok(format!(
        "shard {i}: {} cases ({} skipped), {} files in {dir}/{txt}",
        cases.len() + skipped.len(),
        skipped.len(),
        part.entries.len()
    ))
}

/// `wf worker commit --kind sharded-transform`: merges the N parts of `staging/<key>/` (every case
/// of `dataset.json` covered exactly once, a path at most once per digest), adds `index.json` built
/// by the step's own code, and publishes manifest, tree and, last, the entry (docs/cloud.md §6).
#[allow(clippy::too_many_arguments)]
fn commit_parts(
    cache: &wf_aws::S3Cache,
    key: &wf_engine::StepKey,
    components: &KeyComponents,
    step: &dyn wf_engine::Step,
    params: &Params,
    args: &WorkerArgs,
    inputs: &BTreeMap<String, ArtifactDigest>,
    n: u32,
) -> Result<String, Exit> {
    use wf_engine::manifest::{Manifest, ManifestEntry};
    let dataset = inputs
        .get("dataset")
        .ok_or_else(|| invalid("missing --input dataset=DIGEST"))?;
    let manifest = cache
        .manifest_of(dataset)
        .map_err(|e| failed(format!("input `dataset`: {e}")))?;
    let meta = manifest
        .entries
        .iter()
        .find(|e| e.path == "dataset.json")
        .ok_or_else(|| failed("input `dataset` has no dataset.json"))?;
    let text = cache
        .get(&format!("objects/{}", meta.digest.to_hex()))
        .map_err(|e| failed(e.to_string()))?
        .filter(|b| FileDigest::of_bytes(b) == meta.digest)
        .ok_or_else(|| failed("dataset.json: missing or damaged in the cache"))?;
    let cases = wf_steps::sharded_transform::dataset_cases(&String::from_utf8_lossy(&text))
        .map_err(|e| failed(e.message))?;
    let order: BTreeMap<&str, usize> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();

    let dir = format!("staging/{}", key.to_hex());
    let mut problems = Vec::new();
    let mut files: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    for i in 0..n as usize {
        let (txt, json) = part_key(i);
        let part = cache
            .get(&format!("{dir}/{txt}"))
            .map_err(|e| failed(e.to_string()))?;
        let record = cache
            .get(&format!("{dir}/{json}"))
            .map_err(|e| failed(e.to_string()))?;
        let (Some(part), Some(record)) = (part, record) else {
            problems.push(format!("part {i} of {n} is missing ({dir}/{txt})"));
            continue;
        };
        let part = Manifest::parse(&String::from_utf8_lossy(&part))
            .ok_or_else(|| failed(format!("{dir}/{txt}: not a manifest")))?;
        let record: serde_json::Value =
            serde_json::from_slice(&record).map_err(|e| failed(format!("{dir}/{json}: {e}")))?;
        for e in part.entries {
            match files.get(&e.path) {
                Some(prev) if prev.digest != e.digest => problems.push(format!(
                    "`{}` is in two parts with different contents",
                    e.path
                )),
                _ => {
                    files.insert(e.path.clone(), e);
                }
            }
        }
        for (list, out) in [("cases", &mut done), ("skipped", &mut skipped)] {
            for c in record[list].as_array().into_iter().flatten() {
                let id = c["id"].as_str().unwrap_or_default().to_string();
                seen.entry(id).or_default().push(i);
                out.push(c.clone());
            }
        }
    }
    let missing: Vec<&str> = cases
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !seen.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} cases are in no part: {}",
            missing.len(),
            cases.len(),
            missing.join(", ")
        ));
    }
    for (id, parts) in &seen {
        if !order.contains_key(id.as_str()) {
            problems.push(format!(
                "case `{id}` (part {parts:?}) is not in dataset.json"
            ));
        } else if parts.len() > 1 {
            problems.push(format!("case {id} is in more than one part: {parts:?}"));
        }
    }
    for c in &done {
        for f in c["files"].as_array().into_iter().flatten() {
            let f = f.as_str().unwrap_or_default();
            if !files.contains_key(f) {
                problems.push(format!(
                    "`{f}` of case {} is in no part's manifest",
                    c["id"]
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(failed(format!(
            "cannot commit the sharded output from {dir}/: {}",
            problems.join("; ")
        )));
    }
    let rank = |c: &serde_json::Value| order[c["id"].as_str().unwrap_or_default()];
    done.sort_by_key(rank);
    skipped.sort_by_key(rank);
    let warnings: Vec<String> = skipped
        .iter()
        .map(|c| {
            format!(
                "skipped case {}: {}",
                c["id"].as_str().unwrap_or_default(),
                c["error"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let index = wf_steps::sharded_transform::index_json(params, args.seed, done, skipped)
        .map_err(|e| failed(e.message))?;
    let work = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
    let index_path = work.path().join("index.json");
    std::fs::write(&index_path, &index).map_err(|e| failed(e.to_string()))?;
    let index_entry = ManifestEntry {
        path: "index.json".into(),
        size: index.len() as u64,
        digest: FileDigest::of_bytes(index.as_bytes()),
        executable: false,
    };
    if files.contains_key("index.json") {
        return Err(failed(
            "a part holds index.json, which only the commit writes",
        ));
    }
    files.insert(index_entry.path.clone(), index_entry);
    let merged = Manifest {
        entries: files.into_values().collect(),
    };
    // The shards uploaded their objects; only index.json is local.
    let sources: Vec<(ManifestEntry, PathBuf)> = merged
        .entries
        .iter()
        .map(|e| {
            let path = if e.path == "index.json" {
                index_path.clone()
            } else {
                PathBuf::from(format!("(missing object of shard file {})", e.path))
            };
            (e.clone(), path)
        })
        .collect();
    cache
        .block_on(cache.publish_artifact(&merged, &sources))
        .map_err(|e| failed(format!("publishing the merged output: {e}")))?;
    let entry = wf_engine::store::Entry {
        schema: wf_engine::store::ENTRY_SCHEMA,
        key: *key,
        kind: components.kind.clone(),
        version: components.version,
        output_type: step.output(params),
        artifact: merged.digest(),
        files: merged.entries.len(),
        bytes: merged.total_bytes(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        producer: Producer {
            workflow: std::env::var("PROCESSING_JOB_NAME")
                .unwrap_or_else(|_| "wf worker commit".to_string()),
            step: args.step.clone(),
        },
        warnings,
    };
    let bucket = cache.bucket();
    cache
        .block_on(bucket.put(&cache.entry_key(key), wf_aws::s3cache::entry_json(&entry)))
        .map_err(|e| failed(format!("publishing the entry: {e}")))?;
    // The staging area is garbage now (best effort: the entry is what counts).
    let _ = cache.block_on(async {
        for (k, _) in bucket.list(&cache.url().key(&format!("{dir}/"))).await? {
            bucket.delete(&k).await?;
        }
        Ok::<(), wf_aws::AwsError>(())
    });
    use wf_engine::RemoteCache as _;
    Ok(format!(
        "committed {n} parts: {} -> {} ({} files) to {}",
        key.short(),
        entry.artifact.short(),
        entry.files,
        cache.location()
    ))
}
