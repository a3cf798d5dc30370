//! Fixtures shared by fetch-dataset's unit tests: running the step, MSD trees, and tar archives
//! built member by member (so hostile ones can be made).

use super::{FetchDataset, PARAMS};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use wf_engine::step::{CancelToken, NoProgress};
use wf_engine::store::Staging;
use wf_engine::{Params, RunContext, Step, StepError, Store};

/// Params as the engine makes them: defaults filled in.
pub(super) fn params(values: &[(&str, Json)]) -> Params {
    Params::with_defaults(
        PARAMS,
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

pub(super) struct Ran {
    pub(super) result: Result<(), StepError>,
    pub(super) staging: Staging,
    _store: Store,
    _cache: tempfile::TempDir,
}

pub(super) fn run(wf_dir: &Path, values: &[(&str, Json)]) -> Ran {
    run_cancellable(wf_dir, values, &CancelToken::default())
}

pub(super) fn run_cancellable(wf_dir: &Path, values: &[(&str, Json)], cancel: &CancelToken) -> Ran {
    let cache = tempfile::tempdir().unwrap();
    let store = Store::open(cache.path()).unwrap();
    let staging = store.stage("fetch").unwrap();
    let params = params(values);
    let cx = RunContext {
        resume_dir: None,
        step_id: "fetch",
        workflow_dir: wf_dir,
        params: &params,
        inputs: &BTreeMap::new(),
        out_dir: &staging.out,
        scratch_dir: &staging.scratch,
        log_path: &staging.log,
        seed: 0,
        threads: 2,
        local_files: &BTreeMap::new(),
        external: None,
        cancel,
        progress: &NoProgress,
        store: &store,
    };
    let result = FetchDataset.run(&cx);
    Ran {
        result,
        staging,
        _store: store,
        _cache: cache,
    }
}

/// A tiny MSD tree: 2 training cases, 1 test case, plus macOS junk.
pub(super) fn msd_tree(dir: &Path) {
    for sub in ["imagesTr", "labelsTr", "imagesTs"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for i in 1..=2 {
        fs::write(
            dir.join(format!("imagesTr/BRATS_00{i}.nii.gz")),
            format!("img{i}"),
        )
        .unwrap();
        fs::write(
            dir.join(format!("labelsTr/BRATS_00{i}.nii.gz")),
            format!("lbl{i}"),
        )
        .unwrap();
    }
    fs::write(dir.join("imagesTs/BRATS_003.nii.gz"), "test3").unwrap();
    fs::write(dir.join("imagesTr/._BRATS_001.nii.gz"), "mac").unwrap();
    fs::write(
        dir.join("dataset.json"),
        serde_json::json!({
            "name": "BRATS", "numTraining": 2, "numTest": 1,
            "training": [
                {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
                {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}],
            "test": ["./imagesTs/BRATS_003.nii.gz"]
        })
        .to_string(),
    )
    .unwrap();
}

pub(super) fn assert_msd(out: &Path) {
    assert!(out.join("dataset.json").is_file());
    assert_eq!(
        fs::read_to_string(out.join("imagesTr/BRATS_002.nii.gz")).unwrap(),
        "img2"
    );
    assert_eq!(
        fs::read_to_string(out.join("labelsTr/BRATS_001.nii.gz")).unwrap(),
        "lbl1"
    );
    assert!(out.join("imagesTs/BRATS_003.nii.gz").is_file());
    assert!(
        !out.join("imagesTr/._BRATS_001.nii.gz").exists(),
        "macOS junk is dropped"
    );
}

/// A tar.gz of an MSD tree nested in `Task01_BrainTumour/`, as the real one is.
pub(super) fn msd_tar_gz(path: &Path) {
    let t = tempfile::tempdir().unwrap();
    msd_tree(&t.path().join("Task01_BrainTumour"));
    let gz =
        flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append_dir_all("Task01_BrainTumour", t.path().join("Task01_BrainTumour"))
        .unwrap();
    b.into_inner().unwrap().finish().unwrap();
}

/// A tar with one raw member whose name and link bypass tar::Builder's own path checks.
pub(super) fn raw_tar(path: &Path, name: &str, kind: tar::EntryType, link: Option<&str>) {
    raw_tar_n(path, &[(name, kind, link)]);
}

pub(super) fn raw_tar_n(path: &Path, members: &[(&str, tar::EntryType, Option<&str>)]) {
    let t = tempfile::tempdir().unwrap();
    msd_tree(t.path());
    let mut b = tar::Builder::new(File::create(path).unwrap());
    b.append_dir_all(".", t.path()).unwrap();
    for &(name, kind, link) in members {
        raw_member(&mut b, name, kind, link);
    }
    b.finish().unwrap();
}

fn raw_member(b: &mut tar::Builder<File>, name: &str, kind: tar::EntryType, link: Option<&str>) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

pub(super) fn err(r: &Ran) -> String {
    let e = r.result.as_ref().expect_err("the step should fail");
    format!("{}\n{}", e.message, e.detail.clone().unwrap_or_default())
}
