//! Where training runs and the one entry point that trains there. `gpus:` and `precision:` ask; this
//! build (features `cuda`, `nccl`) and this machine (its GPUs, the cluster SageMaker describes)
//! answer: the CPU, one GPU, or one replica per GPU on every node with NCCL all-reduce.
//! `train_on` opens the Samples on the chosen devices, splits them, and trains, polling a cancel
//! flag before every batch.

use crate::error::{Result, TrainerError};
use crate::train::{BatchSource, TrainConfig, TrainEvent, TrainSummary};
use std::path::Path;

/// `gpus:` of a training step: a count, or every local GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpus {
    All,
    Count(u64),
}

impl Gpus {
    /// From the step's param: a non-negative integer or `all`.
    pub fn from_json(v: &serde_json::Value) -> Result<Gpus> {
        match v {
            serde_json::Value::String(s) if s == "all" => Ok(Gpus::All),
            serde_json::Value::Number(n) if n.as_u64().is_some() => {
                Ok(Gpus::Count(n.as_u64().unwrap_or(0)))
            }
            other => Err(TrainerError::Config {
                field: "gpus",
                detail: format!("must be a non-negative integer or `all`, found {other}"),
            }),
        }
    }
}

/// Where training runs.
#[derive(Debug)]
pub enum Placement {
    Cpu,
    /// One GPU (device 0), one node.
    #[cfg(feature = "cuda")]
    Gpu,
    /// One replica per GPU, `per_node` GPUs on every node of the cluster, NCCL all-reduce.
    #[cfg(feature = "nccl")]
    DataParallel {
        per_node: usize,
        cluster: crate::cluster::Cluster,
    },
}

impl Placement {
    /// What `gpus` and `bf16` ask for, as this build and machine can give it; errors carry the
    /// field (`gpus` or `precision`) and say why.
    #[cfg(not(feature = "cuda"))]
    pub fn resolve(gpus: Gpus, bf16: bool) -> Result<Placement> {
        if let Gpus::Count(n @ 1..) = gpus {
            return Err(TrainerError::Config {
                field: "gpus",
                detail: format!(
                    "{n} asks for GPU training, but this build of wf has no CUDA support; \
                     use `gpus: 0` (CPU) or a CUDA build (cargo build --release --features gpu)"
                ),
            });
        }
        if bf16 {
            return Err(TrainerError::Config {
                field: "precision",
                detail:
                    "bf16 needs CUDA (mixed precision on the GPU); this build trains in fp32 on \
                         CPU: set `precision: fp32`"
                        .into(),
            });
        }
        Ok(Placement::Cpu)
    }

    /// What `gpus` and `bf16` ask for, as this build and machine can give it; errors carry the
    /// field (`gpus` or `precision`) and say why.
    #[cfg(feature = "cuda")]
    pub fn resolve(gpus: Gpus, bf16: bool) -> Result<Placement> {
        // `all` on a machine whose driver sees no GPU (cuInit fails) means the CPU; an explicit
        // count there is an error that says why.
        let available = match (crate::gpu::device_count(), gpus) {
            (Ok(n), _) => n,
            (Err(_), Gpus::All | Gpus::Count(0)) => 0,
            (Err(e), Gpus::Count(_)) => return Err(e),
        };
        let n = match gpus {
            Gpus::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Gpus::All => available,
        };
        if n > available {
            return Err(TrainerError::Config {
                field: "gpus",
                detail: format!("{n}, but this machine has {available} CUDA device(s)"),
            });
        }
        if n == 0 {
            if bf16 {
                return Err(TrainerError::Config {
                    field: "precision",
                    detail: "bf16 needs a GPU (gpus >= 1); CPU training is fp32".into(),
                });
            }
            return Ok(Placement::Cpu);
        }
        let cluster = crate::cluster::Cluster::from_env()?;
        let nodes = cluster.as_ref().map_or(1, |c| c.nodes());
        if n == 1 && nodes == 1 {
            return Ok(Placement::Gpu);
        }
        #[cfg(feature = "nccl")]
        {
            Ok(Placement::DataParallel {
                per_node: n,
                cluster: cluster.unwrap_or_else(crate::cluster::Cluster::single),
            })
        }
        #[cfg(not(feature = "nccl"))]
        {
            Err(TrainerError::Config {
                field: "gpus",
                detail: format!(
                    "{n} GPU(s) on {nodes} node(s) need data parallelism, but this build of wf has \
                     no NCCL support (cargo build --release --features gpu)"
                ),
            })
        }
    }

    /// `cpu`, `cuda:0`, or the data-parallel layout (recorded in train.json).
    pub fn describe(&self) -> String {
        match self {
            Placement::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Placement::Gpu => "cuda:0".into(),
            #[cfg(feature = "nccl")]
            Placement::DataParallel { per_node, cluster } => format!(
                "{per_node} GPU(s) x {} node(s), NCCL data parallel",
                cluster.nodes()
            ),
        }
    }
}

/// The Samples a training reads, and how it splits them.
#[derive(Debug, Clone, Copy)]
pub struct SamplesSpec<'a> {
    /// A Samples artifact directory.
    pub dir: &'a Path,
    /// Fraction of cases held out for validation (whole cases).
    pub val_fraction: f64,
    /// Samples per step, over all replicas.
    pub batch_size: usize,
    /// Shuffling and the validation split.
    pub seed: u64,
    /// Validate on whole volumes (`SamplesLoader::whole_volumes`) instead of the split's samples.
    pub whole_volumes: bool,
}

/// How the samples were split, for the caller's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub train_cases: Vec<String>,
    pub val_cases: Vec<String>,
    pub train_samples: usize,
    pub val_samples: usize,
}

/// Trains `cfg` on `placement` into `out_dir`. `on_split` hears how the samples were split before
/// the first epoch; `cancelled` is polled before every batch (an `Interrupted` error then, with
/// the checkpoints of completed epochs kept).
pub fn train_on(
    placement: &Placement,
    cfg: &TrainConfig,
    out_dir: &Path,
    samples: &SamplesSpec<'_>,
    cancelled: &(dyn Fn() -> bool + Sync),
    on_split: &mut dyn FnMut(&Split),
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    let open = |device: &crate::Device, batch: usize| {
        let (train, val) = crate::loader::open_samples(
            samples.dir,
            samples.val_fraction,
            batch,
            samples.seed,
            device,
        )?;
        let val = if samples.whole_volumes {
            val.whole_volumes()?
        } else {
            val
        };
        Ok::<_, TrainerError>((train, val))
    };
    // The split is the same on every device: read it from CPU loaders (cheap: maps and an index).
    let (mut train_src, mut val_src) = open(&crate::Device::Cpu, samples.batch_size)?;
    if train_src.is_empty() {
        return Err(TrainerError::Config {
            field: "val_fraction",
            detail: format!(
                "no training samples: every case of the samples went to validation (val_fraction {})",
                samples.val_fraction
            ),
        });
    }
    on_split(&Split {
        train_cases: train_src.cases(),
        val_cases: val_src.cases(),
        train_samples: train_src.len(),
        val_samples: val_src.len(),
    });
    match placement {
        Placement::Cpu => {
            let mut train_src = Cancellable::new(&mut train_src, cancelled);
            crate::train::train(cfg, out_dir, &mut train_src, &mut val_src, on_event)
        }
        #[cfg(feature = "cuda")]
        Placement::Gpu => {
            drop((train_src, val_src));
            let device = crate::gpu::device(0)?;
            let (train_src, mut val_src) = open(&device, samples.batch_size)?;
            let mut train_src = Cancellable::new(train_src, cancelled);
            crate::train::train_replica(
                cfg,
                &device,
                out_dir,
                &mut train_src,
                &mut val_src,
                &crate::ddp::SingleProcess,
                on_event,
            )
        }
        #[cfg(feature = "nccl")]
        Placement::DataParallel { per_node, cluster } => {
            drop((train_src, val_src));
            let world = per_node * cluster.nodes();
            if !samples.batch_size.is_multiple_of(world) {
                return Err(TrainerError::Config {
                    field: "batch_size",
                    detail: format!(
                        "batch_size {} (over all replicas) is not a multiple of the {world} replicas",
                        samples.batch_size
                    ),
                });
            }
            let per_replica = samples.batch_size / world;
            crate::gpu::train_data_parallel(
                cfg,
                out_dir,
                *per_node,
                cluster,
                |device, rank, world| {
                    let (tr, va) = open(device, per_replica)?;
                    Ok((
                        Box::new(Cancellable::new(tr.shard(rank, world)?, cancelled)),
                        Box::new(va),
                    ))
                },
                on_event,
            )
        }
    }
}

/// Stops training at the next batch once `cancelled` says so (Ctrl-C); the checkpoints of
/// completed epochs stay for the next run to resume from.
struct Cancellable<'a, S: BatchSource> {
    inner: S,
    cancelled: &'a (dyn Fn() -> bool + Sync),
    epoch: usize,
}

impl<'a, S: BatchSource> Cancellable<'a, S> {
    fn new(inner: S, cancelled: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Cancellable {
            inner,
            cancelled,
            epoch: 0,
        }
    }
}

impl<S: BatchSource> BatchSource for Cancellable<'_, S> {
    fn start_epoch(&mut self, epoch: usize) -> Result<()> {
        self.epoch = epoch;
        self.inner.start_epoch(epoch)
    }
    fn next_batch(&mut self) -> Result<Option<(crate::Tensor, crate::Tensor)>> {
        if (self.cancelled)() {
            return Err(TrainerError::Interrupted {
                epoch: self.epoch + 1,
            });
        }
        self.inner.next_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_accepts_counts_and_all() {
        assert_eq!(
            Gpus::from_json(&serde_json::json!("all")).unwrap(),
            Gpus::All
        );
        assert_eq!(
            Gpus::from_json(&serde_json::json!(2)).unwrap(),
            Gpus::Count(2)
        );
        for bad in [serde_json::json!(-1), serde_json::json!("two")] {
            match Gpus::from_json(&bad) {
                Err(TrainerError::Config { field, .. }) => assert_eq!(field, "gpus"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_gpus_and_bf16_naming_the_field() {
        assert!(matches!(
            Placement::resolve(Gpus::All, false),
            Ok(Placement::Cpu)
        ));
        assert!(matches!(
            Placement::resolve(Gpus::Count(0), false),
            Ok(Placement::Cpu)
        ));
        for (gpus, bf16, want) in [
            (Gpus::Count(1), false, "gpus"),
            (Gpus::All, true, "precision"),
        ] {
            match Placement::resolve(gpus, bf16) {
                Err(TrainerError::Config { field, .. }) => assert_eq!(field, want),
                other => panic!("{other:?}"),
            }
        }
    }
}
