//! Training on CUDA GPUs (feature `cuda`): device discovery and, with `nccl`, data-parallel
//! training with one replica per local GPU, on one node or many.

use crate::error::{Result, TrainerError};
use candle_core::Device;

/// CUDA devices visible to this process; an error when the driver cannot be initialized (no GPU,
/// no driver), which callers asking for "all" GPUs may take as none.
pub fn device_count() -> Result<usize> {
    match candle_core::cuda_backend::cudarc::driver::CudaContext::device_count() {
        Ok(n) => Ok(n.max(0) as usize),
        Err(e) => Err(TrainerError::Config {
            field: "gpus",
            detail: format!("cannot query CUDA devices: {e:?}"),
        }),
    }
}

/// The CUDA device `ordinal`, with a clear error when it does not exist.
pub fn device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| TrainerError::Config {
        field: "gpus",
        detail: format!("cannot open CUDA device {ordinal}: {e}"),
    })
}

#[cfg(feature = "nccl")]
pub use parallel::train_data_parallel;

#[cfg(feature = "nccl")]
mod parallel {
    use super::device;
    use crate::cluster::{self, Cluster};
    use crate::error::{Result, TrainerError};
    use crate::nccl::{NcclReducer, new_id};
    use crate::train::{BatchSource, TrainConfig, TrainEvent, TrainSummary, train_replica};
    use candle_core::Device;
    use std::path::Path;
    use std::time::Duration;

    /// How long nodes wait for each other at the start (instances of a job boot at different times).
    const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(600);

    type Sources<'a> = (Box<dyn BatchSource + 'a>, Box<dyn BatchSource + 'a>);

    /// Trains one replica per local GPU (`per_node` of them, GPU i on a thread of its own) on every
    /// node of `cluster`, averaging gradients with NCCL. `sources(device, rank, world)` opens a
    /// replica's batch sources on its device; the training source must be that rank's share (see
    /// `SamplesLoader::shard`). Global rank 0 validates and writes checkpoints and metrics to
    /// `out_dir`; `on_event` hears this node's first replica.
    pub fn train_data_parallel<'a, F>(
        cfg: &TrainConfig,
        out_dir: &Path,
        per_node: usize,
        cluster: &Cluster,
        sources: F,
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<TrainSummary>
    where
        F: Fn(&Device, usize, usize) -> Result<Sources<'a>> + Sync,
    {
        let available = super::device_count()?;
        if per_node == 0 || per_node > available {
            return Err(TrainerError::Config {
                field: "gpus",
                detail: format!(
                    "{per_node} GPU{} asked for, this machine has {available}",
                    if per_node == 1 { "" } else { "s" }
                ),
            });
        }
        let world = per_node * cluster.nodes();
        let id = cluster::exchange_id(cluster, world, RENDEZVOUS_TIMEOUT, new_id)?;

        // Every local replica opens its device and sources first; only when all succeeded do
        // they enter NCCL's init, which would otherwise wait forever for a replica that failed.
        // A replica whose thread could not start, or that panicked opening, counts as failed.
        let gate = crate::ddp::Gate::new(per_node);
        let replica =
            |local: usize, on_event: &mut dyn FnMut(&TrainEvent)| -> Result<TrainSummary> {
                let rank = cluster.rank(local, per_node);
                let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    device(local).and_then(|d| Ok((sources(&d, rank, world)?, d)))
                }))
                .unwrap_or_else(|_| {
                    Err(TrainerError::Ddp {
                        detail: "panicked while opening its device or data".into(),
                    })
                });
                gate.arrive(opened.as_ref().err().map(|e| format!("GPU {local}: {e}")));
                let others = gate.wait();
                let ((mut tr, mut va), dev) = opened?;
                if !others.is_empty() {
                    return Err(TrainerError::Ddp {
                        detail: format!("not started: {}", others.join("; ")),
                    });
                }
                let reducer = NcclReducer::new(&dev, rank, world, &id)?;
                train_replica(cfg, &dev, out_dir, &mut *tr, &mut *va, &reducer, on_event)
            };
        std::thread::scope(|s| {
            let others: Vec<_> = (1..per_node)
                .map(|local| {
                    let replica = &replica;
                    let h = std::thread::Builder::new()
                        .name(format!("wf-gpu-{local}"))
                        .spawn_scoped(s, move || replica(local, &mut |_| {}));
                    if let Err(e) = &h {
                        gate.arrive(Some(format!("GPU {local}: cannot start its thread: {e}")));
                    }
                    h
                })
                .collect();
            let first = replica(0, on_event);
            let mut errors = Vec::new();
            for (i, h) in others.into_iter().enumerate() {
                match h
                    .map_err(|e| e.to_string())
                    .and_then(|h| h.join().map_err(|_| "panicked".to_string()))
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => errors.push(format!("GPU {}: {e}", i + 1)),
                    Err(e) => errors.push(format!("GPU {}: {e}", i + 1)),
                }
            }
            match first {
                Err(e) => Err(e),
                Ok(_) if !errors.is_empty() => Err(TrainerError::Ddp {
                    detail: errors.join("; "),
                }),
                Ok(summary) => Ok(summary),
            }
        })
    }
}
