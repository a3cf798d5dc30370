//! Dice and Hausdorff distances against MONAI 1.6.1's on the fixture masks in `tests/data/metrics`
//! (`regenerate.py` there makes them). Dice agrees within 1e-6 (MONAI computes in float32) and the
//! distances within 1e-3 mm (MONAI stores them as float32 before taking the percentile); NaN and
//! infinity must match exactly.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{dice, hausdorff};
use crate::transforms::npy;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/metrics")
}

/// A number of expected.json, where NaN and infinity are the strings "nan", "inf".
fn number(v: &Value, what: &str) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        other => panic!("{what}: not a number: {other}"),
    }
}

fn agrees(got: f64, want: f64, tol: f64) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= tol
}

#[test]
fn every_fixture_matches_monai() {
    let dir = data_dir();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(expected["monai"], "1.6.1");
    let cases = expected["cases"].as_object().unwrap();
    assert!(cases.len() >= 10, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, want) in cases {
        let arr = npy::read(&dir.join(format!("{name}.npy.gz"))).unwrap();
        let [2, x, y, z] = arr.shape[..] else {
            panic!("{name}: shape {:?}", arr.shape)
        };
        let shape = [x, y, z];
        let n = x * y * z;
        let pred: Vec<bool> = arr.data[..n].iter().map(|&v| v != 0.0).collect();
        let label: Vec<bool> = arr.data[n..].iter().map(|&v| v != 0.0).collect();
        let sp: Vec<f64> = want["spacing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let spacing = [sp[0], sp[1], sp[2]];
        let got = [
            ("dice", dice(&pred, &label).unwrap(), 1e-6),
            (
                "hd95",
                hausdorff(&pred, &label, shape, spacing, Some(95.0)).unwrap(),
                1e-3,
            ),
            (
                "hd",
                hausdorff(&pred, &label, shape, spacing, None).unwrap(),
                1e-3,
            ),
        ];
        for (what, g, tol) in got {
            let w = number(&want[what], what);
            if !agrees(g, w, tol) {
                failures.push(format!("{name} {what}: ours {g}, MONAI {w}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
