//! Turning samples (f32 image, one byte of region bits per voxel) into the (N, C, X, Y, Z) batch tensors the loop trains on.
//!
//! Region bits are wf-imaging's: TC = 1, WT = 2, ET = 4; output channel k is bit k, so the label
//! channels come out in the order of MONAI's ConvertToMultiChannelBasedOnBratsClasses (TC, WT, ET).

use crate::error::{Result, TrainerError};
use candle_core::{Device, Tensor};

/// One sample borrowed from its storage (e.g. a memory-mapped archive).
#[derive(Clone, Copy, Debug)]
pub struct SampleRef<'a> {
    /// (C, X, Y, Z) in C order.
    pub image: &'a [f32],
    /// One byte of region bits per voxel.
    pub labels: &'a [u8],
    /// (C, X, Y, Z).
    pub shape: [usize; 4],
}

/// Stacks samples of one shape into (N, C, X, Y, Z) images and (N, `label_channels`, X, Y, Z)
/// {0, 1} labels, copying each byte once. Mixed shapes or wrong lengths are errors naming the sample.
pub fn collate(
    samples: &[SampleRef],
    label_channels: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let Some(first) = samples.first() else {
        return Err(TrainerError::shape("collate", "empty batch"));
    };
    let [c, x, y, z] = first.shape;
    let vox = x * y * z;
    if label_channels > 8 {
        return Err(TrainerError::shape(
            "collate",
            format!("{label_channels} label channels, at most 8 region bits"),
        ));
    }
    let mut img = Vec::with_capacity(samples.len() * c * vox);
    let mut lbl = vec![0f32; samples.len() * label_channels * vox];
    for (i, s) in samples.iter().enumerate() {
        if s.shape != first.shape {
            return Err(TrainerError::shape(
                "collate",
                format!(
                    "sample {i} has shape {:?}, sample 0 {:?} (samples of mixed shapes)",
                    s.shape, first.shape
                ),
            ));
        }
        if s.image.len() != c * vox || s.labels.len() != vox {
            return Err(TrainerError::shape(
                "collate",
                format!(
                    "sample {i}: {} image values and {} labels for shape {:?}",
                    s.image.len(),
                    s.labels.len(),
                    s.shape
                ),
            ));
        }
        img.extend_from_slice(s.image);
        let out = &mut lbl[i * label_channels * vox..(i + 1) * label_channels * vox];
        for (k, ch) in out.chunks_mut(vox).enumerate() {
            let bit = 1u8 << k;
            for (o, &b) in ch.iter_mut().zip(s.labels) {
                *o = if b & bit != 0 { 1.0 } else { 0.0 };
            }
        }
    }
    let n = samples.len();
    Ok((
        Tensor::from_vec(img, (n, c, x, y, z), device)?,
        Tensor::from_vec(lbl, (n, label_channels, x, y, z), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_bits_become_channels_in_tc_wt_et_order() {
        let image: Vec<f32> = (0..2 * 4).map(|v| v as f32).collect();
        let labels = [0u8, 1 | 2, 2, 1 | 2 | 4];
        let s = SampleRef {
            image: &image,
            labels: &labels,
            shape: [2, 1, 2, 2],
        };
        let (x, y) = collate(&[s, s], 3, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 2, 1, 2, 2]);
        assert_eq!(y.dims(), &[2, 3, 1, 2, 2]);
        let y0 = y
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            y0,
            vec![
                0., 1., 0., 1., /* WT */ 0., 1., 1., 1., /* ET */ 0., 0., 0., 1.
            ]
        );
    }

    #[test]
    fn mixed_shapes_and_bad_lengths_are_errors() {
        let image = vec![0f32; 8];
        let labels = [0u8; 4];
        let a = SampleRef {
            image: &image,
            labels: &labels,
            shape: [2, 1, 2, 2],
        };
        let b = SampleRef {
            image: &image,
            labels: &labels,
            shape: [2, 2, 2, 1],
        };
        assert!(
            collate(&[a, b], 3, &Device::Cpu)
                .unwrap_err()
                .to_string()
                .contains("mixed shapes")
        );
        let c = SampleRef {
            image: &image[..4],
            ..a
        };
        assert!(collate(&[c], 3, &Device::Cpu).is_err());
        assert!(collate(&[], 3, &Device::Cpu).is_err());
    }
}
