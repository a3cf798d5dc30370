//! Executor tests with typed test steps: warnings survive caching; facts stay out of artifacts and
//! run records say how each step went; params outside the key do not invalidate it; failures, plans
//! and keys behave across the fetch → preprocess → train chain.

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
    assert_eq!(plan[1].reason, "params changed: `labels`");
    assert!(plan[2].key.is_none());
    let forced = exec::plan(&pipeline(2, "msd"), &store, &["fetch".to_string()].into()).unwrap();
    assert_eq!(forced[0].reason, "forced (--force)");
}
