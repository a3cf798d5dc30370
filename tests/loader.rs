//! The trainer's sample loader over a real Samples artifact made by `wf run` (synthetic data →
//! sharded-transform): case-level validation split, deterministic shuffles and online augmentation.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use wf_trainer::loader::open_samples;
use wf_trainer::train::BatchSource;

fn samples(dir: &Path, copies: u32) -> PathBuf {
    let yaml = format!(
        "steps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: synthetic, cases: 6, shape: [48, 48, 32] }} }}\n  prep:\n    uses: sharded-transform\n    inputs: {{ dataset: fetch }}\n    with:\n      copies_per_case: {copies}\n      transforms: [load, ensure-channel-first, convert-labels, {{ spacing: {{ pixdim: [1.5, 1.5, 2.0] }} }}, {{ rand-spatial-crop: {{ roi: [16, 16, 8] }} }}, {{ rand-flip: {{ prob: 0.5, axis: 0 }} }}, {{ normalize-intensity: {{ nonzero: true, channel_wise: true }} }}, {{ rand-shift-intensity: {{ offsets: 0.1, prob: 0.5 }} }}]\n"
    );
    std::fs::write(dir.join("wf.yaml"), yaml).unwrap();
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    PathBuf::from(json(&out)["steps"][1]["output"]["path"].as_str().unwrap())
}

fn epoch(l: &mut impl BatchSource, e: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    l.start_epoch(e).unwrap();
    let mut out = Vec::new();
    while let Some((x, y)) = l.next_batch().unwrap() {
        out.push((
            x.flatten_all().unwrap().to_vec1().unwrap(),
            y.flatten_all().unwrap().to_vec1().unwrap(),
        ));
    }
    out
}

#[test]
fn materialized_copies_split_by_case_and_shuffle_deterministically() {
    let t = tempfile::tempdir().unwrap();
    let dir = samples(t.path(), 2);
    let dev = candle_core::Device::Cpu;
    let (mut train, val) = open_samples(&dir, 0.2, 4, 7, &dev).unwrap();
    assert_eq!(
        (train.len(), val.len()),
        (10, 2),
        "one of 6 cases (both copies) held out"
    );
    assert!(val.cases().iter().all(|c| !train.cases().contains(c)));
    let e0 = epoch(&mut train, 0);
    assert_eq!(e0.len(), 3, "10 samples in batches of 4");
    let (mut again, _) = open_samples(&dir, 0.2, 4, 7, &dev).unwrap();
    assert_eq!(
        epoch(&mut again, 0),
        e0,
        "same seed and epoch, same batches"
    );
    assert_ne!(epoch(&mut again, 1), e0, "a new epoch reshuffles");
    let (_, y) = &e0[0];
    assert!(y.iter().all(|&v| v == 0.0 || v == 1.0));
    assert_eq!(
        y.len(),
        4 * 3 * 16 * 16 * 8,
        "three label channels (TC, WT, ET)"
    );
}

#[test]
fn prefix_only_samples_are_augmented_online() {
    let t = tempfile::tempdir().unwrap();
    let dir = samples(t.path(), 0);
    let dev = candle_core::Device::Cpu;
    let (mut train, _) = open_samples(&dir, 0.2, 2, 3, &dev).unwrap();
    assert_eq!(train.len(), 5);
    train.start_epoch(0).unwrap();
    let (x, _) = train.next_batch().unwrap().unwrap();
    assert_eq!(
        x.dims(),
        [2, 4, 16, 16, 8],
        "the random crop ran in the loader"
    );
    let e0 = epoch(&mut train, 0);
    let (mut other, _) = open_samples(&dir, 0.2, 2, 3, &dev).unwrap();
    assert_eq!(
        epoch(&mut other, 0),
        e0,
        "online augmentation is a function of (seed, case, epoch)"
    );
    // Bad input: a missing artifact is a clear error.
    let err = open_samples(&t.path().join("nope"), 0.2, 2, 3, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("index.json"), "{err}");
}
