//! NIfTI-1 / NIfTI-2 reading (`.nii`, `.nii.gz`, both byte orders, every integer and float datatype) and
//! NIfTI-1 writing, following nibabel's conventions so that MONAI parity holds from the first step.
//!
//! Our own parser rather than the `nifti` crate: that crate rejects NIfTI-2 and multi-member gzip
//! (see CRATES.md). Affine choice, qform maths and scaling mirror nibabel 5 (`get_best_affine`,
//! `quat2mat` in float32 for NIfTI-1, `apply_read_scaling` in float64).

use std::io::{Read, Write};
use std::path::Path;

use crate::error::ImagingError;

/// The numeric types nibabel reads; anything else (complex, RGB, float128) is rejected by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datatype {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Datatype {
    /// Maps a NIfTI `datatype` code; `Err` carries why it is not supported.
    pub fn from_code(code: i32) -> Result<Self, &'static str> {
        Ok(match code {
            2 => Datatype::U8,
            4 => Datatype::I16,
            8 => Datatype::I32,
            16 => Datatype::F32,
            64 => Datatype::F64,
            256 => Datatype::I8,
            512 => Datatype::U16,
            768 => Datatype::U32,
            1024 => Datatype::I64,
            1280 => Datatype::U64,
            1 => return Err("binary"),
            32 | 1792 | 2048 => return Err("complex"),
            128 | 2304 => return Err("RGB"),
            1536 => return Err("float128"),
            0 => return Err("unknown"),
            _ => return Err("not a NIfTI datatype"),
        })
    }

    pub fn code(self) -> i16 {
        match self {
            Datatype::U8 => 2,
            Datatype::I16 => 4,
            Datatype::I32 => 8,
            Datatype::F32 => 16,
            Datatype::F64 => 64,
            Datatype::I8 => 256,
            Datatype::U16 => 512,
            Datatype::U32 => 768,
            Datatype::I64 => 1024,
            Datatype::U64 => 1280,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Datatype::U8 | Datatype::I8 => 1,
            Datatype::I16 | Datatype::U16 => 2,
            Datatype::I32 | Datatype::U32 | Datatype::F32 => 4,
            Datatype::I64 | Datatype::U64 | Datatype::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::U8 => "uint8",
            Datatype::I8 => "int8",
            Datatype::I16 => "int16",
            Datatype::U16 => "uint16",
            Datatype::I32 => "int32",
            Datatype::U32 => "uint32",
            Datatype::I64 => "int64",
            Datatype::U64 => "uint64",
            Datatype::F32 => "float32",
            Datatype::F64 => "float64",
        }
    }
}

/// The header facts we use, widened to the NIfTI-2 types (NIfTI-1 float32 fields convert exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiHeader {
    /// 1 or 2.
    pub version: u8,
    pub big_endian: bool,
    pub sizeof_hdr: i32,
    /// `dim[0]` = number of dimensions, `dim[1..=dim[0]]` the sizes.
    pub dim: [i64; 8],
    pub datatype_code: i32,
    pub bitpix: i32,
    pub pixdim: [f64; 8],
    pub vox_offset: f64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i32,
    pub sform_code: i32,
    pub quatern: [f64; 3],
    pub qoffset: [f64; 3],
    pub srow: [[f64; 4]; 3],
    pub xyzt_units: i32,
    pub intent_code: i32,
}

const N1_SIZE: usize = 348;
const N2_SIZE: usize = 540;
/// nibabel refuses more than this many dimensions too; beyond it a header is corrupt.
const MAX_DIMS: i64 = 7;

struct Fields<'a> {
    b: &'a [u8],
    be: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[off..off + N]);
        if self.be {
            a.reverse();
        }
        a
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.arr(off))
    }
    fn i32(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.arr(off))
    }
    fn i64(&self, off: usize) -> i64 {
        i64::from_le_bytes(self.arr(off))
    }
    fn f32(&self, off: usize) -> f32 {
        f32::from_le_bytes(self.arr(off))
    }
    fn f64(&self, off: usize) -> f64 {
        f64::from_le_bytes(self.arr(off))
    }
}

/// Parses a NIfTI-1 or NIfTI-2 header from the start of `bytes` (decompressed). Never panics.
pub fn parse_header(bytes: &[u8], name: &str) -> Result<NiftiHeader, ImagingError> {
    let bad_magic = |reason: String| ImagingError::BadMagic {
        name: name.to_string(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(bad_magic(format!(
            "only {} bytes, a header needs 348",
            bytes.len()
        )));
    }
    let raw = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let (le, be) = (i32::from_le_bytes(raw), i32::from_be_bytes(raw));
    let (version, big_endian) = match (le, be) {
        (348, _) => (1u8, false),
        (_, 348) => (1, true),
        (540, _) => (2, false),
        (_, 540) => (2, true),
        _ => {
            return Err(bad_magic(format!(
                "sizeof_hdr is {le} (expected 348 or 540)"
            )));
        }
    };
    let size = if version == 1 { N1_SIZE } else { N2_SIZE };
    if bytes.len() < size {
        return Err(ImagingError::Truncated {
            name: name.to_string(),
            dims: vec![],
            datatype: "header",
            needed: size as u64,
            offset: 0,
            available: bytes.len() as u64,
            what: "file",
        });
    }
    let f = Fields {
        b: bytes,
        be: big_endian,
    };
    let h = if version == 1 {
        let magic = &bytes[344..348];
        if magic == b"ni1\0" {
            return Err(bad_magic(
                "magic `ni1`: separate .hdr/.img pairs are not supported".into(),
            ));
        }
        if magic != b"n+1\0" {
            return Err(bad_magic(format!(
                "NIfTI-1 magic is {magic:?}, expected \"n+1\\0\""
            )));
        }
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = f.i16(40 + 2 * i) as i64;
            pixdim[i] = f.f32(76 + 4 * i) as f64;
        }
        let mut srow = [[0f64; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f32(280 + 16 * r + 4 * c) as f64;
            }
        }
        NiftiHeader {
            version,
            big_endian,
            sizeof_hdr: 348,
            dim,
            datatype_code: f.i16(70) as i32,
            bitpix: f.i16(72) as i32,
            pixdim,
            vox_offset: f.f32(108) as f64,
            scl_slope: f.f32(112) as f64,
            scl_inter: f.f32(116) as f64,
            qform_code: f.i16(252) as i32,
            sform_code: f.i16(254) as i32,
            quatern: [f.f32(256) as f64, f.f32(260) as f64, f.f32(264) as f64],
            qoffset: [f.f32(268) as f64, f.f32(272) as f64, f.f32(276) as f64],
            srow,
            xyzt_units: bytes[123] as i32,
            intent_code: f.i16(68) as i32,
        }
    } else {
        let magic = &bytes[4..12];
        if &magic[..4] == b"ni2\0" {
            return Err(bad_magic(
                "magic `ni2`: separate .hdr/.img pairs are not supported".into(),
            ));
        }
        if &magic[..4] != b"n+2\0" {
            return Err(bad_magic(format!(
                "NIfTI-2 magic is {:?}, expected \"n+2\\0\"",
                &magic[..4]
            )));
        }
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = f.i64(16 + 8 * i);
            pixdim[i] = f.f64(104 + 8 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f64(400 + 32 * r + 8 * c);
            }
        }
        NiftiHeader {
            version,
            big_endian,
            sizeof_hdr: 540,
            dim,
            datatype_code: f.i16(12) as i32,
            bitpix: f.i16(14) as i32,
            pixdim,
            vox_offset: f.i64(168) as f64,
            scl_slope: f.f64(176),
            scl_inter: f.f64(184),
            qform_code: f.i32(344),
            sform_code: f.i32(348),
            quatern: [f.f64(352), f.f64(360), f.f64(368)],
            qoffset: [f.f64(376), f.f64(384), f.f64(392)],
            srow,
            xyzt_units: f.i32(500),
            intent_code: f.i32(504),
        }
    };
    h.shape(name)?;
    Ok(h)
}

impl NiftiHeader {
    fn bad(&self, name: &str, field: &'static str, reason: String) -> ImagingError {
        ImagingError::BadHeader {
            name: name.to_string(),
            field,
            reason,
        }
    }

    /// The data shape (`dim[1..=dim[0]]`), validated: 1..=7 dims, each >= 1, product fits in memory terms.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, ImagingError> {
        let nd = self.dim[0];
        if !(1..=MAX_DIMS).contains(&nd) {
            return Err(self.bad(name, "dim", format!("dim[0] = {nd}, expected 1..=7")));
        }
        let mut shape = Vec::with_capacity(nd as usize);
        let mut total: u64 = 1;
        for i in 1..=nd as usize {
            let d = self.dim[i];
            if d < 1 {
                return Err(self.bad(
                    name,
                    "dim",
                    format!("dim[{i}] = {d}, expected >= 1 (dims {:?})", self.dim),
                ));
            }
            total = total
                .checked_mul(d as u64)
                .filter(|t| *t <= (isize::MAX as u64) / 8)
                .ok_or_else(|| {
                    self.bad(
                        name,
                        "dim",
                        format!(
                            "dims {:?} overflow any addressable size",
                            &self.dim[1..=nd as usize]
                        ),
                    )
                })?;
            shape.push(d as usize);
        }
        Ok(shape)
    }

    pub fn datatype(&self, name: &str) -> Result<Datatype, ImagingError> {
        Datatype::from_code(self.datatype_code).map_err(|reason| {
            ImagingError::UnsupportedDatatype {
                name: name.to_string(),
                code: self.datatype_code,
                reason,
            }
        })
    }

    /// Byte offset of the voxel data. nibabel bumps a too-small offset of a single file to just after
    /// the header plus the 4-byte extension flag, and truncates a fractional NIfTI-1 offset.
    pub fn data_offset(&self, name: &str) -> Result<u64, ImagingError> {
        let v = self.vox_offset;
        if !v.is_finite() || v < 0.0 || v > (1u64 << 48) as f64 {
            return Err(self.bad(
                name,
                "vox_offset",
                format!("{v} is not a usable byte offset"),
            ));
        }
        let min = self.sizeof_hdr as u64 + 4;
        let off = v as u64;
        Ok(if off < self.sizeof_hdr as u64 {
            min
        } else {
            off
        })
    }

    /// `(slope, inter)` to apply, or `None` when nibabel would not scale (slope 0 or non-finite).
    pub fn scaling(&self, name: &str) -> Result<Option<(f64, f64)>, ImagingError> {
        let (s, i) = (self.scl_slope, self.scl_inter);
        if s == 0.0 || !s.is_finite() {
            return Ok(None);
        }
        if !i.is_finite() {
            return Err(self.bad(
                name,
                "scl_inter",
                format!("valid slope {s} but non-finite intercept {i}"),
            ));
        }
        if s == 1.0 && i == 0.0 {
            return Ok(None);
        }
        Ok(Some((s, i)))
    }

    /// nibabel's `get_best_affine`: sform if its code is set, else qform, else the pixdim-based one.
    pub fn affine(&self, name: &str) -> Result<[[f64; 4]; 4], ImagingError> {
        if self.sform_code != 0 {
            let mut a = IDENTITY;
            a[..3].copy_from_slice(&self.srow);
            return Ok(a);
        }
        if self.qform_code != 0 {
            return self.qform_affine(name);
        }
        self.base_affine(name)
    }

    /// nibabel's `get_base_affine` (`shape_zoom_affine` with the x flip of radiological storage).
    fn base_affine(&self, name: &str) -> Result<[[f64; 4]; 4], ImagingError> {
        let shape = self.shape(name)?;
        let mut a = IDENTITY;
        for i in 0..3 {
            let n = shape.get(i).copied().unwrap_or(1) as f64;
            let mut z = if i < shape.len() {
                self.pixdim[i + 1].abs()
            } else {
                1.0
            };
            if i == 0 {
                z = -z;
            }
            a[i][i] = z;
            a[i][3] = -((n - 1.0) / 2.0) * z;
        }
        Ok(a)
    }

    fn qform_affine(&self, name: &str) -> Result<[[f64; 4]; 4], ImagingError> {
        let mut a = IDENTITY;
        let qfac_neg = self.pixdim[0] == -1.0;
        if self.version == 1 {
            // nibabel keeps the float32 header dtype through fillpositive/quat2mat for NIfTI-1.
            let [b, c, d] = self.quatern.map(|v| v as f32);
            let w2 = 1.0f32 - (b * b + c * c + d * d);
            let w = if w2 < 0.0 {
                if w2 < -f32::EPSILON * 3.0 {
                    return Err(self.bad(
                        name,
                        "quatern_b/c/d",
                        format!("|(b,c,d)| > 1 ({b}, {c}, {d})"),
                    ));
                }
                0.0
            } else {
                w2.sqrt()
            };
            let r = quat2mat_f32([w, b, c, d]);
            let mut vox = [
                self.pixdim[1] as f32,
                self.pixdim[2] as f32,
                self.pixdim[3] as f32,
            ]
            .map(f32::abs);
            if qfac_neg {
                vox[2] = -vox[2];
            }
            for i in 0..3 {
                for j in 0..3 {
                    a[i][j] = (r[i][j] * vox[j]) as f64;
                }
            }
        } else {
            let [b, c, d] = self.quatern;
            let w2 = 1.0 - (b * b + c * c + d * d);
            let w = if w2 < 0.0 {
                if w2 < -f64::EPSILON * 3.0 {
                    return Err(self.bad(
                        name,
                        "quatern_b/c/d",
                        format!("|(b,c,d)| > 1 ({b}, {c}, {d})"),
                    ));
                }
                0.0
            } else {
                w2.sqrt()
            };
            let r = quat2mat_f64([w, b, c, d]);
            let mut vox = [self.pixdim[1], self.pixdim[2], self.pixdim[3]].map(f64::abs);
            if qfac_neg {
                vox[2] = -vox[2];
            }
            for i in 0..3 {
                for j in 0..3 {
                    a[i][j] = r[i][j] * vox[j];
                }
            }
        }
        for i in 0..3 {
            a[i][3] = self.qoffset[i];
        }
        Ok(a)
    }
}

const IDENTITY: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

macro_rules! quat2mat {
    ($name:ident, $t:ty) => {
        fn $name(q: [$t; 4]) -> [[$t; 3]; 3] {
            let [w, x, y, z] = q;
            let nq = w * w + x * x + y * y + z * z;
            if (nq as f64) < f64::EPSILON {
                return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            }
            let s = 2.0 / nq;
            let (xs, ys, zs) = (x * s, y * s, z * s);
            let (wx, wy, wz) = (w * xs, w * ys, w * zs);
            let (xx, xy, xz) = (x * xs, x * ys, x * zs);
            let (yy, yz, zz) = (y * ys, y * zs, z * zs);
            [
                [1.0 - (yy + zz), xy - wz, xz + wy],
                [xy + wz, 1.0 - (xx + zz), yz - wx],
                [xz - wy, yz + wx, 1.0 - (xx + yy)],
            ]
        }
    };
}
quat2mat!(quat2mat_f32, f32);
quat2mat!(quat2mat_f64, f64);

/// A decoded image: voxel values after scl_slope/scl_inter as float32, in file (Fortran, x fastest) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiImage {
    /// Spatial dims first, as in the file (`dim[1..=dim[0]]`).
    pub dims: Vec<usize>,
    /// `dims.iter().product()` values, x fastest.
    pub data: Vec<f32>,
    /// Voxel (i, j, k, 1) to world mm, nibabel RAS+ convention.
    pub affine: [[f64; 4]; 4],
    /// `pixdim[1..=3]`.
    pub pixdim: [f64; 3],
    /// On-disk type before scaling.
    pub datatype: Datatype,
    pub header: NiftiHeader,
}

/// Reads a `.nii` or `.nii.gz` (detected by content, not name).
pub fn read_nifti(path: &Path) -> Result<NiftiImage, ImagingError> {
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, "read", e))?;
    read_nifti_bytes(&bytes, &path.display().to_string())
}

/// The voxel grid of a `.nii` or `.nii.gz` from its header alone (the data is not read): the
/// dims (trailing ones kept) and the affine, as [`read_nifti`] would give them.
pub fn read_grid(path: &Path) -> Result<(Vec<usize>, [[f64; 4]; 4]), ImagingError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| ImagingError::io(path, "read", e))?;
    let mut raw = std::io::BufReader::new(file);
    let mut magic = [0u8; 2];
    let got = read_full(&mut raw, &mut magic).map_err(|e| ImagingError::io(path, "read", e))?;
    let mut head = vec![0u8; 540];
    let chained = std::io::Read::chain(&magic[..got], raw);
    let n = if got == 2 && magic == [0x1f, 0x8b] {
        read_full(&mut flate2::read::MultiGzDecoder::new(chained), &mut head).map_err(|e| {
            ImagingError::Gzip {
                name: name.clone(),
                reason: e.to_string(),
            }
        })?
    } else {
        let mut chained = chained;
        read_full(&mut chained, &mut head).map_err(|e| ImagingError::io(path, "read", e))?
    };
    let header = parse_header(&head[..n], &name)?;
    let (dims, ..) = layout(&header, &name)?;
    Ok((dims, header.affine(&name)?))
}

/// Decompresses when the buffer is gzip (any number of members), else borrows it.
pub fn maybe_gunzip<'a>(
    bytes: &'a [u8],
    name: &str,
) -> Result<std::borrow::Cow<'a, [u8]>, ImagingError> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    // ISIZE of the last member is the whole size for the usual single member: one allocation, no regrowth.
    let hint = if bytes.len() >= 18 {
        let n = bytes.len();
        u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]) as usize
    } else {
        0
    };
    let mut out = Vec::with_capacity(hint.min(bytes.len().saturating_mul(1032)) + 1);
    flate2::bufread::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| ImagingError::Gzip {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Reads NIfTI from memory (`.nii` or `.nii.gz`, detected by content); `name` is only used in errors.
pub fn read_nifti_bytes(bytes: &[u8], name: &str) -> Result<NiftiImage, ImagingError> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        return read_gz(bytes, name);
    }
    let header = parse_header(bytes, name)?;
    let (dims, datatype, offset, needed) = layout(&header, name)?;
    let available = (bytes.len() as u64).saturating_sub(offset);
    if needed > available {
        return Err(truncated(
            name, dims, datatype, needed, offset, available, "file",
        ));
    }
    let payload = &bytes[offset as usize..(offset + needed) as usize];
    let scaling = header.scaling(name)?;
    let mut data = Vec::with_capacity(payload.len() / datatype.size());
    decode_into(payload, datatype, header.big_endian, scaling, &mut data);
    finish(header, dims, datatype, data, name)
}

fn truncated(
    name: &str,
    dims: Vec<usize>,
    dt: Datatype,
    needed: u64,
    offset: u64,
    available: u64,
    what: &'static str,
) -> ImagingError {
    ImagingError::Truncated {
        name: name.to_string(),
        dims,
        datatype: dt.name(),
        needed,
        offset,
        available,
        what,
    }
}

/// Shape, type, data offset and payload size implied by a header.
fn layout(
    header: &NiftiHeader,
    name: &str,
) -> Result<(Vec<usize>, Datatype, u64, u64), ImagingError> {
    let dims = header.shape(name)?;
    let datatype = header.datatype(name)?;
    let offset = header.data_offset(name)?;
    let nvox: u64 = dims.iter().map(|&d| d as u64).product();
    Ok((dims, datatype, offset, nvox * datatype.size() as u64))
}

fn finish(
    header: NiftiHeader,
    dims: Vec<usize>,
    datatype: Datatype,
    data: Vec<f32>,
    name: &str,
) -> Result<NiftiImage, ImagingError> {
    let affine = header.affine(name)?;
    let pixdim = [header.pixdim[1], header.pixdim[2], header.pixdim[3]];
    Ok(NiftiImage {
        dims,
        data,
        affine,
        pixdim,
        datatype,
        header,
    })
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streams a gzip file: header, skip to the data, decode the payload chunk by chunk straight into
/// float32 (no full-size intermediate byte buffer), then drain the rest so the CRC is still checked.
fn read_gz(bytes: &[u8], name: &str) -> Result<NiftiImage, ImagingError> {
    let gz = |e: std::io::Error| ImagingError::Gzip {
        name: name.to_string(),
        reason: e.to_string(),
    };
    let mut dec = flate2::bufread::MultiGzDecoder::new(bytes);
    let mut head = [0u8; N2_SIZE];
    let mut hlen = read_full(&mut dec, &mut head[..N1_SIZE]).map_err(gz)?;
    if hlen == N1_SIZE {
        let raw = [head[0], head[1], head[2], head[3]];
        if i32::from_le_bytes(raw) == N2_SIZE as i32 || i32::from_be_bytes(raw) == N2_SIZE as i32 {
            hlen += read_full(&mut dec, &mut head[N1_SIZE..]).map_err(gz)?;
        }
    }
    let header = parse_header(&head[..hlen], name)?;
    let (dims, datatype, offset, needed) = layout(&header, name)?;
    let skip = offset.saturating_sub(hlen as u64);
    let skipped = std::io::copy(&mut (&mut dec).take(skip), &mut std::io::sink()).map_err(gz)?;
    if skipped < skip {
        return Err(truncated(
            name,
            dims,
            datatype,
            needed,
            offset,
            0,
            "decompressed stream",
        ));
    }
    let scaling = header.scaling(name)?;
    // A header may claim any size; deflate cannot expand more than ~1032x, so never reserve beyond that.
    let plausible = (bytes.len() as u64).saturating_mul(1032);
    let mut data = Vec::with_capacity((needed.min(plausible) / datatype.size() as u64) as usize);
    // 256 KiB chunks stay in L2 between inflate and decode.
    let mut buf = vec![0u8; 1 << 18];
    let mut got: u64 = 0;
    while got < needed {
        let want = ((needed - got) as usize).min(buf.len());
        let n = read_full(&mut dec, &mut buf[..want]).map_err(gz)?;
        got += n as u64;
        if n < want {
            return Err(truncated(
                name,
                dims,
                datatype,
                needed,
                offset,
                got,
                "decompressed stream",
            ));
        }
        // `needed` and the buffer are multiples of the element size, so every full chunk is too.
        decode_into(&buf[..n], datatype, header.big_endian, scaling, &mut data);
    }
    std::io::copy(&mut dec, &mut std::io::sink()).map_err(gz)?;
    finish(header, dims, datatype, data, name)
}

/// Bytes to float32 with nibabel's arithmetic: scaling in float64 (`raw * slope + inter`), then one
/// rounding to float32, as MONAI's `LoadImage(dtype=float32)` does. Appends to `out`.
fn decode_into(p: &[u8], dt: Datatype, be: bool, scaling: Option<(f64, f64)>, out: &mut Vec<f32>) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let it = p.chunks_exact($n).map(|c| {
                let a: [u8; $n] = c.try_into().unwrap_or([0; $n]);
                if be {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            });
            match scaling {
                None => out.extend(it.map(|v| v as f32)),
                Some((s, i)) => out.extend(it.map(|v| (v as f64 * s + i) as f32)),
            }
        }};
    }
    match dt {
        Datatype::U8 => match scaling {
            None => out.extend(p.iter().map(|&v| v as f32)),
            Some((s, i)) => out.extend(p.iter().map(|&v| (v as f64 * s + i) as f32)),
        },
        Datatype::I8 => conv!(i8, 1),
        Datatype::I16 => conv!(i16, 2),
        Datatype::U16 => conv!(u16, 2),
        Datatype::I32 => conv!(i32, 4),
        Datatype::U32 => conv!(u32, 4),
        Datatype::I64 => conv!(i64, 8),
        Datatype::U64 => conv!(u64, 8),
        Datatype::F32 => conv!(f32, 4),
        Datatype::F64 => conv!(f64, 8),
    }
}

/// Voxel payload for [`write_nifti`]: the two types the pipeline writes.
#[derive(Debug, Clone, Copy)]
pub enum NiftiData<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

impl NiftiData<'_> {
    fn len(&self) -> usize {
        match self {
            NiftiData::F32(d) => d.len(),
            NiftiData::U8(d) => d.len(),
        }
    }
}

/// Builds a little-endian NIfTI-1 header + payload (sform and qform code 1 from `affine`).
pub fn encode_nifti(
    dims: &[usize],
    data: NiftiData<'_>,
    affine: &[[f64; 4]; 4],
    name: &str,
) -> Result<Vec<u8>, ImagingError> {
    let werr = |reason: String| ImagingError::Write {
        name: name.to_string(),
        reason,
    };
    if dims.is_empty() || dims.len() > 7 || dims.iter().any(|&d| d == 0 || d > i16::MAX as usize) {
        return Err(werr(format!(
            "dims {dims:?} do not fit NIfTI-1 (1..=7 dims of 1..=32767)"
        )));
    }
    let nvox: usize = dims.iter().product();
    if nvox != data.len() {
        return Err(werr(format!(
            "dims {dims:?} need {nvox} voxels, got {}",
            data.len()
        )));
    }
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(werr("affine has non-finite entries".into()));
    }
    let (dt, bitpix) = match data {
        NiftiData::F32(_) => (Datatype::F32, 32i16),
        NiftiData::U8(_) => (Datatype::U8, 8),
    };
    let mut h = vec![0u8; 352];
    let put = |h: &mut Vec<u8>, off: usize, b: &[u8]| h[off..off + b.len()].copy_from_slice(b);
    put(&mut h, 0, &348i32.to_le_bytes());
    put(&mut h, 38, b"r");
    put(&mut h, 40, &(dims.len() as i16).to_le_bytes());
    for i in 0..7 {
        let d = dims.get(i).copied().unwrap_or(1) as i16;
        put(&mut h, 42 + 2 * i, &d.to_le_bytes());
    }
    put(&mut h, 70, &dt.code().to_le_bytes());
    put(&mut h, 72, &bitpix.to_le_bytes());
    // pixdim[0] is qfac; pixdim[1..=3] the column norms (voxel sizes), extra dims 1.
    let mut pixdim = [1.0f32; 8];
    for (j, p) in pixdim.iter_mut().enumerate().skip(1).take(3) {
        *p = (0..3).map(|i| affine[i][j - 1].powi(2)).sum::<f64>().sqrt() as f32;
    }
    let (quat, qfac) = mat2quat(affine);
    pixdim[0] = qfac;
    for (i, p) in pixdim.iter().enumerate() {
        put(&mut h, 76 + 4 * i, &p.to_le_bytes());
    }
    put(&mut h, 108, &352f32.to_le_bytes());
    put(&mut h, 112, &1f32.to_le_bytes());
    put(&mut h, 123, &[10u8]); // mm + sec
    put(&mut h, 148, b"wf-imaging");
    let qcode: i16 = if quat.is_some() { 1 } else { 0 };
    put(&mut h, 252, &qcode.to_le_bytes());
    put(&mut h, 254, &1i16.to_le_bytes());
    if let Some(q) = quat {
        for (i, v) in q.iter().enumerate() {
            put(&mut h, 256 + 4 * i, &(*v as f32).to_le_bytes());
        }
    }
    for i in 0..3 {
        put(&mut h, 268 + 4 * i, &(affine[i][3] as f32).to_le_bytes());
        for j in 0..4 {
            put(
                &mut h,
                280 + 16 * i + 4 * j,
                &(affine[i][j] as f32).to_le_bytes(),
            );
        }
    }
    put(&mut h, 344, b"n+1\0");
    let mut out = h;
    out.reserve(nvox * dt.size());
    match data {
        NiftiData::F32(d) => {
            for v in d {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        NiftiData::U8(d) => out.extend_from_slice(d),
    }
    Ok(out)
}

/// Quaternion (b, c, d) and qfac of the rotation part of `affine`, when it is a rotation times
/// positive zooms (else `None`: the qform is then left unset and only the sform describes the image).
fn mat2quat(affine: &[[f64; 4]; 4]) -> (Option<[f64; 3]>, f32) {
    let mut r = [[0f64; 3]; 3];
    for j in 0..3 {
        let n = (0..3).map(|i| affine[i][j].powi(2)).sum::<f64>().sqrt();
        if n == 0.0 {
            return (None, 1.0);
        }
        for i in 0..3 {
            r[i][j] = affine[i][j] / n;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0f32 } else { 1.0 };
    if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    // Only a (near) orthonormal matrix has a quaternion; sheared affines keep the sform alone.
    for a in 0..3 {
        for b in 0..3 {
            let dot: f64 = (0..3).map(|i| r[i][a] * r[i][b]).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            if (dot - want).abs() > 1e-4 {
                return (None, 1.0);
            }
        }
    }
    let tr = r[0][0] + r[1][1] + r[2][2];
    let (w, x, y, z);
    if tr > 0.0 {
        let s = (tr + 1.0).sqrt() * 2.0;
        w = 0.25 * s;
        x = (r[2][1] - r[1][2]) / s;
        y = (r[0][2] - r[2][0]) / s;
        z = (r[1][0] - r[0][1]) / s;
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt() * 2.0;
        w = (r[2][1] - r[1][2]) / s;
        x = 0.25 * s;
        y = (r[0][1] + r[1][0]) / s;
        z = (r[0][2] + r[2][0]) / s;
    } else if r[1][1] > r[2][2] {
        let s = (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt() * 2.0;
        w = (r[0][2] - r[2][0]) / s;
        x = (r[0][1] + r[1][0]) / s;
        y = 0.25 * s;
        z = (r[1][2] + r[2][1]) / s;
    } else {
        let s = (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt() * 2.0;
        w = (r[1][0] - r[0][1]) / s;
        x = (r[0][2] + r[2][0]) / s;
        y = (r[1][2] + r[2][1]) / s;
        z = 0.25 * s;
    }
    // NIfTI stores the quaternion with a non-negative real part.
    let sign = if w < 0.0 { -1.0 } else { 1.0 };
    (Some([x * sign, y * sign, z * sign]), qfac)
}

/// Writes NIfTI-1 (float32 or uint8), gzip level 6 when `path` ends in `.gz`; via a temp file and
/// rename so a crashed writer never leaves a half file under the final name.
pub fn write_nifti(
    path: &Path,
    dims: &[usize],
    data: NiftiData<'_>,
    affine: &[[f64; 4]; 4],
) -> Result<(), ImagingError> {
    let name = path.display().to_string();
    let raw = encode_nifti(dims, data, affine, &name)?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let bytes = if gz { gzip(&raw, 6) } else { raw };
    write_atomic(path, &bytes)
}

/// Deterministic gzip (mtime 0, no file name), so equal images give equal bytes.
pub fn gzip(raw: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(raw.len() / 3 + 64),
        flate2::Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(raw);
    enc.finish().unwrap_or_default()
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImagingError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let res = std::fs::write(&tmp, bytes).map_err(|e| ImagingError::io(&tmp, "write", e));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImagingError::io(path, "rename into place", e)
    })
}

#[cfg(test)]
mod tests {
    /// The grid from the header alone equals the grid of a full read, gzip or not; a file too
    /// short for a header is an error naming it.
    #[test]
    fn read_grid_reads_the_header_only() {
        let t = tempfile::tempdir().unwrap();
        let affine = [
            [0.0, -1.5, 0.0, 10.0],
            [2.0, 0.0, 0.0, -4.0],
            [0.0, 0.0, 1.25, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let data: Vec<f32> = (0..5 * 4 * 3 * 2).map(|v| v as f32).collect();
        for name in ["a.nii", "a.nii.gz"] {
            let path = t.path().join(name);
            super::write_nifti(&path, &[5, 4, 3, 2], super::NiftiData::F32(&data), &affine)
                .unwrap();
            let full = super::read_nifti(&path).unwrap();
            let (dims, aff) = super::read_grid(&path).unwrap();
            assert_eq!((dims, aff), (full.dims, full.affine), "{name}");
        }
        let short = t.path().join("short.nii");
        std::fs::write(&short, b"\x5c\x01\x00").unwrap();
        let e = super::read_grid(&short).unwrap_err().to_string();
        assert!(e.contains("short.nii"), "{e}");
    }

    use super::*;
    use crate::testdata::{monai_file, monai_manifest};

    /// Every input of the MONAI reference data loads with nibabel's shape, dtype and affine.
    #[test]
    fn reference_inputs_match_manifest() {
        let m = monai_manifest();
        let mut seen = 0;
        for case in m["cases"].as_array().unwrap() {
            let inp = &case["inputs"]["image"];
            let path = monai_file(Path::new("inputs").join(inp["path"].as_str().unwrap()));
            let img = read_nifti(&path).unwrap_or_else(|e| panic!("{e}"));
            let shape: Vec<usize> = inp["nib_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(img.dims, shape, "{}", path.display());
            let want_dt = inp["disk_dtype"]
                .as_str()
                .unwrap()
                .trim_start_matches(['<', '>']);
            let dt_ok = match want_dt {
                "i2" => img.datatype == Datatype::I16,
                "f4" => img.datatype == Datatype::F32,
                other => img.datatype.name() == other,
            };
            assert!(
                dt_ok,
                "{}: dtype {:?} vs {want_dt}",
                path.display(),
                img.datatype
            );
            assert_eq!(
                inp["disk_dtype"].as_str().unwrap().starts_with('>'),
                img.header.big_endian
            );
            for i in 0..4 {
                for j in 0..4 {
                    let want = inp["affine"][i][j].as_f64().unwrap();
                    assert!(
                        (img.affine[i][j] - want).abs() < 1e-6,
                        "{}: affine[{i}][{j}] {} vs {want}",
                        path.display(),
                        img.affine[i][j]
                    );
                }
            }
            assert!(img.data.iter().all(|v| v.is_finite()));
            seen += 1;
        }
        assert_eq!(seen, 16);
    }

    #[test]
    fn qform_only_file_uses_quaternion() {
        let aff = [
            [0.0, -2.5, 0.0, 10.0],
            [2.0, 0.0, 0.0, -4.0],
            [0.0, 0.0, 3.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut raw = encode_nifti(&[2, 3, 4], NiftiData::U8(&[0; 24]), &aff, "t").unwrap();
        raw[254..256].copy_from_slice(&0i16.to_le_bytes()); // sform_code 0
        let img = read_nifti_bytes(&raw, "q").unwrap();
        for i in 0..4 {
            for j in 0..4 {
                assert!(
                    (img.affine[i][j] - aff[i][j]).abs() < 1e-5,
                    "{:?}",
                    img.affine
                );
            }
        }
        raw[252..254].copy_from_slice(&0i16.to_le_bytes()); // qform_code 0 too: pixdim-based
        let img = read_nifti_bytes(&raw, "b").unwrap();
        assert_eq!(img.affine[0][0], -2.0);
        assert_eq!(img.affine[0][3], 1.0); // nibabel puts the origin at the volume centre
    }

    #[test]
    fn roundtrip_f32_and_u8_gz() {
        let dir = tempfile::tempdir().unwrap();
        let aff = [
            [1.5, 0.0, 0.0, -3.0],
            [0.0, -1.5, 0.0, 4.0],
            [0.0, 0.0, 2.0, 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let data: Vec<f32> = (0..60).map(|i| i as f32 * 0.5 - 3.0).collect();
        let p = dir.path().join("a.nii.gz");
        write_nifti(&p, &[3, 4, 5], NiftiData::F32(&data), &aff).unwrap();
        let img = read_nifti(&p).unwrap();
        assert_eq!(img.dims, vec![3, 4, 5]);
        assert_eq!(img.data, data);
        assert_eq!(img.affine, aff);
        let lab: Vec<u8> = (0..120).map(|i| (i % 4) as u8).collect();
        let p = dir.path().join("l.nii");
        write_nifti(&p, &[3, 4, 5, 2], NiftiData::U8(&lab), &aff).unwrap();
        let img = read_nifti(&p).unwrap();
        assert_eq!(img.dims, vec![3, 4, 5, 2]);
        assert_eq!(img.datatype, Datatype::U8);
        assert!(img.data.iter().zip(&lab).all(|(a, b)| *a == *b as f32));
    }

    /// A NIfTI-1 file rewritten by hand: big-endian, int16, scaled; checks byte order and scaling.
    #[test]
    fn big_endian_scaled_int16() {
        let mut h = vec![0u8; 352];
        h[0..4].copy_from_slice(&348i32.to_be_bytes());
        for (i, d) in [2i16, 3, 2, 1, 1, 1, 1, 1].iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_be_bytes());
        }
        h[70..72].copy_from_slice(&4i16.to_be_bytes());
        h[108..112].copy_from_slice(&352f32.to_be_bytes());
        h[112..116].copy_from_slice(&0.5f32.to_be_bytes());
        h[116..120].copy_from_slice(&10f32.to_be_bytes());
        h[344..348].copy_from_slice(b"n+1\0");
        for v in [-2i16, 0, 2, 4, 300, -300] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        let img = read_nifti_bytes(&h, "be").unwrap();
        assert_eq!(img.dims, vec![3, 2]);
        assert_eq!(img.data, vec![9.0, 10.0, 11.0, 12.0, 160.0, -140.0]);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_file() {
        let aff = IDENTITY;
        let raw = encode_nifti(&[4, 4, 4], NiftiData::F32(&[1.0; 64]), &aff, "t").unwrap();
        let gz = gzip(&raw, 6);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated.nii", raw[..300].to_vec()),
            ("short-data.nii", raw[..raw.len() - 1].to_vec()),
            ("truncated.nii.gz", gz[..gz.len() / 2].to_vec()),
            ("corrupt.nii.gz", {
                let mut g = gz.clone();
                for b in &mut g[20..40] {
                    *b ^= 0x5a;
                }
                g
            }),
            ("magic.nii", {
                let mut r = raw.clone();
                r[344] = b'x';
                r
            }),
            ("sizeof.nii", {
                let mut r = raw.clone();
                r[0] = 7;
                r
            }),
            ("dims.nii", {
                let mut r = raw.clone();
                r[40..42].copy_from_slice(&9i16.to_le_bytes());
                r
            }),
            ("negdim.nii", {
                let mut r = raw.clone();
                r[42..44].copy_from_slice(&(-4i16).to_le_bytes());
                r
            }),
            ("huge.nii", {
                let mut r = raw.clone();
                for i in 0..3 {
                    r[42 + 2 * i..44 + 2 * i].copy_from_slice(&32767i16.to_le_bytes());
                }
                r
            }),
            ("dtype.nii", {
                let mut r = raw.clone();
                r[70..72].copy_from_slice(&32i16.to_le_bytes());
                r
            }),
            ("offset.nii", {
                let mut r = raw.clone();
                r[108..112].copy_from_slice(&f32::NAN.to_le_bytes());
                r
            }),
            ("empty.nii", vec![]),
        ];
        for (name, bytes) in cases {
            let err = read_nifti_bytes(&bytes, name).expect_err(name);
            let msg = err.to_string();
            assert!(msg.contains(name), "{name}: {msg}");
        }
    }

    /// A hand-built NIfTI-2 file (either byte order): qform-only with qfac −1, int16 data, scaled.
    fn nifti2(be: bool) -> Vec<u8> {
        let mut h = vec![0u8; 544];
        let put = |h: &mut Vec<u8>, off: usize, le: &[u8]| {
            let mut b = le.to_vec();
            if be {
                b.reverse();
            }
            h[off..off + b.len()].copy_from_slice(&b);
        };
        put(&mut h, 0, &540i32.to_le_bytes());
        h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
        put(&mut h, 12, &4i16.to_le_bytes());
        put(&mut h, 14, &16i16.to_le_bytes());
        for (i, d) in [3i64, 2, 2, 2, 1, 1, 1, 1].iter().enumerate() {
            put(&mut h, 16 + 8 * i, &d.to_le_bytes());
        }
        for (i, p) in [-1.0f64, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0]
            .iter()
            .enumerate()
        {
            put(&mut h, 104 + 8 * i, &p.to_le_bytes());
        }
        put(&mut h, 168, &544i64.to_le_bytes());
        put(&mut h, 176, &2.0f64.to_le_bytes());
        put(&mut h, 184, &(-1.0f64).to_le_bytes());
        put(&mut h, 344, &1i32.to_le_bytes()); // qform_code
        put(&mut h, 348, &0i32.to_le_bytes()); // sform_code
        // 90 degrees about z: (b, c, d) = (0, 0, sin 45°).
        put(&mut h, 368, &std::f64::consts::FRAC_1_SQRT_2.to_le_bytes());
        for (i, o) in [10.0f64, 20.0, 30.0].iter().enumerate() {
            put(&mut h, 376 + 8 * i, &o.to_le_bytes());
        }
        for v in 0..8i16 {
            let b = if be { v.to_be_bytes() } else { v.to_le_bytes() };
            h.extend_from_slice(&b);
        }
        h
    }

    #[test]
    fn nifti2_qform_with_qfac_both_byte_orders() {
        for be in [false, true] {
            let img = read_nifti_bytes(&gzip(&nifti2(be), 6), "n2.nii.gz").unwrap();
            assert_eq!(img.header.version, 2);
            assert_eq!(img.header.big_endian, be);
            assert_eq!(img.dims, vec![2, 2, 2]);
            assert_eq!(
                img.data,
                (0..8).map(|v| v as f32 * 2.0 - 1.0).collect::<Vec<_>>()
            );
            // R = rot_z(90°), zooms (2, 3, 4) with qfac −1 negating the last: columns (0,2,0), (−3,0,0), (0,0,−4).
            let want = [
                [0.0, -3.0, 0.0, 10.0],
                [2.0, 0.0, 0.0, 20.0],
                [0.0, 0.0, -4.0, 30.0],
                [0.0, 0.0, 0.0, 1.0],
            ];
            for i in 0..4 {
                for j in 0..4 {
                    assert!(
                        (img.affine[i][j] - want[i][j]).abs() < 1e-12,
                        "{be}: {:?}",
                        img.affine
                    );
                }
            }
        }
    }

    #[test]
    fn multi_member_gzip() {
        let raw = encode_nifti(&[4, 4, 4], NiftiData::F32(&[2.0; 64]), &IDENTITY, "t").unwrap();
        let mut two = gzip(&raw[..100], 1);
        two.extend(gzip(&raw[100..], 9));
        let img = read_nifti_bytes(&two, "multi").unwrap();
        assert_eq!(img.data, vec![2.0; 64]);
    }
}
