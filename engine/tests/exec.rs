//! Executor tests with typed test steps: warnings survive caching; facts stay out of artifacts and
//! run records say how each step went; params outside the key do not invalidate it; failures, plans
//! and keys behave across the fetch → preprocess → train chain; a damaged input is never read.

mod common;

use std::path::Path;
use std::sync::Arc;
use wf_engine::exec::{self, RunOptions, RunSummary, Status};
use wf_engine::{CancelToken, Store, Workflow};

fn load(src: &str) -> Workflow {
    wf_engine::load_str(
        src,
        Path::new("t.yaml"),
        Path::new("."),
        &common::registry(),
    )
    .unwrap()
}

fn run(wf: Workflow, store: &Path) -> RunSummary {
    run_with(wf, store, RunOptions::default())
}

fn run_with(wf: Workflow, store: &Path, opts: RunOptions) -> RunSummary {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(Store::open(store).unwrap());
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let s = exec::run(Arc::new(wf), store, opts, CancelToken::default(), tx).await;
        drain.await.unwrap();
        s
    })
}

const PIPELINE: &str = "steps:\n  fetch: { uses: fetch-dataset, with: { source: synthetic } }\n  prep: { uses: preprocess, inputs: { dataset: fetch }, with: { shards: SHARDS, labels: LABELS } }\n  train: { uses: train-unet, inputs: { samples: prep } }\n";

fn pipeline(shards: u32, labels: &str) -> Workflow {
    load(
        &PIPELINE
            .replace("SHARDS", &shards.to_string())
            .replace("LABELS", labels),
    )
}

fn statuses(s: &RunSummary) -> Vec<Status> {
    s.steps.iter().map(|o| o.status).collect()
}

#[test]
fn warnings_are_kept_with_cached_outputs() {
    let t = tempfile::tempdir().unwrap();
    let first = run(pipeline(2, "msd"), t.path());
    assert_eq!(statuses(&first), [Status::Ran; 3]);
    assert_eq!(
        first.steps[1].warnings,
        ["skipped case BRATS_007: NaN voxels"]
    );
    let second = run(pipeline(2, "msd"), t.path());
    assert_eq!(statuses(&second), [Status::Cached; 3]);
    assert_eq!(
        second.steps[1].warnings,
        ["skipped case BRATS_007: NaN voxels"]
    );
    let json = serde_json::to_value(&second).unwrap();
    assert_eq!(
        json["steps"][1]["warnings"][0],
        "skipped case BRATS_007: NaN voxels"
    );
    assert!(
        json["steps"][0].get("warnings").is_none(),
        "no empty warning lists in the JSON"
    );
}

const WITH_EXPORT: &str = "steps:\n  fetch: { uses: fetch-dataset, with: { source: synthetic } }\n  prep: { uses: preprocess, inputs: { dataset: fetch }, with: { shards: 1 } }\n  train: { uses: train-unet, inputs: { samples: prep }, with: { lr: LR } }\n  export: { uses: export-checkpoint, inputs: { model: train } }\n";

fn with_export(lr: &str) -> Workflow {
    load(&WITH_EXPORT.replace("LR", lr))
}

#[test]
fn facts_stay_out_of_the_artifact_and_run_records_say_how_each_step_went() {
    let t = tempfile::tempdir().unwrap();
    let first = run(with_export("0.1"), t.path());
    assert_eq!(statuses(&first), [Status::Ran; 4]);
    let store = Store::open(t.path()).unwrap();
    let entry = |s: &RunSummary| store.lookup(&s.steps[2].key.unwrap()).unwrap().unwrap();
    let fact = entry(&first).facts["train_seconds"].clone();
    assert!(fact.is_number(), "{:?}", entry(&first).facts);

    // Forced, the step reports another fact but writes the same bytes: its dependents stay cached.
    let opts = RunOptions {
        force: ["train".to_string()].into(),
        ..RunOptions::default()
    };
    let forced = run_with(with_export("0.1"), t.path(), opts);
    assert_eq!(
        statuses(&forced),
        [Status::Cached, Status::Cached, Status::Ran, Status::Cached]
    );
    assert_eq!(
        forced.steps[2].output.as_ref().unwrap().digest,
        first.steps[2].output.as_ref().unwrap().digest
    );
    assert_ne!(entry(&forced).facts["train_seconds"], fact);

    // Each step's record: its status in the run, its seconds, and which run.
    let record = |id: &str| store.last_run("t", id).unwrap().outcome.unwrap();
    assert_eq!(record("train").status, Status::Ran);
    assert_eq!(record("export").status, Status::Cached);
    assert_eq!(record("train").run, record("export").run);
    assert!(record("train").seconds >= 0.0 && record("train").error.is_none());
    let earlier_run = record("export").run;

    // A failure is recorded too (without an output), and plan says so.
    let failed = run(with_export("-1.0"), t.path());
    assert_eq!(failed.steps[2].status, Status::Failed);
    let train = store.last_run("t", "train").unwrap();
    assert_eq!(train.artifact, None);
    let outcome = train.outcome.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.error.as_deref(), Some("lr must be positive"));
    assert_ne!(outcome.run, earlier_run);
    // Export never started: its record is still the earlier run's.
    assert_eq!(record("export").run, earlier_run);
    let plan = exec::plan(&with_export("-1.0"), &store, &Default::default()).unwrap();
    assert_eq!(plan[2].reason, "failed in the last run");
}

#[test]
fn params_outside_the_key_do_not_invalidate_it() {
    let t = tempfile::tempdir().unwrap();
    let a = run(pipeline(2, "msd"), t.path());
    let b = run(pipeline(16, "msd"), t.path());
    assert_eq!(
        statuses(&b),
        [Status::Cached; 3],
        "changing shards reuses everything"
    );
    assert_eq!(a.steps[1].key, b.steps[1].key);
    let c = run(pipeline(16, "brats"), t.path());
    assert_eq!(statuses(&c), [Status::Cached, Status::Ran, Status::Ran]);
}

#[test]
fn plan_reports_param_changes_by_name() {
    let t = tempfile::tempdir().unwrap();
    run(pipeline(2, "msd"), t.path());
    let store = Store::open(t.path()).unwrap();
    let plan = exec::plan(&pipeline(2, "brats"), &store, &Default::default()).unwrap();
    assert_eq!(plan[0].cache, "hit");
    assert_eq!(plan[1].cache, "miss");
    assert_eq!(
        plan[1].reason,
        r#"params changed: `labels` "msd" → "brats""#
    );
    assert!(plan[2].key.is_none());
    assert_eq!(
        (plan[2].cache, plan[2].after.as_slice()),
        ("after", &["prep".to_string()][..])
    );
    let forced = exec::plan(&pipeline(2, "msd"), &store, &["fetch".to_string()].into()).unwrap();
    assert_eq!(forced[0].reason, "forced (--force)");
}

#[test]
fn a_step_does_not_read_an_input_that_changed_in_the_cache() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let first = run(pipeline(2, "msd"), t.path());
    let out = first.steps[0].output.as_ref().unwrap().path.join("out.txt");
    // Rewritten in place, as root can despite the read-only mode.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::write(&out, text.replace("synthetic", "synthetiC")).unwrap();

    let opts = RunOptions {
        force: ["prep".to_string()].into(),
        ..RunOptions::default()
    };
    let s = run_with(pipeline(2, "msd"), t.path(), opts);
    assert_eq!(
        statuses(&s),
        [Status::Cached, Status::Failed, Status::Skipped]
    );
    let error = s.steps[1].error.as_deref().unwrap();
    assert!(
        error.contains("input `dataset` (the output of step `fetch`)")
            && error.contains("`out.txt`"),
        "{error}"
    );
}

/// A remote executor that takes every step and waits, as a SageMaker job does, until the run stops.
struct WaitingRemote {
    started: std::sync::atomic::AtomicBool,
}

impl wf_engine::RemoteExecutor for WaitingRemote {
    fn name(&self) -> String {
        "waiting".into()
    }
    fn takes(&self, _wf: &Workflow, _i: usize) -> bool {
        true
    }
    fn execute(
        &self,
        _wf: &Workflow,
        _i: usize,
        _key: &wf_engine::StepKey,
        _components: &wf_engine::key::KeyComponents,
        _inputs: &std::collections::BTreeMap<String, wf_engine::InputArtifact>,
        _progress: &dyn wf_engine::Progress,
        cancel: &CancelToken,
    ) -> Result<(), wf_engine::StepError> {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        while !cancel.is_cancelled() {
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                return Err(wf_engine::StepError::new("never stopped"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(wf_engine::StepError::new("interrupted"))
    }
}

/// An empty remote cache (the executor needs one for its outputs).
struct EmptyRemote;

impl wf_engine::RemoteCache for EmptyRemote {
    fn location(&self) -> String {
        "nowhere".into()
    }
    fn lookup(
        &self,
        _key: &wf_engine::StepKey,
    ) -> Result<Option<wf_engine::store::Entry>, wf_engine::RemoteError> {
        Ok(None)
    }
    fn fetch(
        &self,
        _key: &wf_engine::StepKey,
        _store: &Store,
    ) -> Result<Option<wf_engine::store::Entry>, wf_engine::RemoteError> {
        Ok(None)
    }
    fn publish(
        &self,
        _store: &Store,
        _entry: &wf_engine::store::Entry,
    ) -> Result<(), wf_engine::RemoteError> {
        Ok(())
    }
}

#[test]
fn a_remote_steps_wait_ends_when_the_run_is_stopped() {
    let t = tempfile::tempdir().unwrap();
    let remote = Arc::new(WaitingRemote {
        started: Default::default(),
    });
    let opts = RunOptions {
        remote: Some(Arc::new(EmptyRemote)),
        executor: Some(remote.clone()),
        ..RunOptions::default()
    };
    let cancel = CancelToken::default();
    let stopper = {
        let (remote, cancel) = (remote.clone(), cancel.clone());
        std::thread::spawn(move || {
            while !remote.started.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            cancel.cancel();
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(Store::open(t.path()).unwrap());
    let summary = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let s = exec::run(Arc::new(pipeline(1, "msd")), store, opts, cancel, tx).await;
        drain.await.unwrap();
        s
    });
    stopper.join().unwrap();
    assert_eq!(
        statuses(&summary),
        [Status::Failed, Status::Skipped, Status::Skipped]
    );
    assert_eq!(summary.steps[0].error.as_deref(), Some("interrupted"));
}
