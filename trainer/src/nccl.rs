//! Gradient all-reduce between replicas on GPUs with NCCL (feature `nccl`), one replica per GPU.
//!
//! Each replica owns one `Comm` on its device's stream, so the all-reduce is ordered with the
//! backward pass that produced the gradients and the update that consumes them. A step's
//! gradients (plus the loss and the control record, see `train`) are flattened into one buffer
//! and averaged with a single `ncclAllReduce(ncclAvg)`.

use crate::cluster::ID_BYTES;
use crate::ddp::GradReducer;
use crate::error::{Result, TrainerError};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::ffi::c_char;

fn err(detail: impl Into<String>) -> TrainerError {
    TrainerError::Ddp {
        detail: detail.into(),
    }
}

/// A fresh communicator id (`ncclGetUniqueId`), made once on node 0 and shared with every replica.
pub fn new_id() -> Result<[u8; ID_BYTES]> {
    let id = Id::new().map_err(|e| err(format!("ncclGetUniqueId failed: {e:?}")))?;
    let mut out = [0u8; ID_BYTES];
    for (o, c) in out.iter_mut().zip(id.internal()) {
        *o = *c as u8;
    }
    Ok(out)
}

/// One replica's membership of the NCCL communicator.
pub struct NcclReducer {
    comm: Comm,
}

impl NcclReducer {
    /// Joins the communicator as `rank` of `world` on `device`; returns once every rank joined.
    pub fn new(device: &Device, rank: usize, world: usize, id: &[u8; ID_BYTES]) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(err(format!(
                "NCCL needs a CUDA device, replica {rank} has {:?}",
                device.location()
            )));
        };
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| err(format!("replica {rank}: binding its GPU: {e:?}")))?;
        let mut internal = [0 as c_char; ID_BYTES];
        for (i, b) in internal.iter_mut().zip(id) {
            *i = *b as c_char;
        }
        let comm = Comm::from_rank(stream, rank, world, Id::uninit(internal)).map_err(|e| {
            err(format!(
                "replica {rank} of {world}: ncclCommInitRank: {e:?}"
            ))
        })?;
        Ok(NcclReducer { comm })
    }
}

impl Drop for NcclReducer {
    fn drop(&mut self) {
        // Dropping the communicator aborts it: let queued collectives finish first.
        let _ = self.comm.stream().synchronize();
    }
}

struct AllReduceAvg<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduceAvg<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-avg"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(err("NCCL all-reduce of a CPU tensor").into_candle())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| err("all-reduce of a non-contiguous buffer").into_candle())?;
        if s.dtype() != DType::F32 {
            return Err(err(format!("all-reduce of {:?}, expected f32", s.dtype())).into_candle());
        }
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        // SAFETY: the all-reduce writes every element of `dst`.
        let mut dst = unsafe { s.device.alloc::<f32>(b - a)? };
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Avg)
            .map_err(|e| err(format!("ncclAllReduce: {e:?}")).into_candle())?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, s.device.clone()),
            l.shape().clone(),
        ))
    }
}

impl GradReducer for NcclReducer {
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Every replica runs the same model, so the same gradients are present on every replica
    /// (a parameter without gradient has none anywhere); absent ones are left out of the buffer.
    fn all_reduce_mean(&self, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        let flat: Vec<Tensor> = grads
            .iter()
            .flatten()
            .map(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?))
            .collect::<Result<_>>()?;
        if flat.is_empty() {
            return Ok(grads.to_vec());
        }
        let buf = Tensor::cat(&flat, 0)?.contiguous()?;
        let reduced = buf.apply_op1_no_bwd(&AllReduceAvg { comm: &self.comm })?;
        let mut out = Vec::with_capacity(grads.len());
        let mut off = 0;
        for g in grads {
            out.push(match g {
                None => None,
                Some(t) => {
                    let n = t.elem_count();
                    let r = reduced.narrow(0, off, n)?.reshape(t.dims())?;
                    off += n;
                    Some(r)
                }
            });
        }
        Ok(out)
    }
}
