//! Helpers for end-to-end tests that drive the real `wf` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn wf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wf"))
}

pub fn wf(dir: &Path, args: &[&str]) -> Output {
    Command::new(wf_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("WF_LOG")
        .output()
        .expect("wf runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

/// `id → status` of a `wf run --json` summary.
pub fn statuses(v: &serde_json::Value) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn status_of(v: &serde_json::Value, id: &str) -> String {
    statuses(v)
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no step {id}"))
}

pub fn output_digest(v: &serde_json::Value, id: &str) -> String {
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .expect("step");
    step["output"]["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_default()
}
