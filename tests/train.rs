//! End-to-end tests of the training half through the `wf` binary: fetch-dataset (synthetic) →
//! sharded-transform → fsx-import → train-unet → export-checkpoint, a forced retraining that leaves
//! the export cached, then `wf predict` on an input image; and a training run killed mid-way that resumes from its last checkpoint and ends with the
//! same weights as an uninterrupted run.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn workflow(dir: &Path, epochs: usize) {
    workflow_with(dir, epochs, "");
}

/// `workflow` with more train-unet params (`extra`: `, key: value` pairs).
fn workflow_with(dir: &Path, epochs: usize, extra: &str) {
    let yaml = format!(
        r#"name: tiny
seed: 3
steps:
  fetch:
    uses: fetch-dataset
    with: {{ source: synthetic, cases: 4, shape: [40, 40, 32], seed: 1 }}
  preprocess:
    uses: sharded-transform
    inputs: {{ dataset: fetch }}
    with:
      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - spacing: {{ pixdim: [1.5, 1.5, 2.0], mode: [bilinear, nearest] }}
        - orientation: {{ axcodes: RAS }}
        - rand-spatial-crop: {{ roi: [16, 16, 16] }}
        - rand-flip: {{ prob: 0.5, axis: 0 }}
        - normalize-intensity: {{ nonzero: true, channel_wise: true }}
      copies_per_case: 3
  stage: {{ uses: fsx-import, inputs: {{ samples: preprocess }} }}
  train:
    uses: train-unet
    inputs: {{ samples: stage }}
    with: {{ epochs: {epochs}, batch_size: 2, lr: 1.0e-3, val_fraction: 0.25, gpus: 0,
            channels: [4, 8, 16], strides: [2, 2], num_res_units: 1{extra} }}
  export: {{ uses: export-checkpoint, inputs: {{ model: train }} }}
  evaluate: {{ uses: evaluate, inputs: {{ model: export, dataset: fetch }} }}
"#
    );
    std::fs::write(dir.join("wf.yaml"), yaml).unwrap();
}

fn output_path(v: &serde_json::Value, id: &str) -> PathBuf {
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .expect("step");
    PathBuf::from(step["output"]["path"].as_str().expect("output path"))
}

/// The regexes a Training job charts (`MetricDefinitions`) find each number of each epoch in the
/// lines the trainer printed, equal to the metrics.jsonl it wrote.
fn metric_definitions_read_the_epoch_lines(output: &str, epochs: &[serde_json::Value]) {
    let found = |name: &str| -> Vec<f64> {
        let m = wf_steps::train_unet::METRICS
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let re = regex::Regex::new(m.regex).unwrap();
        output
            .lines()
            .filter_map(|l| re.captures(l))
            .map(|c| c[1].parse().unwrap())
            .collect()
    };
    // Each printed value has 4 decimals; a region's Dice that could not be computed (no such
    // region among the validation cases) is `null` in metrics.jsonl and `n/a` in the line.
    let check = |metric: &str, field: &str| {
        let got = found(metric);
        let want: Vec<f64> = epochs.iter().filter_map(|e| e[field].as_f64()).collect();
        assert_eq!(got.len(), want.len(), "{metric}: {got:?} in\n{output}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 0.5e-4 + 1e-9, "{metric}: {g} vs {w}");
        }
    };
    check("train:loss", "train_loss");
    check("validation:dice_mean", "val_mean_dice");
    assert_eq!(found("validation:dice_mean").len(), epochs.len());
    for region in ["tc", "wt", "et"] {
        check(
            &format!("validation:dice_{region}"),
            &format!("val_dice_{region}"),
        );
    }
    let rates = found("train:samples_per_second");
    assert_eq!(rates.len(), epochs.len(), "{output}");
    assert!(rates.iter().all(|r| *r > 0.0), "{rates:?}");
    // The learning rate is printed with 5 significant digits.
    let lrs = found("train:lr");
    let want: Vec<f64> = epochs.iter().map(|e| e["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs.len(), want.len(), "{output}");
    for (g, w) in lrs.iter().zip(&want) {
        assert!((g - w).abs() <= 0.5e-4 * w, "train:lr: {g} vs {w}");
    }
    assert_eq!(wf_steps::train_unet::METRICS.len(), 7);
}

#[test]
fn train_export_and_predict_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    workflow(dir, 2);
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(status_of(&v, "train"), "ran");
    assert_eq!(status_of(&v, "export"), "ran");

    let model = output_path(&v, "train");
    let lines: Vec<serde_json::Value> = read(model.join("metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one metrics line per epoch");
    assert!(lines.iter().all(|m| m["val_mean_dice"].is_number()));
    assert!(
        lines.iter().all(|m| m.get("val_dice_per_case").is_none()),
        "crops validation records no per-case Dice"
    );
    metric_definitions_read_the_epoch_lines(&stderr(&out), &lines);
    let png = std::fs::read(model.join("plot.png")).expect("plot.png in the model");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    let train: serde_json::Value = serde_json::from_str(&read(model.join("train.json"))).unwrap();
    assert_eq!(train["split"]["val_cases"].as_array().unwrap().len(), 1);
    assert_eq!(train["epochs_completed"], 2);

    let export = output_path(&v, "export");
    for f in [
        "model.safetensors",
        "config.json",
        "metrics.json",
        "README.md",
        "preprocessing.json",
    ] {
        assert!(export.join(f).is_file(), "export lacks {f}");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&read(export.join("metrics.json"))).unwrap();
    let key = metrics
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.contains("mean") && k.contains("dice"))
        .expect("a mean Dice key");
    assert!(metrics[key].is_number());

    // Nothing changed: everything is cached, training included.
    let again = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert!(statuses(&again).iter().all(|(_, s)| s == "cached"));

    // One more epoch: the plan names the param with its old and new value, and the export waits
    // for the training it reads.
    workflow(dir, 3);
    let plan = stdout(&wf(dir, &["plan", "wf.yaml"]));
    let line = |id: &str| {
        plan.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap()
            .to_string()
    };
    assert!(
        line("train").ends_with(" miss  params changed: `epochs` 2 → 3"),
        "{plan}"
    );
    assert!(
        line("export").contains(" after train  ") && !line("export").contains("miss"),
        "{plan}"
    );
    workflow(dir, 2);

    // Retrained on the same machine, the Model is the same bytes, so export stays cached (early
    // cutoff): the timings are facts of the run, kept in the cache entry, not in the Model.
    let forced = wf(dir, &["run", "wf.yaml", "--json", "--force", "train"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let forced = json(&forced);
    assert_eq!(status_of(&forced, "train"), "ran");
    assert_eq!(output_digest(&forced, "train"), output_digest(&v, "train"));
    assert_eq!(status_of(&forced, "export"), "cached");
    let cache = dir.join(".wf/cache");
    let record: serde_json::Value =
        serde_json::from_str(&read(cache.join("runs/tiny/train.json"))).unwrap();
    assert_eq!(record["outcome"]["status"], "ran", "{record}");
    assert!(record["outcome"]["seconds"].as_f64().unwrap() > 0.0);
    let export_record: serde_json::Value =
        serde_json::from_str(&read(cache.join("runs/tiny/export.json"))).unwrap();
    assert_eq!(export_record["outcome"]["status"], "cached");
    assert_eq!(export_record["outcome"]["run"], record["outcome"]["run"]);
    let key = record["key"].as_str().unwrap();
    let entry: serde_json::Value = serde_json::from_str(&read(
        cache.join(format!("entries/{}/{key}.json", &key[..2])),
    ))
    .unwrap();
    let epochs = entry["facts"]["epochs"]
        .as_array()
        .expect("per-epoch timings");
    assert_eq!(epochs.len(), 2, "{entry}");
    assert!(epochs[1]["train_samples_per_second"].as_f64().unwrap() > 0.0);
    assert!(entry["facts"]["train_seconds"].as_f64().unwrap() > 0.0);
    // The machine is recorded in train.json and the model card.
    assert!(train["machine"]["gemm_kernel"].is_string(), "{train}");
    assert!(
        train["machine"]["threads"].as_u64().unwrap() >= 1,
        "{train}"
    );
    let card = read(output_path(&v, "export").join("README.md"));
    assert!(
        card.contains("Trained on: `cpu`, fp32;") && card.contains("same kind of machine"),
        "{card}"
    );

    // Predict on a training image: a segmentation on the input grid, with the input's affine.
    let dataset = output_path(&v, "fetch");
    let image = std::fs::read_dir(dataset.join("imagesTr"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".nii.gz"))
        .unwrap();
    let seg = dir.join("out/seg.nii.gz");
    let out = wf(
        dir,
        &[
            "predict",
            "--model",
            export.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--out",
            seg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let input = wf_imaging::nifti::read_nifti(&image).unwrap();
    let got = wf_imaging::nifti::read_nifti(&seg).unwrap();
    assert_eq!(got.dims, input.dims[..3].to_vec());
    assert_eq!(got.affine, input.affine);
    assert_eq!(got.datatype, wf_imaging::nifti::Datatype::U8);
    assert!(got.data.iter().all(|v| [0.0, 1.0, 2.0, 3.0].contains(v)));
    // The counts name the convention's labels (MSD: 1, 2, 3), no others.
    let said = stderr(&out);
    assert!(
        said.contains("labels (msd) 1 edema: ")
            && said.contains(", 2 non-enhancing tumour: ")
            && said.contains(", 3 enhancing tumour: ")
            && !said.contains("4: "),
        "{said}"
    );

    // `--label`: the segmentation scored against the case's label on the input grid, per region.
    let label = dataset.join("labelsTr").join(image.file_name().unwrap());
    let predict_with = |extra: &[&str]| {
        let mut a = vec![
            "predict",
            "--model",
            export.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--out",
            seg.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        wf(dir, &a)
    };
    let out = predict_with(&["--label", label.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scores = json(&out);
    let regions = scores["regions"].as_array().unwrap();
    let names: Vec<&str> = regions
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["TC", "WT", "ET"], "{scores}");
    // The same numbers as the metrics computed here from the written segmentation and the label
    // file, both on the input grid.
    let got = wf_imaging::nifti::read_nifti(&seg).unwrap();
    let truth = wf_imaging::nifti::read_nifti(&label).unwrap();
    let spacing = [
        input.affine[0][0].abs(),
        input.affine[1][1].abs(),
        input.affine[2][2].abs(),
    ];
    let d = &input.dims;
    let fortran_to_c = |v: &[f32], bit: u8| -> Vec<bool> {
        let mut out = vec![false; v.len()];
        for x in 0..d[0] {
            for y in 0..d[1] {
                for z in 0..d[2] {
                    let value = v[(z * d[1] + y) * d[0] + x];
                    let bits = wf_imaging::transforms::LabelConvention::Msd
                        .regions(value)
                        .unwrap();
                    out[(x * d[1] + y) * d[2] + z] = bits & bit != 0;
                }
            }
        }
        out
    };
    use wf_imaging::transforms::{ET, TC, WT};
    for (r, bit) in regions.iter().zip([TC, WT, ET]) {
        let (p, l) = (fortran_to_c(&got.data, bit), fortran_to_c(&truth.data, bit));
        let want = wf_imaging::metrics::score(&p, &l, [d[0], d[1], d[2]], spacing).unwrap();
        assert_eq!(r["label_voxels"], want.label_voxels, "{r}");
        assert_eq!(r["pred_voxels"], want.pred_voxels, "{r}");
        assert!(
            want.label_voxels > 0,
            "the synthetic label has every region: {r}"
        );
        match r["dice"].as_f64() {
            Some(dice) => assert!((dice - want.dice).abs() < 1e-12, "{r}"),
            None => assert!(want.dice.is_nan() && r["empty"].is_string(), "{r}"),
        }
        match r["hd95_mm"].as_f64() {
            Some(hd) => assert!((hd - want.hd95).abs() < 1e-12, "{r}"),
            None => assert!(want.hd95.is_nan() && r["empty"].is_string(), "{r}"),
        }
    }
    assert_eq!(scores["labels"], "msd");

    // Without --json: a table of the same regions.
    let out = predict_with(&["--label", label.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("region") && lines[0].contains("hd95_mm"),
        "{table}"
    );
    for (line, name) in lines[1..].iter().zip(["TC", "WT", "ET"]) {
        assert!(line.starts_with(name), "{table}");
    }

    // A label on another grid (the same voxels, moved 1 mm) is refused with exit 2 before
    // inference, naming both files.
    let moved = dir.join("moved_label.nii.gz");
    let mut affine = truth.affine;
    affine[0][3] += 1.0;
    wf_imaging::nifti::write_nifti(
        &moved,
        &truth.dims,
        wf_imaging::nifti::NiftiData::F32(&truth.data),
        &affine,
    )
    .unwrap();
    let out = predict_with(&["--label", moved.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("moved_label.nii.gz is not on the grid of --image")
            && said.contains(image.to_str().unwrap())
            && said.contains("affine"),
        "{said}"
    );
    // A value outside the convention (MSD: 0-3) is refused with exit 2, naming the value.
    let odd = dir.join("odd_label.nii.gz");
    let mut data = truth.data.clone();
    data[5] = 7.0;
    wf_imaging::nifti::write_nifti(
        &odd,
        &truth.dims,
        wf_imaging::nifti::NiftiData::F32(&data),
        &truth.affine,
    )
    .unwrap();
    let out = predict_with(&["--label", odd.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "odd_label.nii.gz: value 7 at voxel (5, 0, 0) is not a label of the `msd` convention"
        ),
        "{}",
        stderr(&out)
    );
    // --json means the scores of --label; alone it is a usage error.
    let out = predict_with(&["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Bad input: an image with the wrong number of channels is refused with exit 2.
    let out = wf(
        dir,
        &[
            "predict",
            "--model",
            export.to_str().unwrap(),
            "--image",
            label.to_str().unwrap(),
            "--out",
            "x.nii.gz",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("channel"), "{}", stderr(&out));

    // A window far larger than memory is an invalid argument, refused before allocating (not an
    // allocator abort, exit 134).
    let out = predict_with(&["--roi", "100000,100000,100000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--roi 100000,100000,100000: ")
            && stderr(&out).contains("of memory, more than the"),
        "{}",
        stderr(&out)
    );

    // Bad arguments: `--out` naming a directory, even one named like NIfTI, is refused with exit 2
    // before inference.
    std::fs::create_dir(dir.join("segs.nii.gz")).unwrap();
    let out = wf(
        dir,
        &[
            "predict",
            "--model",
            export.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--out",
            "segs.nii.gz",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));

    let cached = wf(dir, &["run", "wf.yaml"]);
    assert!(cached.status.success(), "{}", stderr(&cached));
    evaluation_matches_predict(dir, &v, &stderr(&cached));
}

/// The evaluate step's Report: the held-out case of the training, scored on its whole volume; the
/// run's summary prints the table; `wf predict --label` on the same case gives the same numbers.
fn evaluation_matches_predict(dir: &Path, v: &serde_json::Value, cached_run: &str) {
    assert_eq!(status_of(v, "evaluate"), "ran");
    let report_dir = output_path(v, "evaluate");
    let report: serde_json::Value =
        serde_json::from_str(&read(report_dir.join("report.json"))).unwrap();
    assert_eq!(report["format"], "wf-report-v1");
    assert_eq!(report["cases_from"], "held-out");
    let train: serde_json::Value =
        serde_json::from_str(&read(output_path(v, "train").join("train.json"))).unwrap();
    let held_out = &train["split"]["val_cases"];
    assert_eq!(&report["held_out"], held_out, "{report}");
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1, "{report}");
    assert_eq!(cases[0]["case"], held_out[0]);
    let summary = report["summary"].as_array().unwrap();
    let names: Vec<&str> = summary
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["TC", "WT", "ET"]);
    let csv = read(report_dir.join("cases.csv"));
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("case,region,dice,hd95_mm,pred_voxels,label_voxels,empty\n"));
    let png = std::fs::read(report_dir.join("boxplot.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    // The summary of a run (here a cached one) prints the table under the report's path.
    assert!(
        cached_run.contains("1 case (held-out), whole volumes:")
            && cached_run.contains("Dice mean ± std"),
        "{cached_run}"
    );

    let dataset = output_path(v, "fetch");
    let case = cases[0]["case"].as_str().unwrap();
    let out = wf(
        dir,
        &[
            "predict",
            "--model",
            output_path(v, "export").to_str().unwrap(),
            "--image",
            dataset
                .join(cases[0]["image"].as_str().unwrap())
                .to_str()
                .unwrap(),
            "--label",
            dataset
                .join(cases[0]["label"].as_str().unwrap())
                .to_str()
                .unwrap(),
            "--out",
            dir.join(format!("out/{case}.nii.gz")).to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let scores = json(&out);
    for (p, e) in scores["regions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cases[0]["regions"].as_array().unwrap())
    {
        assert_eq!(p["region"], e["region"]);
        for k in ["dice", "pred_voxels", "label_voxels", "empty"] {
            assert_eq!(p[k], e[k], "{k}: predict {p} against evaluate {e}");
        }
        assert_eq!(
            p["hd95_mm"], e["hd95_mm"],
            "predict {p} against evaluate {e}"
        );
    }

    // The same export on every labelled case, with Gaussian blending: only the evaluation runs.
    let yaml = read(dir.join("wf.yaml"));
    let with = |params: &str| {
        let changed = yaml.replace(
            "inputs: { model: export, dataset: fetch } }",
            &format!("inputs: {{ model: export, dataset: fetch }}, with: {{ {params} }} }}"),
        );
        assert_ne!(changed, yaml);
        changed
    };
    std::fs::write(dir.join("all.yaml"), with("cases: all, blend: gaussian")).unwrap();
    let out = wf(dir, &["run", "all.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w = json(&out);
    assert_eq!(status_of(&w, "train"), "cached");
    assert_eq!(status_of(&w, "evaluate"), "ran");
    let report: serde_json::Value =
        serde_json::from_str(&read(output_path(&w, "evaluate").join("report.json"))).unwrap();
    assert_eq!(report["cases"].as_array().unwrap().len(), 4, "{report}");
    assert_eq!(report["cases_from"], "all");
    assert_eq!(report["blend"], "gaussian");

    // Bad choices: a misspelt choice is invalid input (exit 2) before anything runs; an id the
    // Dataset does not have fails the step (exit 1), naming it.
    std::fs::write(dir.join("typo.yaml"), with("cases: heldout")).unwrap();
    let out = wf(dir, &["run", "typo.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`cases`: expected `held-out`, `all` or a list of case ids"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        dir.join("unknown.yaml"),
        with(&format!("cases: [{case}, BRATS_999]")),
    )
    .unwrap();
    let out = wf(dir, &["run", "unknown.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 case is not among the Dataset's labelled cases: BRATS_999"),
        "{}",
        stderr(&out)
    );
}

/// `--out` must name a NIfTI file: checked first, before the model or the image is read.
/// `val_mode: volumes`: refused at validation when the samples are materialized crops (naming
/// `copies_per_case`), and with the prefix stored, each epoch scores the held-out case's whole
/// volume by sliding windows; the choice is recorded in train.json.
#[test]
fn whole_volume_validation() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    workflow_with(dir, 2, ", val_mode: volumes");
    let out = wf(dir, &["validate", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("`val_mode: volumes` validates on each case's whole preprocessed volume")
            && said.contains("`copies_per_case` of step `preprocess`")
            && said.contains("set `copies_per_case: 0`"),
        "{said}"
    );

    let yaml = read(dir.join("wf.yaml")).replace("copies_per_case: 3", "copies_per_case: 0");
    std::fs::write(dir.join("wf.yaml"), &yaml).unwrap();
    let bad = yaml.replace(
        "val_mode: volumes",
        "val_mode: volumes, val_roi: [10, 16, 16]",
    );
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let out = wf(dir, &["validate", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`val_roi` [10, 16, 16]: each must be a positive multiple of 4"),
        "{}",
        stderr(&out)
    );

    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "1 whole validation volume (sliding window 16×16×16, overlap 0.5, constant blending)"
        ),
        "{}",
        stderr(&out)
    );
    let v = json(&out);
    let model = output_path(&v, "train");
    let train: serde_json::Value = serde_json::from_str(&read(model.join("train.json"))).unwrap();
    assert_eq!(
        train["config"]["validation"],
        serde_json::json!({"mode": "volumes", "roi": [16, 16, 16], "overlap": 0.5, "blend": "constant"}),
        "{train}"
    );
    let lines: Vec<serde_json::Value> = read(model.join("metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for m in &lines {
        assert_eq!(m["val_samples"], 1, "one whole volume: {m}");
        assert!(m["val_mean_dice"].is_number(), "{m}");
        // The case's own Dice per region: with one case, the means themselves.
        let per_case = m["val_dice_per_case"].as_array().unwrap();
        assert_eq!(per_case.len(), 1, "{m}");
        assert_eq!(per_case[0][0], m["val_dice_tc"], "{m}");
        assert_eq!(per_case[0][2], m["val_dice_et"], "{m}");
    }
}

#[test]
fn predict_refuses_a_non_nifti_out_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let out = wf(
        t.path(),
        &[
            "predict",
            "--model",
            "no-such-export",
            "--image",
            "no-such-image.nii.gz",
            "--out",
            "x.png",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "error: --out x.png: the segmentation is written as NIfTI; name it .nii or .nii.gz\n"
    );
    assert!(!t.path().join("x.png").exists());
}

/// The epoch directories of in-progress training under the cache's resume area.
fn checkpoint_done(cache: &Path, epoch: usize) -> bool {
    let root = cache.join("derived/train-unet");
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.path()
                .join(format!("checkpoints/epoch-{epoch:04}/checkpoint.json"))
                .is_file()
        })
}

fn last_weights(model: &Path) -> Vec<u8> {
    let ckpts = model.join("checkpoints");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    std::fs::read(dirs.last().unwrap().join("model.safetensors")).unwrap()
}

#[test]
fn killed_training_resumes_from_its_last_checkpoint() {
    const EPOCHS: usize = 6;
    // With a warm-up and cosine schedule, so a resumed epoch must recompute its learning rate.
    const SCHEDULE: &str = ", lr_schedule: cosine, warmup_epochs: 1";
    // An uninterrupted reference run.
    let reference = tempfile::tempdir().unwrap();
    workflow_with(reference.path(), EPOCHS, SCHEDULE);
    let out = wf(reference.path(), &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference_model = output_path(&json(&out), "train");
    let want = last_weights(&reference_model);
    let want_metrics = read(reference_model.join("metrics.jsonl"));

    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    workflow_with(dir, EPOCHS, SCHEDULE);
    let mut child = std::process::Command::new(wf_bin())
        .args(["run", "wf.yaml"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cache = dir.join(".wf/cache");
    let t0 = Instant::now();
    while !checkpoint_done(&cache, 2) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !checkpoint_done(&cache, EPOCHS),
        "training finished before the kill"
    );
    // The plan says where the next run resumes: the latest complete checkpoint.
    let latest = (1..EPOCHS)
        .rev()
        .find(|&e| checkpoint_done(&cache, e))
        .unwrap();
    let plan = wf(dir, &["plan", "wf.yaml"]);
    let text = stdout(&plan);
    let line = text.lines().find(|l| l.starts_with("train ")).unwrap();
    assert!(
        line.contains(" miss ") && line.ends_with(&format!("; resumes from epoch {latest}")),
        "{text}"
    );
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    let train = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "train")
        .unwrap();
    assert_eq!(train["resumes"], format!("resumes from epoch {latest}"));

    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(status_of(&v, "train"), "ran");
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("resumed"), "no resume reported:\n{all}");
    let model = output_path(&v, "train");
    let epochs: Vec<u64> = read(model.join("metrics.jsonl"))
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, (1..=EPOCHS as u64).collect::<Vec<_>>());
    assert!(
        last_weights(&model) == want,
        "resumed training ended with different weights than an uninterrupted run"
    );
    // The same losses, Dice and learning rates per epoch (warm-up, then cosine down).
    let got_metrics = read(model.join("metrics.jsonl"));
    assert_eq!(got_metrics, want_metrics);
    let lrs: Vec<f64> = got_metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(
        lrs[0] == 5e-4 && lrs[1] == 1e-3 && lrs.windows(2).skip(1).all(|w| w[1] < w[0]),
        "{lrs:?}"
    );
    // The resume area is cleaned up once the output is in the cache.
    assert!(!checkpoint_done(&cache, EPOCHS));
}

/// The GPU quickstart is a valid workflow everywhere; a build without CUDA refuses to run it before
/// running anything (exit 2), pointing at `gpus` and saying how to get a CUDA build.
#[test]
fn gpu_quickstart_validates_and_a_cpu_build_refuses_to_train_it() {
    let t = tempfile::tempdir().unwrap();
    let yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/quickstart-gpu.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    // Smaller data, same training parameters: only the refusal is under test.
    let text = text
        .replace(
            "cases: 16, shape: [96, 96, 64]",
            "cases: 2, shape: [40, 40, 32]",
        )
        .replace("roi: [64, 64, 32]", "roi: [16, 16, 16]");
    std::fs::write(t.path().join("wf.yaml"), &text).unwrap();
    let v = wf(t.path(), &["validate", "wf.yaml"]);
    assert!(v.status.success(), "{}", stderr(&v));
    if cfg!(feature = "cuda") {
        return; // a CUDA build would train it; the GPU checks cover that (scripts/gpu-check.sh)
    }
    let r = wf(t.path(), &["run", "wf.yaml", "--json"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert_eq!(stdout(&r), "", "no run summary: nothing ran");
    let err = stderr(&r);
    let (line, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("with:") && l.contains("gpus:"))
        .unwrap();
    let col = l.find("gpus:").unwrap() + "gpus: ".len() + 1;
    assert!(
        err.starts_with(&format!(
            "wf.yaml:{}:{col}: step `train` cannot run on this machine: `gpus: 1`",
            line + 1
        )) && err.contains("no CUDA support")
            && err.contains("--features gpu")
            && err.contains("nothing ran"),
        "{err}"
    );
    // Nothing ran: no step left an entry or a run record.
    let cache = t.path().join(".wf/cache");
    for sub in ["entries", "runs"] {
        let n = std::fs::read_dir(cache.join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(n, 0, "{sub} is not empty");
    }
}
