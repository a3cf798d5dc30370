//! HD95 and Dice of one full-size BraTS-like mask pair (240 x 240 x 155, 1 mm voxels): our metrics,
//! timed, and, with a Python that has MONAI, MONAI's `HausdorffDistanceMetric(percentile=95)` on the
//! same masks in the same run (`bench_hd95_monai.py` beside this file).
//!
//! `cargo run --release -p wf-imaging --example bench_hd95 -- [RUNS] [PYTHON]`
//!
//! The pair: a tumour-like union of ellipsoids as the label, and as the prediction the same shape
//! shifted, grown on one side and with a few false-positive islands, so both directions and the
//! percentile matter. Prints the median of RUNS (default 7) for each side and the ratio.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use wf_imaging::metrics;

const SHAPE: [usize; 3] = [240, 240, 155];
const SPACING: [f64; 3] = [1.0, 1.0, 1.0];

fn ellipsoid(m: &mut [bool], c: [f64; 3], r: [f64; 3]) {
    let [nx, ny, nz] = SHAPE;
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                let d = (x as f64 - c[0]) / r[0];
                let e = (y as f64 - c[1]) / r[1];
                let f = (z as f64 - c[2]) / r[2];
                if d * d + e * e + f * f <= 1.0 {
                    m[(x * ny + y) * nz + z] = true;
                }
            }
        }
    }
}

fn pair() -> (Vec<bool>, Vec<bool>) {
    let n = SHAPE.iter().product();
    let mut label = vec![false; n];
    ellipsoid(&mut label, [120.0, 110.0, 80.0], [32.0, 26.0, 22.0]);
    ellipsoid(&mut label, [140.0, 125.0, 90.0], [18.0, 20.0, 15.0]);
    let mut pred = vec![false; n];
    ellipsoid(&mut pred, [123.0, 108.0, 81.0], [33.0, 25.0, 21.0]);
    ellipsoid(&mut pred, [146.0, 127.0, 92.0], [17.0, 22.0, 14.0]);
    for (c, r) in [
        ([60.0, 60.0, 40.0], 3.0),
        ([190.0, 170.0, 120.0], 2.0),
        ([100.0, 200.0, 60.0], 4.0),
    ] {
        ellipsoid(&mut pred, c, [r; 3]);
    }
    (pred, label)
}

/// `(2, X, Y, Z)` uint8 .npy: the prediction, then the label.
fn write_npy(path: &Path, pred: &[bool], label: &[bool]) -> std::io::Result<()> {
    let dict = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': (2, {}, {}, {}), }}",
        SHAPE[0], SHAPE[1], SHAPE[2]
    );
    let pad = 64 - (10 + dict.len() + 1) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad % 64));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    let bytes: Vec<u8> = pred.iter().chain(label).map(|&b| b as u8).collect();
    f.write_all(&bytes)?;
    f.flush()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .map_or(7, |a| a.parse().expect("RUNS: a number"));
    let python = args.next();
    let (pred, label) = pair();
    let voxels = |m: &[bool]| m.iter().filter(|&&b| b).count();
    println!(
        "pair {SHAPE:?}, spacing {SPACING:?} mm: prediction {} voxels, label {} voxels; {} threads",
        voxels(&pred),
        voxels(&label),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut hd = f64::NAN;
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            hd = metrics::hd95(&pred, &label, SHAPE, SPACING).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let ours = median(times.clone());
    let dice = metrics::dice(&pred, &label).unwrap();
    println!(
        "wf-imaging hd95 = {hd:.4} mm (dice {dice:.6}): median {:.4} s of {runs} (min {:.4}, max {:.4})",
        ours,
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        times.iter().cloned().fold(0.0, f64::max)
    );

    let Some(python) = python else {
        println!("(name a Python with MONAI as the second argument to time MONAI too)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("bench-hd95-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let npy = dir.join("pair.npy");
    write_npy(&npy, &pred, &label).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench_hd95_monai.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&npy)
        .arg(runs.to_string())
        .output()
        .expect("python runs");
    std::fs::remove_dir_all(&dir).ok();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let monai: serde_json::Value = serde_json::from_str(line.trim()).expect("the script's JSON");
    let m = monai["median_s"].as_f64().unwrap();
    println!(
        "MONAI {} hd95 = {:.4} mm (dice {:.6}): median {m:.4} s of {runs} (min {:.4}, max {:.4})",
        monai["monai"].as_str().unwrap_or("?"),
        monai["hd95"].as_f64().unwrap(),
        monai["dice"].as_f64().unwrap(),
        monai["min_s"].as_f64().unwrap(),
        monai["max_s"].as_f64().unwrap()
    );
    println!(
        "difference {:.2e} mm; MONAI / ours = {:.1}x",
        (hd - monai["hd95"].as_f64().unwrap()).abs(),
        m / ours
    );
}
