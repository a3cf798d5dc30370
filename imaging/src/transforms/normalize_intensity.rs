//! `normalize-intensity`: MONAI's NormalizeIntensityd — subtract the mean and divide by the population
//! standard deviation, over the non-zero voxels (`nonzero`) and per channel (`channel_wise`); no
//! epsilon, a zero std divides by 1, zeros stay 0 under `nonzero`.

use serde::{Deserialize, Serialize};

use super::{Case, Field, require_channel_first};
use crate::error::ImagingError;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeIntensity {
    #[serde(default)]
    pub nonzero: bool,
    #[serde(default)]
    pub channel_wise: bool,
}

impl NormalizeIntensity {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "normalize-intensity";
    /// What it does, for the reference.
    pub const DOC: &'static str = "subtract the mean, divide by the std (`NormalizeIntensityd`)";
    pub const FIELDS: &'static [Field] = &[
        Field::optional(
            "nonzero",
            "true or false",
            "`false`",
            "statistics over the non-zero voxels, and only they change",
            r#"{"type": "boolean", "default": false}"#,
        ),
        Field::optional(
            "channel_wise",
            "true or false",
            "`false`",
            "statistics per channel",
            r#"{"type": "boolean", "default": false}"#,
        ),
    ];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn apply(&self, mut case: Case) -> Result<Case, ImagingError> {
        require_channel_first(&mut case, "normalize-intensity")?;
        let vol = case.image.voxels_per_channel();
        if self.channel_wise {
            for ch in case.image.data.chunks_mut(vol.max(1)) {
                self.normalize(ch);
            }
        } else {
            self.normalize(&mut case.image.data);
        }
        Ok(case)
    }

    /// Statistics in float64 (torch accumulates wider than float32 too), applied in float32 with the
    /// float32-rounded mean and std, as MONAI's float32 tensors do.
    fn normalize(&self, x: &mut [f32]) {
        let (mut n, mut sum) = (0usize, 0f64);
        for &v in x.iter() {
            if !self.nonzero || v != 0.0 {
                n += 1;
                sum += v as f64;
            }
        }
        if n == 0 {
            return;
        }
        let mean = sum / n as f64;
        let mut ss = 0f64;
        for &v in x.iter() {
            if !self.nonzero || v != 0.0 {
                let d = v as f64 - mean;
                ss += d * d;
            }
        }
        let mean32 = mean as f32;
        let mut std32 = (ss / n as f64).sqrt() as f32;
        if std32 == 0.0 {
            std32 = 1.0;
        }
        for v in x.iter_mut() {
            if !self.nonzero || *v != 0.0 {
                *v = (*v - mean32) / std32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::{Image, linalg::IDENTITY};

    #[test]
    fn nonzero_channel_wise() {
        let case = Case {
            id: "n".into(),
            image: Image::new([2, 2, 2, 1], vec![0.0, 1.0, 3.0, 0.0, 5.0, 5.0, 5.0, 5.0]),
            label: None,
            affine: IDENTITY,
            channel_first: true,
        };
        let out = NormalizeIntensity {
            nonzero: true,
            channel_wise: true,
        }
        .apply(case)
        .unwrap();
        assert_eq!(
            out.image.data,
            vec![0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
