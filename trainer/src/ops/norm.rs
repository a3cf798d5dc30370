//! Instance normalization without affine parameters (torch.nn.InstanceNorm3d defaults) as one fused op.
//!
//! Built from candle's elementwise ops it takes about ten passes over the activation forward and
//! more backward; fused, it is two passes each way, and the backward needs no saved statistics.

use crate::error::TrainerError;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// (x - mean) / sqrt(var + eps) over the spatial axes of each (sample, channel); biased variance, like PyTorch.
pub fn instance_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if x.rank() < 3 || (x.dtype() != DType::F32 && x.device().is_cpu()) {
        return Err(TrainerError::shape(
            "instance_norm",
            format!(
                "expects f32 (N, C, spatial...), got {:?} {:?}",
                x.dtype(),
                x.dims()
            ),
        )
        .into_candle());
    }
    if !x.device().is_cpu() {
        return instance_norm_composite(x, eps);
    }
    x.contiguous()?.apply_op1(InstanceNorm { eps })
}

/// The same normalization from candle's own ops (which have CUDA kernels and gradients): the path
/// for tensors on a GPU. Statistics are taken in f32 whatever the input dtype, as autocast does.
pub fn instance_norm_composite(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let dtype = x.dtype();
    let flat = x.to_dtype(DType::F32)?.flatten_from(2)?;
    let mean = flat.mean_keepdim(2)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let y = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    y.reshape(dims)?.to_dtype(dtype)
}

#[derive(Clone, Copy)]
struct InstanceNorm {
    eps: f64,
}

fn rows(op: &'static str, s: &CpuStorage, l: &Layout) -> Result<(Vec<f32>, usize)> {
    let CpuStorage::F32(v) = s else {
        return Err(TrainerError::shape(op, "only f32 is supported").into_candle());
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        return Err(TrainerError::shape(op, "operand is not contiguous").into_candle());
    };
    let row: usize = l.dims()[2..].iter().product();
    Ok((v[a..b].to_vec(), row.max(1)))
}

fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl CustomOp1 for InstanceNorm {
    fn name(&self) -> &'static str {
        "instance_norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::scope(|| format!("instance_norm {:?}", l.dims()));
        let (mut x, row) = rows("instance_norm", s, l)?;
        x.par_chunks_mut(row).for_each(|r| {
            let (m, rstd) = stats(r, self.eps);
            r.iter_mut().for_each(|v| *v = (*v - m) * rstd);
        });
        Ok((CpuStorage::F32(x), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &InstanceNormBwd { eps: self.eps },
        )?))
    }
}

/// dx = rstd * (dy - mean(dy) - y * mean(dy * y)), with y recomputed from x.
struct InstanceNormBwd {
    eps: f64,
}

impl CustomOp2 for InstanceNormBwd {
    fn name(&self) -> &'static str {
        "instance_norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::scope(|| format!("instance_norm-backward {:?}", l1.dims()));
        let (x, row) = rows(self.name(), s1, l1)?;
        let (mut dy, _) = rows(self.name(), s2, l2)?;
        if l1.dims() != l2.dims() {
            return Err(TrainerError::shape(
                self.name(),
                format!("gradient {:?} vs input {:?}", l2.dims(), l1.dims()),
            )
            .into_candle());
        }
        dy.par_chunks_mut(row)
            .zip(x.par_chunks(row))
            .for_each(|(g, xr)| {
                let (m, rstd) = stats(xr, self.eps);
                let n = xr.len() as f64;
                let (mut sg, mut sgy) = (0f64, 0f64);
                for (&gv, &xv) in g.iter().zip(xr) {
                    sg += gv as f64;
                    sgy += gv as f64 * ((xv - m) * rstd) as f64;
                }
                let (mg, mgy) = ((sg / n) as f32, (sgy / n) as f32);
                for (gv, &xv) in g.iter_mut().zip(xr) {
                    let y = (xv - m) * rstd;
                    *gv = rstd * (*gv - mg - y * mgy);
                }
            });
        Ok((CpuStorage::F32(dy), l1.shape().clone()))
    }
}
