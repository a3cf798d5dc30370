//! Test-only reader for the golden `.npy` files (C order, little-endian f4 / u1 / b1), as float32;
//! `.npy.gz` (a gzip-wrapped `.npy`) is inflated first.

use std::io::Read;
use std::path::Path;

pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The file's bytes, inflated when the name ends in `.gz`.
fn file_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: gzip: {e}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The array's raw bytes (C order, as stored), without the header.
pub fn read_body(path: &Path) -> Result<Vec<u8>, String> {
    let b = file_bytes(path)?;
    let (_, _, start) = header(&b, path)?;
    Ok(b[start..].to_vec())
}

pub fn read(path: &Path) -> Result<Npy, String> {
    let b = file_bytes(path)?;
    let (descr, shape, start) = header(&b, path)?;
    let body = &b[start..];
    let data: Vec<f32> = match descr.as_str() {
        "<f4" => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "|u1" | "|b1" => body.iter().map(|&v| v as f32).collect(),
        other => return Err(format!("{}: dtype {other} not supported", path.display())),
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "{}: {} values for shape {shape:?}",
            path.display(),
            data.len()
        ));
    }
    Ok(Npy { shape, data })
}

/// (descr, shape, offset of the data) of an npy file's bytes.
fn header(b: &[u8], path: &Path) -> Result<(String, Vec<usize>, usize), String> {
    if b.len() < 12 || &b[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not an npy file", path.display()));
    }
    let (hlen, hstart) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    if b.len() < hstart + hlen {
        return Err(format!("{}: truncated header", path.display()));
    }
    let header = std::str::from_utf8(&b[hstart..hstart + hlen]).map_err(|e| e.to_string())?;
    let field = |key: &str| -> Result<&str, String> {
        let i = header
            .find(key)
            .ok_or(format!("{}: no {key}", path.display()))?;
        Ok(header[i + key.len()..].trim_start_matches([':', ' ']))
    };
    let descr = field("'descr'")?;
    let descr = &descr[1..descr[1..].find('\'').unwrap() + 1];
    if field("'fortran_order'")?.starts_with("True") {
        return Err(format!("{}: fortran order not supported", path.display()));
    }
    let shape_s = field("'shape'")?;
    let shape_s = &shape_s[1..shape_s.find(')').unwrap()];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    Ok((descr.to_string(), shape, hstart + hlen))
}
