//! CPU kernels of the 3D convolution primitives: vol2col / col2vol plus GEMM, threaded with rayon.
//!
//! All three primitives share one geometry: a convolution from a "big" volume (its input) to a
//! "small" volume (its output). A transposed convolution is the data-gradient primitive run forward.

use rayon::prelude::*;

/// Geometry of a convolution, resolved: every size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// Row `r` of the column matrix (one input channel and one kernel offset) for one sample,
/// restricted to output planes `[z0, z1)` (the row holds `(z1 - z0) * sh * sw` columns).
fn fill_row(g: &Geom, x_c: &[f32], kd: [usize; 3], (z0, z1): (usize, usize), row: &mut [f32]) {
    let [sd, sh, sw] = g.small;
    let [bd, bh, bw] = g.big;
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let koff = [kd[0] * d[0], kd[1] * d[1], kd[2] * d[2]];
    let (d0, d1) = valid_range(sd, bd, s[0], p[0], koff[0]);
    let (d0, d1) = (d0.max(z0), d1.min(z1));
    let (h0, h1) = valid_range(sh, bh, s[1], p[1], koff[1]);
    let (w0, w1) = valid_range(sw, bw, s[2], p[2], koff[2]);
    // Every element is written exactly once: padding positions get 0, the rest the input.
    let plane = sh * sw;
    for od in z0..z1 {
        let prow = &mut row[(od - z0) * plane..(od - z0 + 1) * plane];
        if od < d0 || od >= d1 {
            prow.fill(0.0);
            continue;
        }
        let id = od * s[0] + koff[0] - p[0];
        prow[..h0 * sw].fill(0.0);
        prow[h1 * sw..].fill(0.0);
        if let Some((a, b, shift)) = contiguous_run(g, x_c.len(), id, koff, (h0, h1)) {
            // Rows h0..h1 are one run of the input shifted by a constant: one copy, then zeros
            // where the run wrapped into a neighbouring row (columns outside [w0, w1)).
            let (da, db) = ((a as isize - shift) as usize, (b as isize - shift) as usize);
            prow[h0 * sw..da].fill(0.0);
            prow[db..h1 * sw].fill(0.0);
            prow[da..db].copy_from_slice(&x_c[a..b]);
            if w0 > 0 || w1 < sw {
                for r in prow[h0 * sw..h1 * sw].chunks_exact_mut(sw) {
                    r[..w0].fill(0.0);
                    r[w1..].fill(0.0);
                }
            }
            continue;
        }
        for oh in h0..h1 {
            let ih = oh * s[1] + koff[1] - p[1];
            let src = &x_c[(id * bh + ih) * bw..(id * bh + ih + 1) * bw];
            let dst = &mut prow[oh * sw..(oh + 1) * sw];
            dst[..w0].fill(0.0);
            dst[w1..].fill(0.0);
            if s[2] == 1 {
                let start = w0 + koff[2] - p[2];
                dst[w0..w1].copy_from_slice(&src[start..start + (w1 - w0)]);
            } else if s[2] == 2 && w1 > w0 {
                // Every other input value (the UNet's down-sampling layers), as pairs so the
                // loop vectorizes; the last pair may be cut short by the row's end.
                let start = w0 * 2 + koff[2] - p[2];
                let run = &src[start..(start + 2 * (w1 - w0)).min(src.len())];
                let (pairs, last) = (run.chunks_exact(2), run.len() % 2 == 1);
                let n = pairs.len();
                for (d, pair) in dst[w0..w0 + n].iter_mut().zip(pairs) {
                    *d = pair[0];
                }
                if last {
                    dst[w0 + n] = run[run.len() - 1];
                }
            } else {
                for ow in w0..w1 {
                    dst[ow] = src[ow * s[2] + koff[2] - p[2]];
                }
            }
        }
    }
}

/// With unit stride in H and W and the output as wide as the input, output rows `h0..h1` of
/// plane `id` read one contiguous run of the channel's input: output index `i` (in the plane)
/// reads input index `i + shift`. Returns the run clamped to the channel, `[a, b)`, and `shift`;
/// `None` when the geometry is not of that kind or the run is empty.
fn contiguous_run(
    g: &Geom,
    len: usize,
    id: usize,
    koff: [usize; 3],
    (h0, h1): (usize, usize),
) -> Option<(usize, usize, isize)> {
    let (s, p) = (g.stride, g.padding);
    let (sw, bw, bh) = (g.small[2], g.big[2], g.big[1]);
    if s[1] != 1 || s[2] != 1 || sw != bw || h0 >= h1 || sw == 0 {
        return None;
    }
    let row0 = (id * bh) as isize + koff[1] as isize - p[1] as isize;
    let shift = row0 * bw as isize + koff[2] as isize - p[2] as isize;
    let a = ((h0 * sw) as isize + shift).max(0) as usize;
    let b = ((h1 * sw) as isize + shift).min(len as isize).max(0) as usize;
    (a < b).then_some((a, b, shift))
}

/// Sizes a reused buffer to `n` floats whose every element the caller writes before reading
/// any: only growth is zero-filled, so the chunks of one call reuse it without zeroing it again.
fn scratch(buf: &mut Vec<f32>, n: usize) {
    buf.resize(n, 0.0);
}

fn kernel_offsets(g: &Geom, r: usize) -> (usize, [usize; 3]) {
    let [_, kh, kw] = g.kernel;
    let kv = g.kvol();
    let c = r / kv;
    let k = r % kv;
    (c, [k / (kh * kw), (k / kw) % kh, k % kw])
}

/// col[(c*K + k), o] = x[c, pos(o, k)] (zero outside) for output planes `planes`: one sample.
/// `par`: rows in parallel on rayon's threads, else on the calling thread.
fn vol2col(g: &Geom, x: &[f32], cin: usize, planes: (usize, usize), col: &mut [f32], par: bool) {
    let bv = g.big_vol();
    let cols = (planes.1 - planes.0) * g.small[1] * g.small[2];
    debug_assert_eq!(col.len(), cin * g.kvol() * cols);
    let row = |(r, row): (usize, &mut [f32])| {
        let (c, kd) = kernel_offsets(g, r);
        fill_row(g, &x[c * bv..(c + 1) * bv], kd, planes, row);
    };
    if par {
        col.par_chunks_mut(cols).enumerate().for_each(row);
    } else {
        col.chunks_mut(cols).enumerate().for_each(row);
    }
}

/// The adjoint of vol2col for output planes `planes`: x[c, pos(o, k)] += col[(c*K + k), o].
/// Channels write disjoint slices, so they run in parallel without atomics (when `par`).
fn col2vol_add(
    g: &Geom,
    col: &mut [f32],
    cin: usize,
    (z0, z1): (usize, usize),
    x: &mut [f32],
    par: bool,
) {
    let (bv, kv) = (g.big_vol(), g.kvol());
    let [sd, sh, sw] = g.small;
    let [bd, bh, bw] = g.big;
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let cols = (z1 - z0) * sh * sw;
    debug_assert_eq!(x.len(), cin * bv);
    let channel = |(x_c, col_c): (&mut [f32], &mut [f32])| {
        for k in 0..kv {
            let (_, kd) = kernel_offsets(g, k);
            let row = &mut col_c[k * cols..(k + 1) * cols];
            let koff = [kd[0] * d[0], kd[1] * d[1], kd[2] * d[2]];
            let (d0, d1) = valid_range(sd, bd, s[0], p[0], koff[0]);
            let (d0, d1) = (d0.max(z0), d1.min(z1));
            let (h0, h1) = valid_range(sh, bh, s[1], p[1], koff[1]);
            let (w0, w1) = valid_range(sw, bw, s[2], p[2], koff[2]);
            for od in d0..d1 {
                let id = od * s[0] + koff[0] - p[0];
                let o = (od - z0) * sh * sw;
                if let Some((a, b, shift)) = contiguous_run(g, x_c.len(), id, koff, (h0, h1)) {
                    // The adjoint of vol2col's run: zero the columns that wrapped into a
                    // neighbouring row (the column matrix is scratch), then one contiguous add.
                    let block = &mut row[o + h0 * sw..o + h1 * sw];
                    if w0 > 0 || w1 < sw {
                        for r in block.chunks_exact_mut(sw) {
                            r[..w0].fill(0.0);
                            r[w1..].fill(0.0);
                        }
                    }
                    let (da, db) = ((a as isize - shift) as usize, (b as isize - shift) as usize);
                    let src = &row[o + da..o + db];
                    for (x, v) in x_c[a..b].iter_mut().zip(src) {
                        *x += *v;
                    }
                    continue;
                }
                for oh in h0..h1 {
                    let ih = oh * s[1] + koff[1] - p[1];
                    let dst = &mut x_c[(id * bh + ih) * bw..(id * bh + ih + 1) * bw];
                    let o = ((od - z0) * sh + oh) * sw;
                    let src = &row[o..o + sw];
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
    };
    if par {
        x.par_chunks_mut(bv)
            .zip(col.par_chunks_mut(kv * cols))
            .for_each(channel);
    } else {
        x.chunks_mut(bv)
            .zip(col.chunks_mut(kv * cols))
            .for_each(channel);
    }
}

/// Splits the output depth into plane ranges whose column block stays around `TARGET` floats, so
/// the column matrix stays cache-sized and memory stays bounded for large volumes: 4 MiB when
/// one sample's work is spread over the threads, 512 KiB (a core's L2 cache here) when each
/// thread has samples of its own.
fn plane_chunks(g: &Geom, rows: usize, per_sample: bool) -> Vec<(usize, usize)> {
    // Unit tests use tiny volumes: a tiny target makes them cover the multi-chunk paths.
    let target: usize = match (cfg!(test), per_sample) {
        (true, _) => 1 << 8,
        (false, false) => 1 << 20,
        (false, true) => 1 << 17,
    };
    let plane = g.small[1] * g.small[2];
    let per = (target / (rows * plane).max(1)).max(1);
    (0..g.small[0])
        .step_by(per)
        .map(|z| (z, (z + per).min(g.small[0])))
        .collect()
}

/// A row-major matrix operand, possibly read transposed.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Distance between stored rows (>= cols), so a column block of a wider matrix needs no copy.
    ld: usize,
    /// Distance between neighbouring elements of a stored row (1, or more to take every n-th).
    elem: usize,
    transposed: bool,
}

impl<'a> Mat<'a> {
    fn dense(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        Mat {
            data,
            rows,
            cols,
            ld: cols,
            elem: 1,
            transposed,
        }
    }
    /// (row stride, column stride) of the logical (possibly transposed) matrix.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.elem as isize, self.ld as isize)
        } else {
            (self.ld as isize, self.elem as isize)
        }
    }
    /// Whether `data` holds every element the sizes and strides address.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.data.len() > (self.rows - 1) * self.ld + (self.cols - 1) * self.elem
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
    let n = b.logical().1;
    assert_eq!(dst.len(), a.logical().0 * n);
    matmul_ld(a, b, dst, n, accumulate, threads)
}

/// dst[m x n] (+)= a[m x k] * b[k x n], dst row-major with rows `dst_ld` apart (>= n), so the
/// product can land in a column block of a wider matrix.
fn matmul_ld(a: Mat, b: Mat, dst: &mut [f32], dst_ld: usize, accumulate: bool, threads: usize) {
    gemm_into(a, b, dst, dst_ld, false, accumulate, threads)
}

/// As `matmul_ld`, the product stored transposed: element (i, j) at `dst[j * dst_ld + i]`. With
/// `a` read transposed from a row-major matrix (unit stride down its columns), gemm uses `a` in
/// place rather than packing it (when the block sizes allow), which matters when `a` is the
/// large column matrix.
fn matmul_t(a: Mat, b: Mat, dst: &mut [f32], dst_ld: usize, accumulate: bool, threads: usize) {
    gemm_into(a, b, dst, dst_ld, true, accumulate, threads)
}

fn gemm_into(
    a: Mat,
    b: Mat,
    dst: &mut [f32],
    dst_ld: usize,
    dst_t: bool,
    accumulate: bool,
    threads: usize,
) {
    let (m, k) = a.logical();
    let (k2, n) = b.logical();
    assert_eq!(k, k2);
    // Stored rows and their length: m rows of n, or (transposed) n rows of m.
    let (srows, slen) = if dst_t { (n, m) } else { (m, n) };
    assert!(dst_ld >= slen && (srows == 0 || dst.len() >= (srows - 1) * dst_ld + slen));
    assert!(a.fits() && b.fits());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..srows {
                dst[r * dst_ld..r * dst_ld + slen].fill(0.0);
            }
        }
        return;
    }
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    let (d_rs, d_cs) = if dst_t {
        (1, dst_ld as isize)
    } else {
        (dst_ld as isize, 1)
    };
    let par = if threads > 1 && m * n * k > 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers cover the matrices described by the sizes and strides asserted above
    // (dst: `srows` stored rows of `slen`, `dst_ld` apart); dst does not alias a or b (distinct
    // borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d_cs,
            d_rs,
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

/// Whether a batch runs one sample per thread (each single-threaded, its column block in its
/// own cache) rather than each sample over all threads: when the samples divide evenly over
/// the threads, or are many.
fn per_sample(n: usize) -> bool {
    let t = threads();
    t > 1 && n >= t && (n.is_multiple_of(t) || n >= 4 * t)
}

/// y[n, co, small] = sum w[co, ci, k] * x[n, ci, big @ k].
pub(crate) fn conv_fwd(g: &Geom, x: &[f32], w: &[f32], n: usize, ci: usize, co: usize) -> Vec<f32> {
    let (bv, sv) = (g.big_vol(), g.small_vol());
    let mut y = vec![0f32; n * co * sv];
    each_sample(&mut y, co * sv, x, ci * bv, n, |y_n, x_n, col, par| {
        conv_fwd_one(g, x_n, w, ci, co, y_n, col, par)
    });
    y
}

/// Runs `f(out_n, in_n, column buffer, par)` for each sample's slices of `out` and `inp`: one
/// sample per thread (`par` false) when `per_sample`, else one after the other, each spread over
/// the threads (`par` true).
fn each_sample(
    out: &mut [f32],
    out_len: usize,
    inp: &[f32],
    in_len: usize,
    n: usize,
    f: impl Fn(&mut [f32], &[f32], &mut Vec<f32>, bool) + Sync,
) {
    if n == 0 || out_len == 0 || in_len == 0 {
        return;
    }
    if per_sample(n) {
        out.par_chunks_mut(out_len)
            .zip(inp.par_chunks(in_len))
            .for_each_init(Vec::new, |col, (o, i)| f(o, i, col, false));
    } else {
        let mut col = Vec::new();
        for (o, i) in out.chunks_mut(out_len).zip(inp.chunks(in_len)) {
            f(o, i, &mut col, true);
        }
    }
}

/// One sample of `conv_fwd`; `par`: spread over the threads.
#[allow(clippy::too_many_arguments)]
fn conv_fwd_one(
    g: &Geom,
    x_n: &[f32],
    w: &[f32],
    ci: usize,
    co: usize,
    y_n: &mut [f32],
    col: &mut Vec<f32>,
    par: bool,
) {
    let (sv, kv) = (g.small_vol(), g.kvol());
    let rows = ci * kv;
    let nt = if par { threads() } else { 1 };
    let wm = Mat::dense(w, co, rows, false);
    if g.is_pointwise() {
        matmul(wm, Mat::dense(x_n, ci, sv, false), y_n, false, nt);
        return;
    }
    if let Some(pw) = w_taps_in_gemm(g) {
        return conv_fwd_w_taps(g, x_n, w, ci, co, y_n, col, par, pw);
    }
    let plane = g.small[1] * g.small[2];
    for (z0, z1) in plane_chunks(g, rows, !par) {
        let cols = (z1 - z0) * plane;
        scratch(col, rows * cols);
        vol2col(g, x_n, ci, (z0, z1), col, par);
        // y[:, chunk]^T = col^T w^T, written in place through the row stride of y; col^T is
        // read in place (unit stride down its columns), so gemm packs only the small weight.
        matmul_t(
            Mat::dense(col, rows, cols, true),
            Mat::dense(w, co, rows, true),
            &mut y_n[z0 * plane..],
            sv,
            false,
            nt,
        );
    }
}

/// With unit stride and dilation along W, the W taps need no rows of their own in the column
/// matrix: over an output grid as wide as the W-padded input (`pw` columns), tap `kw` of output
/// column `i` is column `i + kw` of the same row, so one GEMM per tap reads the column matrix
/// shifted by `kw`. The column matrix has a third of the rows (for 3 taps), for 2 junk columns
/// per row of output. Returns `pw` where that applies.
fn w_taps_in_gemm(g: &Geom) -> Option<usize> {
    let kw = g.kernel[2];
    let pw = g.big[2] + 2 * g.padding[2];
    // Narrow outputs would compute mostly junk columns (2 of every 4 for W = 2).
    let wide = g.small[2] >= 2 * (kw - 1);
    (g.stride[2] == 1
        && g.dilation[2] == 1
        && kw > 1
        && wide
        && pw >= kw
        && g.small[2] + kw - 1 == pw)
        .then_some(pw)
}

/// `conv_fwd_one` with the W taps in the GEMM (`w_taps_in_gemm`).
#[allow(clippy::too_many_arguments)]
fn conv_fwd_w_taps(
    g: &Geom,
    x_n: &[f32],
    w: &[f32],
    ci: usize,
    co: usize,
    y_n: &mut [f32],
    col: &mut Vec<f32>,
    par: bool,
    pw: usize,
) {
    let [kd, kh, kw] = g.kernel;
    let [bd, bh, bw] = g.big;
    let [sd, sh, sw] = g.small;
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let (sv, rows, rows9) = (g.small_vol(), ci * kd * kh * kw, ci * kd * kh);
    let nt = if par { threads() } else { 1 };
    // The input padded along W once: each row `p` zeros, the row, `p` zeros.
    let mut xp = vec![0f32; ci * bd * bh * pw];
    for (dst, src) in xp.chunks_exact_mut(pw).zip(x_n.chunks_exact(bw)) {
        dst[p[2]..p[2] + bw].copy_from_slice(src);
    }
    let grid = sh * pw;
    let mut acc = Vec::new();
    for (z0, z1) in plane_chunks(g, rows9 * pw / sw.max(1), !par) {
        let cols = (z1 - z0) * grid;
        scratch(col, rows9 * cols);
        // Row (c, kd, kh): output plane od, row oh reads padded input row (id, ih) whole.
        let fill = |(r, row): (usize, &mut [f32])| {
            let (c, a, b) = (r / (kd * kh), (r / kh) % kd, r % kh);
            let (ko_d, ko_h) = (a * d[0], b * d[1]);
            let (d0, d1) = valid_range(sd, bd, s[0], p[0], ko_d);
            let (h0, h1) = valid_range(sh, bh, s[1], p[1], ko_h);
            let xc = &xp[c * bd * bh * pw..(c + 1) * bd * bh * pw];
            for od in z0..z1 {
                let prow = &mut row[(od - z0) * grid..(od - z0 + 1) * grid];
                if od < d0 || od >= d1 || h0 >= h1 {
                    prow.fill(0.0);
                    continue;
                }
                let id = od * s[0] + ko_d - p[0];
                prow[..h0 * pw].fill(0.0);
                prow[h1 * pw..].fill(0.0);
                if s[1] == 1 {
                    let ih0 = h0 + ko_h - p[1];
                    let src = &xc[(id * bh + ih0) * pw..(id * bh + ih0 + h1 - h0) * pw];
                    prow[h0 * pw..h1 * pw].copy_from_slice(src);
                } else {
                    for oh in h0..h1 {
                        let ih = oh * s[1] + ko_h - p[1];
                        prow[oh * pw..(oh + 1) * pw]
                            .copy_from_slice(&xc[(id * bh + ih) * pw..(id * bh + ih + 1) * pw]);
                    }
                }
            }
        };
        if par {
            col.par_chunks_mut(cols).enumerate().for_each(fill);
        } else {
            col.chunks_mut(cols).enumerate().for_each(fill);
        }
        // acc[co][i] = sum over taps of w[:, :, :, :, t] . col[:, i + t], for the first
        // `m` columns (the rest would read past the block; they are junk columns anyway).
        let m = cols - (kw - 1);
        scratch(&mut acc, co * cols);
        for t in 0..kw {
            matmul_t(
                Mat {
                    data: &col[t..],
                    rows: rows9,
                    cols: m,
                    ld: cols,
                    elem: 1,
                    transposed: true,
                },
                Mat {
                    data: &w[t..],
                    rows: co,
                    cols: rows9,
                    ld: rows,
                    elem: kw,
                    transposed: true,
                },
                &mut acc,
                cols,
                t > 0,
                nt,
            );
        }
        // Keep the first `sw` of each `pw` columns.
        for (o, a) in y_n.chunks_exact_mut(sv).zip(acc.chunks_exact(cols)) {
            for (od, plane) in (z0..z1).zip(a.chunks_exact(grid)) {
                for (oh, r) in plane.chunks_exact(pw).enumerate() {
                    let at = (od * sh + oh) * sw;
                    o[at..at + sw].copy_from_slice(&r[..sw]);
                }
            }
        }
    }
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
    let (bv, sv) = (g.big_vol(), g.small_vol());
    if let Some((g2, wf)) = as_forward(g, w, ci, co) {
        return conv_fwd(&g2, dy, &wf, n, co, ci);
    }
    let mut dx = vec![0f32; n * ci * bv];
    each_sample(&mut dx, ci * bv, dy, co * sv, n, |dx_n, dy_n, col, par| {
        conv_bwd_data_one(g, dy_n, w, ci, co, dx_n, col, par)
    });
    dx
}

/// With unit stride the input gradient is itself a convolution: of dy, with the weights flipped
/// in space and their channel axes swapped, padded by d (k - 1) - p. Returns that convolution's
/// geometry and weights (ci, co, kd, kh, kw) where it applies and pays, so the forward path's
/// kernels (no col2vol scatter) compute it.
fn as_forward(g: &Geom, w: &[f32], ci: usize, co: usize) -> Option<(Geom, Vec<f32>)> {
    let mut padding = [0; 3];
    for (a, pad) in padding.iter_mut().enumerate() {
        let span = g.dilation[a] * (g.kernel[a].max(1) - 1);
        if g.stride[a] != 1 || g.padding[a] > span {
            return None;
        }
        *pad = span - g.padding[a];
    }
    let g2 = Geom {
        kernel: g.kernel,
        stride: [1; 3],
        padding,
        dilation: g.dilation,
        big: g.small,
        small: g.big,
    };
    // Only where that forward convolution takes the W taps in its GEMM: elsewhere (narrow
    // volumes, 1x1x1 kernels) the GEMM + col2vol path measured as fast or faster.
    w_taps_in_gemm(&g2)?;
    let kv = g.kvol();
    let mut wf = vec![0f32; ci * co * kv];
    for (o, wo) in w.chunks_exact(ci * kv).enumerate() {
        for (i, taps) in wo.chunks_exact(kv).enumerate() {
            let dst = &mut wf[(i * co + o) * kv..(i * co + o + 1) * kv];
            for (d, t) in dst.iter_mut().zip(taps.iter().rev()) {
                *d = *t;
            }
        }
    }
    Some((g2, wf))
}

/// One sample of `conv_bwd_data` into a zeroed `dx_n`; `par`: spread over the threads.
#[allow(clippy::too_many_arguments)]
fn conv_bwd_data_one(
    g: &Geom,
    dy_n: &[f32],
    w: &[f32],
    ci: usize,
    co: usize,
    dx_n: &mut [f32],
    col: &mut Vec<f32>,
    par: bool,
) {
    let (sv, kv) = (g.small_vol(), g.kvol());
    let rows = ci * kv;
    let nt = if par { threads() } else { 1 };
    let wm = Mat::dense(w, co, rows, true);
    if g.is_pointwise() {
        matmul(wm, Mat::dense(dy_n, co, sv, false), dx_n, false, nt);
        return;
    }
    let plane = g.small[1] * g.small[2];
    for (z0, z1) in plane_chunks(g, rows, !par) {
        let cols = (z1 - z0) * plane;
        scratch(col, rows * cols);
        let dm = Mat {
            data: &dy_n[z0 * plane..],
            rows: co,
            cols,
            ld: sv,
            elem: 1,
            transposed: false,
        };
        matmul(wm, dm, col, false, nt);
        col2vol_add(g, col, ci, (z0, z1), dx_n, par);
    }
}

/// dw[co, ci, k] = sum over samples and positions of dy[n, co, o] * x[n, ci, pos(o, k)].
/// The reduction runs over the (long) spatial axis, which gemm does not split across threads,
/// so partial sums (one per sample, or one per thread over each chunk's columns) are added at
/// the end.
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
    let mut dw = vec![0f32; co * rows];
    if n == 0 || dw.is_empty() {
        return dw;
    }
    let partial: Vec<f32> = if per_sample(n) {
        let mut partial = vec![0f32; n * co * rows];
        partial
            .par_chunks_mut(co * rows)
            .zip(x.par_chunks(ci * bv).zip(dy.par_chunks(co * sv)))
            .for_each_init(Vec::new, |col, (acc, (x_n, dy_n))| {
                bwd_filter_one(g, x_n, dy_n, ci, co, acc, col, 1)
            });
        partial
    } else {
        let nt = threads();
        let mut partial = vec![0f32; nt * co * rows];
        let mut col = Vec::new();
        for (x_n, dy_n) in x.chunks(ci * bv).zip(dy.chunks(co * sv)) {
            bwd_filter_one(g, x_n, dy_n, ci, co, &mut partial, &mut col, nt);
        }
        partial
    };
    for p in partial.chunks(co * rows) {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += *b;
        }
    }
    dw
}

/// One sample's share of `conv_bwd_filter`, added into `partial`: `nt` accumulators of
/// co x rows, the columns of each chunk split over `nt` threads (1: this thread alone).
#[allow(clippy::too_many_arguments)]
fn bwd_filter_one(
    g: &Geom,
    x_n: &[f32],
    dy_n: &[f32],
    ci: usize,
    co: usize,
    partial: &mut [f32],
    col: &mut Vec<f32>,
    nt: usize,
) {
    let (sv, kv) = (g.small_vol(), g.kvol());
    let rows = ci * kv;
    let plane = g.small[1] * g.small[2];
    let chunks = if g.is_pointwise() {
        vec![(0, g.small[0])]
    } else {
        plane_chunks(g, rows, nt == 1)
    };
    for (z0, z1) in chunks {
        let cols = (z1 - z0) * plane;
        let (cm, ld): (&[f32], usize) = if g.is_pointwise() {
            (x_n, sv)
        } else {
            scratch(col, rows * cols);
            vol2col(g, x_n, ci, (z0, z1), col, nt > 1);
            (col, cols)
        };
        let split = if nt > 1 && cols >= 2048 { nt } else { 1 };
        let per = cols.div_ceil(split);
        let block = |(t, acc): (usize, &mut [f32])| {
            let (lo, hi) = ((t * per).min(cols), ((t + 1) * per).min(cols));
            if lo == hi {
                return;
            }
            // Column blocks [lo, hi) of both operands, addressed in place through the row stride.
            let am = Mat {
                data: &dy_n[z0 * plane + lo..],
                rows: co,
                cols: hi - lo,
                ld: sv,
                elem: 1,
                transposed: false,
            };
            let bm = Mat {
                data: &cm[lo..],
                rows,
                cols: hi - lo,
                ld,
                elem: 1,
                transposed: true,
            };
            matmul(am, bm, acc, true, 1);
        };
        if split > 1 {
            partial
                .par_chunks_mut(co * rows)
                .take(split)
                .enumerate()
                .for_each(block);
        } else {
            block((0, &mut partial[..co * rows]));
        }
    }
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
