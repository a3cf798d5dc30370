//! The Samples artifact (`wf-samples-v1`): `index.json` (`SamplesIndex`), the sample files it lists
//! (`cases/<case id>/<copy>.wfs`, or `prefix.wfs` when augmentation runs online), an optional
//! `staged.json` (`Staged`: a verified copy on fast storage to read instead), and the
//! `preprocessing.json` a Model and an Export carry (`Preprocessing`: how to prepare new images the
//! same way). One type per file, used by every writer and reader; each names its format and the
//! reader refuses another (the error names the file).

use crate::error::ImagingError;
use crate::transforms::Chain;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The format of `index.json`.
pub const SAMPLES_FORMAT: &str = "wf-samples-v1";
/// The format of `staged.json`.
pub const STAGED_FORMAT: &str = "wf-staged-v1";

pub const INDEX_FILE: &str = "index.json";
pub const STAGED_FILE: &str = "staged.json";
pub const PREPROCESSING_FILE: &str = "preprocessing.json";

fn format_error(path: &Path, detail: impl Into<String>) -> ImagingError {
    ImagingError::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImagingError> {
    let text = std::fs::read(path).map_err(|e| ImagingError::io(path, "read", e))?;
    serde_json::from_slice(&text).map_err(|e| format_error(path, e.to_string()))
}

/// JSON text with object keys sorted (serde_json's map order), whatever the field order of the
/// Rust type: the bytes of `index.json` are part of the artifact digest, so they must not depend
/// on how a struct is declared.
fn sorted_json<T: Serialize>(v: &T) -> String {
    let value = serde_json::to_value(v).expect("formats serialize");
    serde_json::to_string_pretty(&value).expect("JSON values serialize")
}

/// One processed case: its sample files, relative to the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFiles {
    pub id: String,
    pub files: Vec<String>,
}

/// A case the preprocessing left out (`on_bad_case: skip`), with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedCase {
    pub id: String,
    pub error: String,
}

/// `index.json` of a Samples artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplesIndex {
    /// `wf-samples-v1`.
    pub format: String,
    /// The whole chain, as specs (`Chain::from_json` reads it back).
    pub transforms: serde_json::Value,
    /// Transforms of the deterministic prefix (the first random one and after: the suffix).
    pub prefix_len: usize,
    /// The label convention of `convert-labels` (`msd`, `brats`, `brats-monai`).
    pub labels: String,
    /// The workflow seed the random copies were drawn from.
    pub seed: u64,
    /// Random copies stored per case; 0: only the prefix, the loader applies the suffix online.
    pub copies_per_case: u32,
    /// Image precision of the sample files (`f32`, `bf16`); indices written before bf16 samples
    /// existed have none and hold f32.
    #[serde(default = "f32_dtype")]
    pub sample_dtype: String,
    pub cases: Vec<CaseFiles>,
    #[serde(default)]
    pub skipped: Vec<SkippedCase>,
}

fn f32_dtype() -> String {
    "f32".to_string()
}

impl SamplesIndex {
    /// An index for `chain`'s output.
    pub fn new(
        chain: &Chain,
        labels: &str,
        seed: u64,
        copies_per_case: u32,
        sample_dtype: &str,
        cases: Vec<CaseFiles>,
        skipped: Vec<SkippedCase>,
    ) -> SamplesIndex {
        SamplesIndex {
            format: SAMPLES_FORMAT.to_string(),
            transforms: serde_json::to_value(chain.specs()).expect("specs serialize"),
            prefix_len: chain.prefix().len(),
            labels: labels.to_string(),
            seed,
            copies_per_case,
            sample_dtype: sample_dtype.to_string(),
            cases,
            skipped,
        }
    }

    /// Reads and checks `path` (an `index.json`): its format, and at least one case.
    pub fn read(path: &Path) -> Result<SamplesIndex, ImagingError> {
        let value: serde_json::Value = read_json(path)?;
        // The format first: another version's index may not parse as this one.
        let format = value.get("format").and_then(|f| f.as_str());
        if format != Some(SAMPLES_FORMAT) {
            return Err(format_error(
                path,
                format!(
                    "not a {SAMPLES_FORMAT} index (format {}); it was written by another version of wf",
                    format.map_or("missing".to_string(), |f| format!("`{f}`"))
                ),
            ));
        }
        let index: SamplesIndex =
            serde_json::from_value(value).map_err(|e| format_error(path, e.to_string()))?;
        if index.cases.is_empty() {
            return Err(format_error(path, "no cases"));
        }
        Ok(index)
    }

    /// The chain the samples were made with.
    pub fn chain(&self) -> Result<Chain, ImagingError> {
        Chain::from_json(&self.transforms)
    }

    /// The text of `index.json`.
    pub fn to_json(&self) -> String {
        sorted_json(self)
    }

    /// What a Model records so new images can be prepared the same way.
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            transforms: self.transforms.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// `staged.json`: the samples also lie, verified, in `path` (fast storage); readers go there.
/// Version 1 is written without its `format` field (and in field order), exactly as before formats
/// were named, so a staged artifact's digest does not move; a later version writes its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    /// `wf-staged-v1` when absent.
    #[serde(default = "staged_format", skip_serializing_if = "is_staged_v1")]
    pub format: String,
    /// Absolute directory holding a verified copy of the samples.
    pub path: PathBuf,
    /// The artifact digest of the samples that were copied.
    pub artifact: String,
}

fn staged_format() -> String {
    STAGED_FORMAT.to_string()
}

fn is_staged_v1(f: &str) -> bool {
    f == STAGED_FORMAT
}

impl Staged {
    pub fn new(path: PathBuf, artifact: String) -> Staged {
        Staged {
            format: staged_format(),
            path,
            artifact,
        }
    }

    /// `staged.json` in `dir`, if there is one.
    pub fn read_in(dir: &Path) -> Result<Option<Staged>, ImagingError> {
        let path = dir.join(STAGED_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let staged: Staged = read_json(&path)?;
        if staged.format != STAGED_FORMAT {
            return Err(format_error(
                &path,
                format!(
                    "format `{}` is not {STAGED_FORMAT}; it was written by another version of wf",
                    staged.format
                ),
            ));
        }
        Ok(Some(staged))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("formats serialize")
    }
}

/// `preprocessing.json` of a Model or an Export: the samples' chain and label convention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub transforms: serde_json::Value,
    /// The label convention; `msd` when absent.
    #[serde(default = "msd")]
    pub labels: String,
}

fn msd() -> String {
    "msd".to_string()
}

impl Preprocessing {
    pub fn read(path: &Path) -> Result<Preprocessing, ImagingError> {
        read_json(path)
    }

    pub fn to_json(&self) -> String {
        sorted_json(self) + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Chain {
        Chain::build(
            &serde_json::json!(["load", {"rand-flip": {"prob": 0.5, "axis": 0}}]),
            "msd",
        )
        .unwrap()
    }

    #[test]
    fn index_round_trips_with_sorted_keys() {
        let index = SamplesIndex::new(
            &chain(),
            "msd",
            7,
            2,
            "f32",
            vec![CaseFiles {
                id: "a".into(),
                files: vec!["cases/a/0.wfs".into()],
            }],
            vec![SkippedCase {
                id: "b".into(),
                error: "bad".into(),
            }],
        );
        let text = index.to_json();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(INDEX_FILE);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(SamplesIndex::read(&p).unwrap(), index);
        assert_eq!(index.chain().unwrap(), chain());
    }

    #[test]
    fn other_formats_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(INDEX_FILE);
        for (text, want) in [
            (
                r#"{"format": "wf-samples-v2", "cases": []}"#,
                "format `wf-samples-v2`",
            ),
            (r#"{"cases": []}"#, "format missing"),
            ("not json", "expected"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = SamplesIndex::read(&p).unwrap_err().to_string();
            assert!(
                e.contains(&p.display().to_string()) && e.contains(want),
                "{e}"
            );
        }
        std::fs::write(
            dir.path().join(STAGED_FILE),
            r#"{"format": "x", "path": "/a", "artifact": "b"}"#,
        )
        .unwrap();
        let e = Staged::read_in(dir.path()).unwrap_err().to_string();
        assert!(e.contains(STAGED_FILE) && e.contains("`x`"), "{e}");
        // Before formats were named: read as v1.
        std::fs::write(
            dir.path().join(STAGED_FILE),
            r#"{"path": "/a", "artifact": "b"}"#,
        )
        .unwrap();
        assert_eq!(
            Staged::read_in(dir.path()).unwrap(),
            Some(Staged::new("/a".into(), "b".into()))
        );
    }
}
