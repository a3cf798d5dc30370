//! wf-imaging: NIfTI I/O, MONAI-parity transforms, the MSD dataset.json, synthetic BraTS-like data and
//! the rkyv sample format.
//!
//! Sits below the trainer and the steps and knows nothing of the engine. Array convention everywhere
//! past loading: channel-first, C order `(C, X, Y, Z)` with Z fastest, exactly MONAI's / numpy's
//! layout, so samples feed a MONAI-compatible UNet without transposition.

// Matrix and multi-axis volume code indexes several arrays with one counter; iterators obscure it.
#![allow(clippy::needless_range_loop)]

pub mod error;
pub mod memory;
pub mod metrics;
pub mod msd;
pub mod nifti;
pub mod resample;
pub mod rng;
pub mod sample;
pub mod samples;
pub mod synth;
pub mod transforms;

#[cfg(test)]
pub(crate) mod testdata;

pub use error::ImagingError;
pub use msd::MsdDataset;
pub use rng::{Rng, sample_seed};
