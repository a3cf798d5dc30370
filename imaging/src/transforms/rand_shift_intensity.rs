//! `rand-shift-intensity`: MONAI's RandShiftIntensityd — with probability `prob`, x + o with
//! o ~ U(offsets) on every voxel (background included), in float32.

use serde::{Deserialize, Serialize};

use super::{Case, Drawn, Range, check_prob};
use crate::error::ImagingError;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandShiftIntensity {
    /// `o` means U(−o, o); `[lo, hi]` means U(lo, hi).
    pub offsets: Range,
    #[serde(default = "default_prob")]
    pub prob: f64,
}

fn default_prob() -> f64 {
    0.1
}

impl RandShiftIntensity {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "rand-shift-intensity";

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn validate(&self) -> Result<(), String> {
        check_prob(self.prob)
    }

    /// Always consumes two draws, so later transforms see the same stream whatever the coin said.
    pub fn draw(&self, rng: &mut Rng) -> Drawn {
        let apply = rng.next_f64() < self.prob;
        let o = rng.uniform(self.offsets.lo, self.offsets.hi);
        Drawn::ShiftIntensity {
            offset: apply.then_some(o),
        }
    }

    pub fn apply_drawn(&self, mut case: Case, offset: Option<f64>) -> Result<Case, ImagingError> {
        if let Some(o) = offset {
            let o = o as f32;
            for v in &mut case.image.data {
                *v += o;
            }
        }
        Ok(case)
    }
}
