//! `wf predict --model EXPORT_DIR --image IMG --out SEG.nii.gz`: segments one image with an exported
//! model. Replays the deterministic part of the training chain recorded in the export's
//! `preprocessing.json` (load, channel-first, spacing, orientation, normalize-intensity; random
//! transforms and convert-labels are left out), runs MONAI-style sliding-window inference, thresholds
//! sigmoid > 0.5 per region (TC, WT, ET), turns regions into label values of the training convention
//! (MSD: 1 edema, 2 non-enhancing core, 3 enhancing; BraTS: 2, 1, 4), resamples them back onto the
//! input image's grid (nearest neighbour through the affines) and writes a uint8 NIfTI with the input's
//! affine.
//!
//! With `--label LABEL`, the segmentation is then scored against that label on the input grid, per
//! region of the convention (TC, WT, ET): Dice and HD95 in mm (`wf_imaging::metrics`, MONAI's
//! semantics), as a table on stdout, or as JSON with `--json`. The label must lie on the image's grid
//! (shape and affine); another grid is refused before inference.

use crate::error::{CliError, CliResult, Exit};
use std::path::{Path, PathBuf};
use std::time::Instant;
use wf_imaging::metrics::RegionScore;
use wf_imaging::samples::{PREPROCESSING_FILE, Preprocessing};
use wf_imaging::transforms::{CaseSource, LabelConvention};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// An export directory (export-checkpoint's output: model.safetensors, config.json,
    /// preprocessing.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The image to segment (NIfTI, 4 modalities on the 4th axis, as in MSD Task01).
    #[arg(long)]
    pub image: PathBuf,
    /// Where to write the segmentation (.nii or .nii.gz).
    #[arg(long)]
    pub out: PathBuf,
    /// Sliding-window size X,Y,Z (default: the training crop, rounded up to the network's size
    /// divisor).
    #[arg(long, value_parser = crate::cli::parse_shape)]
    pub roi: Option<[usize; 3]>,
    /// Fraction by which neighbouring windows overlap (MONAI's `overlap`).
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f64,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 1)]
    pub sw_batch_size: usize,
    /// A reference segmentation on the image's grid (label values of the model's convention):
    /// prints Dice and HD95 (mm) of each region (TC, WT, ET) of the prediction against it.
    #[arg(long)]
    pub label: Option<PathBuf>,
    /// Print the scores of `--label` as JSON on stdout instead of a table.
    #[arg(long, requires = "label")]
    pub json: bool,
}

pub fn main(args: &PredictArgs) -> CliResult {
    predict(args).map(|()| Exit::Ok).map_err(|e| CliError {
        message: format!("error: {}", e.message),
        ..e
    })
}

fn invalid(msg: impl Into<String>) -> CliError {
    CliError::invalid(msg)
}

/// Refuses an output name that is not NIfTI's: the segmentation is written as NIfTI only.
fn check_out(out: &Path) -> CliResult<()> {
    if out.is_dir() {
        return Err(invalid(format!(
            "--out {}: is a directory; name the file to write, e.g. {}",
            out.display(),
            out.join("seg.nii.gz").display()
        )));
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Ok(());
    }
    Err(invalid(format!(
        "--out {}: the segmentation is written as NIfTI; name it .nii or .nii.gz",
        out.display()
    )))
}

/// The label convention recorded in preprocessing.json (`msd`, `brats`, `brats-monai`).
fn convention(labels: &str) -> Result<LabelConvention, String> {
    serde_json::from_value(serde_json::Value::String(labels.to_string()))
        .map_err(|_| format!("unknown label convention `{labels}`"))
}

/// Each class of the convention with its voxel count: `1 edema: 120, 2 non-enhancing tumour: 0, ...`.
fn class_counts(conv: LabelConvention, seg: &[u8]) -> String {
    let mut counts = [0usize; 256];
    for &v in seg {
        counts[v as usize] += 1;
    }
    conv.classes()
        .iter()
        .map(|&(value, name, _)| format!("{value} {name}: {}", counts[value as usize]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The deterministic transforms of a recorded chain, and the training crop size if there was one.
fn deterministic_chain(
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

fn predict(args: &PredictArgs) -> CliResult<()> {
    check_out(&args.out)?;
    if !(0.0..1.0).contains(&args.overlap) {
        return Err(invalid(format!(
            "--overlap {} is not in [0, 1)",
            args.overlap
        )));
    }
    if args.sw_batch_size == 0 {
        return Err(invalid("--sw-batch-size must be >= 1"));
    }
    let t0 = Instant::now();
    let predictor = wf_trainer::infer::Predictor::from_export(&args.model)
        .map_err(|e| invalid(format!("model {}: {e}", args.model.display())))?;
    let pre_path = args.model.join(PREPROCESSING_FILE);
    let pre = Preprocessing::read(&pre_path).map_err(|e| {
        invalid(format!(
            "{e} (an export written by the export-checkpoint step has it)"
        ))
    })?;
    let (chain_json, crop) = deterministic_chain(&pre.transforms)
        .map_err(|e| invalid(format!("{}: {e}", pre_path.display())))?;
    let labels = pre.labels;
    let conv = convention(&labels).map_err(|e| invalid(format!("{}: {e}", pre_path.display())))?;
    let chain = wf_imaging::transforms::Chain::build(&chain_json, &labels)
        .map_err(|e| invalid(format!("{}: {e}", pre_path.display())))?;
    let div = predictor.config().size_divisor();
    let roi = match (args.roi, crop) {
        (Some(r), _) => r,
        (None, Some(c)) => c.map(|v| v.div_ceil(div) * div),
        (None, None) => [div * 8, div * 8, div * 4],
    };
    if let Some(bad) = roi.iter().find(|r| *r % div != 0) {
        return Err(invalid(format!(
            "--roi {roi:?}: {bad} is not a multiple of {div} (the network's size divisor)"
        )));
    }

    // The input grid, to map the segmentation back onto.
    let input = wf_imaging::nifti::read_nifti(&args.image).map_err(|e| invalid(format!("{e}")))?;
    if input.dims.len() < 3 {
        return Err(invalid(format!(
            "{}: a {}-D image; expected 3-D or 4-D",
            args.image.display(),
            input.dims.len()
        )));
    }
    let in_shape = [input.dims[0], input.dims[1], input.dims[2]];
    let in_affine = input.affine;
    drop(input);
    // Read and checked before inference, so a wrong label costs nothing.
    let reference = match &args.label {
        Some(path) => Some(read_label(path, &args.image, in_shape, &in_affine, conv)?),
        None => None,
    };

    let id = args
        .image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("case")
        .trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string();
    let src = CaseSource {
        id,
        image: args.image.clone(),
        label: None,
    };
    let mut case = chain.run_prefix(&src).map_err(|e| invalid(e.to_string()))?;
    case.image.to_c_order();
    let want = predictor.config().in_channels;
    if case.image.channels() != want {
        return Err(invalid(format!(
            "{}: the image has {} channel(s) after preprocessing; the model expects {want}",
            args.image.display(),
            case.image.channels()
        )));
    }
    // Refused here, as an invalid argument, before anything is allocated for it.
    predictor
        .check_memory(case.image.shape, roi, args.overlap, args.sw_batch_size)
        .map_err(|e| {
            invalid(format!(
                "--roi {}: {e}",
                roi.map(|r| r.to_string()).join(",")
            ))
        })?;
    let regions = predictor
        .regions_of(
            &case.image.data,
            case.image.shape,
            roi,
            args.overlap,
            args.sw_batch_size,
        )
        .map_err(|e| CliError::failed(format!("inference: {e}")))?;
    let values: Vec<u8> = regions.iter().map(|&b| conv.value_of(b)).collect();
    let seg = wf_imaging::resample::resample_nearest_u8(
        &values,
        case.image.spatial(),
        &case.affine,
        in_shape,
        &in_affine,
    )
    .ok_or_else(|| invalid("the preprocessed image has a singular affine"))?;
    let fortran = wf_imaging::transforms::load::c_to_fortran(&seg, in_shape, 1);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
    }
    wf_imaging::nifti::write_nifti(
        &args.out,
        &in_shape,
        wf_imaging::nifti::NiftiData::U8(&fortran),
        &in_affine,
    )
    .map_err(|e| CliError::failed(e.to_string()))?;
    eprintln!(
        "{}: {:?} voxels, roi {roi:?}, labels ({labels}) {}; wrote {} in {:.1} s",
        args.image.display(),
        in_shape,
        class_counts(conv, &seg),
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if let (Some(label), Some(path)) = (reference, &args.label) {
        let pred: Vec<u8> = seg
            .iter()
            .map(|&v| conv.regions(f32::from(v)).unwrap_or(0))
            .collect();
        let spacing = voxel_size(&in_affine);
        let scores = score_regions(&pred, &label, in_shape, spacing)
            .map_err(|e| CliError::failed(format!("scoring against {}: {e}", path.display())))?;
        if args.json {
            let doc = scores_json(&args.image, path, &labels, spacing, &scores);
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("scores serialize")
            );
        } else {
            print!("{}", scores_table(&scores));
        }
    }
    Ok(())
}

/// The regions scored by `--label`, in the order they are printed.
const REGIONS: [(&str, u8); 3] = [
    ("TC", wf_imaging::transforms::TC),
    ("WT", wf_imaging::transforms::WT),
    ("ET", wf_imaging::transforms::ET),
];

/// `--label`: region bits in C order on the image's grid; refused (exit 2) when its grid is not the
/// image's or a value is not part of the convention.
fn read_label(
    path: &Path,
    image: &Path,
    shape: [usize; 3],
    affine: &[[f64; 4]; 4],
    conv: LabelConvention,
) -> CliResult<Vec<u8>> {
    let nifti = wf_imaging::nifti::read_nifti(path)
        .map_err(|e| invalid(format!("--label {}: {e}", path.display())))?;
    let case = format!(
        "--label {} against --image {}",
        path.display(),
        image.display()
    );
    let label = wf_imaging::transforms::load::label_from_nifti(nifti, &case, shape, affine)
        .map_err(|e| {
            invalid(format!(
                "--label {} is not on the grid of --image {}: {e}",
                path.display(),
                image.display()
            ))
        })?;
    let wf_imaging::transforms::LabelData::Raw(raw) = &label.data else {
        return Err(invalid(format!(
            "--label {}: not raw label values",
            path.display()
        )));
    };
    let [nx, ny, nz] = shape;
    let mut out = vec![0u8; raw.len()];
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                // NIfTI's order is X fastest.
                let v = raw[(z * ny + y) * nx + x];
                out[(x * ny + y) * nz + z] = conv.regions(v).ok_or_else(|| {
                    invalid(format!(
                        "--label {}: value {v} at voxel ({x}, {y}, {z}) is not a label of the `{}` convention",
                        path.display(),
                        conv.name()
                    ))
                })?;
            }
        }
    }
    Ok(out)
}

/// The voxel size in mm along each axis of a grid: the lengths of its affine's columns.
fn voxel_size(affine: &[[f64; 4]; 4]) -> [f64; 3] {
    std::array::from_fn(|j| {
        (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt()
    })
}

/// Dice and HD95 of each region of `REGIONS`, prediction against label (region bits, C order).
fn score_regions(
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
fn empty_side(s: &RegionScore) -> Option<&'static str> {
    match (s.pred_voxels, s.label_voxels) {
        (0, 0) => Some("both empty"),
        (0, _) => Some("empty prediction"),
        (_, 0) => Some("empty label"),
        _ => None,
    }
}

/// A finite score as a number, anything else (an empty region's NaN) as `null`.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn scores_json(
    image: &Path,
    label: &Path,
    labels: &str,
    spacing: [f64; 3],
    scores: &[(&str, RegionScore)],
) -> serde_json::Value {
    let regions: Vec<_> = scores
        .iter()
        .map(|(name, s)| {
            serde_json::json!({
                "region": name,
                "dice": finite(s.dice),
                "hd95_mm": finite(s.hd95),
                "pred_voxels": s.pred_voxels,
                "label_voxels": s.label_voxels,
                "empty": empty_side(s),
            })
        })
        .collect();
    serde_json::json!({
        "image": image.display().to_string(),
        "label": label.display().to_string(),
        "labels": labels,
        "spacing_mm": spacing,
        "regions": regions,
    })
}

/// One line per region: Dice to 4 decimals, HD95 to 2 (mm), `n/a` and the reason when a side is
/// empty.
fn scores_table(scores: &[(&str, RegionScore)]) -> String {
    let num = |v: f64, places: usize| {
        if v.is_finite() {
            format!("{v:.places$}")
        } else {
            "n/a".to_string()
        }
    };
    let mut out = format!(
        "{:<6} {:>7} {:>10} {:>11} {:>12}\n",
        "region", "dice", "hd95_mm", "pred_voxels", "label_voxels"
    );
    for (name, s) in scores {
        let line = format!(
            "{name:<6} {:>7} {:>10} {:>11} {:>12}",
            num(s.dice, 4),
            num(s.hd95, 2),
            s.pred_voxels,
            s.label_voxels
        );
        match empty_side(s) {
            Some(why) => out.push_str(&format!("{line}  ({why})\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wf_imaging::transforms::{ET, TC, WT};

    #[test]
    fn regions_map_back_to_each_convention() {
        let (msd, brats) = (convention("msd").unwrap(), convention("brats").unwrap());
        assert_eq!(msd.value_of(0), 0);
        assert_eq!(msd.value_of(WT), 1);
        assert_eq!(msd.value_of(WT | TC), 2);
        assert_eq!(msd.value_of(WT | TC | ET), 3);
        assert_eq!(brats.value_of(WT), 2);
        assert_eq!(brats.value_of(WT | TC), 1);
        assert_eq!(brats.value_of(WT | TC | ET), 4);
        assert_eq!(
            convention("brats-monai").unwrap(),
            LabelConvention::BratsMonai
        );
        assert!(convention("nope").is_err());
    }

    #[test]
    fn counts_name_only_the_conventions_classes() {
        let seg = [0, 1, 1, 2, 4, 4, 4];
        assert_eq!(
            class_counts(convention("brats").unwrap(), &seg),
            "1 necrotic/non-enhancing core: 2, 2 edema: 1, 4 enhancing tumour: 3"
        );
        assert_eq!(
            class_counts(convention("msd").unwrap(), &[0, 3, 3]),
            "1 edema: 0, 2 non-enhancing tumour: 0, 3 enhancing tumour: 2"
        );
    }

    #[test]
    fn voxel_size_is_the_length_of_each_affine_column() {
        // A rotation about Z by 90 degrees with voxels of 2 x 3 x 0.5 mm.
        let a = [
            [0.0, -3.0, 0.0, 10.0],
            [2.0, 0.0, 0.0, -4.0],
            [0.0, 0.0, 0.5, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(voxel_size(&a), [2.0, 3.0, 0.5]);
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

        let table = scores_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with("TC") && lines[1].contains("1.0000"),
            "{table}"
        );
        assert!(
            lines[2].contains("0.6667") && !lines[2].contains("("),
            "{table}"
        );
        assert!(
            lines[3].contains("n/a") && lines[3].ends_with("(empty label)"),
            "{table}"
        );
        let doc = scores_json(Path::new("i"), Path::new("l"), "msd", [1.0, 1.0, 2.0], &s);
        assert_eq!(doc["regions"][2]["dice"], serde_json::Value::Null);
        assert_eq!(doc["regions"][2]["empty"], "empty label");
        assert_eq!(doc["regions"][0]["dice"], 1.0);
        assert_eq!(doc["regions"][0]["empty"], serde_json::Value::Null);
    }

    #[test]
    fn out_must_be_nifti() {
        for ok in ["seg.nii.gz", "out/seg.nii", "a.b.nii.gz"] {
            assert!(check_out(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in ["x.png", "seg.nii.gz.png", "seg", "seg.gz", "dir/"] {
            let e = check_out(Path::new(bad)).unwrap_err();
            assert_eq!(e.exit, Exit::Invalid, "{bad}");
            assert!(e.message.contains(".nii or .nii.gz"), "{}", e.message);
        }
    }

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
}
