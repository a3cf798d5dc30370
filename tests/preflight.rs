//! What `wf plan` tells of the outputs' sizes and what `wf run` refuses before running anything,
//! through the `wf` binary: outputs larger than the cache's free space (exit 2, both numbers named,
//! `--no-space-check` to run anyway).

mod common;

use common::*;
use std::path::Path;

/// The shipped BraTS preprocessing (101 f32 copies of 128 × 128 × 64 crops of 484 four-channel
/// cases) on generated data of BraTS's size, so that the case count is known before fetching.
fn brats_like(copies: u64) -> String {
    format!(
        r#"name: big
steps:
  fetch:
    uses: fetch-dataset
    with: {{ source: synthetic, cases: 484, shape: [240, 240, 155] }}
  preprocess:
    uses: sharded-transform
    inputs: {{ dataset: fetch }}
    with:
      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - spacing: {{ pixdim: [1.5, 1.5, 2.0], mode: [bilinear, nearest] }}
        - orientation: {{ axcodes: RAS }}
        - rand-spatial-crop: {{ roi: [128, 128, 64] }}
        - rand-flip: {{ prob: 0.5, axis: 0 }}
        - normalize-intensity: {{ nonzero: true, channel_wise: true }}
      copies_per_case: {copies}
"#
    )
}

/// The bytes an unprivileged process may still write under `dir`.
fn free_space(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer of the size statvfs fills.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: statvfs succeeded.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // u32 on some platforms
    let (blocks, size) = (st.f_bavail as u64, st.f_frsize as u64);
    blocks * size
}

/// Whether any step has left an entry or a run record in the cache.
fn anything_ran(dir: &Path) -> bool {
    let cache = dir.join(".wf/cache");
    ["entries", "runs"].iter().any(|sub| {
        std::fs::read_dir(cache.join(sub))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    })
}

/// 484 cases × 101 copies × (4 × 128 × 128 × 64 × 4 image bytes + 128 × 128 × 64 label bytes), and
/// the cached prefixes: 484 × (4 × 160 × 160 × 78 × 4 + 160 × 160 × 78) after `spacing` (240 × 1 mm
/// at 1.5 mm is 160; 155 mm at 2 mm is 78).
const BRATS_BYTES: u64 = 484 * 101 * (4 * 128 * 128 * 64 * 4 + 128 * 128 * 64)
    + 484 * (4 * 160 * 160 * 78 * 4 + 160 * 160 * 78);

#[test]
fn plan_shows_the_estimated_size_of_what_will_be_written() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(dir.join("wf.yaml"), brats_like(101)).unwrap();
    let plan = wf(dir, &["plan", "wf.yaml"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = stdout(&plan);
    assert!(
        text.contains(
            "output: about 826.9 GiB (484 cases × 101 copies × 17.0 MiB per f32 sample, and 15.3 GiB of cached prefixes)"
        ),
        "{text}"
    );
    let v = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    assert_eq!(v["steps"][1]["size_bytes"], BRATS_BYTES, "{v}");
    assert!(v["steps"][0].get("size_bytes").is_none(), "{v}");
    assert!(!anything_ran(dir));

    // A data set still to be downloaded: the size is unknown, and the plan says so.
    let url = brats_like(101).replace(
        "source: synthetic, cases: 484, shape: [240, 240, 155]",
        "source: \"https://example.org/Task01_BrainTumour.tar\", sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"",
    );
    std::fs::write(dir.join("url.yaml"), url).unwrap();
    let v = json(&wf(dir, &["plan", "url.yaml", "--json"]));
    assert_eq!(
        v["steps"][1]["size"], "size unknown until the data set is fetched",
        "{v}"
    );
    assert!(v["steps"][1].get("size_bytes").is_none(), "{v}");
}

/// The shipped BraTS numbers: 484 cases × 101 copies × (4 × 128 × 128 × 64 × 4 + 128 × 128 × 64)
/// bytes, about 870 GB.
const BRATS_SAMPLES: u64 = 484 * 101 * (4 * 128 * 128 * 64 * 4 + 128 * 128 * 64);

/// A local data set whose dataset.json lists 484 four-channel cases (one file of which exists): its
/// case count is known at validation, and a run that got past the check would fail at once on the
/// missing files rather than write anything large.
fn local_brats(dir: &Path) {
    let synth = wf(
        dir,
        &["synth", "--out", "data", "--cases", "1", "--shape", "8,8,8"],
    );
    assert!(synth.status.success(), "{}", stderr(&synth));
    let path = dir.join("data/dataset.json");
    let mut ds: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    ds["training"] = (1..=484)
        .map(|i| {
            serde_json::json!({
                "image": format!("./imagesTr/BRATS_{i:03}.nii.gz"),
                "label": format!("./labelsTr/BRATS_{i:03}.nii.gz"),
            })
        })
        .collect();
    ds["numTraining"] = 484.into();
    std::fs::write(&path, serde_json::to_string_pretty(&ds).unwrap()).unwrap();
}

#[test]
fn a_run_larger_than_the_free_space_is_refused_before_any_step_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    local_brats(dir);
    // The shipped numbers (about 870 GB) exceed the free space of most machines; where they do
    // not, more copies do.
    let free = free_space(dir);
    let copies = 101 * (free / BRATS_SAMPLES + 1);
    let yaml = brats_like(copies).replace(
        "source: synthetic, cases: 484, shape: [240, 240, 155]",
        "source: data",
    );
    std::fs::write(dir.join("wf.yaml"), &yaml).unwrap();
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    if copies == 101 {
        assert_eq!(plan["steps"][1]["size_bytes"], BRATS_SAMPLES, "{plan}");
    }
    let out = wf(dir, &["run", "wf.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let (line, l) = yaml
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("copies_per_case:"))
        .unwrap();
    let col = l.find(&copies.to_string()).unwrap() + 1;
    assert!(
        err.starts_with(&format!(
            "wf.yaml:{}:{col}: step `preprocess` would write about ",
            line + 1
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("(484 cases × {copies} copies × 17.0 MiB per f32 sample, and the cached prefixes), but the file system of the cache ("))
            && err.contains(" free\n  help: store fewer bytes: `copies_per_case: 0` (augment online while training) or `sample_dtype: bf16`")
            && err.contains("`wf run --no-space-check`")
            && err.contains("error: not starting wf.yaml (1 problem); nothing ran"),
        "{err}"
    );
    // Both numbers, in bytes.
    let want = 484 * copies * (4 * 128 * 128 * 64 * 4 + 128 * 128 * 64);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: the step to run would write about "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!(" ({want} bytes); the cache's file system has ")),
        "{err}"
    );
    let said_free: u64 = line
        .rsplit(" (")
        .next()
        .and_then(|s| s.strip_suffix(" bytes) free"))
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    assert!(said_free < want, "{line}");
    assert!(!anything_ran(dir), "a step ran before the refusal");
}

/// `--no-space-check` starts the run anyway: here the step then fails on its unreadable data
/// (exit 1), which proves it ran.
#[test]
fn no_space_check_runs_anyway() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let synth = wf(
        dir,
        &[
            "synth", "--out", "data", "--cases", "1", "--shape", "16,16,8",
        ],
    );
    assert!(synth.status.success(), "{}", stderr(&synth));
    for entry in std::fs::read_dir(dir.join("data/imagesTr")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a NIfTI file").unwrap();
    }
    std::fs::write(
        dir.join("wf.yaml"),
        r#"steps:
  fetch: { uses: fetch-dataset, with: { source: data } }
  preprocess:
    uses: sharded-transform
    inputs: { dataset: fetch }
    with:
      transforms: [load, ensure-channel-first, convert-labels, { rand-spatial-crop: { roi: [16, 16, 8] } }]
      copies_per_case: 4000000000
"#,
    )
    .unwrap();
    let refused = wf(dir, &["run", "wf.yaml"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("1 case × 4000000000 copies × "),
        "{}",
        stderr(&refused)
    );
    let out = wf(dir, &["run", "wf.yaml", "--json", "--no-space-check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(status_of(&v, "fetch"), "ran");
    assert_eq!(status_of(&v, "preprocess"), "failed");
}

/// A server that answers every request with headers only: an ETag and a `Content-Length` of
/// `length`. Returns its URL for `file`.
fn announcing_server(length: u64, file: &str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
            );
        }
    });
    format!("http://{addr}/{file}")
}

/// A download the server announces as larger than the free space: `wf plan` shows its length and
/// `wf run` refuses before fetching.
#[test]
fn a_download_larger_than_the_free_space_is_refused_before_fetching() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let length = free_space(dir) + (1 << 40);
    let url = announcing_server(length, "Task01_BrainTumour.tar");
    std::fs::write(
        dir.join("wf.yaml"),
        format!("steps:\n  fetch: {{ uses: fetch-dataset, with: {{ source: \"{url}\" }} }}\n"),
    )
    .unwrap();
    let plan = json(&wf(dir, &["plan", "wf.yaml", "--json"]));
    assert_eq!(plan["steps"][0]["size_bytes"], length, "{plan}");
    let text = stdout(&wf(dir, &["plan", "wf.yaml"]));
    assert!(
        text.contains(
            "(the download's length as the server announces it; its extracted files come on top)"
        ),
        "{text}"
    );
    let out = wf(dir, &["run", "wf.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let col = read(dir.join("wf.yaml"))
        .lines()
        .nth(1)
        .unwrap()
        .find("\"http")
        .unwrap()
        + 1;
    assert!(
        err.starts_with(&format!("wf.yaml:2:{col}: step `fetch` would write about "))
            && err.contains(&format!("({length} bytes)"))
            && err.contains("nothing ran"),
        "{err}"
    );
    assert!(!anything_ran(dir), "a step ran before the refusal");
}
