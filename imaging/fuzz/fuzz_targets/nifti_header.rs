//! Fuzzes the NIfTI header parser and reader: any bytes (plain or gzip) must yield Ok or an error, never
//! a panic, an abort or an allocation the input does not justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = wf_imaging::nifti::parse_header(data, "fuzz") {
        let _ = h.affine("fuzz");
        let _ = h.scaling("fuzz");
        let _ = h.data_offset("fuzz");
    }
    if let Ok(img) = wf_imaging::nifti::read_nifti_bytes(data, "fuzz") {
        assert_eq!(img.data.len(), img.dims.iter().product::<usize>());
    }
    // The same bytes behind a gzip wrapper exercise the streaming path.
    if data.len() < 4096 {
        let gz = wf_imaging::nifti::gzip(data, 1);
        let _ = wf_imaging::nifti::read_nifti_bytes(&gz, "fuzz.gz");
    }
});
