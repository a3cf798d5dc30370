//! The training sample format: one rkyv 0.8 archive per sample, read zero-copy through a memory map
//! and validated once when opened (bytecheck; ~µs even for full-size samples), written atomically.
//!
//! Contents: image float32 `(C, X, Y, Z)` C order, labels one byte per voxel of region bits
//! ([`crate::transforms::TC`] | WT | ET; empty when the case has no label), shape, affine, and
//! provenance (case id, copy index, sample seed, drawn parameters).

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::ImagingError;
use crate::nifti::write_atomic;
use crate::transforms::{Affine, Case, DrawnParams, Image, Label, LabelData, Layout};

// Archived f32s are read in place as native f32: only valid where native order is rkyv's little endian.
#[cfg(not(target_endian = "little"))]
compile_error!("wf-imaging's zero-copy sample format assumes a little-endian target");

/// Bumped whenever the archived layout changes; readers refuse other versions.
pub const SAMPLE_FORMAT_VERSION: u32 = 1;

/// An owned training sample (what gets archived).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Sample {
    pub format_version: u32,
    pub case_id: String,
    /// Augmented copy index; the deterministic prefix output uses [`PREFIX_COPY`].
    pub copy: u32,
    /// The seed the copy's draws came from (see [`crate::rng::sample_seed`]); 0 for a prefix output.
    pub seed: u64,
    /// `(C, X, Y, Z)`.
    pub shape: [u32; 4],
    pub affine: Affine,
    pub image: Vec<f32>,
    pub labels: Vec<u8>,
    pub drawn: DrawnParams,
}

/// Copy index marking the cached deterministic prefix (no random transform applied yet).
pub const PREFIX_COPY: u32 = u32::MAX;

impl Sample {
    /// Packs a transformed case. Labels must be converted to regions (or absent).
    pub fn from_case(
        case: &Case,
        copy: u32,
        seed: u64,
        drawn: DrawnParams,
    ) -> Result<Sample, ImagingError> {
        let reordered;
        let case = if case.image.layout == Layout::C
            && case.label.as_ref().is_none_or(|l| l.layout == Layout::C)
        {
            case
        } else {
            let mut c = case.clone();
            c.to_c_order();
            reordered = c;
            &reordered
        };
        let labels = match &case.label {
            None => vec![],
            Some(Label {
                data: LabelData::Regions(r),
                shape,
                ..
            }) if *shape == case.image.spatial() => r.clone(),
            Some(Label {
                data: LabelData::Regions(_),
                shape,
                ..
            }) => {
                return Err(ImagingError::Mismatch {
                    case: case.id.clone(),
                    what: "shape",
                    image: format!("{:?}", case.image.spatial()),
                    label: format!("{shape:?}"),
                });
            }
            Some(Label {
                data: LabelData::Raw(_),
                ..
            }) => {
                return Err(ImagingError::Transform {
                    case: case.id.clone(),
                    transform: "sample",
                    reason: "labels must go through `convert-labels` before a sample is written"
                        .into(),
                });
            }
        };
        let shape = case.image.shape.map(|v| v as u32);
        Ok(Sample {
            format_version: SAMPLE_FORMAT_VERSION,
            case_id: case.id.clone(),
            copy,
            seed,
            shape,
            affine: case.affine,
            image: case.image.data.clone(),
            labels,
            drawn,
        })
    }
}

/// Archives `sample` to `path` through a temporary file and a rename (never a half-written sample).
pub fn write_sample(path: &Path, sample: &Sample) -> Result<(), ImagingError> {
    check_consistent(sample.shape, sample.image.len(), sample.labels.len()).map_err(|reason| {
        ImagingError::Sample {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let bytes =
        rkyv::to_bytes::<rkyv::rancor::Error>(sample).map_err(|e| ImagingError::Sample {
            path: path.to_path_buf(),
            reason: format!("serialization failed: {e}"),
        })?;
    write_atomic(path, &bytes)
}

fn check_consistent(shape: [u32; 4], image_len: usize, labels_len: usize) -> Result<(), String> {
    // u128: four u32 dims cannot overflow it (a corrupt archive found by fuzzing overflowed u64).
    let vox = shape[1] as u128 * shape[2] as u128 * shape[3] as u128;
    if shape[0] as u128 * vox != image_len as u128 {
        return Err(format!(
            "shape {shape:?} needs {} image values, found {image_len}",
            shape[0] as u128 * vox
        ));
    }
    if labels_len != 0 && labels_len as u128 != vox {
        return Err(format!(
            "shape {shape:?} needs {vox} label bytes (or none), found {labels_len}"
        ));
    }
    Ok(())
}

/// A memory-mapped, validated sample; accessors borrow straight from the map.
pub struct SampleFile {
    path: PathBuf,
    mmap: Mmap,
}

impl std::fmt::Debug for SampleFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleFile")
            .field("path", &self.path)
            .field("bytes", &self.mmap.len())
            .finish()
    }
}

impl SampleFile {
    pub fn open(path: &Path) -> Result<SampleFile, ImagingError> {
        let bad = |reason: String| ImagingError::Sample {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| ImagingError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| ImagingError::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Err(bad("empty file".into()));
        }
        // SAFETY: the map is read-only; samples are immutable once renamed into place (written to a
        // temp file first), so no one truncates or rewrites a published sample under us.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ImagingError::io(path, "mmap", e))?;
        let a = rkyv::access::<ArchivedSample, rkyv::rancor::Error>(&mmap)
            .map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let version = a.format_version.to_native();
        if version != SAMPLE_FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {SAMPLE_FORMAT_VERSION}"
            )));
        }
        let shape = a.shape.map(|v| v.to_native());
        check_consistent(shape, a.image.len(), a.labels.len()).map_err(bad)?;
        Ok(SampleFile {
            path: path.to_path_buf(),
            mmap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archived root, validated in [`SampleFile::open`].
    pub fn archived(&self) -> &ArchivedSample {
        // SAFETY: `open` ran the full bytecheck validation over these exact (immutable) bytes.
        unsafe { rkyv::access_unchecked::<ArchivedSample>(&self.mmap) }
    }

    pub fn image(&self) -> &[f32] {
        let v = self.archived().image.as_slice();
        // SAFETY: rkyv's f32_le is repr(C, align(4)) over the 4 little-endian bytes of an f32, and this
        // target is little-endian (compile_error above), so the slices have identical layout.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) }
    }

    pub fn labels(&self) -> &[u8] {
        self.archived().labels.as_slice()
    }

    /// `(C, X, Y, Z)`.
    pub fn shape(&self) -> [usize; 4] {
        self.archived().shape.map(|v| v.to_native() as usize)
    }

    pub fn affine(&self) -> Affine {
        self.archived().affine.map(|row| row.map(|v| v.to_native()))
    }

    pub fn case_id(&self) -> &str {
        self.archived().case_id.as_str()
    }

    pub fn copy(&self) -> u32 {
        self.archived().copy.to_native()
    }

    pub fn seed(&self) -> u64 {
        self.archived().seed.to_native()
    }

    pub fn drawn(&self) -> DrawnParams {
        rkyv::deserialize::<DrawnParams, rkyv::rancor::Error>(&self.archived().drawn)
            .unwrap_or_default()
    }

    /// An owned case (e.g. a cached prefix, for the loader to run the random suffix on).
    pub fn to_case(&self) -> Case {
        let shape = self.shape();
        let labels = self.labels();
        Case {
            id: self.case_id().to_string(),
            image: Image::new(shape, self.image().to_vec()),
            label: (!labels.is_empty()).then(|| {
                Label::new(
                    [shape[1], shape[2], shape[3]],
                    LabelData::Regions(labels.to_vec()),
                )
            }),
            affine: self.affine(),
            channel_first: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::Drawn;

    fn sample() -> Sample {
        let shape = [2u32, 3, 4, 5];
        Sample {
            format_version: SAMPLE_FORMAT_VERSION,
            case_id: "BRATS_007".into(),
            copy: 3,
            seed: 0xdead_beef,
            shape,
            affine: [
                [1.5, 0.0, 0.0, -3.0],
                [0.0, 1.5, 0.0, 2.0],
                [0.0, 0.0, 2.0, 1.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            image: (0..120).map(|i| i as f32 * 0.25 - 7.0).collect(),
            labels: (0..60).map(|i| (i % 8) as u8).collect(),
            drawn: DrawnParams {
                draws: vec![
                    Drawn::Crop {
                        start: [1, 2, 3],
                        size: [3, 4, 5],
                    },
                    Drawn::Flip { flipped: true },
                    Drawn::ScaleIntensity { factor: None },
                    Drawn::ShiftIntensity { offset: Some(0.03) },
                ],
            },
        }
    }

    #[test]
    fn roundtrip_zero_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.rkyv");
        let s = sample();
        write_sample(&p, &s).unwrap();
        let f = SampleFile::open(&p).unwrap();
        assert_eq!(f.image(), &s.image[..]);
        assert_eq!(f.labels(), &s.labels[..]);
        assert_eq!(f.shape(), [2, 3, 4, 5]);
        assert_eq!(f.affine(), s.affine);
        assert_eq!(f.case_id(), "BRATS_007");
        assert_eq!((f.copy(), f.seed()), (3, 0xdead_beef));
        assert_eq!(f.drawn(), s.drawn);
        assert_eq!(f.drawn().shift_offset(), Some(0.03));
        let c = f.to_case();
        assert_eq!(
            Sample::from_case(&c, 3, 0xdead_beef, s.drawn.clone()).unwrap(),
            s
        );
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.rkyv");
        write_sample(&p, &sample()).unwrap();
        let good = std::fs::read(&p).unwrap();
        let mut variants: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", good[..good.len() / 2].to_vec()),
            ("tail", good[..good.len() - 3].to_vec()),
        ];
        let mut flipped = good.clone();
        let n = flipped.len();
        for b in &mut flipped[n - 64..] {
            *b ^= 0xff;
        }
        variants.push(("garbage-root", flipped));
        for (name, bytes) in variants {
            let q = dir.path().join(format!("{name}.rkyv"));
            std::fs::write(&q, &bytes).unwrap();
            let e = SampleFile::open(&q).expect_err(name).to_string();
            assert!(e.contains(&q.display().to_string()), "{name}: {e}");
        }
        // Every single-byte corruption either still validates or errors; none panics.
        for i in (0..good.len()).step_by(7) {
            let mut b = good.clone();
            b[i] ^= 0x5a;
            let q = dir.path().join("flip.rkyv");
            std::fs::write(&q, &b).unwrap();
            if let Ok(f) = SampleFile::open(&q) {
                let _ = (
                    f.image().len(),
                    f.labels().len(),
                    f.drawn(),
                    f.case_id().len(),
                );
            }
        }
        let mut bad = sample();
        bad.labels.pop();
        assert!(write_sample(&p, &bad).is_err());
        // Regression (fuzzer): absurd dims in a structurally valid archive are an error, not an overflow.
        let mut huge = sample();
        huge.shape = [u32::MAX; 4];
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&huge).unwrap();
        let q = dir.path().join("huge.rkyv");
        std::fs::write(&q, &bytes).unwrap();
        assert!(
            SampleFile::open(&q)
                .unwrap_err()
                .to_string()
                .contains("needs")
        );
    }
}
