//! The training sample format: one rkyv 0.8 archive per sample, read zero-copy through a memory map
//! and validated once when opened (bytecheck; ~µs even for full-size samples), written atomically.
//!
//! Contents: image `(C, X, Y, Z)` C order, labels one byte per voxel of region bits
//! ([`crate::transforms::TC`] | WT | ET; empty when the case has no label), shape, affine, and
//! provenance (case id, copy index, sample seed, drawn parameters).
//!
//! The image is float32 (format version 1) or, on request, bfloat16 (format version 2: the same root
//! layout with the image as bf16 bit patterns, rounded to nearest even). bf16 halves the bytes a loader
//! reads per sample at 8 significant bits (relative error <= 2^-8, 0.4 %), plenty for normalized MRI
//! intensities. f32 files are written and read exactly as before, so existing artifacts stay valid.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::ImagingError;
use crate::nifti::write_atomic;
use crate::transforms::{Affine, Case, DrawnParams, Image, Label, LabelData, Layout};

// Archived f32s are read in place as native f32: only valid where native order is rkyv's little endian.
#[cfg(not(target_endian = "little"))]
compile_error!("wf-imaging's zero-copy sample format assumes a little-endian target");

/// Bumped whenever the archived layout changes; readers refuse other versions. This is the f32
/// layout; [`SAMPLE_FORMAT_VERSION_BF16`] marks the bf16 one.
pub const SAMPLE_FORMAT_VERSION: u32 = 1;

/// Format version of a sample whose image is stored as bfloat16.
pub const SAMPLE_FORMAT_VERSION_BF16: u32 = 2;

/// How a sample's image is stored on disk (labels are always one byte per voxel).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SampleDtype {
    /// float32, bit-exact (format version 1).
    #[default]
    F32,
    /// bfloat16, rounded to nearest even (format version 2): half the bytes.
    Bf16,
}

impl SampleDtype {
    /// The parameter spelling: `f32` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleDtype::F32 => "f32",
            SampleDtype::Bf16 => "bf16",
        }
    }

    /// Bytes per image value on disk.
    pub fn size(self) -> usize {
        match self {
            SampleDtype::F32 => 4,
            SampleDtype::Bf16 => 2,
        }
    }

    /// Rounds `data` in place to what a file of this dtype reads back as (a no-op for f32), so a
    /// case kept in memory can match one written and read back.
    pub fn quantize(self, data: &mut [f32]) {
        if self == SampleDtype::Bf16 {
            for v in data {
                *v = bf16_to_f32(f32_to_bf16(*v));
            }
        }
    }
}

impl std::fmt::Display for SampleDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SampleDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(SampleDtype::F32),
            "bf16" => Ok(SampleDtype::Bf16),
            other => Err(format!(
                "unknown sample dtype `{other}`; expected f32 or bf16"
            )),
        }
    }
}

/// float32 → bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN, infinities stay.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// bfloat16 bits → float32 (exact: bf16 is the top half of an f32). Equal to `half`'s conversion for
/// every pattern [`f32_to_bf16`] produces; written as a shift so decoding loops vectorize.
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Decodes bf16 bit patterns into `out` (same length).
pub fn bf16_slice_to_f32(src: &[u16], out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "bf16 decode: length mismatch");
    for (o, &b) in out.iter_mut().zip(src) {
        *o = bf16_to_f32(b);
    }
}

/// A sample's image as stored, borrowed from the map: decode with [`ImageData::copy_to`] or
/// [`ImageData::to_f32`].
#[derive(Debug, Clone, Copy)]
pub enum ImageData<'a> {
    F32(&'a [f32]),
    /// bf16 bit patterns.
    Bf16(&'a [u16]),
}

impl<'a> ImageData<'a> {
    pub fn len(&self) -> usize {
        match self {
            ImageData::F32(v) => v.len(),
            ImageData::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> SampleDtype {
        match self {
            ImageData::F32(_) => SampleDtype::F32,
            ImageData::Bf16(_) => SampleDtype::Bf16,
        }
    }
    /// Values `[start, start + out.len())` as f32 into `out`.
    #[inline]
    pub fn copy_to(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            ImageData::F32(v) => out.copy_from_slice(&v[start..end]),
            ImageData::Bf16(v) => bf16_slice_to_f32(&v[start..end], out),
        }
    }
    /// The whole image as f32 (borrowed when stored as f32).
    pub fn to_f32(&self) -> Cow<'a, [f32]> {
        match *self {
            ImageData::F32(v) => Cow::Borrowed(v),
            ImageData::Bf16(v) => {
                let mut out = vec![0f32; v.len()];
                bf16_slice_to_f32(v, &mut out);
                Cow::Owned(out)
            }
        }
    }
}

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

/// The bf16 archive (format version 2): [`Sample`]'s fields in the same order, the image as bf16 bit
/// patterns. Its archived root has `Sample`'s exact layout (an archived Vec is a relative pointer and
/// a length whatever its element type; checked below), so one peek at `format_version` picks the type
/// to validate a file as.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SampleBf16 {
    format_version: u32,
    case_id: String,
    copy: u32,
    seed: u64,
    shape: [u32; 4],
    affine: Affine,
    image: Vec<u16>,
    labels: Vec<u8>,
    drawn: DrawnParams,
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<ArchivedSample>() == size_of::<ArchivedSampleBf16>());
    assert!(align_of::<ArchivedSample>() == align_of::<ArchivedSampleBf16>());
    assert!(
        offset_of!(ArchivedSample, format_version)
            == offset_of!(ArchivedSampleBf16, format_version)
    );
};

/// Archives `sample` to `path` through a temporary file and a rename (never a half-written sample),
/// with a float32 image (format version 1).
pub fn write_sample(path: &Path, sample: &Sample) -> Result<(), ImagingError> {
    write_sample_as(path, sample, SampleDtype::F32)
}

/// [`write_sample`] with the image stored as `dtype`: `Bf16` rounds each value to nearest even
/// (format version 2); `F32` writes exactly what [`write_sample`] writes.
pub fn write_sample_as(
    path: &Path,
    sample: &Sample,
    dtype: SampleDtype,
) -> Result<(), ImagingError> {
    check_consistent(sample.shape, sample.image.len(), sample.labels.len()).map_err(|reason| {
        ImagingError::Sample {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let failed = |e: rkyv::rancor::Error| ImagingError::Sample {
        path: path.to_path_buf(),
        reason: format!("serialization failed: {e}"),
    };
    let bytes = match dtype {
        SampleDtype::F32 => rkyv::to_bytes::<rkyv::rancor::Error>(sample).map_err(failed)?,
        SampleDtype::Bf16 => {
            let s = SampleBf16 {
                format_version: SAMPLE_FORMAT_VERSION_BF16,
                case_id: sample.case_id.clone(),
                copy: sample.copy,
                seed: sample.seed,
                shape: sample.shape,
                affine: sample.affine,
                image: sample.image.iter().map(|&v| f32_to_bf16(v)).collect(),
                labels: sample.labels.clone(),
                drawn: sample.drawn.clone(),
            };
            rkyv::to_bytes::<rkyv::rancor::Error>(&s).map_err(failed)?
        }
    };
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
    dtype: SampleDtype,
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
        let corrupt = |e: rkyv::rancor::Error| bad(format!("corrupt archive: {e}"));
        // Both layouts put `format_version` at the same place of a root of the same size, so the
        // version says which type to validate as (a short file falls through to the f32 check, which
        // reports it).
        let at = rkyv::api::root_position::<ArchivedSample>(mmap.len())
            + std::mem::offset_of!(ArchivedSample, format_version);
        let peeked = mmap
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        let (version, shape, image_len, labels_len, dtype) = if peeked
            == Some(SAMPLE_FORMAT_VERSION_BF16)
        {
            let a =
                rkyv::access::<ArchivedSampleBf16, rkyv::rancor::Error>(&mmap).map_err(corrupt)?;
            (
                a.format_version.to_native(),
                a.shape.map(|v| v.to_native()),
                a.image.len(),
                a.labels.len(),
                SampleDtype::Bf16,
            )
        } else {
            let a = rkyv::access::<ArchivedSample, rkyv::rancor::Error>(&mmap).map_err(corrupt)?;
            (
                a.format_version.to_native(),
                a.shape.map(|v| v.to_native()),
                a.image.len(),
                a.labels.len(),
                SampleDtype::F32,
            )
        };
        let expected = match dtype {
            SampleDtype::F32 => SAMPLE_FORMAT_VERSION,
            SampleDtype::Bf16 => SAMPLE_FORMAT_VERSION_BF16,
        };
        if version != expected {
            return Err(bad(format!(
                "format version {version}, this build reads {SAMPLE_FORMAT_VERSION} (f32) and {SAMPLE_FORMAT_VERSION_BF16} (bf16)"
            )));
        }
        check_consistent(shape, image_len, labels_len).map_err(bad)?;
        Ok(SampleFile {
            path: path.to_path_buf(),
            mmap,
            dtype,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archived root of an f32 sample, validated in [`SampleFile::open`]; `None` for bf16.
    pub fn archived(&self) -> Option<&ArchivedSample> {
        // SAFETY: `open` ran the full bytecheck validation over these exact (immutable) bytes, as
        // this type (the dtype records which one).
        (self.dtype == SampleDtype::F32)
            .then(|| unsafe { rkyv::access_unchecked::<ArchivedSample>(&self.mmap) })
    }

    fn bf16_root(&self) -> &ArchivedSampleBf16 {
        debug_assert_eq!(self.dtype, SampleDtype::Bf16);
        // SAFETY: as in `archived`, validated as this type in `open`.
        unsafe { rkyv::access_unchecked::<ArchivedSampleBf16>(&self.mmap) }
    }

    /// How the image is stored.
    pub fn dtype(&self) -> SampleDtype {
        self.dtype
    }

    /// The image as stored, borrowed from the map (the loader decodes bf16 while collating).
    pub fn image_data(&self) -> ImageData<'_> {
        match self.archived() {
            Some(a) => {
                let v = a.image.as_slice();
                // SAFETY: rkyv's f32_le is repr(C, align(4)) over the 4 little-endian bytes of an
                // f32, and this target is little-endian (compile_error above): identical layout.
                ImageData::F32(unsafe {
                    std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len())
                })
            }
            None => {
                let v = self.bf16_root().image.as_slice();
                // SAFETY: u16_le is repr(C, align(2)) over the 2 little-endian bytes of a u16.
                ImageData::Bf16(unsafe {
                    std::slice::from_raw_parts(v.as_ptr().cast::<u16>(), v.len())
                })
            }
        }
    }

    /// The image as f32: borrowed from the map for an f32 sample, decoded for bf16.
    pub fn image(&self) -> Cow<'_, [f32]> {
        self.image_data().to_f32()
    }

    pub fn labels(&self) -> &[u8] {
        match self.archived() {
            Some(a) => a.labels.as_slice(),
            None => self.bf16_root().labels.as_slice(),
        }
    }

    /// `(C, X, Y, Z)`.
    pub fn shape(&self) -> [usize; 4] {
        match self.archived() {
            Some(a) => a.shape.map(|v| v.to_native() as usize),
            None => self.bf16_root().shape.map(|v| v.to_native() as usize),
        }
    }

    pub fn affine(&self) -> Affine {
        match self.archived() {
            Some(a) => a.affine.map(|row| row.map(|v| v.to_native())),
            None => self
                .bf16_root()
                .affine
                .map(|row| row.map(|v| v.to_native())),
        }
    }

    pub fn case_id(&self) -> &str {
        match self.archived() {
            Some(a) => a.case_id.as_str(),
            None => self.bf16_root().case_id.as_str(),
        }
    }

    pub fn copy(&self) -> u32 {
        match self.archived() {
            Some(a) => a.copy.to_native(),
            None => self.bf16_root().copy.to_native(),
        }
    }

    pub fn seed(&self) -> u64 {
        match self.archived() {
            Some(a) => a.seed.to_native(),
            None => self.bf16_root().seed.to_native(),
        }
    }

    pub fn drawn(&self) -> DrawnParams {
        let drawn = match self.archived() {
            Some(a) => &a.drawn,
            None => &self.bf16_root().drawn,
        };
        rkyv::deserialize::<DrawnParams, rkyv::rancor::Error>(drawn).unwrap_or_default()
    }

    /// An owned case (e.g. a cached prefix, for the loader to run the random suffix on); a bf16
    /// image is decoded to f32.
    pub fn to_case(&self) -> Case {
        let shape = self.shape();
        let labels = self.labels();
        Case {
            id: self.case_id().to_string(),
            image: Image::new(shape, self.image().into_owned()),
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

    #[test]
    fn f32_files_are_unchanged_by_the_dtype_option() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.wfs"), dir.path().join("b.wfs"));
        let s = sample();
        write_sample(&a, &s).unwrap();
        write_sample_as(&b, &s, SampleDtype::F32).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let f = SampleFile::open(&a).unwrap();
        assert_eq!(f.dtype(), SampleDtype::F32);
        assert!(matches!(f.image(), Cow::Borrowed(_)), "f32 stays zero-copy");
        assert!(matches!(f.image_data(), ImageData::F32(v) if v == &s.image[..]));
        assert_eq!(f.archived().unwrap().format_version, SAMPLE_FORMAT_VERSION);
    }

    #[test]
    fn bf16_roundtrip_within_half_an_ulp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.wfs");
        let mut s = sample();
        // Normalized-intensity-like values over many magnitudes, plus the special ones.
        s.image = (0..120)
            .map(|i| ((i as f32 * 0.731).sin() * 3.7).powi(3) * 10f32.powi(i % 7 - 3))
            .collect();
        s.image[0] = 0.0;
        s.image[1] = -0.0;
        s.image[2] = 1.0 + 1.0 / 256.0; // a tie: to even (1.0)
        s.image[3] = 1.0 + 3.0 / 256.0; // a tie: to even (1 + 2^-6)
        write_sample_as(&p, &s, SampleDtype::Bf16).unwrap();
        let f = SampleFile::open(&p).unwrap();
        assert_eq!(f.dtype(), SampleDtype::Bf16);
        assert!(f.archived().is_none());
        let f32_file = dir.path().join("f32.wfs");
        write_sample(&f32_file, &s).unwrap();
        let saved =
            std::fs::metadata(&f32_file).unwrap().len() - std::fs::metadata(&p).unwrap().len();
        assert!(
            (2 * 120 - 8..=2 * 120 + 8).contains(&saved),
            "two bytes per value saved, up to alignment: {saved}"
        );
        let got = f.image();
        for (i, (&x, &y)) in s.image.iter().zip(got.iter()).enumerate() {
            // Round to nearest: within half a bf16 ulp, i.e. <= 2^-8 of |x| (8 significant bits).
            assert!(
                (x - y).abs() <= x.abs() * (1.0 / 256.0),
                "value {i}: {x} read back as {y}"
            );
        }
        assert_eq!(got[2], 1.0);
        assert_eq!(got[3], 1.0 + 1.0 / 64.0);
        assert!(got[1].is_sign_negative() && got[1] == 0.0);
        // Everything else round-trips exactly; the decoded image equals quantize() of the original.
        assert_eq!(f.labels(), &s.labels[..]);
        assert_eq!(f.shape(), [2, 3, 4, 5]);
        assert_eq!(f.affine(), s.affine);
        assert_eq!(
            (f.case_id(), f.copy(), f.seed()),
            ("BRATS_007", 3, 0xdead_beef)
        );
        assert_eq!(f.drawn(), s.drawn);
        let mut q = s.image.clone();
        SampleDtype::Bf16.quantize(&mut q);
        assert_eq!(&got[..], &q[..]);
        assert_eq!(f.to_case().image.data, q);
        // Writing the decoded values again is lossless.
        let mut again = s.clone();
        again.image = q.clone();
        write_sample_as(&p, &again, SampleDtype::Bf16).unwrap();
        assert_eq!(&SampleFile::open(&p).unwrap().image()[..], &q[..]);
    }

    #[test]
    fn bf16_conversion_is_round_to_nearest_even_and_decodes_like_half() {
        for bits in 0..=u16::MAX {
            let h = half::bf16::from_bits(bits);
            if !h.is_nan() {
                assert_eq!(bf16_to_f32(bits).to_bits(), h.to_f32().to_bits());
                // Every bf16 value is an f32 that encodes back to itself.
                assert_eq!(f32_to_bf16(bf16_to_f32(bits)), bits);
            }
        }
        // Exhaustive over the mantissa bits cut off, at one exponent and sign of each kind.
        for hi in [0x3f80u32, 0x3f81, 0xbf80, 0x0001, 0x7f7f] {
            for lo in 0..=0xffffu32 {
                let x = f32::from_bits(hi << 16 | lo);
                let b = f32_to_bf16(x) as u32;
                let want = match lo.cmp(&0x8000) {
                    std::cmp::Ordering::Less => hi,
                    std::cmp::Ordering::Greater => hi + 1,
                    std::cmp::Ordering::Equal => hi + (hi & 1),
                };
                assert_eq!(b, want, "{x:e} ({:#010x})", x.to_bits());
            }
        }
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(
            bf16_to_f32(f32_to_bf16(f32::MAX)),
            f32::INFINITY,
            "overflow rounds up"
        );
        assert_eq!("bf16".parse::<SampleDtype>(), Ok(SampleDtype::Bf16));
        assert_eq!(
            serde_json::from_str::<SampleDtype>("\"f32\"").unwrap(),
            SampleDtype::F32
        );
        assert!("f16".parse::<SampleDtype>().unwrap_err().contains("bf16"));
    }

    #[test]
    fn corrupt_bf16_files_and_unknown_versions_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.wfs");
        write_sample_as(&p, &sample(), SampleDtype::Bf16).unwrap();
        let good = std::fs::read(&p).unwrap();
        for i in (0..good.len()).step_by(5) {
            let mut b = good.clone();
            b[i] ^= 0xa5;
            let q = dir.path().join("flip.wfs");
            std::fs::write(&q, &b).unwrap();
            if let Ok(f) = SampleFile::open(&q) {
                let _ = (f.image().len(), f.labels().len(), f.drawn(), f.shape());
            }
        }
        let q = dir.path().join("short.wfs");
        std::fs::write(&q, &good[..good.len() - 5]).unwrap();
        assert!(SampleFile::open(&q).is_err());
        // A version this build does not know, in either layout.
        let mut future = sample();
        future.format_version = 3;
        std::fs::write(&q, rkyv::to_bytes::<rkyv::rancor::Error>(&future).unwrap()).unwrap();
        let e = SampleFile::open(&q).unwrap_err().to_string();
        assert!(e.contains("format version 3"), "{e}");
    }
}
