//! Times one Adam step over the BraTS UNet's 4.8 M parameters on CPU.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use wf_trainer::optim::{Adam, AdamConfig};
use wf_trainer::unet::{UNet, UNetConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vm = VarMap::new();
    UNet::new(
        &UNetConfig::brats(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let mut opt = Adam::from_varmap(
        &vm,
        AdamConfig {
            weight_decay: 1e-5,
            ..Default::default()
        },
    )?;
    let grads: Vec<Option<Tensor>> = opt
        .params()
        .iter()
        .map(|(_, v)| v.as_tensor().ones_like().ok())
        .collect();
    for i in 0..5 {
        let t0 = Instant::now();
        opt.step_with(&grads)?;
        println!("step {i}: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}
