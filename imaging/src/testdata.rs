//! Test-only access to the MONAI 1.6.1 reference data in `tests/data/monai-1.6.1` (inputs, golden
//! arrays and their manifest; its README says where they come from and how to regenerate them).
//!
//! The data is part of the repository, so a missing file fails the test that needs it, naming the
//! path; nothing here skips.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::transforms::npy;

/// Overrides the data directory, e.g. with the output of `regenerate.py` (same layout).
const OVERRIDE: &str = "WF_MONAI_DATA";

/// Root of the reference data: this crate's `tests/data/monai-1.6.1`, or `$WF_MONAI_DATA` when set.
pub(crate) fn monai_data() -> PathBuf {
    match std::env::var_os(OVERRIDE) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/monai-1.6.1"),
    }
}

/// `rel` under [`monai_data`]; panics naming the path when it is not a file.
pub(crate) fn monai_file(rel: impl AsRef<Path>) -> PathBuf {
    let p = monai_data().join(rel);
    if !p.is_file() {
        let root = match std::env::var_os(OVERRIDE) {
            Some(d) if !d.is_empty() => format!("${OVERRIDE} = {}", d.to_string_lossy()),
            _ => "the crate's tests/data/monai-1.6.1".to_string(),
        };
        panic!(
            "MONAI reference data file missing: {} (data root: {root})",
            p.display()
        );
    }
    p
}

/// `golden/manifest.json`.
pub(crate) fn monai_manifest() -> Value {
    let p = monai_file("golden/manifest.json");
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A golden array by its path relative to the data root (as the manifest records it).
pub(crate) fn golden_array(rel: &str) -> npy::Npy {
    npy::read(&monai_file(rel)).unwrap_or_else(|e| panic!("{e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The manifest's checksums still describe the files: every input's sha256, and the sha256 of every
/// final and random-chain array (over its C-order bytes, so independent of the gzip wrapping). Every
/// golden file the manifest lists exists, and every golden array on disk is listed.
#[test]
fn manifest_records_match_the_files() {
    let m = monai_manifest();
    let mut checked = 0;
    let mut listed = std::collections::BTreeSet::new();
    let check_array = |rec: &Value, checked: &mut usize| {
        let rel = rec["file"].as_str().unwrap();
        let body = npy::read_body(&monai_file(rel)).unwrap_or_else(|e| panic!("{e}"));
        let want = rec["stats"]["sha256_of_array"].as_str().unwrap();
        assert_eq!(
            sha256_hex(&body),
            want,
            "{rel}: array sha256 differs from the manifest"
        );
        *checked += 1;
    };
    for c in m["cases"].as_array().unwrap() {
        for key in ["image", "label"] {
            if let Some(inp) = c["inputs"].get(key) {
                let rel = Path::new("inputs").join(inp["path"].as_str().unwrap());
                let p = monai_file(&rel);
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert_eq!(
                    sha256_hex(&bytes),
                    inp["sha256"].as_str().unwrap(),
                    "{}: file sha256 differs from the manifest",
                    p.display()
                );
                checked += 1;
            }
            if let Some(rec) = c["final"].get(key) {
                check_array(rec, &mut checked);
            }
        }
        for f in c["files"].as_array().unwrap() {
            let rel = f.as_str().unwrap();
            monai_file(rel);
            listed.insert(monai_data().join(rel));
        }
    }
    for rc in m["random_chain"].as_array().unwrap() {
        for key in ["image", "label"] {
            let rec = &rc["outputs"][key];
            check_array(rec, &mut checked);
            listed.insert(monai_data().join(rec["file"].as_str().unwrap()));
        }
    }
    let mut on_disk = vec![];
    files_under(&monai_data().join("golden"), &mut on_disk);
    for p in on_disk {
        if p.file_name().is_some_and(|n| n != "manifest.json") {
            assert!(listed.contains(&p), "{}: not in the manifest", p.display());
        }
    }
    // 24 inputs (16 images, 8 labels), 24 final arrays (16 images, 8 labels), 6 random-chain arrays.
    assert_eq!(checked, 54);
}
