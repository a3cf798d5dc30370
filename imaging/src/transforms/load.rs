//! `load`: reads a case's image (3D, or 4D with channels last) and optional label into the
//! channel-first C-order layout, rejecting non-finite voxels and image/label disagreements.

use serde::{Deserialize, Serialize};

use super::{Affine, Case, CaseSource, Field, Image, Label, LabelData, Layout};
use crate::error::ImagingError;
use crate::nifti::{NiftiImage, read_nifti};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {}

/// Affines of image and label may differ by float32 header rounding, not by more.
const AFFINE_TOL: f64 = 1e-3;

impl Load {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "load";
    /// What it does, for the reference.
    pub const DOC: &'static str = "read the image and label NIfTI files (`LoadImaged`; scaling, byte order, sform/qform as nibabel)";
    pub const FIELDS: &'static [Field] = &[];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn load(&self, src: &CaseSource) -> Result<Case, ImagingError> {
        let img = read_nifti(&src.image)?;
        let affine = img.affine;
        let image = image_from_nifti(img, &src.id)?;
        let label = match &src.label {
            None => None,
            Some(p) => {
                let lab = read_nifti(p)?;
                Some(label_from_nifti(lab, &src.id, image.spatial(), &affine)?)
            }
        };
        Ok(Case {
            id: src.id.clone(),
            image,
            label,
            affine,
            channel_first: false,
        })
    }
}

/// Whether a label of `dims` and `affine` lies on the image's grid: the same spatial shape (extra
/// dims of size 1 only) and the same affine within the loader's tolerance. The check
/// [`label_from_nifti`] makes, for callers that have only the headers (`nifti::read_grid`).
pub fn check_label_grid(
    case: &str,
    dims: &[usize],
    affine: &Affine,
    image_spatial: [usize; 3],
    image_affine: &Affine,
) -> Result<(), ImagingError> {
    let ok = dims.len() >= 3 && dims[3..].iter().all(|&v| v == 1);
    if !ok || dims[..3] != image_spatial {
        return Err(ImagingError::Mismatch {
            case: case.to_string(),
            what: "shape",
            image: format!("{image_spatial:?}"),
            label: format!("{dims:?}"),
        });
    }
    let close = (0..3).all(|i| {
        (0..4).all(|j| {
            (affine[i][j] - image_affine[i][j]).abs()
                <= AFFINE_TOL * image_affine[i][j].abs().max(1.0)
        })
    });
    if !close {
        return Err(ImagingError::Mismatch {
            case: case.to_string(),
            what: "affine",
            image: format!("{image_affine:?}"),
            label: format!("{affine:?}"),
        });
    }
    Ok(())
}

/// (X, Y, Z[, C]) Fortran order → (C, X, Y, Z) C order, checking every voxel is finite.
pub fn image_from_nifti(img: NiftiImage, case: &str) -> Result<Image, ImagingError> {
    let d = &img.dims;
    let (sp, c) = match d.len() {
        3 => ([d[0], d[1], d[2]], 1),
        4 => ([d[0], d[1], d[2]], d[3]),
        // Trailing singleton dims (e.g. X,Y,Z,1,1) carry no data.
        n if n > 4 && d[4..].iter().all(|&v| v == 1) => ([d[0], d[1], d[2]], d[3]),
        _ => {
            return Err(ImagingError::Transform {
                case: case.to_string(),
                transform: "load",
                reason: format!("image dims {d:?}: expected 3D (X,Y,Z) or 4D (X,Y,Z,C)"),
            });
        }
    };
    if let Some(i) = first_non_finite(&img.data) {
        return Err(ImagingError::NonFinite {
            case: case.to_string(),
            what: "image",
            index: i,
            value: img.data[i],
        });
    }
    Ok(Image {
        shape: [c, sp[0], sp[1], sp[2]],
        data: img.data,
        layout: Layout::Fortran,
    })
}

pub fn label_from_nifti(
    lab: NiftiImage,
    case: &str,
    image_spatial: [usize; 3],
    image_affine: &Affine,
) -> Result<Label, ImagingError> {
    check_label_grid(case, &lab.dims, &lab.affine, image_spatial, image_affine)?;
    let sp = [lab.dims[0], lab.dims[1], lab.dims[2]];
    if let Some(i) = first_non_finite(&lab.data) {
        return Err(ImagingError::NonFinite {
            case: case.to_string(),
            what: "label",
            index: i,
            value: lab.data[i],
        });
    }
    Ok(Label {
        shape: sp,
        data: LabelData::Raw(lab.data),
        layout: Layout::Fortran,
    })
}

/// Index of the first NaN/Inf. Scans in blocks without early exit so the check vectorizes; only a
/// block that has one is searched element by element.
fn first_non_finite(v: &[f32]) -> Option<usize> {
    v.chunks(4096).enumerate().find_map(|(b, chunk)| {
        let bad = chunk.iter().fold(false, |acc, x| acc | !x.is_finite());
        if bad {
            chunk
                .iter()
                .position(|x| !x.is_finite())
                .map(|p| b * 4096 + p)
        } else {
            None
        }
    })
}

/// The inverse of [`fortran_to_c`], for writing NIfTI files.
pub fn c_to_fortran<T: Copy + Default>(src: &[T], sp: [usize; 3], c: usize) -> Vec<T> {
    let [nx, ny, nz] = sp;
    let vol = nx * ny * nz;
    let mut dst = vec![T::default(); src.len()];
    for ch in 0..c {
        let s = &src[ch * vol..(ch + 1) * vol];
        let d = &mut dst[ch * vol..(ch + 1) * vol];
        for x in 0..nx {
            for y in 0..ny {
                let row = &s[(x * ny + y) * nz..(x * ny + y + 1) * nz];
                for (z, &v) in row.iter().enumerate() {
                    d[(z * ny + y) * nx + x] = v;
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::{NiftiData, write_nifti};

    use crate::transforms::fortran_to_c;

    #[test]
    fn layout_roundtrip() {
        let sp = [5, 3, 7];
        let f: Vec<u32> = (0..5 * 3 * 7 * 2).collect();
        let mut c = vec![0u32; f.len()];
        fortran_to_c(&f, &mut c, sp, 2);
        // C index (ch, x, y, z) holds Fortran index x + 5*(y + 3*(z + 7*ch)).
        assert_eq!(c[((4 * 3) + 2) * 7 + 6], 4 + 5 * (2 + 3 * 6));
        assert_eq!(c[105 + 3 * 7 + 2], 1 + 5 * 3 * (2 + 7)); // (ch 1, x 1, y 0, z 2)
        assert_eq!(c_to_fortran(&c, sp, 2), f);
    }

    #[test]
    fn nan_and_mismatch_errors_name_the_case() {
        let dir = tempfile::tempdir().unwrap();
        let aff = super::super::linalg::IDENTITY;
        let mut data = vec![1.0f32; 8];
        data[5] = f32::NAN;
        let img = dir.path().join("img.nii");
        write_nifti(&img, &[2, 2, 2], NiftiData::F32(&data), &aff).unwrap();
        let src = CaseSource {
            id: "case_nan".into(),
            image: img,
            label: None,
        };
        let e = Load::default().load(&src).unwrap_err().to_string();
        assert!(e.contains("case_nan") && e.contains("non-finite"), "{e}");

        let good = dir.path().join("good.nii");
        write_nifti(&good, &[2, 2, 2], NiftiData::F32(&[1.0; 8]), &aff).unwrap();
        let lab = dir.path().join("lab.nii");
        write_nifti(&lab, &[2, 2, 3], NiftiData::U8(&[0; 12]), &aff).unwrap();
        let src = CaseSource {
            id: "case_shape".into(),
            image: good.clone(),
            label: Some(lab),
        };
        let e = Load::default().load(&src).unwrap_err().to_string();
        assert!(e.contains("case_shape") && e.contains("shape"), "{e}");

        let mut moved = aff;
        moved[0][3] = 5.0;
        let lab = dir.path().join("lab2.nii");
        write_nifti(&lab, &[2, 2, 2], NiftiData::U8(&[0; 8]), &moved).unwrap();
        let src = CaseSource {
            id: "case_affine".into(),
            image: good,
            label: Some(lab),
        };
        let e = Load::default().load(&src).unwrap_err().to_string();
        assert!(e.contains("case_affine") && e.contains("affine"), "{e}");
    }
}
