//! Test-only reader for the golden `.npy` files (C order, little-endian f4 / u1 / b1), as float32.

use std::path::Path;

pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read(path: &Path) -> Result<Npy, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not an npy file", path.display()));
    }
    let (hlen, hstart) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
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
    let body = &b[hstart + hlen..];
    let data: Vec<f32> = match descr {
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
