//! The learning-rate schedule: the Adam learning rate of each epoch, a pure function of the epoch.
//!
//! With `epochs` E, `warmup_epochs` W and the configured rate `lr`, epoch e (0-based) trains with
//! - warm-up, e < W: `lr · (e + 1) / (W + 1)` (from `lr / (W + 1)` up, reaching `lr` at epoch W);
//! - then `constant`: `lr`;
//! - or `cosine`: `torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max = E − W)` with
//!   `eta_min = 0`, stepped once per epoch from epoch W (MONAI's BraTS tutorial, with W = 0):
//!   `lr_k = lr · (1 + cos(π·k / T_max)) / 2` for k = e − W. The value is computed with PyTorch's
//!   own recurrence, `lr_k = (1 + cos(π·k/T)) / (1 + cos(π·(k−1)/T)) · lr_{k−1}` from `lr_0 = lr`,
//!   in the same f64 operations, so it is PyTorch's number, not just the same formula.
//!
//! Being a function of the epoch, the schedule needs no state in a checkpoint: a resumed run
//! recomputes the rate from the epoch the checkpoint records.
use crate::error::{Result, TrainerError};

/// What follows the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The configured rate for every epoch.
    #[default]
    Constant,
    /// Cosine annealing to 0 over the epochs after the warm-up.
    Cosine,
}

impl ScheduleKind {
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Cosine => "cosine",
        }
    }
}

/// The schedule of a training; the default (constant, no warm-up) trains every epoch at `lr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Epochs of linear warm-up before `kind` applies.
    #[serde(default)]
    pub warmup_epochs: usize,
}

impl LrSchedule {
    /// The warm-up must leave at least one epoch to the schedule proper.
    pub fn validate(&self, epochs: usize) -> Result<()> {
        if self.warmup_epochs > 0 && self.warmup_epochs >= epochs {
            return Err(TrainerError::Config {
                field: "warmup_epochs",
                detail: format!(
                    "must be less than `epochs` ({epochs}), found {}",
                    self.warmup_epochs
                ),
            });
        }
        Ok(())
    }

    /// For the model card: `constant`, `cosine annealing after 2 warm-up epochs`, ...
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Cosine => "cosine annealing to 0 (CosineAnnealingLR per epoch)",
        };
        match self.warmup_epochs {
            0 => kind.to_string(),
            w => format!("{kind} after {w} linear warm-up epochs"),
        }
    }

    /// The learning rate of epoch `epoch` (0-based) of `epochs`, from the configured rate `lr`.
    pub fn lr(&self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        let w = self.warmup_epochs;
        if epoch < w {
            return lr * (epoch + 1) as f64 / (w + 1) as f64;
        }
        match self.kind {
            ScheduleKind::Constant => lr,
            ScheduleKind::Cosine => {
                let t_max = epochs.saturating_sub(w).max(1) as f64;
                let pi = std::f64::consts::PI;
                // torch.optim.lr_scheduler.CosineAnnealingLR.get_lr, eta_min = 0, as written there.
                let mut cur = lr;
                for k in 1..=(epoch - w) {
                    let k = k as f64;
                    cur = (1.0 + (pi * k / t_max).cos()) / (1.0 + (pi * (k - 1.0) / t_max).cos())
                        * (cur - 0.0)
                        + 0.0;
                }
                cur
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(s: LrSchedule, lr: f64, epochs: usize) -> Vec<f64> {
        (0..epochs).map(|e| s.lr(lr, e, epochs)).collect()
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-12 * w.abs(), "{got:?} vs {want:?}");
        }
    }

    /// CosineAnnealingLR(T_max=4) from lr 1e-3 by hand: 1e-3 · (1 + cos(πe/4)) / 2.
    #[test]
    fn cosine_matches_torch_cosine_annealing() {
        let s = LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 0,
        };
        close(
            &lrs(s, 1e-3, 4),
            &[
                1e-3,
                8.535_533_905_932_737e-4,
                5e-4,
                1.464_466_094_067_262_4e-4,
            ],
        );
    }

    #[test]
    fn warmup_then_cosine_over_the_remaining_epochs() {
        let s = LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 2,
        };
        close(
            &lrs(s, 1e-3, 6),
            &[
                1e-3 / 3.0,
                2e-3 / 3.0,
                1e-3,
                8.535_533_905_932_737e-4,
                5e-4,
                1.464_466_094_067_262_4e-4,
            ],
        );
        let c = LrSchedule {
            kind: ScheduleKind::Constant,
            warmup_epochs: 1,
        };
        close(&lrs(c, 1e-3, 3), &[5e-4, 1e-3, 1e-3]);
        close(&lrs(LrSchedule::default(), 1e-3, 3), &[1e-3; 3]);
    }

    #[test]
    fn warmup_must_leave_an_epoch() {
        let s = |w| LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: w,
        };
        assert!(s(0).validate(1).is_ok() && s(2).validate(3).is_ok());
        let Err(TrainerError::Config { field, detail }) = s(3).validate(3) else {
            panic!("warm-up of every epoch accepted");
        };
        assert_eq!(field, "warmup_epochs");
        assert!(
            detail.contains("less than `epochs` (3), found 3"),
            "{detail}"
        );
    }

    /// Records written before the schedule read as the constant rate.
    #[test]
    fn reads_names_and_defaults() {
        let s: LrSchedule = serde_json::from_str(r#"{"kind":"cosine"}"#).unwrap();
        assert_eq!((s.kind, s.warmup_epochs), (ScheduleKind::Cosine, 0));
        assert_eq!(s.kind.name(), "cosine");
    }
}
