//! Deterministic synthetic BraTS-like data in the MSD Task01 layout (dataset.json, imagesTr/, labelsTr/,
//! optional imagesTs/), with the structure and constants of the Python generator that made the
//! synthetic MONAI reference inputs (tests/data/monai-1.6.1): a noise-perturbed brain ellipsoid with
//! ventricles and a grey/white blend, nested tumour blobs (1 edema ⊃ 3 enhancing ⊃ 2 non-enhancing),
//! four modalities whose intensities differ by class so a UNet can learn them.
//!
//! Same structure and constants as the Python generator, not byte-identical to it (its PCG64 and scipy
//! spline zoom are not reproduced). Output bytes depend only on the seed and shape: each case draws
//! from its own stream, whatever the thread count.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::error::ImagingError;
use crate::msd::{DATASET_JSON, MsdDataset, MsdTest, MsdTraining};
use crate::nifti::{NiftiData, encode_nifti, gzip, write_atomic};
use crate::rng::Rng;
use crate::transforms::Affine;

/// Mean intensity per tissue class and modality (FLAIR, T1w, T1gd, T2w), as the Python generator.
const WM: [f32; 4] = [350.0, 600.0, 650.0, 300.0];
const GM: [f32; 4] = [420.0, 450.0, 480.0, 420.0];
const CSF: [f32; 4] = [80.0, 200.0, 210.0, 900.0];
const EDEMA: [f32; 4] = [700.0, 400.0, 420.0, 800.0];
const NONENH: [f32; 4] = [500.0, 300.0, 320.0, 700.0];
const ENH: [f32; 4] = [550.0, 450.0, 1000.0, 550.0];

/// World placement of the generated grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynthAffine {
    /// 1 mm, RAS, zero origin: what the MSD Task01 files are reported to carry.
    #[default]
    Identity,
    /// diag(−1, −1, 1) with origin (0, Y−1, 0): BraTS/CaPTk style, exercises `orientation`.
    Lps,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    pub cases: usize,
    /// Extra cases written to imagesTs/ (no labels).
    pub test: usize,
    pub shape: [usize; 3],
    pub seed: u64,
    pub channels: usize,
    pub affine: SynthAffine,
    /// gzip level of the .nii.gz files.
    pub compress_level: u32,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            cases: 4,
            test: 0,
            shape: [240, 240, 155],
            seed: 20240601,
            channels: 4,
            affine: SynthAffine::Identity,
            compress_level: 6,
            threads: 0,
        }
    }
}

/// Per-case facts written into dataset.json's `generator` block (no timings: reruns stay identical).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthCase {
    pub case: String,
    pub image_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_counts: Option<[u64; 4]>,
    pub brain_voxels: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSummary {
    pub cases: Vec<SynthCase>,
    pub dataset_json: PathBuf,
}

/// The voxels along each axis of a synthetic volume.
pub const AXIS: std::ops::RangeInclusive<usize> = 4..=4096;

/// `generate(out, cases, shape, seed, test)` with 4 channels, identity affine, gzip level 6.
pub fn generate(
    out: &Path,
    cases: usize,
    shape: [usize; 3],
    seed: u64,
    test: usize,
) -> Result<SynthSummary, ImagingError> {
    generate_with(
        out,
        &SynthOptions {
            cases,
            test,
            shape,
            seed,
            ..SynthOptions::default()
        },
    )
}

pub fn generate_with(out: &Path, o: &SynthOptions) -> Result<SynthSummary, ImagingError> {
    let serr = |reason: String| ImagingError::Synth {
        path: out.to_path_buf(),
        reason,
    };
    if o.shape.iter().any(|n| !AXIS.contains(n)) {
        return Err(serr(format!(
            "shape {:?}: every axis must be in {}..={}",
            o.shape,
            AXIS.start(),
            AXIS.end()
        )));
    }
    if o.channels == 0 || o.channels > 64 {
        return Err(serr(format!("channels {} must be in 1..=64", o.channels)));
    }
    for sub in ["imagesTr", "labelsTr"].iter().chain(if o.test > 0 {
        ["imagesTs"].iter()
    } else {
        [].iter()
    }) {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| ImagingError::io(&d, "create directory", e))?;
    }
    let aff = affine_for(o.affine, o.shape);
    let total = o.cases + o.test;
    let threads = if o.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        o.threads
    };
    // Each case in flight holds its image (f32 per channel), label and brain mask: at least this
    // many bytes. Refused when one does not fit; fewer cases at once when several do not.
    let voxels: u128 = o.shape.iter().map(|&n| n as u128).product();
    let per_case = voxels * (4 * o.channels as u128 + 2);
    crate::memory::check(per_case).map_err(|why| {
        serr(format!(
            "shape {:?} with {} channels: one case {why}",
            o.shape, o.channels
        ))
    })?;
    let fit = crate::memory::limit()
        .map(|l| (l.bytes as u128 / per_case.max(1)).max(1))
        .unwrap_or(1);
    let threads = threads.min(usize::try_from(fit).unwrap_or(usize::MAX));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<SynthCase, ImagingError>>> =
        (0..total).map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(total.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        done.push((i, write_case(out, o, &aff, i)));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            // A worker only panics on a bug; its cases stay None and become errors below.
            if let Ok(done) = w.join() {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
    });
    let mut cases = Vec::with_capacity(total);
    for (i, r) in results.into_iter().enumerate() {
        cases.push(r.unwrap_or_else(|| Err(serr(format!("worker for case {} died", i + 1))))?);
    }
    let training = cases[..o.cases]
        .iter()
        .map(|c| MsdTraining {
            image: format!("./imagesTr/{}", c.case),
            label: Some(format!("./labelsTr/{}", c.case)),
        })
        .collect();
    let test = cases[o.cases..]
        .iter()
        .map(|c| MsdTest::Path(format!("./imagesTs/{}", c.case)))
        .collect();
    let text = |s: &str| Some(s.to_string());
    let map = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let ds = MsdDataset {
        name: text("BRATS"),
        description: text(
            "SYNTHETIC stand-in for MSD Task01_BrainTumour (generated by wf-imaging synth; not patient data)",
        ),
        reference: text("synthetic"),
        licence: text("CC0 (synthetic)"),
        release: text("synthetic 1.0"),
        tensor_image_size: text("4D"),
        modality: map(&[("0", "FLAIR"), ("1", "T1w"), ("2", "t1gd"), ("3", "T2w")]),
        labels: map(&[
            ("0", "background"),
            ("1", "edema"),
            ("2", "non-enhancing tumor"),
            ("3", "enhancing tumour"),
        ]),
        num_training: Some(o.cases),
        num_test: Some(o.test),
        training,
        test,
    };
    let record = Record {
        generator: Generator {
            seed: o.seed,
            shape: o.shape,
            channels: o.channels,
            spacing: [1.0, 1.0, 1.0],
            affine: aff,
            integer_intensities: true,
            compresslevel: o.compress_level,
            cases: cases.clone(),
        },
    };
    let dataset_json = out.join(DATASET_JSON);
    ds.write_with(&dataset_json, &record)?;
    Ok(SynthSummary {
        cases,
        dataset_json,
    })
}

/// What dataset.json records beyond the MSD keys: how the data was generated.
#[derive(Serialize)]
struct Record {
    generator: Generator,
}

#[derive(Serialize)]
struct Generator {
    seed: u64,
    shape: [usize; 3],
    channels: usize,
    spacing: [f64; 3],
    affine: Affine,
    integer_intensities: bool,
    compresslevel: u32,
    cases: Vec<SynthCase>,
}

/// The affine of every generated case (1 mm voxels).
pub fn affine_for(kind: SynthAffine, shape: [usize; 3]) -> Affine {
    let mut a = crate::transforms::linalg::IDENTITY;
    if kind == SynthAffine::Lps {
        a[0][0] = -1.0;
        a[1][1] = -1.0;
        a[1][3] = shape[1] as f64 - 1.0;
    }
    a
}

fn write_case(
    out: &Path,
    o: &SynthOptions,
    aff: &Affine,
    i: usize,
) -> Result<SynthCase, ImagingError> {
    let cid = i + 1;
    let name = format!("BRATS_{cid:03}.nii.gz");
    let is_test = i >= o.cases;
    let (img, lab) = make_case(
        o.seed.wrapping_mul(1000).wrapping_add(cid as u64),
        o.shape,
        o.channels,
    );
    let [x, y, z] = o.shape;
    let ip = out
        .join(if is_test { "imagesTs" } else { "imagesTr" })
        .join(&name);
    let raw = encode_nifti(
        &[x, y, z, o.channels],
        NiftiData::F32(&img),
        aff,
        &ip.display().to_string(),
    )?;
    let gz = gzip(&raw, o.compress_level);
    write_atomic(&ip, &gz)?;
    let vol = x * y * z;
    let brain_voxels = img[..vol].iter().filter(|v| **v != 0.0).count() as u64;
    let mut rec = SynthCase {
        case: name.clone(),
        image_bytes: gz.len() as u64,
        label_bytes: None,
        label_counts: None,
        brain_voxels,
    };
    if !is_test {
        let lp = out.join("labelsTr").join(&name);
        let raw = encode_nifti(
            &[x, y, z],
            NiftiData::U8(&lab),
            aff,
            &lp.display().to_string(),
        )?;
        let gz = gzip(&raw, o.compress_level);
        write_atomic(&lp, &gz)?;
        let mut counts = [0u64; 4];
        for &l in &lab {
            counts[l as usize & 3] += 1;
        }
        rec.label_bytes = Some(gz.len() as u64);
        rec.label_counts = Some(counts);
    }
    Ok(rec)
}

/// Standard normal by Box–Muller (one of the pair; simplicity over speed is fine at these sizes).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Low-frequency noise in [-1, 1] at full resolution: a coarse Gaussian grid upsampled with
/// separable Catmull–Rom cubic interpolation (the Python generator uses scipy's cubic spline zoom), x fastest.
fn smooth_noise(rng: &mut Rng, shape: [usize; 3], coarse: [usize; 3]) -> Vec<f32> {
    let [cx, cy, cz] = coarse;
    let mut g: Vec<f64> = (0..cx * cy * cz).map(|_| normal(rng)).collect();
    // Upsample one axis at a time; the array is x fastest with dims `dims`.
    let mut dims = coarse;
    for axis in 0..3 {
        let (n_in, n_out) = (dims[axis], shape[axis]);
        let taps: Vec<([usize; 4], [f64; 4])> = (0..n_out)
            .map(|o| {
                let u = (o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5;
                let f = u.floor();
                let t = u - f;
                let w = [
                    ((-t + 2.0) * t - 1.0) * t / 2.0,
                    ((3.0 * t - 5.0) * t * t + 2.0) / 2.0,
                    ((-3.0 * t + 4.0) * t + 1.0) * t / 2.0,
                    (t - 1.0) * t * t / 2.0,
                ];
                let idx =
                    [-1i64, 0, 1, 2].map(|d| (f as i64 + d).clamp(0, n_in as i64 - 1) as usize);
                (idx, w)
            })
            .collect();
        let mut nd = dims;
        nd[axis] = n_out;
        let stride_in = [1, dims[0], dims[0] * dims[1]];
        let mut out = vec![0f64; nd[0] * nd[1] * nd[2]];
        for k in 0..nd[2] {
            for j in 0..nd[1] {
                for i in 0..nd[0] {
                    let p = [i, j, k];
                    let (idx, w) = &taps[p[axis]];
                    let mut base = [i, j, k];
                    base[axis] = 0;
                    let b =
                        base[0] * stride_in[0] + base[1] * stride_in[1] + base[2] * stride_in[2];
                    let mut acc = 0.0;
                    for t in 0..4 {
                        acc += w[t] * g[b + idx[t] * stride_in[axis]];
                    }
                    out[(k * nd[1] + j) * nd[0] + i] = acc;
                }
            }
        }
        g = out;
        dims = nd;
    }
    let m = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    let s = if m > 0.0 { 1.0 / m } else { 0.0 };
    g.iter().map(|v| (v * s) as f32).collect()
}

fn uniform3(rng: &mut Rng, lo: f64, hi: f64) -> [f64; 3] {
    [
        rng.uniform(lo, hi),
        rng.uniform(lo, hi),
        rng.uniform(lo, hi),
    ]
}

/// Normalized distance field of a noise-perturbed ellipsoid: sqrt(Σ((x−c)/r)²) + amp·noise.
fn blob(shape: [usize; 3], c: [f64; 3], r: [f64; 3], noise: &[f32], amp: f32) -> Vec<f32> {
    let [nx, ny, nz] = shape;
    let mut d = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        let dz = ((k as f64 - c[2]) / r[2]).powi(2);
        for j in 0..ny {
            let dy = ((j as f64 - c[1]) / r[1]).powi(2);
            for i in 0..nx {
                let dx = ((i as f64 - c[0]) / r[0]).powi(2);
                let idx = d.len();
                d.push((dx + dy + dz).sqrt() as f32 + amp * noise[idx]);
            }
        }
    }
    d
}

/// One case: image (X, Y, Z, C) and labels (X, Y, Z), both x fastest as NIfTI stores them.
pub fn make_case(seed: u64, shape: [usize; 3], channels: usize) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let [nx, ny, nz] = shape;
    let vol = nx * ny * nz;
    let s = shape.map(|v| v as f64);
    let jit = uniform3(&mut rng, -0.03, 0.03);
    let c_brain = [0, 1, 2].map(|a| s[a] / 2.0 + jit[a] * s[a]);
    let rs = uniform3(&mut rng, 0.95, 1.05);
    let frac = [0.29, 0.36, 0.42];
    let r_brain = [0, 1, 2].map(|a| s[a] * frac[a] * rs[a]);
    let n_brain = smooth_noise(&mut rng, shape, [6, 6, 5]);
    let dbrain = blob(shape, c_brain, r_brain, &n_brain, 0.06);
    drop(n_brain);
    // Ventricles: two small ellipsoids near the centre.
    let mut csf = vec![false; vol];
    for sgn in [-1.0, 1.0] {
        let cc = [
            c_brain[0] + sgn * 0.05 * s[0],
            c_brain[1],
            c_brain[2] + 0.05 * s[2],
        ];
        let rr = [s[0] * 0.03, s[1] * 0.10, s[2] * 0.06];
        let mut idx = 0;
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let q = ((i as f64 - cc[0]) / rr[0]).powi(2)
                        + ((j as f64 - cc[1]) / rr[1]).powi(2)
                        + ((k as f64 - cc[2]) / rr[2]).powi(2);
                    if q < 1.0 && dbrain[idx] < 1.0 {
                        csf[idx] = true;
                    }
                    idx += 1;
                }
            }
        }
    }
    let t = smooth_noise(&mut rng, shape, [10, 10, 8]);
    let gm_frac: Vec<f32> = t
        .iter()
        .zip(&dbrain)
        .map(|(&t, &d)| {
            if d > 0.85 {
                1.0
            } else {
                (0.5 + 0.8 * t).clamp(0.0, 1.0)
            }
        })
        .collect();
    drop(t);
    // Tumour: edema (1) ⊃ enhancing shell (3) ⊃ non-enhancing core (2), inside the brain.
    let r_e = {
        let u = uniform3(&mut rng, 0.09, 0.15);
        [0, 1, 2].map(|a| s[a] * u[a])
    };
    let c_t = [0, 1, 2].map(|a| {
        let (lo, hi) = (
            c_brain[a] - r_brain[a] * 0.45,
            c_brain[a] + r_brain[a] * 0.45,
        );
        rng.uniform(lo, hi)
    });
    let tn = smooth_noise(&mut rng, shape, [12, 12, 10]);
    let de = blob(shape, c_t, r_e, &tn, 0.25);
    let shift = uniform3(&mut rng, -0.15, 0.15);
    let c_core = [0, 1, 2].map(|a| c_t[a] + shift[a] * r_e[a]);
    let core_scale = rng.uniform(0.5, 0.7);
    let dc = blob(shape, c_core, r_e.map(|r| r * core_scale), &tn, 0.15);
    drop(tn);
    let inner_thr = rng.uniform(0.5, 0.75) as f32;
    let mut label = vec![0u8; vol];
    for i in 0..vol {
        if dbrain[i] >= 1.0 {
            continue;
        }
        label[i] = if dc[i] < 1.0 {
            if dc[i] < inner_thr { 2 } else { 3 }
        } else if de[i] < 1.0 {
            1
        } else {
            0
        };
    }
    drop((de, dc));
    let mut img = vec![0f32; vol * channels];
    for ch in 0..channels {
        let m = ch % 4;
        let bias = smooth_noise(&mut rng, shape, [4, 4, 3]);
        let gain = rng.uniform(0.8, 1.25) as f32;
        let out = &mut img[ch * vol..(ch + 1) * vol];
        for i in 0..vol {
            // Draw the voxel noise even outside the brain so the stream does not depend on the mask.
            let eps = normal(&mut rng) as f32;
            if dbrain[i] >= 1.0 {
                continue;
            }
            let mut v = (1.0 - gm_frac[i]) * WM[m] + gm_frac[i] * GM[m];
            if csf[i] {
                v = CSF[m];
            }
            match label[i] {
                1 => v = EDEMA[m],
                2 => v = NONENH[m],
                3 => v = ENH[m],
                _ => {}
            }
            v = v * (1.0 + 0.1 * bias[i]) * (1.0 + 0.04 * eps) * gain;
            out[i] = v.round_ties_even().max(1.0);
        }
    }
    (img, label)
}

#[cfg(test)]
mod tests {
    /// A volume whose buffers exceed the memory there is (4096³ voxels of 4 channels: over a
    /// terabyte) is refused before anything is allocated.
    #[test]
    fn a_volume_larger_than_memory_is_refused() {
        let out = tempfile::tempdir().unwrap();
        let e = super::generate(out.path(), 1, [4096, 4096, 4096], 0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shape [4096, 4096, 4096]") && e.contains("of memory, more than the"),
            "{e}"
        );
    }

    use super::*;
    use crate::nifti::read_nifti;

    /// dataset.json's bytes are pinned: they are part of every synthetic data set's digest, so a
    /// change of writer or key order would silently invalidate cached work downstream.
    #[test]
    fn dataset_json_bytes_are_pinned() {
        let pinned = |name: &str| {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/msd")
                .join(name);
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let cases = [
            (
                "synth-3-cases-1-test.json",
                SynthOptions {
                    cases: 3,
                    test: 1,
                    shape: [8, 8, 6],
                    seed: 7,
                    threads: 2,
                    ..SynthOptions::default()
                },
            ),
            (
                "synth-2-cases-lps.json",
                SynthOptions {
                    cases: 2,
                    test: 0,
                    shape: [6, 5, 4],
                    seed: 0,
                    channels: 2,
                    affine: SynthAffine::Lps,
                    compress_level: 1,
                    threads: 1,
                },
            ),
        ];
        for (name, opts) in cases {
            let dir = tempfile::tempdir().unwrap();
            let s = generate_with(dir.path(), &opts).unwrap();
            let written = std::fs::read(&s.dataset_json).unwrap();
            assert!(
                written == pinned(name),
                "{name}: dataset.json differs from the pinned bytes:\n{}",
                String::from_utf8_lossy(&written)
            );
            let ds = MsdDataset::read(&s.dataset_json).unwrap();
            assert_eq!(ds.cases().unwrap().len(), opts.cases);
            ds.check_layout(dir.path()).unwrap();
        }
    }

    #[test]
    fn generates_msd_layout_deterministically() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            cases: 3,
            test: 1,
            shape: [40, 36, 24],
            seed: 7,
            threads: 2,
            ..SynthOptions::default()
        };
        let sa = generate_with(a.path(), &opts).unwrap();
        generate_with(
            b.path(),
            &SynthOptions {
                threads: 1,
                ..opts.clone()
            },
        )
        .unwrap();
        for f in [
            "dataset.json",
            "imagesTr/BRATS_001.nii.gz",
            "labelsTr/BRATS_003.nii.gz",
            "imagesTs/BRATS_004.nii.gz",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(f)).unwrap(),
                std::fs::read(b.path().join(f)).unwrap(),
                "{f}"
            );
        }
        let ds: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sa.dataset_json).unwrap()).unwrap();
        assert_eq!(ds["numTraining"], 3);
        assert_eq!(ds["numTest"], 1);
        assert_eq!(ds["modality"]["2"], "t1gd");
        assert_eq!(ds["labels"]["3"], "enhancing tumour");
        assert_eq!(ds["training"][1]["label"], "./labelsTr/BRATS_002.nii.gz");
        assert_eq!(ds["test"][0], "./imagesTs/BRATS_004.nii.gz");
        let img = read_nifti(&a.path().join("imagesTr/BRATS_001.nii.gz")).unwrap();
        assert_eq!(img.dims, vec![40, 36, 24, 4]);
        let lab = read_nifti(&a.path().join("labelsTr/BRATS_001.nii.gz")).unwrap();
        assert_eq!(lab.dims, vec![40, 36, 24]);
        let vol = 40 * 36 * 24;
        let mut counts = [0usize; 4];
        for (i, &l) in lab.data.iter().enumerate() {
            counts[l as usize] += 1;
            // Labels only inside the brain; the brain is exactly where intensities are non-zero.
            if l > 0.0 {
                assert!((0..4).all(|c| img.data[c * vol + i] >= 1.0));
            }
        }
        assert!(
            counts.iter().all(|&c| c > 0),
            "all classes present: {counts:?}"
        );
        // Class means differ per modality (T1gd: enhancing much brighter than edema).
        let mean = |cls: f32, ch: usize| {
            let v: Vec<f32> = (0..vol)
                .filter(|&i| lab.data[i] == cls)
                .map(|i| img.data[ch * vol + i])
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(mean(3.0, 2) > 1.5 * mean(1.0, 2));
        assert!(mean(1.0, 0) > 500.0, "FLAIR edema is bright");
    }
}
