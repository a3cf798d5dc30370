//! The loader's sample path: one sample straight from its memory map into its slot of a batch buffer,
//! with the chain's random suffix (crop → flip → normalize-intensity → scale → shift) fused into a
//! handful of passes, bit for bit what `Chain::apply_suffix` / `replay_suffix` give.
//!
//! Why it is exact:
//! - Crops and flips only move values: they compose into one index map per axis (output index `i`
//!   reads source index `off + step · i`), gathered once.
//! - Scale, shift and the normalization itself are elementwise float32 operations, applied to each
//!   value in chain order with the same operands, so every value gets the same bits.
//! - normalize-intensity's statistics are sums in float64, whose result depends on the order of the
//!   additions. They are summed in exactly the reference order (each channel, or the whole image, in
//!   C order of the transformed array) with one sequential accumulator per statistic. What the fused
//!   path changes is only that the chains of the four channels advance in the same loop (independent
//!   chains, so the CPU overlaps their latencies) and that masked-out voxels add +0.0 instead of
//!   skipping (the same sum: an accumulator that starts at +0.0 never becomes −0.0).
//! - A suffix with a normalization *before* a crop or flip (statistics over another voxel order) or
//!   with a transform this file does not know is not fused: the loader runs the reference chain.
//!
//! Tests below compare against `Chain::apply_suffix` and `replay_suffix` bit for bit.

#[cfg(target_arch = "x86_64")]
mod simd;

use std::mem::MaybeUninit;
use wf_imaging::Rng;
use wf_imaging::sample::{ImageData, bf16_to_f32};
use wf_imaging::transforms::{Case, Chain, Drawn, DrawnParams, Image, TransformSpec};

/// Whether the AVX2 builds of the hot loops may run (they give the same bits as the portable ones;
/// tests switch them off to check that).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    #[cfg(test)]
    if tests::NO_SIMD.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2")
}

/// One spatial axis of the composed crop/flip map: output index `i` reads source `off + step · i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AxisMap {
    off: isize,
    step: isize,
    len: usize,
}

/// An elementwise operation with its drawn value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Normalize { nonzero: bool, channel_wise: bool },
    Scale(f32),
    Shift(f32),
}

/// A chain's random suffix in the form the fused path runs (see the module docs for which qualify).
#[derive(Clone, Debug)]
pub struct FusedSuffix {
    specs: Vec<TransformSpec>,
}

impl FusedSuffix {
    /// `None` when the suffix cannot be fused exactly; the caller then runs the reference chain.
    pub fn new(chain: &Chain) -> Option<FusedSuffix> {
        let specs = chain.suffix().to_vec();
        let mut normalized = false;
        for s in &specs {
            match s {
                TransformSpec::RandSpatialCrop(_) | TransformSpec::RandFlip(_) if normalized => {
                    return None;
                }
                TransformSpec::RandSpatialCrop(_) | TransformSpec::RandFlip(_) => {}
                TransformSpec::NormalizeIntensity(_) => normalized = true,
                TransformSpec::RandScaleIntensity(_) | TransformSpec::RandShiftIntensity(_) => {}
                _ => return None,
            }
        }
        Some(FusedSuffix { specs })
    }

    /// Draws for a case of `shape` (C, X, Y, Z) exactly as `Chain::apply_suffix` does: the same
    /// transforms consume the same stream (only a crop's draw looks at the case, and only at its
    /// spatial shape).
    pub fn draw(&self, shape: [usize; 4], rng: &mut Rng) -> DrawnParams {
        let mut probe = Case {
            id: String::new(),
            image: Image::new(shape, Vec::new()),
            label: None,
            affine: [[0.0; 4]; 4],
            channel_first: true,
        };
        let mut drawn = DrawnParams::default();
        for s in &self.specs {
            if let Some(d) = s.draw(&probe, rng) {
                if let Drawn::Crop { size, .. } = &d {
                    let [c, ..] = probe.image.shape;
                    probe.image.shape = [c, size[0] as usize, size[1] as usize, size[2] as usize];
                }
                drawn.draws.push(d);
            }
        }
        drawn
    }

    /// The plan that applies recorded draws (as `Chain::replay_suffix`) to a source of `shape`.
    pub fn plan(&self, shape: [usize; 4], drawn: &DrawnParams) -> Result<Plan, String> {
        let mut plan = Plan::identity(shape);
        let mut draws = drawn.draws.iter();
        for s in &self.specs {
            let d = if s.is_random() {
                Some(draws.next().ok_or_else(|| {
                    format!(
                        "{}: no recorded draw left for this random transform",
                        s.name()
                    )
                })?)
            } else {
                None
            };
            match (s, d) {
                (TransformSpec::RandSpatialCrop(_), Some(Drawn::Crop { start, size })) => {
                    let len = plan.axes.map(|a| a.len);
                    if (0..3).any(|a| size[a] == 0 || start[a] as usize + size[a] as usize > len[a])
                    {
                        return Err(format!(
                            "rand-spatial-crop: window start {start:?} size {size:?} does not fit the image {len:?}"
                        ));
                    }
                    for a in 0..3 {
                        let m = &mut plan.axes[a];
                        m.off += m.step * start[a] as isize;
                        m.len = size[a] as usize;
                    }
                }
                (TransformSpec::RandFlip(f), Some(Drawn::Flip { flipped })) => {
                    if *flipped {
                        for a in f.axis.clone().unwrap_or_else(|| vec![0, 1, 2]) {
                            let m = &mut plan.axes[a];
                            m.off += m.step * (m.len as isize - 1);
                            m.step = -m.step;
                        }
                    }
                }
                (TransformSpec::NormalizeIntensity(n), None) => plan.ops.push(Op::Normalize {
                    nonzero: n.nonzero,
                    channel_wise: n.channel_wise,
                }),
                (TransformSpec::RandScaleIntensity(_), Some(Drawn::ScaleIntensity { factor })) => {
                    if let Some(f) = factor {
                        plan.ops.push(Op::Scale((1.0 + f) as f32));
                    }
                }
                (TransformSpec::RandShiftIntensity(_), Some(Drawn::ShiftIntensity { offset })) => {
                    if let Some(o) = offset {
                        plan.ops.push(Op::Shift(*o as f32));
                    }
                }
                (s, d) => {
                    return Err(format!(
                        "{}: recorded draw {d:?} does not belong to this transform",
                        s.name()
                    ));
                }
            }
        }
        Ok(plan)
    }
}

/// Where each output value of one sample comes from and what is done to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Source `(C, X, Y, Z)`.
    src: [usize; 4],
    axes: [AxisMap; 3],
    ops: Vec<Op>,
}

/// A normalization's per-channel (mean, std) in float32; `None` where it found no voxel (the
/// reference leaves such a channel untouched).
type NormParams = Vec<Option<(f32, f32)>>;

/// Accumulators of up to four independent float64 chains (one per channel in flight).
struct Acc<const K: usize> {
    n: [u64; K],
    s: [f64; K],
}

impl<const K: usize> Acc<K> {
    fn new() -> Self {
        Acc {
            n: [0; K],
            s: [0.0; K],
        }
    }
}

impl Plan {
    /// Copies a sample as it is (materialized samples).
    pub fn identity(shape: [usize; 4]) -> Plan {
        Plan {
            src: shape,
            axes: [1, 2, 3].map(|a| AxisMap {
                off: 0,
                step: 1,
                len: shape[a],
            }),
            ops: Vec::new(),
        }
    }

    /// The output `(C, X, Y, Z)`.
    pub fn out_shape(&self) -> [usize; 4] {
        [
            self.src[0],
            self.axes[0].len,
            self.axes[1].len,
            self.axes[2].len,
        ]
    }

    fn is_identity(&self) -> bool {
        self.ops.is_empty() && *self == Plan::identity(self.src)
    }

    /// Writes the transformed image (C·X·Y·Z values of `img`) and `label_channels` {0, 1} channels of
    /// the region bits (`lbl`; channel k is bit k) for one sample. Every value of both slots is
    /// written (so they may start uninitialized: a recycled batch buffer needs no zeroing pass) —
    /// unless an error is returned.
    pub fn fill(
        &self,
        image: ImageData<'_>,
        labels: &[u8],
        img: &mut [MaybeUninit<f32>],
        lbl: &mut [MaybeUninit<f32>],
        label_channels: usize,
    ) -> Result<(), String> {
        if !self.check(image, labels, img, lbl, label_channels)? {
            return Ok(());
        }
        let params = self.stats(image);
        self.write(image, labels, &params, img, lbl, label_channels);
        Ok(())
    }

    /// Validates one sample's input and slots; `Ok(false)` when there is nothing to write.
    fn check(
        &self,
        image: ImageData<'_>,
        labels: &[u8],
        img: &[MaybeUninit<f32>],
        lbl: &[MaybeUninit<f32>],
        label_channels: usize,
    ) -> Result<bool, String> {
        let [c, sx, sy, sz] = self.src;
        let [_, x, y, z] = self.out_shape();
        let (src_vol, vol) = (sx * sy * sz, x * y * z);
        if image.len() != c * src_vol {
            return Err(format!(
                "{} image values for shape {:?}",
                image.len(),
                self.src
            ));
        }
        if labels.len() != src_vol {
            return Err(if labels.is_empty() {
                "sample without region labels".into()
            } else {
                format!("{} label bytes for shape {:?}", labels.len(), self.src)
            });
        }
        if label_channels > 8 {
            return Err(format!(
                "{label_channels} label channels, at most 8 region bits"
            ));
        }
        assert_eq!(img.len(), c * vol, "image slot size");
        assert_eq!(lbl.len(), label_channels * vol, "label slot size");
        Ok(vol > 0)
    }

    /// Each normalization's statistics over the values as they stand at its place in the chain, in
    /// the reference summation order (indexed like `ops`).
    fn stats(&self, image: ImageData<'_>) -> Vec<Option<NormParams>> {
        let mut params: Vec<Option<NormParams>> = vec![None; self.ops.len()];
        let mut tmp = vec![0f32; 4 * self.axes[2].len];
        for (k, op) in self.ops.iter().enumerate() {
            if let Op::Normalize {
                nonzero,
                channel_wise,
            } = *op
            {
                let before = &self.ops[..k];
                let p = if channel_wise {
                    self.channel_stats(image, before, &params, nonzero, &mut tmp)
                } else {
                    self.global_stats(image, before, &params, nonzero, &mut tmp)
                };
                params[k] = Some(p);
            }
        }
        params
    }

    /// Writes both slots from resolved statistics.
    fn write(
        &self,
        image: ImageData<'_>,
        labels: &[u8],
        params: &[Option<NormParams>],
        img: &mut [MaybeUninit<f32>],
        lbl: &mut [MaybeUninit<f32>],
        label_channels: usize,
    ) {
        let [c, x, y, z] = self.out_shape();
        let vol = x * y * z;
        if self.is_identity() {
            copy_values(image, img);
            expand_labels(labels, lbl, vol, label_channels);
            store_fence();
            return;
        }
        match self.tail() {
            Some(t) => self.write_tail_mv(image, params, t, img),
            None => {
                for ch in 0..c {
                    for ox in 0..x {
                        for oy in 0..y {
                            let o = ch * vol + (ox * y + oy) * z;
                            let row = self.gather_row(image, ch, ox, oy, &mut img[o..o + z]);
                            apply(&self.ops, params, ch, row);
                        }
                    }
                }
            }
        }
        self.write_labels_mv(labels, lbl, label_channels);
        store_fence();
    }

    /// The common op list — normalize, scale, shift, each at most once and in this order — as
    /// (index of the normalization, scale, shift); `None` for any other list (generic path).
    fn tail(&self) -> Option<Tail> {
        let mut t = Tail::default();
        let mut stage = 0;
        for (k, op) in self.ops.iter().enumerate() {
            let (s, ok) = match *op {
                Op::Normalize { nonzero, .. } => {
                    t.norm = Some((k, nonzero));
                    (1, stage < 1)
                }
                Op::Scale(f) => {
                    t.scale = Some(f);
                    (2, stage < 2)
                }
                Op::Shift(o) => {
                    t.shift = Some(o);
                    (3, stage < 3)
                }
            };
            if !ok {
                return None;
            }
            stage = s;
        }
        Some(t)
    }

    /// The image slot for a [`Tail`] op list: one pass, each value read from the map, transformed
    /// (the same f32 operations in the same order as the chain) and stored once.
    fn write_tail_mv(
        &self,
        image: ImageData<'_>,
        params: &[Option<NormParams>],
        t: Tail,
        img: &mut [MaybeUninit<f32>],
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            #[target_feature(enable = "avx2")]
            fn avx2(
                p: &Plan,
                image: ImageData<'_>,
                params: &[Option<NormParams>],
                t: Tail,
                img: &mut [MaybeUninit<f32>],
            ) {
                p.write_tail(image, params, t, img)
            }
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(self, image, params, t, img) };
        }
        self.write_tail(image, params, t, img)
    }

    #[inline(always)]
    fn write_tail(
        &self,
        image: ImageData<'_>,
        params: &[Option<NormParams>],
        t: Tail,
        img: &mut [MaybeUninit<f32>],
    ) {
        let c = self.src[0];
        let rev = self.axes[2].step < 0;
        for ch in 0..c {
            let norm = t
                .norm
                .and_then(|(k, nz)| params[k].as_ref().and_then(|p| p[ch]).map(|ms| (ms, nz)));
            let (ms, nz) = norm.unwrap_or(((0.0, 1.0), false));
            let args = (ms, nz, t.scale.unwrap_or(1.0), t.shift.unwrap_or(0.0));
            macro_rules! go {
                ($src:expr, $t:ty) => {
                    match (rev, norm.is_some(), t.scale.is_some(), t.shift.is_some()) {
                        (false, false, false, false) => {
                            self.tail_channel::<$t, false, false, false, false>($src, ch, args, img)
                        }
                        (false, false, false, true) => {
                            self.tail_channel::<$t, false, false, false, true>($src, ch, args, img)
                        }
                        (false, false, true, false) => {
                            self.tail_channel::<$t, false, false, true, false>($src, ch, args, img)
                        }
                        (false, false, true, true) => {
                            self.tail_channel::<$t, false, false, true, true>($src, ch, args, img)
                        }
                        (false, true, false, false) => {
                            self.tail_channel::<$t, false, true, false, false>($src, ch, args, img)
                        }
                        (false, true, false, true) => {
                            self.tail_channel::<$t, false, true, false, true>($src, ch, args, img)
                        }
                        (false, true, true, false) => {
                            self.tail_channel::<$t, false, true, true, false>($src, ch, args, img)
                        }
                        (false, true, true, true) => {
                            self.tail_channel::<$t, false, true, true, true>($src, ch, args, img)
                        }
                        (true, false, false, false) => {
                            self.tail_channel::<$t, true, false, false, false>($src, ch, args, img)
                        }
                        (true, false, false, true) => {
                            self.tail_channel::<$t, true, false, false, true>($src, ch, args, img)
                        }
                        (true, false, true, false) => {
                            self.tail_channel::<$t, true, false, true, false>($src, ch, args, img)
                        }
                        (true, false, true, true) => {
                            self.tail_channel::<$t, true, false, true, true>($src, ch, args, img)
                        }
                        (true, true, false, false) => {
                            self.tail_channel::<$t, true, true, false, false>($src, ch, args, img)
                        }
                        (true, true, false, true) => {
                            self.tail_channel::<$t, true, true, false, true>($src, ch, args, img)
                        }
                        (true, true, true, false) => {
                            self.tail_channel::<$t, true, true, true, false>($src, ch, args, img)
                        }
                        (true, true, true, true) => {
                            self.tail_channel::<$t, true, true, true, true>($src, ch, args, img)
                        }
                    }
                };
            }
            match image {
                ImageData::F32(v) => go!(v, f32),
                ImageData::Bf16(v) => go!(v, u16),
            }
        }
    }

    /// One channel of [`Plan::write_tail`]: `(v − mean) / std` where kept (`NORM`), `· scale`
    /// (`SCALE`), `+ shift` (`SHIFT`), z read backwards with `REV`.
    #[inline(always)]
    fn tail_channel<
        T: Elem,
        const REV: bool,
        const NORM: bool,
        const SCALE: bool,
        const SHIFT: bool,
    >(
        &self,
        src: &[T],
        ch: usize,
        ((m, s), nonzero, k, sh): ((f32, f32), bool, f32, f32),
        img: &mut [MaybeUninit<f32>],
    ) {
        let [_, x, y, z] = self.out_shape();
        let vol = x * y * z;
        let a = self.axes[2];
        let z0 = if REV {
            a.off + 1 - a.len as isize
        } else {
            a.off
        } as usize;
        let mut tmp = vec![0f32; z];
        for ox in 0..x {
            for oy in 0..y {
                let b = self.src_row(ch, ox, oy) + z0;
                let row = &src[b..b + z];
                let o = ch * vol + (ox * y + oy) * z;
                for i in 0..z {
                    let mut v = row[if REV { z - 1 - i } else { i }].f32();
                    if NORM {
                        let n = (v - m) / s;
                        v = if !nonzero || v != 0.0 { n } else { v };
                    }
                    if SCALE {
                        v *= k;
                    }
                    if SHIFT {
                        v += sh;
                    }
                    tmp[i] = v;
                }
                store_stream(&tmp, &mut img[o..o + z]);
            }
        }
    }

    /// The label slot: `channels` {0, 1} channels of the region bits, read through the map.
    fn write_labels_mv(&self, labels: &[u8], lbl: &mut [MaybeUninit<f32>], channels: usize) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            #[target_feature(enable = "avx2")]
            fn avx2(p: &Plan, labels: &[u8], lbl: &mut [MaybeUninit<f32>], channels: usize) {
                p.write_labels(labels, lbl, channels)
            }
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(self, labels, lbl, channels) };
        }
        self.write_labels(labels, lbl, channels)
    }

    #[inline(always)]
    fn write_labels(&self, labels: &[u8], lbl: &mut [MaybeUninit<f32>], channels: usize) {
        let [_, x, y, z] = self.out_shape();
        let mut tmp = vec![0f32; z];
        for ox in 0..x {
            for oy in 0..y {
                self.label_row(ox, oy, labels, lbl, channels, &mut tmp);
            }
        }
    }

    /// The label slot's rows at output (ox, oy): `channels` {0, 1} rows of the region bits.
    #[inline(always)]
    fn label_row(
        &self,
        ox: usize,
        oy: usize,
        labels: &[u8],
        lbl: &mut [MaybeUninit<f32>],
        channels: usize,
        tmp: &mut [f32],
    ) {
        let [_, x, y, z] = self.out_shape();
        let vol = x * y * z;
        let a = self.axes[2];
        let rev = a.step < 0;
        let z0 = if rev {
            a.off + 1 - a.len as isize
        } else {
            a.off
        } as usize;
        let b = self.src_row(0, ox, oy) + z0;
        let row = &labels[b..b + z];
        let tmp = &mut tmp[..z];
        let o = (ox * y + oy) * z;
        for bit in 0..channels {
            if rev {
                for (v, &l) in tmp.iter_mut().zip(row.iter().rev()) {
                    *v = ((l >> bit) & 1) as f32;
                }
            } else {
                for (v, &l) in tmp.iter_mut().zip(row) {
                    *v = ((l >> bit) & 1) as f32;
                }
            }
            store_stream(tmp, &mut lbl[bit * vol + o..bit * vol + o + z]);
        }
    }

    /// Index of the source value at output (ch, ox, oy, z = 0) before the z map's offset.
    #[inline(always)]
    fn src_row(&self, ch: usize, ox: usize, oy: usize) -> usize {
        let [_, sx, sy, sz] = self.src;
        let ix = (self.axes[0].off + self.axes[0].step * ox as isize) as usize;
        let iy = (self.axes[1].off + self.axes[1].step * oy as isize) as usize;
        ((ch * sx + ix) * sy + iy) * sz
    }

    /// Writes the output row (ch, ox, oy, ·) of the spatial map, as f32, into `row`.
    #[inline]
    fn gather_row<'r>(
        &self,
        image: ImageData<'_>,
        ch: usize,
        ox: usize,
        oy: usize,
        row: &'r mut [MaybeUninit<f32>],
    ) -> &'r mut [f32] {
        let base = self.src_row(ch, ox, oy);
        let m = self.axes[2];
        if m.step > 0 {
            write_values(image, base + m.off as usize, row)
        } else {
            let row = write_values(image, base + m.off as usize + 1 - m.len, row);
            row.reverse();
            row
        }
    }

    /// Per-channel statistics; up to four channels' chains advance together.
    fn channel_stats(
        &self,
        image: ImageData<'_>,
        before: &[Op],
        params: &[Option<NormParams>],
        nonzero: bool,
        tmp: &mut [f32],
    ) -> NormParams {
        let c = self.src[0];
        #[cfg(target_arch = "x86_64")]
        if c == 4 && before.is_empty() && avx2() {
            return match image {
                ImageData::F32(v) => four_channel_stats(self, v, nonzero),
                ImageData::Bf16(v) => four_channel_stats(self, v, nonzero),
            };
        }
        let mut out = Vec::with_capacity(c);
        let mut ch = 0;
        while ch < c {
            let g = (image, before, params, nonzero, ch);
            match c - ch {
                1 => out.extend(self.group_stats::<1>(g, tmp)),
                2 => out.extend(self.group_stats::<2>(g, tmp)),
                3 => out.extend(self.group_stats::<3>(g, tmp)),
                _ => out.extend(self.group_stats::<4>(g, tmp)),
            }
            ch += 4;
        }
        out
    }

    /// Statistics of channels `ch0..ch0 + K`, each over its own values in C order.
    fn group_stats<const K: usize>(
        &self,
        g: Group<'_>,
        tmp: &mut [f32],
    ) -> [Option<(f32, f32)>; K] {
        let mut sums = Acc::<K>::new();
        self.pass::<K, false>(g, tmp, &[0.0; K], &mut sums);
        let mean: [f64; K] = std::array::from_fn(|k| sums.s[k] / sums.n[k].max(1) as f64);
        let mut sq = Acc::<K>::new();
        self.pass::<K, true>(g, tmp, &mean, &mut sq);
        std::array::from_fn(|k| finish(sums.n[k], mean[k], sq.s[k]))
    }

    /// Whole-image statistics: one chain over every channel in C order, as the reference sums.
    fn global_stats(
        &self,
        image: ImageData<'_>,
        before: &[Op],
        params: &[Option<NormParams>],
        nonzero: bool,
        tmp: &mut [f32],
    ) -> NormParams {
        let c = self.src[0];
        let mut sums = Acc::<1>::new();
        for ch in 0..c {
            self.pass::<1, false>((image, before, params, nonzero, ch), tmp, &[0.0], &mut sums);
        }
        let mean = [sums.s[0] / sums.n[0].max(1) as f64];
        let mut sq = Acc::<1>::new();
        for ch in 0..c {
            self.pass::<1, true>((image, before, params, nonzero, ch), tmp, &mean, &mut sq);
        }
        vec![finish(sums.n[0], mean[0], sq.s[0]); c]
    }

    /// One statistics pass (sums, or with `SQ` squared deviations from `mean`) over channels
    /// `ch0..ch0 + K` of the transformed array, (ox, oy, z) in C order. Reads the map directly
    /// unless ops come before this normalization (then rows go through `tmp`).
    fn pass<const K: usize, const SQ: bool>(
        &self,
        (image, before, params, nonzero, ch0): Group<'_>,
        tmp: &mut [f32],
        mean: &[f64; K],
        acc: &mut Acc<K>,
    ) {
        let rev = self.axes[2].step < 0;
        match (before.is_empty(), image, rev) {
            (true, ImageData::F32(v), false) => {
                self.direct_mv::<f32, K, false, SQ>(v, nonzero, ch0, mean, acc)
            }
            (true, ImageData::F32(v), true) => {
                self.direct_mv::<f32, K, true, SQ>(v, nonzero, ch0, mean, acc)
            }
            (true, ImageData::Bf16(v), false) => {
                self.direct_mv::<u16, K, false, SQ>(v, nonzero, ch0, mean, acc)
            }
            (true, ImageData::Bf16(v), true) => {
                self.direct_mv::<u16, K, true, SQ>(v, nonzero, ch0, mean, acc)
            }
            (false, ..) => {
                let [_, x, y, z] = self.out_shape();
                let rows = &mut tmp[..K * z];
                for ox in 0..x {
                    for oy in 0..y {
                        for k in 0..K {
                            let out = uninit(&mut rows[k * z..(k + 1) * z]);
                            let row = self.gather_row(image, ch0 + k, ox, oy, out);
                            apply(before, params, ch0 + k, row);
                        }
                        let r: [&[f32]; K] = std::array::from_fn(|k| &rows[k * z..(k + 1) * z]);
                        acc_rows::<f32, K, false, SQ>(r, nonzero, mean, acc);
                    }
                }
            }
        }
    }

    /// [`Plan::direct`], compiled for AVX2 too and picked at run time (the same IEEE operations in
    /// the same order, so the same bits; AVX2 packs the four channel chains into one register).
    fn direct_mv<T: Elem, const K: usize, const REV: bool, const SQ: bool>(
        &self,
        src: &[T],
        nonzero: bool,
        ch0: usize,
        mean: &[f64; K],
        acc: &mut Acc<K>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            #[target_feature(enable = "avx2")]
            fn avx2<T: Elem, const K: usize, const REV: bool, const SQ: bool>(
                p: &Plan,
                src: &[T],
                nonzero: bool,
                ch0: usize,
                mean: &[f64; K],
                acc: &mut Acc<K>,
            ) {
                p.direct::<T, K, REV, SQ>(src, nonzero, ch0, mean, acc)
            }
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2::<T, K, REV, SQ>(self, src, nonzero, ch0, mean, acc) };
        }
        self.direct::<T, K, REV, SQ>(src, nonzero, ch0, mean, acc)
    }

    /// [`Plan::pass`] straight from the stored values (f32 or bf16), z reversed when flipped.
    #[inline(always)]
    fn direct<T: Elem, const K: usize, const REV: bool, const SQ: bool>(
        &self,
        src: &[T],
        nonzero: bool,
        ch0: usize,
        mean: &[f64; K],
        acc: &mut Acc<K>,
    ) {
        let [_, x, y, z] = self.out_shape();
        let m = self.axes[2];
        let z0 = if REV {
            m.off + 1 - m.len as isize
        } else {
            m.off
        } as usize;
        for ox in 0..x {
            for oy in 0..y {
                let rows: [&[T]; K] = std::array::from_fn(|k| {
                    let b = self.src_row(ch0 + k, ox, oy) + z0;
                    &src[b..b + z]
                });
                acc_rows::<T, K, REV, SQ>(rows, nonzero, mean, acc);
            }
        }
    }
}

/// Channel-wise statistics of a four-channel sample with no op before the normalization: the four
/// chains in one AVX2 register (checked by the caller), see `simd`.
#[cfg(target_arch = "x86_64")]
fn four_channel_stats<T: simd::Load4>(plan: &Plan, src: &[T], nonzero: bool) -> NormParams {
    let [_, x, y, z] = plan.out_shape();
    let [_, sx, sy, sz] = plan.src;
    let [ax, ay, az] = plan.axes;
    let geo = simd::Geo {
        ch: sx * sy * sz,
        x_off: ax.off * (sy * sz) as isize,
        x_step: ax.step * (sy * sz) as isize,
        y_off: ay.off * sz as isize,
        y_step: ay.step * sz as isize,
        z0: (if az.step < 0 {
            az.off + 1 - az.len as isize
        } else {
            az.off
        }) as usize,
        rev: az.step < 0,
    };
    // SAFETY (all unsafe calls): the caller checked AVX2.
    let mut sums = unsafe { simd::Acc4::new() };
    unsafe { simd::pass::<T, false>(src, geo, (x, y, z), nonzero, &[0.0; 4], &mut sums) };
    let (n, s) = unsafe { sums.get() };
    let mean: [f64; 4] = std::array::from_fn(|k| s[k] / n[k].max(1) as f64);
    let mut sq = unsafe { simd::Acc4::new() };
    unsafe { simd::pass::<T, true>(src, geo, (x, y, z), nonzero, &mean, &mut sq) };
    let (_, ss) = unsafe { sq.get() };
    (0..4).map(|k| finish(n[k], mean[k], ss[k])).collect()
}

/// The usual op list: which op is the normalization (and its `nonzero`), the scale, the shift.
#[derive(Clone, Copy, Debug, Default)]
struct Tail {
    norm: Option<(usize, bool)>,
    scale: Option<f32>,
    shift: Option<f32>,
}

/// (image, ops before this normalization, their parameters, nonzero, first channel).
type Group<'a> = (
    ImageData<'a>,
    &'a [Op],
    &'a [Option<NormParams>],
    bool,
    usize,
);

/// A stored image value.
trait Elem: Copy {
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

/// bf16 bits.
impl Elem for u16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        bf16_to_f32(self)
    }
}

/// Adds K rows (one per channel, equal lengths) to K chains: with `SQ` the squared deviations from
/// `mean`, else the values and their count; `nonzero` leaves zeros out. Each chain adds in row order
/// (reversed with `REV`), the reference's order; the K chains are independent.
#[inline(always)]
fn acc_rows<T: Elem, const K: usize, const REV: bool, const SQ: bool>(
    rows: [&[T]; K],
    nonzero: bool,
    mean: &[f64; K],
    acc: &mut Acc<K>,
) {
    let z = rows[0].len();
    let rows: [&[T]; K] = std::array::from_fn(|k| &rows[k][..z]);
    for i in 0..z {
        let j = if REV { z - 1 - i } else { i };
        for k in 0..K {
            let v = rows[k][j].f32();
            let keep = !nonzero || v != 0.0;
            if SQ {
                let d = v as f64 - mean[k];
                acc.s[k] += if keep { d * d } else { 0.0 };
            } else {
                acc.n[k] += keep as u64;
                acc.s[k] += if keep { v as f64 } else { 0.0 };
            }
        }
    }
}

/// normalize-intensity's float32 (mean, std) from its float64 sums, as the reference rounds them.
fn finish(n: u64, mean: f64, ss: f64) -> Option<(f32, f32)> {
    if n == 0 {
        return None;
    }
    let mut std32 = (ss / n as f64).sqrt() as f32;
    if std32 == 0.0 {
        std32 = 1.0;
    }
    Some((mean as f32, std32))
}

/// Applies `ops` to one row of channel `ch`, each op over the whole row in turn (the row is in L1).
#[inline]
fn apply(ops: &[Op], params: &[Option<NormParams>], ch: usize, row: &mut [f32]) {
    for (k, op) in ops.iter().enumerate() {
        match *op {
            Op::Normalize { nonzero, .. } => {
                let Some((m, s)) = params[k].as_ref().and_then(|p| p[ch]) else {
                    continue;
                };
                if nonzero {
                    for v in row.iter_mut() {
                        *v = if *v != 0.0 { (*v - m) / s } else { *v };
                    }
                } else {
                    for v in row.iter_mut() {
                        *v = (*v - m) / s;
                    }
                }
            }
            Op::Scale(f) => row.iter_mut().for_each(|v| *v *= f),
            Op::Shift(o) => row.iter_mut().for_each(|v| *v += o),
        }
    }
}

/// Values per chunk when a whole channel is converted through a buffer on its way to the slot.
const CHUNK: usize = 4096;

/// Region bits (one byte per voxel) → `channels` {0, 1} float channels, channel k = bit k.
fn expand_labels(labels: &[u8], out: &mut [MaybeUninit<f32>], vol: usize, channels: usize) {
    let mut tmp = [0f32; CHUNK];
    for bit in 0..channels {
        let out = &mut out[bit * vol..(bit + 1) * vol];
        for (o, l) in out.chunks_mut(CHUNK).zip(labels.chunks(CHUNK)) {
            for (v, &b) in tmp.iter_mut().zip(l) {
                *v = ((b >> bit) & 1) as f32;
            }
            store_stream(&tmp[..l.len()], o);
        }
    }
}

/// The whole image into its slot (a materialized sample): streamed, bf16 decoded on the way.
fn copy_values(image: ImageData<'_>, out: &mut [MaybeUninit<f32>]) {
    match image {
        ImageData::F32(v) => store_stream(&v[..out.len()], out),
        ImageData::Bf16(v) => {
            let mut tmp = [0f32; CHUNK];
            for (o, b) in out.chunks_mut(CHUNK).zip(v.chunks(CHUNK)) {
                for (t, &x) in tmp.iter_mut().zip(b) {
                    *t = bf16_to_f32(x);
                }
                store_stream(&tmp[..b.len()], o);
            }
        }
    }
}

/// Stores `vals` into `out` (same length). On x86-64 the stores are non-temporal: the batch is far
/// larger than the caches and read next by another thread, and plain stores would first read every
/// cache line they write (measured here: 16 MB in ~2.2 ms with plain stores, ~1.0 ms streamed).
/// [`store_fence`] must follow before the slot is handed on.
#[inline(always)]
fn store_stream(vals: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert_eq!(vals.len(), out.len(), "store_stream: length mismatch");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps, _mm_stream_si32};
        let n = vals.len();
        let p = out.as_mut_ptr().cast::<f32>();
        let mut i = 0;
        // SAFETY: every index is < n = the length of both slices; `_mm_stream_ps` gets 16-byte
        // aligned addresses only (the head loop aligns); SSE2 is part of x86-64.
        unsafe {
            while i < n && !(p.add(i) as usize).is_multiple_of(16) {
                _mm_stream_si32(p.add(i).cast::<i32>(), vals[i].to_bits() as i32);
                i += 1;
            }
            while i + 4 <= n {
                _mm_stream_ps(p.add(i), _mm_loadu_ps(vals.as_ptr().add(i)));
                i += 4;
            }
            while i < n {
                _mm_stream_si32(p.add(i).cast::<i32>(), vals[i].to_bits() as i32);
                i += 1;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (o, &v) in out.iter_mut().zip(vals) {
        o.write(v);
    }
}

/// Orders the streamed stores before whatever follows (x86-64 `sfence`; a no-op elsewhere).
#[inline]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Writes values `[start, start + out.len())` of `image` as f32 into `out`; returns them initialized.
#[inline]
fn write_values<'r>(
    image: ImageData<'_>,
    start: usize,
    out: &'r mut [MaybeUninit<f32>],
) -> &'r mut [f32] {
    let n = out.len();
    match image {
        ImageData::F32(v) => {
            let src = &v[start..start + n];
            // SAFETY: `src` and `out` have length n and cannot overlap (`out` is exclusively ours).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr().cast(), n) };
        }
        ImageData::Bf16(v) => {
            for (o, &b) in out.iter_mut().zip(&v[start..start + n]) {
                o.write(bf16_to_f32(b));
            }
        }
    }
    // SAFETY: every element of `out` was written just above.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// An initialized slice seen as possibly-uninitialized (sound: only f32 values are written to it).
pub fn uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the callee can only store initialized f32 values through it.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wf_imaging::sample::{SampleDtype, f32_to_bf16};
    use wf_imaging::transforms::{Label, LabelData};

    /// An MRI-like prefix: a zero background, a bright irregular foreground, a few ~1e-13 "noise"
    /// voxels (which nonzero normalization counts, as MONAI does), regions bits inside.
    fn prefix(shape: [usize; 4], seed: u64) -> Case {
        let [c, x, y, z] = shape;
        let mut rng = Rng::new(seed);
        let mut img = vec![0f32; c * x * y * z];
        let mut lbl = vec![0u8; x * y * z];
        for ch in 0..c {
            for i in 0..x {
                for j in 0..y {
                    for k in 0..z {
                        let (fx, fy, fz) = (
                            i as f64 / x as f64 - 0.5,
                            j as f64 / y as f64 - 0.45,
                            k as f64 / z as f64 - 0.5,
                        );
                        let r = fx * fx + fy * fy + fz * fz;
                        // Every fourth case has an empty last channel (no voxel to normalize).
                        let v = if seed.is_multiple_of(4) && ch == c - 1 {
                            0.0
                        } else if r < 0.16 {
                            (300.0 + 200.0 * ch as f64 + 150.0 * rng.next_f64()) as f32
                        } else if rng.next_f64() < 0.01 {
                            1e-13 * rng.next_f64() as f32
                        } else {
                            0.0
                        };
                        img[((ch * x + i) * y + j) * z + k] = v;
                        if ch == 0 {
                            lbl[(i * y + j) * z + k] = if r < 0.01 {
                                7
                            } else if r < 0.04 {
                                3
                            } else {
                                (r < 0.09) as u8 * 2
                            };
                        }
                    }
                }
            }
        }
        Case {
            id: format!("BRATS_{seed:03}"),
            image: Image::new(shape, img),
            label: Some(Label::new([x, y, z], LabelData::Regions(lbl))),
            affine: [[0.0; 4]; 4],
            channel_first: true,
        }
    }

    fn chain(suffix: &str) -> Chain {
        let v: serde_json::Value = serde_json::from_str(&format!(
            r#"["ensure-channel-first", "convert-labels", {suffix}]"#
        ))
        .unwrap();
        Chain::from_json(&v).unwrap()
    }

    const BRATS: &str = r#"{"rand-spatial-crop": {"roi": [12, 10, 7]}}, {"rand-flip": {"prob": 0.5, "axis": 0}},
        {"rand-flip": {"prob": 0.5, "axis": 1}}, {"rand-flip": {"prob": 0.5, "axis": 2}},
        {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
        {"rand-scale-intensity": {"factors": 0.1, "prob": 0.5}}, {"rand-shift-intensity": {"offsets": 0.1, "prob": 0.5}}"#;

    /// Fused output (image, labels) for `case` under `drawn`.
    fn fused(
        f: &FusedSuffix,
        image: ImageData<'_>,
        labels: &[u8],
        shape: [usize; 4],
        drawn: &DrawnParams,
    ) -> (Vec<f32>, Vec<f32>, [usize; 4]) {
        let plan = f.plan(shape, drawn).unwrap();
        let out = plan.out_shape();
        let vol = out[1] * out[2] * out[3];
        let (mut img, mut lbl) = (vec![f32::NAN; out[0] * vol], vec![f32::NAN; 3 * vol]);
        plan.fill(image, labels, uninit(&mut img), uninit(&mut lbl), 3)
            .unwrap();
        (img, lbl, out)
    }

    fn reference_labels(case: &Case) -> Vec<f32> {
        let Some(LabelData::Regions(r)) = case.label.as_ref().map(|l| &l.data) else {
            panic!("regions")
        };
        let vol = r.len();
        let mut out = vec![0f32; 3 * vol];
        expand_labels(r, uninit(&mut out), vol, 3);
        out
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Checks fused == apply_suffix == replay_suffix for every seed; returns how many seeds flipped
    /// the z axis (a flip whose axes include 2).
    fn check_bit_identical(ch: &Chain, shape: [usize; 4], seeds: std::ops::Range<u64>) -> usize {
        let f = FusedSuffix::new(ch).expect("fusable");
        let z_flips_of = |d: &DrawnParams| {
            let flips = ch.suffix().iter().filter(|s| s.is_random()).zip(&d.draws);
            flips
                .filter(|(s, d)| match (s, d) {
                    (TransformSpec::RandFlip(t), Drawn::Flip { flipped: true }) => {
                        t.axis.as_ref().is_none_or(|a| a.contains(&2))
                    }
                    _ => false,
                })
                .count()
        };
        let (mut flips, mut z_flips) = (0, 0);
        for seed in seeds {
            let case = prefix(shape, seed);
            let Some(LabelData::Regions(lbl)) = case.label.as_ref().map(|l| l.data.clone()) else {
                unreachable!()
            };
            // apply_suffix on a stream == fused draws on the same stream, applied.
            let (want, drawn) = ch
                .apply_suffix(case.clone(), &mut Rng::for_sample(9, &case.id, 1))
                .unwrap();
            let mine = f.draw(shape, &mut Rng::for_sample(9, &case.id, 1));
            assert_eq!(mine, drawn, "seed {seed}: same draws");
            flips += drawn.flipped().unwrap_or(false) as usize;
            z_flips += z_flips_of(&drawn);
            let (img, l, out) = fused(&f, ImageData::F32(&case.image.data), &lbl, shape, &drawn);
            assert_eq!(out, want.image.shape, "seed {seed}");
            assert_eq!(
                bits(&img),
                bits(&want.image.data),
                "seed {seed}: image bits"
            );
            assert_eq!(l, reference_labels(&want), "seed {seed}: labels");
            // replay_suffix with the recorded draws: the same.
            let replayed = ch.replay_suffix(case.clone(), &drawn).unwrap();
            assert_eq!(
                bits(&replayed.image.data),
                bits(&img),
                "seed {seed}: replay"
            );
        }
        assert!(flips > 0, "some seeds flip");
        z_flips
    }

    /// Set: the portable loops run instead of the AVX2 ones (process-wide; harmless to tests running
    /// beside, since both give the same bits).
    pub(super) static NO_SIMD: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    #[test]
    fn fused_suffix_is_bit_identical_to_the_reference_chain() {
        // Four channels, flips on every axis, z % 4 != 0, every fourth case with an empty channel.
        let z_flips = check_bit_identical(&chain(BRATS), [4, 17, 14, 11], 0..12);
        assert!(z_flips > 0, "some seeds flip z");
    }

    #[test]
    fn portable_loops_are_bit_identical_too() {
        NO_SIMD.store(true, std::sync::atomic::Ordering::Relaxed);
        check_bit_identical(&chain(BRATS), [4, 17, 14, 11], 0..12);
        NO_SIMD.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn other_suffix_shapes_are_bit_identical_too() {
        // Global normalization, without nonzero, ops before and after it, all-axes flip, a crop
        // larger than an axis (kept whole), two normalizations, three channels (a partial group).
        for suffix in [
            r#"{"rand-spatial-crop": {"roi": [12, 30, 7]}}, {"rand-flip": {"prob": 0.7}}, {"normalize-intensity": {"nonzero": true}}, {"rand-shift-intensity": {"offsets": 0.2, "prob": 0.9}}"#,
            r#"{"rand-scale-intensity": {"factors": [0.5, 1.5], "prob": 0.9}}, {"rand-flip": {"prob": 0.6, "axis": [2, 0]}}, {"normalize-intensity": {}}, {"normalize-intensity": {"nonzero": true, "channel_wise": true}}, {"rand-scale-intensity": {"factors": 0.2, "prob": 0.9}}"#,
            r#"{"rand-flip": {"prob": 0.5, "axis": 1}}, {"rand-spatial-crop": {"roi": [5, 5, 5]}}, {"rand-flip": {"prob": 0.5, "axis": 1}}, {"normalize-intensity": {"channel_wise": true}}"#,
        ] {
            check_bit_identical(&chain(suffix), [3, 13, 15, 9], 20..30);
        }
    }

    #[test]
    fn bf16_sources_match_the_reference_on_the_decoded_case() {
        let ch = chain(BRATS);
        let f = FusedSuffix::new(&ch).unwrap();
        let shape = [4, 16, 13, 10];
        for seed in 40..46 {
            let mut case = prefix(shape, seed);
            let stored: Vec<u16> = case.image.data.iter().map(|&v| f32_to_bf16(v)).collect();
            // What SampleFile::to_case gives for a bf16 file.
            SampleDtype::Bf16.quantize(&mut case.image.data);
            let Some(LabelData::Regions(lbl)) = case.label.as_ref().map(|l| l.data.clone()) else {
                unreachable!()
            };
            let (want, drawn) = ch.apply_suffix(case.clone(), &mut Rng::new(seed)).unwrap();
            let (img, _, _) = fused(&f, ImageData::Bf16(&stored), &lbl, shape, &drawn);
            assert_eq!(bits(&img), bits(&want.image.data), "seed {seed}");
        }
    }

    #[test]
    fn unfusable_suffixes_and_bad_draws_are_refused() {
        // A normalization before a flip sums in another order: not fused.
        let ch = chain(
            r#"{"rand-spatial-crop": {"roi": [4, 4, 4]}}, {"normalize-intensity": {}}, {"rand-flip": {"prob": 0.5}}"#,
        );
        assert!(FusedSuffix::new(&ch).is_none());
        let f = FusedSuffix::new(&chain(BRATS)).unwrap();
        let bad = DrawnParams {
            draws: vec![Drawn::Crop {
                start: [10, 0, 0],
                size: [12, 10, 7],
            }],
        };
        assert!(
            f.plan([4, 17, 14, 11], &bad)
                .unwrap_err()
                .contains("does not fit")
        );
        let short = DrawnParams {
            draws: vec![Drawn::Flip { flipped: true }],
        };
        assert!(f.plan([4, 17, 14, 11], &short).is_err());
        let p = Plan::identity([1, 2, 2, 2]);
        let (mut img, mut lbl) = (vec![0f32; 8], vec![0f32; 24]);
        let e = p
            .fill(
                ImageData::F32(&[0.0; 8]),
                &[],
                uninit(&mut img),
                uninit(&mut lbl),
                3,
            )
            .unwrap_err();
        assert!(e.contains("without region labels"), "{e}");
    }

    #[test]
    fn identity_plan_copies_and_expands_labels() {
        let image: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let labels = [0u8, 1 | 2, 2, 1 | 2 | 4];
        let p = Plan::identity([2, 1, 2, 2]);
        let (mut img, mut lbl) = (vec![0f32; 8], vec![0f32; 12]);
        p.fill(
            ImageData::F32(&image),
            &labels,
            uninit(&mut img),
            uninit(&mut lbl),
            3,
        )
        .unwrap();
        assert_eq!(img, image);
        assert_eq!(
            lbl,
            [0., 1., 0., 1., 0., 1., 1., 1., 0., 0., 0., 1.],
            "TC, WT, ET"
        );
    }
}
