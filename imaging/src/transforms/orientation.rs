//! `orientation`: MONAI's Orientationd — nibabel's `io_orientation` (polar decomposition, greedy axis
//! match) then flips and axis permutations only, never interpolation.

use serde::{Deserialize, Serialize};

use super::linalg;
use super::{Affine, Case, Field, Image, InvalidField, Label, LabelData, require_channel_first};
use crate::error::ImagingError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Orientation {
    /// Three letters, one of L/R, P/A, I/S each, naming where each axis points (RAS = nibabel's default).
    #[serde(default = "ras")]
    pub axcodes: String,
}

fn ras() -> String {
    "RAS".into()
}

impl Default for Orientation {
    fn default() -> Self {
        Orientation { axcodes: ras() }
    }
}

/// Per input axis: (output axis, flipped).
pub type Ornt = [(usize, bool); 3];

impl Orientation {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "orientation";
    /// What it does, for the reference.
    pub const DOC: &'static str = "flip and permute axes to the orientation (`Orientationd`)";
    pub const FIELDS: &'static [Field] = &[Field::optional(
        "axcodes",
        "3 letters",
        "`RAS`",
        "where each axis points: one of L/R, one of P/A, one of I/S (RAS is nibabel's default)",
        r#"{"type": "string", "pattern": "^[LRPAISlrpais]{3}$", "default": "RAS"}"#,
    )];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
        self.target()
            .map(|_| ())
            .map_err(|reason| InvalidField::new("axcodes", reason))
    }

    /// `axcodes2ornt`: for each output axis, which world axis it follows and whether negated.
    fn target(&self) -> Result<[(usize, bool); 3], String> {
        let codes: Vec<char> = self.axcodes.to_ascii_uppercase().chars().collect();
        if codes.len() != 3 {
            return Err(format!("axcodes `{}` must have 3 letters", self.axcodes));
        }
        let mut out = [(0, false); 3];
        let mut used = [false; 3];
        for (i, c) in codes.iter().enumerate() {
            let (world, neg) = match c {
                'L' => (0, true),
                'R' => (0, false),
                'P' => (1, true),
                'A' => (1, false),
                'I' => (2, true),
                'S' => (2, false),
                _ => {
                    return Err(format!(
                        "axcodes `{}`: `{c}` is not one of L R P A I S",
                        self.axcodes
                    ));
                }
            };
            if used[world] {
                return Err(format!(
                    "axcodes `{}` name the same world axis twice",
                    self.axcodes
                ));
            }
            used[world] = true;
            out[i] = (world, neg);
        }
        Ok(out)
    }

    /// The per-input-axis transform from the affine's orientation to the target (`ornt_transform`).
    pub fn ornt(&self, affine: &Affine) -> Result<Ornt, String> {
        let src = io_orientation(affine)?;
        let dst = self.target()?;
        let mut result = [(0usize, false); 3];
        for (in_ax, &(world, flip)) in src.iter().enumerate() {
            let (out_ax, &(_, dst_neg)) = dst
                .iter()
                .enumerate()
                .find(|(_, (w, _))| *w == world)
                .ok_or_else(|| format!("no target axis for world axis {world}"))?;
            result[in_ax] = (out_ax, flip != dst_neg);
        }
        Ok(result)
    }

    /// The spatial shape and affine a volume of `shape` with `affine` has after this transform.
    pub fn plan(&self, affine: &Affine, shape: [usize; 3]) -> Result<([usize; 3], Affine), String> {
        let ornt = self.ornt(affine)?;
        let mut out = [0usize; 3];
        for (a, &(o, _)) in ornt.iter().enumerate() {
            out[o] = shape[a];
        }
        Ok((out, reoriented_affine(affine, &ornt, shape)))
    }

    pub fn apply(&self, mut case: Case) -> Result<Case, ImagingError> {
        require_channel_first(&mut case, "orientation")?;
        let ornt = self
            .ornt(&case.affine)
            .map_err(|reason| ImagingError::Transform {
                case: case.id.clone(),
                transform: "orientation",
                reason,
            })?;
        let identity = ornt.iter().enumerate().all(|(i, &(o, f))| o == i && !f);
        let in_sp = case.image.spatial();
        case.affine = reoriented_affine(&case.affine, &ornt, in_sp);
        if identity {
            return Ok(case);
        }
        let c = case.image.channels();
        let (data, out_sp) = reorient(&case.image.data, c, in_sp, &ornt);
        case.image = Image::new([c, out_sp[0], out_sp[1], out_sp[2]], data);
        if let Some(label) = case.label.take() {
            let data = match label.data {
                LabelData::Raw(r) => LabelData::Raw(reorient(&r, 1, label.shape, &ornt).0),
                LabelData::Regions(r) => LabelData::Regions(reorient(&r, 1, label.shape, &ornt).0),
            };
            case.label = Some(Label::new(out_sp, data));
        }
        Ok(case)
    }
}

/// nibabel's `io_orientation`: polar factor of the column-normalized RZS, then per input axis the
/// world axis with the largest |component|, removing each chosen world axis from later choices.
pub fn io_orientation(a: &Affine) -> Result<[(usize, bool); 3], String> {
    let mut rs = linalg::rzs(a);
    for j in 0..3 {
        let mut z = (0..3).map(|i| rs[i][j] * rs[i][j]).sum::<f64>().sqrt();
        if z == 0.0 {
            z = 1.0;
        }
        for row in rs.iter_mut() {
            row[j] /= z;
        }
    }
    let mut r =
        linalg::polar3(&rs).ok_or_else(|| format!("affine {a:?} has a singular rotation part"))?;
    let mut out = [(0usize, false); 3];
    for in_ax in 0..3 {
        let mut best = 0;
        for i in 1..3 {
            if r[i][in_ax].abs() > r[best][in_ax].abs() {
                best = i;
            }
        }
        if r[best][in_ax] == 0.0 {
            return Err(format!(
                "affine {a:?}: input axis {in_ax} maps to no world axis"
            ));
        }
        out[in_ax] = (best, r[best][in_ax] < 0.0);
        r[best] = [0.0; 3];
    }
    Ok(out)
}

/// `affine @ inv_ornt_aff(ornt, shape)`: output column `o` is ± input column `a`; a flipped axis of
/// length n moves the origin by (n−1)·column.
fn reoriented_affine(a: &Affine, ornt: &Ornt, shape: [usize; 3]) -> Affine {
    // xform = undo_flip @ undo_reorder, built exactly as nibabel does, then one matmul.
    let mut undo_reorder = [[0.0; 4]; 4];
    for (in_ax, &(out_ax, _)) in ornt.iter().enumerate() {
        undo_reorder[in_ax][out_ax] = 1.0;
    }
    undo_reorder[3][3] = 1.0;
    let mut undo_flip = linalg::IDENTITY;
    for (in_ax, &(_, flip)) in ornt.iter().enumerate() {
        let s = if flip { -1.0 } else { 1.0 };
        undo_flip[in_ax][in_ax] = s;
        let center = -((shape[in_ax] as f64 - 1.0) / 2.0);
        undo_flip[in_ax][3] = s * center - center;
    }
    let xform = linalg::matmul4(&undo_flip, &undo_reorder);
    linalg::matmul4(a, &xform)
}

/// Flips then permutes a `(C, X, Y, Z)` array: output axis `ornt[a].0` takes input axis `a`.
fn reorient<T: Copy>(src: &[T], c: usize, sp: [usize; 3], ornt: &Ornt) -> (Vec<T>, [usize; 3]) {
    let mut out_sp = [0usize; 3];
    for (a, &(o, _)) in ornt.iter().enumerate() {
        out_sp[o] = sp[a];
    }
    let in_strides = [sp[1] * sp[2], sp[2], 1];
    let vol = sp[0] * sp[1] * sp[2];
    // For each output axis: the input stride it walks and where it starts (the far end when flipped).
    let mut stride = [0isize; 3];
    let mut start: isize = 0;
    for (a, &(o, flip)) in ornt.iter().enumerate() {
        if flip {
            stride[o] = -(in_strides[a] as isize);
            start += ((sp[a] - 1) * in_strides[a]) as isize;
        } else {
            stride[o] = in_strides[a] as isize;
        }
    }
    let mut out = Vec::with_capacity(src.len());
    for ch in 0..c {
        let base = (ch * vol) as isize + start;
        for i in 0..out_sp[0] {
            let pi = base + i as isize * stride[0];
            for j in 0..out_sp[1] {
                let pj = pi + j as isize * stride[1];
                for k in 0..out_sp[2] {
                    out.push(src[(pj + k as isize * stride[2]) as usize]);
                }
            }
        }
    }
    (out, out_sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lps_to_ras_flips_x_and_y() {
        let a = [
            [-1.5, 0.0, 0.0, 0.0],
            [0.0, -1.5, 0.0, 47.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let o = Orientation::default().ornt(&a).unwrap();
        assert_eq!(o, [(0, true), (1, true), (2, false)]);
        let na = reoriented_affine(&a, &o, [32, 32, 16]);
        assert_eq!(na[0], [1.5, 0.0, 0.0, -46.5]);
        assert_eq!(na[1], [0.0, 1.5, 0.0, 0.5]);
    }

    #[test]
    fn permutation_moves_axes() {
        // Input axis 0 points along world y, axis 1 along world x.
        let a = [
            [0.0, 2.0, 0.0, 0.0],
            [3.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let o = Orientation::default().ornt(&a).unwrap();
        assert_eq!(o, [(1, false), (0, false), (2, false)]);
        let src: Vec<u16> = (0..2 * 3 * 4).collect();
        let (out, sp) = reorient(&src, 1, [2, 3, 4], &o);
        assert_eq!(sp, [3, 2, 4]);
        // out[j][i][k] = src[i][j][k]
        assert_eq!(out[(2 * 2 + 1) * 4 + 3], src[(3 + 2) * 4 + 3]); // out (2,1,3) = src (1,2,3)
        let na = reoriented_affine(&a, &o, [2, 3, 4]);
        assert_eq!(na[0][0], 2.0);
        assert_eq!(na[1][1], 3.0);
    }
}
