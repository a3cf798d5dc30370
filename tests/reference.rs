//! The generated reference, through the real binary: `wf steps [KIND]` and `wf schema`. The schema
//! is checked with a standard validator (the `jsonschema` crate, draft 2020-12) against the shipped
//! workflows, converted from YAML by the engine's own parser, and against misspellings that `wf
//! validate` rejects too.

mod common;

use common::{stderr, stdout, wf};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `wf schema`, parsed; also checked against the draft 2020-12 meta-schema.
fn schema() -> Json {
    let dir = tempfile::tempdir().unwrap();
    let out = wf(dir.path(), &["schema"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let schema: Json = serde_json::from_slice(&out.stdout).expect("wf schema prints JSON");
    jsonschema::meta::validate(&schema).expect("a valid JSON Schema");
    schema
}

/// The YAML as the engine reads it (core-schema scalars), as JSON.
fn yaml_to_json(text: &str) -> Json {
    let mut diags = wf_engine::Diagnostics::new(Path::new("x.yaml"));
    let root = wf_engine::yaml::parse(text, &mut diags).expect("YAML parses");
    wf_engine::params::to_json(&root)
}

/// Where the validator rejects a document (JSON pointers), empty when it is valid.
fn violations(validator: &jsonschema::Validator, doc: &Json) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

#[test]
fn shipped_workflows_validate_against_the_schema() {
    let v = validator();
    for file in [
        "workflows/quickstart.yaml",
        "workflows/brats.yaml",
        "workflows/quickstart-gpu.yaml",
        "examples/command/pipeline.yaml",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        assert_eq!(
            violations(&v, &yaml_to_json(&text)),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

/// A workflow that uses every transform with every field, and the other kinds' optional params:
/// valid for `wf validate` and for the schema alike.
const EVERYTHING: &str = r#"
name: everything
description: every transform, every field
seed: 3
cache: .wf/cache
steps:
  fetch:
    uses: fetch-dataset
    with: { source: synthetic, cases: 4, shape: [32, 32, 16], seed: 1, test: 0 }
  prep:
    uses: sharded-transform
    inputs: { dataset: fetch }
    with:
      labels: brats
      copies_per_case: 0
      shards: 2
      on_bad_case: skip
      sample_dtype: bf16
      transforms:
        - load: {}
        - ensure-channel-first
        - convert-labels: { labels: msd }
        - spacing: { pixdim: [1, 1.5, 2], mode: nearest }
        - orientation: { axcodes: las }
        - rand-spatial-crop: { roi: [16, 16, 8] }
        - rand-flip: { prob: 0.5, axis: [0, 2] }
        - normalize-intensity: { nonzero: true, channel_wise: false }
        - rand-scale-intensity: { factors: [-0.1, 0.2], prob: 1 }
        - rand-shift-intensity: { offsets: 0.1 }
  stage: { uses: fsx-import, inputs: { samples: prep }, with: { stage_dir: "" } }
  train:
    uses: train-unet
    inputs: { samples: stage }
    with: { epochs: 1, batch_size: 1, lr: 1, weight_decay: 0, val_fraction: 0, loss: dice-bce,
            precision: fp32, gpus: all, channels: [4, 8], strides: [2], num_res_units: 0,
            dropout: 0.1 }
  export: { uses: export-checkpoint, inputs: { model: train } }
  notes:
    uses: command
    inputs: { model: export }
    with: { run: "ls $WF_IN_model > $WF_OUT/list", produces: Files, files: [], env: { N: 1 } }
targets:
  aws:
    state_machine_name: wf-everything
    fsx: { file_system_id: fs-1, per_unit_storage_throughput: 125, deployment_type: PERSISTENT_2 }
    steps: { train: { instance_count: 1, volume_size_gb: 10, max_runtime_seconds: 600 } }
"#;

#[test]
fn every_transform_field_is_in_the_schema() {
    let v = validator();
    assert_eq!(
        violations(&v, &yaml_to_json(EVERYTHING)),
        Vec::<String>::new()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wf.yaml"), EVERYTHING).unwrap();
    let out = wf(dir.path(), &["validate", "wf.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Each edit of the quickstart is an error for `wf validate` and for the schema, each at the same
/// place.
#[test]
fn misspellings_fail_both_wf_validate_and_the_schema() {
    let v = validator();
    let quickstart = std::fs::read_to_string(repo("workflows/quickstart.yaml")).unwrap();
    let brats = std::fs::read_to_string(repo("workflows/brats.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (text, from, to, pointer) in [
        (&quickstart, "seed: 0\nsteps:", "sed: 0\nsteps:", ""),
        (&quickstart, "epochs: 50", "epoch: 50", "/steps/train/with"),
        (
            &quickstart,
            "inputs: { model: train }",
            "input: { model: train }",
            "/steps/export",
        ),
        (
            &quickstart,
            "uses: train-unet",
            "uses: train-unt",
            "/steps/train/uses",
        ),
        (
            &quickstart,
            "{ samples: stage }",
            "{ sample: stage }",
            "/steps/train/inputs",
        ),
        (
            &quickstart,
            "- spacing:",
            "- spacng:",
            "/steps/preprocess/with/transforms/3",
        ),
        (
            &quickstart,
            "axcodes: RAS",
            "axcode: RAS",
            "/steps/preprocess/with/transforms/4",
        ),
        (
            &quickstart,
            "[1.5, 1.5, 2.0]",
            "[1.5, 2.0]",
            "/steps/preprocess/with/transforms/3",
        ),
        (
            &quickstart,
            "val_fraction: 0.25",
            "val_fraction: 1.5",
            "/steps/train/with/val_fraction",
        ),
        (
            &quickstart,
            "gpus: 0",
            "gpus: some",
            "/steps/train/with/gpus",
        ),
        (
            &brats,
            "instance_type: ml.m5.xlarge",
            "instance_typ: ml.m5.xlarge",
            "/targets/aws/steps/export",
        ),
        (
            &brats,
            "fsx: { deployment_type",
            "fxs: { deployment_type",
            "/targets/aws",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let edited = text.replacen(from, to, 1);
        let errors = violations(&v, &yaml_to_json(&edited));
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{pointer}:"))),
            "`{to}`: the schema should reject it at `{pointer}`, it says {errors:?}"
        );
        std::fs::write(dir.path().join("wf.yaml"), &edited).unwrap();
        let out = wf(dir.path(), &["validate", "wf.yaml"]);
        assert_eq!(out.status.code(), Some(2), "`{to}`: {}", stderr(&out));
    }
}

#[test]
fn steps_lists_every_kind_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = wf(dir.path(), &["steps"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let kinds: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let registry = wf_steps::registry();
    assert_eq!(kinds, registry.kinds().collect::<Vec<_>>());
    let train = text.lines().find(|l| l.starts_with("train-unet ")).unwrap();
    assert!(
        train.contains(" Model ") && train.contains("3D UNet"),
        "{train}"
    );
}

#[test]
fn steps_kind_shows_inputs_output_and_params() {
    let dir = tempfile::tempdir().unwrap();
    let out = wf(dir.path(), &["steps", "train-unet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("inputs:\n  samples: Samples\noutput: Model\n"),
        "{text}"
    );
    assert!(
        text.contains("  epochs: integer in 1..=100000, default 10\n      training epochs\n"),
        "{text}"
    );
    assert!(
        text.contains("  gpus: integer ≥ 0 or `all`, default all\n"),
        "{text}"
    );

    let text = stdout(&wf(dir.path(), &["steps", "sharded-transform"]));
    assert!(
        text.contains("  transforms: list of transforms, required\n"),
        "{text}"
    );
    assert!(
        text.contains("  shards: integer ≥ 0, default 0, not in the cache key\n"),
        "{text}"
    );

    let out = wf(dir.path(), &["steps", "train-unt"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: unknown step kind `train-unt`\n  help: did you mean `train-unet`?\n"
    );
    let out = wf(dir.path(), &["steps", "zzz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("help: known kinds: command, "),
        "{}",
        stderr(&out)
    );
}
