//! The Medical Segmentation Decathlon's `dataset.json` as one serde type: read and checked here,
//! written here, its case list and its layout check defined once.
//!
//! The format is external: the decathlon (medicaldecathlon.com) defined it, its ten tasks ship it,
//! and other tools read and write it (MONAI's `load_decathlon_datalist`, derived data sets). It has no
//! version field and we cannot add one. What a version check would guard against — reading a file of
//! another shape as if it were the one we expect — is done by checking, on read, the structure that
//! everything downstream relies on, each failure naming the file and the entry:
//! - [`MsdDataset::read`] / [`MsdDataset::from_slice`]: a `training` list whose every entry has an
//!   `image`, and `numTraining`, when present, equal to the number of entries (a mismatch means a
//!   truncated or hand-edited list);
//! - [`MsdDataset::cases`]: case ids (the image's file name without `.nii` / `.gz`) are unique,
//!   since samples, cache keys and shard records are named by them;
//! - [`MsdDataset::check_layout`]: every listed file exists under the data set's root and no path
//!   leaves it.
//!
//! Everything else is tolerated, because real files vary: the descriptive keys (`name`, `modality`,
//! `labels`, ...) may be missing, unknown keys are ignored, and `test` may list paths (MSD) or
//! `{"image": ...}` objects (some derived sets).
//!
//! The writer keeps the decathlon's key order and formatting, so the files it writes (synthetic data
//! sets) stay byte-identical, and with them their digests and every cache key built on them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::ImagingError;
use crate::nifti::write_atomic;

/// The file's name at the root of an MSD data set.
pub const DATASET_JSON: &str = "dataset.json";

/// A `dataset.json`, validated (see the module docs). Fields in the decathlon's key order, which is
/// the order they are written in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDataset")]
pub struct MsdDataset {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// `"3D"` or `"4D"` (several channels per image).
    #[serde(rename = "tensorImageSize", skip_serializing_if = "Option::is_none")]
    pub tensor_image_size: Option<String>,
    /// Channel index (`"0"`, `"1"`, ...) → modality name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modality: Option<BTreeMap<String, String>>,
    /// Label value (`"0"`, `"1"`, ...) → class name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "numTraining", skip_serializing_if = "Option::is_none")]
    pub num_training: Option<usize>,
    #[serde(rename = "numTest", skip_serializing_if = "Option::is_none")]
    pub num_test: Option<usize>,
    pub training: Vec<MsdTraining>,
    pub test: Vec<MsdTest>,
}

/// One `training` entry; paths as written, relative to the data set's root (usually `./...`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MsdTraining {
    pub image: String,
    /// Required by [`MsdDataset::check_layout`]; a reader that can do without labels may.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// One `test` entry: MSD lists test images as paths; some derived sets use `{"image": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MsdTest {
    Path(String),
    Case { image: String },
}

impl MsdTest {
    pub fn image(&self) -> &str {
        match self {
            MsdTest::Path(p) | MsdTest::Case { image: p } => p,
        }
    }
}

/// A training case as the rest of the pipeline names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsdCase {
    /// The image's file name without `.nii` / `.gz`: `BRATS_001`.
    pub id: String,
    /// Relative to the data set's root, `./` stripped: `imagesTr/BRATS_001.nii.gz`.
    pub image: String,
    pub label: Option<String>,
}

/// The file as parsed, before the checks that make it an [`MsdDataset`]. Everything is optional
/// here so that a missing key becomes a message naming the entry, not serde's generic one.
#[derive(Deserialize)]
struct RawDataset {
    name: Option<String>,
    description: Option<String>,
    reference: Option<String>,
    licence: Option<String>,
    release: Option<String>,
    #[serde(rename = "tensorImageSize")]
    tensor_image_size: Option<String>,
    modality: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "numTraining")]
    num_training: Option<usize>,
    #[serde(rename = "numTest")]
    num_test: Option<usize>,
    training: Option<Vec<RawTraining>>,
    #[serde(default)]
    test: Vec<MsdTest>,
}

#[derive(Deserialize)]
struct RawTraining {
    image: Option<String>,
    label: Option<String>,
}

/// The structural checks of a read (the module docs say why); the error is the reason, without the
/// file name, which the caller knows.
impl TryFrom<RawDataset> for MsdDataset {
    type Error = String;

    fn try_from(raw: RawDataset) -> Result<Self, String> {
        let training = raw.training.ok_or("has no \"training\" list")?;
        let training = training
            .into_iter()
            .enumerate()
            .map(|(i, t)| match t.image {
                Some(image) => Ok(MsdTraining {
                    image,
                    label: t.label,
                }),
                None => Err(format!("training[{i}] has no \"image\"")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(n) = raw.num_training
            && n != training.len()
        {
            return Err(format!(
                "numTraining is {n}, but `training` lists {} case{}",
                training.len(),
                if training.len() == 1 { "" } else { "s" }
            ));
        }
        Ok(MsdDataset {
            name: raw.name,
            description: raw.description,
            reference: raw.reference,
            licence: raw.licence,
            release: raw.release,
            tensor_image_size: raw.tensor_image_size,
            modality: raw.modality,
            labels: raw.labels,
            num_training: raw.num_training,
            num_test: raw.num_test,
            training,
            test: raw.test,
        })
    }
}

impl MsdDataset {
    /// Reads and checks the file at `path`; errors name it by that path.
    pub fn read(path: &Path) -> Result<MsdDataset, ImagingError> {
        let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, "read", e))?;
        Self::from_slice(&bytes, &path.display().to_string())
    }

    /// Parses and checks the bytes of a dataset.json; errors name it `name`.
    pub fn from_slice(bytes: &[u8], name: &str) -> Result<MsdDataset, ImagingError> {
        let fail = |reason: String| ImagingError::Msd {
            file: name.to_string(),
            reason,
        };
        // Parsed in two phases (raw, then checked) rather than through `try_from` directly, so a
        // failed check does not carry serde's position of the file's end.
        let raw: RawDataset = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
        MsdDataset::try_from(raw).map_err(fail)
    }

    /// The training cases in file order, with their ids; refuses two entries with one id, which
    /// would otherwise overwrite each other's samples.
    pub fn cases(&self) -> Result<Vec<MsdCase>, ImagingError> {
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(self.training.len());
        for (i, t) in self.training.iter().enumerate() {
            let image = strip_dot(&t.image).to_string();
            let id = case_id(&image);
            if let Some(&j) = first.get(&id) {
                return Err(ImagingError::Msd {
                    file: DATASET_JSON.into(),
                    reason: format!(
                        "training[{j}] (`{}`) and training[{i}] (`{}`) both have case id `{id}`; case ids must be unique",
                        self.training[j].image, t.image
                    ),
                });
            }
            first.insert(id.clone(), i);
            out.push(MsdCase {
                id,
                image,
                label: t.label.as_deref().map(|l| strip_dot(l).to_string()),
            });
        }
        Ok(out)
    }

    /// Checks the MSD layout under `root` (the directory holding dataset.json): every training entry
    /// has a label, no listed path leaves the root, and every listed file exists. A missing file is
    /// reported with all the others missing, so one run shows the whole damage.
    pub fn check_layout(&self, root: &Path) -> Result<(), ImagingError> {
        let mut listed: Vec<(String, &str)> = Vec::new();
        for (i, t) in self.training.iter().enumerate() {
            let Some(label) = &t.label else {
                return Err(ImagingError::Msd {
                    file: DATASET_JSON.into(),
                    reason: format!("training[{i}] has no \"label\""),
                });
            };
            listed.push((format!("training[{i}].image"), &t.image));
            listed.push((format!("training[{i}].label"), label));
        }
        for (i, t) in self.test.iter().enumerate() {
            let entry = match t {
                MsdTest::Path(_) => format!("test[{i}]"),
                MsdTest::Case { .. } => format!("test[{i}].image"),
            };
            listed.push((entry, t.image()));
        }
        let mut missing = Vec::new();
        for (entry, rel) in listed {
            if let Some(why) = outside_root(Path::new(rel)) {
                return Err(ImagingError::MsdOutside {
                    file: DATASET_JSON.into(),
                    entry,
                    path: rel.to_string(),
                    why,
                });
            }
            if !root.join(rel).is_file() {
                missing.push((entry, rel.to_string()));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ImagingError::MsdMissing {
                file: DATASET_JSON.into(),
                missing,
            })
        }
    }

    /// The file's bytes: pretty JSON, the MSD keys in the decathlon's order, then `extra`'s keys in
    /// its own order (a struct's field order; e.g. the synthetic generator's record).
    pub fn to_json_with(&self, extra: &impl Serialize) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct With<'a, E> {
            #[serde(flatten)]
            msd: &'a MsdDataset,
            #[serde(flatten)]
            extra: &'a E,
        }
        serde_json::to_vec_pretty(&With { msd: self, extra })
    }

    /// Writes [`MsdDataset::to_json_with`] to `path` atomically.
    pub fn write_with(&self, path: &Path, extra: &impl Serialize) -> Result<(), ImagingError> {
        let bytes = self.to_json_with(extra).map_err(|e| ImagingError::Msd {
            file: path.display().to_string(),
            reason: format!("cannot serialize: {e}"),
        })?;
        write_atomic(path, &bytes)
    }
}

/// `./imagesTr/x` → `imagesTr/x`, as MSD writes its paths.
fn strip_dot(path: &str) -> &str {
    path.trim_start_matches("./")
}

/// The case id of an image path: its file name without `.nii` / `.gz` (`BRATS_001`).
fn case_id(image: &str) -> String {
    let name = Path::new(image)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(image);
    name.trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string()
}

/// Why a listed path would leave the data set's root (`None`: it stays inside).
fn outside_root(path: &Path) -> Option<&'static str> {
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Some("absolute paths are not allowed");
            }
            Component::ParentDir => return Some("`..` components are not allowed"),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    None
}

/// `entry: path` of the first missing file, and how many more there are.
pub(crate) fn missing_summary(missing: &[(String, String)]) -> String {
    let Some((entry, path)) = missing.first() else {
        return String::new();
    };
    match missing.len() {
        1 => format!("{entry}: {path}"),
        n => format!("{entry}: {path} (and {} more)", n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of MSD Task01's dataset.json, trimmed to three cases, with a key MSD does not have.
    const TASK01: &str = r#"{
        "name": "BRATS",
        "description": "Gliomas segmentation tumour and oedema in on brain images",
        "reference": "https://www.med.upenn.edu/sbia/brats2017.html",
        "licence": "CC-BY-SA 4.0",
        "release": "2.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": 3,
        "numTest": 1,
        "training": [
            {"image": "./imagesTr/BRATS_457.nii.gz", "label": "./labelsTr/BRATS_457.nii.gz"},
            {"image": "./imagesTr/BRATS_306.nii.gz", "label": "./labelsTr/BRATS_306.nii.gz"},
            {"image": "imagesTr/BRATS_001.nii", "label": "labelsTr/BRATS_001.nii"}
        ],
        "test": ["./imagesTs/BRATS_557.nii.gz"],
        "x-site": {"scanner": "unknown"}
    }"#;

    fn parse(text: &str) -> Result<MsdDataset, String> {
        MsdDataset::from_slice(text.as_bytes(), "dataset.json").map_err(|e| e.to_string())
    }

    #[test]
    fn reads_an_msd_file_and_lists_its_cases() {
        let ds = parse(TASK01).unwrap();
        assert_eq!(ds.name.as_deref(), Some("BRATS"));
        assert_eq!(ds.modality.as_ref().unwrap()["2"], "t1gd");
        assert_eq!((ds.num_training, ds.num_test), (Some(3), Some(1)));
        assert_eq!(
            ds.test,
            vec![MsdTest::Path("./imagesTs/BRATS_557.nii.gz".into())]
        );
        let cases = ds.cases().unwrap();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["BRATS_457", "BRATS_306", "BRATS_001"]);
        assert_eq!(
            cases[0],
            MsdCase {
                id: "BRATS_457".into(),
                image: "imagesTr/BRATS_457.nii.gz".into(),
                label: Some("labelsTr/BRATS_457.nii.gz".into()),
            }
        );
    }

    #[test]
    fn descriptive_keys_may_be_missing() {
        let ds = parse(r#"{"training": [{"image": "./a.nii.gz"}], "test": [{"image": "t.nii"}]}"#)
            .unwrap();
        assert_eq!(ds.name, None);
        assert_eq!(ds.num_training, None);
        assert_eq!(ds.training[0].label, None);
        assert_eq!(ds.test[0].image(), "t.nii");
        assert_eq!(ds.cases().unwrap()[0].id, "a");
    }

    #[test]
    fn structural_problems_name_the_file_and_the_entry() {
        let cases = [
            (
                r#"{"name": "x"}"#,
                r#"dataset.json: has no "training" list"#,
            ),
            (
                r#"{"training": [{"image": "a"}, {"image": "b"}, {"image": "c"}, {"label": "d"}]}"#,
                r#"dataset.json: training[3] has no "image""#,
            ),
            (
                r#"{"numTraining": 3, "training": [{"image": "a"}]}"#,
                "dataset.json: numTraining is 3, but `training` lists 1 case",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err(), want);
        }
        let e = parse(r#"{"training": 5}"#).unwrap_err();
        assert!(e.starts_with("dataset.json: invalid type"), "{e}");
        let e = parse("{").unwrap_err();
        assert!(e.starts_with("dataset.json: EOF"), "{e}");
    }

    #[test]
    fn read_names_the_file_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dataset.json");
        std::fs::write(&path, "{}").unwrap();
        let e = MsdDataset::read(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: has no \"training\" list", path.display()));
        let e = MsdDataset::read(&dir.path().join("nope.json")).unwrap_err();
        assert!(matches!(e, ImagingError::Io { .. }), "{e}");
    }

    #[test]
    fn duplicate_case_ids_are_refused_naming_both_entries() {
        let ds = parse(
            r#"{"training": [{"image": "./imagesTr/a/X_1.nii.gz"}, {"image": "./imagesTr/b.nii.gz"},
                             {"image": "./imagesTr/b/X_1.nii"}]}"#,
        )
        .unwrap();
        assert_eq!(
            ds.cases().unwrap_err().to_string(),
            "dataset.json: training[0] (`./imagesTr/a/X_1.nii.gz`) and training[2] \
             (`./imagesTr/b/X_1.nii`) both have case id `X_1`; case ids must be unique"
        );
    }

    fn layout(ds: &str, files: &[&str]) -> Result<(), ImagingError> {
        let root = tempfile::tempdir().unwrap();
        for f in files {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        parse(ds).unwrap().check_layout(root.path())
    }

    #[test]
    fn the_layout_check_names_every_missing_file() {
        let files = [
            "imagesTr/BRATS_457.nii.gz",
            "labelsTr/BRATS_457.nii.gz",
            "imagesTr/BRATS_306.nii.gz",
            "labelsTr/BRATS_306.nii.gz",
            "imagesTr/BRATS_001.nii",
            "labelsTr/BRATS_001.nii",
            "imagesTs/BRATS_557.nii.gz",
        ];
        layout(TASK01, &files).unwrap();
        let e = layout(TASK01, &files[..3]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dataset.json lists a file that does not exist: \
             training[1].label: ./labelsTr/BRATS_306.nii.gz (and 3 more)"
        );
        let ImagingError::MsdMissing { missing, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(
            missing[3],
            ("test[0]".into(), "./imagesTs/BRATS_557.nii.gz".into())
        );
    }

    #[test]
    fn the_layout_check_refuses_paths_out_of_the_root_and_missing_labels() {
        let e = layout(
            r#"{"training": [{"image": "a", "label": "b"}], "test": [{"image": "../../etc/passwd"}]}"#,
            &["a", "b"],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "dataset.json test[0].image `../../etc/passwd` points outside the data set: \
             `..` components are not allowed"
        );
        let e = layout(r#"{"training": [{"image": "/abs", "label": "b"}]}"#, &["b"]).unwrap_err();
        assert!(
            e.to_string().contains("absolute paths are not allowed"),
            "{e}"
        );
        let e = layout(r#"{"training": [{"image": "a"}]}"#, &["a"]).unwrap_err();
        assert_eq!(e.to_string(), r#"dataset.json: training[0] has no "label""#);
    }

    #[test]
    fn writes_what_it_reads_in_msd_key_order() {
        let ds = parse(TASK01).unwrap();
        #[derive(Serialize)]
        struct Extra {
            zz: u8,
            aa: u8,
        }
        let bytes = ds.to_json_with(&Extra { zz: 1, aa: 2 }).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "description",
                "reference",
                "licence",
                "release",
                "tensorImageSize",
                "modality",
                "labels",
                "numTraining",
                "numTest",
                "training",
                "test",
                "zz",
                "aa"
            ]
        );
        assert_eq!(MsdDataset::from_slice(&bytes, "x").unwrap(), ds);
    }
}
