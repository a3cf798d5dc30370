//! Planning and local execution of a sealed workflow.
//!
//! The executor is a dispatcher: it starts a step when all its inputs are available, at most `jobs` at
//! a time, each on a blocking thread (steps are CPU- or process-bound), and reports everything as
//! `Event`s on a channel; one reporter (in the CLI) turns events into output. A step's key is known only
//! once its inputs' artifact digests are: that is what gives early cutoff (a rerun that produces the
//! same bytes leaves its dependents' keys unchanged).

use crate::artifact::ArtifactType;
use crate::digest::{ArtifactDigest, FileDigest, StepKey};
use crate::key::{KEY_SCHEMA, KeyComponents, canonical_json};
use crate::memo::Memo;
use crate::remote::{RemoteCache, RemoteExecutor};
use crate::step::{
    CancelToken, Count, InputArtifact, Progress, RunContext, SizeEstimate, StepError,
};
use crate::store::{
    Entry, Producer, RunOutcome, RunRecord, StepNotes, Store, StoreError, now_unix,
};
use crate::words::human_bytes;
use crate::workflow::Workflow;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ran,
    Cached,
    Failed,
    Skipped,
}

/// Events from a run, in the order they happen.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        step: String,
        kind: &'static str,
        key: StepKey,
    },
    /// What the step is doing now; the next status replaces it.
    Status {
        step: String,
        message: String,
    },
    /// A line worth keeping (an epoch's metrics).
    Note {
        step: String,
        message: String,
    },
    /// How far the step's work is (`Level::Whole`), or the current unit of it (`Level::Within`).
    Progress {
        step: String,
        level: Level,
        count: Count,
    },
    Warning {
        step: String,
        message: String,
    },
    Finished(StepOutcome),
}

/// Which count of a step a progress event moves ([`Progress::advance`] or
/// [`Progress::advance_within`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The step's work as a whole (its cases, epochs, bytes).
    Whole,
    /// The current unit of the whole (the steps of the current epoch).
    Within,
}

#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub digest: ArtifactDigest,
    pub path: PathBuf,
}

/// The result of one step, as printed by `wf run --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub id: String,
    pub kind: &'static str,
    pub status: Status,
    pub key: Option<StepKey>,
    pub seconds: f64,
    pub output: Option<Output>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Detail of a failure (e.g. the stderr tail of a command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// Things the step wants the user to know (e.g. skipped bad cases); kept with cached outputs too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub steps: Vec<StepOutcome>,
}

impl RunSummary {
    pub fn failed(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.status, Status::Failed | Status::Skipped))
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps that may run at once.
    pub jobs: usize,
    /// Threads a step may use internally.
    pub threads: usize,
    /// Step ids to recompute even when cached.
    pub force: BTreeSet<String>,
    /// A shared cache behind the local store (`cache: s3://...`): consulted on a local miss, and
    /// given every output the local store holds.
    pub remote: Option<Arc<dyn RemoteCache>>,
    /// Runs steps elsewhere (`wf run --executor sagemaker`); needs `remote`, where outputs land.
    pub executor: Option<Arc<dyn RemoteExecutor>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        RunOptions {
            jobs: cores,
            threads: cores,
            force: BTreeSet::new(),
            remote: None,
            executor: None,
        }
    }
}

/// Computes the key components of step `i` given its inputs' digests; hashes declared local files
/// and reads the state of an external source (`Step::external_state`, polling `cancel`).
pub fn key_components(
    wf: &Workflow,
    i: usize,
    inputs: &BTreeMap<String, ArtifactDigest>,
    memo: &Memo,
    cancel: &CancelToken,
) -> Result<KeyComponents, StepError> {
    let def = &wf.steps[i];
    let mut files = BTreeMap::new();
    for rel in def.step.local_files(&def.params) {
        hash_local(&wf.dir, &rel, memo, &mut files)?;
    }
    let external = match def.step.external_source(&def.params) {
        Some(_) => Some(def.step.external_state(&def.params, cancel)?),
        None => None,
    };
    Ok(KeyComponents {
        schema: KEY_SCHEMA,
        kind: def.kind().to_string(),
        version: def.step.version(),
        params: canonical_json(&def.params.key_value()),
        seed: def.step.seeded().then_some(wf.seed),
        inputs: inputs.clone(),
        files,
        external,
    })
}

/// Adds the digests of a declared file, or of every file under a declared directory (symbolic links
/// followed; directories tagged as caches, `CACHEDIR.TAG`, skipped), keyed by their path relative to
/// the workflow directory.
fn hash_local(
    dir: &Path,
    rel: &str,
    memo: &Memo,
    out: &mut BTreeMap<String, FileDigest>,
) -> Result<(), StepError> {
    hash_local_at(dir, rel.trim_end_matches('/'), memo, out, 0)
}

/// Directories nested deeper than this below a declared path are refused: with links followed, a
/// link cycle would otherwise recurse forever.
const MAX_DEPTH: usize = 64;

fn hash_local_at(
    dir: &Path,
    rel: &str,
    memo: &Memo,
    out: &mut BTreeMap<String, FileDigest>,
    depth: usize,
) -> Result<(), StepError> {
    let path = dir.join(rel);
    let meta = std::fs::metadata(&path)
        .map_err(|e| StepError::new(format!("declared file `{rel}` ({}): {e}", path.display())))?;
    if meta.is_file() {
        let d = memo
            .digest(&path, &meta)
            .map_err(|e| StepError::new(format!("reading `{rel}`: {e}")))?;
        out.insert(rel.to_string(), d);
    } else if meta.is_dir() {
        // A cache inside a declared directory (the default `.wf/cache` under `files: ["."]`) is
        // never an input: it changes with every run, and hashing it would make every run a miss.
        if depth > 0 && crate::store::is_cache_dir(&path) {
            return Ok(());
        }
        if depth >= MAX_DEPTH {
            return Err(StepError::new(format!(
                "declared directory `{rel}` nests deeper than {MAX_DEPTH} levels (a symbolic link cycle?)"
            )));
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&path)
            .map_err(|e| StepError::new(format!("reading directory `{rel}`: {e}")))?
        {
            let entry =
                entry.map_err(|e| StepError::new(format!("reading directory `{rel}`: {e}")))?;
            // A name that is not UTF-8 cannot be written into the key: refuse rather than skip it.
            let name = entry.file_name().into_string().map_err(|n| {
                StepError::new(format!(
                    "`{rel}/{}`: file names in declared files must be UTF-8",
                    n.to_string_lossy()
                ))
            })?;
            names.push(name);
        }
        names.sort();
        for name in names {
            hash_local_at(dir, &format!("{rel}/{name}"), memo, out, depth + 1)?;
        }
    }
    Ok(())
}

/// One line of `wf plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    pub id: String,
    pub kind: &'static str,
    /// `None` while the key waits for the steps in `after`.
    pub key: Option<StepKey>,
    /// `hit`, `miss`, or `after` (the key depends on outputs of `after` that a run computes first:
    /// whether the step then hits is not known yet).
    pub cache: &'static str,
    pub reason: String,
    /// The steps whose outputs the key waits for (with `cache: after`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// The output's estimated size in bytes (`Step::output_size`), for a step that will run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The estimate in words: `about 1.2 GiB (…)`, or why it is not known yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Earlier work a run would pick up (`Step::resumes`): `resumes from epoch 3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes: Option<String>,
    /// The estimate behind `size`, with what to change and where (for `wf run`'s space check).
    #[serde(skip)]
    pub size_estimate: Option<SizeEstimate>,
}

impl PlanStep {
    /// Whether a run would compute the step (rather than take it from a cache).
    pub fn runs(&self) -> bool {
        self.cache != "hit"
    }
}

/// The words `wf plan` shows for an estimate.
fn size_text(size: &SizeEstimate) -> (Option<u64>, String) {
    match size {
        SizeEstimate::Bytes { bytes, how, .. } => (
            Some(*bytes),
            format!("about {} ({how})", human_bytes(*bytes)),
        ),
        SizeEstimate::Unknown { why } => (None, why.clone()),
        SizeEstimate::Ask => (None, "size unknown until its source is asked".to_string()),
    }
}

/// What a run would do, without running anything. A step after a miss has no key yet: its inputs are
/// not computed.
pub fn plan(
    wf: &Workflow,
    store: &Store,
    force: &BTreeSet<String>,
) -> Result<Vec<PlanStep>, StoreError> {
    plan_with(wf, store, force, None).map_err(|e| match e {
        PlanError::Store(e) => e,
        PlanError::Remote(_) => unreachable!("no remote cache"),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
}

/// [`plan`] with a remote cache behind the local store: a local miss that the remote holds is a hit
/// (nothing is downloaded; the remote entry gives the digest that later steps' keys need).
pub fn plan_with(
    wf: &Workflow,
    store: &Store,
    force: &BTreeSet<String>,
    remote: Option<&dyn RemoteCache>,
) -> Result<Vec<PlanStep>, PlanError> {
    let memo = Memo::load(&store.memo_path());
    let mut produced: Vec<Option<ArtifactDigest>> = vec![None; wf.steps.len()];
    let mut out = Vec::new();
    for (i, def) in wf.steps.iter().enumerate() {
        let mut inputs = BTreeMap::new();
        // The producers still to run, in the workflow's (topological) order, each once.
        let mut waiting_for = BTreeSet::new();
        for (slot, &p) in &def.inputs {
            match produced[p] {
                Some(d) => {
                    inputs.insert(slot.clone(), d);
                }
                None => {
                    waiting_for.insert(p);
                }
            }
        }
        if !waiting_for.is_empty() {
            let waiting: Vec<String> = waiting_for
                .iter()
                .map(|&p| wf.steps[p].id.clone())
                .collect();
            let (size_bytes, size) = def.size.as_ref().map(size_text).unzip();
            out.push(PlanStep {
                id: def.id.clone(),
                kind: def.kind(),
                key: None,
                cache: "after",
                reason: format!(
                    "runs after {} (its key depends on {})",
                    waiting
                        .iter()
                        .map(|w| format!("`{w}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if waiting.len() == 1 {
                        "that step's output"
                    } else {
                        "those steps' outputs"
                    }
                ),
                after: waiting,
                size_bytes: size_bytes.flatten(),
                size,
                resumes: None,
                size_estimate: def.size.clone(),
            });
            continue;
        }
        let components = match key_components(wf, i, &inputs, &memo, &CancelToken::default()) {
            Ok(c) => c,
            Err(e) => {
                let (size_bytes, size) = def.size.as_ref().map(size_text).unzip();
                out.push(PlanStep {
                    id: def.id.clone(),
                    kind: def.kind(),
                    key: None,
                    cache: "miss",
                    reason: e.message,
                    after: Vec::new(),
                    size_bytes: size_bytes.flatten(),
                    size,
                    resumes: None,
                    size_estimate: def.size.clone(),
                });
                continue;
            }
        };
        let key = components.key();
        let mut entry = store.lookup(&key)?;
        let mut hit_reason = "cached".to_string();
        if let (None, Some(remote), false) = (&entry, remote, force.contains(&def.id)) {
            entry = remote.lookup(&key)?;
            hit_reason = format!("cached in {}", remote.location());
        }
        let (cache, reason) = match (&entry, force.contains(&def.id)) {
            (_, true) => ("miss", "forced (--force)".to_string()),
            (Some(_), false) => ("hit", hit_reason),
            (None, false) => ("miss", miss_reason(store, wf, &def.id, &key, &components)),
        };
        if let (Some(e), false) = (&entry, force.contains(&def.id)) {
            produced[i] = Some(e.artifact);
        }
        let runs = cache != "hit";
        // A source's announced size is asked only of a step that will run.
        let size_estimate = match &def.size {
            Some(SizeEstimate::Ask) if runs => Some(
                def.step
                    .announced_size(&def.params, &CancelToken::default()),
            ),
            other => other.clone().filter(|_| runs),
        };
        let (size_bytes, size) = size_estimate.as_ref().map(size_text).unzip();
        let resumes = if runs {
            def.step.resumes(store, &components)
        } else {
            None
        };
        out.push(PlanStep {
            id: def.id.clone(),
            kind: def.kind(),
            key: Some(key),
            cache,
            reason,
            after: Vec::new(),
            size_bytes: size_bytes.flatten(),
            size,
            resumes,
            size_estimate,
        });
    }
    memo.save();
    Ok(out)
}

fn miss_reason(store: &Store, wf: &Workflow, id: &str, key: &StepKey, c: &KeyComponents) -> String {
    match store.last_run(&wf.name, id) {
        None => "never run".to_string(),
        Some(prev) if prev.key == *key && prev.artifact.is_none() => {
            "failed in the last run".to_string()
        }
        Some(prev) if prev.key == *key => "output no longer in the cache".to_string(),
        Some(prev) => {
            let reasons = c.changes_since(&prev.components);
            if reasons.is_empty() {
                "key changed".to_string()
            } else {
                reasons.join("; ")
            }
        }
    }
}

struct ChannelProgress {
    step: String,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    notes: std::sync::Mutex<StepNotes>,
}

impl ChannelProgress {
    fn new(step: &str, tx: &tokio::sync::mpsc::UnboundedSender<Event>) -> Self {
        ChannelProgress {
            step: step.to_string(),
            tx: tx.clone(),
            notes: Default::default(),
        }
    }
    fn notes(&self) -> StepNotes {
        self.notes.lock().expect("notes lock").clone()
    }
}

impl Progress for ChannelProgress {
    fn warn(&self, msg: &str) {
        self.notes
            .lock()
            .expect("notes lock")
            .warnings
            .push(msg.to_string());
        let _ = self.tx.send(Event::Warning {
            step: self.step.clone(),
            message: msg.to_string(),
        });
    }
    fn message(&self, msg: &str) {
        let _ = self.tx.send(Event::Status {
            step: self.step.clone(),
            message: msg.to_string(),
        });
    }
    fn note(&self, msg: &str) {
        let _ = self.tx.send(Event::Note {
            step: self.step.clone(),
            message: msg.to_string(),
        });
    }
    fn advance(&self, count: Count) {
        let _ = self.tx.send(Event::Progress {
            step: self.step.clone(),
            level: Level::Whole,
            count,
        });
    }
    fn advance_within(&self, count: Count) {
        let _ = self.tx.send(Event::Progress {
            step: self.step.clone(),
            level: Level::Within,
            count,
        });
    }
    fn fact(&self, name: &str, value: serde_json::Value) {
        self.notes
            .lock()
            .expect("notes lock")
            .facts
            .insert(name.to_string(), value);
    }
}

/// Names one `wf run` in the run records it writes: the time it started, the process and a
/// counter (for several runs in one process).
fn run_name() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", now_unix(), std::process::id())
}

/// Records how a step went in run `run`, when its key was known (a step that failed before has
/// nothing to compare a later key with).
fn save_run(
    store: &Store,
    workflow: &str,
    run: &str,
    outcome: &StepOutcome,
    components: Option<KeyComponents>,
) {
    let (Some(key), Some(components)) = (outcome.key, components) else {
        return;
    };
    let status = match outcome.status {
        Status::Skipped => return,
        s => s,
    };
    let record = RunRecord {
        key,
        components,
        artifact: outcome.output.as_ref().map(|o| o.digest),
        outcome: Some(RunOutcome {
            run: run.to_string(),
            status,
            seconds: outcome.seconds,
            finished_unix: now_unix(),
            error: outcome.error.clone(),
        }),
    };
    if let Err(e) = store.save_run(workflow, &outcome.id, &record) {
        tracing::warn!("could not save run record of {}: {e}", outcome.id);
    }
}

/// Runs the workflow. Events go to `events`; the summary lists every step in topological order.
pub async fn run(
    wf: Arc<Workflow>,
    store: Arc<Store>,
    opts: RunOptions,
    cancel: CancelToken,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> RunSummary {
    let n = wf.steps.len();
    let run_id: Arc<str> = run_name().into();
    let memo = Arc::new(Memo::load(&store.memo_path()));
    let mut outcomes: Vec<Option<StepOutcome>> = vec![None; n];
    let mut artifacts: Vec<Option<(ArtifactType, ArtifactDigest)>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running = 0usize;
    let mut stopped = false;
    let mut set: tokio::task::JoinSet<(usize, StepOutcome)> = tokio::task::JoinSet::new();
    let jobs = opts.jobs.max(1);

    loop {
        if cancel.is_cancelled() {
            stopped = true;
        }
        // Start every ready step while there is room.
        if !stopped {
            for i in 0..n {
                if running >= jobs {
                    break;
                }
                if started[i] {
                    continue;
                }
                let def = &wf.steps[i];
                if !def.inputs.values().all(|&p| artifacts[p].is_some()) {
                    continue;
                }
                started[i] = true;
                running += 1;
                let inputs: BTreeMap<String, InputArtifact> = def
                    .inputs
                    .iter()
                    .map(|(slot, &p)| {
                        let (ty, digest) = artifacts[p].expect("ready");
                        (
                            slot.clone(),
                            InputArtifact {
                                ty,
                                digest,
                                path: store.artifact_path(&digest),
                            },
                        )
                    })
                    .collect();
                let (wf, store, memo, opts, cancel, tx, run_id) = (
                    wf.clone(),
                    store.clone(),
                    memo.clone(),
                    opts.clone(),
                    cancel.clone(),
                    events.clone(),
                    run_id.clone(),
                );
                let handle = tokio::task::spawn_blocking(move || {
                    let t0 = Instant::now();
                    let (mut outcome, components) =
                        run_one(&wf, i, &store, &memo, &opts, &cancel, &inputs, &tx);
                    outcome.seconds = t0.elapsed().as_secs_f64();
                    save_run(&store, &wf.name, &run_id, &outcome, components);
                    outcome
                });
                let kind = def.kind();
                let id = def.id.clone();
                set.spawn(async move {
                    let outcome = match handle.await {
                        Ok(o) => o,
                        Err(e) => failed_outcome(
                            &id,
                            kind,
                            None,
                            format!("step crashed: {e}"),
                            None,
                            None,
                        ),
                    };
                    (i, outcome)
                });
            }
        }
        if running == 0 {
            break;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (i, outcome) = joined.expect("the wrapper task never panics");
        running -= 1;
        match outcome.status {
            Status::Ran | Status::Cached => {
                if let Some(o) = &outcome.output {
                    artifacts[i] = Some((wf.steps[i].output, o.digest));
                }
            }
            Status::Failed | Status::Skipped => stopped = true,
        }
        let _ = events.send(Event::Finished(outcome.clone()));
        outcomes[i] = Some(outcome);
    }
    memo.save();

    // Whatever never started was skipped: after a failed input, or because the run stopped.
    for i in 0..n {
        if outcomes[i].is_some() {
            continue;
        }
        let def = &wf.steps[i];
        let failed_input = def.inputs.values().find_map(|&p| match &outcomes[p] {
            Some(o) if matches!(o.status, Status::Failed | Status::Skipped) => {
                Some(wf.steps[p].id.clone())
            }
            _ => None,
        });
        let reason = match failed_input {
            Some(p) => format!("input `{p}` did not complete"),
            None if cancel.is_cancelled() => "the run was interrupted".to_string(),
            None => "the run stopped after a failure".to_string(),
        };
        let outcome = StepOutcome {
            id: def.id.clone(),
            kind: def.kind(),
            status: Status::Skipped,
            key: None,
            seconds: 0.0,
            output: None,
            error: Some(reason),
            detail: None,
            log: None,
            warnings: Vec::new(),
        };
        let _ = events.send(Event::Finished(outcome.clone()));
        outcomes[i] = Some(outcome);
    }
    RunSummary {
        steps: outcomes
            .into_iter()
            .map(|o| o.expect("every step has an outcome"))
            .collect(),
    }
}

fn failed_outcome(
    id: &str,
    kind: &'static str,
    key: Option<StepKey>,
    error: String,
    detail: Option<String>,
    log: Option<PathBuf>,
) -> StepOutcome {
    StepOutcome {
        id: id.to_string(),
        kind,
        status: Status::Failed,
        key,
        seconds: 0.0,
        output: None,
        error: Some(error),
        detail,
        log,
        warnings: Vec::new(),
    }
}

/// Computes step `i`'s key, then looks it up or runs the step; with the outcome, the key's
/// components when they could be computed.
#[allow(clippy::too_many_arguments)]
fn run_one(
    wf: &Workflow,
    i: usize,
    store: &Store,
    memo: &Memo,
    opts: &RunOptions,
    cancel: &CancelToken,
    inputs: &BTreeMap<String, InputArtifact>,
    tx: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> (StepOutcome, Option<KeyComponents>) {
    let def = &wf.steps[i];
    let digests: BTreeMap<String, ArtifactDigest> =
        inputs.iter().map(|(s, a)| (s.clone(), a.digest)).collect();
    match key_components(wf, i, &digests, memo, cancel) {
        Ok(c) => (
            run_keyed(wf, i, &c, store, opts, cancel, inputs, tx),
            Some(c),
        ),
        Err(e) => (
            failed_outcome(&def.id, def.kind(), None, e.message, e.detail, None),
            None,
        ),
    }
}

/// [`run_one`] once the key is known.
#[allow(clippy::too_many_arguments)]
fn run_keyed(
    wf: &Workflow,
    i: usize,
    components: &KeyComponents,
    store: &Store,
    opts: &RunOptions,
    cancel: &CancelToken,
    inputs: &BTreeMap<String, InputArtifact>,
    tx: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> StepOutcome {
    let def = &wf.steps[i];
    let (id, kind) = (def.id.as_str(), def.kind());
    let key = components.key();
    let forced = opts.force.contains(id);
    let done = |entry: Entry, status: Status| StepOutcome {
        id: id.to_string(),
        kind,
        status,
        key: Some(key),
        seconds: 0.0,
        output: Some(Output {
            digest: entry.artifact,
            path: store.artifact_path(&entry.artifact),
        }),
        error: None,
        detail: None,
        log: None,
        warnings: entry.warnings,
    };
    let store_err = |e: StoreError| failed_outcome(id, kind, Some(key), e.to_string(), None, None);
    let remote = opts.remote.as_deref();
    // A local hit the remote lacks (computed before the remote was configured, or its publish
    // failed) is published now, so the shared layer converges on everything computed.
    let cached = |entry: Entry| match remote.map(|r| r.publish(store, &entry)) {
        Some(Err(e)) => failed_outcome(
            id,
            kind,
            Some(key),
            format!("the output is cached locally but publishing it failed: {e}"),
            None,
            None,
        ),
        _ => done(entry, Status::Cached),
    };

    if !forced {
        match store.lookup(&key) {
            Ok(Some(entry)) => return cached(entry),
            Ok(None) => {}
            Err(e) => return store_err(e),
        }
    }
    // One computation per key across processes; whoever waited finds the other's result.
    let waiting = || {
        let _ = tx.send(Event::Status {
            step: id.to_string(),
            message: "waiting for another wf process that is computing this step".into(),
        });
    };
    let _lock = match lock_key(store, &key, cancel, waiting) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return failed_outcome(
                id,
                kind,
                Some(key),
                "the run was interrupted".into(),
                None,
                None,
            );
        }
        Err(e) => return store_err(e),
    };
    if !forced {
        match store.lookup(&key) {
            Ok(Some(entry)) => return cached(entry),
            Ok(None) => {}
            Err(e) => return store_err(e),
        }
        if let Some(remote) = remote {
            match remote.fetch(&key, store) {
                Ok(Some(entry)) => return done(entry, Status::Cached),
                Ok(None) => {}
                Err(e) => return failed_outcome(id, kind, Some(key), e.message, None, None),
            }
        }
    }
    if cancel.is_cancelled() {
        return failed_outcome(
            id,
            kind,
            Some(key),
            "the run was interrupted".into(),
            None,
            None,
        );
    }
    if let Some(executor) = opts.executor.as_deref().filter(|x| x.takes(wf, i)) {
        let run = run_remotely(
            wf, i, key, components, inputs, executor, remote, store, tx, cancel,
        );
        return match run {
            Ok(Some(entry)) => done(entry, Status::Ran),
            Ok(None) => failed_outcome(
                id,
                kind,
                Some(key),
                format!(
                    "{} finished but no output was published under {}",
                    executor.name(),
                    key.short()
                ),
                None,
                None,
            ),
            Err(e) => failed_outcome(id, kind, Some(key), e.message, e.detail, None),
        };
    }
    // The inputs are read from the cache: confirm they hold what was committed (a `stat` per file
    // while nothing changed), so a damaged artifact is never computed from.
    for (slot, input) in inputs {
        if let Err(e) = store.check_artifact(&input.digest, opts.threads) {
            let from = def
                .inputs
                .get(slot)
                .map_or("?", |&p| wf.steps[p].id.as_str());
            return failed_outcome(
                id,
                kind,
                Some(key),
                format!("input `{slot}` (the output of step `{from}`): {e}"),
                None,
                None,
            );
        }
    }
    let staging = match store.stage(id) {
        Ok(s) => s,
        Err(e) => return store_err(e),
    };
    let _ = tx.send(Event::Started {
        step: id.to_string(),
        kind,
        key,
    });
    tracing::debug!(step = id, key = %key, "running");
    let progress = ChannelProgress::new(id, tx);
    let cx = RunContext {
        resume_dir: None,
        step_id: id,
        workflow_dir: &wf.dir,
        params: &def.params,
        inputs,
        out_dir: &staging.out,
        scratch_dir: &staging.scratch,
        log_path: &staging.log,
        seed: wf.seed,
        threads: opts.threads.max(1),
        local_files: &components.files,
        external: components.external.as_deref(),
        cancel,
        progress: &progress,
        store,
    };
    let result = def.step.run(&cx);
    let log = store.keep_log(&staging, &wf.name, id);
    match result {
        Err(e) => failed_outcome(id, kind, Some(key), e.message, e.detail, log),
        Ok(()) if cancel.is_cancelled() => failed_outcome(
            id,
            kind,
            Some(key),
            "the run was interrupted".into(),
            None,
            log,
        ),
        Ok(()) => {
            let producer = Producer {
                workflow: wf.name.clone(),
                step: id.to_string(),
            };
            match store.commit(
                &staging,
                &key,
                components,
                def.output,
                producer,
                progress.notes(),
                opts.threads,
            ) {
                Ok(entry) => {
                    if let Some(Err(e)) = remote.map(|r| r.publish(store, &entry)) {
                        return failed_outcome(
                            id,
                            kind,
                            Some(key),
                            format!("the step succeeded but publishing its output failed: {e}"),
                            None,
                            log,
                        );
                    }
                    let mut o = done(entry, Status::Ran);
                    o.log = log;
                    o
                }
                Err(e) => failed_outcome(
                    id,
                    kind,
                    Some(key),
                    format!("committing the output of step `{id}`: {e}"),
                    None,
                    log,
                ),
            }
        }
    }
}

/// Takes `key`'s lock, waiting while another process holds it (`waiting` is called once then);
/// `None` if the run is stopped first.
fn lock_key(
    store: &Store,
    key: &StepKey,
    cancel: &CancelToken,
    waiting: impl FnOnce(),
) -> Result<Option<crate::store::KeyLock>, StoreError> {
    let lock = store.key_lock(key)?;
    let mut waiting = Some(waiting);
    let mut pause = Duration::from_millis(10);
    loop {
        if lock.try_take()? {
            return Ok(Some(lock));
        }
        if cancel.is_cancelled() {
            return Ok(None);
        }
        if let Some(w) = waiting.take() {
            w();
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Runs step `i` through `executor` and fetches what it published into the local store.
#[allow(clippy::too_many_arguments)]
fn run_remotely(
    wf: &Workflow,
    i: usize,
    key: StepKey,
    components: &KeyComponents,
    inputs: &BTreeMap<String, InputArtifact>,
    executor: &dyn RemoteExecutor,
    remote: Option<&dyn RemoteCache>,
    store: &Store,
    tx: &tokio::sync::mpsc::UnboundedSender<Event>,
    cancel: &CancelToken,
) -> Result<Option<Entry>, StepError> {
    let def = &wf.steps[i];
    // A worker computes the key from its arguments alone; it cannot arrive at one holding the
    // state read here, so it would refuse to publish after the job ran.
    if let Some(what) = def.step.external_source(&def.params) {
        return Err(StepError::new(format!(
            "{} cannot run this step: its key holds the current state of {what}, which a worker cannot recompute; pin the source (e.g. `sha256`) or run the step locally",
            executor.name()
        )));
    }
    let remote = remote.ok_or_else(|| {
        StepError::new(format!(
            "{} needs an S3 cache (cache: s3://... or --cache s3://...) for its outputs",
            executor.name()
        ))
    })?;
    let _ = tx.send(Event::Started {
        step: def.id.clone(),
        kind: def.kind(),
        key,
    });
    let progress = ChannelProgress::new(&def.id, tx);
    executor.execute(wf, i, &key, components, inputs, &progress, cancel)?;
    remote
        .fetch(&key, store)
        .map_err(|e| StepError::new(e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_cycle_in_declared_files_is_an_error_not_a_crash() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("data")).unwrap();
        std::fs::write(t.path().join("data/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("..", t.path().join("data/loop")).unwrap();
        let memo = Memo::load(&t.path().join("memo"));
        let mut out = BTreeMap::new();
        let err = hash_local(t.path(), "data/", &memo, &mut out).unwrap_err();
        assert!(
            err.message.contains("nests deeper than 64"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_cache_inside_a_declared_directory_is_not_hashed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("make.py"), "print(1)").unwrap();
        Store::open(&t.path().join(".wf/cache")).unwrap();
        let memo = Memo::load(&t.path().join("memo"));
        let mut out = BTreeMap::new();
        hash_local(t.path(), ".", &memo, &mut out).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["./make.py"]);
    }
}
