//! PReLU (torch.nn.PReLU) as one fused op: one pass forward, two backward, instead of five candle ops.

use crate::error::TrainerError;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// max(0, x) + a * min(0, x), `a` of one element (MONAI's default) or one per channel (axis 1).
pub fn prelu(x: &Tensor, a: &Tensor) -> Result<Tensor> {
    const OP: &str = "prelu";
    if x.dtype() != DType::F32 || a.dtype() != DType::F32 || x.rank() < 2 {
        return Err(TrainerError::shape(
            OP,
            format!(
                "expects f32 (N, C, ...) and f32 weight, got {:?} {:?}",
                x.dtype(),
                x.dims()
            ),
        )
        .into_candle());
    }
    check_slopes(OP, "weight", x, a)?;
    if !x.device().is_cpu() {
        return prelu_composite(x, a);
    }
    x.contiguous()?
        .apply_op2(&a.flatten_all()?.contiguous()?, PRelu)
}

/// A PReLU slope tensor (`what` names it in the error) holds one value or one per channel of `x`.
pub(super) fn check_slopes(op: &'static str, what: &str, x: &Tensor, a: &Tensor) -> Result<()> {
    let (c, na) = (x.dim(1)?, a.elem_count());
    if na != 1 && na != c {
        return Err(TrainerError::shape(
            op,
            format!("{what} has {na} elements, input has {c} channels"),
        )
        .into_candle());
    }
    Ok(())
}

/// PReLU from candle's own ops (CUDA kernels and gradients): relu(x) + a * (x - relu(x)), the
/// path for tensors on a GPU. The gradient in x is 1 above zero and `a` below, as torch's; at
/// exactly zero candle's relu gradient gives 1 where torch gives `a` (a measure-zero difference).
pub fn prelu_composite(x: &Tensor, a: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[1] = a.elem_count();
    let a = a.to_dtype(x.dtype())?.reshape(shape)?;
    let pos = x.relu()?;
    pos.add(&(x - &pos)?.broadcast_mul(&a)?)
}

/// The contiguous f32 data of a CPU operand.
pub(super) fn data<'a>(op: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(TrainerError::shape(op, "only f32 is supported").into_candle());
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        return Err(TrainerError::shape(op, "operand is not contiguous").into_candle());
    };
    Ok(&v[a..b])
}

/// Elements per channel block and channel count, so slope `a[c]` applies to block `i % channels`.
fn blocks(l: &Layout) -> (usize, usize) {
    let dims = l.dims();
    (dims[2..].iter().product::<usize>().max(1), dims[1])
}

/// The PReLU slope of channel block (or row) `block`: the one slope, or its channel's.
pub(super) fn slope(a: &[f32], block: usize, channels: usize) -> f32 {
    if a.len() == 1 {
        a[0]
    } else {
        a[block % channels]
    }
}

struct PRelu;

impl CustomOp2 for PRelu {
    fn name(&self) -> &'static str {
        "prelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, a) = (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?);
        let (bs, c) = blocks(l1);
        let mut y = x.to_vec();
        y.par_chunks_mut(bs).enumerate().for_each(|(b, r)| {
            let s = slope(a, b, c);
            r.iter_mut().for_each(|v| {
                if *v < 0.0 {
                    *v *= s
                }
            });
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = x.apply_op3_no_bwd(a, &grad, &PReluGradX)?;
        let ga = x.apply_op2_no_bwd(&grad, &PReluGradA { n: a.elem_count() })?;
        Ok((Some(gx), Some(ga)))
    }
}

/// dx = dy where x > 0, a * dy elsewhere.
struct PReluGradX;

impl CustomOp3 for PReluGradX {
    fn name(&self) -> &'static str {
        "prelu-backward-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, a, g) = (
            data(self.name(), s1, l1)?,
            data(self.name(), s2, l2)?,
            data(self.name(), s3, l3)?,
        );
        let (bs, c) = blocks(l1);
        let mut out = g.to_vec();
        out.par_chunks_mut(bs)
            .zip(x.par_chunks(bs))
            .enumerate()
            .for_each(|(b, (o, xr))| {
                let s = slope(a, b, c);
                for (ov, &xv) in o.iter_mut().zip(xr) {
                    // PyTorch takes the negative branch at exactly zero.
                    if xv <= 0.0 {
                        *ov *= s;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// da = sum of dy * min(0, x), over everything (one slope) or per channel.
struct PReluGradA {
    n: usize,
}

impl CustomOp2 for PReluGradA {
    fn name(&self) -> &'static str {
        "prelu-backward-a"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, g) = (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?);
        let (bs, c) = blocks(l1);
        let per_block: Vec<f64> = x
            .par_chunks(bs)
            .zip(g.par_chunks(bs))
            .map(|(xr, gr)| {
                xr.iter()
                    .zip(gr)
                    .filter(|(x, _)| **x < 0.0)
                    .map(|(x, g)| (*x as f64) * (*g as f64))
                    .sum()
            })
            .collect();
        let mut out = vec![0f64; self.n];
        for (b, v) in per_block.iter().enumerate() {
            out[if self.n == 1 { 0 } else { b % c }] += v;
        }
        Ok((
            CpuStorage::F32(out.into_iter().map(|v| v as f32).collect()),
            Shape::from(self.n),
        ))
    }
}

/// Sigmoid as one op whose backward reuses the output; candle-nn's has no CPU fusion either way,
/// but this keeps the loss independent of candle-nn's op set.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        return Err(TrainerError::shape(
            "sigmoid",
            format!("only f32 is supported, got {:?}", x.dtype()),
        )
        .into_candle());
    }
    if !x.device().is_cpu() {
        return candle_nn::ops::sigmoid(x);
    }
    x.contiguous()?.apply_op1(Sigmoid)
}

struct Sigmoid;

impl CustomOp1 for Sigmoid {
    fn name(&self) -> &'static str {
        "sigmoid"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::scope(|| format!("sigmoid {:?}", l.dims()));
        let x = data(self.name(), s, l)?;
        let y: Vec<f32> = x.par_iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // s' = s (1 - s), from the saved output.
        let one_minus = res.affine(-1.0, 1.0)?;
        Ok(Some((grad * res)?.mul(&one_minus)?))
    }
}
