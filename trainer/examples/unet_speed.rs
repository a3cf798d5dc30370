//! Times training steps of the BraTS UNet on CPU: `cargo run --release -p wf-trainer --example
//! unet_speed -- N D H W [STEPS]` (default 2 64 64 32, 7 steps). A step is what train-unet does per
//! batch: forward in training mode, MONAI's Dice loss (sigmoid, squared_pred), backward, and the
//! Adam update (lr 1e-4). Two warm-up steps, then one `step: SECONDS` line per timed step, and the
//! median (`bench/unet_step_vs_pytorch.sh` runs the same step in PyTorch + MONAI beside it).
//! Threads: rayon's default, or `RAYON_NUM_THREADS`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use wf_trainer::loss::DiceLoss;
use wf_trainer::optim::{Adam, AdamConfig};
use wf_trainer::unet::{UNet, UNetConfig, init_seeded};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("usage: unet_speed N D H W [STEPS]: {e}"))?;
    let (shape, steps) = match args[..] {
        [] => ([2, 64, 64, 32], 7),
        [n, d, h, w] => ([n, d, h, w], 7),
        [n, d, h, w, s] => ([n, d, h, w], s.max(1)),
        _ => return Err("usage: unet_speed N D H W [STEPS]".into()),
    };
    let [n, d, h, w] = shape;
    let vm = VarMap::new();
    let net = UNet::new(
        &UNetConfig::brats(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    init_seeded(&vm, 0)?;
    let mut opt = Adam::from_varmap(
        &vm,
        AdamConfig {
            lr: 1e-4,
            ..AdamConfig::default()
        },
    )?;
    let x = Tensor::randn(0f32, 1f32, (n, 4, d, h, w), &Device::Cpu)?;
    let t = Tensor::rand(0f32, 1f32, (n, 3, d, h, w), &Device::Cpu)?
        .ge(0.7)?
        .to_dtype(DType::F32)?;
    let loss = DiceLoss::default();
    println!(
        "input {n}x4x{d}x{h}x{w}, {} threads, 2 warm-up steps, {steps} timed",
        rayon::current_num_threads()
    );
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let y = net.forward_t(&x, true)?;
        let l = loss.forward(&y, &t)?;
        let grads = l.backward()?;
        opt.step(&grads)?;
        let secs = t0.elapsed().as_secs_f64();
        if i >= 2 {
            println!("step: {secs:.4}");
            times.push(secs);
        }
    }
    times.sort_by(f64::total_cmp);
    println!("median: {:.4}", times[times.len() / 2]);
    Ok(())
}
