//! `wf report` end to end: a small training workflow runs, then its report is one self-contained
//! HTML file (every image a data URI, nothing loaded from elsewhere) holding the steps, the training
//! curves, sample slices, the export's card and the evaluation (table, box plot, every case); headless Chromium (Debian's `chromium`; the test
//! prints SKIP without it) renders it with every image decoded and a screenshot that is not blank.
//! Bad input: no run yet, an invalid workflow (exit 2), an unwritable output (exit 1).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn workflow(dir: &Path) {
    let yaml = r#"name: tiny
seed: 3
steps:
  fetch:
    uses: fetch-dataset
    with: { source: synthetic, cases: 4, shape: [40, 40, 32], seed: 1 }
  preprocess:
    uses: sharded-transform
    inputs: { dataset: fetch }
    with:
      transforms:
        - load
        - ensure-channel-first
        - convert-labels
        - spacing: { pixdim: [1.5, 1.5, 2.0], mode: [bilinear, nearest] }
        - orientation: { axcodes: RAS }
        - rand-spatial-crop: { roi: [16, 16, 16] }
        - normalize-intensity: { nonzero: true, channel_wise: true }
      copies_per_case: 1
  train:
    uses: train-unet
    inputs: { samples: preprocess }
    with: { epochs: 2, batch_size: 2, lr: 1.0e-3, val_fraction: 0.25, gpus: 0,
            channels: [4, 8, 16], strides: [2, 2], num_res_units: 1 }
  export: { uses: export-checkpoint, inputs: { model: train } }
  evaluate: { uses: evaluate, inputs: { model: export, dataset: fetch } }
"#;
    std::fs::write(dir.join("wf.yaml"), yaml).unwrap();
}

/// The `<td class="STATE">` of a step's row in the steps table.
fn row_state<'a>(html: &'a str, id: &str) -> &'a str {
    let row = html
        .split("<tr>")
        .find(|r| r.starts_with(&format!("<td><code>{id}</code>")))
        .unwrap_or_else(|| panic!("no row for {id}"));
    row.split("<td class=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
}

#[test]
fn report_holds_the_run_and_renders_in_headless_chromium() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    workflow(dir);

    // Nothing ran yet: invalid input, naming the workflow file.
    let out = wf(dir, &["report", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wf.yaml") && stderr(&out).contains("wf run wf.yaml"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        dir.join("bad.yaml"),
        "name: x\nsteps: { a: { uses: nope } }\n",
    )
    .unwrap();
    let out = wf(dir, &["report", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.yaml"), "{}", stderr(&out));

    let run = wf(dir, &["run", "wf.yaml", "--json"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let forced = wf(dir, &["run", "wf.yaml", "--json", "--force", "train"]);
    assert!(forced.status.success(), "{}", stderr(&forced));

    let out = wf(dir, &["report", "wf.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = PathBuf::from(stdout(&out).trim());
    assert_eq!(
        path.canonicalize().unwrap(),
        dir.canonicalize().unwrap().join("wf.report.html")
    );
    let html = read(&path);

    // One file: every image inside it, nothing to fetch.
    let imgs = html.matches("<img ").count();
    // The curves, and 3 samples x 4 channels x 3 views.
    assert!(imgs > 3 * 4 * 3, "{imgs} images");
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), imgs);
    for external in ["http://", "https://", "<link", "src=\"/", "file:"] {
        assert!(!html.contains(external), "the report refers to {external}");
    }
    assert_eq!(
        html.matches("url(").count(),
        html.matches("url(#").count(),
        "only references inside the page"
    );
    // The last run: train ran again, the rest was cached (export too: the Model did not change).
    assert_eq!(row_state(&html, "train"), "ran");
    for id in ["fetch", "preprocess", "export", "evaluate"] {
        assert_eq!(row_state(&html, id), "cached", "{id}");
    }
    for part in [
        "<svg class=\"dag\"",
        "Training: <code>train</code>",
        "Samples: <code>preprocess</code>",
        "FLAIR",
        "sagittal",
        "Export: <code>export</code>",
        "Model card",
        "same kind of machine",
        "GEMM kernel",
        "Evaluation: <code>evaluate</code>",
        "1 case (held-out), whole volumes",
        "alt=\"Dice and HD95 per region over the cases\"",
        "<th>TC Dice</th><th>TC HD95 (mm)</th>",
    ] {
        assert!(html.contains(part), "the report lacks {part}");
    }

    // -o elsewhere; an unwritable place fails naming it.
    let out = wf(dir, &["report", "wf.yaml", "-o", "r.html"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "r.html");
    assert!(dir.join("r.html").is_file());
    let out = wf(dir, &["report", "wf.yaml", "-o", "missing/r.html"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing/r.html"), "{}", stderr(&out));

    render_in_chromium(&path, imgs);
}

/// Debian's `chromium` (or `WF_CHROMIUM`), if there is one.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WF_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium with `args`, killed after two minutes; its stdout (through a file, which
/// cannot fill up as a pipe would while we wait).
fn headless(bin: &Path, profile: &Path, args: &[&str]) -> String {
    let stdout = profile.join("stdout");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.join("profile").display()),
        ])
        .args(args)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("chromium did not finish in 2 minutes: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    read(&stdout)
}

fn render_in_chromium(page: &Path, imgs: usize) {
    let Some(bin) = chromium() else {
        println!(
            "SKIP report_holds_the_run_and_renders_in_headless_chromium: chromium is not installed \
             (.ci/run installs Debian's `chromium`; or set WF_CHROMIUM)"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.display());
    // The page marks its body once every image has loaded, counting those with pixels.
    let dom = headless(&bin, profile.path(), &["--dump-dom", &url]);
    let want = format!("data-images=\"{imgs}/{imgs}\"");
    assert!(
        dom.contains(&want),
        "chromium did not decode every image ({want}): {}",
        dom.split("data-images=")
            .nth(1)
            .map_or("no marker", |s| &s[..s.len().min(20)])
    );
    let shot = profile.path().join("shot.png");
    headless(
        &bin,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400",
            &url,
        ],
    );
    let bytes = std::fs::read(&shot).expect("chromium wrote the screenshot");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    assert_eq!((info.width, info.height), (1280, 2400));
    // Not blank: a good part of the page is ink, in many colors (curves, slices, overlays).
    let ink = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&v| v < 235))
        .count();
    assert!(
        ink > pixels.len() / 10,
        "{ink} of {} pixels inked",
        pixels.len()
    );
    let colors: std::collections::BTreeSet<[u8; 3]> =
        pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    assert!(colors.len() > 200, "{} colors", colors.len());
}
