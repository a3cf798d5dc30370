//! Times the fused CPU ops against their composite twins at the UNet's largest activation
//! shapes: `cargo run --release -p wf-trainer --example fused_speed` (threads: `RAYON_NUM_THREADS`).
//! Each line is the median of 15 runs of forward + backward (a sum of the output times a fixed
//! random tensor, so every gradient is dense).

use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use wf_trainer::ops;

fn median(mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let mut t = Vec::new();
    for _ in 0..15 {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "{} threads; ms per forward + backward",
        rayon::current_num_threads()
    );
    for dims in [[2usize, 16, 24, 24, 16], [2, 3, 48, 48, 32]] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., &dims, &dev)?)?;
        let a = Var::from_tensor(&Tensor::new(&[0.25f32], &dev)?)?;
        let r = Tensor::randn(0f32, 1., &dims, &dev)?;
        let fused = median(|| {
            let y = ops::instance_norm_prelu(x.as_tensor(), a.as_tensor(), 1e-5)?;
            (y * &r)?.sum_all()?.backward().map(|_| ())
        })?;
        let composite = median(|| {
            let y = ops::instance_norm_composite(x.as_tensor(), 1e-5)?;
            let y = ops::prelu_composite(&y, a.as_tensor())?;
            (y * &r)?.sum_all()?.backward().map(|_| ())
        })?;
        ops::profile::enable(true);
        let _ = ops::profile::take();
        for _ in 0..10 {
            let y = ops::instance_norm_prelu(x.as_tensor(), a.as_tensor(), 1e-5)?;
            (y * &r)?.sum_all()?.backward()?;
        }
        ops::profile::enable(false);
        for (k, n, s) in ops::profile::take() {
            println!("   {k}: {:.3} ms per call", s / n as f64 * 1e3);
        }
        println!(
            "instance norm + PReLU {dims:?}: fused {:.2}, candle ops {:.2}",
            fused * 1e3,
            composite * 1e3
        );
    }
    Ok(())
}
