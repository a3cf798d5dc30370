//! The training loop: epochs over a `BatchSource`, Dice loss + Adam, validation Dice, metrics.jsonl, a checkpoint per epoch, resume.
//!
//! Output directory layout:
//! - `checkpoints/epoch-NNNN/` after each epoch (see `checkpoint`); the latest and the best (by
//!   validation mean Dice) are kept, older ones removed;
//! - `metrics.jsonl`: one [`EpochMetrics`] per line, appended after that epoch's checkpoint, with
//!   the learning rate the epoch trained with (`schedule`: set before each epoch from its number).
//!
//! Everything written there is a function of the configuration, the data and the machine's
//! arithmetic: no clock. How long an epoch took ([`EpochTiming`]) comes with the epoch's event only,
//! so training the same thing twice on the same kind of machine writes the same bytes.
//!
//! The loop knows nothing of where batches come from: the real loader (mmap'd samples, online
//! augmentation) implements [`BatchSource`].

use crate::checkpoint::{self, CheckpointMeta, FORMAT_VERSION};
use crate::ddp::{GradReducer, SingleProcess};
use crate::error::{Result, TrainerError};
use crate::loss::{DiceLoss, DiceMetric};
use crate::optim::{Adam, AdamConfig};
use crate::schedule::LrSchedule;
use crate::unet::{UNet, UNetConfig, init_seeded};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where batches come from. One pass per epoch: `start_epoch`, then `next_batch` until `None`.
pub trait BatchSource {
    /// Rewinds for `epoch` (0-based); a shuffling source derives its order from its seed and `epoch`.
    fn start_epoch(&mut self, epoch: usize) -> Result<()>;
    /// The next (image (N, C_in, X, Y, Z) f32, label (N, C_out, X, Y, Z) in {0, 1}) or `None` at the end of the epoch.
    fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>>;
}

impl<S: BatchSource + ?Sized> BatchSource for &mut S {
    fn start_epoch(&mut self, epoch: usize) -> Result<()> {
        (**self).start_epoch(epoch)
    }
    fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>> {
        (**self).next_batch()
    }
}

/// Samples held in memory, each (C, X, Y, Z); batches in a per-epoch shuffled order. For tests and
/// small data sets.
pub struct VecSource {
    samples: Vec<(Tensor, Tensor)>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    order: Vec<usize>,
    pos: usize,
}

impl VecSource {
    pub fn new(
        samples: Vec<(Tensor, Tensor)>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(TrainerError::Config {
                field: "batch_size",
                detail: "must be >= 1".into(),
            });
        }
        Ok(VecSource {
            order: (0..samples.len()).collect(),
            samples,
            batch_size,
            shuffle_seed,
            pos: 0,
        })
    }
}

impl BatchSource for VecSource {
    fn start_epoch(&mut self, epoch: usize) -> Result<()> {
        self.order = (0..self.samples.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            // Fisher-Yates from a per-epoch stream, so an epoch's order does not depend on history.
            let mut s =
                seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
            for i in (1..self.order.len()).rev() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                self.order.swap(i, (s % (i as u64 + 1)) as usize);
            }
        }
        self.pos = 0;
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>> {
        if self.pos >= self.order.len() {
            return Ok(None);
        }
        let idx = &self.order[self.pos..(self.pos + self.batch_size).min(self.order.len())];
        self.pos += idx.len();
        let images: Vec<&Tensor> = idx.iter().map(|&i| &self.samples[i].0).collect();
        let labels: Vec<&Tensor> = idx.iter().map(|&i| &self.samples[i].1).collect();
        let stack = |ts: &[&Tensor]| -> Result<Tensor> {
            if let Some(bad) = ts.iter().find(|t| t.dims() != ts[0].dims()) {
                return Err(TrainerError::shape(
                    "batch",
                    format!(
                        "samples of mixed shapes in one batch: {:?} and {:?}",
                        ts[0].dims(),
                        bad.dims()
                    ),
                ));
            }
            Ok(Tensor::stack(ts, 0)?)
        };
        Ok(Some((stack(&images)?, stack(&labels)?)))
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub unet: UNetConfig,
    pub adam: AdamConfig,
    pub loss: DiceLoss,
    pub epochs: usize,
    /// Seeds the weight initialization (shuffling belongs to the batch source).
    pub seed: u64,
    /// Continue from the latest complete checkpoint in `out_dir` when there is one.
    pub resume: bool,
    /// bf16 mixed precision (convolutions in bf16, the rest f32); CUDA devices only.
    #[serde(default)]
    pub bf16: bool,
    /// The learning rate per epoch (`schedule`); absent in configurations recorded before it,
    /// which trained at the constant `adam.lr`.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// How the validation split is scored each epoch; absent in configurations recorded before
    /// it, which validated on the split's batches (crops).
    #[serde(default)]
    pub validation: Validation,
    /// The fused CPU ops (`ops::conv3d_bias`, `ops::instance_norm_prelu`, the one-op Dice loss,
    /// the in-place Adam) or, off, candle's own ops everywhere; configurations recorded before
    /// the switch ran the fused path.
    #[serde(default = "fused_default")]
    pub fused: bool,
}

fn fused_default() -> bool {
    true
}

/// How validation runs each epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Validation {
    /// The network on each validation batch as the source yields it (the seed's random crops).
    #[default]
    Crops,
    /// Sliding-window inference (`infer::sliding_window_inference`) over each validation batch:
    /// whole volumes, one per batch (`loader::SamplesLoader::whole_volumes`), of any size;
    /// windows of `roi` (multiples of the network's size divisor) overlapping by `overlap`,
    /// blended by `blend`. Dice per case, averaged over cases per region.
    Volumes {
        roi: [usize; 3],
        overlap: f64,
        #[serde(default)]
        blend: crate::infer::Blend,
    },
}

impl Validation {
    pub fn validate(&self, unet: &UNetConfig) -> Result<()> {
        if let Validation::Volumes { roi, overlap, .. } = *self {
            let div = unet.size_divisor();
            if roi.iter().any(|r| *r == 0 || r % div != 0) {
                return Err(TrainerError::Config {
                    field: "val_roi",
                    detail: format!(
                        "{roi:?}: each must be a positive multiple of {div} (the network's size divisor)"
                    ),
                });
            }
            if !(0.0..1.0).contains(&overlap) {
                return Err(TrainerError::Config {
                    field: "val_overlap",
                    detail: format!("{overlap} is not in [0, 1)"),
                });
            }
            // One window's buffers at least (a volume no larger than the window): refused before
            // training rather than at the first validation.
            let shape = [unet.in_channels, roi[0], roi[1], roi[2]];
            let need = crate::infer::inference_bytes(unet, shape, roi, overlap, 1);
            wf_imaging::memory::check(need).map_err(|why| TrainerError::Config {
                field: "val_roi",
                detail: format!("{roi:?}: sliding-window validation with this window {why}"),
            })?;
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            unet: UNetConfig::brats(),
            adam: AdamConfig::default(),
            loss: DiceLoss::default(),
            epochs: 10,
            seed: 0,
            resume: true,
            bf16: false,
            lr_schedule: LrSchedule::default(),
            validation: Validation::Crops,
            fused: true,
        }
    }
}

/// One line of `metrics.jsonl`. Lines written by earlier versions also hold `train_seconds` and
/// `train_samples_per_second`; they are read and ignored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based: the number of epochs completed.
    pub epoch: usize,
    pub train_loss: f32,
    pub train_steps: usize,
    pub train_samples: usize,
    /// Per output channel (TC, WT, ET for BraTS), MONAI DiceMetric "mean_batch".
    pub val_dice_per_channel: Vec<f32>,
    pub val_dice_tc: Option<f32>,
    pub val_dice_wt: Option<f32>,
    pub val_dice_et: Option<f32>,
    /// MONAI DiceMetric "mean"; `None` without validation samples.
    pub val_mean_dice: Option<f32>,
    pub val_samples: usize,
    /// The learning rate this epoch trained with (the schedule's, see `schedule`).
    pub lr: f64,
    /// With whole-volume validation, each validation case's Dice per channel (`null` where the
    /// case's label region is empty), in the order of the split's `val_cases` (sorted case ids);
    /// empty, and left out of the line, otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_dice_per_case: Vec<Vec<Option<f32>>>,
}

/// How long an epoch's training steps took: a fact about the run, never written into the output.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochTiming {
    pub epoch: usize,
    pub train_seconds: f64,
    pub train_samples_per_second: f64,
}

/// Progress, for a reporter.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    Resumed {
        epoch: usize,
        checkpoint: PathBuf,
    },
    Step {
        epoch: usize,
        step: usize,
        loss: f32,
    },
    Epoch {
        metrics: EpochMetrics,
        timing: EpochTiming,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    pub epochs_completed: usize,
    pub last_checkpoint: Option<PathBuf>,
    pub best_epoch: Option<usize>,
    pub best_val_mean_dice: Option<f32>,
    pub metrics: Vec<EpochMetrics>,
}

pub fn checkpoints_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoints")
}

pub fn metrics_path(out_dir: &Path) -> PathBuf {
    out_dir.join("metrics.jsonl")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainerError + '_ {
    move |source| TrainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `metrics.jsonl` (skipping a torn last line left by a kill).
pub fn read_metrics(out_dir: &Path) -> Result<Vec<EpochMetrics>> {
    let p = metrics_path(out_dir);
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn write_metrics(out_dir: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let p = metrics_path(out_dir);
    let tmp = p.with_extension("jsonl.partial");
    let mut text = String::new();
    for m in metrics {
        text.push_str(
            &serde_json::to_string(m).map_err(|source| TrainerError::Json {
                path: p.clone(),
                source,
            })?,
        );
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))
}

fn append_metrics(out_dir: &Path, m: &EpochMetrics) -> Result<()> {
    let p = metrics_path(out_dir);
    let line = serde_json::to_string(m).map_err(|source| TrainerError::Json {
        path: p.clone(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(io(&p))?;
    writeln!(f, "{line}").map_err(io(&p))
}

fn best_of(metrics: &[EpochMetrics]) -> Option<(usize, f32)> {
    metrics
        .iter()
        .filter_map(|m| m.val_mean_dice.map(|d| (m.epoch, d)))
        .fold(None, |best, (e, d)| match best {
            Some((_, bd)) if bd >= d => best,
            _ => Some((e, d)),
        })
}

/// Trains on one process and device (CPU here); see [`train_replica`] for data parallelism.
pub fn train(
    cfg: &TrainConfig,
    out_dir: &Path,
    train_src: &mut dyn BatchSource,
    val_src: &mut dyn BatchSource,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    train_replica(
        cfg,
        &Device::Cpu,
        out_dir,
        train_src,
        val_src,
        &SingleProcess,
        on_event,
    )
}

/// Checks a batch before compute so a bad sample reads as such, with its epoch and step.
fn check_batch(
    cfg: &UNetConfig,
    net: &UNet,
    epoch: usize,
    step: usize,
    x: &Tensor,
    y: &Tensor,
    whole_volume: bool,
) -> Result<()> {
    let bad = |detail: String| TrainerError::BadBatch {
        epoch,
        step,
        detail,
    };
    if whole_volume {
        // Sliding windows take any size: only the channels must fit.
        let d = x.dims();
        if d.len() != 5 || d[1] != cfg.in_channels || d[2..].contains(&0) {
            return Err(bad(format!(
                "volume must be (N, {}, D, H, W), got {d:?}",
                cfg.in_channels
            )));
        }
    } else {
        net.check_input(x).map_err(|e| bad(e.to_string()))?;
    }
    let (xd, yd) = (x.dims(), y.dims());
    if yd.len() != 5 || yd[0] != xd[0] || yd[1] != cfg.out_channels || yd[2..] != xd[2..] {
        return Err(bad(format!(
            "label has shape {yd:?}, expected ({}, {}, {:?})",
            xd[0],
            cfg.out_channels,
            &xd[2..]
        )));
    }
    if x.dtype() != DType::F32 {
        return Err(bad(format!("image must be f32, got {:?}", x.dtype())));
    }
    Ok(())
}

/// One replica of a data-parallel run (or the only one, with `SingleProcess`): every replica
/// starts from the same seeded weights, reduces gradients (and the loss, so a non-finite loss
/// stops all replicas at the same step) through `reducer`, and rank 0 alone validates, writes
/// checkpoints and metrics.
///
/// The model lives on `device`, which must be the device the batch sources put their tensors on.
pub fn train_replica(
    cfg: &TrainConfig,
    device: &Device,
    out_dir: &Path,
    train_src: &mut dyn BatchSource,
    val_src: &mut dyn BatchSource,
    reducer: &dyn GradReducer,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    let r = run_replica(cfg, device, out_dir, train_src, val_src, reducer, on_event);
    if r.is_err() {
        // The other replicas would otherwise wait for this one at their next reduction.
        reducer.abort();
    }
    r
}

/// What a replica did in one training exchange.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Step,
    EndOfEpoch,
    Failed,
}

/// The control record sent with every training exchange: [step, end of epoch, failed, epoch, batch
/// size], averaged over the replicas. Every replica sends a buffer of the same size whatever
/// happened to it (NCCL cannot match up buffers of different sizes, nor be interrupted), and all
/// read the same averages, so all stop at the same exchange: when any failed, or when their
/// sources disagree on the number of batches.
fn control(device: &Device, part: Part, epoch: usize, batch: usize) -> Result<Option<Tensor>> {
    let flag = |p: Part| if part == p { 1f32 } else { 0.0 };
    Ok(Some(Tensor::new(
        &[
            flag(Part::Step),
            flag(Part::EndOfEpoch),
            flag(Part::Failed),
            epoch as f32,
            batch as f32,
        ],
        device,
    )?))
}

/// The exchange's outcome for every replica: `Some(total batch)` for a step, `None` at the end of
/// the epoch, an error when any replica failed or the replicas are out of step.
fn read_control(
    reduced: Option<Tensor>,
    epoch: usize,
    step: usize,
    world: usize,
) -> Result<Option<usize>> {
    let c = match reduced {
        Some(t) => t.to_vec1::<f32>()?,
        None => vec![],
    };
    if c.len() != 5 {
        return Err(TrainerError::Ddp {
            detail: format!("a control record of {} values", c.len()),
        });
    }
    if c[2] > 0.0 {
        return Err(TrainerError::Ddp {
            detail: format!(
                "another replica failed in epoch {}, step {step} (its own error says why); this one stopped with it",
                epoch + 1
            ),
        });
    }
    if c[3] != epoch as f32 || (c[0] != 1.0 && c[1] != 1.0) {
        return Err(TrainerError::Ddp {
            detail: format!(
                "replicas are out of step in epoch {} (their batch sources yield different numbers of batches)",
                epoch + 1
            ),
        });
    }
    Ok((c[0] == 1.0).then(|| (c[4] * world as f32).round() as usize))
}

/// Every replica says whether its part of a phase outside the training steps succeeded; when one
/// failed, all fail, so none is left waiting at an exchange the failed one never reaches.
fn agree<T>(reducer: &dyn GradReducer, device: &Device, what: &str, local: Result<T>) -> Result<T> {
    if reducer.world_size() == 1 {
        return local;
    }
    let flag = if local.is_err() { 1f32 } else { 0.0 };
    let reduced = Tensor::new(&[flag], device)
        .map_err(TrainerError::from)
        .and_then(|t| reducer.all_reduce_mean(&[Some(t)]));
    let others_failed = match &reduced {
        Ok(r) => match r.first().cloned().flatten() {
            Some(t) => t.to_vec1::<f32>()?.first().is_none_or(|f| *f != 0.0),
            None => true,
        },
        Err(_) => true,
    };
    match (local, reduced) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(_), Ok(_)) if others_failed => Err(TrainerError::Ddp {
            detail: format!("another replica failed {what}; this one stopped with it"),
        }),
        (Ok(v), Ok(_)) => Ok(v),
    }
}

/// One replica's training step up to its gradients (and loss, last): `None` at the end of the epoch.
fn local_step(
    cfg: &TrainConfig,
    net: &UNet,
    opt: &Adam,
    train_src: &mut dyn BatchSource,
    epoch: usize,
    step: usize,
) -> Result<Option<(Vec<Option<Tensor>>, usize)>> {
    let Some((x, y)) = train_src.next_batch()? else {
        return Ok(None);
    };
    check_batch(&cfg.unet, net, epoch + 1, step, &x, &y, false)?;
    let (loss, mut grads) = loss_and_gradients(net, opt, &cfg.loss, &x, &y)?;
    grads.push(Some(loss.reshape(1)?.detach()));
    Ok(Some((grads, x.dim(0)?)))
}

/// One training-mode forward pass of `net` on `x`, the loss against `y`, and the gradients of
/// `opt`'s parameters in its order: by the hand-written backward pass where it applies
/// (`UNet::hand_backward_applies`: fused, CPU, f32), else by candle's autograd, with the fused
/// loss op as the network uses fused ops (`UNet::fused`).
pub fn loss_and_gradients(
    net: &UNet,
    opt: &Adam,
    loss: &DiceLoss,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Tensor, Vec<Option<Tensor>>)> {
    if net.hand_backward_applies(x, loss) {
        let (value, grads) = net.loss_and_grads(x, y, loss)?;
        let by_param = opt
            .params()
            .iter()
            .map(|(_, v)| grads.get(&v.as_tensor().id()).cloned())
            .collect();
        return Ok((value, by_param));
    }
    let logits = net.forward_t(x, true)?;
    let value = loss.forward_with(&logits, y, net.fused())?;
    let grads = opt.gradients(&value.backward()?);
    Ok((value, grads))
}

/// Zero gradients and loss, the payload of a replica with nothing to contribute to an exchange.
fn zeros(opt: &Adam, device: &Device) -> Result<Vec<Option<Tensor>>> {
    let mut z = opt
        .params()
        .iter()
        .map(|(_, p)| Ok(Some(p.as_tensor().zeros_like()?)))
        .collect::<Result<Vec<_>>>()?;
    z.push(Some(Tensor::zeros(1, DType::F32, device)?));
    Ok(z)
}

fn run_replica(
    cfg: &TrainConfig,
    device: &Device,
    out_dir: &Path,
    train_src: &mut dyn BatchSource,
    val_src: &mut dyn BatchSource,
    reducer: &dyn GradReducer,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    cfg.unet.validate()?;
    cfg.adam.validate()?;
    cfg.lr_schedule.validate(cfg.epochs)?;
    cfg.validation.validate(&cfg.unet)?;
    let rank0 = reducer.rank() == 0;
    if cfg.bf16 && !device.is_cuda() {
        return Err(TrainerError::Config {
            field: "precision",
            detail: "bf16 mixed precision needs a CUDA device".into(),
        });
    }
    let vm = VarMap::new();
    let net = UNet::new(&cfg.unet, VarBuilder::from_varmap(&vm, DType::F32, device))?
        .with_bf16(cfg.bf16)
        .with_fused(cfg.fused);
    init_seeded(&vm, cfg.seed)?;
    let mut opt = Adam::from_varmap(&vm, cfg.adam.clone())?;
    opt.set_fused(cfg.fused);
    let ckpt_root = checkpoints_dir(out_dir);
    let world = reducer.world_size();

    let prepared = (|| -> Result<(usize, Option<PathBuf>, Vec<EpochMetrics>)> {
        if rank0 {
            std::fs::create_dir_all(&ckpt_root).map_err(io(&ckpt_root))?;
        }
        if cfg.resume
            && let Some(dir) = checkpoint::latest(&ckpt_root)?
        {
            // The learning rate is set per epoch from the schedule, whatever the checkpoint held.
            let meta = checkpoint::load(&dir, &vm, &mut opt)?;
            // Lines past the checkpoint come from an epoch whose checkpoint never completed.
            let metrics: Vec<EpochMetrics> = read_metrics(out_dir)?
                .into_iter()
                .filter(|m| m.epoch <= meta.epoch)
                .collect();
            if rank0 {
                write_metrics(out_dir, &metrics)?;
            }
            on_event(&TrainEvent::Resumed {
                epoch: meta.epoch,
                checkpoint: dir.clone(),
            });
            return Ok((meta.epoch, Some(dir), metrics));
        }
        if rank0 {
            write_metrics(out_dir, &[])?;
        }
        Ok((0, None, Vec::new()))
    })();
    let (start_epoch, mut last_checkpoint, mut metrics) =
        agree(reducer, device, "preparing (checkpoints, resume)", prepared)?;

    for epoch in start_epoch..cfg.epochs {
        opt.set_lr(cfg.lr_schedule.lr(cfg.adam.lr, epoch, cfg.epochs));
        agree(
            reducer,
            device,
            "starting the epoch",
            train_src.start_epoch(epoch),
        )?;
        let t0 = Instant::now();
        let (mut loss_sum, mut steps, mut samples) = (0f64, 0usize, 0usize);
        loop {
            // Whatever this replica's step gave (gradients, the end of its batches, an error), it
            // takes part in the exchange, so the others never wait for it.
            let (mut payload, part, batch, failure) =
                match local_step(cfg, &net, &opt, train_src, epoch, steps + 1) {
                    Ok(Some((grads, n))) => (grads, Part::Step, n, None),
                    Ok(None) if world == 1 => break,
                    Ok(None) => (zeros(&opt, device)?, Part::EndOfEpoch, 0, None),
                    Err(e) if world > 1 => (zeros(&opt, device)?, Part::Failed, 0, Some(e)),
                    Err(e) => return Err(e),
                };
            payload.push(control(device, part, epoch, batch)?);
            let exchanged = reducer.all_reduce_mean(&payload);
            if let Some(e) = failure {
                return Err(e);
            }
            let mut reduced = exchanged?;
            let Some(batch_total) = read_control(reduced.pop().flatten(), epoch, steps + 1, world)?
            else {
                break;
            };
            let mean_loss = match reduced.pop().flatten() {
                Some(l) => l.to_vec1::<f32>()?[0],
                None => f32::NAN,
            };
            steps += 1;
            if !mean_loss.is_finite() {
                let last_good = last_checkpoint.as_ref().map_or_else(
                    || "none (first epoch)".to_string(),
                    |p: &PathBuf| p.display().to_string(),
                );
                return Err(TrainerError::NonFiniteLoss {
                    epoch: epoch + 1,
                    step: steps,
                    loss: mean_loss,
                    last_good,
                });
            }
            opt.step_with(&reduced)?;
            loss_sum += mean_loss as f64;
            samples += batch_total;
            on_event(&TrainEvent::Step {
                epoch: epoch + 1,
                step: steps,
                loss: mean_loss,
            });
        }
        if steps == 0 {
            return Err(TrainerError::Config {
                field: "train",
                detail: format!("epoch {}: the training source yielded no batch", epoch + 1),
            });
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        // Rank 0 validates and writes; the others wait for its outcome, so a failure there (a bad
        // validation batch, a full disk) stops every replica instead of leaving them waiting.
        let epoch_end = (|| -> Result<()> {
            if !rank0 {
                return Ok(());
            }
            let mut dice = DiceMetric::new();
            let mut val_samples = 0;
            val_src.start_epoch(epoch)?;
            let mut vstep = 0;
            while let Some((x, y)) = val_src.next_batch()? {
                vstep += 1;
                let whole = matches!(cfg.validation, Validation::Volumes { .. });
                check_batch(&cfg.unet, &net, epoch + 1, vstep, &x, &y, whole).map_err(
                    |e| match e {
                        TrainerError::BadBatch {
                            epoch,
                            step,
                            detail,
                        } => TrainerError::BadBatch {
                            epoch,
                            step,
                            detail: format!("validation: {detail}"),
                        },
                        other => other,
                    },
                )?;
                let logits = match cfg.validation {
                    Validation::Crops => net.forward_t(&x, false)?,
                    Validation::Volumes {
                        roi,
                        overlap,
                        blend,
                    } => crate::infer::sliding_window_inference(
                        &x,
                        roi,
                        1,
                        overlap,
                        blend,
                        &mut |w| net.forward_t(w, false),
                    )?,
                };
                dice.update(&logits, &y)?;
                val_samples += x.dim(0)?;
            }
            let per_channel = dice.per_channel();
            let named = |i: usize| (cfg.unet.out_channels == 3).then(|| per_channel[i]);
            let m = EpochMetrics {
                epoch: epoch + 1,
                train_loss: (loss_sum / steps as f64) as f32,
                train_steps: steps,
                train_samples: samples,
                val_dice_tc: if val_samples > 0 { named(0) } else { None },
                val_dice_wt: if val_samples > 0 { named(1) } else { None },
                val_dice_et: if val_samples > 0 { named(2) } else { None },
                val_mean_dice: (val_samples > 0).then(|| dice.mean()),
                val_dice_per_channel: per_channel.clone(),
                val_samples,
                lr: opt.config().lr,
                val_dice_per_case: match cfg.validation {
                    Validation::Crops => Vec::new(),
                    Validation::Volumes { .. } => dice
                        .values()
                        .iter()
                        .map(|r| r.iter().map(|v| v.is_finite().then_some(*v)).collect())
                        .collect(),
                },
            };

            let dir = checkpoint::epoch_dir(&ckpt_root, epoch + 1);
            let meta = CheckpointMeta {
                format: FORMAT_VERSION,
                epoch: epoch + 1,
                global_step: opt.step_count(),
                unet: cfg.unet.clone(),
                adam: cfg.adam.clone(),
                val_mean_dice: m.val_mean_dice,
            };
            checkpoint::save(&dir, &vm, &opt, &meta)?;
            append_metrics(out_dir, &m)?;
            metrics.push(m.clone());
            // plot.png is a convenience: failing to draw it is reported, never fatal to training.
            if let Err(e) = crate::plot::write_plot(&metrics, &out_dir.join("plot.png")) {
                eprintln!("warning: {e}");
            }
            last_checkpoint = Some(dir);
            prune(&ckpt_root, epoch + 1, best_of(&metrics).map(|b| b.0))?;
            on_event(&TrainEvent::Epoch {
                metrics: m,
                timing: EpochTiming {
                    epoch: epoch + 1,
                    train_seconds,
                    train_samples_per_second: samples as f64 / train_seconds.max(1e-9),
                },
            });
            Ok(())
        })();
        agree(
            reducer,
            device,
            "validating or writing the checkpoint",
            epoch_end,
        )?;
    }
    let best = best_of(&metrics);
    Ok(TrainSummary {
        epochs_completed: cfg.epochs.max(start_epoch),
        last_checkpoint,
        best_epoch: best.map(|b| b.0),
        best_val_mean_dice: best.map(|b| b.1),
        metrics,
    })
}

/// Keeps the latest and the best checkpoint (each is ~3x the model size with Adam's moments).
fn prune(root: &Path, latest: usize, best: Option<usize>) -> Result<()> {
    for e in std::fs::read_dir(root).map_err(io(root))? {
        let e = e.map_err(io(root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if n != latest && Some(n) != best {
            std::fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::randn;

    /// Blobs: a bright cube in channel 0 marks all three label channels, so a small net can learn it.
    fn synthetic(n: usize, seed: u64) -> Vec<(Tensor, Tensor)> {
        (0..n)
            .map(|i| {
                let s = seed + i as u64;
                let (x0, y0) = (1 + (s % 4) as usize, 1 + ((s / 4) % 4) as usize);
                let mut mask = vec![0f32; 8 * 8 * 8];
                for z in 2..6 {
                    for y in y0..y0 + 3 {
                        for x in x0..x0 + 3 {
                            mask[(z * 8 + y) * 8 + x] = 1.0;
                        }
                    }
                }
                let m = Tensor::from_vec(mask, (1, 8, 8, 8), &Device::Cpu).unwrap();
                let noise = (randn(s, &[4, 8, 8, 8]) * 0.3).unwrap();
                let img = noise.broadcast_add(&(m.clone() * 2.0).unwrap()).unwrap();
                let lbl = Tensor::cat(&[&m, &m, &m], 0).unwrap();
                (img, lbl)
            })
            .collect()
    }

    fn small_cfg(epochs: usize) -> TrainConfig {
        TrainConfig {
            unet: UNetConfig {
                channels: vec![4, 8, 16],
                strides: vec![2, 2],
                ..UNetConfig::brats()
            },
            adam: AdamConfig {
                lr: 1e-2,
                ..Default::default()
            },
            epochs,
            ..Default::default()
        }
    }

    #[test]
    fn learns_writes_metrics_checkpoints_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = VecSource::new(synthetic(8, 0), 2, Some(1)).unwrap();
        let mut va = VecSource::new(synthetic(4, 100), 2, None).unwrap();
        let mut steps = 0;
        let s = train(&small_cfg(3), dir.path(), &mut tr, &mut va, &mut |e| {
            if let TrainEvent::Step { .. } = e {
                steps += 1
            }
        })
        .unwrap();
        assert_eq!(steps, 12);
        assert_eq!(s.metrics.len(), 3);
        let first = s.metrics[0].train_loss;
        let last = s.metrics[2].train_loss;
        assert!(last < first, "loss did not decrease: {first} -> {last}");
        // f64 fields may differ in the last digit after a JSON round trip; compare the rest.
        let key = |m: &EpochMetrics| {
            (
                m.epoch,
                m.train_loss,
                m.val_mean_dice,
                m.val_dice_per_channel.clone(),
            )
        };
        assert_eq!(
            read_metrics(dir.path())
                .unwrap()
                .iter()
                .map(key)
                .collect::<Vec<_>>(),
            s.metrics.iter().map(key).collect::<Vec<_>>()
        );
        assert!(s.metrics[2].val_mean_dice.is_some() && s.metrics[2].val_dice_et.is_some());
        assert_eq!(
            s.last_checkpoint.as_deref(),
            Some(checkpoint::epoch_dir(&checkpoints_dir(dir.path()), 3).as_path())
        );

        // "Killed" after epoch 3 with a torn metrics line: resuming to 5 epochs runs epochs 4 and 5 only.
        std::fs::OpenOptions::new()
            .append(true)
            .open(metrics_path(dir.path()))
            .unwrap()
            .write_all(b"{\"epoch\": 4, \"tr")
            .unwrap();
        let mut resumed_at = None;
        let s2 = train(&small_cfg(5), dir.path(), &mut tr, &mut va, &mut |e| {
            if let TrainEvent::Resumed { epoch, .. } = e {
                resumed_at = Some(*epoch)
            }
        })
        .unwrap();
        assert_eq!(resumed_at, Some(3));
        assert_eq!(
            s2.metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(read_metrics(dir.path()).unwrap().len(), 5);
        let kept: Vec<String> = std::fs::read_dir(checkpoints_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.len() <= 2 && kept.contains(&"epoch-0005".to_string()),
            "{kept:?}"
        );
    }

    /// A batch source that fails to start epoch `stop_at` (0-based), as a kill between epochs.
    struct StopAt {
        inner: VecSource,
        stop_at: Option<usize>,
    }

    impl BatchSource for StopAt {
        fn start_epoch(&mut self, epoch: usize) -> Result<()> {
            if Some(epoch) == self.stop_at {
                return Err(TrainerError::Config {
                    field: "test",
                    detail: "stopped".into(),
                });
            }
            self.inner.start_epoch(epoch)
        }
        fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>> {
            self.inner.next_batch()
        }
    }

    /// Resuming gives the weights, metrics and learning rates of an uninterrupted run, with the
    /// constant rate and with a warm-up and cosine schedule (recomputed from the resumed epoch).
    #[test]
    fn resume_equals_uninterrupted_run() {
        use crate::schedule::ScheduleKind;
        let cosine = LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 1,
        };
        for (schedule, epochs, killed_after) in [(LrSchedule::default(), 2, 1), (cosine, 4, 2)] {
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let run = |dir: &Path, epochs: usize, stop_at: Option<usize>| {
                let mut tr = StopAt {
                    inner: VecSource::new(synthetic(4, 0), 2, Some(3)).unwrap(),
                    stop_at,
                };
                let mut va = VecSource::new(synthetic(2, 50), 2, None).unwrap();
                let cfg = TrainConfig {
                    lr_schedule: schedule,
                    ..small_cfg(epochs)
                };
                train(&cfg, dir, &mut tr, &mut va, &mut |_| {})
            };
            let full = run(d1.path(), epochs, None);
            // The interrupted run has the same configuration (so the same schedule) and stops
            // as a kill would between epochs: after `killed_after` epochs' checkpoints.
            assert!(run(d2.path(), epochs, Some(killed_after)).is_err());
            let resumed = run(d2.path(), epochs, None).unwrap();
            let full = full.unwrap();
            let lrs = |s: &TrainSummary| s.metrics.iter().map(|m| m.lr).collect::<Vec<_>>();
            let want: Vec<f64> = (0..epochs).map(|e| schedule.lr(1e-2, e, epochs)).collect();
            assert_eq!(lrs(&full), want, "{schedule:?}");
            assert_eq!(
                lrs(&resumed),
                want,
                "{schedule:?}: learning rates after resume"
            );
            let a = std::fs::read(full.last_checkpoint.unwrap().join("model.safetensors")).unwrap();
            let b =
                std::fs::read(resumed.last_checkpoint.unwrap().join("model.safetensors")).unwrap();
            assert!(
                a == b,
                "{schedule:?}: resumed weights differ from an uninterrupted run"
            );
            let (fa, fb) = (
                std::fs::read(metrics_path(d1.path())).unwrap(),
                std::fs::read(metrics_path(d2.path())).unwrap(),
            );
            assert!(fa == fb, "{schedule:?}: metrics.jsonl differs after resume");
        }
    }

    /// Every file under `dir`, by relative path.
    fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// The output holds no clock: the same training twice writes the same bytes (metrics, plot,
    /// checkpoints), which is what lets a cache see a retrained model as unchanged.
    #[test]
    fn training_twice_writes_the_same_bytes() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut timings = Vec::new();
        for dir in [d1.path(), d2.path()] {
            let mut tr = VecSource::new(synthetic(4, 0), 2, Some(3)).unwrap();
            let mut va = VecSource::new(synthetic(2, 50), 2, None).unwrap();
            train(&small_cfg(2), dir, &mut tr, &mut va, &mut |e| {
                if let TrainEvent::Epoch { timing, .. } = e {
                    timings.push(*timing);
                }
            })
            .unwrap();
        }
        assert_eq!(timings.len(), 4);
        assert!(timings.iter().all(|t| t.train_seconds > 0.0));
        let (a, b) = (files(d1.path()), files(d2.path()));
        assert!(a.contains_key("metrics.jsonl") && a.contains_key("plot.png"));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{name} differs between two identical trainings"
            );
        }
        assert!(!String::from_utf8_lossy(&a["metrics.jsonl"]).contains("seconds"));
    }

    /// Lines written before timings left metrics.jsonl still read.
    #[test]
    fn metrics_lines_with_timings_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            metrics_path(dir.path()),
            r#"{"epoch":1,"train_loss":0.5,"train_steps":2,"train_samples":4,"train_seconds":1.5,"train_samples_per_second":2.6,"val_dice_per_channel":[0.1,0.2,0.3],"val_dice_tc":0.1,"val_dice_wt":0.2,"val_dice_et":0.3,"val_mean_dice":0.2,"val_samples":2,"lr":0.001}
"#,
        )
        .unwrap();
        let m = read_metrics(dir.path()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].epoch, m[0].val_mean_dice), (1, Some(0.2)));
    }

    #[test]
    fn two_replicas_train_like_one_replica_with_double_batch() {
        use crate::ddp::ThreadReducer;
        let mut cfg = small_cfg(2);
        // eps above rounding noise, see ddp::tests: zero-gradient biases would otherwise take
        // full-size steps of random sign.
        cfg.adam.eps = 1e-3;
        let data = synthetic(8, 0);
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut tr = VecSource::new(data.clone(), 4, None).unwrap();
        let mut va = VecSource::new(synthetic(2, 50), 2, None).unwrap();
        let single = train(&cfg, d1.path(), &mut tr, &mut va, &mut |_| {}).unwrap();

        // Rank r takes samples 4k + 2r and 4k + 2r + 1 of batch k.
        let shard = |r: usize| -> Vec<(Tensor, Tensor)> {
            (0..8)
                .filter(|i| (i % 4) / 2 == r)
                .map(|i| data[i].clone())
                .collect()
        };
        let reducers = ThreadReducer::group(2).unwrap();
        let (cfg_ref, out) = (&cfg, d2.path());
        let summaries: Vec<TrainSummary> = std::thread::scope(|s| {
            let hs: Vec<_> = reducers
                .into_iter()
                .map(|red| {
                    let samples = shard(red.rank());
                    s.spawn(move || {
                        let mut tr = VecSource::new(samples, 2, None).unwrap();
                        let mut va = VecSource::new(synthetic(2, 50), 2, None).unwrap();
                        train_replica(
                            cfg_ref,
                            &Device::Cpu,
                            out,
                            &mut tr,
                            &mut va,
                            &red,
                            &mut |_| {},
                        )
                        .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(summaries[0].metrics.len(), 2);
        assert!(
            summaries[1].metrics.is_empty(),
            "only rank 0 validates and writes"
        );
        assert_eq!(summaries[0].metrics[1].train_samples, 8);
        let load = |p: &Path| {
            candle_core::safetensors::load(p.join("model.safetensors"), &Device::Cpu).unwrap()
        };
        let a = load(single.last_checkpoint.as_ref().unwrap());
        let b = load(summaries[0].last_checkpoint.as_ref().unwrap());
        let mut worst = 0f32;
        for (k, t) in &a {
            let d = crate::testutil::to_vec(&(t - &b[k]).unwrap())
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            worst = worst.max(d);
        }
        assert!(worst < 1e-4, "replicated run differs by {worst}");
        let (l1, l2) = (
            single.metrics[1].train_loss,
            summaries[0].metrics[1].train_loss,
        );
        assert!((l1 - l2).abs() < 1e-4, "loss {l1} vs {l2}");
    }

    /// A reducer that, like NCCL, cannot be interrupted: `abort` does nothing.
    struct Uninterruptible(crate::ddp::ThreadReducer);

    impl GradReducer for Uninterruptible {
        fn world_size(&self) -> usize {
            self.0.world_size()
        }
        fn rank(&self) -> usize {
            self.0.rank()
        }
        fn all_reduce_mean(&self, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
            self.0.all_reduce_mean(grads)
        }
    }

    /// Fails on its `fail_at`-th batch of every epoch (counting from 1; 0 = never).
    struct Failing {
        inner: VecSource,
        fail_at: usize,
        n: usize,
    }

    impl BatchSource for Failing {
        fn start_epoch(&mut self, epoch: usize) -> Result<()> {
            self.n = 0;
            self.inner.start_epoch(epoch)
        }
        fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>> {
            self.n += 1;
            if self.n == self.fail_at {
                return Err(TrainerError::Config {
                    field: "test",
                    detail: "this source breaks here".into(),
                });
            }
            self.inner.next_batch()
        }
    }

    /// Runs two replicas with uninterruptible reduction; (train fail_at, validation fail_at) per
    /// rank. Returns each replica's error, or panics when they do not all stop within a minute.
    fn two_uninterruptible(fail: [(usize, usize); 2]) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = tempfile::tempdir().unwrap().keep();
        for (red, (tf, vf)) in crate::ddp::ThreadReducer::group(2)
            .unwrap()
            .into_iter()
            .zip(fail)
        {
            let (tx, dir) = (tx.clone(), dir.clone());
            std::thread::spawn(move || {
                let red = Uninterruptible(red);
                let mut tr = Failing {
                    inner: VecSource::new(synthetic(6, 0), 2, None).unwrap(),
                    fail_at: tf,
                    n: 0,
                };
                let mut va = Failing {
                    inner: VecSource::new(synthetic(2, 50), 2, None).unwrap(),
                    fail_at: vf,
                    n: 0,
                };
                let r = train_replica(
                    &small_cfg(2),
                    &Device::Cpu,
                    &dir,
                    &mut tr,
                    &mut va,
                    &red,
                    &mut |_| {},
                );
                let _ = tx.send((red.rank(), r.map(|_| ()).map_err(|e| e.to_string())));
            });
        }
        let mut errs = vec![String::new(); 2];
        for _ in 0..2 {
            let (rank, r) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a replica is still waiting for the other: the failure was not shared");
            errs[rank] = r.expect_err("every replica must stop with an error");
        }
        let _ = std::fs::remove_dir_all(&dir);
        errs
    }

    use std::time::Duration;

    #[test]
    fn a_failing_replica_stops_all_without_an_interruptible_reducer() {
        // Rank 1's training source breaks at its second batch.
        let errs = two_uninterruptible([(0, 0), (2, 0)]);
        assert!(errs[1].contains("this source breaks here"), "{errs:?}");
        assert!(
            errs[0].contains("another replica failed in epoch 1, step 2"),
            "{errs:?}"
        );
        // Rank 0 fails validating; rank 1 is already on its way to the next epoch's first step.
        let errs = two_uninterruptible([(0, 1), (0, 0)]);
        assert!(errs[0].contains("this source breaks here"), "{errs:?}");
        assert!(
            errs[1].contains("validating or writing the checkpoint"),
            "{errs:?}"
        );
    }

    #[test]
    fn uneven_replica_sources_fail_instead_of_hanging() {
        use crate::ddp::ThreadReducer;
        let cfg = small_cfg(1);
        let dir = tempfile::tempdir().unwrap();
        let reducers = ThreadReducer::group(2).unwrap();
        let (cfg_ref, out) = (&cfg, dir.path());
        let errs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = reducers
                .into_iter()
                .map(|red| {
                    s.spawn(move || {
                        let n = if red.rank() == 0 { 4 } else { 2 };
                        let mut tr = VecSource::new(synthetic(n, 0), 2, None).unwrap();
                        let mut va = VecSource::new(vec![], 2, None).unwrap();
                        train_replica(
                            cfg_ref,
                            &Device::Cpu,
                            out,
                            &mut tr,
                            &mut va,
                            &red,
                            &mut |_| {},
                        )
                        .unwrap_err()
                        .to_string()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            errs.iter()
                .any(|e| e.contains("out of step") || e.contains("sent")),
            "{errs:?}"
        );
    }

    #[test]
    fn an_empty_training_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = VecSource::new(vec![], 2, None).unwrap();
        let mut va = VecSource::new(vec![], 2, None).unwrap();
        let err = train(&small_cfg(1), dir.path(), &mut tr, &mut va, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("no batch"), "{err}");
    }

    /// A source that yields a NaN image at the given (epoch, step).
    struct NanAt(VecSource, usize, usize, usize, usize);

    impl BatchSource for NanAt {
        fn start_epoch(&mut self, epoch: usize) -> Result<()> {
            self.3 = epoch;
            self.4 = 0;
            self.0.start_epoch(epoch)
        }
        fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>> {
            self.4 += 1;
            let b = self.0.next_batch()?;
            if self.3 + 1 == self.1 && self.4 == self.2 {
                return Ok(b.map(|(x, y)| ((x * f64::NAN).unwrap(), y)));
            }
            Ok(b)
        }
    }

    #[test]
    fn nan_loss_names_epoch_and_step_and_keeps_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = NanAt(
            VecSource::new(synthetic(4, 0), 2, None).unwrap(),
            2,
            2,
            0,
            0,
        );
        let mut va = VecSource::new(synthetic(2, 50), 2, None).unwrap();
        let err = train(&small_cfg(3), dir.path(), &mut tr, &mut va, &mut |_| {}).unwrap_err();
        match &err {
            TrainerError::NonFiniteLoss {
                epoch,
                step,
                last_good,
                ..
            } => {
                assert_eq!((*epoch, *step), (2, 2));
                assert!(last_good.ends_with("epoch-0001"), "{last_good}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("epoch 2, step 2"), "{err}");
        assert!(
            checkpoint::epoch_dir(&checkpoints_dir(dir.path()), 1)
                .join("checkpoint.json")
                .is_file()
        );
        assert_eq!(
            checkpoint::latest(&checkpoints_dir(dir.path()))
                .unwrap()
                .unwrap(),
            checkpoint::epoch_dir(&checkpoints_dir(dir.path()), 1)
        );
    }

    #[test]
    fn wrong_channels_and_mixed_shapes_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = synthetic(2, 0);
        bad[0].0 = bad[0].0.narrow(0, 0, 3).unwrap();
        bad[1].0 = bad[1].0.narrow(0, 0, 3).unwrap();
        let mut tr = VecSource::new(bad, 2, None).unwrap();
        let mut va = VecSource::new(vec![], 2, None).unwrap();
        let err = train(&small_cfg(1), dir.path(), &mut tr, &mut va, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                TrainerError::BadBatch {
                    epoch: 1,
                    step: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("(N, 4, D, H, W)"), "{err}");

        let mut mixed = synthetic(2, 0);
        mixed[1].0 = Tensor::zeros((4, 8, 8, 16), DType::F32, &Device::Cpu).unwrap();
        let mut tr = VecSource::new(mixed, 2, None).unwrap();
        let err = train(&small_cfg(1), dir.path(), &mut tr, &mut va, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("mixed shapes"), "{err}");
    }

    #[test]
    fn resume_with_other_architecture_fails_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = VecSource::new(synthetic(2, 0), 2, None).unwrap();
        let mut va = VecSource::new(vec![], 2, None).unwrap();
        train(&small_cfg(1), dir.path(), &mut tr, &mut va, &mut |_| {}).unwrap();
        let mut other = small_cfg(2);
        other.unet.channels = vec![4, 8, 32];
        let err = train(&other, dir.path(), &mut tr, &mut va, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, TrainerError::CheckpointMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("model.1.submodule"), "{err}");
    }
}
