//! Loader benchmark: samples/s delivered by the trainer's loader (mmap, worker pool, prefetch, online
//! augmentation) in batches of 4x128x128x64, no model. Target: >= 250 samples/s on the 2-core build
//! machine.
//!
//! `cargo bench --bench loader [-- CASES EPOCHS]` (defaults 8 10; `WF_BIN` overrides the wf binary). Builds a Samples artifact with `wf run`
//! (synthetic full-size 240x240x155 cases → sharded-transform), once with 4 materialized copies per
//! case and once prefix-only (augmentation applied online), rewrites each with bf16 images, then times
//! whole epochs for every (artifact, dtype) with the system allocator and with
//! `wf_trainer::alloc::Recycler` (installed here; `set_enabled(false)` makes it the system allocator).
//! Besides wall-clock samples/s it prints the process CPU time per sample, which on a shared machine
//! says what the loader would do with the cores to itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use wf_imaging::sample::{Sample, SampleDtype, SampleFile, write_sample_as};
use wf_trainer::alloc::Recycler;
use wf_trainer::loader::open_samples;
use wf_trainer::train::BatchSource;

#[global_allocator]
static ALLOC: Recycler = Recycler::new();

/// User + system CPU seconds of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A copy of a Samples artifact with every image stored as bf16.
fn to_bf16(src: &Path, dst: &Path) -> PathBuf {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("index.json")).unwrap()).unwrap();
    for case in index["cases"].as_array().unwrap() {
        for f in case["files"].as_array().unwrap() {
            let rel = f.as_str().unwrap();
            let s = SampleFile::open(&src.join(rel)).unwrap();
            let shape = s.shape().map(|v| v as u32);
            let sample = Sample {
                format_version: wf_imaging::sample::SAMPLE_FORMAT_VERSION,
                case_id: s.case_id().to_string(),
                copy: s.copy(),
                seed: s.seed(),
                shape,
                affine: s.affine(),
                image: s.image().into_owned(),
                labels: s.labels().to_vec(),
                drawn: s.drawn(),
            };
            let out = dst.join(rel);
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            write_sample_as(&out, &sample, SampleDtype::Bf16).unwrap();
        }
    }
    std::fs::write(dst.join("index.json"), index.to_string()).unwrap();
    dst.to_path_buf()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let cases: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(8);
    let epochs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    // WF_BIN: a wf binary elsewhere (the GPU machine runs this bench from a carried bundle).
    let wf = std::env::var("WF_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wf").to_string());
    for copies in [4u32, 0] {
        let yaml = format!(
            "steps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: synthetic, cases: {cases}, shape: [240, 240, 155] }} }}\n  prep:\n    uses: sharded-transform\n    inputs: {{ dataset: fetch }}\n    with:\n      copies_per_case: {copies}\n      transforms: [load, ensure-channel-first, convert-labels, {{ spacing: {{ pixdim: [1.5, 1.5, 2.0] }} }}, {{ orientation: {{ axcodes: RAS }} }}, {{ rand-spatial-crop: {{ roi: [128, 128, 64] }} }}, {{ rand-flip: {{ prob: 0.5, axis: 0 }} }}, {{ normalize-intensity: {{ nonzero: true, channel_wise: true }} }}, {{ rand-scale-intensity: {{ factors: 0.1, prob: 0.5 }} }}, {{ rand-shift-intensity: {{ offsets: 0.1, prob: 0.5 }} }}]\n"
        );
        std::fs::write(dir.path().join("wf.yaml"), yaml).unwrap();
        let out = Command::new(&wf)
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
        let f32_samples = PathBuf::from(v["steps"][1]["output"]["path"].as_str().unwrap());
        let bf16_samples = to_bf16(&f32_samples, &dir.path().join(format!("bf16-{copies}")));
        let mode = if copies == 0 {
            "prefix only, augmented online"
        } else {
            "4 materialized copies per case"
        };
        for (dtype, samples) in [("f32", &f32_samples), ("bf16", &bf16_samples)] {
            for recycle in [false, true] {
                ALLOC.set_enabled(recycle);
                let (mut train, _) =
                    open_samples(samples, 0.0, 4, 0, &candle_core::Device::Cpu).unwrap();
                let mut rates = Vec::new();
                let (cpu0, mut total) = (cpu_seconds(), 0);
                for e in 0..epochs {
                    let t = Instant::now();
                    train.start_epoch(e).unwrap();
                    let mut n = 0;
                    while let Some((x, _)) = train.next_batch().unwrap() {
                        n += x.dims()[0];
                    }
                    total += n;
                    rates.push(n as f64 / t.elapsed().as_secs_f64());
                }
                let cpu_ms = (cpu_seconds() - cpu0) * 1e3 / total as f64;
                rates.sort_by(f64::total_cmp);
                println!(
                    "loader ({mode}, {dtype}, {} allocator, {} workers): {} samples/epoch, batches of 4x128x128x64: median {:.0} samples/s (min {:.0}, max {:.0}) over {epochs} epochs; {cpu_ms:.1} ms CPU per sample",
                    if recycle { "recycling" } else { "system" },
                    train.workers(),
                    train.len(),
                    rates[epochs / 2],
                    rates[0],
                    rates[epochs - 1]
                );
            }
        }
    }
}
