//! Times `spacing` alone (10 runs) on one loaded case: `spacing_profile IMAGE.nii.gz`.

use std::time::Instant;
use wf_imaging::transforms::{CaseSource, EnsureChannelFirst, Load, Spacing, SpacingModes};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: spacing_profile IMAGE")?;
    let src = CaseSource {
        id: "p".into(),
        image: path.into(),
        label: None,
    };
    let case = EnsureChannelFirst::default().apply(Load::default().load(&src)?)?;
    let sp = Spacing {
        pixdim: [1.5, 1.5, 2.0],
        mode: SpacingModes::default(),
    };
    let mut t = vec![];
    for _ in 0..10 {
        let c = case.clone();
        let t0 = Instant::now();
        let out = sp.apply(c)?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    t.sort_by(f64::total_cmp);
    println!("spacing: min {:.1} ms, median {:.1} ms", t[0], t[5]);
    Ok(())
}
