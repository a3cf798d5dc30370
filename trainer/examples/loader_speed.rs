//! Loader throughput without the `wf` binary (so it builds with wf-trainer alone): makes Samples
//! artifacts the way sharded-transform does (synthetic 240x240x155 cases → the BraTS chain → one
//! prefix sample, or 4 augmented copies, per case) in DIR once, then times whole epochs in batches of
//! 4 for both modes. `benches/loader.rs` is the end-to-end twin that goes through `wf run`.
//!
//! `cargo run --release -p wf-trainer --example loader_speed -- DIR [CASES] [EPOCHS] [WORKERS] [f32|bf16] [both|copies|online]`
//! (defaults 8 5, the loader's default workers, f32, both). Runs with `wf_trainer::alloc::Recycler`
//! as the global allocator; `WF_RECYCLE=0` switches it off (plain system allocator). Also prints the CPU time per sample
//! (user + system of the whole process), which says what an unloaded machine would give.

use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: wf_trainer::alloc::Recycler = wf_trainer::alloc::Recycler::new();
use std::time::Instant;
use wf_imaging::sample::{PREFIX_COPY, Sample, SampleDtype, write_sample_as};
use wf_imaging::transforms::{CaseSource, Chain};
use wf_imaging::{Rng, sample_seed};
use wf_trainer::loader::{default_workers, open_samples};
use wf_trainer::train::BatchSource;

const CHAIN: &str = r#"["load", "ensure-channel-first", "convert-labels", {"spacing": {"pixdim": [1.5, 1.5, 2.0]}},
 {"orientation": {"axcodes": "RAS"}}, {"rand-spatial-crop": {"roi": [128, 128, 64]}},
 {"rand-flip": {"prob": 0.5, "axis": 0}}, {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
 {"rand-scale-intensity": {"factors": 0.1, "prob": 0.5}}, {"rand-shift-intensity": {"offsets": 0.1, "prob": 0.5}}]"#;

/// Writes a wf-samples-v1 artifact under `dir` unless it is there.
fn artifact(data: &Path, dir: &Path, cases: usize, copies: u32, dtype: SampleDtype) -> PathBuf {
    if dir.join("index.json").is_file() {
        return dir.to_path_buf();
    }
    let transforms: serde_json::Value = serde_json::from_str(CHAIN).unwrap();
    let chain = Chain::from_json(&transforms).unwrap();
    let mut index_cases = Vec::new();
    for i in 0..cases {
        let id = format!("BRATS_{:03}", i + 1);
        let src = CaseSource {
            id: id.clone(),
            image: data.join(format!("imagesTr/{id}.nii.gz")),
            label: Some(data.join(format!("labelsTr/{id}.nii.gz"))),
        };
        let prefix = chain.run_prefix(&src).unwrap();
        let case_dir = dir.join("cases").join(&id);
        std::fs::create_dir_all(&case_dir).unwrap();
        let mut files = Vec::new();
        if copies == 0 {
            let s = Sample::from_case(&prefix, PREFIX_COPY, 0, Default::default()).unwrap();
            write_sample_as(&case_dir.join("prefix.wfs"), &s, dtype).unwrap();
            files.push(format!("cases/{id}/prefix.wfs"));
        }
        for copy in 0..copies {
            let mut rng = Rng::for_sample(0, &id, copy);
            let (case, drawn) = chain.apply_suffix(prefix.clone(), &mut rng).unwrap();
            let s = Sample::from_case(&case, copy, sample_seed(0, &id, copy), drawn).unwrap();
            write_sample_as(&case_dir.join(format!("{copy}.wfs")), &s, dtype).unwrap();
            files.push(format!("cases/{id}/{copy}.wfs"));
        }
        index_cases.push(wf_imaging::samples::CaseFiles { id, files });
    }
    let index = wf_imaging::samples::SamplesIndex::new(
        &chain,
        "msd",
        0,
        copies,
        dtype.as_str(),
        index_cases,
        vec![],
    );
    std::fs::write(dir.join("index.json"), index.to_json()).unwrap();
    dir.to_path_buf()
}

/// One sample's fill, single-threaded, over and over (no I/O, no allocation): the compute floor.
fn kernel(root: &Path, data: &Path, cases: usize, dtype: SampleDtype) {
    use wf_trainer::augment::{FusedSuffix, Plan, uninit};
    let which: &[u32] = match std::env::var("WF_KERNEL").as_deref() {
        Ok("online") => &[0],
        Ok("copies") => &[4],
        _ => &[4, 0],
    };
    for &copies in which {
        let dir = artifact(
            data,
            &root.join(format!("samples-{cases}-{copies}-{dtype}")),
            cases,
            copies,
            dtype,
        );
        let name = if copies == 0 { "prefix.wfs" } else { "0.wfs" };
        let f =
            wf_imaging::sample::SampleFile::open(&dir.join("cases/BRATS_001").join(name)).unwrap();
        let plan = if copies == 0 {
            let transforms: serde_json::Value = serde_json::from_str(CHAIN).unwrap();
            let fused = FusedSuffix::new(&Chain::from_json(&transforms).unwrap()).unwrap();
            // A draw that flips (seed 3 does for this chain).
            let drawn = fused.draw(f.shape(), &mut Rng::new(3));
            fused.plan(f.shape(), &drawn).unwrap()
        } else {
            Plan::identity(f.shape())
        };
        let [c, x, y, z] = plan.out_shape();
        let (mut img, mut lbl) = (vec![0f32; c * x * y * z], vec![0f32; 3 * x * y * z]);
        let mut ms = Vec::new();
        for _ in 0..30 {
            let t = thread_cpu_seconds();
            plan.fill(
                f.image_data(),
                f.labels(),
                uninit(&mut img),
                uninit(&mut lbl),
                3,
            )
            .unwrap();
            ms.push((thread_cpu_seconds() - t) * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "fill ({}, {dtype}): min {:.2} ms, median {:.2} ms CPU per sample (one thread)",
            if copies == 0 {
                "online suffix"
            } else {
                "materialized"
            },
            ms[0],
            ms[15]
        );
    }
}

/// CPU seconds of the calling thread (wall time is meaningless on a shared machine).
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// User + system CPU seconds of this process so far (Linux /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are the 12th and 13th there.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let recycle = std::env::var("WF_RECYCLE").map_or(true, |v| v != "0");
    ALLOC.set_enabled(recycle);
    let root = PathBuf::from(
        args.first()
            .expect("usage: loader_speed DIR [CASES] [EPOCHS] [WORKERS] [f32|bf16]"),
    );
    let cases: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let epochs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let workers: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(default_workers);
    let dtype: SampleDtype = args.get(4).map_or(SampleDtype::F32, |s| s.parse().unwrap());
    let modes: &[u32] = match args.get(5).map(String::as_str) {
        Some("copies") => &[4],
        Some("online") => &[0],
        _ => &[4, 0],
    };
    let data = root.join(format!("synth-{cases}"));
    if !data.join("dataset.json").is_file() {
        wf_imaging::synth::generate_with(
            &data,
            &wf_imaging::synth::SynthOptions {
                cases,
                compress_level: 1,
                ..Default::default()
            },
        )
        .unwrap();
    }
    if args.get(5).map(String::as_str) == Some("kernel") {
        kernel(&root, &data, cases, dtype);
        return;
    }
    for &copies in modes {
        let dir = artifact(
            &data,
            &root.join(format!("samples-{cases}-{copies}-{dtype}")),
            cases,
            copies,
            dtype,
        );
        let (train, _) = open_samples(&dir, 0.0, 4, 0, &candle_core::Device::Cpu).unwrap();
        let mut train = train.with_workers(workers).unwrap();
        let mut rates = Vec::new();
        let (cpu0, mut samples) = (cpu_seconds(), 0);
        for e in 0..epochs {
            let t = Instant::now();
            train.start_epoch(e).unwrap();
            let mut n = 0;
            while let Some((x, _)) = train.next_batch().unwrap() {
                n += x.dims()[0];
            }
            samples += n;
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let mode = if copies == 0 {
            "prefix only, augmented online"
        } else {
            "4 materialized copies per case"
        };
        println!(
            "loader ({mode}, {dtype}, {workers} workers, recycling allocator {recycle}): {} samples/epoch, batches of 4x128x128x64: median {:.0} samples/s (min {:.0}, max {:.0}) over {epochs} epochs; {:.1} ms CPU per sample",
            train.len(),
            rates[epochs / 2],
            rates[0],
            rates[epochs - 1],
            (cpu_seconds() - cpu0) * 1e3 / samples as f64
        );
    }
}
