//! Nearest-neighbour resampling of a label volume from one voxel grid to another through their
//! affines (voxel → world mm): how `wf predict` puts a segmentation computed on the preprocessed
//! grid (after spacing and orientation) back onto the input image's grid.

use crate::transforms::Affine;
use crate::transforms::linalg::solve4;

/// Resamples `src` (C order, shape `src_shape`, Z fastest) onto the grid of `dst_shape` /
/// `dst_affine`: each destination voxel takes the value of the source voxel nearest to the same
/// world point, or 0 outside the source. `None` when `src_affine` is singular.
pub fn resample_nearest_u8(
    src: &[u8],
    src_shape: [usize; 3],
    src_affine: &Affine,
    dst_shape: [usize; 3],
    dst_affine: &Affine,
) -> Option<Vec<u8>> {
    assert_eq!(src.len(), src_shape.iter().product::<usize>());
    // dst voxel → world → src voxel.
    let m = solve4(src_affine, dst_affine)?;
    let mut out = vec![0u8; dst_shape.iter().product()];
    let [sx, sy, sz] = src_shape.map(|s| s as f64);
    let mut o = 0;
    for i in 0..dst_shape[0] {
        for j in 0..dst_shape[1] {
            let (fi, fj) = (i as f64, j as f64);
            let base: [f64; 3] = std::array::from_fn(|r| m[r][0] * fi + m[r][1] * fj + m[r][3]);
            for k in 0..dst_shape[2] {
                let fk = k as f64;
                let p: [f64; 3] = std::array::from_fn(|r| (base[r] + m[r][2] * fk).round());
                if p[0] >= 0.0 && p[1] >= 0.0 && p[2] >= 0.0 && p[0] < sx && p[1] < sy && p[2] < sz
                {
                    let idx = ((p[0] as usize) * src_shape[1] + p[1] as usize) * src_shape[2]
                        + p[2] as usize;
                    out[o] = src[idx];
                }
                o += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(s: [f64; 3], t: [f64; 3]) -> Affine {
        [
            [s[0], 0.0, 0.0, t[0]],
            [0.0, s[1], 0.0, t[1]],
            [0.0, 0.0, s[2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn identity_grid_is_a_copy() {
        let src: Vec<u8> = (0..24).collect();
        let a = diag([1.0, 2.0, 3.0], [5.0, -1.0, 0.5]);
        assert_eq!(
            resample_nearest_u8(&src, [2, 3, 4], &a, [2, 3, 4], &a).unwrap(),
            src
        );
    }

    #[test]
    fn flipped_axis_and_coarser_source_map_back() {
        // Source: 2 mm voxels along x, flipped (x decreasing in world); destination: 1 mm voxels.
        let src = vec![1u8, 2, 3];
        let src_aff = diag([-2.0, 1.0, 1.0], [4.0, 0.0, 0.0]); // world x = 4 - 2i: 4, 2, 0
        let dst_aff = diag([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]); // world x = i
        let out = resample_nearest_u8(&src, [3, 1, 1], &src_aff, [6, 1, 1], &dst_aff).unwrap();
        // world 0 → src 2 (3); 1 → src 1.5 rounds to 2 (3); 2 → src 1 (2); 3 → 0.5 → 1 (2 ... rounds away from 0);
        // 4 → src 0 (1); 5 → src -0.5 → -1 → outside (0).
        assert_eq!(out, vec![3, 3, 2, 2, 1, 0]);
    }

    #[test]
    fn singular_source_affine_is_refused() {
        let z = [[0.0; 4]; 4];
        assert!(resample_nearest_u8(&[0], [1, 1, 1], &z, [1, 1, 1], &z).is_none());
    }
}
