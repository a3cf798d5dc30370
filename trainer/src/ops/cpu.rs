//! CPU kernels of the 3D convolution primitives: vol2col / col2vol plus GEMM, threaded with rayon.
//!
//! All three primitives share one geometry: a convolution from a "big" volume (its input) to a
//! "small" volume (its output). A transposed convolution is the data-gradient primitive run forward.

use rayon::prelude::*;

/// Geometry of a convolution, resolved: every size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    /// Spatial size of the convolution's input (the transposed convolution's output).
    pub big: [usize; 3],
    /// Spatial size of the convolution's output (the transposed convolution's input).
    pub small: [usize; 3],
}

impl Geom {
    pub fn kvol(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn big_vol(&self) -> usize {
        self.big.iter().product()
    }
    pub fn small_vol(&self) -> usize {
        self.small.iter().product()
    }
    /// A 1x1x1 kernel with unit stride and no padding reads the input as it is: no vol2col needed.
    fn is_pointwise(&self) -> bool {
        self.kvol() == 1
            && self.stride == [1, 1, 1]
            && self.padding == [0, 0, 0]
            && self.big == self.small
    }
}

/// For one kernel offset along one axis: the range of output positions whose input position
/// `o * s - p + k * d` lies inside `[0, size)`, so inner loops run without bounds checks.
#[inline]
fn valid_range(out: usize, size: usize, s: usize, p: usize, kd: usize) -> (usize, usize) {
    // lo = smallest o with o*s + kd >= p; hi = smallest o with o*s + kd >= size + p.
    let lo = if kd >= p { 0 } else { (p - kd).div_ceil(s) };
    let hi = if size + p <= kd {
        0
    } else {
        (size + p - kd).div_ceil(s)
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Row `r` of the column matrix (one input channel and one kernel offset) for one sample.
fn fill_row(g: &Geom, x_c: &[f32], kd: [usize; 3], row: &mut [f32]) {
    let [sd, sh, sw] = g.small;
    let [bd, bh, bw] = g.big;
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let koff = [kd[0] * d[0], kd[1] * d[1], kd[2] * d[2]];
    let (d0, d1) = valid_range(sd, bd, s[0], p[0], koff[0]);
    let (h0, h1) = valid_range(sh, bh, s[1], p[1], koff[1]);
    let (w0, w1) = valid_range(sw, bw, s[2], p[2], koff[2]);
    row.fill(0.0);
    for od in d0..d1 {
        let id = od * s[0] + koff[0] - p[0];
        for oh in h0..h1 {
            let ih = oh * s[1] + koff[1] - p[1];
            let src = &x_c[(id * bh + ih) * bw..(id * bh + ih + 1) * bw];
            let dst = &mut row[(od * sh + oh) * sw..(od * sh + oh + 1) * sw];
            if s[2] == 1 {
                let start = w0 + koff[2] - p[2];
                dst[w0..w1].copy_from_slice(&src[start..start + (w1 - w0)]);
            } else {
                for ow in w0..w1 {
                    dst[ow] = src[ow * s[2] + koff[2] - p[2]];
                }
            }
        }
    }
}

fn kernel_offsets(g: &Geom, r: usize) -> (usize, [usize; 3]) {
    let [_, kh, kw] = g.kernel;
    let kv = g.kvol();
    let c = r / kv;
    let k = r % kv;
    (c, [k / (kh * kw), (k / kw) % kh, k % kw])
}

/// col[(c*K + k), o] = x[c, pos(o, k)] (zero outside): one sample, `cin` channels.
fn vol2col(g: &Geom, x: &[f32], cin: usize, col: &mut [f32]) {
    let (bv, sv) = (g.big_vol(), g.small_vol());
    debug_assert_eq!(col.len(), cin * g.kvol() * sv);
    col.par_chunks_mut(sv).enumerate().for_each(|(r, row)| {
        let (c, kd) = kernel_offsets(g, r);
        fill_row(g, &x[c * bv..(c + 1) * bv], kd, row);
    });
}

/// The adjoint of vol2col: x[c, pos(o, k)] += col[(c*K + k), o]. Channels write disjoint slices,
/// so they run in parallel without atomics.
fn col2vol(g: &Geom, col: &[f32], cin: usize, x: &mut [f32]) {
    let (bv, sv, kv) = (g.big_vol(), g.small_vol(), g.kvol());
    let [sd, sh, sw] = g.small;
    let [bd, bh, bw] = g.big;
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    debug_assert_eq!(x.len(), cin * bv);
    x.par_chunks_mut(bv).enumerate().for_each(|(c, x_c)| {
        x_c.fill(0.0);
        for k in 0..kv {
            let (_, kd) = kernel_offsets(g, k);
            let row = &col[(c * kv + k) * sv..(c * kv + k + 1) * sv];
            let koff = [kd[0] * d[0], kd[1] * d[1], kd[2] * d[2]];
            let (d0, d1) = valid_range(sd, bd, s[0], p[0], koff[0]);
            let (h0, h1) = valid_range(sh, bh, s[1], p[1], koff[1]);
            let (w0, w1) = valid_range(sw, bw, s[2], p[2], koff[2]);
            for od in d0..d1 {
                let id = od * s[0] + koff[0] - p[0];
                for oh in h0..h1 {
                    let ih = oh * s[1] + koff[1] - p[1];
                    let dst = &mut x_c[(id * bh + ih) * bw..(id * bh + ih + 1) * bw];
                    let src = &row[(od * sh + oh) * sw..(od * sh + oh + 1) * sw];
                    if s[2] == 1 {
                        let start = w0 + koff[2] - p[2];
                        for (a, b) in dst[start..start + (w1 - w0)].iter_mut().zip(&src[w0..w1]) {
                            *a += *b;
                        }
                    } else {
                        for ow in w0..w1 {
                            dst[ow * s[2] + koff[2] - p[2]] += src[ow];
                        }
                    }
                }
            }
        }
    });
}

/// A row-major matrix operand, possibly read transposed.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Distance between stored rows (>= cols), so a column block of a wider matrix needs no copy.
    ld: usize,
    transposed: bool,
}

impl<'a> Mat<'a> {
    fn dense(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        Mat {
            data,
            rows,
            cols,
            ld: cols,
            transposed,
        }
    }
    /// (row stride, column stride) of the logical (possibly transposed) matrix.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        }
    }
    fn logical(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
}

/// dst[m x n] (+)= a[m x k] * b[k x n], row-major dst.
fn matmul(a: Mat, b: Mat, dst: &mut [f32], accumulate: bool, threads: usize) {
    let (m, k) = a.logical();
    let (k2, n) = b.logical();
    assert_eq!(k, k2);
    assert_eq!(dst.len(), m * n);
    assert!(a.rows == 0 || a.data.len() >= (a.rows - 1) * a.ld + a.cols);
    assert!(b.rows == 0 || b.data.len() >= (b.rows - 1) * b.ld + b.cols);
    assert!(a.ld >= a.cols && b.ld >= b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    let par = if threads > 1 && m * n * k > 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers cover the matrices described by the sizes and strides asserted above;
    // dst does not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Column matrix of one sample: borrowed input for a pointwise kernel, else vol2col into `buf`.
fn columns<'a>(g: &Geom, x_n: &'a [f32], cin: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return x_n;
    }
    buf.resize(cin * g.kvol() * g.small_vol(), 0.0);
    vol2col(g, x_n, cin, buf);
    buf
}

/// y[n, co, small] = sum w[co, ci, k] * x[n, ci, big @ k].
pub(crate) fn conv_fwd(g: &Geom, x: &[f32], w: &[f32], n: usize, ci: usize, co: usize) -> Vec<f32> {
    let (bv, sv, kv) = (g.big_vol(), g.small_vol(), g.kvol());
    let mut y = vec![0f32; n * co * sv];
    let mut buf = Vec::new();
    for b in 0..n {
        let col = columns(g, &x[b * ci * bv..(b + 1) * ci * bv], ci, &mut buf);
        let wm = Mat::dense(w, co, ci * kv, false);
        let cm = Mat::dense(col, ci * kv, sv, false);
        matmul(
            wm,
            cm,
            &mut y[b * co * sv..(b + 1) * co * sv],
            false,
            threads(),
        );
    }
    y
}

/// dx[n, ci, big] from dy[n, co, small]: the adjoint of `conv_fwd` in x.
pub(crate) fn conv_bwd_data(
    g: &Geom,
    dy: &[f32],
    w: &[f32],
    n: usize,
    ci: usize,
    co: usize,
) -> Vec<f32> {
    let (bv, sv, kv) = (g.big_vol(), g.small_vol(), g.kvol());
    let mut dx = vec![0f32; n * ci * bv];
    let wm = Mat::dense(w, co, ci * kv, true);
    let mut col = Vec::new();
    for b in 0..n {
        let dy_n = Mat::dense(&dy[b * co * sv..(b + 1) * co * sv], co, sv, false);
        let dx_n = &mut dx[b * ci * bv..(b + 1) * ci * bv];
        if g.is_pointwise() {
            matmul(wm, dy_n, dx_n, false, threads());
        } else {
            col.resize(ci * kv * sv, 0.0);
            matmul(wm, dy_n, &mut col, false, threads());
            col2vol(g, &col, ci, dx_n);
        }
    }
    dx
}

/// dw[co, ci, k] = sum over samples and positions of dy[n, co, o] * x[n, ci, pos(o, k)].
/// The reduction runs over the (long) spatial axis, which gemm does not split across threads,
/// so it is split here into chunks whose partial sums are added at the end.
pub(crate) fn conv_bwd_filter(
    g: &Geom,
    x: &[f32],
    dy: &[f32],
    n: usize,
    ci: usize,
    co: usize,
) -> Vec<f32> {
    let (bv, sv, kv) = (g.big_vol(), g.small_vol(), g.kvol());
    let rows = ci * kv;
    let nt = threads();
    let chunks = if nt > 1 && sv >= 2048 { nt } else { 1 };
    let chunk = sv.div_ceil(chunks);
    let mut partial = vec![0f32; chunks * co * rows];
    let mut buf = Vec::new();
    for b in 0..n {
        let col = columns(g, &x[b * ci * bv..(b + 1) * ci * bv], ci, &mut buf);
        let dy_n = &dy[b * co * sv..(b + 1) * co * sv];
        partial
            .par_chunks_mut(co * rows)
            .enumerate()
            .for_each(|(t, acc)| {
                let lo = (t * chunk).min(sv);
                let hi = ((t + 1) * chunk).min(sv);
                if lo == hi {
                    return;
                }
                // Column blocks [lo, hi) of both operands, addressed in place through the row stride.
                let am = Mat {
                    data: &dy_n[lo..],
                    rows: co,
                    cols: hi - lo,
                    ld: sv,
                    transposed: false,
                };
                let cm = Mat {
                    data: &col[lo..],
                    rows,
                    cols: hi - lo,
                    ld: sv,
                    transposed: true,
                };
                matmul(am, cm, acc, true, 1);
            });
    }
    let mut dw = vec![0f32; co * rows];
    for p in partial.chunks(co * rows) {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += *b;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for out in 0..6 {
            for size in 1..7 {
                for s in 1..4 {
                    for p in 0..3 {
                        for kd in 0..5 {
                            let (lo, hi) = valid_range(out, size, s, p, kd);
                            let want: Vec<usize> = (0..out)
                                .filter(|o| {
                                    let i = (o * s + kd) as isize - p as isize;
                                    i >= 0 && (i as usize) < size
                                })
                                .collect();
                            let got: Vec<usize> = (lo..hi).collect();
                            assert_eq!(got, want, "out {out} size {size} s {s} p {p} kd {kd}");
                        }
                    }
                }
            }
        }
    }
}
