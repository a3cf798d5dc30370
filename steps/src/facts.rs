//! The facts this crate's steps declare about their outputs at validation (`wf_engine::facts`):
//! what a data set and its samples are known to hold before anything runs. fetch-dataset declares a
//! Dataset's, sharded-transform derives the Samples' from them through its transform chain,
//! fsx-import passes them on, and train-unet checks its network against them. Each value carries
//! the position of what the user wrote, so an error found downstream points at the value to change.

use wf_engine::Span;
use wf_imaging::transforms::Affine;

/// A value known at validation: where it is written and what it is, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Known<T> {
    pub value: T,
    /// The position of the value in the workflow file (a diagnostic about it points here).
    pub span: Span,
    /// What it is, for messages: "`cases` of step `fetch`".
    pub what: String,
}

impl<T> Known<T> {
    pub fn new(value: T, span: Span, what: impl Into<String>) -> Self {
        Known {
            value,
            span,
            what: what.into(),
        }
    }
}

/// The voxel grid every case of a data set shares (generated data).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub shape: [usize; 3],
    pub affine: Affine,
}

/// What a Dataset is known to hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetFacts {
    /// Training cases.
    pub cases: Option<Known<usize>>,
    /// Image channels (modalities).
    pub channels: Option<usize>,
    pub grid: Option<Known<Grid>>,
}

/// What a Samples artifact is known to hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplesFacts {
    /// Cases (before any is skipped as bad).
    pub cases: Option<Known<usize>>,
    pub channels: Option<usize>,
    /// The spatial size of the samples a training step reads (after the whole chain: the crop's
    /// `roi`, or the volume after `spacing`).
    pub spatial: Option<Known<[usize; 3]>>,
    /// Whether that size is a crop's (else whole volumes').
    pub cropped: bool,
    /// Whether the artifact holds each case's deterministic prefix only (`copies_per_case: 0`,
    /// augmentation online), with where that is set; whole-volume validation needs it.
    pub prefix_only: Option<Known<bool>>,
}
