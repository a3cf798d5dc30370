//! Helpers shared by the unit tests: seeded data (candle's CPU RNG cannot be seeded) and fixtures.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// Deterministic standard-normal-ish values (sum of uniforms), reproducible across runs and platforms.
pub fn randn(seed: u64, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let v: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path(name), &Device::Cpu).unwrap()
}

pub fn fixture_metadata(name: &str) -> HashMap<String, String> {
    let bytes = std::fs::read(fixture_path(name)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| relative to the largest |b| (so tiny entries do not dominate).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let (a, b) = (to_vec(a), to_vec(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Trains a narrow UNet (channels 2, 4, 8) for `epochs` on two random 4x8x8x8 samples whose labels are
/// their first three channels > 0, writing checkpoints into `dir`: the setup of export and inference tests.
pub fn train_tiny(dir: &std::path::Path, epochs: usize) -> crate::train::TrainSummary {
    use crate::train::{TrainConfig, VecSource, train};
    use crate::unet::UNetConfig;
    let samples: Vec<(Tensor, Tensor)> = (0..2)
        .map(|i| {
            let x = randn(i, &[4, 8, 8, 8]);
            let y = x
                .narrow(0, 0, 3)
                .unwrap()
                .gt(0.0)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            (x, y)
        })
        .collect();
    let cfg = TrainConfig {
        unet: UNetConfig {
            channels: vec![2, 4, 8],
            strides: vec![2, 2],
            ..UNetConfig::brats()
        },
        epochs,
        ..Default::default()
    };
    let mut tr = VecSource::new(samples.clone(), 2, None).unwrap();
    let mut va = VecSource::new(samples, 2, None).unwrap();
    train(&cfg, dir, &mut tr, &mut va, &mut |_| {}).unwrap()
}
