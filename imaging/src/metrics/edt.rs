//! Exact squared Euclidean distance transform of a 3-D volume in linear time, with anisotropic voxel
//! spacing: Felzenszwalb & Huttenlocher's lower envelope of parabolas ("Distance Transforms of
//! Sampled Functions", 2012), applied along Z, then Y, then X. Each pass is independent per line,
//! so the lines of a pass are split over threads.

use std::num::NonZeroUsize;

/// Below this many voxels a pass runs on the calling thread: spawning costs more than it saves.
const PARALLEL_MIN_VOXELS: usize = 1 << 16;

/// Squared distance, in the units of `spacing` squared (mm²), from every voxel of a C-order
/// `(X, Y, Z)` volume to the nearest voxel where `feature` is true. Every value is
/// `f64::INFINITY` when there is no feature voxel. `feature.len()` must be the product of `shape`.
pub fn squared_edt(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    debug_assert_eq!(feature.len(), shape.iter().product::<usize>());
    let mut d: Vec<f64> = feature
        .iter()
        .map(|&f| if f { 0.0 } else { f64::INFINITY })
        .collect();
    for axis in [2, 1, 0] {
        pass(&mut d, shape, axis, spacing[axis]);
    }
    d
}

/// Where the lines along `axis` lie in a C-order volume: (number of lines, line length, stride
/// between a line's voxels, the first voxel of line `l`).
fn lines(shape: [usize; 3], axis: usize) -> (usize, usize, usize, impl Fn(usize) -> usize) {
    let [_, ny, nz] = shape;
    let n = shape[axis];
    let count = shape.iter().product::<usize>() / n.max(1);
    let stride = [ny * nz, nz, 1][axis];
    let start = move |l: usize| match axis {
        // l = x * ny + y
        2 => l * nz,
        // l = x * nz + z
        1 => (l / nz) * ny * nz + l % nz,
        // l = y * nz + z
        _ => l,
    };
    (count, n, stride, start)
}

/// One separable pass along `axis`: each line becomes its 1-D transform.
fn pass(d: &mut [f64], shape: [usize; 3], axis: usize, spacing: f64) {
    let (count, n, stride, start) = lines(shape, axis);
    if count == 0 || n == 0 {
        return;
    }
    let threads = std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
        .min(count);
    if threads <= 1 || d.len() < PARALLEL_MIN_VOXELS {
        let mut scratch = Scratch::new(n);
        for l in 0..count {
            let s = start(l);
            for i in 0..n {
                scratch.f[i] = d[s + i * stride];
            }
            scratch.transform(spacing);
            for i in 0..n {
                d[s + i * stride] = scratch.out[i];
            }
        }
        return;
    }
    // Each thread transforms a range of lines into its own buffer, read from the shared volume;
    // the buffers are written back once all are done, so no two threads touch the same memory.
    let per = count.div_ceil(threads);
    let src: &[f64] = d;
    let results: Vec<(usize, Vec<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(per)
            .map(|first| {
                let last = (first + per).min(count);
                let start = &start;
                scope.spawn(move || {
                    let mut scratch = Scratch::new(n);
                    let mut buf = Vec::with_capacity((last - first) * n);
                    for l in first..last {
                        let s = start(l);
                        for i in 0..n {
                            scratch.f[i] = src[s + i * stride];
                        }
                        scratch.transform(spacing);
                        buf.extend_from_slice(&scratch.out);
                    }
                    (first, buf)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (first, buf) in results {
        for (k, line) in buf.chunks_exact(n).enumerate() {
            let s = start(first + k);
            for (i, &v) in line.iter().enumerate() {
                d[s + i * stride] = v;
            }
        }
    }
}

/// The buffers of the 1-D transform of one line, reused across lines.
struct Scratch {
    f: Vec<f64>,
    out: Vec<f64>,
    /// Positions of the parabolas in the lower envelope.
    v: Vec<usize>,
    /// Left boundary of each envelope parabola (`z[k]` for `v[k]`).
    z: Vec<f64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            f: vec![0.0; n],
            out: vec![0.0; n],
            v: Vec::with_capacity(n),
            z: Vec::with_capacity(n),
        }
    }

    /// `out[i] = min_q ((i - q) * spacing)² + f[q]`; infinite `f` values are no parabola at all,
    /// and a line without any finite value stays infinite.
    fn transform(&mut self, spacing: f64) {
        let (f, v, z) = (&self.f, &mut self.v, &mut self.z);
        v.clear();
        z.clear();
        for q in 0..f.len() {
            if !f[q].is_finite() {
                continue;
            }
            let pq = q as f64 * spacing;
            let hq = f[q] + pq * pq;
            loop {
                let Some(&r) = v.last() else {
                    v.push(q);
                    z.push(f64::NEG_INFINITY);
                    break;
                };
                let pr = r as f64 * spacing;
                // Where parabola q starts to lie below parabola r.
                let x = (hq - (f[r] + pr * pr)) / (2.0 * (pq - pr));
                if z.last().is_some_and(|&zl| x <= zl) {
                    v.pop();
                    z.pop();
                } else {
                    v.push(q);
                    z.push(x);
                    break;
                }
            }
        }
        if v.is_empty() {
            self.out.fill(f64::INFINITY);
            return;
        }
        let mut k = 0;
        for i in 0..f.len() {
            let p = i as f64 * spacing;
            while k + 1 < v.len() && z[k + 1] < p {
                k += 1;
            }
            let dp = p - v[k] as f64 * spacing;
            self.out[i] = dp * dp + f[v[k]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, by brute force over every pair of voxels.
    fn brute(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
        let [nx, ny, nz] = shape;
        let idx = |x, y, z| (x * ny + y) * nz + z;
        let mut out = vec![f64::INFINITY; feature.len()];
        for x in 0..nx {
            for y in 0..ny {
                for z in 0..nz {
                    for a in 0..nx {
                        for b in 0..ny {
                            for c in 0..nz {
                                if feature[idx(a, b, c)] {
                                    let d = [
                                        (x as f64 - a as f64) * spacing[0],
                                        (y as f64 - b as f64) * spacing[1],
                                        (z as f64 - c as f64) * spacing[2],
                                    ];
                                    let s = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
                                    let o = &mut out[idx(x, y, z)];
                                    *o = o.min(s);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn one_voxel_gives_squared_anisotropic_distances() {
        let shape = [3, 4, 5];
        let mut f = vec![false; 60];
        f[(4 + 2) * 5 + 3] = true; // (1, 2, 3)
        let d = squared_edt(&f, shape, [2.0, 1.0, 0.5]);
        // (0, 0, 0): dx = 1 voxel * 2 mm, dy = 2 * 1 mm, dz = 3 * 0.5 mm.
        assert_eq!(d[0], 4.0 + 4.0 + 2.25);
        assert_eq!(d[(4 + 2) * 5 + 3], 0.0);
        assert_eq!(d[(2 * 4 + 3) * 5 + 4], 4.0 + 1.0 + 0.25);
    }

    #[test]
    fn no_feature_is_infinite_everywhere() {
        let d = squared_edt(&[false; 24], [2, 3, 4], [1.0; 3]);
        assert!(d.iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn matches_brute_force_on_random_features() {
        let mut rng = crate::Rng::new(7);
        for (shape, spacing, density) in [
            ([7, 5, 6], [1.0, 1.0, 1.0], 0.05),
            ([6, 9, 4], [0.7, 1.3, 2.5], 0.02),
            ([5, 5, 11], [3.0, 0.5, 1.1], 0.3),
            ([1, 8, 3], [1.0, 2.0, 1.0], 0.1),
        ] {
            let n = shape.iter().product();
            let f: Vec<bool> = (0..n).map(|_| rng.next_f64() < density).collect();
            let want = brute(&f, shape, spacing);
            let got = squared_edt(&f, shape, spacing);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g.is_infinite() && w.is_infinite()) || (g - w).abs() < 1e-9,
                    "{shape:?} {spacing:?} voxel {i}: {g} != {w}"
                );
            }
        }
    }

    #[test]
    fn threads_give_the_same_volume_as_one() {
        // Large enough to take the threaded path.
        let shape = [48, 40, 36];
        let n: usize = shape.iter().product();
        assert!(n >= PARALLEL_MIN_VOXELS);
        let mut rng = crate::Rng::new(3);
        let f: Vec<bool> = (0..n).map(|_| rng.next_f64() < 0.001).collect();
        let got = squared_edt(&f, shape, [1.0, 1.2, 2.0]);
        let mut one = f
            .iter()
            .map(|&b| if b { 0.0 } else { f64::INFINITY })
            .collect::<Vec<_>>();
        let mut scratch = Scratch::new(0);
        for axis in [2, 1, 0] {
            let (count, len, stride, start) = lines(shape, axis);
            scratch.f.resize(len, 0.0);
            scratch.out.resize(len, 0.0);
            for l in 0..count {
                let s = start(l);
                for i in 0..len {
                    scratch.f[i] = one[s + i * stride];
                }
                scratch.transform([1.0, 1.2, 2.0][axis]);
                for i in 0..len {
                    one[s + i * stride] = scratch.out[i];
                }
            }
        }
        assert_eq!(got, one);
    }
}
