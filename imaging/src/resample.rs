//! Putting a prediction made on the preprocessed grid (after spacing and orientation) back onto the
//! input image's grid, as `wf predict` and the evaluate step do.
//!
//! - [`BackToInput::Linear`] (the default) is the post-processing of MONAI's BraTS tutorial:
//!   `Invertd(nearest_interp=False)` resamples the network's *logits* with trilinear interpolation
//!   through the inverse of the recorded spacing and orientation (border padding,
//!   `align_corners=False`, torch's `grid_sample` arithmetic), then `Activations(sigmoid=True)` and
//!   `AsDiscrete(threshold=0.5)` keep a voxel in a region where `sigmoid(logit) >= 0.5` in float32.
//!   Orientation's inverse is a permutation and flips, so the two inverse steps are one resampling
//!   from the preprocessed grid to the input grid through their affines; the goldens in
//!   `tests/data/invert` (made with MONAI 1.6.1, one of them oblique) check it.
//! - [`BackToInput::Nearest`] thresholds on the preprocessed grid first and gives each input voxel
//!   the regions of the preprocessed voxel nearest to the same world point. Tie-breaking: a point
//!   exactly halfway between two voxels along an axis (every other slice when 1 mm goes to 2 mm)
//!   takes the voxel of the larger index (`f64::round`, half away from zero, on non-negative
//!   indices); points outside the preprocessed grid are background.

use crate::transforms::Affine;
use crate::transforms::linalg::solve4;
use crate::transforms::spacing::{InterpMode, resample_image_to};
use crate::transforms::{Image, Layout};

/// How a prediction goes back onto the input grid (see the module's text).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackToInput {
    /// Logits resampled trilinearly, then thresholded (MONAI's BraTS tutorial, `Invertd`).
    #[default]
    Linear,
    /// Regions thresholded on the preprocessed grid, then the nearest voxel's.
    Nearest,
}

impl BackToInput {
    pub fn name(self) -> &'static str {
        match self {
            BackToInput::Linear => "linear",
            BackToInput::Nearest => "nearest",
        }
    }
}

/// MONAI's `Activations(sigmoid=True)` + `AsDiscrete(threshold=0.5)` for one logit: the sigmoid in
/// float32, kept when `>= 0.5` (so a logit of 0, and negative ones too small to move the sigmoid off
/// 0.5 in float32, are inside).
pub fn in_region(logit: f32) -> bool {
    1.0 / (1.0 + (-logit).exp()) >= 0.5
}

/// Region bits (channel `c` inside sets bit `c`; at most 8 channels) on the input grid
/// (`in_shape`, `in_affine`), C order, from `logits` (C, X, Y, Z) on the grid whose affine is
/// `model_affine`. Errors name a singular affine (and, for `Linear`, a grid too large to allocate).
pub fn regions_on_input(
    logits: &Image,
    model_affine: &Affine,
    in_shape: [usize; 3],
    in_affine: &Affine,
    how: BackToInput,
) -> Result<Vec<u8>, String> {
    let c = logits.channels();
    if c > 8 {
        return Err(format!(
            "{c} output channels; at most 8 regions fit a label byte"
        ));
    }
    let bits = |data: &[f32], layout: Layout, shape: [usize; 3]| -> Vec<u8> {
        let vol: usize = shape.iter().product();
        let mut out = vec![0u8; vol];
        for ch in 0..c {
            for (v, o) in out.iter_mut().enumerate() {
                let i = match layout {
                    Layout::C => ch * vol + v,
                    Layout::Fortran => {
                        // Voxel `v` in C order (Z fastest) → X fastest, channel last.
                        let (x, rest) = (v / (shape[1] * shape[2]), v % (shape[1] * shape[2]));
                        let (y, z) = (rest / shape[2], rest % shape[2]);
                        ((ch * shape[2] + z) * shape[1] + y) * shape[0] + x
                    }
                };
                if in_region(data[i]) {
                    *o |= 1 << ch;
                }
            }
        }
        out
    };
    match how {
        BackToInput::Linear => {
            let back = resample_image_to(
                logits,
                model_affine,
                in_shape,
                in_affine,
                InterpMode::Bilinear,
            )?;
            Ok(bits(&back.data, back.layout, in_shape))
        }
        BackToInput::Nearest => {
            let regions = bits(&logits.data, logits.layout, logits.spatial());
            resample_nearest_u8(
                &regions,
                logits.spatial(),
                model_affine,
                in_shape,
                in_affine,
            )
            .ok_or_else(|| "the preprocessed grid's affine is singular".to_string())
        }
    }
}

/// Resamples `src` (C order, shape `src_shape`, Z fastest) onto the grid of `dst_shape` /
/// `dst_affine`: each destination voxel takes the value of the source voxel nearest to the same
/// world point, or 0 outside the source. `None` when `src_affine` is singular.
pub fn resample_nearest_u8(
    src: &[u8],
    src_shape: [usize; 3],
    src_affine: &Affine,
    dst_shape: [usize; 3],
    dst_affine: &Affine,
) -> Option<Vec<u8>> {
    assert_eq!(src.len(), src_shape.iter().product::<usize>());
    // dst voxel → world → src voxel.
    let m = solve4(src_affine, dst_affine)?;
    let mut out = vec![0u8; dst_shape.iter().product()];
    let [sx, sy, sz] = src_shape.map(|s| s as f64);
    let mut o = 0;
    for i in 0..dst_shape[0] {
        for j in 0..dst_shape[1] {
            let (fi, fj) = (i as f64, j as f64);
            let base: [f64; 3] = std::array::from_fn(|r| m[r][0] * fi + m[r][1] * fj + m[r][3]);
            for k in 0..dst_shape[2] {
                let fk = k as f64;
                let p: [f64; 3] = std::array::from_fn(|r| (base[r] + m[r][2] * fk).round());
                if p[0] >= 0.0 && p[1] >= 0.0 && p[2] >= 0.0 && p[0] < sx && p[1] < sy && p[2] < sz
                {
                    let idx = ((p[0] as usize) * src_shape[1] + p[1] as usize) * src_shape[2]
                        + p[2] as usize;
                    out[o] = src[idx];
                }
                o += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(s: [f64; 3], t: [f64; 3]) -> Affine {
        [
            [s[0], 0.0, 0.0, t[0]],
            [0.0, s[1], 0.0, t[1]],
            [0.0, 0.0, s[2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn identity_grid_is_a_copy() {
        let src: Vec<u8> = (0..24).collect();
        let a = diag([1.0, 2.0, 3.0], [5.0, -1.0, 0.5]);
        assert_eq!(
            resample_nearest_u8(&src, [2, 3, 4], &a, [2, 3, 4], &a).unwrap(),
            src
        );
    }

    #[test]
    fn flipped_axis_and_coarser_source_map_back() {
        // Source: 2 mm voxels along x, flipped (x decreasing in world); destination: 1 mm voxels.
        let src = vec![1u8, 2, 3];
        let src_aff = diag([-2.0, 1.0, 1.0], [4.0, 0.0, 0.0]); // world x = 4 - 2i: 4, 2, 0
        let dst_aff = diag([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]); // world x = i
        let out = resample_nearest_u8(&src, [3, 1, 1], &src_aff, [6, 1, 1], &dst_aff).unwrap();
        // world 0 → src 2 (3); 1 → src 1.5 rounds to 2 (3); 2 → src 1 (2); 3 → 0.5 → 1 (2 ... rounds away from 0);
        // 4 → src 0 (1); 5 → src -0.5 → -1 → outside (0).
        assert_eq!(out, vec![3, 3, 2, 2, 1, 0]);
    }

    #[test]
    fn singular_source_affine_is_refused() {
        let z = [[0.0; 4]; 4];
        assert!(resample_nearest_u8(&[0], [1, 1, 1], &z, [1, 1, 1], &z).is_none());
    }
}

/// Against MONAI 1.6.1's `Invertd` + sigmoid + threshold on the goldens of `tests/data/invert`
/// (`regenerate.py` there): the preprocessed grid, the inverted logits and the regions.
#[cfg(test)]
mod golden {
    use super::*;
    use crate::transforms::npy;
    use crate::transforms::{CaseSource, Chain};
    use std::path::{Path, PathBuf};

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invert")
    }

    fn affine(v: &serde_json::Value) -> Affine {
        std::array::from_fn(|i| std::array::from_fn(|j| v[i][j].as_f64().unwrap()))
    }

    #[test]
    fn linear_inversion_matches_monai_invertd() {
        let dir = dir();
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        assert_eq!(expected["monai"], "1.6.1");
        let cases = expected["cases"].as_object().unwrap();
        assert!(cases.len() >= 3);
        for (name, want) in cases {
            // Our chain puts the image on the grid MONAI's did.
            let chain = Chain::build(&want["chain"], "msd").unwrap();
            let mut case = chain
                .run_prefix(&CaseSource {
                    id: name.clone(),
                    image: dir.join(format!("{name}.nii.gz")),
                    label: None,
                })
                .unwrap();
            case.to_c_order();
            let model_shape: Vec<usize> =
                serde_json::from_value(want["model_shape"].clone()).unwrap();
            assert_eq!(case.image.spatial().to_vec(), model_shape, "{name}");
            let model_affine = affine(&want["model_affine"]);
            for i in 0..4 {
                for j in 0..4 {
                    assert!(
                        (case.affine[i][j] - model_affine[i][j]).abs() < 1e-9,
                        "{name}: affine {:?} against MONAI's {model_affine:?}",
                        case.affine
                    );
                }
            }
            let in_shape: [usize; 3] = serde_json::from_value(want["input_shape"].clone()).unwrap();
            let in_affine = affine(&want["input_affine"]);

            let pred = npy::read(&dir.join(format!("{name}_pred.npy.gz"))).unwrap();
            let [c, x, y, z] = pred.shape[..] else {
                panic!("{name}: {:?}", pred.shape)
            };
            let logits = Image::new([c, x, y, z], pred.data);
            let back = resample_image_to(
                &logits,
                &case.affine,
                in_shape,
                &in_affine,
                InterpMode::Bilinear,
            )
            .unwrap();
            let inverted = npy::read(&dir.join(format!("{name}_inverted.npy.gz"))).unwrap();
            assert_eq!(inverted.shape, [c, in_shape[0], in_shape[1], in_shape[2]]);
            let worst = back
                .data
                .iter()
                .zip(&inverted.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{name}: inverted logits differ by up to {worst}"
            );

            let got = regions_on_input(
                &logits,
                &case.affine,
                in_shape,
                &in_affine,
                BackToInput::Linear,
            )
            .unwrap();
            let seg = npy::read(&dir.join(format!("{name}_seg.npy.gz"))).unwrap();
            let vol: usize = in_shape.iter().product();
            let mut differ = 0;
            for (v, bits) in got.iter().enumerate() {
                for ch in 0..c {
                    let monai = seg.data[ch * vol + v] != 0.0;
                    differ += usize::from(monai != (bits >> ch & 1 == 1));
                }
            }
            assert_eq!(
                differ,
                0,
                "{name}: {differ} of {} region voxels differ from MONAI's",
                c * vol
            );
            let counts: Vec<u64> = (0..c)
                .map(|ch| got.iter().filter(|b| *b >> ch & 1 == 1).count() as u64)
                .collect();
            assert_eq!(
                serde_json::json!(counts),
                want["voxels_per_region"],
                "{name}"
            );
        }
    }

    #[test]
    fn nearest_keeps_the_thresholded_voxel() {
        // One channel on a 2 mm grid back onto 1 mm: each 1 mm voxel takes the region of the 2 mm
        // voxel nearest to it, the halfway one the larger index.
        let model = [
            [2.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let input = crate::transforms::linalg::IDENTITY;
        let logits = Image::new([1, 3, 1, 1], vec![-1.0, 2.0, -3.0]);
        let near =
            regions_on_input(&logits, &model, [6, 1, 1], &input, BackToInput::Nearest).unwrap();
        // world x: 0 → 0; 1 → 0.5 → 1; 2 → 1; 3 → 1.5 → 2; 4 → 2; 5 → 2.5 → 3 (outside).
        assert_eq!(near, [0, 1, 1, 0, 0, 0]);
        let lin =
            regions_on_input(&logits, &model, [6, 1, 1], &input, BackToInput::Linear).unwrap();
        assert_eq!(lin.len(), 6);
        assert!(in_region(0.0) && in_region(-1e-9) && !in_region(-1e-6) && in_region(1e-9));
    }
}
