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
//! `train.json` (configuration, split, summary) and `preprocessing.json` (the transform chain and
//! label convention of the samples, for `wf predict`).

use serde::Deserialize;
use std::io::Write;
use std::path::Path;
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CancelToken, CheckContext, Diagnostics, ParamSpec, Params, RemoteTask,
    RunContext, Slots, Step, StepError,
};
use wf_trainer::loss::DiceLoss;
use wf_trainer::optim::AdamConfig;
use wf_trainer::train::{BatchSource, TrainConfig, TrainEvent};
use wf_trainer::unet::UNetConfig;

pub struct TrainUnet;

/// Name of the file in a Model (and Export) that records how the samples were preprocessed.
pub const PREPROCESSING_FILE: &str = "preprocessing.json";
/// Name of the file in a Model that records the training configuration and outcome.
pub const TRAIN_FILE: &str = "train.json";

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
        "samples per step (over all replicas)",
    ),
    ParamSpec::optional("lr", ParamType::Float, "1.0e-4", "Adam learning rate"),
    ParamSpec::optional(
        "weight_decay",
        ParamType::Float,
        "0.0",
        "Adam L2 penalty (torch.optim.Adam's weight_decay)",
    ),
    ParamSpec::optional(
        "val_fraction",
        ParamType::Float,
        "0.01",
        "fraction of cases held out for validation (whole cases; at least one when > 0)",
    ),
    ParamSpec::optional(
        "loss",
        ParamType::Enum(&["dice", "dice-bce"]),
        "\"dice\"",
        "soft Dice on sigmoid outputs (MONAI DiceLoss, squared_pred), optionally + BCE",
    ),
    ParamSpec::optional(
        "precision",
        ParamType::Enum(&["fp32", "bf16"]),
        "\"fp32\"",
        "fp32, or bf16 mixed precision (CUDA builds only)",
    ),
    ParamSpec::optional(
        "gpus",
        ParamType::Any,
        "\"all\"",
        "GPUs to train on, one replica each: a number, or `all` (0 or no GPU: CPU)",
    ),
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
        "UNet strides per down-sampling (MONAI `strides`)",
    ),
    ParamSpec::optional(
        "num_res_units",
        ParamType::Int { min: 0, max: 16 },
        "2",
        "residual units per block",
    ),
    ParamSpec::optional("dropout", ParamType::Float, "0.0", "dropout probability"),
];

#[derive(Debug, Deserialize)]
struct TrainParams {
    epochs: usize,
    batch_size: usize,
    lr: f64,
    weight_decay: f64,
    val_fraction: f64,
    loss: String,
    precision: String,
    gpus: serde_json::Value,
    channels: Vec<usize>,
    strides: Vec<usize>,
    num_res_units: usize,
    dropout: f64,
}

/// `gpus:`: a count, or every local GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gpus {
    All,
    Count(u64),
}

fn parse_gpus(v: &serde_json::Value) -> Result<Gpus, String> {
    match v {
        serde_json::Value::String(s) if s == "all" => Ok(Gpus::All),
        serde_json::Value::Number(n) if n.as_u64().is_some() => {
            Ok(Gpus::Count(n.as_u64().unwrap_or(0)))
        }
        other => Err(format!(
            "`gpus` must be a non-negative integer or `all`, found {other}"
        )),
    }
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
        }
    }
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
        let Ok(p) = params.decode::<TrainParams>() else {
            return; // the schema check already reported it
        };
        if let Err(e) = parse_gpus(&p.gpus) {
            diags.error(params.span_of("gpus"), format!("step `{id}`: {e}"));
        }
        if !(p.lr.is_finite() && p.lr > 0.0) {
            diags.error(
                params.span_of("lr"),
                format!("step `{id}`: `lr` must be > 0, found {}", p.lr),
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
        if !(0.0..1.0).contains(&p.dropout) {
            diags.error(
                params.span_of("dropout"),
                format!(
                    "step `{id}`: `dropout` must be in [0, 1), found {}",
                    p.dropout
                ),
            );
        }
        if let Err(e) = p.config(0).unet.validate() {
            let key = if e.to_string().contains("strides") {
                "strides"
            } else {
                "channels"
            };
            diags.error(params.span_of(key), format!("step `{id}`: {e}"));
        }
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let p: TrainParams = cx
            .params
            .decode()
            .map_err(|e| StepError::new(format!("invalid params: {e}")))?;
        let gpus = parse_gpus(&p.gpus).map_err(StepError::new)?;
        let target = Target::resolve(gpus, p.precision == "bf16")?;
        let input = cx
            .inputs
            .get("samples")
            .ok_or_else(|| StepError::new("missing input `samples`"))?;
        let cfg = p.config(cx.seed);

        let work = cx
            .store
            .derived_dir("train-unet")
            .join(resume_id(cx, &input.digest.to_hex()));
        std::fs::create_dir_all(&work)
            .map_err(|e| StepError::new(format!("{}: {e}", work.display())))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cx.log_path)
            .map_err(|e| StepError::new(format!("{}: {e}", cx.log_path.display())))?;

        let cpu = wf_trainer::Device::Cpu;
        let (mut train_src, mut val_src) = wf_trainer::loader::open_samples(
            &input.path,
            p.val_fraction,
            p.batch_size,
            cx.seed,
            &cpu,
        )
        .map_err(|e| StepError::new(e.to_string()))?;
        if train_src.is_empty() {
            return Err(StepError::new(format!(
                "no training samples: every case of the samples went to validation (val_fraction {})",
                p.val_fraction
            )));
        }
        let split = serde_json::json!({
            "train_cases": train_src.cases(),
            "val_cases": val_src.cases(),
            "train_samples": train_src.len(),
            "val_samples": val_src.len(),
        });
        let on = if matches!(target, Target::Cpu) {
            format!("CPU ({} threads)", cx.threads)
        } else {
            target.describe()
        };
        let msg = format!(
            "{} training samples ({} cases), {} validation samples ({} cases), {} epochs on {on}, {}",
            train_src.len(),
            train_src.cases().len(),
            val_src.len(),
            val_src.cases().len(),
            cfg.epochs,
            p.precision
        );
        cx.progress.message(&msg);
        let _ = writeln!(log, "{msg}");

        let epochs = cfg.epochs as u64;
        let mut last_message = std::time::Instant::now();
        let mut on_event = |e: &TrainEvent| match e {
            TrainEvent::Resumed { epoch, checkpoint } => {
                let m = format!(
                    "resumed after an interruption from the checkpoint of epoch {epoch} ({})",
                    checkpoint.display()
                );
                let _ = writeln!(log, "{m}");
                cx.progress.warn(&format!(
                    "resumed after an interruption from the checkpoint of epoch {epoch}"
                ));
                cx.progress.advance(*epoch as u64, epochs);
            }
            TrainEvent::Step { epoch, step, loss } => {
                let _ = writeln!(log, "epoch {epoch} step {step}: loss {loss:.5}");
                // Every step goes to the log; the console hears of one every few seconds.
                if last_message.elapsed() >= std::time::Duration::from_secs(5) {
                    last_message = std::time::Instant::now();
                    cx.progress.message(&format!(
                        "epoch {epoch}/{epochs} step {step}: loss {loss:.4}"
                    ));
                }
            }
            TrainEvent::Epoch(m) => {
                let dice =
                    |d: Option<f32>| d.map_or_else(|| "n/a".to_string(), |d| format!("{d:.4}"));
                let line = format!(
                    "epoch {}/{epochs}: loss {:.4}, val Dice mean {} (TC {}, WT {}, ET {}), {:.1} samples/s",
                    m.epoch,
                    m.train_loss,
                    dice(m.val_mean_dice),
                    dice(m.val_dice_tc),
                    dice(m.val_dice_wt),
                    dice(m.val_dice_et),
                    m.train_samples_per_second
                );
                let _ = writeln!(log, "{line}");
                cx.progress.message(&line);
                cx.progress.advance(m.epoch as u64, epochs);
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cx.threads.max(1))
            .build()
            .map_err(|e| StepError::new(format!("cannot start the training threads: {e}")))?;
        let summary = pool
            .install(|| match target {
                Target::Cpu => {
                    let mut train_src = Cancellable {
                        inner: &mut train_src,
                        cancel: cx.cancel,
                        epoch: 0,
                    };
                    wf_trainer::train::train(&cfg, &work, &mut train_src, &mut val_src, &mut on_event)
                }
                #[cfg(feature = "cuda")]
                Target::Gpu => {
                    drop((train_src, val_src));
                    let device = wf_trainer::gpu::device(0)?;
                    let (train_src, mut val_src) = wf_trainer::loader::open_samples(
                        &input.path,
                        p.val_fraction,
                        p.batch_size,
                        cx.seed,
                        &device,
                    )?;
                    let mut train_src = Cancellable {
                        inner: train_src,
                        cancel: cx.cancel,
                        epoch: 0,
                    };
                    wf_trainer::train::train_replica(
                        &cfg,
                        &device,
                        &work,
                        &mut train_src,
                        &mut val_src,
                        &wf_trainer::ddp::SingleProcess,
                        &mut on_event,
                    )
                }
                #[cfg(feature = "nccl")]
                Target::DataParallel {
                    per_node,
                    ref cluster,
                } => {
                    drop((train_src, val_src));
                    let world = per_node * cluster.nodes();
                    if !p.batch_size.is_multiple_of(world) {
                        return Err(wf_trainer::TrainerError::Config {
                            field: "batch_size",
                            detail: format!(
                                "batch_size {} (over all replicas) is not a multiple of the {world} replicas",
                                p.batch_size
                            ),
                        });
                    }
                    let per_replica = p.batch_size / world;
                    wf_trainer::gpu::train_data_parallel(
                        &cfg,
                        &work,
                        per_node,
                        cluster,
                        |device, rank, world| {
                            let (tr, va) = wf_trainer::loader::open_samples(
                                &input.path,
                                p.val_fraction,
                                per_replica,
                                cx.seed,
                                device,
                            )?;
                            Ok((
                                Box::new(Cancellable {
                                    inner: tr.shard(rank, world)?,
                                    cancel: cx.cancel,
                                    epoch: 0,
                                }),
                                Box::new(va),
                            ))
                        },
                        &mut on_event,
                    )
                }
            })
            .map_err(|e| {
                StepError::new(format!(
                    "{e} (checkpoints of completed epochs are kept in {}; the next `wf run` resumes from them)",
                    work.display()
                ))
            })?;

        // The samples' chain and label convention, so an export can preprocess new images the same way.
        let index_path = input.path.join("index.json");
        let index: serde_json::Value = std::fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                StepError::new(format!(
                    "{}: cannot read the samples index",
                    index_path.display()
                ))
            })?;
        write_json(
            &cx.out_dir.join(PREPROCESSING_FILE),
            &serde_json::json!({
                "transforms": index["transforms"],
                "labels": index["labels"],
            }),
        )?;
        write_json(
            &cx.out_dir.join(TRAIN_FILE),
            &serde_json::json!({
                "config": cfg,
                "samples": input.digest.to_hex(),
                "split": split,
                "device": target.describe(),
                "precision": p.precision,
                "epochs_completed": summary.epochs_completed,
                "best_epoch": summary.best_epoch,
                "best_val_mean_dice": summary.best_val_mean_dice,
            }),
        )?;
        move_tree(&work, cx.out_dir)?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Training { instances: 1 }
    }
}

/// Where training runs, from `gpus:` and `precision:` and what this build and machine offer.
enum Target {
    Cpu,
    /// One GPU (device 0), one node.
    #[cfg(feature = "cuda")]
    Gpu,
    /// One replica per GPU, `per_node` GPUs on every node of the cluster, NCCL all-reduce.
    #[cfg(feature = "nccl")]
    DataParallel {
        per_node: usize,
        cluster: wf_trainer::cluster::Cluster,
    },
}

impl Target {
    #[cfg(not(feature = "cuda"))]
    fn resolve(gpus: Gpus, bf16: bool) -> Result<Target, StepError> {
        if let Gpus::Count(n @ 1..) = gpus {
            return Err(StepError::new(format!(
                "gpus: {n} asks for GPU training, but this build of wf has no CUDA support; \
                 use `gpus: 0` (CPU) or a CUDA build (cargo build --release --features gpu)"
            )));
        }
        if bf16 {
            return Err(StepError::new(
                "precision: bf16 needs CUDA (mixed precision on the GPU); this build trains in fp32 on \
                 CPU: set `precision: fp32`",
            ));
        }
        Ok(Target::Cpu)
    }

    #[cfg(feature = "cuda")]
    fn resolve(gpus: Gpus, bf16: bool) -> Result<Target, StepError> {
        let err = |e: wf_trainer::TrainerError| StepError::new(e.to_string());
        // `all` on a machine whose driver sees no GPU (cuInit fails) means the CPU; an explicit
        // count there is an error that says why.
        let available = match (wf_trainer::gpu::device_count(), gpus) {
            (Ok(n), _) => n,
            (Err(_), Gpus::All | Gpus::Count(0)) => 0,
            (Err(e), Gpus::Count(_)) => return Err(err(e)),
        };
        let n = match gpus {
            Gpus::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Gpus::All => available,
        };
        if n > available {
            return Err(StepError::new(format!(
                "gpus: {n}, but this machine has {available} CUDA device(s)"
            )));
        }
        if n == 0 {
            if bf16 {
                return Err(StepError::new(
                    "precision: bf16 needs a GPU (gpus >= 1); CPU training is fp32",
                ));
            }
            return Ok(Target::Cpu);
        }
        let cluster = wf_trainer::cluster::Cluster::from_env().map_err(err)?;
        let nodes = cluster.as_ref().map_or(1, |c| c.nodes());
        if n == 1 && nodes == 1 {
            return Ok(Target::Gpu);
        }
        #[cfg(feature = "nccl")]
        {
            Ok(Target::DataParallel {
                per_node: n,
                cluster: cluster.unwrap_or_else(wf_trainer::cluster::Cluster::single),
            })
        }
        #[cfg(not(feature = "nccl"))]
        {
            Err(StepError::new(format!(
                "{n} GPU(s) on {nodes} node(s) need data parallelism, but this build of wf has no \
                 NCCL support (cargo build --release --features gpu)"
            )))
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Target::Gpu => "cuda:0".into(),
            #[cfg(feature = "nccl")]
            Target::DataParallel { per_node, cluster } => format!(
                "{per_node} GPU(s) x {} node(s), NCCL data parallel",
                cluster.nodes()
            ),
        }
    }
}

/// Stops training at the next batch once the run is cancelled (Ctrl-C); the checkpoints of completed
/// epochs stay for the next run to resume from.
struct Cancellable<'a, S: BatchSource> {
    inner: S,
    cancel: &'a CancelToken,
    epoch: usize,
}

impl<S: BatchSource> BatchSource for Cancellable<'_, S> {
    fn start_epoch(&mut self, epoch: usize) -> wf_trainer::Result<()> {
        self.epoch = epoch;
        self.inner.start_epoch(epoch)
    }
    fn next_batch(
        &mut self,
    ) -> wf_trainer::Result<Option<(wf_trainer::Tensor, wf_trainer::Tensor)>> {
        if self.cancel.is_cancelled() {
            return Err(wf_trainer::TrainerError::Interrupted {
                epoch: self.epoch + 1,
            });
        }
        self.inner.next_batch()
    }
}

/// Names the resume directory after everything the step key is made of (kind, version, params,
/// seed, input), so a different configuration never resumes another's checkpoints.
fn resume_id(cx: &RunContext<'_>, input: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(
        format!(
            "train-unet\n{}\n{}\n{}\n{input}",
            TrainUnet.version(),
            cx.params.canonical_json(),
            cx.seed
        )
        .as_bytes(),
    );
    h.finalize().to_hex()[..32].to_string()
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), StepError> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(path, text + "\n")
        .map_err(|e| StepError::new(format!("{}: {e}", path.display())))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_accepts_counts_and_all() {
        assert_eq!(parse_gpus(&serde_json::json!("all")), Ok(Gpus::All));
        assert_eq!(parse_gpus(&serde_json::json!(2)), Ok(Gpus::Count(2)));
        assert!(parse_gpus(&serde_json::json!(-1)).is_err());
        assert!(parse_gpus(&serde_json::json!("two")).is_err());
    }
}
