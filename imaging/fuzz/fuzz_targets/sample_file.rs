//! Fuzzes sample validation: arbitrary bytes on disk must open as a valid sample or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("wf-fuzz-sample-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join("s.rkyv");
    if std::fs::write(&p, data).is_ok()
        && let Ok(f) = wf_imaging::sample::SampleFile::open(&p)
    {
        let _ = (f.image().len(), f.labels().len(), f.drawn(), f.case_id().len(), f.affine());
    }
});
