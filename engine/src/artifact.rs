//! Artifact types: what flows along the DAG's edges. Edges are type-checked before anything runs.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ArtifactType {
    /// A data set in the MSD layout: dataset.json, imagesTr/, labelsTr/.
    Dataset,
    /// Preprocessed, training-ready samples.
    Samples,
    /// Checkpoints and metrics of a training run.
    Model,
    /// A published model (safetensors, config, metrics, model card).
    Export,
    /// An evaluation: per-case scores and their summary (report.json, cases.csv, boxplot.png).
    Report,
    /// Any files: the untyped output of a `command` step.
    Files,
}

impl ArtifactType {
    pub const ALL: [ArtifactType; 6] = [
        ArtifactType::Dataset,
        ArtifactType::Samples,
        ArtifactType::Model,
        ArtifactType::Export,
        ArtifactType::Report,
        ArtifactType::Files,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ArtifactType::Dataset => "Dataset",
            ArtifactType::Samples => "Samples",
            ArtifactType::Model => "Model",
            ArtifactType::Export => "Export",
            ArtifactType::Report => "Report",
            ArtifactType::Files => "Files",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for ArtifactType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A step's input slots.
#[derive(Debug, Clone, Copy)]
pub enum Slots {
    /// A fixed set of named slots, each required.
    Fixed(&'static [(&'static str, ArtifactType)]),
    /// Any slot names (valid identifiers), any artifact types: the `command` step.
    Open,
}
