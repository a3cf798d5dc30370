//! Exact squared Euclidean distance transform of a 3-D volume in linear time, with anisotropic voxel
//! spacing: Felzenszwalb & Huttenlocher's lower envelope of parabolas ("Distance Transforms of
//! Sampled Functions", 2012), applied along Z, then Y, then X. Each pass is independent per line,
//! so the lines of a pass are split over threads.

use std::num::NonZeroUsize;

/// Below this many voxels a transform runs on the calling thread: spawning costs more than it saves.
const PARALLEL_MIN_VOXELS: usize = 1 << 16;

/// Squared distance, in the units of `spacing` squared (mm²), from every voxel of a C-order
/// `(X, Y, Z)` volume to the nearest voxel where `feature` is true. Every value is
/// `f64::INFINITY` when there is no feature voxel. `feature.len()` must be the product of `shape`.
pub fn squared_edt(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let threads = if feature.len() < PARALLEL_MIN_VOXELS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
    };
    squared_edt_with(feature, shape, spacing, threads)
}

/// [`squared_edt`] on at most `threads` threads.
fn squared_edt_with(
    feature: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
    threads: usize,
) -> Vec<f64> {
    debug_assert_eq!(feature.len(), shape.iter().product::<usize>());
    let [nx, ny, nz] = shape;
    let mut d: Vec<f64> = feature
        .iter()
        .map(|&f| if f { 0.0 } else { f64::INFINITY })
        .collect();
    if d.is_empty() {
        return d;
    }
    // Z, then Y: a 2-D transform of each X slab; slabs are contiguous, so threads own whole ones.
    let slab = ny * nz;
    let per = nx.div_ceil(threads.clamp(1, nx)) * slab;
    std::thread::scope(|scope| {
        let mut chunks = d.chunks_mut(per);
        let first = chunks.next();
        for chunk in chunks {
            scope.spawn(move || slabs_2d(chunk, ny, nz, spacing));
        }
        if let Some(chunk) = first {
            slabs_2d(chunk, ny, nz, spacing);
        }
    });
    // X: lines that cross every slab. Each thread takes a range of Y, gathers one (X, Z) plane at a
    // time (rows of Z are contiguous), transforms its Z lines and keeps the result; the results are
    // copied back once all are done, so no two threads write the same memory.
    let per_y = ny.div_ceil(threads.clamp(1, ny));
    let src: &[f64] = &d;
    let results: Vec<(usize, Vec<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ny)
            .step_by(per_y)
            .map(|y0| {
                let y1 = (y0 + per_y).min(ny);
                scope.spawn(move || (y0, x_pass(src, shape, y0..y1, spacing[0])))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (y0, buf) in results {
        // `buf` is (y - y0, x, z).
        for (k, plane) in buf.chunks_exact(nx * nz).enumerate() {
            let y = y0 + k;
            for x in 0..nx {
                let at = (x * ny + y) * nz;
                d[at..at + nz].copy_from_slice(&plane[x * nz..(x + 1) * nz]);
            }
        }
    }
    d
}

/// The Z and Y passes of consecutive X slabs (`(Y, Z)` each, C order).
fn slabs_2d(slabs: &mut [f64], ny: usize, nz: usize, spacing: [f64; 3]) {
    let mut env = Envelope::default();
    let mut out = vec![0.0; ny.max(nz)];
    let mut plane = vec![0.0; ny * nz];
    for slab in slabs.chunks_exact_mut(ny * nz) {
        for row in slab.chunks_exact_mut(nz) {
            env.transform(row, &mut out[..nz], spacing[2]);
            row.copy_from_slice(&out[..nz]);
        }
        // (Y, Z) → (Z, Y), so each Y line is contiguous.
        for y in 0..ny {
            for z in 0..nz {
                plane[z * ny + y] = slab[y * nz + z];
            }
        }
        for z in 0..nz {
            env.transform(&plane[z * ny..(z + 1) * ny], &mut out[..ny], spacing[1]);
            for y in 0..ny {
                slab[y * nz + z] = out[y];
            }
        }
    }
}

/// The X pass of the Y range `ys`: the transformed values as `(y - ys.start, x, z)`.
fn x_pass(d: &[f64], shape: [usize; 3], ys: std::ops::Range<usize>, spacing: f64) -> Vec<f64> {
    let [nx, ny, nz] = shape;
    let mut env = Envelope::default();
    let mut out = vec![0.0; nx];
    let mut plane = vec![0.0; nx * nz];
    let mut buf = vec![0.0; ys.len() * nx * nz];
    for (k, y) in ys.enumerate() {
        // (X, Z) of this Y → (Z, X), so each X line is contiguous.
        for x in 0..nx {
            let row = &d[(x * ny + y) * nz..(x * ny + y + 1) * nz];
            for (z, &v) in row.iter().enumerate() {
                plane[z * nx + x] = v;
            }
        }
        let dst = &mut buf[k * nx * nz..(k + 1) * nx * nz];
        for z in 0..nz {
            env.transform(&plane[z * nx..(z + 1) * nx], &mut out, spacing);
            for x in 0..nx {
                dst[x * nz + z] = out[x];
            }
        }
    }
    buf
}

/// The lower envelope of one line's parabolas; its buffers are reused across lines.
#[derive(Default)]
struct Envelope {
    /// Positions of the parabolas in the lower envelope.
    v: Vec<usize>,
    /// Left boundary of each envelope parabola (`z[k]` for `v[k]`).
    z: Vec<f64>,
}

impl Envelope {
    /// `out[i] = min_q ((i - q) * spacing)² + f[q]`; infinite `f` values are no parabola at all,
    /// and a line without any finite value stays infinite.
    fn transform(&mut self, f: &[f64], out: &mut [f64], spacing: f64) {
        let (v, z) = (&mut self.v, &mut self.z);
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
            out.fill(f64::INFINITY);
            return;
        }
        let mut k = 0;
        for i in 0..f.len() {
            let p = i as f64 * spacing;
            while k + 1 < v.len() && z[k + 1] < p {
                k += 1;
            }
            let dp = p - v[k] as f64 * spacing;
            out[i] = dp * dp + f[v[k]];
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
        let shape = [23, 17, 9];
        let n: usize = shape.iter().product();
        let mut rng = crate::Rng::new(3);
        let f: Vec<bool> = (0..n).map(|_| rng.next_f64() < 0.01).collect();
        let one = squared_edt_with(&f, shape, [1.0, 1.2, 2.0], 1);
        let want = brute(&f, shape, [1.0, 1.2, 2.0]);
        assert!(one.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-9));
        for threads in [2, 3, 5, 64] {
            let got = squared_edt_with(&f, shape, [1.0, 1.2, 2.0], threads);
            // Bit for bit: each line is transformed by the same code whatever thread takes it.
            assert!(got == one, "{threads} threads differ from one");
        }
    }
}
