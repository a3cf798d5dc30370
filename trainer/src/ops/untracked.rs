//! The fused ops' forward and backward kernels as plain calls that record no graph, for a
//! backward pass written out by hand (`unet::tape`): each takes and returns CPU f32 tensors and
//! leaves candle's autograd out, so no gradient goes through a zero-filled buffer and an add.

use super::fused::{BiasedConv, ChannelSum, Dice, DiceBwd, NormPrelu, NormPreluBwd};
use super::{Conv3dConfig, ConvTranspose3dConfig, Prim};
use candle_core::{Result, Tensor};

/// A convolution of the network: forward or transposed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Conv<'a> {
    Fwd(&'a Conv3dConfig),
    Transposed(&'a ConvTranspose3dConfig),
}

fn prim(x: &Tensor, w: &Tensor, c: Conv) -> Result<Prim> {
    match c {
        Conv::Fwd(cfg) => super::conv3d_prim(x, w, cfg),
        Conv::Transposed(cfg) => super::conv_transpose3d_prim(x, w, cfg),
    }
}

/// The convolution of `x` with `w`, plus `b` per output channel when given.
pub(crate) fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: Conv) -> Result<Tensor> {
    let p = prim(x, w, c)?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &BiasedConv(p)),
        None => x.apply_op2_no_bwd(&w, &p),
    }
}

/// Gradients of `conv(x, w, b, c)` for the output gradient `dy`: the input's (when `need_dx`),
/// the weight's, and the bias's (when `bias`).
pub(crate) fn conv_grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    c: Conv,
    need_dx: bool,
    bias: bool,
) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
    let p = prim(x, w, c)?;
    let dy = dy.contiguous()?;
    let (dx, dw) = p.grads(x, w, &dy, (need_dx, true), |a, b, q| {
        a.apply_op2_no_bwd(b, &q)
    })?;
    let dw = dw.expect("asked for");
    let db = bias.then(|| dy.apply_op1_no_bwd(&ChannelSum)).transpose()?;
    Ok((dx, dw, db))
}

/// `prelu(instance_norm(x, eps), a)` (`a` flattened: one slope or one per channel).
pub(crate) fn norm_prelu(x: &Tensor, a: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&a.flatten_all()?.contiguous()?, &NormPrelu { eps })
}

/// Gradients of `norm_prelu(x, a, eps)` in `x` and in `a` for the output gradient `dy`.
pub(crate) fn norm_prelu_grads(
    x: &Tensor,
    a: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let out = x.apply_op3_no_bwd(
        &a.flatten_all()?.contiguous()?,
        &dy.contiguous()?,
        &NormPreluBwd { eps },
    )?;
    NormPreluBwd::split(&x, a, &out)
}

/// MONAI's Dice loss from logits and an f32 target of the same shape, and the gradient of the
/// loss in the logits.
pub(crate) fn dice_and_grad(
    logits: &Tensor,
    target: &Tensor,
    loss: &crate::loss::DiceLoss,
) -> Result<(Tensor, Tensor)> {
    let op = Dice::new(logits, loss)?;
    let (x, t) = (logits.contiguous()?, target.contiguous()?);
    let value = x.apply_op2_no_bwd(&t, &op)?;
    let one = Tensor::ones((), candle_core::DType::F32, x.device())?;
    let grad = x.apply_op3_no_bwd(&t, &one, &DiceBwd(op))?;
    Ok((value, grad))
}
