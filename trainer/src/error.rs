//! The one error type of wf-trainer: every failure names the tensor, file, epoch or step it concerns.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("invalid configuration: {field}: {detail}")]
    Config { field: &'static str, detail: String },

    #[error("checkpoint {path}: tensor `{name}` {detail}")]
    CheckpointMismatch {
        path: PathBuf,
        name: String,
        detail: String,
    },

    #[error("checkpoint {path}: {detail}")]
    Checkpoint { path: PathBuf, detail: String },

    #[error(
        "non-finite loss {loss} at epoch {epoch}, step {step}; last good checkpoint: {last_good}"
    )]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        loss: f32,
        last_good: String,
    },

    #[error("batch {step} of epoch {epoch}: {detail}")]
    BadBatch {
        epoch: usize,
        step: usize,
        detail: String,
    },

    /// A record file (`train.json`, ...) that cannot be read as its format.
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },

    #[error("samples {path}: {detail}")]
    Samples { path: PathBuf, detail: String },

    /// The caller stopped training (e.g. Ctrl-C); completed epochs' checkpoints are kept.
    #[error("interrupted in epoch {epoch}")]
    Interrupted { epoch: usize },

    #[error("data parallel: {detail}")]
    Ddp { detail: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("safetensors {path}: {source}")]
    SafeTensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;

impl TrainerError {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        TrainerError::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// Ops run inside candle (forward and backprop), whose signatures want candle errors;
    /// wrapping keeps the structured error reachable by downcasting.
    pub(crate) fn into_candle(self) -> candle_core::Error {
        candle_core::Error::wrap(self)
    }
}
