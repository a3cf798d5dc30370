//! Times the conv primitives on the UNet's large shapes: `cargo run --release -p wf-trainer --example conv_speed`.

use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use wf_trainer::ops::{self, Conv3dConfig, ConvTranspose3dConfig};

fn time<F: FnMut()>(label: &str, flops: f64, mut f: F) {
    f();
    let n = 3;
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    let s = t0.elapsed().as_secs_f64() / n as f64;
    println!(
        "{label:<48} {:8.2} ms  {:6.1} GFLOP/s",
        s * 1e3,
        flops / s / 1e9
    );
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!("{} threads", rayon::current_num_threads());
    for (ci, co, d, h, w, s) in [
        (16usize, 16usize, 32usize, 32usize, 16usize, 1usize),
        (4, 16, 64, 64, 32, 2),
        (3, 3, 64, 64, 32, 1),
        (32, 32, 16, 16, 8, 1),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, ci, d, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (co, ci, 3, 3, 3), &dev)?)?;
        let cfg = Conv3dConfig {
            stride: [s; 3],
            padding: [1; 3],
            dilation: [1; 3],
        };
        let out_vol = (d / s * h / s * w / s) as f64;
        let flops = 2.0 * (co * ci * 27) as f64 * out_vol;
        time(
            &format!("conv3d {ci}->{co} {d}x{h}x{w} s{s} fwd"),
            flops,
            || {
                ops::conv3d(x.as_tensor(), wt.as_tensor(), &cfg).unwrap();
            },
        );
        time(
            &format!("conv3d {ci}->{co} {d}x{h}x{w} s{s} fwd+bwd"),
            3.0 * flops,
            || {
                let y = ops::conv3d(x.as_tensor(), wt.as_tensor(), &cfg).unwrap();
                y.sum_all().unwrap().backward().unwrap();
            },
        );
    }
    // Top transposed conv: 32 -> 3 channels, 32x32x16 -> 64x64x32.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 32, 32, 32, 16), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (32, 3, 3, 3, 3), &dev)?)?;
    let cfg = ConvTranspose3dConfig {
        stride: [2; 3],
        padding: [1; 3],
        dilation: [1; 3],
        output_padding: [1; 3],
    };
    let flops = 2.0 * (32 * 3 * 27) as f64 * (32 * 32 * 16) as f64;
    time(
        "conv_transpose3d 32->3 32x32x16 s2 fwd+bwd",
        3.0 * flops,
        || {
            let y = ops::conv_transpose3d(x.as_tensor(), wt.as_tensor(), &cfg).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        },
    );
    // Elementwise ops at 16x64x64x32; the loss multiplies by a dense tensor so backward sees a
    // contiguous gradient, as inside the network.
    let big = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 16, 64, 64, 32), &dev)?)?;
    let r = Tensor::randn(0f32, 1., (1, 16, 64, 64, 32), &dev)?;
    let r2 = Tensor::cat(&[&r, &r], 1)?;
    let bwd = |y: Tensor, r: &Tensor| {
        (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    };
    time("baseline: mul + sum_all fwd+bwd", 0.0, || {
        bwd(big.as_tensor().clone(), &r)
    });
    time("instance_norm fwd+bwd", 0.0, || {
        bwd(ops::instance_norm(big.as_tensor(), 1e-5).unwrap(), &r)
    });
    let a = Var::from_tensor(&Tensor::new(&[0.25f32], &dev)?)?;
    time("prelu fwd+bwd", 0.0, || {
        bwd(ops::prelu(big.as_tensor(), a.as_tensor()).unwrap(), &r)
    });
    let bias = Var::from_tensor(&Tensor::randn(0f32, 1., 16, &dev)?)?;
    time("bias broadcast_add fwd+bwd", 0.0, || {
        bwd(
            big.as_tensor()
                .broadcast_add(&bias.as_tensor().reshape((1, 16, 1, 1, 1)).unwrap())
                .unwrap(),
            &r,
        )
    });
    time("cat (2x) fwd+bwd", 0.0, || {
        bwd(
            Tensor::cat(&[big.as_tensor(), big.as_tensor()], 1).unwrap(),
            &r2,
        )
    });
    time("residual add fwd+bwd", 0.0, || {
        bwd((big.as_tensor() + big.as_tensor()).unwrap(), &r)
    });
    Ok(())
}
