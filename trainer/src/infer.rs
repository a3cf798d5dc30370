//! Whole-volume inference: MONAI's `sliding_window_inference` (constant or Gaussian blending) and the sigmoid >= 0.5 post-processing.

use crate::error::{Result, TrainerError};
use crate::unet::{UNet, UNetConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Window starts along one axis, as MONAI's `_get_scan_interval` + `dense_patch_slices`.
fn starts(size: usize, roi: usize, overlap: f64) -> Vec<usize> {
    let interval = if roi == size {
        roi
    } else {
        ((roi as f64 * (1.0 - overlap)) as usize).max(1)
    };
    let num = size.div_ceil(interval);
    let count = (0..num)
        .find(|d| d * interval + roi >= size)
        .map_or(1, |d| d + 1);
    (0..count).map(|i| (i * interval).min(size - roi)).collect()
}

/// How overlapping windows are blended (MONAI's `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// Every voxel of a window weighs the same.
    #[default]
    Constant,
    /// Voxels weigh by a Gaussian centred on the window, sigma 0.125 × its size per axis
    /// (MONAI's `sigma_scale=0.125`), so window edges count less.
    Gaussian,
}

impl Blend {
    pub fn name(self) -> &'static str {
        match self {
            Blend::Constant => "constant",
            Blend::Gaussian => "gaussian",
        }
    }
}

/// MONAI's `compute_importance_map(roi, mode, sigma_scale=0.125)` in float32, C order: ones, or
/// the outer product of `exp(x² / (-2 σ²))` per axis (x from -(n-1)/2 to (n-1)/2, σ = 0.125 n),
/// clamped below at max(its minimum, 1e-3).
pub fn importance_map(roi: [usize; 3], blend: Blend) -> Vec<f32> {
    let n: usize = roi.iter().product();
    if blend == Blend::Constant {
        return vec![1.0; n];
    }
    let axis = |size: usize| -> Vec<f32> {
        let sigma = size as f64 * 0.125;
        let denom = (-2.0 * sigma * sigma) as f32;
        (0..size)
            .map(|i| {
                let x = (-((size as f32 - 1.0) / 2.0)) + i as f32;
                (x * x / denom).exp()
            })
            .collect()
    };
    let (a, b, c) = (axis(roi[0]), axis(roi[1]), axis(roi[2]));
    let mut map = Vec::with_capacity(n);
    for &u in &a {
        for &v in &b {
            let uv = u * v;
            for &w in &c {
                map.push(uv * w);
            }
        }
    }
    let min = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
    map.iter_mut().for_each(|v| *v = v.max(min));
    map
}

/// New bytes a [`Predictor::logits`] pass allocates at least, for a `(C, X, Y, Z)` image: the
/// zero-padded image (when an axis is shorter than the window), the window list, the accumulated
/// output and its counts, and one batch of windows with the network's input, first-level features
/// and output. A lower bound: deeper levels and the convolutions' scratch add to it.
pub fn inference_bytes(
    cfg: &UNetConfig,
    shape: [usize; 4],
    roi: [usize; 3],
    overlap: f64,
    sw_batch_size: usize,
) -> u128 {
    let spatial = [shape[1], shape[2], shape[3]];
    let size: [usize; 3] = std::array::from_fn(|a| spatial[a].max(roi[a]));
    let vol: u128 = size.iter().map(|&n| n as u128).product();
    let roi_vol: u128 = roi.iter().map(|&n| n as u128).product();
    let padded = if size == spatial {
        0
    } else {
        shape[0] as u128 * vol * 4
    };
    // Window starts per axis are at most one per voxel: counting them is cheap.
    let windows: u128 = (0..3)
        .map(|a| {
            if roi[a] == 0 || overlap.is_nan() || !(0.0..1.0).contains(&overlap) {
                1
            } else {
                starts(size[a], roi[a], overlap).len() as u128
            }
        })
        .product();
    let batch = windows.min(sw_batch_size.max(1) as u128);
    let first = cfg.channels.first().copied().unwrap_or(0) as u128;
    let per_window = roi_vol * 4 * (cfg.in_channels as u128 + first + cfg.out_channels as u128);
    padded + windows * 24 + (cfg.out_channels as u128 + 1) * vol * 4 + batch * per_window
}

/// Runs `predict` over windows of `roi` voxels covering `x` (N, C, D, H, W) with the given
/// fractional `overlap`, `sw_batch_size` windows per call, and averages overlapping predictions
/// weighted by `blend`'s importance map. Axes shorter than the window are zero-padded
/// symmetrically, then cropped back, as in MONAI.
pub fn sliding_window_inference(
    x: &Tensor,
    roi: [usize; 3],
    sw_batch_size: usize,
    overlap: f64,
    blend: Blend,
    predict: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() != 5 || roi.contains(&0) || sw_batch_size == 0 || !(0.0..1.0).contains(&overlap) {
        return Err(TrainerError::shape(
            "sliding_window_inference",
            format!(
                "needs a (N, C, D, H, W) input, roi >= 1, sw_batch_size >= 1 and overlap in [0, 1); got {dims:?}, roi {roi:?}, {sw_batch_size}, {overlap}"
            ),
        ));
    }
    let spatial = [dims[2], dims[3], dims[4]];
    let mut padded = x.clone();
    let mut pad_lo = [0usize; 3];
    for a in 0..3 {
        let diff = roi[a].saturating_sub(spatial[a]);
        if diff > 0 {
            pad_lo[a] = diff / 2;
            padded = padded.pad_with_zeros(2 + a, diff / 2, diff - diff / 2)?;
        }
    }
    let size = [padded.dim(2)?, padded.dim(3)?, padded.dim(4)?];
    let axes: Vec<Vec<usize>> = (0..3).map(|a| starts(size[a], roi[a], overlap)).collect();
    let mut windows = Vec::new();
    for &z in &axes[0] {
        for &y in &axes[1] {
            for &w in &axes[2] {
                windows.push([z, y, w]);
            }
        }
    }
    let crop = |t: &Tensor, s: [usize; 3]| -> Result<Tensor> {
        Ok(t.narrow(2, s[0], roi[0])?
            .narrow(3, s[1], roi[1])?
            .narrow(4, s[2], roi[2])?)
    };

    let n = dims[0];
    let weight = importance_map(roi, blend);
    let mut out: Option<Vec<f32>> = None;
    let mut out_c = 0;
    let mut count = vec![0f32; size.iter().product()];
    let plane = size[1] * size[2];
    for b in 0..n {
        let img = padded.narrow(0, b, 1)?;
        for group in windows.chunks(sw_batch_size) {
            let batch = Tensor::cat(
                &group
                    .iter()
                    .map(|s| crop(&img, *s))
                    .collect::<Result<Vec<_>>>()?,
                0,
            )?;
            let pred = predict(&batch)?.to_dtype(DType::F32)?;
            let pd = pred.dims().to_vec();
            if pd.len() != 5 || pd[0] != group.len() || pd[2..] != roi {
                return Err(TrainerError::shape(
                    "sliding_window_inference",
                    format!("predictor returned {pd:?} for windows {:?}", batch.dims()),
                ));
            }
            let acc = out.get_or_insert_with(|| {
                out_c = pd[1];
                vec![0f32; n * pd[1] * size.iter().product::<usize>()]
            });
            if pd[1] != out_c {
                return Err(TrainerError::shape(
                    "sliding_window_inference",
                    "predictor changed its channel count".to_string(),
                ));
            }
            let pv = pred.flatten_all()?.to_vec1::<f32>()?;
            let rv = roi[0] * roi[1] * roi[2];
            for (wi, s) in group.iter().enumerate() {
                for c in 0..out_c {
                    let src = &pv[(wi * out_c + c) * rv..(wi * out_c + c + 1) * rv];
                    let base = (b * out_c + c) * size.iter().product::<usize>();
                    for z in 0..roi[0] {
                        for y in 0..roi[1] {
                            let o = base + (s[0] + z) * plane + (s[1] + y) * size[2] + s[2];
                            let r = (z * roi[1] + y) * roi[2];
                            for ((a, v), w) in acc[o..o + roi[2]]
                                .iter_mut()
                                .zip(&src[r..r + roi[2]])
                                .zip(&weight[r..r + roi[2]])
                            {
                                *a += *v * *w;
                            }
                        }
                    }
                }
                if b == 0 {
                    for z in 0..roi[0] {
                        for y in 0..roi[1] {
                            let o = (s[0] + z) * plane + (s[1] + y) * size[2] + s[2];
                            let r = (z * roi[1] + y) * roi[2];
                            for (c, w) in
                                count[o..o + roi[2]].iter_mut().zip(&weight[r..r + roi[2]])
                            {
                                *c += *w;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut acc = out.unwrap_or_default();
    let vol: usize = size.iter().product();
    for chunk in acc.chunks_mut(vol) {
        chunk.iter_mut().zip(&count).for_each(|(a, c)| {
            if *c > 0.0 {
                *a /= *c
            }
        });
    }
    let full = Tensor::from_vec(acc, (n, out_c, size[0], size[1], size[2]), x.device())?;
    Ok(full
        .narrow(2, pad_lo[0], spatial[0])?
        .narrow(3, pad_lo[1], spatial[1])?
        .narrow(4, pad_lo[2], spatial[2])?
        .contiguous()?)
}

/// MONAI's `Activations(sigmoid=True)` + `AsDiscrete(threshold=0.5)`: 1 where the logit is >= 0.
pub fn threshold_logits(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.ge(0.0)?.to_dtype(DType::U8)?)
}

/// A trained UNet loaded from an export directory (`config.json` + `model.safetensors`), for
/// whole-volume prediction.
pub struct Predictor {
    net: UNet,
    blend: Blend,
}

impl Predictor {
    pub fn from_export(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let bytes = std::fs::read(&cfg_path).map_err(|source| TrainerError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let cfg: UNetConfig =
            serde_json::from_slice(&bytes).map_err(|source| TrainerError::Json {
                path: cfg_path.clone(),
                source,
            })?;
        let weights_path = dir.join("model.safetensors");
        let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
            TrainerError::Checkpoint {
                path: weights_path.clone(),
                detail: e.to_string(),
            }
        })?;
        // Check names and shapes first, so a mismatching export names its tensor.
        let vm = candle_nn::VarMap::new();
        UNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
        crate::checkpoint::load_weights(&weights_path, &vm, &weights)?;
        let net = UNet::new(
            &cfg,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        Ok(Predictor {
            net,
            blend: Blend::Constant,
        })
    }

    pub fn new(net: UNet) -> Self {
        Predictor {
            net,
            blend: Blend::Constant,
        }
    }

    /// Blends overlapping windows by `blend` (constant unless set).
    pub fn with_blend(mut self, blend: Blend) -> Self {
        self.blend = blend;
        self
    }

    pub fn config(&self) -> &UNetConfig {
        self.net.config()
    }

    /// Logits (C_out, X, Y, Z) for one preprocessed image (C_in, X, Y, Z) by sliding windows of
    /// `roi` (each a multiple of the network's size divisor, 16 for BraTS).
    pub fn logits(
        &self,
        image: &Tensor,
        roi: [usize; 3],
        overlap: f64,
        sw_batch_size: usize,
    ) -> Result<Tensor> {
        let div = self.net.config().size_divisor();
        if roi.iter().any(|r| r % div != 0) {
            return Err(TrainerError::Config {
                field: "roi",
                detail: format!("{roi:?} must be multiples of {div}"),
            });
        }
        if let [c, x, y, z] = image.dims()[..] {
            self.check_memory([c, x, y, z], roi, overlap, sw_batch_size)?;
        }
        let x = image.unsqueeze(0)?;
        let y = sliding_window_inference(&x, roi, sw_batch_size, overlap, self.blend, &mut |w| {
            self.net.forward_t(w, false)
        })?;
        Ok(y.squeeze(0)?)
    }

    /// Refuses a sliding-window pass over a `(C, X, Y, Z)` image whose buffers
    /// ([`inference_bytes`]) exceed the memory limit (`wf_imaging::memory`), before allocating.
    pub fn check_memory(
        &self,
        shape: [usize; 4],
        roi: [usize; 3],
        overlap: f64,
        sw_batch_size: usize,
    ) -> Result<()> {
        let need = inference_bytes(self.net.config(), shape, roi, overlap, sw_batch_size);
        wf_imaging::memory::check(need).map_err(|why| TrainerError::Config {
            field: "roi",
            detail: format!(
                "sliding-window inference of a {:?} image with roi {roi:?} and {sw_batch_size} window(s) per pass {why}",
                &shape[1..]
            ),
        })
    }

    /// [`Predictor::logits`] for a C-order `(C, X, Y, Z)` f32 image held as a plain slice, as a
    /// C-order image of the output channels on the same grid.
    pub fn logits_of(
        &self,
        image: &[f32],
        shape: [usize; 4],
        roi: [usize; 3],
        overlap: f64,
        sw_batch_size: usize,
    ) -> Result<wf_imaging::transforms::Image> {
        let t = Tensor::from_slice(image, shape.as_slice(), &Device::Cpu)?;
        let logits = self.logits(&t, roi, overlap, sw_batch_size)?;
        let [c, x, y, z] = logits.dims()[..] else {
            return Err(TrainerError::shape(
                "logits_of",
                format!("the network returned {:?}", logits.dims()),
            ));
        };
        Ok(wf_imaging::transforms::Image::new(
            [c, x, y, z],
            logits.flatten_all()?.to_vec1::<f32>()?,
        ))
    }

    /// Region bits per voxel (channel k at or above 0.5 after sigmoid sets bit k: TC = 1, WT = 2, ET = 4),
    /// X-major C order, as wf-imaging stores labels.
    pub fn regions(
        &self,
        image: &Tensor,
        roi: [usize; 3],
        overlap: f64,
        sw_batch_size: usize,
    ) -> Result<Vec<u8>> {
        let logits = self.logits(image, roi, overlap, sw_batch_size)?;
        let c = logits.dim(0)?;
        let v = threshold_logits(&logits)?
            .flatten_from(1)?
            .to_vec2::<u8>()?;
        let mut out = vec![0u8; v.first().map_or(0, |r| r.len())];
        for (k, row) in v.iter().enumerate().take(c.min(8)) {
            for (o, &b) in out.iter_mut().zip(row) {
                *o |= b << k;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture, rel_err};

    /// The fixture's predictor: each window plus its own mean, so the result depends on the
    /// windows and their blending.
    fn window_plus_mean(w: &Tensor) -> Result<Tensor> {
        let mean = w
            .flatten_from(1)?
            .mean_keepdim(1)?
            .reshape((w.dim(0)?, 1, 1, 1, 1))?;
        Ok(w.broadcast_add(&mean)?)
    }

    #[test]
    fn matches_monai_sliding_window_inference() {
        let t = fixture("sliding.safetensors");
        for (i, overlap) in [0.25, 0.5].into_iter().enumerate() {
            let mut calls = 0;
            let got = sliding_window_inference(
                &t["input"],
                [8, 8, 8],
                3,
                overlap,
                Blend::Constant,
                &mut |w| {
                    calls += 1;
                    assert!(w.dim(0).unwrap() <= 3);
                    window_plus_mean(w)
                },
            )
            .unwrap();
            let e = rel_err(&got, &t[&format!("overlap{i}")]);
            assert!(e < 1e-5, "overlap {overlap}: rel err {e}");
            assert!(calls > 1);
        }
    }

    #[test]
    fn gaussian_blending_matches_monai() {
        let t = fixture("sliding.safetensors");
        for (i, overlap) in [0.25, 0.5].into_iter().enumerate() {
            let got = sliding_window_inference(
                &t["input"],
                [8, 8, 8],
                3,
                overlap,
                Blend::Gaussian,
                &mut |w| window_plus_mean(w),
            )
            .unwrap();
            let e = rel_err(&got, &t[&format!("gaussian{i}")]);
            assert!(e < 1e-5, "overlap {overlap}: rel err {e}");
            // Not the constant blend's result: the weights matter here.
            assert!(rel_err(&got, &t[&format!("overlap{i}")]) > 1e-3);
        }
        // MONAI's map: 1 at the centre of an odd window, exp(-8) ≈ 3.4e-4 clamped to 1e-3 at
        // the corners of a large one.
        let m = importance_map([5, 5, 5], Blend::Gaussian);
        assert_eq!(m[62], 1.0);
        let big = importance_map([64, 64, 64], Blend::Gaussian);
        assert_eq!(big[0], 1e-3);
        assert!(
            importance_map([2, 3, 4], Blend::Constant)
                .iter()
                .all(|v| *v == 1.0)
        );
    }

    #[test]
    fn predicts_region_bits_from_an_export() {
        let dir = tempfile::tempdir().unwrap();
        crate::testutil::train_tiny(dir.path(), 1);
        let out = dir.path().join("export");
        crate::export::export(dir.path(), &out, "test").unwrap();
        let p = Predictor::from_export(&out).unwrap();
        let tiny = crate::unet::UNetConfig {
            channels: vec![2, 4, 8],
            strides: vec![2, 2],
            ..crate::unet::UNetConfig::brats()
        };
        assert_eq!(p.config(), &tiny);
        let image = crate::testutil::randn(9, &[4, 12, 8, 5]);
        let r = p.regions(&image, [8, 8, 4], 0.25, 2).unwrap();
        assert_eq!(r.len(), 12 * 8 * 5);
        assert!(r.iter().all(|b| *b < 8));
        let logits = p.logits(&image, [8, 8, 4], 0.25, 2).unwrap();
        let tc = logits
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(tc.iter().zip(&r).all(|(l, b)| (*l > 0.0) == (b & 1 == 1)));
        assert!(p.logits(&image, [6, 8, 4], 0.25, 2).is_err());
    }

    #[test]
    fn window_starts_cover_the_axis() {
        assert_eq!(starts(20, 8, 0.25), vec![0, 6, 12]);
        assert_eq!(starts(8, 8, 0.5), vec![0]);
        assert_eq!(starts(13, 8, 0.5), vec![0, 4, 5]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let x = Tensor::zeros((1, 1, 4, 4, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(
            sliding_window_inference(&x, [4, 4, 4], 0, 0.25, Blend::Constant, &mut |w| Ok(
                w.clone()
            ))
            .is_err()
        );
        assert!(
            sliding_window_inference(&x, [4, 4, 4], 1, 1.0, Blend::Constant, &mut |w| Ok(
                w.clone()
            ))
            .is_err()
        );
        assert!(
            sliding_window_inference(&x, [4, 4, 4], 1, 0.0, Blend::Constant, &mut |w| Ok(
                w.narrow(2, 0, 2)?
            ))
            .is_err()
        );
    }
}
