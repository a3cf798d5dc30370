//! `convert-labels`: raw label values → region bits (TC, WT, ET), one byte per voxel.
//!
//! `msd` (default) is MSD Task01's own convention; `brats` is MONAI's
//! ConvertToMultiChannelBasedOnBratsClasses (TC = 1|4, WT = 1|2|4, ET = 4) and rejects other values;
//! `brats-monai` is that class verbatim — values other than 1, 2, 4 silently map to no region — kept
//! only to reproduce the seed pipeline (and the goldens) on MSD data, where it yields an empty ET.

use serde::{Deserialize, Serialize};

use super::{Case, ET, Field, LabelData, TC, WT};
use crate::error::ImagingError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelConvention {
    /// 1 edema, 2 non-enhancing, 3 enhancing: TC = 2|3, WT = 1|2|3, ET = 3.
    #[default]
    Msd,
    /// 1 necrotic/non-enhancing, 2 edema, 4 enhancing: TC = 1|4, WT = 1|2|4, ET = 4.
    Brats,
    /// MONAI's class exactly, unknown values ignored (the seed pipeline's behaviour).
    BratsMonai,
}

impl LabelConvention {
    pub fn name(self) -> &'static str {
        match self {
            LabelConvention::Msd => "msd",
            LabelConvention::Brats => "brats",
            LabelConvention::BratsMonai => "brats-monai",
        }
    }

    fn allowed(self) -> &'static str {
        match self {
            LabelConvention::Msd => "0, 1, 2, 3",
            LabelConvention::Brats => "0, 1, 2, 4",
            LabelConvention::BratsMonai => "any",
        }
    }

    /// The convention's tumour classes as (label value, name, region bits), by value.
    pub fn classes(self) -> &'static [(u8, &'static str, u8)] {
        match self {
            LabelConvention::Msd => &[
                (1, "edema", WT),
                (2, "non-enhancing tumour", TC | WT),
                (3, "enhancing tumour", TC | WT | ET),
            ],
            LabelConvention::Brats | LabelConvention::BratsMonai => &[
                (1, "necrotic/non-enhancing core", TC | WT),
                (2, "edema", WT),
                (4, "enhancing tumour", TC | WT | ET),
            ],
        }
    }

    /// The label value of a voxel's region bits (the inverse of [`LabelConvention::regions`]):
    /// the class of its innermost region, ET before TC before WT; 0 outside every region.
    pub fn value_of(self, bits: u8) -> u8 {
        let innermost = [ET, TC, WT].into_iter().find(|r| bits & r != 0);
        innermost
            .and_then(|r| {
                self.classes()
                    .iter()
                    .filter(|c| c.2 & r != 0)
                    .min_by_key(|c| c.2.count_ones())
            })
            .map_or(0, |c| c.0)
    }

    /// Region bits for a raw value, `None` when the value is not part of the convention.
    pub fn regions(self, v: f32) -> Option<u8> {
        match (self, v) {
            (_, 0.0) => Some(0),
            (LabelConvention::Msd, 1.0) => Some(WT),
            (LabelConvention::Msd, 2.0) => Some(TC | WT),
            (LabelConvention::Msd, 3.0) => Some(TC | WT | ET),
            (LabelConvention::Brats | LabelConvention::BratsMonai, 1.0) => Some(TC | WT),
            (LabelConvention::Brats | LabelConvention::BratsMonai, 2.0) => Some(WT),
            (LabelConvention::Brats | LabelConvention::BratsMonai, 4.0) => Some(TC | WT | ET),
            (LabelConvention::BratsMonai, _) => Some(0),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertLabels {
    #[serde(default)]
    pub labels: LabelConvention,
}

impl ConvertLabels {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "convert-labels";
    /// What it does, for the reference.
    pub const DOC: &'static str = "label values to region bits TC, WT, ET (`ConvertToMultiChannelBasedOnBratsClassesd`, with the convention of the data)";
    pub const FIELDS: &'static [Field] = &[Field::optional(
        "labels",
        "`msd`, `brats` or `brats-monai`",
        "the step's `labels`",
        "the label convention of the data",
        r#"{"enum": ["msd", "brats", "brats-monai"]}"#,
    )];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn apply(&self, mut case: Case) -> Result<Case, ImagingError> {
        let Some(label) = case.label.as_mut() else {
            return Ok(case); // image-only cases (prediction) pass through
        };
        let LabelData::Raw(raw) = &label.data else {
            return Err(ImagingError::Transform {
                case: case.id,
                transform: "convert-labels",
                reason: "labels are already converted to regions".into(),
            });
        };
        // Labels are few distinct values: a tiny cache of the last lookup keeps this one pass.
        let conv = self.labels;
        let mut out = Vec::with_capacity(raw.len());
        let (mut last_v, mut last_r) = (0.0f32, 0u8);
        for &v in raw {
            if v != last_v {
                last_r = conv.regions(v).ok_or_else(|| ImagingError::LabelValue {
                    case: case.id.clone(),
                    value: v,
                    convention: conv.name(),
                    allowed: conv.allowed(),
                })?;
                last_v = v;
            }
            out.push(last_r);
        }
        label.data = LabelData::Regions(out);
        Ok(case)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::{Image, Label, linalg::IDENTITY};

    #[test]
    fn classes_invert_regions() {
        for conv in [
            LabelConvention::Msd,
            LabelConvention::Brats,
            LabelConvention::BratsMonai,
        ] {
            assert_eq!(conv.value_of(0), 0);
            for &(value, _, bits) in conv.classes() {
                assert_eq!(conv.regions(value as f32), Some(bits), "{conv:?} {value}");
                assert_eq!(conv.value_of(bits), value, "{conv:?} {bits}");
            }
        }
        // A voxel whose thresholded regions disagree takes its innermost region's class.
        assert_eq!(LabelConvention::Msd.value_of(ET), 3);
        assert_eq!(LabelConvention::Brats.value_of(TC), 1);
        assert_eq!(LabelConvention::Brats.value_of(WT), 2);
    }

    fn case(vals: &[f32]) -> Case {
        Case {
            id: "BRATS_042".into(),
            image: Image::new([1, vals.len(), 1, 1], vec![0.0; vals.len()]),
            label: Some(Label::new(
                [vals.len(), 1, 1],
                LabelData::Raw(vals.to_vec()),
            )),
            affine: IDENTITY,
            channel_first: true,
        }
    }

    fn regions(c: &Case) -> Vec<u8> {
        match &c.label.as_ref().unwrap().data {
            LabelData::Regions(r) => r.clone(),
            _ => panic!(),
        }
    }

    #[test]
    fn conventions() {
        let msd = ConvertLabels {
            labels: LabelConvention::Msd,
        }
        .apply(case(&[0.0, 1.0, 2.0, 3.0]))
        .unwrap();
        assert_eq!(regions(&msd), [0, WT, TC | WT, TC | WT | ET]);
        let b = ConvertLabels {
            labels: LabelConvention::Brats,
        }
        .apply(case(&[0.0, 1.0, 2.0, 4.0]))
        .unwrap();
        assert_eq!(regions(&b), [0, TC | WT, WT, TC | WT | ET]);
        let m = ConvertLabels {
            labels: LabelConvention::BratsMonai,
        }
        .apply(case(&[3.0, 1.0]))
        .unwrap();
        assert_eq!(regions(&m), [0, TC | WT]);
        let e = ConvertLabels {
            labels: LabelConvention::Brats,
        }
        .apply(case(&[0.0, 3.0]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("BRATS_042") && e.contains("label value 3"),
            "{e}"
        );
        let e = ConvertLabels::default()
            .apply(case(&[0.0, 4.0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("label value 4") && e.contains("msd"), "{e}");
        let e = ConvertLabels::default()
            .apply(case(&[0.5]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.5"), "{e}");
    }
}
