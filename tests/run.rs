//! End-to-end tests of `wf run`, `plan`, `validate`, `graph` and `cache` with the `command` step.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Four steps, a diamond. Each command appends its id to runs.log (outside the cache) so the test can
/// tell which commands really executed.
fn diamond(dir: &Path, b_cmd: &str, c_cmd: &str) {
    std::fs::write(
        dir.join("make.py"),
        "print('\\n'.join(str(x) for x in [5, 3, 9, 1]))\n",
    )
    .unwrap();
    let yaml = format!(
        r#"name: diamond
steps:
  a: {{ uses: command, with: {{ run: "echo a >> runs.log; python3 make.py > $WF_OUT/data.txt", files: [make.py] }} }}
  b: {{ uses: command, inputs: {{ src: a }}, with: {{ run: "echo b >> runs.log; {b_cmd}" }} }}
  c: {{ uses: command, inputs: {{ src: a }}, with: {{ run: "echo c >> runs.log; {c_cmd}" }} }}
  d: {{ uses: command, inputs: {{ s: b, n: c }}, with: {{ run: "echo d >> runs.log; cat $WF_IN_s/sorted.txt $WF_IN_n/count.txt > $WF_OUT/all.txt" }} }}
"#
    );
    std::fs::write(dir.join("wf.yaml"), yaml).unwrap();
}

const SORT: &str = "sort -n $WF_IN_src/data.txt > $WF_OUT/sorted.txt";
const COUNT: &str = "wc -l < $WF_IN_src/data.txt > $WF_OUT/count.txt";

fn runs(dir: &Path) -> Vec<String> {
    let log = read(dir.join("runs.log"));
    std::fs::remove_file(dir.join("runs.log")).ok();
    log.lines().map(str::to_string).collect()
}

#[test]
fn caches_reruns_only_what_changed_and_stops_identical_cascades() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    diamond(dir, SORT, COUNT);

    let first = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let v = json(&first);
    assert!(statuses(&v).iter().all(|(_, s)| s == "ran"), "{v}");
    let mut ran = runs(dir);
    ran.sort();
    assert_eq!(ran, ["a", "b", "c", "d"]);
    let all = Path::new(v["steps"][3]["output"]["path"].as_str().unwrap()).join("all.txt");
    assert_eq!(read(&all), "1\n3\n5\n9\n4\n");

    // Second run: nothing executes, everything is cached.
    let second = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(second.status.success());
    let v2 = json(&second);
    assert!(statuses(&v2).iter().all(|(_, s)| s == "cached"), "{v2}");
    assert!(runs(dir).is_empty());
    for id in ["a", "b", "c", "d"] {
        assert_eq!(output_digest(&v, id), output_digest(&v2, id));
    }
    assert_eq!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["key"])
            .collect::<Vec<_>>(),
        v2["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["key"])
            .collect::<Vec<_>>()
    );

    // Editing c's command reruns c and its dependent d; a and b stay cached.
    diamond(
        dir,
        SORT,
        "grep -c . $WF_IN_src/data.txt > $WF_OUT/count.txt; echo lines >> $WF_OUT/count.txt",
    );
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    let c_plan = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "c")
        .unwrap();
    assert_eq!(c_plan["cache"], "miss");
    // The old and new command are too long to read in a line: the param is named.
    assert_eq!(c_plan["reason"], "params changed: `run`");
    let v3 = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(
        statuses(&v3),
        [
            ("a".into(), "cached".into()),
            ("b".into(), "cached".into()),
            ("c".into(), "ran".into()),
            ("d".into(), "ran".into())
        ]
    );
    assert_eq!(runs(dir), ["c", "d"]);

    // Rewriting b so it produces the same bytes reruns b only: d's inputs are unchanged (early cutoff).
    diamond(
        dir,
        &format!("true; {SORT}"),
        "grep -c . $WF_IN_src/data.txt > $WF_OUT/count.txt; echo lines >> $WF_OUT/count.txt",
    );
    let v4 = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&v4, "b"), "ran");
    assert_eq!(status_of(&v4, "d"), "cached");
    assert_eq!(output_digest(&v4, "b"), output_digest(&v, "b"));
    assert_eq!(runs(dir), ["b"]);
}

#[test]
fn editing_a_declared_file_reruns_and_plan_names_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    diamond(dir, SORT, COUNT);
    assert!(wf(dir, &["run", "wf.yaml"]).status.success());
    runs(dir);
    std::fs::write(
        dir.join("make.py"),
        "print('\\n'.join(str(x) for x in [5, 3, 9, 1, 7]))\n",
    )
    .unwrap();

    let plan = wf(dir, &["plan", "wf.yaml"]);
    let text = stdout(&plan);
    let line_a = text.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(
        line_a.contains("miss") && line_a.contains("file `make.py` changed"),
        "{text}"
    );

    let v = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert!(statuses(&v).iter().all(|(_, s)| s == "ran"), "{v}");
    // A file in a declared directory counts too.
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/x.csv"), "1,2\n").unwrap();
    let yaml = read(dir.join("wf.yaml")).replace("files: [make.py]", "files: [make.py, data/]");
    std::fs::write(dir.join("wf.yaml"), yaml).unwrap();
    assert!(wf(dir, &["run", "wf.yaml"]).status.success());
    std::fs::write(dir.join("data/x.csv"), "1,3\n").unwrap();
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    assert_eq!(
        plan["steps"][0]["reason"], "file `data/x.csv` changed",
        "{plan}"
    );
}

#[test]
fn a_failed_step_fails_its_dependents_and_exits_1() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(
        dir.join("wf.yaml"),
        r#"steps:
  a: { uses: command, with: { run: "echo ok > $WF_OUT/a" } }
  b: { uses: command, inputs: { x: a }, with: { run: "echo first line >&2; echo boom: disk on fire >&2; exit 3" } }
  c: { uses: command, inputs: { x: b }, with: { run: "echo never > $WF_OUT/c" } }
"#,
    )
    .unwrap();
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(
        statuses(&v),
        [
            ("a".into(), "ran".into()),
            ("b".into(), "failed".into()),
            ("c".into(), "skipped".into())
        ]
    );
    let err = stderr(&out);
    assert!(err.contains("command exited with status 3"), "{err}");
    assert!(
        err.contains("boom: disk on fire"),
        "stderr tail is shown: {err}"
    );
    assert_eq!(v["steps"][2]["error"], "input `b` did not complete");
    // The failure was not cached: the next run tries b again (and a is cached).
    let again = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&again, "a"), "cached");
    assert_eq!(status_of(&again, "b"), "failed");
}

#[test]
fn independent_steps_run_concurrently() {
    // x and y each wait (up to 20 s) for the other's marker: they can only both finish if they overlap.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let wait = |me: &str, other: &str| {
        format!(
            "touch {me}.up; i=0; while [ ! -e {other}.up ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; test -e {other}.up && echo {me} > $WF_OUT/{me}"
        )
    };
    std::fs::write(
        dir.join("wf.yaml"),
        format!("steps:\n  x: {{ uses: command, with: {{ run: \"{}\" }} }}\n  y: {{ uses: command, with: {{ run: \"{}\" }} }}\n", wait("x", "y"), wait("y", "x")),
    )
    .unwrap();
    let out = wf(dir, &["run", "wf.yaml", "--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn force_reruns_a_cached_step() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    diamond(dir, SORT, COUNT);
    assert!(wf(dir, &["run", "wf.yaml"]).status.success());
    runs(dir);
    let v = json(&wf(dir, &["run", "wf.yaml", "--json", "--force", "b"]));
    assert_eq!(status_of(&v, "b"), "ran");
    assert_eq!(status_of(&v, "d"), "cached", "same bytes: no cascade");
    assert_eq!(runs(dir), ["b"]);
    let bad = wf(dir, &["run", "wf.yaml", "--force", "bb"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("did you mean `b`?"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn sigkill_mid_step_leaves_no_partial_entry_and_the_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(
        dir.join("wf.yaml"),
        r#"name: killme
steps:
  a: { uses: command, with: { run: "seq 1 1000 > $WF_OUT/numbers" } }
  b: { uses: command, inputs: { n: a }, with: { run: "head -c 100000 /dev/zero > $WF_OUT/partial; if [ -e slow ]; then touch started; sleep 30; fi; sort -rn $WF_IN_n/numbers > $WF_OUT/sorted; rm $WF_OUT/partial" } }
  c: { uses: command, inputs: { s: b }, with: { run: "head -3 $WF_IN_s/sorted > $WF_OUT/top" } }
"#,
    )
    .unwrap();
    std::fs::write(dir.join("slow"), "").unwrap();
    let mut child = std::process::Command::new(wf_bin())
        .args(["run", "wf.yaml"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.join("started").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "step b never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::remove_file(dir.join("slow")).unwrap();

    // The killed step left staging garbage only; verify finds nothing wrong.
    let verify = wf(dir, &["cache", "verify", "--workflow", "wf.yaml"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let v = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(
        statuses(&v),
        [
            ("a".into(), "cached".into()),
            ("b".into(), "ran".into()),
            ("c".into(), "ran".into())
        ]
    );
    let top = Path::new(v["steps"][2]["output"]["path"].as_str().unwrap()).join("top");
    assert_eq!(read(top), "1000\n999\n998\n");

    // Identical to a run that was never interrupted.
    let clean = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("wf.yaml"), clean.path().join("wf.yaml")).unwrap();
    let v_clean = json(&wf(clean.path(), &["run", "wf.yaml", "--json"]));
    for id in ["a", "b", "c"] {
        assert_eq!(output_digest(&v, id), output_digest(&v_clean, id));
        assert_eq!(
            v["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id)
                .unwrap()["key"],
            v_clean["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id)
                .unwrap()["key"]
        );
    }
    // gc cleans the killed run's staging directory.
    let gc = wf(dir, &["cache", "gc", "--workflow", "wf.yaml"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert!(
        stderr(&gc).contains("1 staging directory"),
        "{}",
        stderr(&gc)
    );
    assert!(
        wf(dir, &["cache", "verify", "--workflow", "wf.yaml"])
            .status
            .success()
    );
}

#[test]
fn two_concurrent_runs_on_one_cache_agree_and_compute_each_step_once() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(
        dir.join("wf.yaml"),
        r#"steps:
  a: { uses: command, with: { run: "echo a >> runs.log; sleep 0.5; date +%N > $WF_OUT/nonce" } }
  b: { uses: command, inputs: { x: a }, with: { run: "echo b >> runs.log; sleep 0.3; cat $WF_IN_x/nonce > $WF_OUT/copy" } }
  c: { uses: command, with: { run: "echo c >> runs.log; sleep 0.2; echo c > $WF_OUT/c" } }
"#,
    )
    .unwrap();
    let spawn = || {
        std::process::Command::new(wf_bin())
            .args(["run", "wf.yaml", "--json"])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    assert!(o1.status.success(), "{}", stderr(&o1));
    assert!(o2.status.success(), "{}", stderr(&o2));
    let (v1, v2) = (json(&o1), json(&o2));
    for id in ["a", "b", "c"] {
        // a's output is a nonce: identical digests prove both runs use the one committed result.
        assert_eq!(output_digest(&v1, id), output_digest(&v2, id), "step {id}");
    }
    let mut log: Vec<String> = read(dir.join("runs.log"))
        .lines()
        .map(str::to_string)
        .collect();
    log.sort();
    assert_eq!(log, ["a", "b", "c"], "each step computed exactly once");
}

#[test]
fn invalid_input_exits_2_with_positions() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/command_invalid.yaml"
        ),
        dir.join("bad.yaml"),
    )
    .unwrap();
    for cmd in ["validate", "plan", "run", "graph"] {
        let out = wf(dir, &[cmd, "bad.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        if cmd == "validate" {
            insta::assert_snapshot!("command_invalid", stderr(&out));
        }
    }
    let missing = wf(dir, &["validate", "nope.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot read workflow nope.yaml"));
    let usage = wf(dir, &["run"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "usage errors are invalid input"
    );
}

#[test]
fn graph_and_plan_outputs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    diamond(dir, SORT, COUNT);
    let dot = stdout(&wf(dir, &["graph", "wf.yaml", "--format", "dot"]));
    assert!(dot.starts_with("digraph \"diamond\""), "{dot}");
    assert!(dot.contains("\"b\" -> \"d\" [label=\"s\"]"), "{dot}");
    let mermaid = stdout(&wf(dir, &["graph", "wf.yaml"]));
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("s0 -->|src| s1"),
        "{mermaid}"
    );

    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps[0]["cache"], "miss");
    assert_eq!(steps[0]["reason"], "never run");
    assert_eq!(steps[0]["key"].as_str().unwrap().len(), 64);
    // Downstream of a miss a step's key waits for its inputs: the plan says after which steps,
    // not `miss` (whether it will hit is not known yet).
    assert!(steps[3]["key"].is_null());
    assert_eq!(steps[3]["cache"], "after");
    assert_eq!(steps[3]["after"], serde_json::json!(["b", "c"]));
    assert_eq!(steps[1]["after"], serde_json::json!(["a"]));
    for s in steps {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["cache", "id", "key", "kind", "reason"] {
            assert!(keys.contains(&k), "{s}");
        }
    }
    let text = stdout(&wf(dir, &["plan", "wf.yaml"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains(" miss  never run") && !lines[1].contains("miss"),
        "{text}"
    );
    assert!(
        lines[1].contains(" after a  its key depends on that step's output"),
        "{text}"
    );
    assert!(
        lines[3].contains(" after b, c  its key depends on those steps' outputs"),
        "{text}"
    );
    // After a run the plan is all hits, with the same keys the run reported.
    let run = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    for (p, r) in plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .zip(run["steps"].as_array().unwrap())
    {
        assert_eq!(p["cache"], "hit");
        assert_eq!(p["key"], r["key"]);
    }
    let validate = wf(dir, &["validate", "wf.yaml"]);
    assert_eq!(stdout(&validate), "wf.yaml: ok (4 steps)\n");
}

#[test]
fn cache_dir_option_and_workflow_key() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    diamond(dir, SORT, COUNT);
    assert!(
        wf(dir, &["run", "wf.yaml", "--cache", "elsewhere"])
            .status
            .success()
    );
    assert!(dir.join("elsewhere/entries").is_dir());
    assert!(!dir.join(".wf").exists());
    let ls = wf(dir, &["cache", "ls", "--cache", "elsewhere"]);
    assert_eq!(stdout(&ls).lines().count(), 4, "{}", stdout(&ls));
    // `cache:` in the file is relative to the file.
    std::fs::create_dir(dir.join("sub")).unwrap();
    let yaml = read(dir.join("wf.yaml"))
        .replace("name: diamond\n", "name: diamond\ncache: ../elsewhere\n");
    std::fs::write(dir.join("sub/wf.yaml"), yaml).unwrap();
    std::fs::copy(dir.join("make.py"), dir.join("sub/make.py")).unwrap();
    let v = json(&wf(dir, &["run", "sub/wf.yaml", "--json"]));
    assert!(
        statuses(&v).iter().all(|(_, s)| s == "cached"),
        "same content, same keys, same cache: {v}"
    );
}

#[test]
fn invalid_arguments_exit_2_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // `synth --shape` below the smallest volume it writes.
    let out = wf(
        dir,
        &["synth", "--out", "data", "--cases", "1", "--shape", "1,1,1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--shape"), "{}", stderr(&out));
    assert!(!dir.join("data").exists(), "nothing is written");

    let out = wf(
        dir,
        &["synth", "--out", "data", "--cases", "1", "--shape", "8,8,8"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let image = "data/imagesTr/BRATS_001.nii.gz";
    std::fs::write(
        dir.join("t.yaml"),
        "transforms: [load, ensure-channel-first]\n",
    )
    .unwrap();

    // `transform --out` names the directory it writes; an existing regular file is refused, untouched.
    std::fs::write(dir.join("taken"), "mine").unwrap();
    let out = wf(
        dir,
        &[
            "transform",
            "--transforms",
            "t.yaml",
            "--image",
            image,
            "--out",
            "taken",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--out taken: is a file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(dir.join("taken")), "mine");

    // `predict --out` names the file it writes; a directory (even one named like NIfTI) is refused
    // before the model is read.
    std::fs::create_dir(dir.join("segs.nii.gz")).unwrap();
    let out = wf(
        dir,
        &[
            "predict",
            "--model",
            "no-model",
            "--image",
            image,
            "--out",
            "segs.nii.gz",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--out segs.nii.gz: is a directory"),
        "{}",
        stderr(&out)
    );
}
