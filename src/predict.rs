//! `wf predict --model EXPORT_DIR --image IMG --out SEG.nii.gz`: segments one image with an exported
//! model. Replays the deterministic part of the training chain recorded in the export's
//! `preprocessing.json` (load, channel-first, spacing, orientation, normalize-intensity; random
//! transforms and convert-labels are left out), runs MONAI-style sliding-window inference,
//! puts the region logits (TC, WT, ET) back onto the input image's grid as MONAI's BraTS tutorial does
//! (trilinear through the inverse of spacing and orientation, then sigmoid >= 0.5; `--resample
//! nearest` thresholds first and takes the nearest voxel), turns regions into label values of the
//! training convention (MSD: 1 edema, 2 non-enhancing core, 3 enhancing; BraTS: 2, 1, 4) and writes
//! a uint8 NIfTI with the input's affine. The work is `wf_trainer::segment`'s, shared with the
//! evaluate step.
//!
//! With `--label LABEL`, the region channels are then scored against that label on the input grid
//! (TC, WT, ET): Dice and HD95 in mm (`wf_imaging::metrics`, MONAI's
//! semantics), as a table on stdout, or as JSON with `--json`. The label must lie on the image's grid
//! (shape and affine); another grid is refused before inference.

use crate::error::{CliError, CliResult, Exit};
use std::path::{Path, PathBuf};
use std::time::Instant;
use wf_imaging::metrics::RegionScore;
use wf_imaging::resample::BackToInput;
use wf_imaging::transforms::LabelConvention;
use wf_trainer::infer::Blend;
use wf_trainer::segment::{
    SegmentError, SegmentOptions, Segmenter, empty_side, read_label, score_regions,
};

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
    /// How overlapping windows are blended (MONAI's `mode`): equal weights, or a Gaussian
    /// centred on each window (sigma 0.125 of its size).
    #[arg(long, value_enum, default_value = "constant")]
    pub blend: BlendArg,
    /// A reference segmentation on the image's grid (label values of the model's convention):
    /// prints Dice and HD95 (mm) of each region (TC, WT, ET) of the prediction against it.
    #[arg(long)]
    pub label: Option<PathBuf>,
    /// Print the scores of `--label` as JSON on stdout instead of a table.
    #[arg(long, requires = "label")]
    pub json: bool,
    /// How the prediction goes back onto the image's grid: `linear` resamples the logits
    /// trilinearly and thresholds after (MONAI's BraTS tutorial, `Invertd`); `nearest` thresholds
    /// first and takes the nearest preprocessed voxel (a point halfway between two takes the
    /// larger index).
    #[arg(long, value_enum, default_value = "linear")]
    pub resample: Resample,
}

/// `--blend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BlendArg {
    Constant,
    Gaussian,
}

impl BlendArg {
    fn blend(self) -> Blend {
        match self {
            BlendArg::Constant => Blend::Constant,
            BlendArg::Gaussian => Blend::Gaussian,
        }
    }
}

/// `--resample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resample {
    Linear,
    Nearest,
}

impl Resample {
    fn name(self) -> &'static str {
        self.back().name()
    }
    fn back(self) -> BackToInput {
        match self {
            Resample::Linear => BackToInput::Linear,
            Resample::Nearest => BackToInput::Nearest,
        }
    }
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

fn predict(args: &PredictArgs) -> CliResult<()> {
    check_out(&args.out)?;
    let t0 = Instant::now();
    let opts = SegmentOptions {
        roi: args.roi,
        overlap: args.overlap,
        sw_batch_size: args.sw_batch_size,
        blend: args.blend.blend(),
        back: args.resample.back(),
    };
    let roi_arg = |m: String| {
        if args.roi.is_some() {
            invalid(format!("--{m}"))
        } else {
            invalid(format!(
                "the default window (the training crop, rounded up): {m}"
            ))
        }
    };
    let segmenter = Segmenter::from_export(&args.model, opts).map_err(|e| match e {
        SegmentError::Invalid(m) if m.starts_with("roi ") => roi_arg(m),
        SegmentError::Invalid(m) if m.starts_with("overlap ") => invalid(format!("--{m}")),
        SegmentError::Invalid(m) if m.starts_with("sw_batch_size ") => {
            invalid(format!("--{}", m.replace("sw_batch_size", "sw-batch-size")))
        }
        other => segment_error(other),
    })?;
    let conv = segmenter.convention();
    let roi = segmenter.roi();

    let id = args
        .image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("case")
        .trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string();
    // The input grid, checked with the label before inference, so a wrong label costs nothing.
    let (in_shape, in_affine) = Segmenter::input_grid(&args.image).map_err(segment_error)?;
    let reference = match &args.label {
        Some(path) => {
            let what = format!("--label {}", path.display());
            let image = format!("--image {}", args.image.display());
            let label = read_label(path, &what, &image, &id, in_shape, &in_affine, conv)
                .map_err(invalid)?;
            Some(label)
        }
        None => None,
    };

    let grid = (in_shape, in_affine);
    let seg = segmenter
        .segment(&id, &args.image, grid)
        .map_err(|e| match e {
            SegmentError::Invalid(m) if m.starts_with("roi ") => roi_arg(m),
            other => segment_error(other),
        })?;
    let values = seg.label_values(conv);
    let fortran = wf_imaging::transforms::load::c_to_fortran(&values, in_shape, 1);
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
        "{}: {:?} voxels, roi {roi:?}, {} back onto the input grid, labels ({}) {}; wrote {} in {:.1} s",
        args.image.display(),
        in_shape,
        args.resample.name(),
        conv.name(),
        class_counts(conv, &values),
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if let (Some(label), Some(path)) = (reference, &args.label) {
        let spacing = wf_imaging::transforms::spacing_of(&in_affine);
        let scores = score_regions(&seg.nested_regions(conv), &label, in_shape, spacing)
            .map_err(|e| CliError::failed(format!("scoring against {}: {e}", path.display())))?;
        if args.json {
            let doc = scores_json(&args.image, path, conv.name(), spacing, &scores);
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

fn segment_error(e: SegmentError) -> CliError {
    match e {
        SegmentError::Invalid(m) => invalid(m),
        SegmentError::Failed(m) => CliError::failed(m),
    }
}

fn scores_json(
    image: &Path,
    label: &Path,
    labels: &str,
    spacing: [f64; 3],
    scores: &[(&str, RegionScore)],
) -> serde_json::Value {
    // The evaluate step's per-region record, so both report a case in the same words.
    let regions: Vec<_> = scores
        .iter()
        .map(|(name, s)| wf_trainer::evaluation::RegionResult::new(name, s))
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
        let (msd, brats) = (LabelConvention::Msd, LabelConvention::Brats);
        assert_eq!(msd.value_of(0), 0);
        assert_eq!(msd.value_of(WT), 1);
        assert_eq!(msd.value_of(WT | TC), 2);
        assert_eq!(msd.value_of(WT | TC | ET), 3);
        assert_eq!(brats.value_of(WT), 2);
        assert_eq!(brats.value_of(WT | TC), 1);
        assert_eq!(brats.value_of(WT | TC | ET), 4);
    }

    #[test]
    fn counts_name_only_the_conventions_classes() {
        let seg = [0, 1, 1, 2, 4, 4, 4];
        assert_eq!(
            class_counts(LabelConvention::Brats, &seg),
            "1 necrotic/non-enhancing core: 2, 2 edema: 1, 4 enhancing tumour: 3"
        );
        assert_eq!(
            class_counts(LabelConvention::Msd, &[0, 3, 3]),
            "1 edema: 0, 2 non-enhancing tumour: 0, 3 enhancing tumour: 2"
        );
    }

    #[test]
    fn scores_print_as_a_table_and_json() {
        // 1 x 1 x 4: the label has WT on all four voxels, TC on two, no ET; the prediction WT on
        // two, TC on the same two, ET on one.
        let label = [WT | TC, WT | TC, WT, WT];
        let pred = [WT | TC | ET, WT | TC, 0, 0];
        // The scores themselves are wf_trainer::segment's (tested there): TC 1.0, WT 2/3, ET
        // NaN with an empty label.
        let s = score_regions(&pred, &label, [1, 1, 4], [1.0, 1.0, 2.0]).unwrap();
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
}
