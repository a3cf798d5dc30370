//! Every invalid-workflow fixture and the exact diagnostics it produces (insta snapshots).

mod common;

use std::path::Path;
use wf_engine::LoadError;

fn diagnose(name: &str) -> String {
    let path = Path::new("tests/fixtures/invalid").join(format!("{name}.yaml"));
    match wf_engine::load(&path, &common::registry()) {
        Ok(_) => panic!("{name}.yaml should be invalid"),
        Err(LoadError::Invalid(list)) => list.to_string(),
        Err(e) => panic!("{name}.yaml: unexpected error {e}"),
    }
}

macro_rules! fixture {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), diagnose(stringify!($name)));
        }
    )*};
}

fixture!(
    unknown_uses,
    unknown_top_key,
    unknown_keys,
    duplicate_keys,
    missing_required,
    wrong_types,
    unknown_input_step,
    unknown_slot,
    type_mismatch,
    cycle,
    self_cycle,
    syntax_error,
    not_a_mapping,
    no_steps,
    bad_step_shapes,
    targets,
    facts_flow_downstream,
    targets_production,
    everything,
    empty,
    comment_only,
    not_utf8,
    empty_steps,
    alias_bomb,
    too_deep,
    merge_key,
);

#[test]
fn every_fixture_is_tested() {
    let source = std::fs::read_to_string("tests/diagnostics.rs").unwrap();
    for entry in std::fs::read_dir("tests/fixtures/invalid").unwrap() {
        let name = entry
            .unwrap()
            .path()
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            source.contains(&format!("    {name},")),
            "fixture {name}.yaml has no test"
        );
    }
}

#[test]
fn valid_pipeline_loads_in_topological_order() {
    let src = "steps:\n  export: { uses: export-checkpoint, inputs: { model: train } }\n  train: { uses: train-unet, inputs: { samples: prep } }\n  prep: { uses: preprocess, inputs: { dataset: fetch }, with: { shards: 2 } }\n  fetch: { uses: fetch-dataset, with: { source: synthetic } }\n";
    let wf = wf_engine::load_str(
        src,
        Path::new("ok.yaml"),
        Path::new("."),
        &common::registry(),
    )
    .unwrap();
    let order: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(order, ["fetch", "prep", "train", "export"]);
    // Defaults are filled in, and integers given for floats are canonicalized.
    assert_eq!(
        wf.steps[2].params.canonical_json(),
        r#"{"bf16":false,"epochs":10,"lr":0.0001}"#
    );
}
