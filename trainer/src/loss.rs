//! MONAI's DiceLoss (sigmoid, optional squared_pred, + optional BCE) and DiceMetric, on (N, C, D, H, W) tensors.

use crate::error::{Result, TrainerError};
use crate::ops;
use candle_core::{DType, Tensor};

/// `monai.losses.DiceLoss(sigmoid=True, squared_pred=.., smooth_nr, smooth_dr)` with reduction "mean"
/// and batch=False (one Dice per sample and channel, then the mean), plus `bce_weight` x
/// `binary_cross_entropy_with_logits` (mean over voxels) when non-zero.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiceLoss {
    pub squared_pred: bool,
    pub smooth_nr: f64,
    pub smooth_dr: f64,
    pub bce_weight: f64,
}

impl Default for DiceLoss {
    /// The training loss of the seed: squared_pred on, MONAI's smoothing defaults, no BCE.
    fn default() -> Self {
        DiceLoss {
            squared_pred: true,
            smooth_nr: 1e-5,
            smooth_dr: 1e-5,
            bce_weight: 0.0,
        }
    }
}

pub(crate) fn check_pair(op: &'static str, logits: &Tensor, target: &Tensor) -> Result<()> {
    if logits.dims() != target.dims() || logits.rank() < 3 {
        return Err(TrainerError::shape(
            op,
            format!(
                "prediction {:?} and target {:?} must have the same (N, C, spatial...) shape",
                logits.dims(),
                target.dims()
            ),
        ));
    }
    Ok(())
}

impl DiceLoss {
    /// Scalar loss from logits and a {0, 1} target of the same shape (any float or u8 dtype),
    /// with the Dice part as one fused op on CPU (`ops::dice_loss_sigmoid`).
    pub fn forward(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        self.forward_with(logits, target, true)
    }

    /// `forward`, with the fused Dice op (`fused`, CPU only) or from candle's own ops.
    pub fn forward_with(&self, logits: &Tensor, target: &Tensor, fused: bool) -> Result<Tensor> {
        check_pair("dice_loss", logits, target)?;
        let (n, c) = (logits.dim(0)?, logits.dim(1)?);
        let target = target.to_dtype(DType::F32)?.reshape((n, c, ()))?;
        let flat = logits.reshape((n, c, ()))?;
        let fast = if fused {
            ops::dice_loss_sigmoid(&flat, &target, self)?
        } else {
            None
        };
        let dice = match fast {
            Some(d) => d,
            None => self.dice_composite(&flat, &target)?,
        };
        if self.bce_weight == 0.0 {
            return Ok(dice);
        }
        let bce = bce_with_logits(&flat, &target)?;
        Ok((dice + (bce * self.bce_weight)?)?)
    }

    fn dice_composite(&self, flat: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = ops::sigmoid(flat)?;
        // MONAI computes tp, fp, fn; with fp and fn halved the quotient reduces to this form.
        let inter = (&p * target)?.sum(2)?;
        let (ps, ts) = if self.squared_pred {
            (p.sqr()?.sum(2)?, target.sqr()?.sum(2)?)
        } else {
            (p.sum(2)?, target.sum(2)?)
        };
        let num = ((inter * 2.0)? + self.smooth_nr)?;
        let den = ((ps + ts)? + self.smooth_dr)?;
        Ok((num / den)?.affine(-1.0, 1.0)?.mean_all()?)
    }
}

/// `F.binary_cross_entropy_with_logits(x, t)` averaged over all elements, in the stable form
/// max(x, 0) - x t + log(1 + exp(-|x|)).
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    check_pair("bce_with_logits", logits, target)?;
    let t = target.to_dtype(DType::F32)?;
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok(((logits.relu()? - (logits * t)?)? + softplus)?.mean_all()?)
}

/// Accumulates MONAI's `DiceMetric(include_background=True)` over validation batches, with the
/// tutorial's post-processing (sigmoid >= 0.5). A sample whose target channel is empty gives NaN
/// (ignore_empty) and is left out of the means, as in MONAI's `do_metric_reduction`.
#[derive(Clone, Debug, Default)]
pub struct DiceMetric {
    /// One row per sample, one Dice (or NaN) per channel.
    rows: Vec<Vec<f32>>,
}

impl DiceMetric {
    pub fn new() -> Self {
        DiceMetric::default()
    }

    /// Adds one batch: logits (N, C, ...) and a {0, 1} target of the same shape.
    pub fn update(&mut self, logits: &Tensor, target: &Tensor) -> Result<()> {
        check_pair("dice_metric", logits, target)?;
        let (n, c) = (logits.dim(0)?, logits.dim(1)?);
        if let Some(first) = self.rows.first()
            && first.len() != c
        {
            return Err(TrainerError::shape(
                "dice_metric",
                format!(
                    "batch has {c} channels, earlier batches had {}",
                    first.len()
                ),
            ));
        }
        // MONAI's AsDiscrete(threshold=0.5) keeps sigmoid(x) >= 0.5: x >= 0 (and, in float32,
        // negative x within about 6e-8 of 0, which this leaves out).
        let pred = logits.ge(0.0)?.to_dtype(DType::F32)?.reshape((n, c, ()))?;
        let t = target
            .to_dtype(DType::F32)?
            .gt(0.5)?
            .to_dtype(DType::F32)?
            .reshape((n, c, ()))?;
        let inter = (&pred * &t)?.sum(2)?.to_vec2::<f32>()?;
        let ps = pred.sum(2)?.to_vec2::<f32>()?;
        let ts = t.sum(2)?.to_vec2::<f32>()?;
        for b in 0..n {
            self.rows.push(
                (0..c)
                    .map(|k| {
                        if ts[b][k] > 0.0 {
                            2.0 * inter[b][k] / (ts[b][k] + ps[b][k])
                        } else {
                            f32::NAN
                        }
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    /// Per-sample, per-channel values (NaN for an empty target), like `reduction="none"`.
    pub fn values(&self) -> &[Vec<f32>] {
        &self.rows
    }

    /// Per channel mean over samples, ignoring NaN (`reduction="mean_batch"`); 0 where all are NaN.
    pub fn per_channel(&self) -> Vec<f32> {
        let c = self.rows.first().map_or(0, |r| r.len());
        (0..c)
            .map(|k| nan_mean(self.rows.iter().map(|r| r[k])).unwrap_or(0.0))
            .collect()
    }

    /// `reduction="mean"`: the mean over channels of each sample (ignoring NaN), then over the
    /// samples that had any non-NaN channel; 0 if none had.
    pub fn mean(&self) -> f32 {
        nan_mean(
            self.rows
                .iter()
                .map(|r| nan_mean(r.iter().copied()).unwrap_or(f32::NAN)),
        )
        .unwrap_or(0.0)
    }

    pub fn reset(&mut self) {
        self.rows.clear();
    }
}

fn nan_mean(v: impl Iterator<Item = f32>) -> Option<f32> {
    let (mut s, mut n) = (0f64, 0usize);
    for x in v.filter(|x| !x.is_nan()) {
        s += x as f64;
        n += 1;
    }
    (n > 0).then(|| (s / n as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture, rel_err, to_vec};
    use candle_core::Var;

    fn scalar(t: &Tensor) -> f32 {
        to_vec(t)[0]
    }

    #[test]
    fn dice_loss_and_gradient_match_monai() {
        let t = fixture("dice.safetensors");
        let logits = Var::from_tensor(&t["logits"]).unwrap();
        let target = &t["target"];
        // The fused op and candle's ops, each against MONAI.
        for fused in [true, false] {
            for (loss, value, grad) in [
                (DiceLoss::default(), "dice_loss", "grad_dice"),
                (
                    DiceLoss {
                        squared_pred: false,
                        ..Default::default()
                    },
                    "dice_loss_plain",
                    "grad_dice_plain",
                ),
            ] {
                let l = loss
                    .forward_with(logits.as_tensor(), target, fused)
                    .unwrap();
                assert!(
                    (scalar(&l) - scalar(&t[value])).abs() < 1e-6,
                    "{value} (fused {fused}): {} vs {}",
                    scalar(&l),
                    scalar(&t[value])
                );
                let g = l.backward().unwrap();
                let e = rel_err(g.get(logits.as_tensor()).unwrap(), &t[grad]);
                assert!(e < 1e-4, "{grad} (fused {fused}): rel err {e}");
            }
        }
        let bce = bce_with_logits(logits.as_tensor(), target).unwrap();
        assert!((scalar(&bce) - scalar(&t["bce"])).abs() < 1e-6);
        let l = DiceLoss {
            bce_weight: 1.0,
            ..Default::default()
        }
        .forward(logits.as_tensor(), target)
        .unwrap();
        let e = rel_err(
            l.backward().unwrap().get(logits.as_tensor()).unwrap(),
            &t["grad_dice_bce"],
        );
        assert!(e < 1e-4, "dice+bce gradient rel err {e}");
    }

    #[test]
    fn dice_metric_matches_monai_including_empty_channels() {
        let t = fixture("dice.safetensors");
        let (logits, target) = (&t["logits"], &t["target"]);
        let mut m = DiceMetric::new();
        m.update(
            &logits.narrow(0, 0, 2).unwrap(),
            &target.narrow(0, 0, 2).unwrap(),
        )
        .unwrap();
        m.update(
            &logits.narrow(0, 2, 1).unwrap(),
            &target.narrow(0, 2, 1).unwrap(),
        )
        .unwrap();
        let none = t["metric_none"].to_vec2::<f32>().unwrap();
        for (got, want) in m.values().iter().flatten().zip(none.iter().flatten()) {
            assert!(
                (got.is_nan() && want.is_nan()) || (got - want).abs() < 1e-6,
                "{got} vs {want}"
            );
        }
        assert!(m.values()[1][2].is_nan());
        let pc = t["metric_per_channel"].to_vec1::<f32>().unwrap();
        for (g, w) in m.per_channel().iter().zip(&pc) {
            assert!((g - w).abs() < 1e-6, "per channel {g} vs {w}");
        }
        assert!((m.mean() - scalar(&t["metric_mean"])).abs() < 1e-6);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let a = Tensor::zeros((1, 3, 4, 4, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        let b = Tensor::zeros((1, 2, 4, 4, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(DiceLoss::default().forward(&a, &b).is_err());
        assert!(DiceMetric::new().update(&a, &b).is_err());
    }
}
