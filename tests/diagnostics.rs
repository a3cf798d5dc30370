//! Diagnostics of the `wf` binary for invalid files that need the real step kinds and transforms
//! (the engine's own fixtures use test steps): one file in tests/fixtures/invalid/, one snapshot
//! of stderr each.

mod common;

use common::{stderr, wf};
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid");

/// Runs `wf ARGS` in a directory holding the fixture `name` as `name.yaml`: exit 2, stderr.
fn invalid(name: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("{name}.yaml");
    std::fs::copy(Path::new(FIXTURES).join(&file), dir.path().join(&file)).unwrap();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "FILE" { file.as_str() } else { *a })
        .collect();
    let out = wf(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn transform_fields() {
    insta::assert_snapshot!(invalid("transform_fields", &["validate", "FILE"]));
}

#[test]
fn transforms_file() {
    let args = [
        "transform",
        "--transforms",
        "FILE",
        "--image",
        "none.nii.gz",
        "--out",
        "out",
    ];
    insta::assert_snapshot!(invalid("transforms_file", &args));
}

#[test]
fn every_fixture_is_tested() {
    let source = std::fs::read_to_string(file!()).unwrap();
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap();
        assert!(
            source.contains(&format!("invalid(\"{name}\"")),
            "fixture {name}.yaml has no test"
        );
    }
}
