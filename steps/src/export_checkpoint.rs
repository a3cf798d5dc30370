//! The `export-checkpoint` step: Model → Export. Publishes the epoch with the best validation mean
//! Dice as `model.safetensors` (MONAI `state_dict` names and shapes, loadable with
//! `UNet(...).load_state_dict(safetensors.torch.load_file(p), strict=True)`), with `config.json`
//! (the MONAI constructor arguments), `metrics.json` (best epoch's Dice as `val_mean_dice`, TC, WT,
//! ET, and the whole history), a model card `README.md` (the data, and the machine the training ran
//! on, from the model's `train.json`), `preprocessing.json` (the chain `wf predict` replays on
//! new images), and the model's `train.json` itself (the evaluate step reads its held-out cases).

use crate::train_unet::{PREPROCESSING_FILE, TRAIN_FILE};
use wf_engine::{
    ArtifactType, ParamSpec, Params, RemoteTask, RunContext, Slots, Step, StepError, plural,
};
use wf_trainer::record::TrainRecord;

pub struct ExportCheckpoint;

impl Step for ExportCheckpoint {
    fn kind(&self) -> &'static str {
        "export-checkpoint"
    }
    fn version(&self) -> u32 {
        2
    }
    fn summary(&self) -> &'static str {
        "publish the best checkpoint as MONAI-loadable safetensors with config, metrics and a model card"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(&[("model", ArtifactType::Model)])
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        ArtifactType::Export
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let input = cx
            .inputs
            .get("model")
            .ok_or_else(|| StepError::new("missing input `model`"))?;
        let record =
            TrainRecord::read_in(&input.path).map_err(|e| StepError::new(e.to_string()))?;
        let data = match record {
            Some(r) => format!(
                "{} ({}), {}, samples artifact {}",
                plural(r.split.train_cases.len(), "training case"),
                plural(r.split.train_samples, "sample"),
                plural(r.split.val_cases.len(), "validation case"),
                r.samples
            ),
            None => format!("unknown (no {TRAIN_FILE} in the model)"),
        };
        let exported = wf_trainer::export::export(&input.path, cx.out_dir, &data)
            .map_err(|e| StepError::new(e.to_string()))?;
        for name in [PREPROCESSING_FILE, TRAIN_FILE] {
            let from = input.path.join(name);
            if from.is_file() {
                std::fs::copy(&from, cx.out_dir.join(name))
                    .map_err(|e| StepError::new(format!("{}: {e}", from.display())))?;
            }
        }
        let dice = exported.val_mean_dice.map_or_else(
            || "no validation".to_string(),
            |d| format!("val mean Dice {d:.4}"),
        );
        cx.progress
            .note(&format!("exported epoch {} ({dice})", exported.epoch));
        if exported.val_mean_dice.is_none() {
            cx.progress.warn(
                "the model has no validation metrics (val_fraction 0?): exported the latest epoch",
            );
        }
        Ok(())
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }
}
