//! Segmentation metrics of one binary 3-D region, with MONAI 1.6.1's semantics: Dice
//! (`DiceMetric`) and the percentile Hausdorff distance (`HausdorffDistanceMetric(percentile=95,
//! distance_metric="euclidean")`) in millimetres. `tests/data/metrics` holds MONAI's outputs on
//! fixture volumes; the `metrics::parity` test compares against them.
//!
//! Masks are C-order `(X, Y, Z)` (Z fastest) boolean volumes, as labels everywhere in this crate;
//! `spacing` is the voxel size in mm along X, Y, Z.
//!
//! ## Surface distances, as MONAI computes them
//! - A region's surface is its edge voxels: the mask minus its binary erosion by the 6-connected
//!   cross (scipy's default structure), with everything outside the volume counted as background,
//!   so a region touching the border has its border voxels on the surface.
//! - Each direction (prediction → label, label → prediction) gives one distance per edge voxel of
//!   its source: the Euclidean distance in mm to the nearest edge voxel of the other surface.
//!   MONAI finds it with a KD-tree over the edge voxels; here an exact distance transform
//!   ([`edt::squared_edt`], linear time) of the target surface over the bounding box of both masks
//!   gives the same numbers, since every target voxel lies inside that box.
//! - The percentile of each direction is taken on its own (torch's `quantile`, linear
//!   interpolation) and the larger of the two is the result (not the percentile of both lists
//!   together).
//!
//! ## Empty regions
//! - Dice: an empty label gives NaN (MONAI's default `ignore_empty=True`), whatever the prediction;
//!   so a mean over cases skips it, as MONAI's `nanmean` reduction does. We keep it rather than
//!   score 1 or 0: an empty label says nothing about how well the region is found.
//! - Hausdorff: both empty gives NaN. Exactly one empty gives `+inf` distances from or to the
//!   empty surface; their maximum is `+inf`, but a percentile of them is NaN in MONAI (torch's
//!   `quantile` interpolates `inf - inf`), and so it is here: an HD95 with one side empty is NaN,
//!   skipped by a NaN-mean over cases. [`RegionScore`]'s voxel counts tell the cases apart; callers
//!   that print or serialize a NaN say which side was empty.

pub mod edt;
#[cfg(test)]
mod parity;

use crate::ImagingError;

/// The percentile MONAI's evaluation of BraTS-like data uses, and `wf predict --label` reports.
pub const HD_PERCENTILE: f64 = 95.0;

/// Dice and HD95 of one region, with the voxel counts that explain a NaN or an infinity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionScore {
    /// `2 |P ∩ L| / (|P| + |L|)`; NaN when the label is empty.
    pub dice: f64,
    /// The 95th-percentile symmetric Hausdorff distance in mm; NaN when either mask is empty.
    pub hd95: f64,
    pub pred_voxels: usize,
    pub label_voxels: usize,
}

fn check(pred: &[bool], label: &[bool], shape: [usize; 3]) -> Result<(), ImagingError> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| ImagingError::Metric {
            what: "shape",
            reason: format!("{shape:?} overflows"),
        })?;
    for (what, m) in [("prediction", pred), ("label", label)] {
        if m.len() != n {
            return Err(ImagingError::Metric {
                what,
                reason: format!("{} voxels for a {shape:?} grid ({n} voxels)", m.len()),
            });
        }
    }
    Ok(())
}

/// MONAI's `DiceMetric` on one binary region: `2 |P ∩ L| / (|P| + |L|)`, NaN when `label` is
/// empty (see the module's notes on empty regions).
pub fn dice(pred: &[bool], label: &[bool]) -> Result<f64, ImagingError> {
    if pred.len() != label.len() {
        return Err(ImagingError::Metric {
            what: "prediction",
            reason: format!("{} voxels, the label {}", pred.len(), label.len()),
        });
    }
    let (mut p, mut l, mut both) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(label) {
        p += a as usize;
        l += b as usize;
        both += (a && b) as usize;
    }
    if l == 0 {
        return Ok(f64::NAN);
    }
    Ok(2.0 * both as f64 / (p + l) as f64)
}

/// The symmetric Hausdorff distance in mm between the surfaces of `pred` and `label`: the maximum
/// of the two directed `percentile`s (0–100), or of the two directed maxima with `None`. NaN when
/// both masks are empty; when exactly one is, `+inf` for the maximum and NaN for a percentile, as
/// MONAI.
pub fn hausdorff(
    pred: &[bool],
    label: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
    percentile: Option<f64>,
) -> Result<f64, ImagingError> {
    check(pred, label, shape)?;
    if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(ImagingError::Metric {
            what: "spacing",
            reason: format!("{spacing:?}: {s} is not a positive finite size in mm"),
        });
    }
    if let Some(p) = percentile.filter(|p| !(0.0..=100.0).contains(p)) {
        return Err(ImagingError::Metric {
            what: "percentile",
            reason: format!("{p} is not in [0, 100]"),
        });
    }
    let Some((lo, hi)) = union_bbox(pred, label, shape) else {
        return Ok(f64::NAN);
    };
    let (pred_any, label_any) = (pred.contains(&true), label.contains(&true));
    if !(pred_any && label_any) {
        return Ok(if percentile.is_some() {
            f64::NAN
        } else {
            f64::INFINITY
        });
    }
    let bshape = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let (ep, el) = (
        edges(pred, shape, lo, bshape),
        edges(label, shape, lo, bshape),
    );
    let to_label = directed(&ep, &el, bshape, spacing);
    let to_pred = directed(&el, &ep, bshape, spacing);
    Ok(summary(to_label, percentile).max(summary(to_pred, percentile)))
}

/// [`hausdorff`] at the 95th percentile.
pub fn hd95(
    pred: &[bool],
    label: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<f64, ImagingError> {
    hausdorff(pred, label, shape, spacing, Some(HD_PERCENTILE))
}

/// Dice, HD95 and the voxel counts of one region.
pub fn score(
    pred: &[bool],
    label: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<RegionScore, ImagingError> {
    let hd95 = hd95(pred, label, shape, spacing)?;
    Ok(RegionScore {
        dice: dice(pred, label)?,
        hd95,
        pred_voxels: pred.iter().filter(|&&b| b).count(),
        label_voxels: label.iter().filter(|&&b| b).count(),
    })
}

/// The half-open bounding box `[lo, hi)` of the voxels set in either mask; `None` when both are
/// empty.
fn union_bbox(a: &[bool], b: &[bool], shape: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let [_, ny, nz] = shape;
    let mut lo = shape;
    let mut hi = [0; 3];
    for (i, (&p, &q)) in a.iter().zip(b).enumerate() {
        if p || q {
            let c = [i / (ny * nz), (i / nz) % ny, i % nz];
            for k in 0..3 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k] + 1);
            }
        }
    }
    (hi[0] > 0).then_some((lo, hi))
}

/// The edge voxels of `mask` inside the box at `lo` of size `bshape`: set voxels with at least one
/// of their six face neighbours unset or outside the volume. The box holds every set voxel, so a
/// neighbour outside the box is background either way.
fn edges(mask: &[bool], shape: [usize; 3], lo: [usize; 3], bshape: [usize; 3]) -> Vec<bool> {
    let [_, ny, nz] = shape;
    let [bx, by, bz] = bshape;
    let at = |x: usize, y: usize, z: usize| mask[((lo[0] + x) * ny + lo[1] + y) * nz + lo[2] + z];
    let mut out = vec![false; bx * by * bz];
    for x in 0..bx {
        for y in 0..by {
            for z in 0..bz {
                if !at(x, y, z) {
                    continue;
                }
                let interior = x > 0
                    && x + 1 < bx
                    && y > 0
                    && y + 1 < by
                    && z > 0
                    && z + 1 < bz
                    && at(x - 1, y, z)
                    && at(x + 1, y, z)
                    && at(x, y - 1, z)
                    && at(x, y + 1, z)
                    && at(x, y, z - 1)
                    && at(x, y, z + 1);
                out[(x * by + y) * bz + z] = !interior;
            }
        }
    }
    out
}

/// The distance in mm from each `from` voxel to the nearest `to` voxel.
fn directed(from: &[bool], to: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let d2 = edt::squared_edt(to, shape, spacing);
    from.iter()
        .zip(&d2)
        .filter(|(f, _)| **f)
        .map(|(_, d)| d.sqrt())
        .collect()
}

/// The maximum, or torch's `quantile(q / 100)` with linear interpolation, of non-empty distances.
fn summary(mut d: Vec<f64>, percentile: Option<f64>) -> f64 {
    d.sort_unstable_by(f64::total_cmp);
    let Some(p) = percentile else {
        return d.last().copied().unwrap_or(f64::NAN);
    };
    if d.is_empty() {
        return f64::NAN;
    }
    let pos = p / 100.0 * (d.len() - 1) as f64;
    let (i, w) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(d.len() - 1);
    d[i] + (d[j] - d[i]) * w
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: [usize; 3] = [10, 9, 8];

    fn vol(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> bool) -> Vec<bool> {
        let mut v = Vec::new();
        for x in 0..shape[0] {
            for y in 0..shape[1] {
                for z in 0..shape[2] {
                    v.push(f(x, y, z));
                }
            }
        }
        v
    }

    fn cube(shape: [usize; 3], lo: [usize; 3], side: usize) -> Vec<bool> {
        vol(shape, |x, y, z| {
            (lo[0]..lo[0] + side).contains(&x)
                && (lo[1]..lo[1] + side).contains(&y)
                && (lo[2]..lo[2] + side).contains(&z)
        })
    }

    #[test]
    fn dice_counts_overlap_and_is_nan_without_label() {
        let p = [true, true, false, false, true];
        let l = [true, false, true, false, true];
        // 2 * 2 / (3 + 3)
        assert!((dice(&p, &l).unwrap() - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(dice(&l, &l).unwrap(), 1.0);
        assert_eq!(dice(&[false, true], &[true, false]).unwrap(), 0.0);
        assert!(dice(&p, &[false; 5]).unwrap().is_nan());
        assert!(dice(&[false; 5], &[false; 5]).unwrap().is_nan());
        assert!(dice(&p, &[true; 4]).is_err());
    }

    #[test]
    fn one_voxel_regions_are_their_distance_apart() {
        let a = vol(S, |x, y, z| (x, y, z) == (1, 2, 3));
        let b = vol(S, |x, y, z| (x, y, z) == (4, 6, 3));
        assert_eq!(hd95(&a, &b, S, [1.0; 3]).unwrap(), 5.0);
        // Spacing scales each axis: sqrt((3 * 2)^2 + (4 * 0.5)^2).
        let hd = hd95(&a, &b, S, [2.0, 0.5, 7.0]).unwrap();
        assert!((hd - 40f64.sqrt()).abs() < 1e-12, "{hd}");
        assert_eq!(hd95(&a, &a, S, [1.0; 3]).unwrap(), 0.0);
    }

    #[test]
    fn cubes_offset_by_k_voxels_are_k_spacings_apart() {
        // Every surface voxel of one cube has its twin k voxels along X on the other surface, and
        // the far faces' voxels have nothing closer, so the maximum is exactly k spacings.
        for k in 1..4 {
            let a = cube(S, [1, 2, 2], 4);
            let b = cube(S, [1 + k, 2, 2], 4);
            for sx in [1.0, 2.5] {
                let hd = hausdorff(&a, &b, S, [sx, 1.0, 1.0], None).unwrap();
                assert!((hd - k as f64 * sx).abs() < 1e-12, "k {k}: {hd}");
                let hd95 = hd95(&a, &b, S, [sx, 1.0, 1.0]).unwrap();
                assert!(hd95 <= hd + 1e-12 && hd95 > 0.0, "k {k}: {hd95}");
            }
        }
    }

    #[test]
    fn percentile_interpolates_like_torch_quantile() {
        // 20 distances 0..19: torch.quantile(q=0.95) = 18.05.
        let d: Vec<f64> = (0..20).map(f64::from).collect();
        assert!((summary(d.clone(), Some(95.0)) - 18.05).abs() < 1e-12);
        assert_eq!(summary(d.clone(), None), 19.0);
        assert_eq!(summary(d, Some(50.0)), 9.5);
        assert!(summary(vec![], Some(95.0)).is_nan());
    }

    #[test]
    fn the_larger_directed_percentile_wins() {
        // A one-voxel label inside a large prediction: label → prediction is short, prediction's
        // far surface → label is long, and decides.
        let shape = [12, 12, 12];
        let p = cube(shape, [2, 2, 2], 8);
        let l = vol(shape, |x, y, z| (x, y, z) == (2, 2, 2));
        let hd = hausdorff(&p, &l, shape, [1.0; 3], None).unwrap();
        assert!((hd - (3.0f64 * 49.0).sqrt()).abs() < 1e-12, "{hd}");
        let hd_rev = hausdorff(&l, &p, shape, [1.0; 3], None).unwrap();
        assert_eq!(hd, hd_rev);
    }

    #[test]
    fn interior_voxels_are_not_surface() {
        // A 5^3 cube and its 3^3 core shifted away: were the cube's interior counted, the core's
        // voxels would find a partner at distance 0.
        let e = edges(&cube(S, [0, 0, 0], 5), S, [0, 0, 0], [5, 5, 5]);
        assert_eq!(e.iter().filter(|&&b| b).count(), 125 - 27);
        // Border voxels of the volume are surface even where the mask fills the volume.
        let full = vec![true; 27];
        assert!(
            edges(&full, [3, 3, 3], [0; 3], [3, 3, 3])
                .iter()
                .filter(|&&b| !b)
                .count()
                == 1
        );
    }

    #[test]
    fn empty_regions_give_nan_or_infinity() {
        let e = vec![false; S.iter().product()];
        let a = cube(S, [1, 1, 1], 3);
        assert!(hd95(&e, &e, S, [1.0; 3]).unwrap().is_nan());
        assert!(hausdorff(&e, &e, S, [1.0; 3], None).unwrap().is_nan());
        for (p, l) in [(&a, &e), (&e, &a)] {
            assert!(hd95(p, l, S, [1.0; 3]).unwrap().is_nan());
            assert_eq!(hausdorff(p, l, S, [1.0; 3], None).unwrap(), f64::INFINITY);
        }
        let s = score(&e, &a, S, [1.0; 3]).unwrap();
        assert_eq!((s.dice, s.pred_voxels, s.label_voxels), (0.0, 0, 27));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let a = cube(S, [1, 1, 1], 3);
        for (spacing, pct, short) in [
            ([0.0, 1.0, 1.0], Some(95.0), false),
            ([1.0, f64::NAN, 1.0], Some(95.0), false),
            ([1.0; 3], Some(101.0), false),
            ([1.0; 3], Some(95.0), true),
        ] {
            let b = if short { a[1..].to_vec() } else { a.clone() };
            assert!(hausdorff(&a, &b, S, spacing, pct).is_err());
        }
        assert!(hausdorff(&[], &[], [usize::MAX, 2, 2], [1.0; 3], None).is_err());
    }
}
