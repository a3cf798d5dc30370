//! `rand-shift-intensity`: MONAI's RandShiftIntensityd — with probability `prob`, x + o with
//! o ~ U(offsets) on every voxel (background included), in float32.

use serde::{Deserialize, Serialize};

use super::{Case, Drawn, Field, InvalidField, Range, check_prob};
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
    /// What it does, for the reference.
    pub const DOC: &'static str = "`x + offset` (`RandShiftIntensityd`)";
    pub const FIELDS: &'static [Field] = &[
        Field::required(
            "offsets",
            "`o` for U(−o, o), or `[lo, hi]`",
            "the range the offset is drawn from",
            r#"{"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}]}"#,
        ),
        Field::optional(
            "prob",
            "a number in [0, 1]",
            "`0.1`",
            "the chance of a shift (MONAI's default)",
            r#"{"type": "number", "minimum": 0, "maximum": 1, "default": 0.1}"#,
        ),
    ];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
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
