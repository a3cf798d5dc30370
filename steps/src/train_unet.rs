//! The `train-unet` step: Samples → Model. Trains the MONAI-compatible 3D UNet (wf-trainer) on a
//! Samples artifact with the trainer's loader (mmap, per-epoch shuffle, online augmentation for
//! `copies_per_case: 0`), validating per epoch (Dice TC/WT/ET/mean).
//!
//! Resume: training runs in a directory that outlives the process,
//! `<cache>/derived/train-unet/<resume id>/` (the id hashes everything the step key hashes), with a
//! checkpoint after every epoch. A run killed mid-training resumes from the last complete checkpoint
//! on the next `wf run`; after success its files move into the step output and the directory is
//! removed, so a forced rerun starts from scratch.
//!
//! Output (the Model artifact, a training directory as wf-trainer lays it out):
//! `checkpoints/epoch-NNNN/` (the best and the latest epoch), `metrics.jsonl`, `plot.png`,
//! `train.json` (configuration, split, summary, the machine) and `preprocessing.json` (the
//! transform chain and label convention of the samples, for `wf predict`).
//!
//! Nothing in the Model depends on the clock, so retraining on the same kind of machine gives the
//! same Model digest and the steps after it stay cached. Timings are facts of the run instead
//! (`Progress::fact`, kept in the cache entry): `epochs` (per epoch this computation ran: `epoch`,
//! `train_seconds`, `train_samples_per_second`) and `train_seconds` (their sum).

use serde::Deserialize;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use wf_engine::key::KeyComponents;
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CheckContext, Count, Diagnostics, Metric, ParamSpec, Params, RemoteTask,
    RunContext, Slots, Step, StepError, Store, Unit, plural,
};
use wf_imaging::samples::{INDEX_FILE, SamplesIndex};
use wf_trainer::TrainerError;
use wf_trainer::loader::validation_cases;
use wf_trainer::loss::DiceLoss;
use wf_trainer::machine::Machine;
use wf_trainer::optim::AdamConfig;
use wf_trainer::placement::{Gpus, Placement, SamplesSpec, Split, train_on};
use wf_trainer::record::{TRAIN_FORMAT, TrainRecord};
use wf_trainer::schedule::{LrSchedule, ScheduleKind};
use wf_trainer::train::{EpochTiming, TrainConfig, TrainEvent, Validation};
use wf_trainer::unet::UNetConfig;

pub struct TrainUnet;

use crate::facts::SamplesFacts;

/// Name of the file in a Model (and Export) that records how the samples were preprocessed.
pub use wf_imaging::samples::PREPROCESSING_FILE;
/// Name of the file in a Model that records the training configuration and outcome.
pub use wf_trainer::record::TRAIN_FILE;

static INT_LIST: ParamType = ParamType::List(&ParamType::Int { min: 1, max: 4096 });

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "epochs",
        ParamType::Int {
            min: 1,
            max: 100_000,
        },
        "10",
        "training epochs",
    ),
    ParamSpec::optional(
        "batch_size",
        ParamType::Int { min: 1, max: 4096 },
        "2",
        "samples per step, over all replicas",
    ),
    ParamSpec::optional("lr", ParamType::Float, "1.0e-4", "Adam learning rate")
        .shape("number > 0", || json!({ "type": "number", "exclusiveMinimum": 0 })),
    ParamSpec::optional(
        "lr_schedule",
        ParamType::Enum(&["constant", "cosine"]),
        "\"constant\"",
        "learning rate per epoch after the warm-up: `constant` (`lr`), or `cosine`: `torch.optim.lr_scheduler.CosineAnnealingLR(T_max = epochs - warmup_epochs, eta_min = 0)` stepped once per epoch, lr·(1 + cos(π·k/T_max))/2 in epoch k (from 0) after the warm-up (MONAI's BraTS tutorial)",
    ),
    ParamSpec::optional(
        "warmup_epochs",
        ParamType::Int {
            min: 0,
            max: 100_000,
        },
        "0",
        "epochs of linear warm-up before `lr_schedule`: epoch e (0-based) < N trains at lr·(e + 1)/(N + 1); less than `epochs`",
    ),
    ParamSpec::optional(
        "weight_decay",
        ParamType::Float,
        "0.0",
        "Adam L2 penalty (`torch.optim.Adam`'s `weight_decay`)",
    )
    .shape("number ≥ 0", || json!({ "type": "number", "minimum": 0 })),
    ParamSpec::optional(
        "val_fraction",
        ParamType::Float,
        "0.01",
        "fraction of cases held out for validation (whole cases; at least one when > 0)",
    )
    .shape("number in [0, 1)", fraction_schema),
    ParamSpec::optional(
        "val_mode",
        ParamType::Enum(&["crops", "volumes"]),
        "\"crops\"",
        "what each epoch validates on: `crops`, the validation cases' samples as training reads them (the seed); `volumes`, sliding-window inference over each validation case's whole volume (its deterministic preprocessing; needs `copies_per_case: 0` upstream), Dice per case averaged per region, as MONAI's BraTS tutorial",
    ),
    ParamSpec::optional(
        "val_roi",
        ParamType::Any,
        "null",
        "`val_mode: volumes`: the sliding window [X, Y, Z], multiples of the network's size divisor; null: the training crop's `roi` rounded up to multiples of it, or 8 × 8 × 4 of it without a crop",
    )
    .shape("[X, Y, Z] or null", || {
        json!({ "anyOf": [
            { "type": "null" },
            { "type": "array", "items": { "type": "integer", "minimum": 1, "maximum": 4096 }, "minItems": 3, "maxItems": 3 }
        ] })
    }),
    ParamSpec::optional(
        "val_overlap",
        ParamType::Float,
        "0.5",
        "`val_mode: volumes`: fraction by which neighbouring windows overlap (MONAI's `overlap`)",
    )
    .shape("number in [0, 1)", fraction_schema),
    ParamSpec::optional(
        "val_blend",
        ParamType::Enum(&["constant", "gaussian"]),
        "\"constant\"",
        "`val_mode: volumes`: how overlapping windows are blended (MONAI's `mode`)",
    ),
    ParamSpec::optional(
        "loss",
        ParamType::Enum(&["dice", "dice-bce"]),
        "\"dice\"",
        "MONAI `DiceLoss(sigmoid=True, squared_pred=True)`, optionally + BCE",
    ),
    ParamSpec::optional(
        "precision",
        ParamType::Enum(&["fp32", "bf16"]),
        "\"fp32\"",
        "fp32, or bf16 mixed precision (convolutions in bf16, f32 weights): CUDA builds only",
    ),
    ParamSpec::optional(
        "fused",
        ParamType::Enum(&["auto", "off"]),
        "\"auto\"",
        "`auto`: the fused CPU kernels (convolution + bias, instance norm + PReLU, the Dice loss, Adam in place) wherever they apply; `off`: candle's own ops everywhere, the reference path to fall back on. On a GPU both run candle's ops",
    ),
    ParamSpec::optional(
        "gpus",
        ParamType::Any,
        "\"all\"",
        "GPUs to train on, one replica each; `all` on a machine without GPUs trains on the CPU; N > 0 needs a CUDA build",
    )
    .shape("integer ≥ 0 or `all`", || {
        json!({ "anyOf": [{ "type": "integer", "minimum": 0 }, { "const": "all" }] })
    }),
    ParamSpec::optional(
        "channels",
        INT_LIST,
        "[16, 32, 64, 128, 256]",
        "UNet channels per level (MONAI `channels`)",
    ),
    ParamSpec::optional(
        "strides",
        INT_LIST,
        "[2, 2, 2, 2]",
        "UNet strides per down-sampling (MONAI `strides`; one fewer than `channels`)",
    ),
    ParamSpec::optional(
        "num_res_units",
        ParamType::Int { min: 0, max: 16 },
        "2",
        "residual units per block",
    ),
    ParamSpec::optional("dropout", ParamType::Float, "0.0", "dropout probability")
        .shape("number in [0, 1)", fraction_schema),
];

/// What `check` accepts for `val_fraction` and `dropout`.
fn fraction_schema() -> serde_json::Value {
    json!({ "type": "number", "minimum": 0, "exclusiveMaximum": 1 })
}

#[derive(Debug, Deserialize)]
struct TrainParams {
    epochs: usize,
    batch_size: usize,
    lr: f64,
    lr_schedule: String,
    warmup_epochs: usize,
    weight_decay: f64,
    val_fraction: f64,
    val_mode: String,
    val_roi: Option<[usize; 3]>,
    val_overlap: f64,
    val_blend: String,
    loss: String,
    precision: String,
    fused: String,
    gpus: serde_json::Value,
    channels: Vec<usize>,
    strides: Vec<usize>,
    num_res_units: usize,
    dropout: f64,
}

impl TrainParams {
    fn config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            unet: UNetConfig {
                channels: self.channels.clone(),
                strides: self.strides.clone(),
                num_res_units: self.num_res_units,
                dropout: self.dropout,
                ..UNetConfig::brats()
            },
            adam: AdamConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..AdamConfig::default()
            },
            loss: DiceLoss {
                bce_weight: if self.loss == "dice-bce" { 1.0 } else { 0.0 },
                ..DiceLoss::default()
            },
            epochs: self.epochs,
            seed,
            resume: true,
            bf16: self.precision == "bf16",
            fused: self.fused != "off",
            lr_schedule: LrSchedule {
                kind: if self.lr_schedule == "cosine" {
                    ScheduleKind::Cosine
                } else {
                    ScheduleKind::Constant
                },
                warmup_epochs: self.warmup_epochs,
            },
            validation: Validation::Crops,
        }
    }

    /// How each epoch validates, given the training crop's size (if the chain crops): the window
    /// is `val_roi`, else the crop rounded up to the network's size divisor, else 8 × 8 × 4 of it
    /// (as `wf predict`).
    fn validation(&self, unet: &UNetConfig, crop: Option<[usize; 3]>) -> Validation {
        if self.val_mode != "volumes" {
            return Validation::Crops;
        }
        let div = unet.size_divisor().max(1);
        let roi = match (self.val_roi, crop) {
            (Some(r), _) => r,
            (None, Some(c)) => c.map(|v| v.div_ceil(div) * div),
            (None, None) => [div * 8, div * 8, div * 4],
        };
        Validation::Volumes {
            roi,
            overlap: self.val_overlap,
            blend: if self.val_blend == "gaussian" {
                wf_trainer::infer::Blend::Gaussian
            } else {
                wf_trainer::infer::Blend::Constant
            },
        }
    }
}

/// The `roi` of the chain's `rand-spatial-crop`, if it has one.
fn crop_of(chain: &wf_imaging::transforms::Chain) -> Option<[usize; 3]> {
    chain.specs().iter().find_map(|s| match s {
        wf_imaging::transforms::TransformSpec::RandSpatialCrop(c) => Some(c.roi),
        _ => None,
    })
}

/// The numbers of each epoch's line (`epoch_line`), for a Training job's `MetricDefinitions`:
/// SageMaker charts the first capture group of every log line that matches. Each regex starts at
/// `epoch N/M:`, so other lines quoting a Dice (an export's summary) are not charted. A Dice that could not be
/// computed reads `n/a` and matches nothing.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "train:loss",
        regex: r"epoch [0-9]+/[0-9]+: loss ([0-9.eE+-]+),",
    },
    Metric {
        name: "validation:dice_mean",
        regex: r"epoch [0-9]+/[0-9]+: .*val Dice mean ([0-9.]+) ",
    },
    Metric {
        name: "validation:dice_tc",
        regex: r"epoch [0-9]+/[0-9]+: .*\(TC ([0-9.]+),",
    },
    Metric {
        name: "validation:dice_wt",
        regex: r"epoch [0-9]+/[0-9]+: .*, WT ([0-9.]+),",
    },
    Metric {
        name: "validation:dice_et",
        regex: r"epoch [0-9]+/[0-9]+: .*, ET ([0-9.]+)\)",
    },
    Metric {
        name: "train:samples_per_second",
        regex: r"epoch [0-9]+/[0-9]+: .*, ([0-9.]+) samples/s",
    },
    Metric {
        name: "train:lr",
        regex: r"epoch [0-9]+/[0-9]+: .*, lr ([0-9.eE+-]+)$",
    },
];

/// The line each epoch prints (and the worker writes to the job's log), which `METRICS` reads.
fn epoch_line(m: &wf_trainer::train::EpochMetrics, epochs: u64, samples_per_second: f64) -> String {
    let dice = |d: Option<f32>| d.map_or_else(|| "n/a".to_string(), |d| format!("{d:.4}"));
    format!(
        "epoch {}/{epochs}: loss {:.4}, val Dice mean {} (TC {}, WT {}, ET {}), {:.1} samples/s, lr {:.4e}",
        m.epoch,
        m.train_loss,
        dice(m.val_mean_dice),
        dice(m.val_dice_tc),
        dice(m.val_dice_wt),
        dice(m.val_dice_et),
        samples_per_second,
        m.lr
    )
}

impl Step for TrainUnet {
    fn kind(&self) -> &'static str {
        "train-unet"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "train the MONAI-compatible 3D UNet on samples (Dice loss, Adam, per-epoch validation and checkpoints)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(&[("samples", ArtifactType::Samples)])
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        ArtifactType::Model
    }
    fn seeded(&self) -> bool {
        true
    }

    fn check(&self, params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        let id = cx.step_id;
        // An `Any` param: its structure is checked here.
        if let Some(v) = params.get("val_roi")
            && !v.is_null()
            && !v.as_array().is_some_and(|a| {
                a.len() == 3
                    && a.iter()
                        .all(|n| n.as_u64().is_some_and(|n| (1..=4096).contains(&n)))
            })
        {
            diags.error(
                params.span_of("val_roi"),
                format!(
                    "step `{id}`: `val_roi` must be [X, Y, Z] (integers 1 to 4096) or null, found {v}"
                ),
            );
            return;
        }
        let Ok(p) = params.decode::<TrainParams>() else {
            return; // the schema check already reported it
        };
        if let Err(TrainerError::Config { field, detail }) = Gpus::from_json(&p.gpus) {
            diags.error(
                params.span_of(field),
                format!("step `{id}`: `{field}` {detail}"),
            );
        }
        if !(p.lr.is_finite() && p.lr > 0.0) {
            diags.error(
                params.span_of("lr"),
                format!("step `{id}`: `lr` must be > 0, found {}", p.lr),
            );
        }
        if let Err(TrainerError::Config { field, detail }) =
            p.config(0).lr_schedule.validate(p.epochs)
        {
            diags.error(
                params.span_of(field),
                format!("step `{id}`: `{field}` {detail}"),
            );
        }
        if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
            diags.error(
                params.span_of("weight_decay"),
                format!(
                    "step `{id}`: `weight_decay` must be >= 0, found {}",
                    p.weight_decay
                ),
            );
        }
        if !(0.0..1.0).contains(&p.val_fraction) {
            diags.error(
                params.span_of("val_fraction"),
                format!(
                    "step `{id}`: `val_fraction` must be in [0, 1), found {}",
                    p.val_fraction
                ),
            );
        }
        if p.val_mode == "volumes" {
            if !(0.0..1.0).contains(&p.val_overlap) {
                diags.error(
                    params.span_of("val_overlap"),
                    format!(
                        "step `{id}`: `val_overlap` must be in [0, 1), found {}",
                        p.val_overlap
                    ),
                );
            }
            let unet = p.config(0).unet;
            if unet.validate().is_ok()
                && let Err(TrainerError::Config {
                    field: "val_roi",
                    detail,
                }) = p.validation(&unet, None).validate(&unet)
                && p.val_roi.is_some()
            {
                diags.error(
                    params.span_of("val_roi"),
                    format!("step `{id}`: `val_roi` {detail}"),
                );
            }
            if let Some(samples) = cx.input::<SamplesFacts>("samples")
                && let Some(prefix) = &samples.prefix_only
                && !prefix.value
            {
                diags.error_with_help(
                    params.span_of("val_mode"),
                    format!(
                        "step `{id}`: `val_mode: volumes` validates on each case's whole preprocessed volume, but the samples hold augmented copies ({} is not 0)",
                        prefix.what
                    ),
                    "set `copies_per_case: 0` on the preprocessing step (augmentation then runs online, per epoch), or use `val_mode: crops`",
                );
            }
        }
        if !(0.0..1.0).contains(&p.dropout) {
            diags.error(
                params.span_of("dropout"),
                format!(
                    "step `{id}`: `dropout` must be in [0, 1), found {}",
                    p.dropout
                ),
            );
        }
        let unet = p.config(0).unet;
        if unet.validate().is_ok()
            && params.node("strides").is_some()
            && p.strides.len() > p.channels.len() - 1
        {
            let levels = p.channels.len() - 1;
            diags.error_with_help(
                params.span_of("strides"),
                format!(
                    "step `{id}`: `strides` {:?} has {} entries, but `channels` {:?} down-samples {levels} times (len(channels) - 1): the last {} would be ignored",
                    p.strides,
                    p.strides.len(),
                    p.channels,
                    p.strides.len() - levels
                ),
                format!("give {levels} strides, or a channel count per level"),
            );
        }
        if let Some(samples) = cx.input::<SamplesFacts>("samples") {
            fits_samples(&p, params, samples, id, diags);
        }
        if let Err(e) = unet.validate() {
            // The error names the UNet field; the params that set it are `strides`, `dropout`
            // and (for the rest) `channels`.
            let key = match &e {
                TrainerError::Config {
                    field: "strides", ..
                } => "strides",
                TrainerError::Config {
                    field: "dropout", ..
                } => "dropout",
                _ => "channels",
            };
            diags.error(params.span_of(key), format!("step `{id}`: {e}"));
        }
    }

    /// `gpus: N > 0` and `precision: bf16` need a CUDA build (and the GPUs): a file meant for the
    /// cloud stays valid, but this machine refuses it before anything runs rather than after the
    /// steps before training.
    fn check_local(&self, params: &Params, step_id: &str, diags: &mut Diagnostics) {
        let Ok(p) = params.decode::<TrainParams>() else {
            return;
        };
        let Ok(gpus) = Gpus::from_json(&p.gpus) else {
            return; // validation reported it
        };
        if let Err(e) = Placement::resolve(gpus, p.precision == "bf16") {
            let (field, detail) = match e {
                TrainerError::Config { field, detail } => (field, detail),
                e => ("gpus", e.to_string()),
            };
            let value = params
                .get(field)
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default();
            diags.error_with_help(
                params.span_of(field),
                format!(
                    "step `{step_id}` cannot run on this machine: `{field}: {value}`: {detail}"
                ),
                "the file stays valid for the cloud (`wf run --executor sagemaker`, `wf deploy`)",
            );
        }
    }

    /// A run resumes from the latest complete checkpoint of an interrupted run of the same
    /// configuration (its resume directory is named after what the key is made of).
    fn resumes(&self, store: &Store, key: &KeyComponents) -> Option<String> {
        let input = key.inputs.get("samples")?;
        let dir = store.derived_dir("train-unet").join(resume_id(
            &key.params,
            key.seed.unwrap_or(0),
            &input.to_hex(),
        ));
        let latest =
            wf_trainer::checkpoint::latest(&wf_trainer::train::checkpoints_dir(&dir)).ok()??;
        let meta = wf_trainer::checkpoint::read_meta(&latest).ok()?;
        Some(format!("resumes from epoch {}", meta.epoch))
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let p: TrainParams = cx
            .params
            .decode()
            .map_err(|e| StepError::new(format!("invalid params: {e}")))?;
        let trainer_err = |e: TrainerError| StepError::new(e.to_string());
        let gpus = Gpus::from_json(&p.gpus).map_err(trainer_err)?;
        let placement = Placement::resolve(gpus, p.precision == "bf16").map_err(trainer_err)?;
        let input = cx
            .inputs
            .get("samples")
            .ok_or_else(|| StepError::new("missing input `samples`"))?;
        let mut cfg = p.config(cx.seed);
        // The samples' chain and label convention, so an export can preprocess new images the
        // same way (read first: a Samples artifact without a readable index fails before training).
        let index = SamplesIndex::read(&input.path.join(INDEX_FILE))
            .map_err(|e| StepError::new(format!("the samples index: {e}")))?;
        let crop = index.chain().ok().as_ref().and_then(crop_of);
        cfg.validation = p.validation(&cfg.unet, crop);

        // Checkpoints go where the next attempt finds them: the run's resume directory (a
        // Training job's checkpoint directory, synced with S3 across spot interruptions), else
        // the store.
        let work = cx
            .resume_dir
            .map_or_else(|| cx.store.derived_dir("train-unet"), Path::to_path_buf)
            .join(resume_id(
                &cx.params.canonical_json(),
                cx.seed,
                &input.digest.to_hex(),
            ));
        std::fs::create_dir_all(&work)
            .map_err(|e| StepError::new(format!("{}: {e}", work.display())))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cx.log_path)
            .map_err(|e| StepError::new(format!("{}: {e}", cx.log_path.display())))?;

        let on = match placement {
            Placement::Cpu => format!("CPU ({})", plural(cx.threads, "thread")),
            #[allow(unreachable_patterns)]
            _ => placement.describe(),
        };
        let epochs = cfg.epochs as u64;
        let mut split = None;
        let log_line = std::sync::Mutex::new(&mut log);
        // Optimizer steps per epoch: batches of `batch_size` over all replicas (a replica's share
        // of the last one may be padded, so a count past it raises the total).
        let steps_per_epoch = AtomicU64::new(0);
        let val_what = |s: &Split| match cfg.validation {
            Validation::Crops => format!(
                "{} ({})",
                plural(s.val_samples, "validation sample"),
                plural(s.val_cases.len(), "case")
            ),
            Validation::Volumes {
                roi,
                overlap,
                blend,
            } => format!(
                "{} (sliding window {}, overlap {overlap}, {} blending)",
                plural(s.val_cases.len(), "whole validation volume"),
                roi.map(|r| r.to_string()).join("×"),
                blend.name()
            ),
        };
        let mut on_split = |s: &Split| {
            let msg = format!(
                "{} ({}), {}, {} on {on}, {}",
                plural(s.train_samples, "training sample"),
                plural(s.train_cases.len(), "case"),
                val_what(s),
                plural(cfg.epochs, "epoch"),
                p.precision
            );
            cx.progress.note(&msg);
            let _ = writeln!(log_line.lock().expect("log lock"), "{msg}");
            steps_per_epoch.store(
                s.train_samples.div_ceil(p.batch_size.max(1)) as u64,
                Ordering::Relaxed,
            );
            split = Some(s.clone());
        };
        let mut last_message = std::time::Instant::now();
        let mut timings: Vec<EpochTiming> = Vec::new();
        // The epoch count starts at the first step, or at the epoch training resumes after.
        let mut counting = false;
        let mut on_event = |e: &TrainEvent| {
            let mut log = log_line.lock().expect("log lock");
            match e {
                TrainEvent::Resumed { epoch, checkpoint } => {
                    let m = format!(
                        "resumed after an interruption from the checkpoint of epoch {epoch} ({})",
                        checkpoint.display()
                    );
                    let _ = writeln!(log, "{m}");
                    cx.progress.warn(&format!(
                        "resumed after an interruption from the checkpoint of epoch {epoch}"
                    ));
                    cx.progress
                        .advance(Count::new(*epoch as u64, epochs, Unit::Epoch));
                    counting = true;
                }
                TrainEvent::Step { epoch, step, loss } => {
                    let _ = writeln!(log, "epoch {epoch} step {step}: loss {loss:.5}");
                    if !counting {
                        cx.progress
                            .advance(Count::new(*epoch as u64 - 1, epochs, Unit::Epoch));
                        counting = true;
                    }
                    let step = *step as u64;
                    cx.progress.advance_within(Count::new(
                        step,
                        steps_per_epoch.load(Ordering::Relaxed).max(step),
                        Unit::Step,
                    ));
                    // Every step goes to the log; the console hears of one every few seconds.
                    if last_message.elapsed() >= std::time::Duration::from_secs(5) {
                        last_message = std::time::Instant::now();
                        cx.progress.message(&format!(
                            "epoch {epoch}/{epochs} step {step}: loss {loss:.4}"
                        ));
                    }
                }
                TrainEvent::Epoch { metrics: m, timing } => {
                    let line = epoch_line(m, epochs, timing.train_samples_per_second);
                    let _ = writeln!(log, "{line}");
                    cx.progress.note(&line);
                    cx.progress
                        .advance(Count::new(m.epoch as u64, epochs, Unit::Epoch));
                    if (m.epoch as u64) < epochs {
                        cx.progress.advance_within(Count::new(
                            0,
                            steps_per_epoch.load(Ordering::Relaxed),
                            Unit::Step,
                        ));
                    }
                    timings.push(*timing);
                    cx.progress
                        .fact("epochs", serde_json::to_value(&timings).unwrap_or_default());
                    cx.progress.fact(
                        "train_seconds",
                        timings.iter().map(|t| t.train_seconds).sum::<f64>().into(),
                    );
                }
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cx.threads.max(1))
            .build()
            .map_err(|e| StepError::new(format!("cannot start the training threads: {e}")))?;
        let samples = SamplesSpec {
            dir: &input.path,
            val_fraction: p.val_fraction,
            batch_size: p.batch_size,
            seed: cx.seed,
            whole_volumes: matches!(cfg.validation, Validation::Volumes { .. }),
        };
        let cancelled = || cx.cancel.is_cancelled();
        let summary = pool
            .install(|| {
                train_on(
                    &placement,
                    &cfg,
                    &work,
                    &samples,
                    &cancelled,
                    &mut on_split,
                    &mut on_event,
                )
            })
            .map_err(|e| match e {
                // Bad settings fail before any epoch: nothing to resume.
                TrainerError::Config { .. } => trainer_err(e),
                e => StepError::new(format!(
                    "{e} (checkpoints of completed epochs are kept in {}; the next `wf run` resumes from them)",
                    work.display()
                )),
            })?;

        std::fs::write(
            cx.out_dir.join(PREPROCESSING_FILE),
            index.preprocessing().to_json(),
        )
        .map_err(|e| StepError::new(format!("{PREPROCESSING_FILE}: {e}")))?;
        TrainRecord {
            format: TRAIN_FORMAT.to_string(),
            config: cfg,
            samples: input.digest.to_hex(),
            split: split.expect("the split is reported before training"),
            device: placement.describe(),
            precision: p.precision,
            epochs_completed: summary.epochs_completed,
            best_epoch: summary.best_epoch,
            best_val_mean_dice: summary.best_val_mean_dice,
            machine: Some(Machine::detect(cx.threads.max(1))),
        }
        .write_in(cx.out_dir)
        .map_err(trainer_err)?;
        move_tree(&work, cx.out_dir)?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Training { instances: 1 }
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
}

/// What the samples are known to be at validation (their producers' facts) against the network and
/// the split: a sample size the UNet cannot take (each axis a multiple of the strides' product),
/// and a validation fraction that leaves nothing to validate on. The size's error points at the
/// value that set it (a crop's `roi`, upstream).
fn fits_samples(
    p: &TrainParams,
    params: &Params,
    samples: &SamplesFacts,
    id: &str,
    diags: &mut Diagnostics,
) {
    let unet = p.config(0).unet;
    if let (Ok(()), Some(size)) = (unet.validate(), &samples.spatial) {
        let div = unet.size_divisor();
        if size.value.iter().any(|n| n % div != 0) {
            let used = &unet.strides[..unet.channels.len() - 1];
            // A crop may grow to the next multiple; a volume is cropped to the one below.
            let help = if samples.cropped {
                let fit = size.value.map(|n| n.div_ceil(div) * div);
                format!("use multiples of {div}, e.g. {fit:?}, or other `strides` in step `{id}`")
            } else {
                let fit = size.value.map(|n| (n / div).max(1) * div);
                format!(
                    "crop the volumes to multiples of {div} (e.g. `rand-spatial-crop: {{ roi: {fit:?} }}`), or use other `strides` in step `{id}`"
                )
            };
            diags.error_with_help(
                size.span,
                format!(
                    "step `{id}`: its samples are {} ({}), but its UNet needs every size to be a multiple of {div} (the product of `strides` {used:?})",
                    size_text(size.value),
                    size.what
                ),
                help,
            );
        }
    }
    if p.val_fraction > 0.0
        && let Some(cases) = &samples.cases
        && validation_cases(cases.value, p.val_fraction) == 0
    {
        let n = cases.value;
        diags.error_with_help(
            params.span_of("val_fraction"),
            format!(
                "step `{id}`: `val_fraction` {} holds out whole cases, but the data has {n} case{} ({}): none can be held out, so nothing would be validated",
                p.val_fraction,
                if n == 1 { "" } else { "s" },
                cases.what
            ),
            "use more cases, or `val_fraction: 0` to train without validation",
        );
    }
}

/// `[40, 40, 20]` as `40×40×20`.
fn size_text(size: [usize; 3]) -> String {
    format!("{}×{}×{}", size[0], size[1], size[2])
}

/// Names the resume directory after everything the step key is made of (kind, version, params,
/// seed, input), so a different configuration never resumes another's checkpoints.
fn resume_id(params_json: &str, seed: u64, input: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(
        format!(
            "train-unet\n{}\n{params_json}\n{seed}\n{input}",
            TrainUnet.version(),
        )
        .as_bytes(),
    );
    h.finalize().to_hex()[..32].to_string()
}

/// Moves every file of `src` into `dst` (same file system: renames; else copies).
fn move_tree(src: &Path, dst: &Path) -> Result<(), StepError> {
    let err = |p: &Path, e: std::io::Error| StepError::new(format!("{}: {e}", p.display()));
    for entry in std::fs::read_dir(src).map_err(|e| err(src, e))? {
        let entry = entry.map_err(|e| err(src, e))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let ft = entry.file_type().map_err(|e| err(&from, e))?;
        if ft.is_dir() {
            std::fs::create_dir_all(&to).map_err(|e| err(&to, e))?;
            move_tree(&from, &to)?;
        } else if ft.is_file() && std::fs::rename(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| err(&from, e))?;
        }
    }
    Ok(())
}
