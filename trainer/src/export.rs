//! Publishing a trained model: the best checkpoint as a MONAI-loadable `model.safetensors`, plus config, metrics and a model card.

use crate::checkpoint;
use crate::error::{Result, TrainerError};
use crate::record::{TRAIN_FILE, TrainRecord};
use crate::train::{EpochMetrics, checkpoints_dir, read_metrics};
use crate::unet::UNetConfig;
use std::path::{Path, PathBuf};

/// What `export` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    pub epoch: usize,
    pub val_mean_dice: Option<f32>,
    pub files: Vec<PathBuf>,
}

/// The export's `metrics.json`: the exported (best) epoch's metrics and the whole history. Fields in
/// the file's order (by name).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportMetrics {
    /// The exported epoch.
    pub epoch: usize,
    pub history: Vec<EpochMetrics>,
    pub train_loss: Option<f32>,
    pub val_dice_et: Option<f32>,
    pub val_dice_tc: Option<f32>,
    pub val_dice_wt: Option<f32>,
    /// Validation mean Dice of the exported epoch; `None` when training did not validate.
    pub val_mean_dice: Option<f32>,
}

impl ExportMetrics {
    pub const FILE: &'static str = "metrics.json";

    /// Reads `metrics.json` of the export directory `dir`.
    pub fn read_in(dir: &Path) -> Result<ExportMetrics> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| TrainerError::Json { path, source })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainerError + '_ {
    move |source| TrainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoint of the epoch with the best validation mean Dice among those still on disk;
/// without validation metrics, the latest checkpoint.
pub fn best_checkpoint(train_dir: &Path) -> Result<(PathBuf, Option<EpochMetrics>)> {
    let root = checkpoints_dir(train_dir);
    let metrics = read_metrics(train_dir)?;
    let best = metrics
        .iter()
        .filter(|m| m.val_mean_dice.is_some())
        .filter(|m| {
            checkpoint::epoch_dir(&root, m.epoch)
                .join("checkpoint.json")
                .is_file()
        })
        .fold(None::<&EpochMetrics>, |b, m| match b {
            Some(b) if b.val_mean_dice >= m.val_mean_dice => Some(b),
            _ => Some(m),
        });
    if let Some(m) = best {
        return Ok((checkpoint::epoch_dir(&root, m.epoch), Some(m.clone())));
    }
    let latest = checkpoint::latest(&root)?.ok_or_else(|| TrainerError::Checkpoint {
        path: root.clone(),
        detail: "no complete checkpoint to export".into(),
    })?;
    let epoch = checkpoint::read_meta(&latest)?.epoch;
    Ok((latest, metrics.into_iter().find(|m| m.epoch == epoch)))
}

fn monai_config(cfg: &UNetConfig) -> serde_json::Value {
    serde_json::json!({
        "class": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "channels": cfg.channels,
        "strides": cfg.strides,
        "kernel_size": cfg.kernel_size,
        "up_kernel_size": cfg.up_kernel_size,
        "num_res_units": cfg.num_res_units,
        "dropout": cfg.dropout,
        "bias": cfg.bias,
        "act": "PRELU",
        "norm": "INSTANCE",
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|source| TrainerError::Json {
        path: path.into(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(io(path))
}

/// The model card's line on the machine, from `train.json` when the model has one.
fn trained_on(record: Option<&TrainRecord>) -> String {
    match record {
        None => format!("unknown (no {TRAIN_FILE} in the model)"),
        Some(r) => match &r.machine {
            Some(m) => format!("`{}`, {}; {}", r.device, r.precision, m.describe()),
            None => format!(
                "`{}`, {} (CPU and kernels not recorded)",
                r.device, r.precision
            ),
        },
    }
}

/// Writes `model.safetensors`, `config.json`, `metrics.json` and `README.md` (model card) for the
/// best checkpoint of `train_dir` into `out_dir`. `data` describes the training data for the card;
/// the machine it was trained on comes from the model's `train.json`.
pub fn export(train_dir: &Path, out_dir: &Path, data: &str) -> Result<Exported> {
    let trained = TrainRecord::read_in(train_dir)?;
    let machine = trained_on(trained.as_ref());
    // The schedule is recorded in train.json only; a model without one leaves it unsaid.
    let schedule = trained.as_ref().map_or_else(String::new, |r| {
        format!(", learning rate {}", r.config.lr_schedule.describe())
    });
    let (ckpt, best) = best_checkpoint(train_dir)?;
    let meta = checkpoint::read_meta(&ckpt)?;
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let model = out_dir.join("model.safetensors");
    std::fs::copy(ckpt.join("model.safetensors"), &model).map_err(io(&model))?;

    let config = out_dir.join("config.json");
    let mut cfg = monai_config(&meta.unet);
    cfg["trained_epochs"] = meta.epoch.into();
    cfg["adam"] = serde_json::to_value(&meta.adam).unwrap_or_default();
    write_json(&config, &cfg)?;

    let all = read_metrics(train_dir)?;
    let metrics = out_dir.join(ExportMetrics::FILE);
    let record = ExportMetrics {
        epoch: meta.epoch,
        history: all,
        train_loss: best.as_ref().map(|m| m.train_loss),
        val_dice_et: best.as_ref().and_then(|m| m.val_dice_et),
        val_dice_tc: best.as_ref().and_then(|m| m.val_dice_tc),
        val_dice_wt: best.as_ref().and_then(|m| m.val_dice_wt),
        val_mean_dice: best.as_ref().and_then(|m| m.val_mean_dice),
    };
    write_json(
        &metrics,
        &serde_json::to_value(&record).expect("metrics serialize"),
    )?;

    let card = out_dir.join("README.md");
    let fmt = |v: Option<f32>| v.map_or_else(|| "n/a".to_string(), |d| format!("{d:.4}"));
    let u = &meta.unet;
    let text = format!(
        "# 3D UNet (MONAI-compatible), BraTS-style segmentation\n\n\
         - Architecture: `monai.networks.nets.UNet(spatial_dims=3, in_channels={}, out_channels={}, channels={:?}, strides={:?}, num_res_units={})`\n\
         - Weights: `model.safetensors` (MONAI state_dict names; `load_state_dict(..., strict=True)`), epoch {} of training\n\
         - Training data: {data}\n\
         - Optimizer: Adam, lr {}, weight decay {}{schedule}\n\
         - Validation Dice (sigmoid ≥ 0.5): mean {}, TC {}, WT {}, ET {}\n\
         - Output channels: TC, WT, ET (sigmoid per channel)\n\
         - Trained on: {machine}\n\
         - Reproducibility: retraining with the same workflow and wf build on the same kind of machine \
         (the same CPU model and threads, or the same GPU model and CUDA libraries) gives these weights \
         bit for bit; another machine gives close but different numbers (GEMM kernels and blocking \
         follow the CPU).\n",
        u.in_channels,
        u.out_channels,
        u.channels,
        u.strides,
        u.num_res_units,
        meta.epoch,
        meta.adam.lr,
        meta.adam.weight_decay,
        fmt(best.as_ref().and_then(|m| m.val_mean_dice)),
        fmt(best.as_ref().and_then(|m| m.val_dice_tc)),
        fmt(best.as_ref().and_then(|m| m.val_dice_wt)),
        fmt(best.as_ref().and_then(|m| m.val_dice_et)),
    );
    std::fs::write(&card, text).map_err(io(&card))?;
    Ok(Exported {
        epoch: meta.epoch,
        val_mean_dice: best.and_then(|m| m.val_mean_dice),
        files: vec![model, config, metrics, card],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exports_the_best_epoch_with_monai_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::testutil::train_tiny(dir.path(), 2);
        let out = dir.path().join("export");
        let e = export(dir.path(), &out, "synthetic").unwrap();
        assert_eq!(Some(e.epoch), s.best_epoch);
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        assert!(m["val_mean_dice"].is_number());
        let read = ExportMetrics::read_in(&out).unwrap();
        assert_eq!(read.epoch, e.epoch);
        assert_eq!(read.val_mean_dice, e.val_mean_dice);
        assert_eq!(read.history.len(), 2);
        let w =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert!(w.contains_key("model.0.conv.unit0.conv.weight"));
        let card = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(card.contains("strict=True"), "{card}");
        // Without train.json (a model trained outside a workflow) the card says so.
        assert!(
            card.contains("Trained on: unknown (no train.json"),
            "{card}"
        );
    }

    /// A Model trained before timings left metrics.jsonl (and before train.json named the machine)
    /// still exports.
    #[test]
    fn a_model_with_timed_metrics_still_exports() {
        let dir = tempfile::tempdir().unwrap();
        crate::testutil::train_tiny(dir.path(), 2);
        let path = crate::train::metrics_path(dir.path());
        let old: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["train_seconds"] = 1.25.into();
                v["train_samples_per_second"] = 1.6.into();
                format!("{v}\n")
            })
            .collect();
        std::fs::write(&path, old).unwrap();
        let out = dir.path().join("export");
        let e = export(dir.path(), &out, "synthetic").unwrap();
        assert!(e.val_mean_dice.is_some());
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(m["history"].as_array().unwrap().len(), 2);
        assert!(m["history"][0].get("train_seconds").is_none());
    }

    #[test]
    fn the_card_names_the_machine_from_train_json() {
        let dir = tempfile::tempdir().unwrap();
        crate::testutil::train_tiny(dir.path(), 1);
        let machine = crate::machine::Machine::detect(2);
        TrainRecord {
            format: crate::record::TRAIN_FORMAT.into(),
            config: crate::train::TrainConfig {
                lr_schedule: crate::schedule::LrSchedule {
                    kind: crate::schedule::ScheduleKind::Cosine,
                    warmup_epochs: 2,
                },
                ..Default::default()
            },
            samples: "ab".repeat(32),
            split: crate::placement::Split {
                train_cases: vec!["a".into(), "b".into()],
                val_cases: vec!["c".into()],
                train_samples: 6,
                val_samples: 3,
            },
            device: "cpu".into(),
            precision: "fp32".into(),
            epochs_completed: 1,
            best_epoch: Some(1),
            best_val_mean_dice: Some(0.5),
            machine: Some(machine.clone()),
        }
        .write_in(dir.path())
        .unwrap();
        let out = dir.path().join("export");
        export(dir.path(), &out, "synthetic").unwrap();
        let card = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(
            card.contains("Training data: synthetic")
                && card.contains(&format!("Trained on: `cpu`, fp32; {}", machine.describe()))
                && card.contains("same kind of machine")
                && card.contains(
                    ", learning rate cosine annealing to 0 (CosineAnnealingLR per epoch) after 2 linear warm-up epochs\n"
                ),
            "{card}"
        );
    }

    #[test]
    fn nothing_to_export_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            export(dir.path(), &dir.path().join("out"), "x")
                .unwrap_err()
                .to_string()
                .contains("no complete checkpoint")
        );
    }
}
