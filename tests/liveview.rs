//! What a run shows: the live view on a terminal (the real `wf run` inside a tmux pane, captured)
//! keeps every epoch line and ends with the summary and the export's path; plain output (no
//! terminal) says the same in lines; `--json` keeps its document.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A quickstart in miniature: 4 synthetic cases of 48x48x32, crops of 32x32x16 (divisible by the
/// strides' product, 4), 2 epochs.
fn workflow(dir: &Path) {
    std::fs::write(
        dir.join("wf.yaml"),
        r#"name: tiny
seed: 3
steps:
  fetch:
    uses: fetch-dataset
    with: { source: synthetic, cases: 4, shape: [48, 48, 32], seed: 1 }
  preprocess:
    uses: sharded-transform
    inputs: { dataset: fetch }
    with:
      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - orientation: { axcodes: RAS }
        - rand-spatial-crop: { roi: [32, 32, 16] }
        - normalize-intensity: { nonzero: true, channel_wise: true }
      copies_per_case: 2
  train:
    uses: train-unet
    inputs: { samples: preprocess }
    with: { epochs: 2, batch_size: 2, lr: 1.0e-3, val_fraction: 0.25, gpus: 0,
            channels: [4, 8, 16], strides: [2, 2], num_res_units: 1 }
  export: { uses: export-checkpoint, inputs: { model: train } }
"#,
    )
    .unwrap();
}

/// A tmux server of this test's own (its socket in `dir`), ended when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path) -> Option<Tmux> {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmux {
            socket: dir.join("tmux.sock"),
        })
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The path printed under "outputs (final steps and exports):" for `step`.
fn summary_output(text: &str, step: &str) -> Option<PathBuf> {
    let rest = text.split("outputs (final steps and exports):").nth(1)?;
    rest.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(step))
            .then(|| words.next().map(PathBuf::from))
            .flatten()
    })
}

/// The run's persistent lines and summary, checked the same way for both forms of output.
fn assert_epochs_and_summary(text: &str) {
    for epoch in ["epoch 1/2: loss", "epoch 2/2: loss"] {
        let line = text
            .lines()
            .find(|l| l.contains(epoch))
            .unwrap_or_else(|| panic!("no `{epoch}` line:\n{text}"));
        assert!(line.contains("val Dice mean"), "{line}");
    }
    let summary = text
        .split("\n  step ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary table:\n{text}"));
    let header: Vec<&str> = summary.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["status", "time", "cache"], "{summary}");
    for step in ["fetch", "preprocess", "train", "export"] {
        let row = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(step))
            .unwrap_or_else(|| panic!("no row for {step}:\n{summary}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "ok", "{row}");
        assert!(cols[2].ends_with('s'), "{row}");
        assert_eq!(cols[3], "ran", "{row}");
    }
    // The epoch lines come first; the summary is the end.
    let last_epoch = text.rfind("epoch 2/2: loss").unwrap();
    assert!(last_epoch < text.rfind("\n  step ").unwrap());
    let export = summary_output(summary, "export")
        .unwrap_or_else(|| panic!("no export path in the summary:\n{summary}"));
    assert!(export.join("model.safetensors").is_file(), "{export:?}");
    assert!(
        summary.contains("validation Dice 0.") && summary.contains("epoch 2"),
        "{summary}"
    );
    assert!(
        summary
            .lines()
            .last()
            .unwrap()
            .starts_with("4 ran, 0 cached, 0 failed, 0 skipped in "),
        "{summary}"
    );
}

#[test]
fn a_terminal_keeps_the_epoch_lines_and_ends_with_the_summary() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(tmux) = Tmux::start(dir) else {
        println!("SKIP a_terminal_keeps_the_epoch_lines_and_ends_with_the_summary: tmux not found");
        return;
    };
    workflow(dir);
    let command = format!(
        "cd {} && env -u WF_PLAIN -u WF_LOG {} run wf.yaml; echo \"wf exited $?\"; sleep 600",
        sh_quote(dir),
        sh_quote(&wf_bin())
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "run",
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ]);
    let capture = || tmux.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "run"]);
    let t0 = Instant::now();
    let text = loop {
        let text = capture();
        if text.contains("wf exited ") {
            break text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the run did not end:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = text[..text.rfind("wf exited ").unwrap()].to_string();
    assert!(
        capture().contains("wf exited 0"),
        "the run failed:\n{}",
        capture()
    );
    // The live view was on: plain output's `start` lines are not there.
    assert!(!text.contains("  start    "), "plain output:\n{text}");
    assert_epochs_and_summary(&text);
}

#[test]
fn plain_output_says_the_same_and_json_keeps_its_document() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    workflow(dir);
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("  start    train"), "{text}");
    assert_epochs_and_summary(&text);

    // The document: one object with `steps`, each step with the keys it always had.
    let v = json(&out);
    let keys = |o: &serde_json::Value| {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&v), ["steps"]);
    for step in v["steps"].as_array().unwrap() {
        assert_eq!(
            keys(step),
            ["id", "key", "kind", "log", "output", "seconds", "status"],
            "{step}"
        );
        assert_eq!(keys(&step["output"]), ["digest", "path"]);
    }
    let export = PathBuf::from(v["steps"][3]["output"]["path"].as_str().unwrap());
    assert_eq!(summary_output(&text, "export"), Some(export));

    // A cached run: no log, the same summary form.
    let again = wf(dir, &["run", "wf.yaml", "--json"]);
    let v = json(&again);
    for step in v["steps"].as_array().unwrap() {
        assert_eq!(
            keys(step),
            ["id", "key", "kind", "output", "seconds", "status"],
            "{step}"
        );
    }
    let text = stderr(&again);
    assert!(text.contains("4 cached, 0 failed, 0 skipped in "), "{text}");
    assert!(summary_output(&text, "export").is_some(), "{text}");
}
