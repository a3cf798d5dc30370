//! `wf predict --model EXPORT_DIR --image IMG --out SEG.nii.gz`: segments one image with an exported
//! model. Replays the deterministic part of the training chain recorded in the export's
//! `preprocessing.json` (load, channel-first, spacing, orientation, normalize-intensity; random
//! transforms and convert-labels are left out), runs MONAI-style sliding-window inference, thresholds
//! sigmoid > 0.5 per region (TC, WT, ET), turns regions into label values of the training convention
//! (MSD: 1 edema, 2 non-enhancing core, 3 enhancing; BraTS: 2, 1, 4), resamples them back onto the
//! input image's grid (nearest neighbour through the affines) and writes a uint8 NIfTI with the input's
//! affine.

use crate::error::{CliError, CliResult, Exit};
use std::path::{Path, PathBuf};
use std::time::Instant;
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
    Ok(())
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
