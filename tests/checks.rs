//! Mistakes caught before any step runs, through the `wf` binary: shapes, splits and networks that
//! do not fit each other across steps (`wf validate`, exit 2, positioned on the value to change;
//! one fixture and snapshot each).

mod common;

use common::*;
use std::path::Path;

fn validate_fixture(name: &str) -> String {
    let t = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checks")
        .join(format!("{name}.yaml"));
    std::fs::copy(&src, t.path().join(format!("{name}.yaml"))).unwrap();
    let out = wf(t.path(), &["validate", &format!("{name}.yaml")]);
    assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
    stderr(&out)
}

macro_rules! fixture {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), validate_fixture(stringify!($name)));
        }
    )*};
}

fixture!(
    roi_not_divisible,
    volume_not_divisible,
    network_shape,
    too_few_cases,
    warmup_too_long,
    unknown_lr_schedule,
);

#[test]
fn every_fixture_is_tested() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/checks.rs")).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/checks");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap();
        assert!(
            source.contains(&format!("    {name},")),
            "fixture {name}.yaml has no test"
        );
    }
}

/// A crop of 40×40×20 fails `wf validate` with exit 2, positioned on `roi`.
#[test]
fn a_roi_of_40x40x20_is_invalid_at_its_position() {
    let err = validate_fixture("roi_not_divisible");
    let text = read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/checks/roi_not_divisible.yaml"
    ));
    let (line, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("roi:"))
        .unwrap();
    let col = l.find("[40, 40, 20]").unwrap() + 1;
    assert!(
        err.starts_with(&format!("roi_not_divisible.yaml:{}:{col}: ", line + 1)),
        "{err}"
    );
}

/// The case count of a local data set comes from its dataset.json at validation.
#[test]
fn a_local_data_sets_case_count_is_known_at_validation() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let synth = wf(
        dir,
        &[
            "synth", "--out", "data", "--cases", "1", "--shape", "32,32,16",
        ],
    );
    assert!(synth.status.success(), "{}", stderr(&synth));
    std::fs::write(
        dir.join("wf.yaml"),
        "steps:\n  fetch: { uses: fetch-dataset, with: { source: data } }\n  prep:\n    uses: sharded-transform\n    inputs: { dataset: fetch }\n    with: { transforms: [load, ensure-channel-first, convert-labels] }\n  train: { uses: train-unet, inputs: { samples: prep }, with: { val_fraction: 0.5 } }\n",
    )
    .unwrap();
    let out = wf(dir, &["validate", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("wf.yaml:7:79: step `train`: `val_fraction` 0.5 holds out whole cases, but the data has 1 case (the dataset.json of step `fetch`)"),
        "{}",
        stderr(&out)
    );
}
