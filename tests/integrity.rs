//! End-to-end tests of cache integrity under mishaps: names that cannot round-trip are refused, and
//! a declared directory holding the cache does not hash it.

mod common;

use common::*;

#[test]
fn an_output_name_with_a_carriage_return_is_refused_at_commit() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // What a script saved with CRLF line endings does.
    std::fs::write(
        dir.join("mk.sh"),
        "printf x > \"$WF_OUT/out.txt$(printf '\\r')\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        "steps:\n  crlf: { uses: command, with: { run: \"sh mk.sh\", files: [mk.sh] } }\n",
    )
    .unwrap();
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(status_of(&v, "crlf"), "failed");
    let error = v["steps"][0]["error"].as_str().unwrap();
    assert!(error.contains("`out.txt\\r`"), "{error}");
    let verify = wf(dir, &["cache", "verify", "--workflow", "wf.yaml"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn declaring_the_workflow_directory_does_not_hash_the_cache_inside_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(dir.join("data.txt"), "1\n").unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        "steps:\n  a: { uses: command, with: { run: \"cat data.txt > $WF_OUT/x\", files: [\".\"] } }\n",
    )
    .unwrap();
    let first = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&first, "a"), "ran", "{first}");
    let second = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&second, "a"), "cached", "{second}");
    // A file of the workflow directory still counts.
    std::fs::write(dir.join("data.txt"), "2\n").unwrap();
    let third = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&third, "a"), "ran", "{third}");
}
