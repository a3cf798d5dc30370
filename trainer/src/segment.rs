//! Segmenting whole images with an export and scoring them against labels: what `wf predict` and
//! the evaluate step share, so both report the same numbers for the same case.
//!
//! [`Segmenter::segment`] replays the deterministic part of the training chain recorded in the
//! export's `preprocessing.json` (load, channel-first, spacing, orientation, normalize-intensity;
//! random transforms and convert-labels are left out), runs sliding-window inference
//! ([`crate::infer`]), and puts the three region channels (TC, WT, ET) back onto the input image's
//! grid ([`BackToInput`]: MONAI's `Invertd` post-processing by default). [`score_regions`] scores
//! each region against a label on that grid: Dice and HD95 in mm (`wf_imaging::metrics`, MONAI's
//! semantics).
//!
//! What is scored is the segmentation as written ([`Segmentation::nested_regions`]): one label
//! value per voxel ([`LabelConvention::value_of`], the innermost region's class), whose regions
//! are nested (ET inside TC inside WT). So a score can be reproduced from the file with any tool.
//! Where a network's channels are not nested (ET outside TC, rare once trained), this differs from
//! scoring the raw channels as MONAI's tutorial does.

use crate::infer::Predictor;
use std::path::Path;
use wf_imaging::metrics::RegionScore;
use wf_imaging::resample::BackToInput;
use wf_imaging::samples::{PREPROCESSING_FILE, Preprocessing};
use wf_imaging::transforms::{Affine, CaseSource, Chain, LabelConvention};

/// Why segmenting failed: the input was unusable (exit 2 for a command), or the work itself failed.
#[derive(Debug)]
pub enum SegmentError {
    Invalid(String),
    Failed(String),
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Invalid(m) | SegmentError::Failed(m) => f.write_str(m),
        }
    }
}

fn invalid(msg: impl Into<String>) -> SegmentError {
    SegmentError::Invalid(msg.into())
}

/// Sliding-window settings and how the result goes back onto the input grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentOptions {
    /// The window (default: the training crop rounded up to the network's size divisor).
    pub roi: Option<[usize; 3]>,
    /// MONAI's `overlap`, in [0, 1).
    pub overlap: f64,
    pub sw_batch_size: usize,
    /// How overlapping windows are blended (MONAI's `mode`).
    pub blend: crate::infer::Blend,
    pub back: BackToInput,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            roi: None,
            overlap: 0.5,
            sw_batch_size: 1,
            blend: crate::infer::Blend::Constant,
            back: BackToInput::Linear,
        }
    }
}

/// An export ready to segment images.
pub struct Segmenter {
    predictor: Predictor,
    chain: Chain,
    conv: LabelConvention,
    roi: [usize; 3],
    opts: SegmentOptions,
}

/// One image's regions on its own grid.
pub struct Segmentation {
    /// Region bits per voxel (TC = 1, WT = 2, ET = 4), C order (Z fastest) on the input grid.
    pub regions: Vec<u8>,
    pub shape: [usize; 3],
    pub affine: Affine,
}

/// The label convention recorded in preprocessing.json (`msd`, `brats`, `brats-monai`).
pub fn convention(labels: &str) -> Result<LabelConvention, String> {
    serde_json::from_value(serde_json::Value::String(labels.to_string()))
        .map_err(|_| format!("unknown label convention `{labels}`"))
}

/// The deterministic transforms of a recorded chain, and the training crop size if there was one.
pub fn deterministic_chain(
    transforms: &serde_json::Value,
) -> Result<(serde_json::Value, Option<[usize; 3]>), String> {
    let list = transforms.as_array().ok_or("`transforms` is not a list")?;
    let mut keep = Vec::new();
    let mut crop = None;
    for t in list {
        let spec: wf_imaging::transforms::TransformSpec =
            serde_json::from_value(t.clone()).map_err(|e| format!("transform {t}: {e}"))?;
        let name = spec.name();
        if name == "rand-spatial-crop"
            && let Some(roi) = t.get("rand-spatial-crop").and_then(|c| c.get("roi"))
        {
            let v: Vec<usize> = serde_json::from_value(roi.clone()).map_err(|e| e.to_string())?;
            if let [x, y, z] = v[..] {
                crop = Some([x, y, z]);
            }
        }
        if !spec.is_random() && name != "convert-labels" {
            keep.push(t.clone());
        }
    }
    Ok((serde_json::Value::Array(keep), crop))
}

impl Segmenter {
    /// Loads an export directory (model.safetensors, config.json, preprocessing.json). Errors are
    /// [`SegmentError::Invalid`] and name the file.
    pub fn from_export(dir: &Path, opts: SegmentOptions) -> Result<Self, SegmentError> {
        if !(0.0..1.0).contains(&opts.overlap) {
            return Err(invalid(format!(
                "overlap {} is not in [0, 1)",
                opts.overlap
            )));
        }
        if opts.sw_batch_size == 0 {
            return Err(invalid("sw_batch_size must be >= 1"));
        }
        let predictor = Predictor::from_export(dir)
            .map_err(|e| invalid(format!("model {}: {e}", dir.display())))?
            .with_blend(opts.blend);
        let out = predictor.config().out_channels;
        if out != REGIONS.len() {
            return Err(invalid(format!(
                "model {}: {out} output channel(s); segmenting needs the 3 region channels (TC, WT, ET) of a BraTS model",
                dir.display()
            )));
        }
        let pre_path = dir.join(PREPROCESSING_FILE);
        let pre = Preprocessing::read(&pre_path).map_err(|e| {
            invalid(format!(
                "{e} (an export written by the export-checkpoint step has it)"
            ))
        })?;
        let at = |e: String| invalid(format!("{}: {e}", pre_path.display()));
        let (chain_json, crop) = deterministic_chain(&pre.transforms).map_err(at)?;
        let conv = convention(&pre.labels).map_err(at)?;
        let chain = Chain::build(&chain_json, &pre.labels).map_err(at)?;
        let div = predictor.config().size_divisor();
        let roi = match (opts.roi, crop) {
            (Some(r), _) => r,
            (None, Some(c)) => c.map(|v| v.div_ceil(div) * div),
            (None, None) => [div * 8, div * 8, div * 4],
        };
        if let Some(bad) = roi.iter().find(|r| *r % div != 0 || **r == 0) {
            return Err(invalid(format!(
                "roi {roi:?}: {bad} is not a positive multiple of {div} (the network's size divisor)"
            )));
        }
        Ok(Segmenter {
            predictor,
            chain,
            conv,
            roi,
            opts,
        })
    }

    pub fn roi(&self) -> [usize; 3] {
        self.roi
    }

    pub fn convention(&self) -> LabelConvention {
        self.conv
    }

    /// The grid (shape, affine) of a NIfTI image, read before any inference so a label can be
    /// checked against it first.
    pub fn input_grid(image: &Path) -> Result<([usize; 3], Affine), SegmentError> {
        let (dims, affine) =
            wf_imaging::nifti::read_grid(image).map_err(|e| invalid(format!("{e}")))?;
        if dims.len() < 3 {
            return Err(invalid(format!(
                "{}: a {}-D image; expected 3-D or 4-D",
                image.display(),
                dims.len()
            )));
        }
        Ok(([dims[0], dims[1], dims[2]], affine))
    }

    /// Segments one image (`id` names it in errors) whose grid, from [`Segmenter::input_grid`],
    /// is `grid`: callers read it first to check a label against it.
    pub fn segment(
        &self,
        id: &str,
        image: &Path,
        grid: ([usize; 3], Affine),
    ) -> Result<Segmentation, SegmentError> {
        let (in_shape, in_affine) = grid;
        let src = CaseSource {
            id: id.to_string(),
            image: image.to_path_buf(),
            label: None,
        };
        let mut case = self
            .chain
            .run_prefix(&src)
            .map_err(|e| invalid(e.to_string()))?;
        case.image.to_c_order();
        let want = self.predictor.config().in_channels;
        if case.image.channels() != want {
            return Err(invalid(format!(
                "{}: the image has {} channel(s) after preprocessing; the model expects {want}",
                image.display(),
                case.image.channels()
            )));
        }
        let (roi, o) = (self.roi, &self.opts);
        // Refused as an invalid argument, before anything is allocated for it.
        self.predictor
            .check_memory(case.image.shape, roi, o.overlap, o.sw_batch_size)
            .map_err(|e| invalid(format!("roi {}: {e}", roi.map(|r| r.to_string()).join(","))))?;
        let logits = self
            .predictor
            .logits_of(
                &case.image.data,
                case.image.shape,
                roi,
                o.overlap,
                o.sw_batch_size,
            )
            .map_err(|e| SegmentError::Failed(format!("inference: {e}")))?;
        drop(case.image);
        let regions = wf_imaging::resample::regions_on_input(
            &logits,
            &case.affine,
            in_shape,
            &in_affine,
            o.back,
        )
        .map_err(|e| invalid(format!("{}: {e}", image.display())))?;
        Ok(Segmentation {
            regions,
            shape: in_shape,
            affine: in_affine,
        })
    }
}

impl Segmentation {
    /// One label value per voxel in the convention (the innermost region's class), C order.
    pub fn label_values(&self, conv: LabelConvention) -> Vec<u8> {
        self.regions.iter().map(|&b| conv.value_of(b)).collect()
    }

    /// The region bits of [`Segmentation::label_values`]: what is scored.
    pub fn nested_regions(&self, conv: LabelConvention) -> Vec<u8> {
        self.regions
            .iter()
            .map(|&b| conv.regions(f32::from(conv.value_of(b))).unwrap_or(0))
            .collect()
    }
}

/// The regions scored, in the order they are reported.
pub const REGIONS: [(&str, u8); 3] = [
    ("TC", wf_imaging::transforms::TC),
    ("WT", wf_imaging::transforms::WT),
    ("ET", wf_imaging::transforms::ET),
];

/// A reference label on an image's grid, as region bits in C order. `what` names the label and
/// `image` the image in errors, `case` the case. Refused when its grid is not the image's, a value
/// is not finite, or a value is not a label of the convention (for `brats-monai`, whose conversion
/// counts unknown values as background, anything but 0, 1, 2, 4 is refused here too: a score over
/// silently dropped labels would mislead).
pub fn read_label(
    path: &Path,
    what: &str,
    image: &str,
    case: &str,
    shape: [usize; 3],
    affine: &Affine,
    conv: LabelConvention,
) -> Result<Vec<u8>, String> {
    let nifti = wf_imaging::nifti::read_nifti(path).map_err(|e| format!("{what}: {e}"))?;
    let label = wf_imaging::transforms::load::label_from_nifti(nifti, case, shape, affine)
        .map_err(|e| match e {
            wf_imaging::ImagingError::Mismatch { .. } => {
                format!("{what} is not on the grid of {image}: {e}")
            }
            other => format!("{what}: {other}"),
        })?;
    let wf_imaging::transforms::LabelData::Raw(raw) = &label.data else {
        return Err(format!("{what}: not raw label values"));
    };
    let strict = match conv {
        LabelConvention::BratsMonai => LabelConvention::Brats,
        other => other,
    };
    let [nx, ny, nz] = shape;
    let mut out = vec![0u8; raw.len()];
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                // NIfTI's order is X fastest.
                let v = raw[(z * ny + y) * nx + x];
                out[(x * ny + y) * nz + z] = strict.regions(v).ok_or_else(|| {
                    format!(
                        "{what}: value {v} at voxel ({x}, {y}, {z}) is not a label of the `{}` convention",
                        conv.name()
                    )
                })?;
            }
        }
    }
    Ok(out)
}

/// Dice and HD95 of each region of [`REGIONS`], prediction against label (region bits, C order).
pub fn score_regions(
    pred: &[u8],
    label: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<Vec<(&'static str, RegionScore)>, wf_imaging::ImagingError> {
    REGIONS
        .iter()
        .map(|&(name, bit)| {
            let p: Vec<bool> = pred.iter().map(|v| v & bit != 0).collect();
            let l: Vec<bool> = label.iter().map(|v| v & bit != 0).collect();
            Ok((name, wf_imaging::metrics::score(&p, &l, shape, spacing)?))
        })
        .collect()
}

/// Why a region's score is NaN, in words; `None` when both sides have voxels.
pub fn empty_side(s: &RegionScore) -> Option<&'static str> {
    match (s.pred_voxels, s.label_voxels) {
        (0, 0) => Some("both empty"),
        (0, _) => Some("empty prediction"),
        (_, 0) => Some("empty label"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wf_imaging::transforms::{ET, TC, WT};

    #[test]
    fn only_deterministic_transforms_are_replayed() {
        let t = serde_json::json!([
            "load", "ensure-channel-first", "convert-labels",
            {"rand-spatial-crop": {"roi": [40, 40, 20]}},
            {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
            {"rand-flip": {"prob": 0.5, "axis": 0}}
        ]);
        let (keep, crop) = deterministic_chain(&t).unwrap();
        assert_eq!(crop, Some([40, 40, 20]));
        let names: Vec<String> = keep
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| !n.contains("rand") && !n.contains("convert"))
        );
    }

    #[test]
    fn regions_are_scored_from_their_own_bit() {
        // 1 x 1 x 4: the label has WT on all four voxels, TC on two, no ET; the prediction WT on
        // two, TC on the same two, ET on one.
        let label = [WT | TC, WT | TC, WT, WT];
        let pred = [WT | TC | ET, WT | TC, 0, 0];
        let s = score_regions(&pred, &label, [1, 1, 4], [1.0, 1.0, 2.0]).unwrap();
        let names: Vec<&str> = s.iter().map(|r| r.0).collect();
        assert_eq!(names, ["TC", "WT", "ET"]);
        assert_eq!((s[0].1.dice, s[0].1.hd95), (1.0, 0.0));
        // WT: 2 * 2 / (2 + 4). Label → prediction: 0, 0, 2, 4 mm, whose 95th percentile is
        // 2 + 0.85 * 2; prediction → label: 0, 0.
        assert!((s[1].1.dice - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[1].1.hd95 - 3.7).abs() < 1e-12, "{:?}", s[1].1);
        assert!(s[2].1.dice.is_nan() && s[2].1.hd95.is_nan());
        assert_eq!((s[2].1.pred_voxels, s[2].1.label_voxels), (1, 0));
        assert_eq!(empty_side(&s[2].1), Some("empty label"));
        assert_eq!(empty_side(&s[0].1), None);
    }

    /// A label is refused with the reason: another grid, a value that is not finite, a value
    /// outside the convention (brats-monai too), each naming the label.
    #[test]
    fn labels_are_refused_for_what_is_wrong_with_them() {
        let t = tempfile::tempdir().unwrap();
        let affine = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let write = |name: &str, data: &[f32], affine: &Affine| {
            let path = t.path().join(name);
            wf_imaging::nifti::write_nifti(
                &path,
                &[2, 2, 2],
                wf_imaging::nifti::NiftiData::F32(data),
                affine,
            )
            .unwrap();
            path
        };
        let read = |path: &Path, conv| {
            read_label(
                path,
                "the label",
                "the image",
                "C1",
                [2, 2, 2],
                &affine,
                conv,
            )
        };
        let ok = write("ok.nii", &[0.0, 1.0, 2.0, 4.0, 0.0, 0.0, 0.0, 1.0], &affine);
        let bits = read(&ok, LabelConvention::Brats).unwrap();
        // NIfTI order is X fastest: voxel (1, 0, 0) is the second value (1: TC + WT).
        assert_eq!(bits[4], TC | WT);
        // (1, 1, 0): the fourth value (4: every region); (0, 1, 0): the third (2: WT).
        assert_eq!(bits[6], WT | TC | ET);
        assert_eq!(bits[2], WT);

        let mut moved = affine;
        moved[0][3] = 3.0;
        let e = read(&write("moved.nii", &[0.0; 8], &moved), LabelConvention::Msd).unwrap_err();
        assert!(
            e.starts_with("the label is not on the grid of the image: "),
            "{e}"
        );

        let nan = write(
            "nan.nii",
            &[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            &affine,
        );
        let e = read(&nan, LabelConvention::Msd).unwrap_err();
        assert!(e.starts_with("the label: ") && !e.contains("grid"), "{e}");

        let three = write(
            "three.nii",
            &[0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            &affine,
        );
        let e = read(&three, LabelConvention::BratsMonai).unwrap_err();
        assert_eq!(
            e,
            "the label: value 3 at voxel (1, 0, 0) is not a label of the `brats-monai` convention"
        );
        assert!(read(&three, LabelConvention::Msd).is_ok());
    }

    #[test]
    fn conventions_parse_by_name() {
        assert_eq!(convention("msd").unwrap(), LabelConvention::Msd);
        assert_eq!(
            convention("brats-monai").unwrap(),
            LabelConvention::BratsMonai
        );
        assert!(convention("nope").is_err());
    }
}
