//! MONAI 1.6.1 parity: every golden case of the reference data (`tests/data/monai-1.6.1`) through the
//! native chain, compared stage by stage (shapes, affines, images relative to the golden value range,
//! labels voxel for voxel). Which intermediate stages a case has comes from its `files` in the manifest.

use std::path::Path;

use serde_json::Value;

use super::npy;
use super::*;
use crate::testdata::{golden_array, monai_file, monai_manifest};

fn affine_of(v: &Value) -> Affine {
    let mut a = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            a[i][j] = v[i][j].as_f64().unwrap();
        }
    }
    a
}

fn assert_affine(what: &str, got: &Affine, want: &Value) {
    let want = affine_of(want);
    for i in 0..4 {
        for j in 0..4 {
            // The manifest rounds to 10 decimals.
            assert!(
                (got[i][j] - want[i][j]).abs() < 1e-6,
                "{what}: affine {got:?} vs {want:?}"
            );
        }
    }
}

/// Max |ours − golden| over the golden value range, skipping `skip` voxels; also the differing count.
fn image_error(ours: &[f32], golden: &[f32], skip: &dyn Fn(usize) -> bool) -> (f64, usize) {
    assert_eq!(ours.len(), golden.len());
    let (lo, hi) = golden
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let range = ((hi - lo) as f64).max(1e-30);
    let mut max = 0f64;
    let mut n = 0;
    for (i, (&a, &b)) in ours.iter().zip(golden).enumerate() {
        if a != b {
            n += 1;
        }
        if !skip(i) {
            max = max.max((a as f64 - b as f64).abs() / range);
        }
    }
    (max, n)
}

/// Regions bits vs MONAI's (TC, WT, ET) float channels: number of differing voxel-channels.
fn label_mismatches(regions: &[u8], golden: &npy::Npy) -> usize {
    let vol = regions.len();
    assert_eq!(golden.shape[0], 3);
    assert_eq!(golden.data.len(), 3 * vol);
    let mut n = 0;
    for (bit, ch) in [(TC, 0), (WT, 1), (ET, 2)] {
        for (i, &r) in regions.iter().enumerate() {
            if ((r & bit != 0) as u8 as f32) != golden.data[ch * vol + i] {
                n += 1;
            }
        }
    }
    n
}

fn regions(case: &Case) -> &[u8] {
    match &case.label.as_ref().unwrap().data {
        LabelData::Regions(r) => r,
        LabelData::Raw(_) => panic!("labels not converted"),
    }
}

const TOL: f64 = 1e-4;

struct Report {
    lines: Vec<String>,
    worst: f64,
}

/// The golden arrays one case lists (`files`), by path relative to the data root.
struct Golden<'a> {
    dir: String,
    files: Vec<&'a str>,
}

impl<'a> Golden<'a> {
    fn of(c: &'a Value) -> Self {
        Golden {
            dir: format!(
                "golden/{}/{}",
                c["group"].as_str().unwrap(),
                c["case"].as_str().unwrap()
            ),
            files: c["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect(),
        }
    }

    /// `<stem>.npy.gz` of this case, if the manifest lists it.
    fn array(&self, stem: &str) -> Option<npy::Npy> {
        let rel = format!("{}/{stem}.npy.gz", self.dir);
        self.files
            .contains(&rel.as_str())
            .then(|| golden_array(&rel))
    }
}

fn check_stage(
    rep: &mut Report,
    name: &str,
    golden: &Golden,
    stage: &str,
    case: &Case,
    meta: &Value,
) {
    let image = golden.array(&format!("{stage}_image"));
    assert!(
        image.is_some() || stage != "final",
        "{name}: the manifest lists no final image"
    );
    if let Some(g) = image {
        let shape = case.image.shape.to_vec();
        assert_eq!(g.shape, shape, "{name} {stage} image shape");
        let (err, n) = image_error(&case.image.data, &g.data, &|_| false);
        rep.worst = rep.worst.max(err);
        rep.lines.push(format!(
            "{name} {stage}: image max rel err {err:.3e} ({n} voxels not bit-identical)"
        ));
        assert!(
            err < TOL,
            "{name} {stage}: image error {err:e} over {TOL:e}"
        );
    }
    if let Some(g) = golden.array(&format!("{stage}_label")) {
        assert!(
            case.label.is_some(),
            "{name} {stage}: golden labels but no label"
        );
        let n = label_mismatches(regions(case), &g);
        rep.lines
            .push(format!("{name} {stage}: label mismatches {n}"));
        assert_eq!(n, 0, "{name} {stage}: {n} label voxel-channels differ");
    }
    if let Some(aff) = meta.get("image").and_then(|m| m.get("affine")) {
        assert_affine(&format!("{name} {stage}"), &case.affine, aff);
    }
    if let Some(shape) = meta.get("image").and_then(|m| m.get("shape")) {
        let want: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(case.image.shape.to_vec(), want, "{name} {stage} shape");
    }
}

fn run_prefix(c: &Value) -> (Case, Spacing) {
    let input = |v: &Value| monai_file(Path::new("inputs").join(v["path"].as_str().unwrap()));
    let img = input(&c["inputs"]["image"]);
    let lab = c["inputs"].get("label").map(input);
    let pixdim = c["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Spacingd")
        .map(|t| {
            let p = t["pixdim"].as_array().unwrap();
            [
                p[0].as_f64().unwrap(),
                p[1].as_f64().unwrap(),
                p[2].as_f64().unwrap(),
            ]
        })
        .unwrap();
    let src = CaseSource {
        id: c["case"].as_str().unwrap().into(),
        image: img,
        label: lab,
    };
    let case = Load::default().load(&src).unwrap();
    let case = EnsureChannelFirst::default().apply(case).unwrap();
    // The goldens ran MONAI's BraTS class on MSD-style labels (0-3).
    let case = ConvertLabels {
        labels: LabelConvention::BratsMonai,
    }
    .apply(case)
    .unwrap();
    (
        case,
        Spacing {
            pixdim,
            mode: SpacingModes::default(),
        },
    )
}

#[test]
fn golden_cases_match_monai() {
    let m = monai_manifest();
    let mut rep = Report {
        lines: vec![],
        worst: 0.0,
    };
    let mut per_group: std::collections::BTreeMap<String, f64> = Default::default();
    for c in m["cases"].as_array().unwrap() {
        let group = c["group"].as_str().unwrap();
        let name = format!("{group}/{}", c["case"].as_str().unwrap());
        let golden = Golden::of(c);
        let before = rep.worst;
        rep.worst = 0.0;
        let (case, spacing) = run_prefix(c);
        if let Some(g) = golden.array("label_converted_uint8") {
            let mut c_order = case.clone();
            c_order.to_c_order();
            assert_eq!(
                label_mismatches(regions(&c_order), &g),
                0,
                "{name}: converted labels"
            );
        }
        let case = spacing.apply(case).unwrap();
        check_stage(
            &mut rep,
            &name,
            &golden,
            "after_spacing",
            &case,
            &c["after_spacing"],
        );
        let case = Orientation::default().apply(case).unwrap();
        check_stage(
            &mut rep,
            &name,
            &golden,
            "after_orientation",
            &case,
            &c["after_orientation"],
        );
        let case = NormalizeIntensity {
            nonzero: true,
            channel_wise: true,
        }
        .apply(case)
        .unwrap();
        check_stage(&mut rep, &name, &golden, "final", &case, &c["final"]);
        assert_affine(
            &format!("{name} final"),
            &case.affine,
            &c["final"]["image"]["affine"],
        );
        let g = per_group.entry(group.to_string()).or_default();
        *g = g.max(rep.worst);
        rep.worst = rep.worst.max(before);
    }
    for l in &rep.lines {
        eprintln!("{l}");
    }
    eprintln!("max relative image error per group: {per_group:?}");
}

#[test]
fn random_chain_replays_match_monai() {
    let m = monai_manifest();
    let by_case: std::collections::HashMap<&str, &Value> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["group"] == "synth_tiny")
        .map(|c| (c["case"].as_str().unwrap(), c))
        .collect();
    let mut worst = 0f64;
    for rc in m["random_chain"].as_array().unwrap() {
        let id = rc["case"].as_str().unwrap();
        let (case, spacing) = run_prefix(by_case[id]);
        let case = Orientation::default()
            .apply(spacing.apply(case).unwrap())
            .unwrap();
        let p = &rc["params"];
        let sl = p["crop_slices"].as_array().unwrap();
        let start = [0, 1, 2].map(|a| sl[a][0].as_u64().unwrap() as u32);
        let size =
            [0, 1, 2].map(|a| (sl[a][1].as_u64().unwrap() - sl[a][0].as_u64().unwrap()) as u32);
        let roi = [0, 1, 2].map(|a| rc["roi_size"][a].as_u64().unwrap() as usize);
        let chain = Chain::new(vec![
            TransformSpec::RandSpatialCrop(RandSpatialCrop { roi }),
            TransformSpec::RandFlip(RandFlip {
                prob: 0.5,
                axis: Some(vec![0]),
            }),
            TransformSpec::NormalizeIntensity(NormalizeIntensity {
                nonzero: true,
                channel_wise: true,
            }),
            TransformSpec::RandScaleIntensity(
                serde_json::from_value(serde_json::json!({"factors": 0.1, "prob": 0.5})).unwrap(),
            ),
            TransformSpec::RandShiftIntensity(
                serde_json::from_value(serde_json::json!({"offsets": 0.1, "prob": 0.5})).unwrap(),
            ),
        ])
        .unwrap();
        let drawn = DrawnParams {
            draws: vec![
                Drawn::Crop { start, size },
                Drawn::Flip {
                    flipped: p["flip_axis0_done"].as_bool().unwrap(),
                },
                Drawn::ScaleIntensity {
                    factor: p["scale_done"]
                        .as_bool()
                        .unwrap()
                        .then(|| p["scale_factor"].as_f64().unwrap()),
                },
                Drawn::ShiftIntensity {
                    offset: p["shift_done"]
                        .as_bool()
                        .unwrap()
                        .then(|| p["shift_offset"].as_f64().unwrap()),
                },
            ],
        };
        let out = chain.replay_suffix(case, &drawn).unwrap();
        let g = golden_array(rc["outputs"]["image"]["file"].as_str().unwrap());
        assert_eq!(g.shape, out.image.shape.to_vec());
        let (err, n) = image_error(&out.image.data, &g.data, &|_| false);
        eprintln!("random_chain/{id}: image max rel err {err:.3e} ({n} voxels not bit-identical)");
        worst = worst.max(err);
        assert!(err < TOL, "random_chain/{id}: {err:e}");
        let gl = golden_array(rc["outputs"]["label"]["file"].as_str().unwrap());
        assert_eq!(
            label_mismatches(regions(&out), &gl),
            0,
            "random_chain/{id} labels"
        );
        assert_affine(
            &format!("random_chain/{id}"),
            &out.affine,
            &rc["outputs"]["image"]["affine"],
        );
    }
    eprintln!("random_chain max relative image error: {worst:.3e}");
}
