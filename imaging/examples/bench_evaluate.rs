//! The scoring half of an evaluation, side by side with MONAI: for each (segmentation, label) pair
//! of NIfTI files in the MSD convention (0 background, 1 edema, 2 non-enhancing, 3 enhancing), Dice
//! and HD95 (mm, the files' spacing) of TC, WT and ET with our metrics, then with MONAI 1.6.1's
//! `DiceMetric` and `HausdorffDistanceMetric(percentile=95)` on the same files in the same run
//! (`bench_evaluate_monai.py` beside this file). The clock covers the metrics on both sides (the
//! masks are in memory first); reading the files is timed apart on our side.
//!
//! `cargo run --release -p wf-imaging --example bench_evaluate -- PYTHON SEG LABEL [SEG LABEL ...]`

use std::time::Instant;

use wf_imaging::metrics;
use wf_imaging::nifti::read_nifti;
use wf_imaging::transforms::{ET, LabelConvention, TC, WT};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args.len().is_multiple_of(2) {
        eprintln!("usage: bench_evaluate PYTHON SEG LABEL [SEG LABEL ...]");
        std::process::exit(2);
    }
    let python = &args[0];
    let pairs: Vec<(&String, &String)> = args[1..].chunks(2).map(|p| (&p[0], &p[1])).collect();
    println!(
        "{} case(s), {} threads",
        pairs.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut ours = Vec::new();
    for (seg, label) in &pairs {
        let t0 = Instant::now();
        let (s, l) = (
            read_nifti(seg.as_ref()).unwrap(),
            read_nifti(label.as_ref()).unwrap(),
        );
        let read = t0.elapsed().as_secs_f64();
        assert_eq!(s.dims, l.dims, "{seg} and {label} differ in shape");
        // NIfTI order (X fastest) read as a C-order (Z, Y, X) volume, spacing reversed to match.
        let [nx, ny, nz] = [s.dims[0], s.dims[1], s.dims[2]];
        let col = |j: usize| (0..3).map(|i| s.affine[i][j].powi(2)).sum::<f64>().sqrt();
        let spacing = [col(2), col(1), col(0)];
        let bits = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .map(|&x| LabelConvention::Msd.regions(x).expect("an MSD label value"))
                .collect()
        };
        let (sb, lb) = (bits(&s.data), bits(&l.data));
        let t1 = Instant::now();
        let mut line = Vec::new();
        for (name, bit) in [("TC", TC), ("WT", WT), ("ET", ET)] {
            let p: Vec<bool> = sb.iter().map(|v| v & bit != 0).collect();
            let q: Vec<bool> = lb.iter().map(|v| v & bit != 0).collect();
            let r = metrics::score(&p, &q, [nz, ny, nx], spacing).unwrap();
            line.push(format!("{name} {:.4}/{:.3}", r.dice, r.hd95));
        }
        let secs = t1.elapsed().as_secs_f64();
        ours.push(secs);
        println!(
            "wf-imaging {}: {} (Dice/HD95 mm); metrics {secs:.3} s, reading both files {read:.3} s",
            std::path::Path::new(seg.as_str())
                .file_name()
                .unwrap()
                .to_string_lossy(),
            line.join(", ")
        );
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench_evaluate_monai.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(&args[1..])
        .output()
        .expect("python runs");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut theirs = Vec::new();
    for l in text.lines() {
        println!("{l}");
        if let Some(s) = l.split("metrics ").nth(1).and_then(|r| r.split(' ').next()) {
            theirs.push(s.parse::<f64>().unwrap());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(ours), median(theirs));
    println!(
        "median per case: ours {a:.3} s, MONAI {b:.3} s; MONAI / ours = {:.1}x",
        b / a
    );
}
