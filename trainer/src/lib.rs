//! wf-trainer: the MONAI-compatible 3D UNet in candle, with the 3D ops, losses, optimizer, checkpoints and data parallelism training needs.

pub mod alloc;
pub mod augment;
pub mod checkpoint;
pub mod cluster;
pub mod data;
pub mod ddp;
pub mod error;
pub mod evaluation;
pub mod export;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod infer;
pub mod loader;
pub mod loss;
pub mod machine;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ops;
pub mod optim;
pub mod placement;
pub mod plot;
pub mod record;
pub mod schedule;
pub mod segment;
pub mod train;
pub mod unet;

/// The candle types callers meet in the loader and trainer API (so they need not depend on candle).
pub use candle_core::{Device, Tensor};
pub use error::{Result, TrainerError};

#[cfg(test)]
mod testutil;
