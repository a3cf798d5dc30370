//! End-to-end tests of the preprocessing half: `wf synth`, `wf transform`, and a workflow
//! fetch-dataset → sharded-transform → fsx-import, from synthetic data and from a tar served over HTTP
//! on 127.0.0.1, with per-case incremental caching and bad-case handling.

mod common;

use common::*;
use std::path::Path;

const CHAIN: &str = r#"      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - spacing: { pixdim: [1.5, 1.5, 2.0], mode: [bilinear, nearest] }
        - orientation: { axcodes: RAS }
        - rand-spatial-crop: { roi: [24, 24, 12] }
        - rand-flip: { prob: 0.5, axis: 0 }
        - normalize-intensity: { nonzero: true, channel_wise: true }
        - rand-scale-intensity: { factors: 0.1, prob: 0.5 }
        - rand-shift-intensity: { offsets: 0.1, prob: 0.5 }
"#;

fn workflow(dir: &Path, seed: u64, source: &str, extra: &str) {
    let yaml = format!(
        "name: prep\nseed: {seed}\nsteps:\n  fetch: {{ uses: fetch-dataset, with: {source} }}\n  preprocess:\n    uses: sharded-transform\n    inputs: {{ dataset: fetch }}\n    with:\n{CHAIN}      copies_per_case: 2\n{extra}  stage: {{ uses: fsx-import, inputs: {{ samples: preprocess }} }}\n"
    );
    std::fs::write(dir.join("wf.yaml"), yaml).unwrap();
}

fn count_wfs(dir: &Path) -> usize {
    fn walk(d: &Path) -> usize {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    usize::from(p.extension().is_some_and(|x| x == "wfs"))
                }
            })
            .sum()
    }
    walk(dir)
}

#[test]
fn synth_and_transform_write_a_case() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let out = wf(
        dir,
        &[
            "synth", "--out", "data", "--cases", "2", "--shape", "48,48,32", "--seed", "5",
            "--test", "1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ds: serde_json::Value = serde_json::from_str(&read(dir.join("data/dataset.json"))).unwrap();
    assert_eq!(ds["numTraining"], 2);
    assert!(
        dir.join("data/imagesTr/BRATS_002.nii.gz").is_file()
            && dir.join("data/labelsTr/BRATS_001.nii.gz").is_file()
    );
    std::fs::write(
        dir.join("t.yaml"),
        format!(
            "labels: msd\n{}",
            CHAIN
                .replace("      transforms:", "transforms:")
                .replace("\n        -", "\n  -")
        ),
    )
    .unwrap();
    let args = [
        "transform",
        "--transforms",
        "t.yaml",
        "--image",
        "data/imagesTr/BRATS_001.nii.gz",
        "--label",
        "data/labelsTr/BRATS_001.nii.gz",
        "--seed",
        "3",
        "--out",
        "case",
    ];
    let out = wf(dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = wf_imaging::nifti::read_nifti(&dir.join("case/image.nii.gz")).unwrap();
    assert_eq!(img.dims, [24, 24, 12, 4], "channels on the 4th axis");
    let lab = wf_imaging::nifti::read_nifti(&dir.join("case/label.nii.gz")).unwrap();
    assert_eq!(lab.dims, [24, 24, 12]);
    assert!(
        lab.data
            .iter()
            .all(|&v| v == v.trunc() && (0.0..8.0).contains(&v)),
        "region bits"
    );
    assert!(
        (img.affine[0][0].abs() - 1.5).abs() < 1e-6 && (img.affine[2][2].abs() - 2.0).abs() < 1e-6
    );
    // Same seed, same bytes.
    let again = wf(dir, &[&args[..args.len() - 1], &["case2"]].concat());
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(dir.join("case/image.nii.gz")).unwrap(),
        std::fs::read(dir.join("case2/image.nii.gz")).unwrap()
    );
    // A bad transforms file is invalid input, with positions.
    std::fs::write(dir.join("bad.yaml"), "transforms:\n  - lod\n").unwrap();
    let bad = wf(
        dir,
        &[
            "transform",
            "--transforms",
            "bad.yaml",
            "--image",
            "data/imagesTr/BRATS_001.nii.gz",
            "--out",
            "x",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("bad.yaml:2:5: unknown transform `lod`"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn preprocessing_caches_per_case_and_per_seed() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let synth = |n| format!("{{ source: synthetic, cases: {n}, shape: [48, 48, 32], seed: 1 }}");
    workflow(dir, 0, &synth(3), "");
    let v = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert!(statuses(&v).iter().all(|(_, s)| s == "ran"), "{v}");
    let derived = dir.join(".wf/cache/derived/sharded-transform");
    assert_eq!(
        (
            count_wfs(&derived.join("prefix")),
            count_wfs(&derived.join("samples"))
        ),
        (3, 6)
    );
    let samples = Path::new(v["steps"][1]["output"]["path"].as_str().unwrap()).to_path_buf();
    let index: serde_json::Value = serde_json::from_str(&read(samples.join("index.json"))).unwrap();
    assert_eq!(index["format"], "wf-samples-v1");
    assert_eq!(index["cases"].as_array().unwrap().len(), 3);
    let s = wf_imaging::sample::SampleFile::open(&samples.join("cases/BRATS_002/1.wfs")).unwrap();
    assert_eq!(s.case_id(), "BRATS_002");
    assert_eq!(s.copy(), 1);
    assert_eq!(s.shape(), [4, 24, 24, 12]);

    // Samples recomputed from the prefix read back from disk equal those made from the prefix in memory.
    std::fs::remove_dir_all(derived.join("samples")).unwrap();
    let again = json(&wf(
        dir,
        &["run", "wf.yaml", "--json", "--force", "preprocess"],
    ));
    assert_eq!(status_of(&again, "preprocess"), "ran");
    assert_eq!(
        output_digest(&again, "preprocess"),
        output_digest(&v, "preprocess")
    );

    // One more case: one more prefix and two more samples; the other cases come from the cache.
    workflow(dir, 0, &synth(4), "");
    assert!(wf(dir, &["run", "wf.yaml"]).status.success());
    assert_eq!(
        (
            count_wfs(&derived.join("prefix")),
            count_wfs(&derived.join("samples"))
        ),
        (4, 8)
    );
    // A new seed recomputes only the random part.
    workflow(dir, 9, &synth(4), "");
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    assert_eq!(plan["steps"][1]["reason"], "workflow seed changed");
    assert!(wf(dir, &["run", "wf.yaml"]).status.success());
    assert_eq!(
        (
            count_wfs(&derived.join("prefix")),
            count_wfs(&derived.join("samples"))
        ),
        (4, 16)
    );
    // shards is not part of the key: changing it reuses everything.
    workflow(dir, 9, &synth(4), "      shards: 1\n");
    let v = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert!(statuses(&v).iter().all(|(_, s)| s == "cached"), "{v}");
}

#[test]
fn samples_do_not_depend_on_the_shard_count() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let src = "{ source: synthetic, cases: 3, shape: [48, 48, 32], seed: 2 }";
    workflow(a.path(), 4, src, "      shards: 1\n");
    workflow(b.path(), 4, src, "      shards: 3\n");
    let va = json(&wf(a.path(), &["run", "wf.yaml", "--json", "--jobs", "1"]));
    let vb = json(&wf(b.path(), &["run", "wf.yaml", "--json"]));
    assert_eq!(
        output_digest(&va, "preprocess"),
        output_digest(&vb, "preprocess")
    );
}

#[test]
fn online_augmentation_stores_the_prefix_only() {
    let t = tempfile::tempdir().unwrap();
    workflow(
        t.path(),
        0,
        "{ source: synthetic, cases: 2, shape: [48, 48, 32] }",
        "",
    );
    let yaml = read(t.path().join("wf.yaml")).replace("copies_per_case: 2", "copies_per_case: 0");
    std::fs::write(t.path().join("wf.yaml"), yaml).unwrap();
    let v = json(&wf(t.path(), &["run", "wf.yaml", "--json"]));
    let samples = Path::new(v["steps"][1]["output"]["path"].as_str().unwrap()).to_path_buf();
    let s =
        wf_imaging::sample::SampleFile::open(&samples.join("cases/BRATS_001/prefix.wfs")).unwrap();
    assert_eq!(s.copy(), wf_imaging::sample::PREFIX_COPY);
    let index: serde_json::Value = serde_json::from_str(&read(samples.join("index.json"))).unwrap();
    assert_eq!(
        index["prefix_len"], 5,
        "the loader replays transforms[5..] online"
    );
}

#[test]
fn bf16_samples_round_the_f32_samples() {
    let src = "{ source: synthetic, cases: 2, shape: [48, 48, 32], seed: 4 }";
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    workflow(a.path(), 1, src, "");
    workflow(b.path(), 1, src, "      sample_dtype: bf16\n");
    let va = json(&wf(a.path(), &["run", "wf.yaml", "--json"]));
    // Online mode too: the prefix is converted, the exact f32 prefix stays in the derived cache.
    let yaml = read(b.path().join("wf.yaml"));
    let vb = json(&wf(b.path(), &["run", "wf.yaml", "--json"]));
    std::fs::write(
        b.path().join("wf.yaml"),
        yaml.replace("copies_per_case: 2", "copies_per_case: 0"),
    )
    .unwrap();
    let vc = json(&wf(b.path(), &["run", "wf.yaml", "--json"]));
    let out = |v: &serde_json::Value| {
        Path::new(v["steps"][1]["output"]["path"].as_str().unwrap()).to_path_buf()
    };
    use wf_imaging::sample::{SampleDtype, SampleFile};
    for (f32_file, bf16_file) in [
        (
            "cases/BRATS_001/1.wfs",
            out(&vb).join("cases/BRATS_001/1.wfs"),
        ),
        (
            "cases/BRATS_002/0.wfs",
            out(&vb).join("cases/BRATS_002/0.wfs"),
        ),
    ] {
        let x = SampleFile::open(&out(&va).join(f32_file)).unwrap();
        let y = SampleFile::open(&bf16_file).unwrap();
        assert_eq!(
            (x.dtype(), y.dtype()),
            (SampleDtype::F32, SampleDtype::Bf16)
        );
        assert_eq!(x.labels(), y.labels());
        assert_eq!(x.drawn(), y.drawn());
        let (xi, yi) = (x.image(), y.image());
        assert_eq!(xi.len(), yi.len());
        for (p, q) in xi.iter().zip(yi.iter()) {
            assert!((p - q).abs() <= p.abs() / 256.0, "{p} vs {q}");
        }
    }
    let prefix = SampleFile::open(&out(&vc).join("cases/BRATS_001/prefix.wfs")).unwrap();
    assert_eq!(prefix.dtype(), SampleDtype::Bf16);
    let index: serde_json::Value =
        serde_json::from_str(&read(out(&vc).join("index.json"))).unwrap();
    assert_eq!(index["sample_dtype"], "bf16");
}

/// A data set directory with one truncated image.
fn damaged_dataset(dir: &Path) {
    assert!(
        wf(
            dir,
            &[
                "synth", "--out", "data", "--cases", "3", "--shape", "40,40,24"
            ]
        )
        .status
        .success()
    );
    let victim = dir.join("data/imagesTr/BRATS_002.nii.gz");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn a_bad_case_fails_the_step_or_is_skipped_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    damaged_dataset(dir);
    workflow(dir, 0, "{ source: data }", "");
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(status_of(&v, "preprocess"), "failed");
    let err = v["steps"][1]["error"].as_str().unwrap();
    assert!(
        err.contains("BRATS_002") && err.contains("BRATS_002.nii.gz"),
        "names the case and the file: {err}"
    );

    workflow(dir, 0, "{ source: data }", "      on_bad_case: skip\n");
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let warnings = v["steps"][1]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("skipped case BRATS_002:"),
        "{warnings:?}"
    );
    assert!(stderr(&out).contains("warning  preprocess  skipped case BRATS_002"));
    // Cached runs still list the skipped case.
    let again = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(again["steps"][1]["status"], "cached");
    assert_eq!(again["steps"][1]["warnings"], v["steps"][1]["warnings"]);
}

#[test]
fn fetch_a_tar_over_http_on_loopback_then_preprocess() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    assert!(
        wf(
            dir,
            &[
                "synth",
                "--out",
                "Task01_BrainTumour",
                "--cases",
                "2",
                "--shape",
                "40,40,24"
            ]
        )
        .status
        .success()
    );
    std::fs::create_dir(dir.join("www")).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["czf", "www/task.tar.gz", "Task01_BrainTumour"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(tar.success());
    // A real HTTP server on 127.0.0.1 (Python's), on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            "www",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "http.server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    workflow(
        dir,
        0,
        &format!("{{ source: \"http://127.0.0.1:{port}/task.tar.gz\" }}"),
        "",
    );
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let samples = Path::new(v["steps"][1]["output"]["path"].as_str().unwrap()).to_path_buf();
    assert_eq!(count_wfs(&samples), 4);
}
