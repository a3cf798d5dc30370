//! `rand-flip`: MONAI's RandFlipd — with probability `prob`, reverse the given spatial axes (all three
//! when none is given) of image and label; the affine follows so world positions are unchanged.

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::{Case, Drawn, Field, InvalidField, LabelData, check_prob, require_channel_first};
use crate::error::ImagingError;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandFlip {
    /// MONAI's default is 0.1.
    #[serde(default = "default_prob")]
    pub prob: f64,
    /// Spatial axes (0 = X); an integer or a list; absent = all axes (MONAI's `spatial_axis=None`).
    #[serde(default, deserialize_with = "axes")]
    pub axis: Option<Vec<usize>>,
}

fn default_prob() -> f64 {
    0.1
}

fn axes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(usize),
        Many(Vec<usize>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::One(a)) => Some(vec![a]),
        Some(Raw::Many(v)) => Some(v),
    })
}

impl Default for RandFlip {
    fn default() -> Self {
        RandFlip {
            prob: default_prob(),
            axis: None,
        }
    }
}

impl RandFlip {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "rand-flip";
    /// What it does, for the reference.
    pub const DOC: &'static str = "flip image and label (`RandFlipd`)";
    pub const FIELDS: &'static [Field] = &[
        Field::optional(
            "prob",
            "a number in [0, 1]",
            "`0.1`",
            "the chance of a flip (MONAI's default)",
            r#"{"type": "number", "minimum": 0, "maximum": 1, "default": 0.1}"#,
        ),
        Field::optional(
            "axis",
            "an axis (0, 1 or 2) or a list of axes",
            "all axes",
            "the spatial axes to flip (0 = X)",
            r#"{"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2}, {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2}}]}"#,
        ),
    ];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
        check_prob(self.prob)?;
        if let Some(ax) = &self.axis
            && let Some(bad) = ax.iter().find(|a| **a > 2)
        {
            return Err(InvalidField::new(
                "axis",
                format!("axis {bad} is not a spatial axis (0, 1 or 2)"),
            ));
        }
        Ok(())
    }

    pub fn draw(&self, rng: &mut Rng) -> Drawn {
        Drawn::Flip {
            flipped: rng.next_f64() < self.prob,
        }
    }

    fn axes(&self) -> Vec<usize> {
        self.axis.clone().unwrap_or_else(|| vec![0, 1, 2])
    }

    pub fn apply_drawn(&self, mut case: Case, flipped: bool) -> Result<Case, ImagingError> {
        require_channel_first(&mut case, "rand-flip")?;
        if !flipped {
            return Ok(case);
        }
        for a in self.axes() {
            let sp = case.image.spatial();
            let c = case.image.channels();
            flip_axis(&mut case.image.data, c, sp, a);
            if let Some(label) = case.label.as_mut() {
                match &mut label.data {
                    LabelData::Raw(r) => flip_axis(r, 1, label.shape, a),
                    LabelData::Regions(r) => flip_axis(r, 1, label.shape, a),
                }
            }
            // MONAI: affine @ F with F[a][a] = -1, F[a][3] = n - 1.
            let n = sp[a] as f64 - 1.0;
            for i in 0..3 {
                case.affine[i][3] += case.affine[i][a] * n;
                case.affine[i][a] = -case.affine[i][a];
            }
        }
        Ok(case)
    }
}

/// Reverses one spatial axis of a `(C, X, Y, Z)` array in place.
pub fn flip_axis<T>(data: &mut [T], c: usize, sp: [usize; 3], axis: usize) {
    let (outer, n, inner) = match axis {
        0 => (c, sp[0], sp[1] * sp[2]),
        1 => (c * sp[0], sp[1], sp[2]),
        _ => (c * sp[0] * sp[1], sp[2], 1),
    };
    for o in 0..outer {
        let block = &mut data[o * n * inner..(o + 1) * n * inner];
        if inner == 1 {
            block.reverse();
        } else {
            for i in 0..n / 2 {
                let (lo, hi) = block.split_at_mut((n - 1 - i) * inner);
                lo[i * inner..(i + 1) * inner].swap_with_slice(&mut hi[..inner]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_each_axis() {
        let sp = [2, 3, 4];
        let orig: Vec<u32> = (0..24).collect();
        for a in 0..3 {
            let mut d = orig.clone();
            flip_axis(&mut d, 1, sp, a);
            for x in 0..2 {
                for y in 0..3 {
                    for z in 0..4 {
                        let mut p = [x, y, z];
                        p[a] = sp[a] - 1 - p[a];
                        assert_eq!(d[(x * 3 + y) * 4 + z], orig[(p[0] * 3 + p[1]) * 4 + p[2]]);
                    }
                }
            }
        }
    }
}
