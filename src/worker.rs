//! `wf worker <kind>`: the entrypoint inside a SageMaker job (docs/cloud.md §5). Its arguments are
//! the cloud contract's (`wf_engine::cloud::WorkerRequest`). Recomputes the step key from them
//! (refusing to publish under a key it did not compute), reads inputs where SageMaker mounted them
//! (verified against their manifests; downloaded from the cache when not mounted), runs the step
//! through the same `Step::run` as a local run, and publishes the output to the S3 cache with the
//! entry last. For a step that runs sharded (`Step::sharded`) on N > 1 instances, each instance
//! publishes only its part, and `wf worker commit` merges the parts (docs/cloud.md §6). Exit codes:
//! 0 published (or already there), 1 the step failed, 2 invalid arguments, 128 + the signal's number
//! when a signal (SageMaker's stop: SIGTERM) stopped it.
//!
//! SageMaker's paths are under `/opt/ml`, or `$WF_SM_ROOT` (tests run a worker on any machine).

use crate::error::{CliError, CliResult, Exit};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wf_aws::S3Cache;
use wf_engine::cloud::job::paths;
use wf_engine::cloud::layout;
use wf_engine::cloud::worker::{ParamsArg, PartRecord, USAGE, WorkerRequest};
use wf_engine::key::{KEY_SCHEMA, KeyComponents, canonical_json};
use wf_engine::manifest::{Manifest, ManifestEntry};
use wf_engine::store::{Entry, Producer, StepNotes};
use wf_engine::{
    ArtifactDigest, ArtifactType, CancelToken, Count, FileDigest, InputArtifact, Params, Progress,
    RemoteCache as _, RunContext, Sharded, Slots, Step, StepKey, Store, plural,
};

#[derive(clap::Args, Debug)]
#[command(after_help = USAGE)]
pub struct WorkerArgs {
    /// The step kind (`uses:`), or `commit` for the job that merges a sharded step's parts.
    pub kind: String,
    /// The arguments of docs/cloud.md §5 (--step, --key, --cache, --params, --seed, --input, ...).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

pub fn main(args: WorkerArgs) -> Exit {
    let req = match WorkerRequest::parse(&args.kind, &args.args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wf worker {}: error: {e}", args.kind);
            return Exit::Invalid;
        }
    };
    // SageMaker stops a job with SIGTERM (SIGKILL follows): the step's processes end first.
    wf_steps::command::supervise::adopt_orphans();
    let cancel = CancelToken::default();
    let stop = crate::signals::watch(cancel.clone());
    let result = run(&req, &cancel);
    match (result, stop.exit()) {
        (Ok(msg), _) => {
            eprintln!("wf worker {} `{}`: {msg}", args.kind, req.step);
            Exit::Ok
        }
        (Err(_), Some(exit)) => {
            eprintln!(
                "wf worker {} `{}`: interrupted ({}); nothing was published",
                args.kind,
                req.step,
                stop.name().unwrap_or("a signal")
            );
            exit
        }
        (Err(e), None) => {
            eprintln!(
                "wf worker {} `{}`: error: {}",
                args.kind, req.step, e.message
            );
            e.exit
        }
    }
}

/// `/opt/ml`, or `$WF_SM_ROOT`.
pub fn sm_root() -> PathBuf {
    std::env::var_os("WF_SM_ROOT")
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(paths::ROOT))
}

/// `hosts` and `current_host` of the job, if SageMaker wrote a resource config.
fn hosts(root: &Path) -> Option<(Vec<String>, String)> {
    #[derive(serde::Deserialize)]
    struct ResourceConfig {
        hosts: Vec<String>,
        current_host: String,
    }
    let text = paths::RESOURCE_CONFIGS
        .iter()
        .find_map(|rel| std::fs::read_to_string(root.join(rel)).ok())?;
    let c: ResourceConfig = serde_json::from_str(&text).ok()?;
    Some((c.hosts, c.current_host))
}

/// Where SageMaker mounted input `slot`, if it did.
fn mounted(root: &Path, slot: &str) -> Option<PathBuf> {
    [
        root.join(paths::processing_input(slot)),
        root.join(paths::training_channel(slot)),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

struct StderrProgress {
    notes: std::sync::Mutex<StepNotes>,
}

impl Progress for StderrProgress {
    fn message(&self, msg: &str) {
        eprintln!("  {msg}");
    }
    fn warn(&self, msg: &str) {
        eprintln!("  warning: {msg}");
        self.notes
            .lock()
            .expect("notes lock")
            .warnings
            .push(msg.to_string());
    }
    fn advance(&self, _count: Count) {}
    fn fact(&self, name: &str, value: serde_json::Value) {
        self.notes
            .lock()
            .expect("notes lock")
            .facts
            .insert(name.to_string(), value);
    }
}

fn failed(msg: impl Into<String>) -> CliError {
    CliError::failed(msg)
}

fn invalid(msg: impl Into<String>) -> CliError {
    CliError::invalid(msg)
}

/// What every part of a worker run needs.
struct Job<'a> {
    req: &'a WorkerRequest,
    /// Set when a signal stops the worker.
    cancel: &'a CancelToken,
    step: &'a dyn Step,
    cache: S3Cache,
    params: Params,
    components: KeyComponents,
    threads: usize,
}

impl Job<'_> {
    /// An object of the cache, as bytes (`None`: no such object).
    fn get(&self, rel: &str) -> CliResult<Option<Vec<u8>>> {
        self.cache.get(rel).map_err(|e| failed(e.to_string()))
    }

    fn producer(&self, job_env: &[&str], fallback: &str) -> Producer {
        Producer {
            workflow: job_env
                .iter()
                .find_map(|v| std::env::var(v).ok())
                .unwrap_or_else(|| fallback.to_string()),
            step: self.req.step.clone(),
        }
    }
}

fn run(req: &WorkerRequest, cancel: &CancelToken) -> CliResult<String> {
    let registry = wf_steps::registry();
    let step = registry.get(&req.kind).ok_or_else(|| {
        invalid(format!(
            "unknown step kind `{}` (this image knows: {})",
            req.kind,
            registry.kinds().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let cache = S3Cache::open(&req.cache.to_string(), None)
        .map_err(|e| invalid(format!("cache {}: {e}", req.cache)))?
        .with_kms(req.kms_key_id.clone());

    let params_text = match &req.params {
        ParamsArg::Inline(text) => text.clone(),
        ParamsArg::Url(url) => {
            if !req.cache.contains(url) {
                return Err(invalid(format!(
                    "--params {url} is not inside the cache {}",
                    req.cache
                )));
            }
            let bytes = cache
                .block_on(cache.bucket().get(&url.prefix))
                .map_err(|e| failed(e.to_string()))?
                .ok_or_else(|| invalid(format!("--params {url}: no such object")))?;
            String::from_utf8(bytes).map_err(|_| invalid("--params: not UTF-8"))?
        }
    };
    let values: BTreeMap<String, serde_json::Value> = serde_json::from_str(&params_text)
        .map_err(|e| invalid(format!("--params: not a JSON object: {e}")))?;
    let params = Params::with_defaults(step.params(), values);

    // Slot types: fixed by the kind, or (open slots: the command step) not known here, where
    // `Files` is as good as any since such steps do not look at types.
    let mut slot_types = BTreeMap::new();
    for slot in req.inputs.keys() {
        let ty = match step.inputs() {
            Slots::Open => ArtifactType::Files,
            Slots::Fixed(slots) => slots
                .iter()
                .find(|(s, _)| s == slot)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    invalid(format!(
                        "--input {slot}: `{}` has no input slot `{slot}`",
                        req.kind
                    ))
                })?,
        };
        slot_types.insert(slot.clone(), ty);
    }
    if let Slots::Fixed(slots) = step.inputs() {
        for (slot, _) in slots {
            if !req.inputs.contains_key(*slot) {
                return Err(invalid(format!("missing --input {slot}=DIGEST")));
            }
        }
    }

    // Declared files: P/files/<digest>.txt lists them; their bytes are objects in the cache.
    let mut files = BTreeMap::new();
    if let Some(d) = &req.files {
        let text = cache
            .get(&layout::files(d))
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| invalid(format!("--files {d}: no {} in the cache", layout::files(d))))?;
        files = KeyComponents::parse_files_text(&text, d)
            .map_err(|e| invalid(format!("{}: {e}", layout::files(d))))?;
    }

    let components = KeyComponents {
        schema: KEY_SCHEMA,
        kind: step.kind().to_string(),
        version: step.version(),
        params: canonical_json(&params.key_value()),
        seed: step.seeded().then_some(req.seed),
        inputs: req.inputs.clone(),
        files,
        // Steps with external state are not compiled (their keys are known only locally).
        external: None,
    };
    if components.key() != req.key {
        return Err(invalid(format!(
            "the key computed here ({}) differs from --key {} (image and state machine disagree: a step version or the key encoding changed); not publishing.\n{}",
            components.key(),
            req.key,
            components.canonical_string()
        )));
    }
    if cache
        .lookup(&req.key)
        .map_err(|e| failed(e.to_string()))?
        .is_some()
    {
        return Ok(format!(
            "{} is already in {}",
            req.key.short(),
            cache.location()
        ));
    }
    let job = Job {
        req,
        cancel,
        step: step.as_ref(),
        cache,
        params,
        components,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    // A sharded job on several instances (docs/cloud.md §6): each instance publishes a part, the
    // commit job merges them.
    let shards = req.shards.filter(|n| *n > 1);
    let sharded = match (req.commit || shards.is_some(), step.sharded()) {
        (false, _) => None,
        (true, Some(s)) => Some(s),
        (true, None) => {
            return Err(invalid(format!(
                "`{}` cannot run sharded (--shards / wf worker commit)",
                req.kind
            )));
        }
    };
    if req.commit {
        let n = shards.ok_or_else(|| invalid("`wf worker commit` needs --shards N (N > 1)"))?;
        return commit_parts(&job, sharded.expect("checked above"), n);
    }
    run_step(&job, &slot_types, shards.and(sharded))
}

/// Runs the step (or this instance's part of it) and publishes the result.
fn run_step(
    job: &Job<'_>,
    slot_types: &BTreeMap<String, ArtifactType>,
    sharded: Option<&dyn Sharded>,
) -> CliResult<String> {
    let req = job.req;
    let work = tempfile::Builder::new()
        .prefix("wf-worker-")
        .tempdir()
        .map_err(|e| failed(format!("cannot create a working directory: {e}")))?;
    let workflow_dir = work.path().join("workflow");
    std::fs::create_dir_all(&workflow_dir).map_err(|e| failed(e.to_string()))?;
    let store = Store::open(&work.path().join("cache")).map_err(|e| failed(e.to_string()))?;
    for (path, digest) in &job.components.files {
        let dst = workflow_dir.join(path);
        let rel = layout::object(digest);
        let bytes = job
            .get(&rel)?
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
    let shard = match (sharded, req.shards) {
        (Some(_), Some(n)) => {
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
                    "--shards {n}, but the job has {}",
                    plural(hosts.len(), "host")
                )));
            }
            Some(i)
        }
        _ => None,
    };
    let mut resolved = BTreeMap::new();
    for (slot, digest) in &req.inputs {
        let manifest = job
            .cache
            .manifest_of(digest)
            .map_err(|e| failed(format!("input `{slot}`: {e}")))?;
        store
            .add_manifest(&manifest)
            .map_err(|e| failed(e.to_string()))?;
        let path = input_tree(
            job,
            &root,
            &store,
            work.path(),
            slot,
            digest,
            &manifest,
            shard.is_some(),
        )?;
        resolved.insert(
            slot.clone(),
            InputArtifact {
                ty: slot_types[slot],
                digest: *digest,
                path,
            },
        );
    }

    let staging = store.stage(&req.step).map_err(|e| failed(e.to_string()))?;
    let progress = StderrProgress {
        notes: Default::default(),
    };
    // A Training job's checkpoint directory, which SageMaker restores from S3 when it restarts an
    // interrupted (spot) job: steps that resume keep their state there.
    let checkpoints = root.join(paths::CHECKPOINTS);
    let cx = RunContext {
        resume_dir: checkpoints.is_dir().then_some(checkpoints.as_path()),
        step_id: &req.step,
        workflow_dir: &workflow_dir,
        params: &job.params,
        inputs: &resolved,
        out_dir: &staging.out,
        scratch_dir: &staging.scratch,
        log_path: &staging.log,
        seed: req.seed,
        threads: job.threads,
        local_files: &job.components.files,
        external: None,
        cancel: job.cancel,
        progress: &progress,
        store: &store,
    };

    if let (Some(i), Some(s)) = (shard, sharded) {
        return publish_part(job, s, &cx, &staging, i);
    }
    if let Err(e) = job.step.run(&cx) {
        let log = log_tail(&staging.log);
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
    let notes = progress.notes.lock().expect("notes lock").clone();
    let entry = store
        .commit(
            &staging,
            &req.key,
            &job.components,
            job.step.output(&job.params),
            job.producer(&["TRAINING_JOB_NAME", "PROCESSING_JOB_NAME"], "wf worker"),
            notes,
            job.threads,
        )
        .map_err(|e| failed(format!("committing the output: {e}")))?;
    job.cache
        .publish_entry(&store, &entry)
        .map_err(|e| failed(format!("publishing the output: {e}")))?;
    Ok(format!(
        "published {} -> {} ({}) to {}",
        req.key.short(),
        entry.artifact.short(),
        plural(entry.files, "file"),
        job.cache.location()
    ))
}

/// Input `slot` as a directory holding exactly its artifact (or, for a shard, its share), checked
/// against the artifact's manifest.
#[allow(clippy::too_many_arguments)]
fn input_tree(
    job: &Job<'_>,
    root: &Path,
    store: &Store,
    work: &Path,
    slot: &str,
    digest: &ArtifactDigest,
    manifest: &Manifest,
    shard: bool,
) -> CliResult<PathBuf> {
    let meta = root.join(paths::processing_meta(slot));
    let part = work.join("inputs").join(slot);
    match mounted(root, slot) {
        Some(dir) if meta.is_dir() && shard => {
            shard_input(&dir, &meta, manifest, &part)
                .map_err(|e| failed(format!("input `{slot}` (shard): {e}")))?;
            Ok(part)
        }
        _ if shard => Err(invalid(format!(
            "--shards: input `{slot}` is not mounted as a sharded Dataset (docs/cloud.md §5)"
        ))),
        Some(dir) if meta.is_dir() => {
            sharded_input(job, &dir, &meta, manifest, &part)
                .map_err(|e| failed(format!("input `{slot}` (sharded): {e}")))?;
            verify(&part, manifest, digest, job.threads, slot)?;
            Ok(part)
        }
        Some(dir) => {
            verify(&dir, manifest, digest, job.threads, slot)?;
            Ok(dir)
        }
        None => {
            eprintln!("  input `{slot}` is not mounted: downloading it from the cache");
            Ok(job
                .cache
                .fetch_artifact(digest, store)
                .map_err(|e| failed(format!("input `{slot}`: {e}")))?
                .1)
        }
    }
}

fn verify(
    dir: &Path,
    manifest: &Manifest,
    digest: &ArtifactDigest,
    threads: usize,
    slot: &str,
) -> CliResult<()> {
    let problems = wf_engine::manifest::verify_tree(dir, manifest, threads);
    if problems.is_empty() {
        return Ok(());
    }
    Err(failed(format!(
        "input `{slot}` at {} does not match artifact {}: {}",
        dir.display(),
        digest.short(),
        problems.join("; ")
    )))
}

/// Links (or copies) `src` to `dst`, creating `dst`'s directory.
fn place(src: &Path, dst: &Path) -> Result<(), String> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
    }
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(|err| format!("{}: {err}", src.display()))?;
    }
    Ok(())
}

/// Rebuilds a sharded Dataset input as one tree: `imagesTr/` (ShardedByS3Key) and `labelsTr/` from
/// the mount, `dataset.json` from `<slot>-meta/`, anything else (e.g. `imagesTs/`) from the cache.
/// For a job without `--shards` (one instance), which must see every training image; instances of a
/// job with `--shards N` use `shard_input` and publish parts instead (docs/cloud.md §6).
fn sharded_input(
    job: &Job<'_>,
    mount: &Path,
    meta: &Path,
    manifest: &Manifest,
    out: &Path,
) -> Result<(), String> {
    let sharded = format!("{}/", paths::SHARDED_DIR);
    let images = manifest
        .entries
        .iter()
        .filter(|e| e.path.starts_with(&sharded));
    let total = images.clone().count();
    let seen = images.filter(|e| mount.join(&e.path).is_file()).count();
    if seen < total {
        return Err(format!(
            "this instance sees {seen} of {total} training images but was not given --shards N (a job on several instances must pass it, docs/cloud.md §5)"
        ));
    }
    for e in &manifest.entries {
        let dst = out.join(&e.path);
        let src = [mount.join(&e.path), meta.join(&e.path)]
            .into_iter()
            .find(|p| p.is_file());
        match src {
            Some(src) => place(&src, &dst)?,
            None => {
                let rel = layout::object(&e.digest);
                let bytes = job
                    .cache
                    .get(&rel)
                    .map_err(|err| err.to_string())?
                    .ok_or_else(|| format!("`{}` is neither mounted nor in the cache", e.path))?;
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|err| format!("{}: {err}", parent.display()))?;
                }
                std::fs::write(&dst, bytes).map_err(|err| format!("{}: {err}", dst.display()))?;
            }
        }
    }
    Ok(())
}

/// A shard's share of a sharded Dataset input: the images this instance was given, the replicated
/// labels and `dataset.json`, each checked against the artifact's manifest. Images of other shards
/// are absent; nothing else is fetched.
fn shard_input(mount: &Path, meta: &Path, manifest: &Manifest, out: &Path) -> Result<(), String> {
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
        place(&src, &out.join(&e.path))?;
    }
    if !out.join("dataset.json").is_file() {
        return Err("dataset.json is not mounted".into());
    }
    Ok(())
}

/// Shard `i`: runs the step's part, uploads its files as objects, then the part's record and, last,
/// the manifest of its files (`layout::part`; docs/cloud.md §6). No entry.
fn publish_part(
    job: &Job<'_>,
    sharded: &dyn Sharded,
    cx: &RunContext<'_>,
    staging: &wf_engine::store::Staging,
    i: usize,
) -> CliResult<String> {
    let part = sharded
        .run_part(cx)
        .map_err(|e| failed(e.message + &e.detail.map(|d| format!("\n{d}")).unwrap_or_default()))?;
    let files = wf_engine::manifest::list_files(&staging.out).map_err(|e| failed(e.to_string()))?;
    let paths: Vec<PathBuf> = files.iter().map(|(_, p, _)| p.clone()).collect();
    let mut entries = Vec::with_capacity(files.len());
    for ((rel, path, meta), digest) in files
        .iter()
        .zip(wf_engine::manifest::hash_files(&paths, job.threads))
    {
        entries.push(ManifestEntry {
            path: rel.clone(),
            size: meta.len(),
            digest: digest.map_err(|e| failed(format!("{}: {e}", path.display())))?,
            executable: wf_engine::manifest::is_executable(meta),
        });
    }
    let cache = &job.cache;
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
    let (done, skipped) = (part.done.len(), part.skipped.len());
    let record = PartRecord { shard: i, part };
    let manifest = Manifest { entries };
    let (txt, json) = layout::part(&job.req.key, i);
    cache
        .block_on(async {
            bucket
                .put(
                    &cache.url().key(&json),
                    serde_json::to_vec_pretty(&record).expect("json"),
                )
                .await?;
            bucket
                .put(
                    &cache.url().key(&txt),
                    manifest.canonical_text().into_bytes(),
                )
                .await
        })
        .map_err(|e| failed(format!("publishing part {i}: {e}")))?;
    Ok(format!(
        "shard {i}: {} ({skipped} skipped), {} in {txt}",
        plural(done + skipped, sharded.item_name()),
        plural(manifest.entries.len(), "file")
    ))
}

/// `wf worker commit --kind K`: merges the N parts of `staging/<key>/` (every item covered exactly
/// once, a path at most once per digest), adds what the step's `merge` builds from the parts'
/// records, and publishes manifest, tree and, last, the entry (docs/cloud.md §6).
fn commit_parts(job: &Job<'_>, sharded: &dyn Sharded, n: u32) -> CliResult<String> {
    let req = job.req;
    let cache = &job.cache;
    let key: &StepKey = &req.key;
    // The sharded input's files, read through its manifest in the cache.
    let mut inputs = Vec::new();
    for digest in req.inputs.values() {
        inputs.push(
            cache
                .manifest_of(digest)
                .map_err(|e| failed(format!("input {}: {e}", digest.short())))?,
        );
    }
    let read = |path: &str| -> Result<Vec<u8>, String> {
        let e = inputs
            .iter()
            .find_map(|m| m.entries.iter().find(|e| e.path == path))
            .ok_or_else(|| format!("no input holds `{path}`"))?;
        cache
            .get(&layout::object(&e.digest))
            .map_err(|err| err.to_string())?
            .filter(|b| FileDigest::of_bytes(b) == e.digest)
            .ok_or_else(|| format!("`{path}`: missing or damaged in the cache"))
    };
    let items = sharded
        .items(&job.params, &read)
        .map_err(|e| failed(e.message))?;
    let order: BTreeMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    let dir = layout::staging(key);
    let mut problems = Vec::new();
    let mut files: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut merged = wf_engine::Part::default();
    for i in 0..n as usize {
        let (txt, json) = layout::part(key, i);
        let (Some(part), Some(record)) = (job.get(&txt)?, job.get(&json)?) else {
            problems.push(format!("part {i} of {n} is missing ({txt})"));
            continue;
        };
        let part = Manifest::parse(&String::from_utf8_lossy(&part))
            .ok_or_else(|| failed(format!("{txt}: not a manifest")))?;
        let record: PartRecord =
            serde_json::from_slice(&record).map_err(|e| failed(format!("{json}: {e}")))?;
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
        for item in record.part.done.iter().chain(&record.part.skipped) {
            seen.entry(item.id.clone()).or_default().push(i);
        }
        merged.done.extend(record.part.done);
        merged.skipped.extend(record.part.skipped);
    }
    let noun = sharded.item_name();
    let missing: Vec<&str> = items
        .iter()
        .map(String::as_str)
        .filter(|id| !seen.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} are in no part: {}",
            missing.len(),
            plural(items.len(), noun),
            missing.join(", ")
        ));
    }
    for (id, parts) in &seen {
        if !order.contains_key(id.as_str()) {
            problems.push(format!(
                "{noun} `{id}` (part {parts:?}) is not a {noun} of the input"
            ));
        } else if parts.len() > 1 {
            problems.push(format!("{noun} {id} is in more than one part: {parts:?}"));
        }
    }
    for item in &merged.done {
        for f in &item.files {
            if !files.contains_key(f) {
                problems.push(format!(
                    "`{f}` of {noun} {} is in no part's manifest",
                    item.id
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(failed(format!(
            "cannot commit the sharded output from {dir}: {}",
            problems.join("; ")
        )));
    }
    let rank = |item: &wf_engine::Item| order[item.id.as_str()];
    merged.done.sort_by_key(rank);
    merged.skipped.sort_by_key(rank);
    let extra = sharded
        .merge(&job.params, req.seed, merged)
        .map_err(|e| failed(e.message))?;
    let work = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
    // The shards uploaded their objects; only the merge's own files are local.
    let mut local: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (path, bytes) in &extra.files {
        if files.contains_key(path) {
            return Err(failed(format!(
                "a part holds {path}, which only the commit writes"
            )));
        }
        let file = work.path().join(format!("merged-{}", local.len()));
        std::fs::write(&file, bytes).map_err(|e| failed(e.to_string()))?;
        files.insert(
            path.clone(),
            ManifestEntry {
                path: path.clone(),
                size: bytes.len() as u64,
                digest: FileDigest::of_bytes(bytes),
                executable: false,
            },
        );
        local.insert(path.clone(), file);
    }
    let manifest = Manifest {
        entries: files.into_values().collect(),
    };
    let sources: Vec<(ManifestEntry, PathBuf)> = manifest
        .entries
        .iter()
        .map(|e| {
            let path = local.get(&e.path).cloned().unwrap_or_else(|| {
                PathBuf::from(format!("(missing object of shard file {})", e.path))
            });
            (e.clone(), path)
        })
        .collect();
    cache
        .block_on(cache.publish_artifact(&manifest, &sources))
        .map_err(|e| failed(format!("publishing the merged output: {e}")))?;
    let entry = Entry {
        schema: wf_engine::store::ENTRY_SCHEMA,
        key: *key,
        kind: job.components.kind.clone(),
        version: job.components.version,
        output_type: job.step.output(&job.params),
        artifact: manifest.digest(),
        files: manifest.entries.len(),
        bytes: manifest.total_bytes(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        producer: job.producer(&["PROCESSING_JOB_NAME"], "wf worker commit"),
        warnings: extra.warnings,
        facts: Default::default(),
        inputs: Some(job.components.inputs.clone()),
    };
    let bucket = cache.bucket();
    cache
        .block_on(bucket.put(&cache.entry_key(key), wf_aws::s3cache::entry_json(&entry)))
        .map_err(|e| failed(format!("publishing the entry: {e}")))?;
    // The staging area is garbage now (best effort: the entry is what counts).
    let _ = cache.block_on(async {
        for (k, _) in bucket.list(&cache.url().key(&dir)).await? {
            bucket.delete(&k).await?;
        }
        Ok::<(), wf_aws::AwsError>(())
    });
    Ok(format!(
        "committed {}: {} -> {} ({}) to {}",
        plural(n, "part"),
        key.short(),
        entry.artifact.short(),
        plural(entry.files, "file"),
        cache.location()
    ))
}

/// The end of a step's log, for the job's output (CloudWatch): at most [`LOG_TAIL`] bytes.
fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(LOG_TAIL);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(skip)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    if skip > 0 {
        format!("[first {skip} bytes of the log not shown]\n…{text}")
    } else {
        text.into_owned()
    }
}

/// The most of a failed step's log a worker prints.
const LOG_TAIL: u64 = 64 << 10;
