//! `rand-spatial-crop`: MONAI's RandSpatialCropd with a fixed roi — start uniform in [0, n − roi] per
//! axis; an axis shorter than the roi is kept whole (no padding).

use serde::{Deserialize, Serialize};

use super::{Case, Drawn, Field, Image, InvalidField, Label, LabelData, require_channel_first};
use crate::error::ImagingError;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandSpatialCrop {
    pub roi: [usize; 3],
}

impl RandSpatialCrop {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "rand-spatial-crop";
    /// What it does, for the reference.
    pub const DOC: &'static str =
        "a random window of that size (`RandSpatialCropd`, `random_size=False`)";
    pub const FIELDS: &'static [Field] = &[Field::required(
        "roi",
        "3 integers ≥ 1",
        "the window in voxels per spatial axis (cut to the volume where it is larger)",
        r#"{"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3, "maxItems": 3}"#,
    )];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.roi.contains(&0) {
            return Err(InvalidField::new(
                "roi",
                format!("roi {:?} must be >= 1 on every axis", self.roi),
            ));
        }
        Ok(())
    }

    pub fn draw(&self, spatial: [usize; 3], rng: &mut Rng) -> Drawn {
        let mut start = [0u32; 3];
        let mut size = [0u32; 3];
        for a in 0..3 {
            let s = self.roi[a].min(spatial[a]);
            size[a] = s as u32;
            start[a] = rng.int_inclusive((spatial[a] - s) as u64) as u32;
        }
        Drawn::Crop { start, size }
    }

    pub fn apply_drawn(
        &self,
        mut case: Case,
        start: [u32; 3],
        size: [u32; 3],
    ) -> Result<Case, ImagingError> {
        require_channel_first(&mut case, "rand-spatial-crop")?;
        crop(case, start.map(|v| v as usize), size.map(|v| v as usize))
    }
}

/// Crops image and label to `[start, start + size)` and moves the affine origin to the window start.
pub fn crop(mut case: Case, start: [usize; 3], size: [usize; 3]) -> Result<Case, ImagingError> {
    let sp = case.image.spatial();
    if (0..3).any(|a| start[a] + size[a] > sp[a] || size[a] == 0) {
        return Err(ImagingError::Transform {
            case: case.id.clone(),
            transform: "rand-spatial-crop",
            reason: format!("window start {start:?} size {size:?} does not fit the image {sp:?}"),
        });
    }
    let c = case.image.channels();
    case.image = Image::new(
        [c, size[0], size[1], size[2]],
        crop_array(&case.image.data, c, sp, start, size),
    );
    if let Some(label) = case.label.take() {
        let data = match label.data {
            LabelData::Raw(r) => LabelData::Raw(crop_array(&r, 1, sp, start, size)),
            LabelData::Regions(r) => LabelData::Regions(crop_array(&r, 1, sp, start, size)),
        };
        case.label = Some(Label::new(size, data));
    }
    for i in 0..3 {
        let mut t = 0.0;
        for j in 0..3 {
            t += case.affine[i][j] * start[j] as f64;
        }
        case.affine[i][3] += t;
    }
    Ok(case)
}

fn crop_array<T: Copy>(
    src: &[T],
    c: usize,
    sp: [usize; 3],
    start: [usize; 3],
    size: [usize; 3],
) -> Vec<T> {
    let vol = sp[0] * sp[1] * sp[2];
    let mut out = Vec::with_capacity(c * size[0] * size[1] * size[2]);
    for ch in 0..c {
        for x in start[0]..start[0] + size[0] {
            for y in start[1]..start[1] + size[1] {
                let row = ch * vol + (x * sp[1] + y) * sp[2] + start[2];
                out.extend_from_slice(&src[row..row + size[2]]);
            }
        }
    }
    out
}
