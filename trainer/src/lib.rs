//! wf-trainer: the MONAI-compatible 3D UNet in candle, with the 3D ops, losses, optimizer, checkpoints and data parallelism training needs.

pub mod checkpoint;
pub mod data;
pub mod ddp;
pub mod error;
pub mod export;
pub mod infer;
pub mod loader;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod train;
pub mod unet;

pub use error::{Result, TrainerError};

#[cfg(test)]
mod testutil;
