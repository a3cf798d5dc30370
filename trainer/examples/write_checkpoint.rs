//! Writes a checkpoint of the BraTS UNet (seeded init, one Adam step) to a directory, to check that MONAI loads it.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use wf_trainer::checkpoint::{self, CheckpointMeta, FORMAT_VERSION};
use wf_trainer::optim::{Adam, AdamConfig};
use wf_trainer::unet::{UNet, UNetConfig, init_seeded};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write_checkpoint DIR")?;
    let cfg = UNetConfig::brats();
    let vm = VarMap::new();
    UNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    init_seeded(&vm, 0)?;
    let mut opt = Adam::from_varmap(&vm, AdamConfig::default())?;
    let grads: Vec<Option<Tensor>> = opt
        .params()
        .iter()
        .map(|(_, v)| v.as_tensor().ones_like().ok())
        .collect();
    opt.step_with(&grads)?;
    let meta = CheckpointMeta {
        format: FORMAT_VERSION,
        epoch: 1,
        global_step: 1,
        unet: cfg,
        adam: AdamConfig::default(),
        val_mean_dice: None,
    };
    checkpoint::save(std::path::Path::new(&dir), &vm, &opt, &meta)?;
    println!("wrote {dir}");
    Ok(())
}
