//! Trains the BraTS UNet on CPU on synthetic blobs and prints per-epoch Dice and speed:
//! `cargo run --release -p wf-trainer --example train_synthetic -- OUT_DIR [EPOCHS] [SIZE]`.
//! A convergence and throughput check of the loop, independent of the real loader.

use candle_core::{Device, Tensor};
use std::time::Instant;
use wf_trainer::optim::AdamConfig;
use wf_trainer::train::{TrainConfig, TrainEvent, VecSource, train};

/// An ellipsoid "tumour" (WT) with a core (TC) and an enhancing rim-free centre (ET), visible in
/// the 4 channels with noise; positions and radii vary per sample.
fn sample(seed: u64, s: usize) -> (Tensor, Tensor) {
    let mut r = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        (r >> 11) as f64 / (1u64 << 53) as f64
    };
    let (d, h, w) = (s, s, s / 2);
    let c = [
        d as f64 * (0.3 + 0.4 * next()),
        h as f64 * (0.3 + 0.4 * next()),
        w as f64 * (0.3 + 0.4 * next()),
    ];
    let rad = s as f64 * (0.12 + 0.1 * next());
    let vox = d * h * w;
    let (mut img, mut lbl) = (vec![0f32; 4 * vox], vec![0f32; 3 * vox]);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let i = (z * h + y) * w + x;
                let dist = (((z as f64 - c[0]).powi(2)
                    + (y as f64 - c[1]).powi(2)
                    + (2.0 * x as f64 - 2.0 * c[2]).powi(2))
                .sqrt())
                    / rad;
                let (wt, tc, et) = (dist < 1.0, dist < 0.6, dist < 0.3);
                lbl[i] = tc as u8 as f32;
                lbl[vox + i] = wt as u8 as f32;
                lbl[2 * vox + i] = et as u8 as f32;
                for ch in 0..4 {
                    let signal = [
                        wt as u8 as f64,
                        tc as u8 as f64,
                        et as u8 as f64,
                        0.5 * wt as u8 as f64,
                    ][ch];
                    img[ch * vox + i] = (signal + 0.8 * (next() - 0.5)) as f32;
                }
            }
        }
    }
    let dev = Device::Cpu;
    (
        Tensor::from_vec(img, (4, d, h, w), &dev).unwrap(),
        Tensor::from_vec(lbl, (3, d, h, w), &dev).unwrap(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: train_synthetic OUT_DIR [EPOCHS] [SIZE]")?;
    let epochs: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let train_set: Vec<_> = (0..16).map(|i| sample(i, size)).collect();
    let val_set: Vec<_> = (100..104).map(|i| sample(i, size)).collect();
    let mut tr = VecSource::new(train_set, 2, Some(0))?;
    let mut va = VecSource::new(val_set, 2, None)?;
    let cfg = TrainConfig {
        epochs,
        adam: AdamConfig {
            lr: 1e-3,
            ..Default::default()
        },
        ..Default::default()
    };
    let t0 = Instant::now();
    let s = train(
        &cfg,
        std::path::Path::new(&out),
        &mut tr,
        &mut va,
        &mut |e| {
            if let TrainEvent::Epoch { metrics: m, timing } = e {
                println!(
                    "epoch {} loss {:.4} val mean Dice {:.3} (TC {:.3} WT {:.3} ET {:.3}) {:.2} samples/s, {:.0} s total",
                    m.epoch,
                    m.train_loss,
                    m.val_mean_dice.unwrap_or(f32::NAN),
                    m.val_dice_tc.unwrap_or(f32::NAN),
                    m.val_dice_wt.unwrap_or(f32::NAN),
                    m.val_dice_et.unwrap_or(f32::NAN),
                    timing.train_samples_per_second,
                    t0.elapsed().as_secs_f64()
                );
            }
        },
    )?;
    println!(
        "best epoch {:?}, mean Dice {:?}",
        s.best_epoch, s.best_val_mean_dice
    );
    Ok(())
}
