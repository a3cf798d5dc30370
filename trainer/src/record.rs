//! `train.json`: what a training run records beside its checkpoints (configuration, the samples it
//! read and how they were split, where it ran, and the outcome). One type for the writer (the
//! train-unet step) and every reader (export's model card); the reader checks the format. Fields
//! added later are optional, so records written before them still read.

use crate::error::{Result, TrainerError};
use crate::machine::Machine;
use crate::placement::Split;
use crate::train::TrainConfig;
use std::path::Path;

/// The format of `train.json`.
pub const TRAIN_FORMAT: &str = "wf-train-v1";
/// Its name inside a Model.
pub const TRAIN_FILE: &str = "train.json";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainRecord {
    /// `wf-train-v1`; records written before formats were named have none and are read as v1.
    #[serde(default = "train_format")]
    pub format: String,
    pub config: TrainConfig,
    /// The Samples artifact digest.
    pub samples: String,
    pub split: Split,
    /// `cpu`, `cuda:0`, or the data-parallel layout.
    pub device: String,
    /// `fp32` or `bf16`.
    pub precision: String,
    pub epochs_completed: usize,
    pub best_epoch: Option<usize>,
    pub best_val_mean_dice: Option<f32>,
    /// The machine, as far as it decides the numbers (`machine.rs`: which determinism holds);
    /// absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
}

fn train_format() -> String {
    TRAIN_FORMAT.to_string()
}

impl TrainRecord {
    /// `train.json` of the Model in `dir`, if it has one.
    pub fn read_in(dir: &Path) -> Result<Option<TrainRecord>> {
        let path = dir.join(TRAIN_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|source| TrainerError::Io {
            path: path.clone(),
            source,
        })?;
        let record: TrainRecord =
            serde_json::from_slice(&bytes).map_err(|source| TrainerError::Json {
                path: path.clone(),
                source,
            })?;
        if record.format != TRAIN_FORMAT {
            return Err(TrainerError::Format {
                path,
                detail: format!(
                    "format `{}` is not {TRAIN_FORMAT}; it was written by another version of wf",
                    record.format
                ),
            });
        }
        Ok(Some(record))
    }

    /// Writes `train.json` into `dir` (keys sorted, a final newline).
    pub fn write_in(&self, dir: &Path) -> Result<()> {
        let path = dir.join(TRAIN_FILE);
        let value = serde_json::to_value(self).map_err(|source| TrainerError::Json {
            path: path.clone(),
            source,
        })?;
        let text = serde_json::to_string_pretty(&value).expect("JSON values serialize") + "\n";
        std::fs::write(&path, text).map_err(|source| TrainerError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TrainRecord {
        TrainRecord {
            format: train_format(),
            config: TrainConfig::default(),
            samples: "ab".repeat(32),
            split: Split {
                train_cases: vec!["a".into()],
                val_cases: vec!["b".into()],
                train_samples: 4,
                val_samples: 1,
            },
            device: "cpu".into(),
            precision: "fp32".into(),
            epochs_completed: 2,
            best_epoch: Some(2),
            best_val_mean_dice: Some(0.5),
            machine: Some(Machine::detect(2)),
        }
    }

    /// The schedule is part of the recorded configuration.
    #[test]
    fn records_the_learning_rate_schedule() {
        use crate::schedule::{LrSchedule, ScheduleKind};
        let dir = tempfile::tempdir().unwrap();
        let mut r = record();
        r.config.lr_schedule = LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 3,
        };
        r.write_in(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(TRAIN_FILE)).unwrap();
        assert!(
            text.contains(
                "\"lr_schedule\": {\n      \"kind\": \"cosine\",\n      \"warmup_epochs\": 3\n"
            ),
            "{text}"
        );
        assert_eq!(TrainRecord::read_in(dir.path()).unwrap(), Some(r));
    }

    #[test]
    fn round_trips_and_checks_its_format() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TrainRecord::read_in(dir.path()).unwrap(), None);
        record().write_in(dir.path()).unwrap();
        assert_eq!(TrainRecord::read_in(dir.path()).unwrap(), Some(record()));
        // Written before formats were named: read as v1.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(TRAIN_FILE)).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("format");
        std::fs::write(dir.path().join(TRAIN_FILE), v.to_string()).unwrap();
        assert_eq!(TrainRecord::read_in(dir.path()).unwrap(), Some(record()));
        // Written before the machine was recorded: read without it.
        v.as_object_mut().unwrap().remove("machine");
        std::fs::write(dir.path().join(TRAIN_FILE), v.to_string()).unwrap();
        let old = TrainRecord::read_in(dir.path()).unwrap().unwrap();
        assert_eq!(old.machine, None);
        assert_eq!(old.config, record().config);
        // Written before the learning-rate schedule: read as the constant rate it trained with.
        v["config"].as_object_mut().unwrap().remove("lr_schedule");
        std::fs::write(dir.path().join(TRAIN_FILE), v.to_string()).unwrap();
        let old = TrainRecord::read_in(dir.path()).unwrap().unwrap();
        assert_eq!(old.config.lr_schedule, Default::default());
        v["format"] = "wf-train-v9".into();
        std::fs::write(dir.path().join(TRAIN_FILE), v.to_string()).unwrap();
        let e = TrainRecord::read_in(dir.path()).unwrap_err().to_string();
        assert!(e.contains(TRAIN_FILE) && e.contains("wf-train-v9"), "{e}");
    }
}
