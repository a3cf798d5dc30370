//! `rand-scale-intensity`: MONAI's RandScaleIntensityd — with probability `prob`, x · (1 + f) with
//! f ~ U(factors); computed in float32 like torch's tensor-times-scalar.

use serde::{Deserialize, Serialize};

use super::{Case, Drawn, Field, InvalidField, Range, check_prob};
use crate::error::ImagingError;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandScaleIntensity {
    /// `f` means U(−f, f); `[lo, hi]` means U(lo, hi).
    pub factors: Range,
    #[serde(default = "default_prob")]
    pub prob: f64,
}

fn default_prob() -> f64 {
    0.1
}

impl RandScaleIntensity {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "rand-scale-intensity";
    /// What it does, for the reference.
    pub const DOC: &'static str = "`x · (1 + factor)` (`RandScaleIntensityd`)";
    pub const FIELDS: &'static [Field] = &[
        Field::required(
            "factors",
            "`f` for U(−f, f), or `[lo, hi]`",
            "the range the factor is drawn from",
            r#"{"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}]}"#,
        ),
        Field::optional(
            "prob",
            "a number in [0, 1]",
            "`0.1`",
            "the chance of scaling (MONAI's default)",
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
        let f = rng.uniform(self.factors.lo, self.factors.hi);
        Drawn::ScaleIntensity {
            factor: apply.then_some(f),
        }
    }

    pub fn apply_drawn(&self, mut case: Case, factor: Option<f64>) -> Result<Case, ImagingError> {
        if let Some(f) = factor {
            let s = (1.0 + f) as f32;
            for v in &mut case.image.data {
                *v *= s;
            }
        }
        Ok(case)
    }
}
