//! Breaks NIfTI loading into read, gunzip, decode and reorder times for one file.
//!
//! `cargo run --release -p wf-imaging --example load_profile -- FILE.nii.gz`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: load_profile FILE")?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let bytes = std::fs::read(&path)?;
        let t1 = Instant::now();
        let raw = wf_imaging::nifti::maybe_gunzip(&bytes, &path)?;
        let t2 = Instant::now();
        let img = wf_imaging::nifti::read_nifti_bytes(&bytes, &path)?;
        let t3 = Instant::now();
        let im = wf_imaging::transforms::load::image_from_nifti(img, "x")?;
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "{} MB gz -> {} MB: read {:.1} ms, gunzip {:.1} ms ({:.0} MB/s), streaming gunzip+decode {:.1} ms, reorder {:.1} ms",
            bytes.len() / 1_000_000,
            raw.len() / 1_000_000,
            ms(t0, t1),
            ms(t1, t2),
            raw.len() as f64 / 1e6 / (t2 - t1).as_secs_f64(),
            ms(t2, t3),
            ms(t3, t4)
        );
        drop(im);
    }
    Ok(())
}
