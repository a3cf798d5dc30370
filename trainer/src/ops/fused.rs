//! Fused training ops on CPU: each is one candle op, so a block of the UNet costs one forward
//! pass and one gradient per op instead of a chain of elementwise ops, each of which candle's
//! backward pass pays for with a zero-filled gradient buffer and an add.
//!
//! - `conv3d_bias` / `conv_transpose3d_bias`: the convolution and its per-channel bias; the bias
//!   gradient is a per-channel sum of the output gradient.
//! - `instance_norm_prelu`: instance normalization (no affine, biased variance) and PReLU; the
//!   forward pass reads the input twice (statistics, output), the backward pass three times and
//!   returns the input and slope gradients from one kernel. No statistics are saved.
//! - `dice_loss_sigmoid`: MONAI's `DiceLoss(sigmoid=True)` (batch=False, mean reduction) from
//!   logits to the scalar loss, and its gradient in one pass.
//!
//! Each has a composite twin from candle's own ops, which is the path on a GPU and under
//! `fused: off`; the tests hold the two to each other.

use super::act::{check_slopes, data, slope};
use super::{Conv3dConfig, ConvTranspose3dConfig, Prim, profile};
use crate::error::TrainerError;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

fn on_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

fn check_bias(op: &'static str, b: &Tensor, channels: usize) -> Result<()> {
    if b.dims() != [channels] {
        return Err(TrainerError::shape(
            op,
            format!(
                "bias has shape {:?}, the output has {channels} channels",
                b.dims()
            ),
        )
        .into_candle());
    }
    Ok(())
}

/// `conv3d(x, w) + b` with `b` of one value per output channel.
pub fn conv3d_bias(x: &Tensor, w: &Tensor, b: &Tensor, cfg: &Conv3dConfig) -> Result<Tensor> {
    let prim = super::conv3d_prim(x, w, cfg)?;
    check_bias("conv3d", b, w.dim(0)?)?;
    biased(x, w, b, prim, || super::conv3d(x, w, cfg))
}

/// `conv_transpose3d(x, w) + b` with `b` of one value per output channel.
pub fn conv_transpose3d_bias(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    let prim = super::conv_transpose3d_prim(x, w, cfg)?;
    check_bias("conv_transpose3d", b, w.dim(1)?)?;
    biased(x, w, b, prim, || super::conv_transpose3d(x, w, cfg))
}

fn biased(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    prim: Prim,
    unfused: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    if on_cpu_f32(&[x, w, b]) {
        return x
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, BiasedConv(prim));
    }
    let b = b.to_dtype(DType::F32)?;
    let y = unfused()?.to_dtype(DType::F32)?;
    y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1, 1))?)
}

pub(super) struct BiasedConv(pub(super) Prim);

impl CustomOp3 for BiasedConv {
    fn name(&self) -> &'static str {
        "conv3d-bias"
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
        let (mut y, shape) = self.0.cpu_run(s1, l1, s2, l2)?;
        let b = data(self.name(), s3, l3)?;
        let block: usize = shape[2..].iter().product();
        if block > 0 {
            y.par_chunks_mut(block).enumerate().for_each(|(i, r)| {
                let v = b[i % b.len()];
                r.iter_mut().for_each(|y| *y += v);
            });
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (gx, gw) = CustomOp2::bwd(&self.0, x, w, res, &grad)?;
        let gb = grad.apply_op1_no_bwd(&ChannelSum)?;
        Ok((gx, gw, Some(gb)))
    }
}

/// (N, C, spatial...) -> (C): the sum over everything but the channel axis, in f64.
pub(super) struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = profile::scope(|| format!("{} {:?}", self.name(), l.dims()));
        let v = data(self.name(), s, l)?;
        let c = l.dims()[1];
        let block = l.dims()[2..].iter().product::<usize>().max(1);
        let per: Vec<f64> = v
            .par_chunks(block)
            .map(|r| lane_sums(r, r, |v, _| [v, 0.0, 0.0])[0])
            .collect();
        let mut out = vec![0f64; c];
        for (i, s) in per.into_iter().enumerate() {
            out[i % c] += s;
        }
        Ok((
            CpuStorage::F32(out.into_iter().map(|v| v as f32).collect()),
            Shape::from(c),
        ))
    }
}

/// Sums of three quantities of element pairs `f(a[i], b[i])`: f32 partial sums in 8 lanes per
/// quantity (separate accumulators, so the loop vectorizes) over blocks of 1024 elements, each
/// block's totals added in f64.
#[inline(always)]
fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; 3]) -> [f64; 3] {
    const BLOCK: usize = 1024;
    debug_assert_eq!(a.len(), b.len());
    let mut total = [0f64; 3];
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut s0, mut s1, mut s2) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let (ac, bc) = (ab.chunks_exact(8), bb.chunks_exact(8));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x8, y8) in ac.zip(bc) {
            let (x8, y8): (&[f32; 8], &[f32; 8]) = (
                x8.try_into().expect("chunks of 8"),
                y8.try_into().expect("chunks of 8"),
            );
            for l in 0..8 {
                let [v0, v1, v2] = f(x8[l], y8[l]);
                s0[l] += v0;
                s1[l] += v1;
                s2[l] += v2;
            }
        }
        let lanes = |s: [f32; 8]| s.iter().map(|&v| v as f64).sum::<f64>();
        total[0] += lanes(s0);
        total[1] += lanes(s1);
        total[2] += lanes(s2);
        for (&x, &y) in ar.iter().zip(br) {
            let v = f(x, y);
            for k in 0..3 {
                total[k] += v[k] as f64;
            }
        }
    }
    total
}

/// For one row of the norm + PReLU backward pass, with n = (x - m) * rstd and g = dL/dn
/// through PReLU (the negative branch at exactly zero, as torch): the sums of g, g * n and, for
/// the slope, dy * min(0, n). Written as separate 8-wide maps per block so that they vectorize.
fn prelu_grad_sums(x: &[f32], dy: &[f32], m: f32, rstd: f32, s: f32) -> [f64; 3] {
    let mut total = [0f64; 3];
    for (xb, db) in x.chunks(1024).zip(dy.chunks(1024)) {
        let (mut sg, mut sgn, mut sa) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let (xc, dc) = (xb.chunks_exact(8), db.chunks_exact(8));
        let (xr, dr) = (xc.remainder(), dc.remainder());
        for (x8, d8) in xc.zip(dc) {
            let (x8, d8): (&[f32; 8], &[f32; 8]) = (
                x8.try_into().expect("chunks of 8"),
                d8.try_into().expect("chunks of 8"),
            );
            // Branch-free selects: the sign of n is random, so a branch mispredicts half the time.
            let n: [f32; 8] = std::array::from_fn(|l| (x8[l] - m) * rstd);
            let pos: [f32; 8] = std::array::from_fn(|l| (n[l] > 0.0) as u8 as f32);
            let f: [f32; 8] = std::array::from_fn(|l| pos[l] + (1.0 - pos[l]) * s);
            let neg: [f32; 8] = std::array::from_fn(|l| n[l] - n[l] * pos[l]);
            for l in 0..8 {
                let g = d8[l] * f[l];
                sg[l] += g;
                sgn[l] += g * n[l];
                sa[l] += d8[l] * neg[l];
            }
        }
        let lanes = |v: [f32; 8]| v.iter().map(|&v| v as f64).sum::<f64>();
        total[0] += lanes(sg);
        total[1] += lanes(sgn);
        total[2] += lanes(sa);
        for (&x, &d) in xr.iter().zip(dr) {
            let n = (x - m) * rstd;
            let g = if n > 0.0 { d } else { d * s };
            total[0] += g as f64;
            total[1] += (g * n) as f64;
            total[2] += if n > 0.0 { 0.0 } else { (d * n) as f64 };
        }
    }
    total
}

/// Sum and sum of squares.
fn sums(x: &[f32]) -> (f64, f64) {
    let [s, q, _] = lane_sums(x, x, |v, _| [v, v * v, 0.0]);
    (s, q)
}

/// Mean and 1 / sqrt(biased variance + eps) of one row.
fn moments(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let (s, q) = sums(x);
    let mean = s / n;
    let var = (q / n - mean * mean).max(0.0);
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

fn check_norm_prelu(x: &Tensor, a: &Tensor) -> Result<()> {
    const OP: &str = "instance_norm_prelu";
    if x.rank() < 3 {
        return Err(TrainerError::shape(
            OP,
            format!("expects (N, C, spatial...), got {:?}", x.dims()),
        )
        .into_candle());
    }
    check_slopes(OP, "slope", x, a)
}

/// `prelu(instance_norm(x, eps), a)`: `a` of one element or one per channel.
pub fn instance_norm_prelu(x: &Tensor, a: &Tensor, eps: f64) -> Result<Tensor> {
    check_norm_prelu(x, a)?;
    if !on_cpu_f32(&[x, a]) {
        return super::prelu(&super::instance_norm(x, eps)?, a);
    }
    x.contiguous()?
        .apply_op2(&a.flatten_all()?.contiguous()?, NormPrelu { eps })
}

#[derive(Clone, Copy)]
pub(super) struct NormPrelu {
    pub(super) eps: f64,
}

impl CustomOp2 for NormPrelu {
    fn name(&self) -> &'static str {
        "instance_norm_prelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, a) = (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?);
        let c = l1.dims()[1];
        let row = l1.dims()[2..].iter().product::<usize>().max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(row)
            .zip(x.par_chunks(row))
            .enumerate()
            .for_each(|(i, (yr, xr))| {
                let (m, rstd) = moments(xr, self.eps);
                let s = slope(a, i, c);
                for (yv, &xv) in yr.iter_mut().zip(xr) {
                    let n = (xv - m) * rstd;
                    *yv = if n < 0.0 { n * s } else { n };
                }
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
        let out = x.apply_op3_no_bwd(a, &grad.contiguous()?, &NormPreluBwd { eps: self.eps })?;
        let (gx, ga) = NormPreluBwd::split(x, a, &out)?;
        Ok((Some(gx), Some(ga)))
    }
}

/// Returns one flat buffer: the input gradient, then each row's share of the slope gradient.
pub(super) struct NormPreluBwd {
    pub(super) eps: f64,
}

impl NormPreluBwd {
    /// The input gradient and the slope gradient (shaped as `a`) from this op's flat output.
    pub(super) fn split(x: &Tensor, a: &Tensor, out: &Tensor) -> Result<(Tensor, Tensor)> {
        let numel = x.elem_count();
        let (n, c) = (x.dim(0)?, x.dim(1)?);
        let gx = out.narrow(0, 0, numel)?.reshape(x.dims())?;
        let per_row = out.narrow(0, numel, n * c)?.reshape((n, c))?;
        let ga = if a.elem_count() == 1 {
            per_row.sum_all()?
        } else {
            per_row.sum(0)?
        };
        Ok((gx, ga.reshape(a.dims())?))
    }
}

impl CustomOp3 for NormPreluBwd {
    fn name(&self) -> &'static str {
        "instance_norm_prelu-backward"
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
        let _t = profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, a, dy) = (
            data(self.name(), s1, l1)?,
            data(self.name(), s2, l2)?,
            data(self.name(), s3, l3)?,
        );
        if l1.dims() != l3.dims() {
            return Err(TrainerError::shape(
                self.name(),
                format!("gradient {:?} vs input {:?}", l3.dims(), l1.dims()),
            )
            .into_candle());
        }
        let c = l1.dims()[1];
        let row = l1.dims()[2..].iter().product::<usize>().max(1);
        let rows = x.len() / row;
        let mut out = vec![0f32; x.len() + rows];
        let (dx, da) = out.split_at_mut(x.len());
        dx.par_chunks_mut(row)
            .zip(x.par_chunks(row).zip(dy.par_chunks(row)))
            .zip(da.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((gr, (xr, dyr)), da))| {
                let (m, rstd) = moments(xr, self.eps);
                let s = slope(a, i, c);
                // g = dL/dn (through PReLU: the negative branch at exactly zero, as torch);
                // sums of g, g * n and, for the slope, dy * min(0, n).
                let [sg, sgn, sa] = prelu_grad_sums(xr, dyr, m, rstd, s);
                let len = xr.len() as f64;
                let (mg, mgn) = ((sg / len) as f32, (sgn / len) as f32);
                *da = sa as f32;
                for ((o, &xv), &d) in gr.iter_mut().zip(xr).zip(dyr) {
                    let n = (xv - m) * rstd;
                    let pos = (n > 0.0) as u8 as f32;
                    let f = pos + (1.0 - pos) * s;
                    *o = rstd * (d * f - mg - n * mgn);
                }
            });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The Dice part of `loss`: MONAI's `DiceLoss(sigmoid=True, squared_pred)` with batch=False and mean reduction, from
/// logits (N, C, ...) and a target of the same shape, as one op; `None` where the inputs are
/// not f32 on the CPU (the caller then builds the loss from candle's ops).
pub fn dice_loss_sigmoid(
    logits: &Tensor,
    target: &Tensor,
    loss: &crate::loss::DiceLoss,
) -> Result<Option<Tensor>> {
    if !on_cpu_f32(&[logits, target]) {
        return Ok(None);
    }
    if logits.dims() != target.dims() || logits.rank() < 3 {
        return Err(TrainerError::shape(
            "dice_loss",
            format!(
                "prediction {:?} and target {:?} must have the same (N, C, spatial...) shape",
                logits.dims(),
                target.dims()
            ),
        )
        .into_candle());
    }
    let op = Dice::new(logits, loss)?;
    Ok(Some(
        logits.contiguous()?.apply_op2(&target.contiguous()?, op)?,
    ))
}

#[derive(Clone, Copy)]
pub(super) struct Dice {
    squared_pred: bool,
    smooth_nr: f64,
    smooth_dr: f64,
    rows: usize,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Dice {
    /// The Dice part of `loss` over the (N, C) rows of `logits`.
    pub(super) fn new(logits: &Tensor, loss: &crate::loss::DiceLoss) -> Result<Self> {
        Ok(Dice {
            squared_pred: loss.squared_pred,
            smooth_nr: loss.smooth_nr,
            smooth_dr: loss.smooth_dr,
            rows: logits.dim(0)? * logits.dim(1)?,
        })
    }

    /// Per row: (numerator, denominator) of the Dice quotient.
    fn terms(&self, x: &[f32], t: &[f32]) -> Vec<(f64, f64)> {
        let row = (x.len() / self.rows.max(1)).max(1);
        x.par_chunks(row)
            .zip(t.par_chunks(row))
            .map(|(xr, tr)| {
                let sq = self.squared_pred;
                let [inter, ps, ts] = lane_sums(xr, tr, |x, t| {
                    let p = sigmoid(x);
                    if sq {
                        [p * t, p * p, t * t]
                    } else {
                        [p * t, p, t]
                    }
                });
                (2.0 * inter + self.smooth_nr, ps + ts + self.smooth_dr)
            })
            .collect()
    }
}

impl CustomOp2 for Dice {
    fn name(&self) -> &'static str {
        "dice_loss_sigmoid"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, t) = (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?);
        let terms = self.terms(x, t);
        let loss = terms.iter().map(|(n, d)| 1.0 - n / d).sum::<f64>() / terms.len() as f64;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = x.apply_op3_no_bwd(t, &grad.contiguous()?, &DiceBwd(*self))?;
        // The target is data: no gradient.
        Ok((Some(g), None))
    }
}

/// d loss / d x = -(1/R) (2 t den - num dS/dp) / den^2 * p (1 - p), per element of its row.
pub(super) struct DiceBwd(pub(super) Dice);

impl CustomOp3 for DiceBwd {
    fn name(&self) -> &'static str {
        "dice_loss_sigmoid-backward"
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
        let _t = profile::scope(|| format!("{} {:?}", self.name(), l1.dims()));
        let (x, t, g) = (
            data(self.name(), s1, l1)?,
            data(self.name(), s2, l2)?,
            data(self.name(), s3, l3)?,
        );
        let d = &self.0;
        let up = g.first().copied().unwrap_or(1.0) as f64 / d.rows.max(1) as f64;
        let terms = d.terms(x, t);
        let row = (x.len() / d.rows.max(1)).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(row)
            .zip(x.par_chunks(row).zip(t.par_chunks(row)))
            .zip(terms.par_iter())
            .for_each(|((o, (xr, tr)), &(num, den))| {
                // d(1 - num/den)/dp = -(dnum/dp den - num dden/dp) / den^2
                let a = (-up * 2.0 / den) as f32;
                let b = (up * num / (den * den)) as f32;
                for ((ov, &xv), &tv) in o.iter_mut().zip(xr).zip(tr) {
                    let p = sigmoid(xv);
                    let dden = if d.squared_pred { 2.0 * p } else { 1.0 };
                    *ov = (a * tv + b * dden) * p * (1.0 - p);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
