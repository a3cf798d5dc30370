//! The crate's single error type: every variant names the file or case it is about.

use std::path::PathBuf;

/// Everything that can go wrong reading, transforming, generating or storing imaging data.
///
/// Bad input never panics; it ends up here with the offending file (or case) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: corrupt or truncated gzip stream: {reason}")]
    Gzip { name: String, reason: String },
    #[error("{name}: not a NIfTI-1/NIfTI-2 single file: {reason}")]
    BadMagic { name: String, reason: String },
    #[error("{name}: invalid NIfTI header field `{field}`: {reason}")]
    BadHeader {
        name: String,
        field: &'static str,
        reason: String,
    },
    #[error(
        "{name}: data shorter than the header says: dims {dims:?} of {datatype} need {needed} bytes from offset {offset}, the {what} has {available}"
    )]
    Truncated {
        name: String,
        dims: Vec<usize>,
        datatype: &'static str,
        needed: u64,
        offset: u64,
        available: u64,
        what: &'static str,
    },
    #[error("{name}: unsupported NIfTI datatype code {code} ({reason})")]
    UnsupportedDatatype {
        name: String,
        code: i32,
        reason: &'static str,
    },
    #[error("{name}: cannot write NIfTI: {reason}")]
    Write { name: String, reason: String },
    #[error("case {case}: {what} has a non-finite voxel ({value}) at flat index {index}")]
    NonFinite {
        case: String,
        what: &'static str,
        index: usize,
        value: f32,
    },
    #[error(
        "case {case}: label value {value} is not part of the `{convention}` convention (allowed: {allowed})"
    )]
    LabelValue {
        case: String,
        value: f32,
        convention: &'static str,
        allowed: &'static str,
    },
    #[error("case {case}: image and label {what} differ: image {image}, label {label}")]
    Mismatch {
        case: String,
        what: &'static str,
        image: String,
        label: String,
    },
    #[error("case {case}: transform `{transform}`: {reason}")]
    Transform {
        case: String,
        transform: &'static str,
        reason: String,
    },
    #[error("invalid transform chain: {reason}")]
    Chain { reason: String },
    #[error("{path}: invalid sample file: {reason}")]
    Sample { path: PathBuf, reason: String },
    #[error("{path}: synthetic data generation failed: {reason}")]
    Synth { path: PathBuf, reason: String },
    /// A format file (`index.json`, `staged.json`, ...) that cannot be read as its format.
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    /// A dataset.json that is not a usable MSD data set description (`file` as the caller named it).
    #[error("{file}: {reason}")]
    Msd { file: String, reason: String },
    /// A dataset.json entry (`training[3].image`) whose path leaves the data set's root.
    #[error("{file} {entry} `{path}` points outside the data set: {why}")]
    MsdOutside {
        file: String,
        entry: String,
        path: String,
        why: &'static str,
    },
    /// Files a dataset.json lists that are not there: (entry, path as listed), in file order.
    #[error(
        "{file} lists a file that does not exist: {}",
        crate::msd::missing_summary(missing)
    )]
    MsdMissing {
        file: String,
        missing: Vec<(String, String)>,
    },
    /// Masks a metric cannot compare (lengths that do not match the shape, a bad spacing or
    /// percentile); `what` names the argument.
    #[error("metric: {what}: {reason}")]
    Metric { what: &'static str, reason: String },
}

impl ImagingError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        ImagingError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
