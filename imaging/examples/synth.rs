//! Writes a synthetic MSD-layout data set: `synth OUT CASES [X Y Z] [SEED]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let out = a.first().ok_or("usage: synth OUT CASES [X Y Z] [SEED]")?;
    let n: usize = a.get(1).map_or(Ok(2), |v| v.parse())?;
    let shape = if a.len() >= 5 {
        [a[2].parse()?, a[3].parse()?, a[4].parse()?]
    } else {
        [240, 240, 155]
    };
    let seed: u64 = a.get(5).map_or(Ok(1), |v| v.parse())?;
    let t = std::time::Instant::now();
    let s = wf_imaging::synth::generate(std::path::Path::new(out), n, shape, seed, 0)?;
    eprintln!(
        "{} cases in {:.2} s",
        s.cases.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
