//! AVX2 statistics passes for four-channel images: normalize-intensity's float64 sums in one 4-lane
//! register, lane k being channel k's chain. Each lane adds its channel's values in exactly the order
//! of the scalar code (loads of four values per row and a 4x4 transpose only move values between
//! registers), so the sums are bit-identical. The scalar code gathers one value per channel per step;
//! this reads four per row and shuffles them, about a third of the instructions.
//! (Two samples interleaved, for two independent chains, measured no faster here: these passes are
//! bound by memory as much as by the add latency.)

use std::arch::x86_64::*;

/// A stored image value that loads four at a time as f32.
pub(super) trait Load4: Copy {
    /// Four consecutive values from `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading four values; AVX2 must be available.
    unsafe fn load4(p: *const Self) -> __m128;
    fn to_f32(self) -> f32;
}

impl Load4 for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> __m128 {
        // SAFETY: the caller guarantees four readable values.
        unsafe { _mm_loadu_ps(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bf16 bit patterns.
impl Load4 for u16 {
    #[inline(always)]
    unsafe fn load4(p: *const u16) -> __m128 {
        // SAFETY: the caller guarantees four readable values (8 bytes) and AVX2 (so SSE4.1).
        unsafe {
            let h = _mm_loadl_epi64(p.cast::<__m128i>());
            _mm_castsi128_ps(_mm_slli_epi32::<16>(_mm_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        wf_imaging::sample::bf16_to_f32(self)
    }
}

/// Where one sample's rows are: row (channel k, output x, output y) starts at
/// `k · ch + (x_off + x_step · x) + (y_off + y_step · y) + z0` and is read backwards when `rev`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geo {
    pub ch: usize,
    pub x_off: isize,
    pub x_step: isize,
    pub y_off: isize,
    pub y_step: isize,
    pub z0: usize,
    pub rev: bool,
}

/// Per-sample accumulators: lane k = channel k.
#[derive(Clone, Copy)]
pub(super) struct Acc4 {
    sum: __m256d,
    cnt: __m256i,
}

impl Acc4 {
    #[target_feature(enable = "avx2")]
    pub(super) fn new() -> Acc4 {
        Acc4 {
            sum: _mm256_setzero_pd(),
            cnt: _mm256_setzero_si256(),
        }
    }

    /// (count, sum) per channel.
    #[target_feature(enable = "avx2")]
    pub(super) fn get(&self) -> ([u64; 4], [f64; 4]) {
        let (mut n, mut s) = ([0u64; 4], [0f64; 4]);
        // SAFETY: 4 lanes into arrays of 4.
        unsafe {
            _mm256_storeu_si256(n.as_mut_ptr().cast(), self.cnt);
            _mm256_storeu_pd(s.as_mut_ptr(), self.sum);
        }
        (n, s)
    }
}

/// One value per channel (lane k = channel k) into the accumulator: the sum and count of kept
/// values, or with `SQ` the sum of squared deviations from `mean`. Dropped values add +0.0, which
/// leaves a sum that started at +0.0 unchanged.
#[inline]
#[target_feature(enable = "avx2")]
fn add<const SQ: bool>(acc: &mut Acc4, v: __m128, nonzero: bool, mean: __m256d) {
    {
        let d = _mm256_cvtps_pd(v);
        let keep = if nonzero {
            _mm256_cmp_pd::<_CMP_NEQ_UQ>(d, _mm256_setzero_pd())
        } else {
            _mm256_castsi256_pd(_mm256_set1_epi64x(-1))
        };
        if SQ {
            let e = _mm256_sub_pd(d, mean);
            acc.sum = _mm256_add_pd(acc.sum, _mm256_and_pd(_mm256_mul_pd(e, e), keep));
        } else {
            acc.sum = _mm256_add_pd(acc.sum, _mm256_and_pd(d, keep));
            acc.cnt = _mm256_sub_epi64(acc.cnt, _mm256_castpd_si256(keep));
        }
    }
}

/// One statistics pass over a sample of output shape `(x, y, z)`: for every (x, y) in C order, the
/// four channel rows go into the accumulator, values in row order (reversed when `geo.rev`), four at
/// a time.
#[target_feature(enable = "avx2")]
pub(super) fn pass<T: Load4, const SQ: bool>(
    src: &[T],
    geo: Geo,
    (x, y, z): (usize, usize, usize),
    nonzero: bool,
    mean: &[f64; 4],
    acc: &mut Acc4,
) {
    if x == 0 || y == 0 || z == 0 {
        return;
    }
    // Every row must lie inside the source: the offsets are linear in (x, y), so check the corners.
    for (ox, oy) in [(0, 0), (x - 1, 0), (0, y - 1), (x - 1, y - 1)] {
        let b = geo.x_off + geo.x_step * ox as isize + geo.y_off + geo.y_step * oy as isize;
        assert!(b >= 0, "row inside the source");
        assert!(
            b as usize + 3 * geo.ch + geo.z0 + z <= src.len(),
            "row inside the source"
        );
    }
    // SAFETY: 4 lanes.
    let m = unsafe { _mm256_loadu_pd(mean.as_ptr()) };
    let mut a = *acc;
    let blocks = z / 4;
    let rev = geo.rev;
    for ox in 0..x {
        for oy in 0..y {
            let b = (geo.x_off + geo.x_step * ox as isize + geo.y_off + geo.y_step * oy as isize)
                as usize
                + geo.z0;
            // SAFETY: inside the source (the corner checks above bound every row).
            let rows: [*const T; 4] =
                [0, 1, 2, 3].map(|k| unsafe { src.as_ptr().add(b + k * geo.ch) });
            for blk in 0..blocks {
                // Forward: block b is values 4b..4b+4; backward: the b-th block from the end, lanes
                // reversed, so values come in the order the scalar loop reads them.
                let start = if rev { z - 4 * (blk + 1) } else { 4 * blk };
                // SAFETY: start + 4 <= z, and each row has z readable values.
                let mut r: [__m128; 4] = rows.map(|p| unsafe { T::load4(p.add(start)) });
                if rev {
                    for v in &mut r {
                        *v = _mm_shuffle_ps::<0b00_01_10_11>(*v, *v);
                    }
                }
                // Transpose: column j = [r0[j], r1[j], r2[j], r3[j]] (one value per channel).
                let t0 = _mm_unpacklo_ps(r[0], r[1]);
                let t1 = _mm_unpacklo_ps(r[2], r[3]);
                let t2 = _mm_unpackhi_ps(r[0], r[1]);
                let t3 = _mm_unpackhi_ps(r[2], r[3]);
                add::<SQ>(&mut a, _mm_movelh_ps(t0, t1), nonzero, m);
                add::<SQ>(&mut a, _mm_movehl_ps(t1, t0), nonzero, m);
                add::<SQ>(&mut a, _mm_movelh_ps(t2, t3), nonzero, m);
                add::<SQ>(&mut a, _mm_movehl_ps(t3, t2), nonzero, m);
            }
            // The z % 4 values left: forward at the row ends, backward at the row starts.
            for i in 4 * blocks..z {
                let j = if rev { z - 1 - i } else { i };
                // SAFETY: j < z.
                let v = unsafe {
                    _mm_setr_ps(
                        (*rows[0].add(j)).to_f32(),
                        (*rows[1].add(j)).to_f32(),
                        (*rows[2].add(j)).to_f32(),
                        (*rows[3].add(j)).to_f32(),
                    )
                };
                add::<SQ>(&mut a, v, nonzero, m);
            }
        }
    }
    *acc = a;
}
