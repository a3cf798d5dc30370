//! Loader benchmark: samples/s delivered by the trainer's loader (mmap, prefetch, online augmentation)
//! in batches of 4x128x128x64, no model. Target: >= 250 samples/s on the 2-core build machine.
//!
//! `cargo bench --bench loader [-- CASES EPOCHS]` (defaults 8 3). Builds a Samples artifact with `wf run`
//! (synthetic full-size 240x240x155 cases → sharded-transform), once with 4 materialized copies per
//! case and once prefix-only (augmentation applied online), then times whole epochs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use wf_trainer::loader::open_samples;
use wf_trainer::train::BatchSource;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let cases: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(8);
    let epochs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let wf = env!("CARGO_BIN_EXE_wf");
    for copies in [4u32, 0] {
        let yaml = format!(
            "steps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: synthetic, cases: {cases}, shape: [240, 240, 155] }} }}\n  prep:\n    uses: sharded-transform\n    inputs: {{ dataset: fetch }}\n    with:\n      copies_per_case: {copies}\n      transforms: [load, ensure-channel-first, convert-labels, {{ spacing: {{ pixdim: [1.5, 1.5, 2.0] }} }}, {{ orientation: {{ axcodes: RAS }} }}, {{ rand-spatial-crop: {{ roi: [128, 128, 64] }} }}, {{ rand-flip: {{ prob: 0.5, axis: 0 }} }}, {{ normalize-intensity: {{ nonzero: true, channel_wise: true }} }}, {{ rand-scale-intensity: {{ factors: 0.1, prob: 0.5 }} }}, {{ rand-shift-intensity: {{ offsets: 0.1, prob: 0.5 }} }}]\n"
        );
        std::fs::write(dir.path().join("wf.yaml"), yaml).unwrap();
        let out = Command::new(wf)
            .args(["run", "wf.yaml", "--json"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = PathBuf::from(v["steps"][1]["output"]["path"].as_str().unwrap());
        let (mut train, _) = open_samples(&samples, 0.0, 4, 0, &candle_core::Device::Cpu).unwrap();
        let mut rates = Vec::new();
        for e in 0..epochs {
            let t = Instant::now();
            train.start_epoch(e).unwrap();
            let mut n = 0;
            while let Some((x, _)) = train.next_batch().unwrap() {
                n += x.dims()[0];
            }
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let mode = if copies == 0 {
            "prefix only, augmented online"
        } else {
            "4 materialized copies per case"
        };
        println!(
            "loader ({mode}): {} samples/epoch, batches of 4x128x128x64: median {:.0} samples/s (min {:.0}, max {:.0}) over {epochs} epochs",
            train.len(),
            rates[epochs / 2],
            rates[0],
            rates[epochs - 1]
        );
    }
}
