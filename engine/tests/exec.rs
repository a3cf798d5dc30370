//! Executor tests with typed test steps: warnings survive caching; params outside the key do not
//! invalidate it; failures, plans and keys behave across the fetch → preprocess → train chain.

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
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(Store::open(store).unwrap());
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let s = exec::run(
            Arc::new(wf),
            store,
            RunOptions::default(),
            CancelToken::default(),
            tx,
        )
        .await;
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
