//! One training step of the UNet on CPU with its backward pass written out by hand.
//!
//! candle's autograd gives every node's gradient a zero-filled buffer and then adds into it, and
//! runs each op as a separate pass; on the seed's UNet that was about a quarter of a step. Here the
//! forward pass keeps what each layer's backward needs (its input and, before a norm, the
//! convolution's output), and the backward pass walks the same modules in reverse with the
//! fused kernels (`ops::untracked`): a residual unit hands its output gradient to both branches
//! without a copy, a skip connection splits the concatenation's gradient with one copy, and each
//! parameter's gradient is written once. The candle path (`UNet::forward_t` + `backward`) stays
//! the reference: the tests hold the two to each other on MONAI's fixture.

use super::{ConvKind, ConvLayer, Convolution, Down, Level, ResidualUnit, Sub, UNet, Up};
use crate::error::Result;
use crate::loss::DiceLoss;
use crate::ops::untracked::{self as raw, Conv};
use candle_core::{DType, Tensor, TensorId};
use std::collections::HashMap;

const EPS: f64 = 1e-5;

/// Parameter gradients by the parameter tensor's id (a `Var`'s tensor).
pub type Grads = HashMap<TensorId, Tensor>;

fn put(grads: &mut Grads, param: &Tensor, g: Tensor) -> Result<()> {
    match grads.remove(&param.id()) {
        // A parameter used twice (none in MONAI's UNet) sums its gradients.
        Some(prev) => grads.insert(param.id(), (prev + g)?),
        None => grads.insert(param.id(), g),
    };
    Ok(())
}

impl ConvLayer {
    fn spec(&self) -> Conv<'_> {
        match &self.kind {
            ConvKind::Conv(c) => Conv::Fwd(c),
            ConvKind::Transposed(c) => Conv::Transposed(c),
        }
    }

    fn t_fwd(&self, x: &Tensor) -> Result<Tensor> {
        Ok(raw::conv(x, &self.weight, self.bias.as_ref(), self.spec())?)
    }

    fn t_bwd(
        &self,
        x: &Tensor,
        dy: &Tensor,
        need_dx: bool,
        g: &mut Grads,
    ) -> Result<Option<Tensor>> {
        let (dx, dw, db) = raw::conv_grads(
            x,
            &self.weight,
            dy,
            self.spec(),
            need_dx,
            self.bias.is_some(),
        )?;
        put(g, &self.weight, dw)?;
        if let (Some(b), Some(db)) = (&self.bias, db) {
            put(g, b, db)?;
        }
        Ok(dx)
    }
}

/// A `Convolution`'s input and, when it normalizes, its convolution's output.
struct ConvSaved {
    x: Tensor,
    z: Option<Tensor>,
}

impl Convolution {
    fn t_fwd(&self, x: &Tensor) -> Result<(Tensor, ConvSaved)> {
        let z = self.conv.t_fwd(x)?;
        let Some(a) = &self.prelu else {
            return Ok((
                z,
                ConvSaved {
                    x: x.clone(),
                    z: None,
                },
            ));
        };
        let y = raw::norm_prelu(&z, a, EPS)?;
        Ok((
            y,
            ConvSaved {
                x: x.clone(),
                z: Some(z),
            },
        ))
    }

    fn t_bwd(
        &self,
        s: &ConvSaved,
        dy: &Tensor,
        need_dx: bool,
        g: &mut Grads,
    ) -> Result<Option<Tensor>> {
        let dz = match (&self.prelu, &s.z) {
            (Some(a), Some(z)) => {
                let (dz, da) = raw::norm_prelu_grads(z, a, dy, EPS)?;
                put(g, a, da)?;
                dz
            }
            _ => dy.clone(),
        };
        self.conv.t_bwd(&s.x, &dz, need_dx, g)
    }
}

struct RuSaved {
    x: Tensor,
    units: Vec<ConvSaved>,
}

impl ResidualUnit {
    fn t_fwd(&self, x: &Tensor) -> Result<(Tensor, RuSaved)> {
        let mut y = x.clone();
        let mut units = Vec::with_capacity(self.units.len());
        for u in &self.units {
            let (next, s) = u.t_fwd(&y)?;
            units.push(s);
            y = next;
        }
        let y = match &self.residual {
            Some(r) => (y + r.t_fwd(x)?)?,
            None => (y + x)?,
        };
        Ok((
            y,
            RuSaved {
                x: x.clone(),
                units,
            },
        ))
    }

    fn t_bwd(
        &self,
        s: &RuSaved,
        dy: &Tensor,
        need_dx: bool,
        g: &mut Grads,
    ) -> Result<Option<Tensor>> {
        // The sum's gradient goes to both branches as it is.
        let mut d = dy.clone();
        for (i, (u, us)) in self.units.iter().zip(&s.units).enumerate().rev() {
            match u.t_bwd(us, &d, need_dx || i > 0, g)? {
                Some(next) => d = next,
                None => break,
            }
        }
        let through_res = match &self.residual {
            Some(r) => r.t_bwd(&s.x, dy, need_dx, g)?,
            None => Some(dy.clone()),
        };
        if !need_dx {
            return Ok(None);
        }
        Ok(Some(match through_res {
            Some(r) => (d + r)?,
            None => d,
        }))
    }
}

enum DownSaved {
    Residual(RuSaved),
    Plain(ConvSaved),
}

impl Down {
    fn t_fwd(&self, x: &Tensor) -> Result<(Tensor, DownSaved)> {
        Ok(match self {
            Down::Residual(r) => {
                let (y, s) = r.t_fwd(x)?;
                (y, DownSaved::Residual(s))
            }
            Down::Plain(c) => {
                let (y, s) = c.t_fwd(x)?;
                (y, DownSaved::Plain(s))
            }
        })
    }

    fn t_bwd(
        &self,
        s: &DownSaved,
        dy: &Tensor,
        need_dx: bool,
        g: &mut Grads,
    ) -> Result<Option<Tensor>> {
        match (self, s) {
            (Down::Residual(r), DownSaved::Residual(s)) => r.t_bwd(s, dy, need_dx, g),
            (Down::Plain(c), DownSaved::Plain(s)) => c.t_bwd(s, dy, need_dx, g),
            _ => unreachable!("saved state comes from the same module"),
        }
    }
}

struct UpSaved {
    conv: ConvSaved,
    ru: Option<RuSaved>,
}

impl Up {
    fn t_fwd(&self, x: &Tensor) -> Result<(Tensor, UpSaved)> {
        let (y, conv) = self.conv.t_fwd(x)?;
        Ok(match &self.ru {
            Some(r) => {
                let (y, s) = r.t_fwd(&y)?;
                (y, UpSaved { conv, ru: Some(s) })
            }
            None => (y, UpSaved { conv, ru: None }),
        })
    }

    fn t_bwd(&self, s: &UpSaved, dy: &Tensor, g: &mut Grads) -> Result<Tensor> {
        let d = match (&self.ru, &s.ru) {
            (Some(r), Some(rs)) => r.t_bwd(rs, dy, true, g)?.expect("asked for"),
            _ => dy.clone(),
        };
        Ok(self.conv.t_bwd(&s.conv, &d, true, g)?.expect("asked for"))
    }
}

enum SubSaved {
    Level(Box<LevelSaved>),
    Bottom(DownSaved),
}

struct LevelSaved {
    down: DownSaved,
    sub: SubSaved,
    up: UpSaved,
    /// Channels of the down block's output, the first part of the concatenation.
    d_channels: usize,
}

impl Level {
    fn t_fwd(&self, x: &Tensor) -> Result<(Tensor, LevelSaved)> {
        let (d, down) = self.down.t_fwd(x)?;
        let (s, sub) = match &self.sub {
            Sub::Level(l) => {
                let (s, saved) = l.t_fwd(&d)?;
                (s, SubSaved::Level(Box::new(saved)))
            }
            Sub::Bottom(b) => {
                let (s, saved) = b.t_fwd(&d)?;
                (s, SubSaved::Bottom(saved))
            }
        };
        let cat = Tensor::cat(&[&d, &s], 1)?;
        let (y, up) = self.up.t_fwd(&cat)?;
        Ok((
            y,
            LevelSaved {
                down,
                sub,
                up,
                d_channels: d.dim(1)?,
            },
        ))
    }

    fn t_bwd(
        &self,
        s: &LevelSaved,
        dy: &Tensor,
        need_dx: bool,
        g: &mut Grads,
    ) -> Result<Option<Tensor>> {
        let dcat = self.up.t_bwd(&s.up, dy, g)?;
        let (cd, cs) = (s.d_channels, dcat.dim(1)? - s.d_channels);
        let ds = dcat.narrow(1, cd, cs)?.contiguous()?;
        let from_sub = match (&self.sub, &s.sub) {
            (Sub::Level(l), SubSaved::Level(ls)) => l.t_bwd(ls, &ds, true, g)?,
            (Sub::Bottom(b), SubSaved::Bottom(bs)) => b.t_bwd(bs, &ds, true, g)?,
            _ => unreachable!("saved state comes from the same module"),
        }
        .expect("asked for");
        let dd = (dcat.narrow(1, 0, cd)? + from_sub)?;
        self.down.t_bwd(&s.down, &dd, need_dx, g)
    }
}

impl UNet {
    /// Whether [`UNet::loss_and_grads`] runs this step: the fused path, on CPU, in f32, without
    /// dropout in training, and a pure Dice loss. Elsewhere the step goes through candle's
    /// autograd.
    pub fn hand_backward_applies(&self, x: &Tensor, loss: &DiceLoss) -> bool {
        self.fused
            && !self.bf16
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.cfg.dropout == 0.0
            && loss.bce_weight == 0.0
    }

    /// One training-mode forward pass, the Dice loss against `target` (same shape as the logits)
    /// and the gradient of every parameter, by the hand-written backward pass. Returns the loss
    /// (a scalar) and the gradients by parameter id. Only where
    /// [`UNet::hand_backward_applies`].
    pub fn loss_and_grads(
        &self,
        x: &Tensor,
        target: &Tensor,
        loss: &DiceLoss,
    ) -> Result<(Tensor, Grads)> {
        self.check_input(x)?;
        debug_assert!(self.hand_backward_applies(x, loss));
        use crate::ops::profile::scope;
        let t = scope(|| "pass: forward".into());
        let (logits, saved) = self.model.t_fwd(x)?;
        drop(t);
        crate::loss::check_pair("dice_loss", &logits, target)?;
        let t = scope(|| "pass: loss".into());
        let target = target.to_dtype(DType::F32)?;
        let (value, dlogits) = raw::dice_and_grad(&logits, &target, loss)?;
        drop((t, logits));
        let _t = scope(|| "pass: backward".into());
        let mut grads = Grads::new();
        self.model.t_bwd(&saved, &dlogits, false, &mut grads)?;
        Ok((value, grads))
    }
}
