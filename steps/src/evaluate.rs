//! The `evaluate` step: Export + Dataset → Report. Segments whole held-out volumes with the export,
//! exactly as `wf predict` does (`wf_trainer::segment`: the deterministic preprocessing, sliding-window
//! inference, MONAI's `Invertd` post-processing back onto each image's grid), and scores each case's
//! TC, WT and ET against its label on that grid: Dice and HD95 in mm from the image's spacing
//! (`wf_imaging::metrics`, MONAI 1.6.1's semantics). The Report (`wf_trainer::evaluation`) holds
//! `report.json`, `cases.csv` and `boxplot.png`; `wf run` prints its table, `wf report` shows it.
//!
//! Which cases: `held-out` (the default) takes the validation cases the export's training run
//! recorded in `train.json` (chosen by case, never trained on); `all` every labelled case of the
//! Dataset; or a list of case ids.

use std::path::Path;

use serde::Deserialize;
use serde_json::json;
use wf_engine::{
    ArtifactType, CheckContext, Count, Diagnostics, ParamSpec, ParamType, Params, RemoteTask,
    RunContext, Slots, Step, StepError, Unit, plural,
};
use wf_imaging::MsdDataset;
use wf_imaging::resample::BackToInput;
use wf_trainer::evaluation::{
    BOXPLOT_FILE, CSV_FILE, CaseResult, EvalReport, REPORT_FILE, REPORT_FORMAT, RegionResult,
    summarize,
};
use wf_trainer::infer::Blend;
use wf_trainer::record::TrainRecord;
use wf_trainer::segment::{SegmentError, SegmentOptions, Segmenter, read_label, score_regions};

pub struct Evaluate;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "cases",
        ParamType::Any,
        "\"held-out\"",
        "which labelled cases of the Dataset to evaluate: `held-out` (the validation cases the export's training recorded: never trained on), `all`, or a list of case ids",
    )
    .shape("`held-out`, `all`, or a list of case ids", || {
        json!({ "anyOf": [
            { "enum": ["held-out", "all"] },
            { "type": "array", "items": { "type": "string" }, "minItems": 1 }
        ] })
    }),
    ParamSpec::optional(
        "roi",
        ParamType::Any,
        "null",
        "sliding-window size [X, Y, Z], multiples of the network's size divisor (16 for the seed's UNet); null: the training crop rounded up to multiples of it, or 8 × 8 × 4 of it without a crop",
    )
    .shape("[X, Y, Z] or null", || {
        json!({ "anyOf": [
            { "type": "null" },
            { "type": "array", "items": { "type": "integer", "minimum": 1 }, "minItems": 3, "maxItems": 3 }
        ] })
    }),
    ParamSpec::optional(
        "overlap",
        ParamType::Float,
        "0.5",
        "fraction by which neighbouring windows overlap (MONAI's `overlap`)",
    )
    .shape("number in [0, 1)", || {
        json!({ "type": "number", "minimum": 0, "exclusiveMaximum": 1 })
    }),
    ParamSpec::optional(
        "sw_batch_size",
        ParamType::Int { min: 1, max: 64 },
        "1",
        "windows per forward pass",
    ),
    ParamSpec::optional(
        "blend",
        ParamType::Enum(&["constant", "gaussian"]),
        "\"constant\"",
        "how overlapping windows are blended (MONAI's `mode`): equal weights, or a Gaussian centred on each window (sigma 0.125 of its size)",
    ),
    ParamSpec::optional(
        "resample",
        ParamType::Enum(&["linear", "nearest"]),
        "\"linear\"",
        "back onto each image's grid: `linear` resamples the logits trilinearly and thresholds after (MONAI's BraTS tutorial, `Invertd`); `nearest` thresholds first and takes the nearest voxel (halfway: the larger index)",
    ),
];

#[derive(Debug, Deserialize)]
struct EvalParams {
    cases: serde_json::Value,
    roi: Option<[usize; 3]>,
    overlap: f64,
    sw_batch_size: usize,
    blend: Blend,
    resample: BackToInput,
}

/// `cases`, checked.
#[derive(Debug, PartialEq)]
enum Choice {
    HeldOut,
    All,
    Listed(Vec<String>),
}

impl Choice {
    fn parse(v: &serde_json::Value) -> Result<Choice, String> {
        match v {
            serde_json::Value::String(s) if s == "held-out" => Ok(Choice::HeldOut),
            serde_json::Value::String(s) if s == "all" => Ok(Choice::All),
            serde_json::Value::Array(items) if !items.is_empty() => {
                let mut ids = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) if !s.is_empty() => {
                            if ids.iter().any(|x| x == s) {
                                return Err(format!("case `{s}` is listed twice"));
                            }
                            ids.push(s.to_string())
                        }
                        _ => return Err(format!("item {i} is {item}, not a case id")),
                    }
                }
                Ok(Choice::Listed(ids))
            }
            other => Err(format!(
                "expected `held-out`, `all` or a list of case ids, found {other}"
            )),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Choice::HeldOut => "held-out",
            Choice::All => "all",
            Choice::Listed(_) => "listed",
        }
    }
}

impl Step for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "score an export on whole held-out volumes: per-case Dice and HD95 (mm) of TC, WT and ET, as MONAI computes them"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(&[
            ("model", ArtifactType::Export),
            ("dataset", ArtifactType::Dataset),
        ])
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        ArtifactType::Report
    }

    fn check(&self, params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        let id = cx.step_id;
        if let Some(v) = params.get("cases")
            && let Err(e) = Choice::parse(v)
        {
            diags.error(
                params.span_of("cases"),
                format!("step `{id}`: `cases`: {e}"),
            );
        }
        match params.get("roi") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                let ok = v.as_array().is_some_and(|a| {
                    a.len() == 3
                        && a.iter()
                            .all(|n| n.as_u64().is_some_and(|n| (1..=4096).contains(&n)))
                });
                if !ok {
                    diags.error(
                        params.span_of("roi"),
                        format!("step `{id}`: `roi` must be [X, Y, Z] (integers 1 to 4096) or null, found {v}"),
                    );
                }
            }
        }
        if let Some(o) = params.get("overlap").and_then(|v| v.as_f64())
            && !(0.0..1.0).contains(&o)
        {
            diags.error(
                params.span_of("overlap"),
                format!("step `{id}`: `overlap` must be in [0, 1), found {o}"),
            );
        }
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        // Inference and the metrics use rayon: on the step's own threads, not the whole machine.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cx.threads.max(1))
            .build()
            .map_err(|e| StepError::new(format!("cannot start the evaluation threads: {e}")))?;
        pool.install(|| evaluate(cx))
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }
}

fn evaluate(cx: &RunContext<'_>) -> Result<(), StepError> {
    let p: EvalParams = cx
        .params
        .decode()
        .map_err(|e| StepError::new(format!("invalid params: {e}")))?;
    let choice = Choice::parse(&p.cases).map_err(|e| StepError::new(format!("`cases`: {e}")))?;
    let input = |slot: &str| {
        cx.inputs
            .get(slot)
            .map(|a| a.path.as_path())
            .ok_or_else(|| StepError::new(format!("missing input `{slot}`")))
    };
    let (model, dataset) = (input("model")?, input("dataset")?);
    let opts = SegmentOptions {
        roi: p.roi,
        overlap: p.overlap,
        sw_batch_size: p.sw_batch_size,
        blend: p.blend,
        back: p.resample,
    };
    let segmenter = Segmenter::from_export(model, opts).map_err(step_error)?;
    let conv = segmenter.convention();
    // The export's record of its held-out cases: needed to choose them, reported otherwise
    // (an unreadable record then just goes unreported).
    let held_out = match TrainRecord::read_in(model) {
        Ok(r) => r.map(|r| r.split.val_cases),
        Err(e) if choice == Choice::HeldOut => return Err(StepError::new(e.to_string())),
        Err(_) => None,
    };
    let ds = MsdDataset::read(&dataset.join(wf_imaging::msd::DATASET_JSON))
        .map_err(|e| StepError::new(e.to_string()))?;
    let all = ds.cases().map_err(|e| StepError::new(e.to_string()))?;
    let labelled: Vec<_> = all.iter().filter(|c| c.label.is_some()).collect();
    let wanted: Vec<String> = match &choice {
        Choice::All => labelled.iter().map(|c| c.id.clone()).collect(),
        Choice::Listed(ids) => ids.clone(),
        Choice::HeldOut => match &held_out {
            Some(v) if !v.is_empty() => v.clone(),
            Some(_) => {
                return Err(StepError::new(
                    "the export's training held out no cases (`val_fraction: 0`): set `cases: all` or list the case ids to evaluate",
                ));
            }
            None => {
                return Err(StepError::new(format!(
                    "the export has no {} naming its held-out cases (exported by an older export-checkpoint?): set `cases: all` or list the case ids",
                    wf_trainer::record::TRAIN_FILE
                )));
            }
        },
    };
    let mut chosen = Vec::with_capacity(wanted.len());
    let mut unknown = Vec::new();
    for id in &wanted {
        match labelled.iter().find(|c| &c.id == id) {
            Some(c) => chosen.push(*c),
            None => unknown.push(id.as_str()),
        }
    }
    if !unknown.is_empty() {
        let n = unknown.len();
        return Err(StepError::new(format!(
            "{n} {} not among the Dataset's labelled cases: {}",
            if n == 1 { "case is" } else { "cases are" },
            unknown.join(", ")
        )));
    }
    if chosen.is_empty() {
        return Err(StepError::new(
            "the Dataset has no labelled case to evaluate",
        ));
    }
    // Every label on its image's grid, from the headers, before any inference: a wrong label
    // costs nothing and loses no case already scored. The image grids are kept for segmenting.
    let mut grids = Vec::with_capacity(chosen.len());
    for c in &chosen {
        let label_rel = c.label.as_deref().expect("labelled cases only");
        let case_error = |e: String| StepError::new(format!("case {}: {e}", c.id));
        let (shape, affine) = Segmenter::input_grid(&dataset.join(&c.image))
            .map_err(|e| case_error(e.to_string()))?;
        let (ldims, laffine) = wf_imaging::nifti::read_grid(&dataset.join(label_rel))
            .map_err(|e| case_error(e.to_string()))?;
        wf_imaging::transforms::load::check_label_grid(&c.id, &ldims, &laffine, shape, &affine)
            .map_err(|e| {
                case_error(format!(
                    "label {label_rel} is not on the grid of its image {}: {e}",
                    c.image
                ))
            })?;
        grids.push((shape, affine));
    }
    cx.progress.note(&format!(
        "{} ({}), roi {:?}, overlap {}, {} blending, {} back onto each image's grid",
        plural(chosen.len(), "case"),
        choice.name(),
        segmenter.roi(),
        p.overlap,
        p.blend.name(),
        p.resample.name()
    ));

    let total = chosen.len() as u64;
    let mut cases = Vec::with_capacity(chosen.len());
    // How long each case took to segment (preprocessing, inference, back onto its grid) and to
    // score (reading the label, Dice and HD95): facts of the run, not part of the Report.
    let mut timings = Vec::with_capacity(chosen.len());
    for (i, (c, &(shape, affine))) in chosen.iter().zip(&grids).enumerate() {
        if cx.cancel.is_cancelled() {
            return Err(StepError::new("cancelled"));
        }
        cx.progress.advance(Count::new(i as u64, total, Unit::Case));
        cx.progress.message(&format!("segmenting {}", c.id));
        let image = dataset.join(&c.image);
        let label_rel = c.label.as_deref().expect("labelled cases only");
        // The label first (its values are checked as it is read), then the inference.
        let t0 = std::time::Instant::now();
        let label = read_label(
            &dataset.join(label_rel),
            &format!("case {}: label {label_rel}", c.id),
            &format!("its image {}", c.image),
            &c.id,
            shape,
            &affine,
            conv,
        )
        .map_err(StepError::new)?;
        let read = t0.elapsed();
        let t1 = std::time::Instant::now();
        let seg = segmenter
            .segment(&c.id, &image, (shape, affine))
            .map_err(|e| StepError::new(format!("case {}: {e}", c.id)))?;
        let segmented = t1.elapsed();
        let t2 = std::time::Instant::now();
        let spacing = wf_imaging::transforms::spacing_of(&seg.affine);
        let scores = score_regions(&seg.nested_regions(conv), &label, seg.shape, spacing)
            .map_err(|e| StepError::new(format!("case {}: scoring: {e}", c.id)))?;
        let regions: Vec<RegionResult> = scores
            .iter()
            .map(|(n, s)| RegionResult::new(n, s))
            .collect();
        timings.push(json!({
            "case": c.id,
            "segment_seconds": segmented.as_secs_f64(),
            "score_seconds": (read + t2.elapsed()).as_secs_f64(),
        }));
        cx.progress.fact("cases", json!(timings));
        cx.progress.note(&case_line(&c.id, &regions));
        cases.push(CaseResult {
            case: c.id.clone(),
            image: c.image.clone(),
            label: label_rel.to_string(),
            shape: seg.shape,
            spacing_mm: spacing,
            regions,
        });
    }
    cx.progress.advance(Count::new(total, total, Unit::Case));
    let report = EvalReport {
        format: REPORT_FORMAT.to_string(),
        held_out,
        cases_from: choice.name().to_string(),
        labels: conv.name().to_string(),
        roi: segmenter.roi(),
        overlap: p.overlap,
        blend: p.blend.name().to_string(),
        resample: p.resample.name().to_string(),
        summary: summarize(&cases),
        cases,
    };
    write(cx.out_dir, REPORT_FILE, report.to_json().as_bytes())?;
    write(cx.out_dir, CSV_FILE, report.to_csv().as_bytes())?;
    let png = wf_trainer::plot::boxplot_png(&report)
        .map_err(|e| StepError::new(format!("{BOXPLOT_FILE}: {e}")))?;
    write(cx.out_dir, BOXPLOT_FILE, &png)?;
    for line in report.table().lines() {
        cx.progress.note(line);
    }
    Ok(())
}

fn step_error(e: SegmentError) -> StepError {
    StepError::new(e.to_string())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StepError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| StepError::new(format!("{}: {e}", path.display())))
}

/// `BRATS_003: Dice TC 0.8123 WT 0.9001 ET n/a (empty label), HD95 mm TC 2.24 WT 1.00 ET n/a`.
fn case_line(id: &str, regions: &[RegionResult]) -> String {
    let part = |f: &dyn Fn(&RegionResult) -> Option<f64>, places: usize| {
        regions
            .iter()
            .map(|r| match (f(r), &r.empty) {
                (Some(v), _) => format!("{} {v:.places$}", r.region),
                (None, Some(why)) => format!("{} n/a ({why})", r.region),
                (None, None) => format!("{} n/a", r.region),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{id}: Dice {}, HD95 mm {}",
        part(&|r| r.dice, 4),
        part(&|r| r.hd95_mm, 2)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_and_refuse_what_is_not_a_choice() {
        assert_eq!(Choice::parse(&json!("held-out")).unwrap(), Choice::HeldOut);
        assert_eq!(Choice::parse(&json!("all")).unwrap(), Choice::All);
        assert_eq!(
            Choice::parse(&json!(["A", "B"])).unwrap(),
            Choice::Listed(vec!["A".into(), "B".into()])
        );
        for (bad, says) in [
            (json!("heldout"), "expected `held-out`, `all`"),
            (json!([]), "expected"),
            (json!(["A", 3]), "item 1 is 3"),
            (json!(["A", "A"]), "listed twice"),
            (json!(5), "found 5"),
        ] {
            let e = Choice::parse(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_case_line_says_why_a_score_is_missing() {
        let r = |name: &str, d: Option<f64>, h: Option<f64>, empty: Option<&str>| RegionResult {
            region: name.into(),
            dice: d,
            hd95_mm: h,
            pred_voxels: 1,
            label_voxels: 1,
            empty: empty.map(str::to_string),
        };
        let line = case_line(
            "BRATS_003",
            &[
                r("TC", Some(0.81234), Some(2.236), None),
                r("ET", None, None, Some("empty label")),
            ],
        );
        assert_eq!(
            line,
            "BRATS_003: Dice TC 0.8123 ET n/a (empty label), HD95 mm TC 2.24 ET n/a (empty label)"
        );
    }
}
