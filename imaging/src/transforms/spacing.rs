//! `spacing`: MONAI's Spacingd (float64 compute, float32 out, border padding, align_corners=False),
//! reproducing PyTorch's `affine_grid` + `grid_sample` coordinate arithmetic so results match MONAI
//! bit for bit, including its ~1e-13 "noise" non-zeros that later count as foreground in
//! normalize-intensity (see reference/README.md).
//!
//! Axis-aligned resampling (the common case) uses per-axis index/weight tables; anything oblique or
//! sheared takes the general per-voxel path.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::linalg::{self, Mat4};
use super::{
    Affine, Case, Field, Image, InvalidField, Label, LabelData, Layout, require_channel_first,
};
use crate::error::ImagingError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterpMode {
    /// MONAI's "bilinear": trilinear in 3D.
    Bilinear,
    Nearest,
}

/// Interpolation for the image and the label: one mode for both, or `[image, label]` (the form it
/// serializes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpacingModes {
    pub image: InterpMode,
    pub label: InterpMode,
}

impl Default for SpacingModes {
    fn default() -> Self {
        SpacingModes {
            image: InterpMode::Bilinear,
            label: InterpMode::Nearest,
        }
    }
}

impl Serialize for SpacingModes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.image, self.label].serialize(s)
    }
}

impl<'de> Deserialize<'de> for SpacingModes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(InterpMode),
            Many(Vec<InterpMode>),
        }
        match Raw::deserialize(d)? {
            Raw::One(m) => Ok(SpacingModes { image: m, label: m }),
            Raw::Many(v) if v.len() == 1 => Ok(SpacingModes {
                image: v[0],
                label: v[0],
            }),
            Raw::Many(v) if v.len() == 2 => Ok(SpacingModes {
                image: v[0],
                label: v[1],
            }),
            Raw::Many(v) => Err(de::Error::custom(format!(
                "mode: expected 1 or 2 entries (image, label), got {}",
                v.len()
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spacing {
    /// Target voxel size in mm per spatial axis.
    pub pixdim: [f64; 3],
    #[serde(default)]
    pub mode: SpacingModes,
}

/// MONAI's AFFINE_TOL: affines this close count as unchanged, and an axis within it keeps its spacing.
const AFFINE_TOL: f64 = 1e-3;
/// Largest output grid (per channel) `spacing` will allocate.
const MAX_OUTPUT_VOXELS: u128 = 1 << 31;

/// Output grid of a resampling, and the map from it into the input.
#[derive(Debug, Clone, PartialEq)]
pub struct SpacingPlan {
    pub out_shape: [usize; 3],
    pub out_affine: Affine,
    /// MONAI found nothing to do (affine and shape unchanged within AFFINE_TOL).
    pub unchanged: bool,
    /// Normalized-coordinate map, torch row order (input axis a = row a), before index reversal.
    theta: Mat4,
}

impl Spacing {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "spacing";
    /// What it does, for the reference.
    pub const DOC: &'static str = "resample to the voxel size (`Spacingd`)";
    pub const FIELDS: &'static [Field] = &[
        Field::required(
            "pixdim",
            "3 numbers > 0",
            "the voxel size in mm per spatial axis",
            r#"{"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3}"#,
        ),
        Field::optional(
            "mode",
            "`bilinear` or `nearest`, or `[image, label]`",
            "`[bilinear, nearest]`",
            "the interpolation: one mode for image and label, or one each",
            r#"{"anyOf": [{"enum": ["bilinear", "nearest"]}, {"type": "array", "items": {"enum": ["bilinear", "nearest"]}, "minItems": 1, "maxItems": 2}], "default": ["bilinear", "nearest"]}"#,
        ),
    ];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.pixdim.iter().any(|p| !p.is_finite() || *p <= 0.0) {
            return Err(InvalidField::new(
                "pixdim",
                format!("pixdim {:?} must be finite and > 0", self.pixdim),
            ));
        }
        Ok(())
    }

    /// Output shape/affine for an input grid, as MONAI's Spacing + compute_shape_offset compute them.
    pub fn plan(&self, affine: &Affine, in_shape: [usize; 3]) -> Result<SpacingPlan, String> {
        plan(affine, in_shape, self.pixdim)
    }

    pub fn apply(&self, mut case: Case) -> Result<Case, ImagingError> {
        require_channel_first(&mut case, "spacing")?;
        let err = |case: &Case, reason: String| ImagingError::Transform {
            case: case.id.clone(),
            transform: "spacing",
            reason,
        };
        let in_shape = case.image.spatial();
        let p = self
            .plan(&case.affine, in_shape)
            .map_err(|r| err(&case, r))?;
        if p.unchanged {
            case.affine = p.out_affine;
            case.to_c_order();
            return Ok(case);
        }
        let c = case.image.channels();
        // The new image (f32 per channel) and label, before any of it is allocated.
        let voxels: u128 = p.out_shape.iter().map(|&n| n as u128).product();
        let label_bytes = match case.label.as_ref().map(|l| &l.data) {
            Some(LabelData::Regions(_)) => 1,
            Some(LabelData::Raw(_)) => 4,
            None => 0,
        };
        crate::memory::check(voxels * (4 * c as u128 + label_bytes)).map_err(|why| {
            err(
                &case,
                format!(
                    "the output grid {:?} for pixdim {:?} {why}",
                    p.out_shape, self.pixdim
                ),
            )
        })?;
        let grid = Grid::new(&p.theta, in_shape, p.out_shape);
        let out_img_shape = [c, p.out_shape[0], p.out_shape[1], p.out_shape[2]];
        let layout = case.image.layout;
        case.image = match self.mode.image {
            InterpMode::Bilinear => {
                Image::new(out_img_shape, grid.trilinear(&case.image.data, c, layout))
            }
            InterpMode::Nearest => {
                Image::new(out_img_shape, grid.nearest(&case.image.data, c, layout))
            }
        };
        if let Some(label) = case.label.take() {
            if label.shape != in_shape {
                return Err(ImagingError::Mismatch {
                    case: case.id.clone(),
                    what: "shape",
                    image: format!("{in_shape:?}"),
                    label: format!("{:?}", label.shape),
                });
            }
            let l = label.layout;
            let data = match (label.data, self.mode.label) {
                (LabelData::Regions(r), InterpMode::Nearest) => {
                    LabelData::Regions(grid.nearest(&r, 1, l))
                }
                (LabelData::Raw(r), InterpMode::Nearest) => LabelData::Raw(grid.nearest(&r, 1, l)),
                (LabelData::Raw(r), InterpMode::Bilinear) => {
                    LabelData::Raw(grid.trilinear(&r, 1, l))
                }
                (LabelData::Regions(_), InterpMode::Bilinear) => {
                    return Err(err(
                        &case,
                        "region labels can only be resampled with `nearest`".into(),
                    ));
                }
            };
            case.label = Some(Label::new(p.out_shape, data));
        }
        case.affine = p.out_affine;
        Ok(case)
    }
}

fn plan(a: &Affine, in_shape: [usize; 3], pixdim: [f64; 3]) -> Result<SpacingPlan, String> {
    if in_shape.contains(&0) {
        return Err(format!("empty input grid {in_shape:?}"));
    }
    let orig = linalg::spacing_of(a);
    let mut out_d = pixdim;
    for i in 0..3 {
        if (orig[i] - pixdim[i]).abs() <= AFFINE_TOL {
            out_d[i] = orig[i];
        }
    }
    let mut new = zoom_affine(a, out_d).ok_or_else(|| format!("affine {a:?} is singular"))?;
    let (out_shape, offset) =
        shape_offset(in_shape, a, &new).ok_or_else(|| format!("affine {a:?} is singular"))?;
    for i in 0..3 {
        new[i][3] = offset[i];
    }
    if out_shape.contains(&0) {
        return Err(format!("output grid {out_shape:?} is empty"));
    }
    // A typo'd pixdim (0.001 for 1.0) would otherwise ask for terabytes; refuse before allocating.
    if out_shape.iter().map(|&n| n as u128).product::<u128>() > MAX_OUTPUT_VOXELS {
        return Err(format!(
            "output grid {out_shape:?} for pixdim {pixdim:?} exceeds {MAX_OUTPUT_VOXELS} voxels"
        ));
    }
    let xform = linalg::solve4(a, &new).ok_or_else(|| format!("affine {a:?} is singular"))?;
    let unchanged = (linalg::allclose4(a, &new, 1e-5, AFFINE_TOL) && out_shape == in_shape)
        || linalg::allclose4(&xform, &linalg::IDENTITY, 1e-5, AFFINE_TOL);
    let theta = to_norm_affine(&xform, in_shape, out_shape);
    Ok(SpacingPlan {
        out_shape: if unchanged { in_shape } else { out_shape },
        out_affine: new,
        unchanged,
        theta,
    })
}

/// Resamples C-order `(C, X, Y, Z)` data from the grid (`src_shape`, `src_affine`) onto the grid
/// (`dst_shape`, `dst_affine`) with the same torch arithmetic as `spacing` — e.g. a prediction made on
/// the prefix's grid back onto the original image, as MONAI's Invertd does. Trilinear for images.
pub fn resample_image_to(
    img: &Image,
    src_affine: &Affine,
    dst_shape: [usize; 3],
    dst_affine: &Affine,
    mode: InterpMode,
) -> Result<Image, String> {
    let grid = grid_between(img.spatial(), src_affine, dst_shape, dst_affine)?;
    let c = img.channels();
    let data = match mode {
        InterpMode::Bilinear => grid.trilinear(&img.data, c, img.layout),
        InterpMode::Nearest => grid.nearest(&img.data, c, img.layout),
    };
    Ok(Image::new(
        [c, dst_shape[0], dst_shape[1], dst_shape[2]],
        data,
    ))
}

/// Nearest-neighbour counterpart of [`resample_image_to`] for one-byte labels (region bits).
pub fn resample_labels_to(
    labels: &[u8],
    src_shape: [usize; 3],
    src_affine: &Affine,
    dst_shape: [usize; 3],
    dst_affine: &Affine,
) -> Result<Vec<u8>, String> {
    if labels.len() != src_shape.iter().product::<usize>() {
        return Err(format!("{} labels for grid {src_shape:?}", labels.len()));
    }
    Ok(grid_between(src_shape, src_affine, dst_shape, dst_affine)?.nearest(labels, 1, Layout::C))
}

fn grid_between(
    src_shape: [usize; 3],
    src: &Affine,
    dst_shape: [usize; 3],
    dst: &Affine,
) -> Result<Grid, String> {
    if src_shape.contains(&0) || dst_shape.contains(&0) {
        return Err(format!("empty grid {src_shape:?} -> {dst_shape:?}"));
    }
    if dst_shape.iter().map(|&n| n as u128).product::<u128>() > MAX_OUTPUT_VOXELS {
        return Err(format!(
            "output grid {dst_shape:?} exceeds {MAX_OUTPUT_VOXELS} voxels"
        ));
    }
    let xform = linalg::solve4(src, dst).ok_or_else(|| format!("affine {src:?} is singular"))?;
    Ok(Grid::new(
        &to_norm_affine(&xform, src_shape, dst_shape),
        src_shape,
        dst_shape,
    ))
}

/// MONAI's `zoom_affine(diagonal=False)`: keep the rotation (Cholesky of RZSᵀRZS), set the zooms.
fn zoom_affine(a: &Affine, zooms: [f64; 3]) -> Option<Affine> {
    let r = linalg::rzs(a);
    let mut new = linalg::IDENTITY;
    let diagonal = (0..3).all(|i| (0..3).all(|j| i == j || r[i][j] == 0.0));
    if diagonal {
        // numpy gets exactly ±1 here too; spelled out so no rounding creeps into the common case.
        for i in 0..3 {
            if r[i][i] == 0.0 {
                return None;
            }
            new[i][i] = r[i][i].signum() * zooms[i].abs();
        }
        return Some(new);
    }
    let gram = linalg::matmul3(&linalg::transpose3(&r), &r);
    let zs = linalg::transpose3(&linalg::cholesky3(&gram)?);
    let rot = linalg::matmul3(&r, &linalg::inv3(&zs)?);
    for i in 0..3 {
        for j in 0..3 {
            new[i][j] = rot[i][j] * (zs[j][j].signum() * zooms[j].abs());
        }
    }
    Some(new)
}

/// numpy's `round` (half to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// MONAI's `compute_shape_offset(scale_extent=False)`.
fn shape_offset(in_shape: [usize; 3], a: &Affine, new: &Affine) -> Option<([usize; 3], [f64; 3])> {
    let x = linalg::solve4(new, a)?;
    let mut corners = [[0.0f64; 4]; 8];
    for (c, corner) in corners.iter_mut().enumerate() {
        // meshgrid(indexing="ij") order: last axis fastest.
        for ax in 0..3 {
            let bit = (c >> (2 - ax)) & 1;
            corner[ax] = if bit == 1 {
                in_shape[ax] as f64 - 1.0
            } else {
                0.0
            };
        }
        corner[3] = 1.0;
    }
    let apply = |m: &Mat4, v: &[f64; 4]| -> [f64; 4] {
        let mut o = [0.0; 4];
        for (i, oi) in o.iter_mut().enumerate() {
            let mut acc = 0.0;
            for k in 0..4 {
                acc += m[i][k] * v[k];
            }
            *oi = acc;
        }
        o
    };
    let out: Vec<[f64; 4]> = corners.iter().map(|c| apply(&x, c)).collect();
    let world: Vec<[f64; 4]> = corners.iter().map(|c| apply(a, c)).collect();
    let mut shape = [0usize; 3];
    for ax in 0..3 {
        let vals = out.iter().map(|o| o[ax] / o[3]);
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
        let n = round_half_even(hi - lo + 1.0);
        if !(0.0..=1e9).contains(&n) {
            return None;
        }
        shape[ax] = n as usize;
    }
    for i in 0..8 {
        let is_min = (0..3).all(|ax| {
            let m = out
                .iter()
                .map(|o| o[ax] - out[i][ax])
                .fold(f64::INFINITY, f64::min);
            m.abs() <= 1e-8
        });
        if is_min {
            return Some((shape, [world[i][0], world[i][1], world[i][2]]));
        }
    }
    // No corner is the minimum (e.g. rotations): centre the output grid on the input grid.
    let mut off = [0.0; 3];
    for (i, o) in off.iter_mut().enumerate() {
        let mut v = 0.0;
        for j in 0..3 {
            v += a[i][j] * (in_shape[j] as f64 / 2.0);
        }
        v += a[i][3];
        for j in 0..3 {
            v -= new[i][j] * (shape[j] as f64 / 2.0);
        }
        *o = v;
    }
    Some((shape, off))
}

/// PyTorch's `normalize_transform(align_corners=False)`.
fn normalize_transform(shape: [usize; 3]) -> Mat4 {
    let mut m = linalg::IDENTITY;
    for i in 0..3 {
        let n = if shape[i] == 0 { 2.0 } else { shape[i] as f64 };
        m[i][i] = 2.0 / n;
        m[i][3] = 1.0 / n - 1.0;
    }
    m
}

/// MONAI's `to_norm_affine`: `src_xform @ xform @ inv(dst_xform)`, the inverse as numpy's OpenBLAS
/// computes it for this upper-triangular matrix (multiplying by the reciprocal pivot, not dividing).
fn to_norm_affine(xform: &Mat4, src: [usize; 3], dst: [usize; 3]) -> Mat4 {
    let s = normalize_transform(src);
    let d = normalize_transform(dst);
    let mut dinv = linalg::IDENTITY;
    for i in 0..3 {
        dinv[i][i] = 1.0 / d[i][i];
        dinv[i][3] = -d[i][3] * dinv[i][i];
    }
    linalg::matmul4(&linalg::matmul4(&s, xform), &dinv)
}

/// `torch.linspace(-1, 1, n)` as ATen's CPU kernel computes it (compiled with FMA contraction:
/// `fma(step, idx, -1)` below the halfway point, `fma(-step, n-1-idx, 1)` from it), then the
/// `* (n - 1) / n` of `affine_grid(align_corners=False)`. This reproduced every golden bit for bit;
/// plain multiply-add, or the vectorized path's `base + j·step`, leave .5-tie labels and 1e-13 noise
/// voxels different.
fn torch_base_grid(n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![0.0; n];
    }
    let step = 2.0 / (n as f64 - 1.0);
    let halfway = n / 2;
    let (nm1, nf) = ((n - 1) as f64, n as f64);
    (0..n)
        .map(|idx| {
            let v = if idx < halfway {
                step.mul_add(idx as f64, -1.0)
            } else {
                (-step).mul_add((n - idx - 1) as f64, 1.0)
            };
            v * nm1 / nf
        })
        .collect()
}

/// `grid_sampler_compute_source_index` with border padding: unnormalize, then clip.
fn source_index(g: f64, n: usize) -> f64 {
    let x = ((g + 1.0) * n as f64 - 1.0) / 2.0;
    ((n - 1) as f64).min(x.max(0.0))
}

/// Sampling positions of every output voxel in the input, in one of two representations.
struct Grid {
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    kind: GridKind,
}

enum GridKind {
    /// Axis `a` of the input depends only on axis `a` of the output: one coordinate per output index.
    Separable([Vec<f64>; 3]),
    /// General: `theta` rows per input axis and the base grids per output axis.
    General { theta: Mat4, base: [Vec<f64>; 3] },
}

/// Per-axis linear taps: lower index, upper index, and their weights as torch forms them.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f64,
    w1: f64,
}

fn tap(x: f64, n: usize) -> Tap {
    let f = x.floor();
    let i0 = f as usize;
    // torch skips the out-of-bounds upper corner; its weight is exactly 0 there, so clamp instead.
    let i1 = (i0 + 1).min(n - 1);
    Tap {
        i0,
        i1,
        w0: (f + 1.0) - x,
        w1: x - f,
    }
}

/// std::nearbyint in the default rounding mode: half to even.
fn nearest_index(x: f64, n: usize) -> usize {
    let r = x.round_ties_even();
    (r.max(0.0) as usize).min(n - 1)
}

/// Element strides of the spatial axes (x, y, z) of one channel.
fn strides(sp: [usize; 3], layout: Layout) -> [usize; 3] {
    match layout {
        Layout::C => [sp[1] * sp[2], sp[2], 1],
        Layout::Fortran => [1, sp[0], sp[0] * sp[1]],
    }
}

impl Grid {
    fn new(theta: &Mat4, in_shape: [usize; 3], out_shape: [usize; 3]) -> Self {
        let base = [0, 1, 2].map(|a| torch_base_grid(out_shape[a]));
        let separable = (0..3).all(|i| (0..3).all(|j| i == j || theta[i][j] == 0.0));
        let kind = if separable {
            // Zero terms of the grid's dot product add exactly, leaving round(round(x·t) + t3).
            GridKind::Separable([0, 1, 2].map(|a| {
                base[a]
                    .iter()
                    .map(|&b| source_index(b * theta[a][a] + theta[a][3], in_shape[a]))
                    .collect()
            }))
        } else {
            GridKind::General {
                theta: *theta,
                base,
            }
        };
        Grid {
            in_shape,
            out_shape,
            kind,
        }
    }

    /// Source coordinates of output voxel (i, j, k) for the general path. torch's bmm sums the
    /// reversed-index row: k term, j term, i term, translation.
    fn coords(
        theta: &Mat4,
        base: &[Vec<f64>; 3],
        in_shape: [usize; 3],
        i: usize,
        j: usize,
        k: usize,
    ) -> [f64; 3] {
        let (bi, bj, bk) = (base[0][i], base[1][j], base[2][k]);
        [0, 1, 2].map(|a| {
            let t = &theta[a];
            let g = ((bk * t[2] + bj * t[1]) + bi * t[0]) + t[3];
            source_index(g, in_shape[a])
        })
    }

    /// Trilinear resampling of `c` channels from `layout` order into C order. Every output value is
    /// torch's: corners summed t-n-w … b-s-e from 0, corner weight (wz·wy)·wx, all in float64.
    fn trilinear(&self, src: &[f32], c: usize, layout: Layout) -> Vec<f32> {
        let [nx, ny, nz] = self.in_shape;
        let [ox, oy, oz] = self.out_shape;
        let [sx, sy, sz] = strides(self.in_shape, layout);
        let in_vol = nx * ny * nz;
        let out_vol = ox * oy * oz;
        let mut out = vec![0f32; c * out_vol];
        match &self.kind {
            GridKind::Separable(coords) => {
                let tx: Vec<Tap> = coords[0].iter().map(|&x| tap(x, nx)).collect();
                let ty: Vec<Tap> = coords[1].iter().map(|&x| tap(x, ny)).collect();
                let tz: Vec<Tap> = coords[2].iter().map(|&x| tap(x, nz)).collect();
                // The loop nest walks the input's fastest axis (x for NIfTI order) innermost so every
                // tap row streams; the 8 corner weights of a row are formed once for all channels.
                let xo: Vec<(usize, usize, f64, f64)> = tx
                    .iter()
                    .map(|t| (t.i0 * sx, t.i1 * sx, t.w0, t.w1))
                    .collect();
                let mut wrow = vec![[0f64; 8]; ox];
                let plane = oy * oz;
                for (j, y) in ty.iter().enumerate() {
                    for (k, z) in tz.iter().enumerate() {
                        let w = [z.w0 * y.w0, z.w1 * y.w0, z.w0 * y.w1, z.w1 * y.w1];
                        for (wr, &(_, _, wx0, wx1)) in wrow.iter_mut().zip(&xo) {
                            *wr = [
                                w[0] * wx0,
                                w[1] * wx0,
                                w[2] * wx0,
                                w[3] * wx0,
                                w[0] * wx1,
                                w[1] * wx1,
                                w[2] * wx1,
                                w[3] * wx1,
                            ];
                        }
                        let r = [
                            y.i0 * sy + z.i0 * sz,
                            y.i0 * sy + z.i1 * sz,
                            y.i1 * sy + z.i0 * sz,
                            y.i1 * sy + z.i1 * sz,
                        ];
                        let base = j * oz + k;
                        for ch in 0..c {
                            let s = &src[ch * in_vol..(ch + 1) * in_vol];
                            let (r0, r1, r2, r3) = (&s[r[0]..], &s[r[1]..], &s[r[2]..], &s[r[3]..]);
                            let o = &mut out[ch * out_vol + base..];
                            for (i, (&(x0, x1, _, _), wt)) in xo.iter().zip(&wrow).enumerate() {
                                let mut acc = 0.0f64;
                                acc += r0[x0] as f64 * wt[0];
                                acc += r1[x0] as f64 * wt[1];
                                acc += r2[x0] as f64 * wt[2];
                                acc += r3[x0] as f64 * wt[3];
                                acc += r0[x1] as f64 * wt[4];
                                acc += r1[x1] as f64 * wt[5];
                                acc += r2[x1] as f64 * wt[6];
                                acc += r3[x1] as f64 * wt[7];
                                o[i * plane] = acc as f32;
                            }
                        }
                    }
                }
            }
            GridKind::General { theta, base } => {
                let mut idx = 0;
                for i in 0..ox {
                    for j in 0..oy {
                        for k in 0..oz {
                            let [x, y, z] = Self::coords(theta, base, self.in_shape, i, j, k);
                            let (tx, ty, tz) = (tap(x, nx), tap(y, ny), tap(z, nz));
                            let offs = [
                                tx.i0 * sx + ty.i0 * sy + tz.i0 * sz,
                                tx.i0 * sx + ty.i0 * sy + tz.i1 * sz,
                                tx.i0 * sx + ty.i1 * sy + tz.i0 * sz,
                                tx.i0 * sx + ty.i1 * sy + tz.i1 * sz,
                                tx.i1 * sx + ty.i0 * sy + tz.i0 * sz,
                                tx.i1 * sx + ty.i0 * sy + tz.i1 * sz,
                                tx.i1 * sx + ty.i1 * sy + tz.i0 * sz,
                                tx.i1 * sx + ty.i1 * sy + tz.i1 * sz,
                            ];
                            let w = [
                                tz.w0 * ty.w0 * tx.w0,
                                tz.w1 * ty.w0 * tx.w0,
                                tz.w0 * ty.w1 * tx.w0,
                                tz.w1 * ty.w1 * tx.w0,
                                tz.w0 * ty.w0 * tx.w1,
                                tz.w1 * ty.w0 * tx.w1,
                                tz.w0 * ty.w1 * tx.w1,
                                tz.w1 * ty.w1 * tx.w1,
                            ];
                            for ch in 0..c {
                                let s = &src[ch * in_vol..(ch + 1) * in_vol];
                                let mut acc = 0.0f64;
                                for t in 0..8 {
                                    acc += s[offs[t]] as f64 * w[t];
                                }
                                out[ch * out_vol + idx] = acc as f32;
                            }
                            idx += 1;
                        }
                    }
                }
            }
        }
        out
    }

    /// Nearest-neighbour resampling (round half to even, as std::nearbyint) into C order.
    fn nearest<T: Copy + Default>(&self, src: &[T], c: usize, layout: Layout) -> Vec<T> {
        let [nx, ny, nz] = self.in_shape;
        let [ox, oy, oz] = self.out_shape;
        let [sx, sy, sz] = strides(self.in_shape, layout);
        let (in_vol, out_vol) = (nx * ny * nz, ox * oy * oz);
        let mut out = vec![T::default(); c * out_vol];
        match &self.kind {
            GridKind::Separable(coords) => {
                let ix: Vec<usize> = coords[0]
                    .iter()
                    .map(|&x| nearest_index(x, nx) * sx)
                    .collect();
                let iy: Vec<usize> = coords[1]
                    .iter()
                    .map(|&x| nearest_index(x, ny) * sy)
                    .collect();
                let iz: Vec<usize> = coords[2]
                    .iter()
                    .map(|&x| nearest_index(x, nz) * sz)
                    .collect();
                for ch in 0..c {
                    let s = &src[ch * in_vol..(ch + 1) * in_vol];
                    let o = &mut out[ch * out_vol..(ch + 1) * out_vol];
                    for (j, &b) in iy.iter().enumerate() {
                        for (k, &cz) in iz.iter().enumerate() {
                            let row = &s[b + cz..];
                            let base = j * oz + k;
                            for (i, &a) in ix.iter().enumerate() {
                                o[i * oy * oz + base] = row[a];
                            }
                        }
                    }
                }
            }
            GridKind::General { theta, base } => {
                let mut idx = 0;
                for i in 0..ox {
                    for j in 0..oy {
                        for k in 0..oz {
                            let [x, y, z] = Self::coords(theta, base, self.in_shape, i, j, k);
                            let off = nearest_index(x, nx) * sx
                                + nearest_index(y, ny) * sy
                                + nearest_index(z, nz) * sz;
                            for ch in 0..c {
                                out[ch * out_vol + idx] = src[ch * in_vol + off];
                            }
                            idx += 1;
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_monai_rounding() {
        // 32 -> 16 at 2 mm (15.5 + 1 rounds to even), 155 -> 78, 14 -> 8 (7.5 -> 8).
        let s = Spacing {
            pixdim: [1.5, 1.5, 2.0],
            mode: SpacingModes::default(),
        };
        let p = s.plan(&linalg::IDENTITY, [48, 48, 32]).unwrap();
        assert_eq!(p.out_shape, [32, 32, 16]);
        let p = s.plan(&linalg::IDENTITY, [240, 240, 155]).unwrap();
        assert_eq!(p.out_shape, [160, 160, 78]);
        let p = s.plan(&linalg::IDENTITY, [96, 96, 14]).unwrap();
        assert_eq!(p.out_shape, [64, 64, 8]);
        let tiny = Spacing {
            pixdim: [0.001, 0.001, 0.001],
            mode: SpacingModes::default(),
        };
        assert!(
            tiny.plan(&linalg::IDENTITY, [240, 240, 155])
                .unwrap_err()
                .contains("exceeds")
        );
    }

    /// An output grid within the voxel cap whose buffers exceed the memory there is (a thousand
    /// channels resampled at 0.002 mm: terabytes) is refused, naming the case and the transform,
    /// before anything is allocated.
    #[test]
    fn an_output_larger_than_memory_is_refused() {
        let c = 1000;
        let case = Case {
            id: "BRATS_007".into(),
            image: Image::new([c, 3, 3, 3], vec![1.0; c * 27]),
            label: Some(Label::new([3, 3, 3], LabelData::Regions(vec![0; 27]))),
            affine: linalg::IDENTITY,
            channel_first: true,
        };
        let s = Spacing {
            pixdim: [0.002, 0.002, 0.002],
            mode: SpacingModes::default(),
        };
        let p = s.plan(&case.affine, [3, 3, 3]).unwrap();
        assert_eq!(p.out_shape, [1001, 1001, 1001]);
        let e = s.apply(case).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "case BRATS_007: transform `spacing`: the output grid [1001, 1001, 1001]"
            ),
            "{e}"
        );
        assert!(e.contains("TiB of memory, more than the"), "{e}");
    }

    /// Orientation then resampling back onto the original grid restores the labels exactly.
    #[test]
    fn resample_back_inverts_orientation() {
        use crate::testdata::monai_file;
        use crate::transforms::{CaseSource, ConvertLabels, EnsureChannelFirst, Load, Orientation};
        let src = CaseSource {
            id: "BRATS_101".into(),
            image: monai_file("inputs/synth_tiny_lps/imagesTr/BRATS_101.nii.gz"),
            label: Some(monai_file(
                "inputs/synth_tiny_lps/labelsTr/BRATS_101.nii.gz",
            )),
        };
        let mut case = ConvertLabels::default()
            .apply(
                EnsureChannelFirst::default()
                    .apply(Load::default().load(&src).unwrap())
                    .unwrap(),
            )
            .unwrap();
        case.to_c_order();
        let (orig_affine, orig) = (case.affine, case.clone());
        let ras = Orientation::default().apply(case).unwrap();
        assert_ne!(ras.affine, orig_affine);
        let LabelData::Regions(r) = &ras.label.as_ref().unwrap().data else {
            panic!()
        };
        let back = resample_labels_to(
            r,
            ras.image.spatial(),
            &ras.affine,
            orig.image.spatial(),
            &orig_affine,
        )
        .unwrap();
        let LabelData::Regions(want) = &orig.label.as_ref().unwrap().data else {
            panic!()
        };
        assert!(back == *want, "labels differ after orientation and back");
        let img = resample_image_to(
            &ras.image,
            &ras.affine,
            orig.image.spatial(),
            &orig_affine,
            InterpMode::Bilinear,
        )
        .unwrap();
        // Integer source coordinates up to torch's ~1e-16 noise: values agree to float32 rounding.
        let worst = img
            .data
            .iter()
            .zip(&orig.image.data)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "max relative difference {worst}");
    }

    #[test]
    fn linspace_matches_torch_formula_ends() {
        for n in [1usize, 2, 3, 16, 17, 33, 160] {
            let g = torch_base_grid(n);
            assert_eq!(g.len(), n);
            if n > 1 {
                let want0 = -((n - 1) as f64) / n as f64;
                assert_eq!(g[0], want0);
                assert_eq!(g[n - 1], -want0);
            }
        }
    }
}
