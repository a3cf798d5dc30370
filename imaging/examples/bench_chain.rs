//! Times the seed chain per full-size volume on one core: load (read + gunzip + decode + reorder),
//! the deterministic prefix stage by stage, the random suffix, and writing the sample.
//!
//! `cargo run --release -p wf-imaging --example bench_chain -- [DATA_DIR] [RUNS]`
//! Without DATA_DIR, two 240x240x155x4 synthetic cases are generated in a temp dir first.

use std::path::PathBuf;
use std::time::Instant;

use wf_imaging::msd::{DATASET_JSON, MsdDataset};
use wf_imaging::rng::Rng;
use wf_imaging::sample::{Sample, write_sample};
use wf_imaging::transforms::{CaseSource, Chain};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp = std::env::temp_dir().join(format!("wf-bench-chain-{}", std::process::id()));
    let data = match args.first() {
        Some(d) => PathBuf::from(d),
        None => {
            let t = Instant::now();
            wf_imaging::synth::generate(&tmp, 2, [240, 240, 155], 1, 0)?;
            eprintln!(
                "generated 2 synthetic 240x240x155x4 cases in {:.2} s",
                t.elapsed().as_secs_f64()
            );
            tmp.clone()
        }
    };
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let ds = MsdDataset::read(&data.join(DATASET_JSON))?;
    let chain = Chain::from_json(&serde_json::json!([
        "load", "ensure-channel-first", "convert-labels",
        {"spacing": {"pixdim": [1.5, 1.5, 2.0], "mode": ["bilinear", "nearest"]}},
        {"orientation": {"axcodes": "RAS"}},
        {"rand-spatial-crop": {"roi": [128, 128, 64]}},
        {"rand-flip": {"prob": 0.5, "axis": 0}},
        {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
        {"rand-scale-intensity": {"factors": 0.1, "prob": 0.5}},
        {"rand-shift-intensity": {"offsets": 0.1, "prob": 0.5}}
    ]))?;
    let out = tempfile_dir()?;
    println!("case,run,load_ms,convert_ms,spacing_ms,orientation_ms,suffix_ms,write_ms,total_ms");
    let mut totals = vec![];
    for case in ds.cases()? {
        let id = case.id;
        let src = CaseSource {
            id: id.clone(),
            image: data.join(&case.image),
            label: case.label.map(|l| data.join(l)),
        };
        for run in 0..runs {
            let t0 = Instant::now();
            let wf_imaging::transforms::TransformSpec::Load(load) = &chain.specs()[0] else {
                unreachable!()
            };
            let mut case = load.load(&src)?;
            let t1 = Instant::now();
            let mut stage = vec![];
            for s in &chain.prefix()[1..] {
                let t = Instant::now();
                case = s.apply(case)?;
                stage.push((s.name(), t.elapsed().as_secs_f64() * 1e3));
            }
            let t2 = Instant::now();
            let mut rng = Rng::for_sample(0, &id, run as u32);
            let (sample_case, drawn) = chain.apply_suffix(case, &mut rng)?;
            let t3 = Instant::now();
            write_sample(
                &out.join(format!("{id}_{run}.rkyv")),
                &Sample::from_case(&sample_case, run as u32, 0, drawn)?,
            )?;
            let t4 = Instant::now();
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            let get = |n: &str| {
                stage
                    .iter()
                    .filter(|(s, _)| *s == n)
                    .map(|(_, v)| v)
                    .sum::<f64>()
            };
            let total = ms(t0, t4);
            totals.push(total);
            println!(
                "{id},{run},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1}",
                ms(t0, t1),
                get("convert-labels") + get("ensure-channel-first"),
                get("spacing"),
                get("orientation"),
                ms(t2, t3),
                ms(t3, t4),
                total
            );
            let _ = t2;
        }
    }
    totals.sort_by(f64::total_cmp);
    if !totals.is_empty() {
        println!(
            "# per volume: min {:.1} ms, median {:.1} ms over {} runs",
            totals[0],
            totals[totals.len() / 2],
            totals.len()
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("wf-bench-out-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
