//! Times forward and forward+backward of the BraTS UNet on CPU: `cargo run --release -p wf-trainer --example unet_speed -- 1 64 64 32`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use wf_trainer::loss::DiceLoss;
use wf_trainer::unet::{UNet, UNetConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [n, d, h, w] = <[usize; 4]>::try_from(if args.is_empty() {
        vec![1, 64, 64, 32]
    } else {
        args
    })
    .map_err(|_| "usage: unet_speed N D H W")?;
    let vm = VarMap::new();
    let net = UNet::new(
        &UNetConfig::brats(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let x = Tensor::randn(0f32, 1f32, (n, 4, d, h, w), &Device::Cpu)?;
    let t = Tensor::rand(0f32, 1f32, (n, 3, d, h, w), &Device::Cpu)?
        .ge(0.7)?
        .to_dtype(DType::F32)?;
    let loss = DiceLoss::default();
    println!(
        "input {n}x4x{d}x{h}x{w}, {} threads",
        rayon::current_num_threads()
    );
    for i in 0..3 {
        let t0 = Instant::now();
        let y = net.forward_t(&x, false)?;
        let fwd = t0.elapsed();
        let t1 = Instant::now();
        let y2 = net.forward_t(&x, true)?;
        let l = loss.forward(&y2, &t)?;
        let _g = l.backward()?;
        let step = t1.elapsed();
        println!(
            "run {i}: forward {:.3} s, forward+backward {:.3} s (out {:?})",
            fwd.as_secs_f64(),
            step.as_secs_f64(),
            y.dims()
        );
    }
    Ok(())
}
