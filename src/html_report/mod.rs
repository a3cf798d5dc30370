//! `wf report FILE [-o OUT]`: one self-contained HTML page about the last run of a workflow, made
//! from what the cache keeps (nothing runs): the DAG with each step's status, time and cache state
//! (the run records, `runs/<workflow>/<step>.json`, and the entries' facts); the training curves and
//! per-epoch table of each Model; pictures of a few preprocessed samples (the first Samples output)
//! with the tumour regions overlaid; each Export's metrics and model card. Images are PNGs drawn here
//! and embedded as data URIs; the page loads nothing (its Content-Security-Policy forbids it) and
//! marks `<body data-images="N/M">` once its M images have loaded, N of them with pixels.

mod dag;
mod html;
mod slices;

use crate::error::{CliError, CliResult, Exit};
use html::{duration, escape, png_img};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use wf_engine::exec::Status;
use wf_engine::store::{Entry, RunRecord};
use wf_engine::{ArtifactType, Store, Workflow};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The workflow file.
    pub file: PathBuf,
    /// Where to write the page (default: FILE with `.report.html` for its extension, beside it).
    #[arg(long, short = 'o', value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Cache directory (default: `cache:` of the workflow, else .wf/cache beside it).
    #[arg(long)]
    pub cache: Option<String>,
}

/// Samples drawn in the report.
const SAMPLES_SHOWN: usize = 3;

/// `FILE.report.html` beside the workflow file (`wf.yaml` → `wf.report.html`).
pub fn default_path(wf: &Workflow) -> PathBuf {
    let stem = wf
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| wf.name.clone());
    wf.dir.join(format!("{stem}.report.html"))
}

pub fn main(args: &ReportArgs) -> CliResult {
    let wf = crate::cli::load(&args.file)?;
    let dir = crate::cli::cache_dir(Some(&wf), args.cache.as_deref())?;
    if !dir.is_dir() {
        return Err(CliError::invalid(format!(
            "error: {}: no cache at {}; run `wf run {}` first",
            args.file.display(),
            dir.display(),
            args.file.display()
        )));
    }
    let store = Store::open(&dir).map_err(|e| CliError::invalid(format!("error: {e}")))?;
    let steps = gather(&wf, &store);
    if steps.iter().all(|s| s.record.is_none()) {
        return Err(CliError::invalid(format!(
            "error: {}: no run of workflow `{}` in the cache {}; run `wf run {}` first",
            args.file.display(),
            wf.name,
            store.root().display(),
            args.file.display()
        )));
    }
    let page = page(&wf, &store, &steps);
    let out = args.out.clone().unwrap_or_else(|| default_path(&wf));
    write(&out, page.as_bytes())
        .map_err(|e| CliError::failed(format!("error: cannot write {}: {e}", out.display())))?;
    println!("{}", out.display());
    Ok(Exit::Ok)
}

/// Writes through a temporary file beside `path`, so a reader never sees half a page.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.html".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What the cache says about one step.
struct StepInfo {
    id: String,
    kind: &'static str,
    output: ArtifactType,
    inputs: Vec<usize>,
    record: Option<RunRecord>,
    /// The entry of the recorded key, while it is in the cache.
    entry: Option<Entry>,
    /// The output's files, while they are in the cache.
    dir: Option<PathBuf>,
}

fn gather(wf: &Workflow, store: &Store) -> Vec<StepInfo> {
    wf.steps
        .iter()
        .map(|def| {
            let record = store.last_run(&wf.name, &def.id);
            let entry = record
                .as_ref()
                .filter(|r| r.artifact.is_some())
                .and_then(|r| store.lookup(&r.key).ok().flatten())
                .filter(|e| Some(e.artifact) == record.as_ref().and_then(|r| r.artifact));
            let dir = entry.as_ref().map(|e| store.artifact_path(&e.artifact));
            StepInfo {
                id: def.id.clone(),
                kind: def.kind(),
                output: def.output,
                inputs: def.inputs.values().copied().collect(),
                record,
                entry,
                dir,
            }
        })
        .collect()
}

/// The run the newest record belongs to.
fn last_run(steps: &[StepInfo]) -> Option<(String, u64)> {
    steps
        .iter()
        .filter_map(|s| s.record.as_ref()?.outcome.as_ref())
        .max_by_key(|o| o.finished_unix)
        .map(|o| (o.run.clone(), o.finished_unix))
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ran => "ran",
        Status::Cached => "cached",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
    }
}

/// (state for the picture, status text, time text) of a step.
fn state(step: &StepInfo, last: Option<&str>) -> (&'static str, String, String) {
    match step.record.as_ref().map(|r| r.outcome.as_ref()) {
        None => ("never", "never run".into(), String::new()),
        Some(None) => (
            "earlier",
            "run before outcomes were recorded".into(),
            String::new(),
        ),
        Some(Some(o)) if Some(o.run.as_str()) == last => {
            let s = status_name(o.status);
            (s, s.to_string(), duration(o.seconds))
        }
        Some(Some(o)) => (
            "earlier",
            format!(
                "not in the last run ({} {})",
                status_name(o.status),
                html::date(o.finished_unix)
            ),
            duration(o.seconds),
        ),
    }
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ran { color: #2ca02c; } .cached { color: #1f77b4; } .failed { color: #d62728; } .earlier, .never { color: #888; }
.dag text { font-size: 12px; fill: #222; } .dag text.kind { fill: #666; }
.note { color: #8a5a00; }
img.curves { max-width: 100%; height: auto; }
.views { border: none; } .views td, .views th { border: none; padding: 2px 6px; text-align: center; }
figure.view { position: relative; display: inline-block; margin: 0; padding: 14px 16px; }
figure.view img { display: block; image-rendering: pixelated; }
figure.view span { position: absolute; font-size: 11px; color: #555; }
figure.view .l { left: 2px; top: 50%; } figure.view .r { right: 2px; top: 50%; }
figure.view .t { top: 0; left: 50%; } figure.view .b { bottom: 0; left: 50%; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; vertical-align: middle; }
.card { border: 1px solid #ddd; padding: 0 16px; background: #fafafa; }
code { background: #f0f0f0; padding: 0 3px; }
";

/// Marks the body with how many images have pixels, once every image has loaded.
const SCRIPT: &str = "
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
";

fn page(wf: &Workflow, store: &Store, steps: &[StepInfo]) -> String {
    let last = last_run(steps);
    let last_id = last.as_ref().map(|l| l.0.as_str());
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <title>wf report: {name}</title><style>{STYLE}</style></head>\n\
         <body data-images=\"loading\">\n<h1>Workflow <code>{name}</code></h1>\n\
         <p class=\"meta\">{file} · last run {when} · cache {cache} · wf {version}</p>\n",
        name = escape(&wf.name),
        file = escape(&wf.path.display().to_string()),
        when = last
            .as_ref()
            .map_or("unknown".to_string(), |l| html::date(l.1)),
        cache = escape(&store.root().display().to_string()),
        version = env!("CARGO_PKG_VERSION"),
    );
    steps_section(&mut out, steps, last_id);
    for s in steps.iter().filter(|s| s.output == ArtifactType::Model) {
        training_section(&mut out, s);
    }
    if let Some(s) = steps
        .iter()
        .find(|s| s.output == ArtifactType::Samples && s.dir.is_some())
        .or_else(|| steps.iter().find(|s| s.output == ArtifactType::Samples))
    {
        samples_section(&mut out, s, steps);
    }
    for s in steps.iter().filter(|s| s.output == ArtifactType::Export) {
        export_section(&mut out, s);
    }
    for s in steps.iter().filter(|s| s.output == ArtifactType::Report) {
        evaluation_section(&mut out, s);
    }
    let _ = write!(out, "<script>{SCRIPT}</script>\n</body></html>\n");
    out
}

fn steps_section(out: &mut String, steps: &[StepInfo], last: Option<&str>) {
    let nodes: Vec<dag::Node> = steps
        .iter()
        .map(|s| {
            let (state, status, time) = state(s, last);
            let detail = match state {
                "ran" | "cached" | "failed" => format!("{status} · {time}"),
                "never" => status,
                _ => "not in the last run".to_string(),
            };
            dag::Node {
                id: s.id.clone(),
                kind: s.kind.to_string(),
                inputs: s.inputs.clone(),
                state,
                detail,
            }
        })
        .collect();
    let _ = write!(
        out,
        "<h2 id=\"steps\">Steps</h2>\n{}\n<table><tr><th>step</th><th>kind</th><th>last run</th>\
         <th>time</th><th>output</th><th>notes</th></tr>\n",
        dag::svg(&nodes)
    );
    for s in steps {
        let (state, status, time) = state(s, last);
        let output = match (&s.entry, s.record.as_ref().and_then(|r| r.artifact)) {
            (Some(e), _) => format!(
                "{} <code>{}</code>, {} files, {}",
                e.output_type,
                e.artifact.short(),
                e.files,
                crate::cli::human_bytes(e.bytes)
            ),
            (None, Some(a)) => format!("<code>{}</code>, no longer in the cache", a.short()),
            (None, None) => "none".into(),
        };
        let mut notes = Vec::new();
        if let Some(err) = s
            .record
            .as_ref()
            .and_then(|r| r.outcome.as_ref())
            .and_then(|o| o.error.as_ref())
        {
            notes.push(format!("<span class=\"failed\">{}</span>", escape(err)));
        }
        if let Some(e) = &s.entry {
            notes.extend(e.warnings.iter().map(|w| format!("warning: {}", escape(w))));
        }
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"{state}\">{}</td><td class=\"num\">{}</td>\
             <td>{output}</td><td>{}</td></tr>",
            escape(&s.id),
            escape(s.kind),
            escape(&status),
            escape(&time),
            notes.join("<br>")
        );
    }
    out.push_str("</table>\n");
}

/// Why a step has no output to show.
fn missing(out: &mut String, s: &StepInfo) {
    let why = match s.record.as_ref() {
        None => "has not run yet",
        Some(r) if r.artifact.is_none() => "failed in its last run, so it has no output",
        Some(_) => "made an output that is no longer in the cache",
    };
    let _ = writeln!(
        out,
        "<p class=\"note\"><code>{}</code> {why}.</p>",
        escape(&s.id)
    );
}

fn opt(v: Option<f32>) -> String {
    v.map_or_else(|| "–".to_string(), |d| format!("{d:.4}"))
}

fn training_section(out: &mut String, s: &StepInfo) {
    let _ = writeln!(
        out,
        "<h2 id=\"training-{0}\">Training: <code>{0}</code></h2>",
        escape(&s.id)
    );
    let Some(dir) = &s.dir else {
        return missing(out, s);
    };
    let metrics = match wf_trainer::train::read_metrics(dir) {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&e.to_string()));
            Vec::new()
        }
    };
    match wf_trainer::record::TrainRecord::read_in(dir) {
        Ok(Some(r)) => {
            let machine = r.machine.as_ref().map_or_else(
                || "not recorded (trained before wf kept it)".to_string(),
                |m| m.describe(),
            );
            let _ = writeln!(
                out,
                "<ul><li>{} epochs; best epoch {} (validation mean Dice {})</li>\
                 <li>{} training cases ({} samples), {} validation cases ({} samples)</li>\
                 <li>device <code>{}</code>, {}; machine: {}</li></ul>",
                r.epochs_completed,
                r.best_epoch.map_or("–".to_string(), |e| e.to_string()),
                opt(r.best_val_mean_dice),
                r.split.train_cases.len(),
                r.split.train_samples,
                r.split.val_cases.len(),
                r.split.val_samples,
                escape(&r.device),
                escape(&r.precision),
                escape(&machine),
            );
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&e.to_string()));
        }
    }
    if metrics.is_empty() {
        let _ = writeln!(out, "<p class=\"note\">No epoch metrics in the model.</p>");
        return;
    }
    match wf_trainer::plot::plot_png(&metrics) {
        Ok(png) => out.push_str(&png_img(
            &png,
            "training loss and validation Dice per epoch",
            "curves",
        )),
        Err(e) => {
            let _ = writeln!(out, "<p class=\"note\">plot: {}</p>", escape(&e));
        }
    }
    // Timings are facts of the computation that made the model (absent for models made before).
    let facts = s.entry.as_ref().map(|e| &e.facts);
    let timings: Vec<wf_trainer::train::EpochTiming> = facts
        .and_then(|f| f.get("epochs"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if let Some(total) = facts
        .and_then(|f| f.get("train_seconds"))
        .and_then(|v| v.as_f64())
    {
        let _ = writeln!(
            out,
            "<p>Training time (epochs this computation ran): {}</p>",
            duration(total)
        );
    }
    let best = wf_trainer::plot::best_epoch(&metrics).map(|b| b.0);
    out.push_str(
        "<details><summary>Per epoch</summary><table><tr><th>epoch</th><th>loss</th><th>TC</th>\
         <th>WT</th><th>ET</th><th>mean Dice</th><th>seconds</th><th>samples/s</th></tr>\n",
    );
    for m in &metrics {
        let t = timings.iter().find(|t| t.epoch == m.epoch);
        let mark = if Some(m.epoch) == best { " ★" } else { "" };
        let _ = writeln!(
            out,
            "<tr><td class=\"num\">{}{mark}</td><td class=\"num\">{:.4}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            m.epoch,
            m.train_loss,
            opt(m.val_dice_tc),
            opt(m.val_dice_wt),
            opt(m.val_dice_et),
            opt(m.val_mean_dice),
            t.map_or("–".into(), |t| format!("{:.1}", t.train_seconds)),
            t.map_or("–".into(), |t| format!(
                "{:.1}",
                t.train_samples_per_second
            )),
        );
    }
    out.push_str("</table></details>\n");
}

/// Channel names from the `modality` of the first Dataset output still in the cache.
fn modality_names(steps: &[StepInfo]) -> Vec<String> {
    let Some(dir) = steps
        .iter()
        .filter(|s| s.output == ArtifactType::Dataset)
        .find_map(|s| s.dir.as_ref())
    else {
        return Vec::new();
    };
    let Ok(ds) = wf_imaging::msd::MsdDataset::read(&dir.join(wf_imaging::msd::DATASET_JSON)) else {
        return Vec::new();
    };
    let mut named: Vec<(usize, String)> = ds
        .modality
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
        .collect();
    named.sort();
    let mut names = Vec::new();
    for (i, name) in named {
        if i != names.len() {
            break; // a gap: the rest cannot be placed
        }
        names.push(name);
    }
    names
}

/// Up to `n` cases spread over the index: the first, the last, and between.
fn spread(len: usize, n: usize) -> Vec<usize> {
    let mut picks: Vec<usize> = match (len, n) {
        (0, _) | (_, 0) => vec![],
        (_, 1) => vec![0],
        _ => (0..n).map(|i| i * (len - 1) / (n - 1)).collect(),
    };
    picks.dedup();
    picks
}

fn samples_section(out: &mut String, s: &StepInfo, steps: &[StepInfo]) {
    let _ = writeln!(
        out,
        "<h2 id=\"samples\">Samples: <code>{}</code></h2>",
        escape(&s.id)
    );
    let Some(dir) = &s.dir else {
        return missing(out, s);
    };
    let note = |out: &mut String, e: String| {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&e));
    };
    let root = match wf_imaging::samples::Staged::read_in(dir) {
        Ok(Some(st)) if st.path.join(wf_imaging::samples::INDEX_FILE).is_file() => st.path,
        Ok(_) => dir.clone(),
        Err(e) => return note(out, e.to_string()),
    };
    let index = match wf_imaging::samples::SamplesIndex::read(
        &root.join(wf_imaging::samples::INDEX_FILE),
    ) {
        Ok(i) => i,
        Err(e) => return note(out, e.to_string()),
    };
    let legend: String = slices::region_css()
        .iter()
        .map(|(name, css)| {
            format!("<span class=\"swatch\" style=\"background: {css}\"></span>{name}")
        })
        .collect();
    let _ = writeln!(
        out,
        "<p>{} cases, {} per case, labels <code>{}</code>, {} images. Mid-slices of {} of them; \
         regions filled and outlined:{legend}. Axial: first array axis to the right, second up; \
         coronal: first right, third up; sagittal: second right, third up; the letters give each \
         edge's anatomical direction from the sample's affine.</p>",
        index.cases.len(),
        if index.copies_per_case == 0 {
            "the deterministic prefix (augmented online)".to_string()
        } else {
            format!("{} augmented copies", index.copies_per_case)
        },
        escape(&index.labels),
        escape(&index.sample_dtype),
        SAMPLES_SHOWN.min(index.cases.len()),
    );
    let names = modality_names(steps);
    for i in spread(index.cases.len(), SAMPLES_SHOWN) {
        let case = &index.cases[i];
        let Some(file) = case.files.first() else {
            continue;
        };
        let path = root.join(file);
        let pictures = wf_imaging::sample::SampleFile::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                slices::render(&f, &names).map_err(|e| format!("{}: {e}", path.display()))
            });
        let p = match pictures {
            Ok(p) => p,
            Err(e) => {
                note(out, e);
                continue;
            }
        };
        let regions = p.region_voxels.map_or_else(
            || "no labels".to_string(),
            |[wt, tc, et]| format!("voxels WT {wt}, TC {tc}, ET {et}"),
        );
        let copy = if p.copy == wf_imaging::sample::PREFIX_COPY {
            "prefix".to_string()
        } else {
            format!("copy {}", p.copy)
        };
        let _ = writeln!(
            out,
            "<h3><code>{}</code> ({copy})</h3><p class=\"meta\">shape {:?} (C, X, Y, Z), spacing \
             {:.2} × {:.2} × {:.2} mm, {regions}</p>\n<table class=\"views\"><tr><th></th>\
             <th>axial</th><th>coronal</th><th>sagittal</th></tr>",
            escape(&p.case),
            p.shape,
            p.spacing[0],
            p.spacing[1],
            p.spacing[2],
        );
        let axis = ["X", "Y", "Z"];
        for ch in &p.channels {
            let _ = write!(out, "<tr><th>{}</th>", escape(&ch.name));
            for v in &ch.views {
                let alt = format!(
                    "{} {} of {}, {} = {}",
                    ch.name, v.name, p.case, axis[v.axis], v.index
                );
                let [l, r, t, b] = v.edges;
                let _ = write!(
                    out,
                    "<td><figure class=\"view\">{}<span class=\"l\">{l}</span><span class=\"r\">{r}</span>\
                     <span class=\"t\">{t}</span><span class=\"b\">{b}</span></figure>\
                     <div class=\"meta\">{} = {}</div></td>",
                    png_img(&v.png, &alt, "slice"),
                    axis[v.axis],
                    v.index
                );
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
}

fn export_section(out: &mut String, s: &StepInfo) {
    let _ = writeln!(
        out,
        "<h2 id=\"export-{0}\">Export: <code>{0}</code></h2>",
        escape(&s.id)
    );
    let Some(dir) = &s.dir else {
        return missing(out, s);
    };
    let _ = writeln!(
        out,
        "<p class=\"meta\">{}</p>",
        escape(&dir.display().to_string())
    );
    let metrics_path = dir.join("metrics.json");
    match std::fs::read(&metrics_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string()))
    {
        Ok(m) => {
            out.push_str("<table><tr><th>epoch</th><th>mean Dice</th><th>TC</th><th>WT</th><th>ET</th><th>train loss</th></tr><tr>");
            let cell = |k: &str| match &m[k] {
                serde_json::Value::Number(n) if n.is_u64() => n.to_string(),
                serde_json::Value::Number(n) => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                _ => "–".to_string(),
            };
            for k in [
                "epoch",
                "val_mean_dice",
                "val_dice_tc",
                "val_dice_wt",
                "val_dice_et",
                "train_loss",
            ] {
                let _ = write!(out, "<td class=\"num\">{}</td>", cell(k));
            }
            out.push_str("</tr></table>\n");
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"note\">{}: {}</p>",
                escape(&metrics_path.display().to_string()),
                escape(&e)
            );
        }
    }
    if let Ok(card) = std::fs::read_to_string(dir.join("README.md")) {
        let _ = writeln!(
            out,
            "<h3>Model card</h3><div class=\"card\">{}</div>",
            html::markdown(&card)
        );
    }
}

/// An evaluate step's Report: the per-region summary, the box plot, and every case's scores.
fn evaluation_section(out: &mut String, s: &StepInfo) {
    let _ = writeln!(
        out,
        "<h2 id=\"evaluation-{0}\">Evaluation: <code>{0}</code></h2>",
        escape(&s.id)
    );
    let Some(dir) = &s.dir else {
        return missing(out, s);
    };
    let r = match wf_trainer::evaluation::EvalReport::read_in(dir) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&e.to_string()));
            return;
        }
    };
    let num = |v: Option<f64>, p: usize| v.map_or("–".to_string(), |x| format!("{x:.p$}"));
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} ({}), whole volumes · roi {:?} · overlap {} · {} blending · {} back onto each image's grid · labels {} · {}</p>",
        wf_engine::plural(r.cases.len(), "case"),
        escape(&r.cases_from),
        r.roi,
        r.overlap,
        escape(&r.blend),
        escape(&r.resample),
        escape(&r.labels),
        escape(&dir.display().to_string())
    );
    out.push_str(
        "<table class=\"evaluation\"><tr><th>region</th><th>Dice mean</th><th>std</th><th>median</th>\
         <th>HD95 mean (mm)</th><th>std</th><th>median</th><th>cases (Dice / HD95)</th></tr>\n",
    );
    for g in &r.summary {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} / {}</td></tr>",
            escape(&g.region),
            num(g.dice.mean, 4),
            num(g.dice.std, 4),
            num(g.dice.median, 4),
            num(g.hd95_mm.mean, 2),
            num(g.hd95_mm.std, 2),
            num(g.hd95_mm.median, 2),
            g.dice.n,
            g.hd95_mm.n
        );
    }
    out.push_str("</table>\n");
    match std::fs::read(dir.join(wf_trainer::evaluation::BOXPLOT_FILE)) {
        Ok(png) => {
            let _ = writeln!(
                out,
                "<p>{}</p>",
                html::png_img(&png, "Dice and HD95 per region over the cases", "plot")
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"note\">{}: {e}</p>",
                wf_trainer::evaluation::BOXPLOT_FILE
            );
        }
    }
    out.push_str("<table class=\"cases\"><tr><th>case</th>");
    let names: Vec<&str> = r.summary.iter().map(|g| g.region.as_str()).collect();
    for n in &names {
        let _ = write!(out, "<th>{0} Dice</th><th>{0} HD95 (mm)</th>", escape(n));
    }
    out.push_str("</tr>\n");
    for c in &r.cases {
        let _ = write!(out, "<tr><td><code>{}</code></td>", escape(&c.case));
        for n in &names {
            match c.regions.iter().find(|x| x.region == *n) {
                Some(x) => {
                    let why = x.empty.as_deref().map(escape).unwrap_or_default();
                    let cell = |v: Option<f64>, p: usize| match v {
                        Some(_) => num(v, p),
                        None if !why.is_empty() => format!("– ({why})"),
                        None => "–".to_string(),
                    };
                    let _ = write!(
                        out,
                        "<td class=\"num\">{}</td><td class=\"num\">{}</td>",
                        cell(x.dice, 4),
                        cell(x.hd95_mm, 2)
                    );
                }
                None => out.push_str("<td></td><td></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    fn step(output: ArtifactType, dir: Option<PathBuf>) -> StepInfo {
        StepInfo {
            id: "train".into(),
            kind: "train-unet",
            output,
            inputs: vec![],
            record: None,
            entry: None,
            dir,
        }
    }

    /// A Model from before timings were facts (they sat in metrics.jsonl) and before train.json
    /// named the machine: the report still draws its curves and table.
    #[test]
    fn a_model_written_before_still_reports() {
        let t = tempfile::tempdir().unwrap();
        let line = r#"{"epoch":EPOCH,"train_loss":0.5,"train_steps":2,"train_samples":4,"train_seconds":1.5,"train_samples_per_second":2.6,"val_dice_per_channel":[0.1,0.2,0.3],"val_dice_tc":0.1,"val_dice_wt":0.2,"val_dice_et":0.3,"val_mean_dice":0.2,"val_samples":2,"lr":0.001}"#;
        let text: String = (1..=3)
            .map(|e| line.replace("EPOCH", &e.to_string()) + "\n")
            .collect();
        std::fs::write(t.path().join("metrics.jsonl"), text).unwrap();
        // train.json as written before: no `machine`.
        wf_trainer::record::TrainRecord {
            format: wf_trainer::record::TRAIN_FORMAT.into(),
            config: Default::default(),
            samples: "ab".into(),
            split: wf_trainer::placement::Split {
                train_cases: vec!["a".into()],
                val_cases: vec!["b".into()],
                train_samples: 4,
                val_samples: 2,
            },
            device: "cpu".into(),
            precision: "fp32".into(),
            epochs_completed: 3,
            best_epoch: Some(1),
            best_val_mean_dice: Some(0.2),
            machine: None,
        }
        .write_in(t.path())
        .unwrap();
        assert!(!read(t.path().join("train.json")).contains("machine"));
        let mut out = String::new();
        training_section(&mut out, &step(ArtifactType::Model, Some(t.path().into())));
        assert!(out.contains("data:image/png;base64,"), "{out}");
        assert!(out.contains("not recorded"), "{out}");
        assert_eq!(out.matches("<tr><td class=\"num\">").count(), 3, "{out}");
        // Without an output, a note saying why.
        let mut out = String::new();
        training_section(&mut out, &step(ArtifactType::Model, None));
        assert!(out.contains("has not run yet"), "{out}");
    }

    #[test]
    fn a_few_cases_spread_over_the_index() {
        assert_eq!(spread(0, 3), Vec::<usize>::new());
        assert_eq!(spread(1, 3), vec![0]);
        assert_eq!(spread(2, 3), vec![0, 1]);
        assert_eq!(spread(10, 3), vec![0, 4, 9]);
        assert_eq!(spread(10, 1), vec![0]);
    }
}
