//! The one reporter: turns run events into progress on stderr — a live view (indicatif) on a terminal,
//! plain lines otherwise — and a closing summary.
//!
//! Both forms print the same lines for what is worth keeping: each step's end, notes (an epoch's loss
//! and Dice), warnings. The live view prints them above its area, where they stay, and shows each
//! running step as a spinner with its latest message, or as a bar with position, rate and ETA once the
//! step counts its work (cases, epochs, bytes), plus a second bar for the current unit's parts (the
//! steps of an epoch). At the end both print a table of the steps and the output of each step nothing
//! consumes (with the validation Dice of an export).

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};
use wf_engine::exec::{Event, Level, Status, StepOutcome};
use wf_engine::{ArtifactType, Count, Unit, Workflow};
use wf_trainer::evaluation::EvalReport;
use wf_trainer::export::ExportMetrics;

pub struct Reporter {
    live: bool,
    width: usize,
    /// Every step in the workflow's order, for the summary.
    steps: Vec<StepInfo>,
}

struct StepInfo {
    id: String,
    output: ArtifactType,
    /// No step consumes its output: the summary names it.
    terminal: bool,
}

impl Reporter {
    pub fn new(wf: &Workflow) -> Reporter {
        let consumed: std::collections::HashSet<usize> = wf
            .steps
            .iter()
            .flat_map(|s| s.inputs.values().copied())
            .collect();
        Reporter {
            live: std::io::stderr().is_terminal() && std::env::var_os("WF_PLAIN").is_none(),
            width: wf.steps.iter().map(|s| s.id.len()).max().unwrap_or(4),
            steps: wf
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepInfo {
                    id: s.id.clone(),
                    output: s.output,
                    terminal: !consumed.contains(&i),
                })
                .collect(),
        }
    }

    pub fn consume(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let t0 = Instant::now();
        let multi = MultiProgress::with_draw_target(if self.live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let mut bars: HashMap<String, StepBars> = HashMap::new();
        let mut outcomes: Vec<StepOutcome> = Vec::new();
        let w = self.width;
        // A line to keep: above the live view on a terminal, else simply printed.
        let line = |text: String| {
            if self.live {
                multi.suspend(|| eprintln!("{text}"));
            } else {
                eprintln!("{text}");
            }
        };
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Started { step, kind, key } => {
                    if self.live {
                        let b = StepBars::new(&multi, &step, w, kind);
                        bars.insert(step, b);
                    } else {
                        eprintln!("  start    {step:<w$}  {kind} {}", key.short());
                    }
                }
                Event::Status { step, message } => match bars.get(&step) {
                    Some(b) => b.main.set_message(message),
                    None => line(format!("           {step:<w$}  {message}")),
                },
                Event::Note { step, message } => {
                    line(format!("           {step:<w$}  {message}"));
                }
                Event::Progress { step, level, count } => {
                    if let Some(b) = bars.get_mut(&step) {
                        b.show(&multi, level, count);
                    }
                }
                Event::Warning { step, message } => {
                    line(format!("  warning  {step:<w$}  {message}"));
                }
                Event::Finished(o) => {
                    if let Some(b) = bars.remove(&o.id) {
                        b.remove(&multi);
                    }
                    line(finished_line(&o, w));
                    outcomes.push(o);
                }
            }
        }
        let _ = multi.clear();
        eprint!("{}", self.summary(&outcomes, t0.elapsed()));
    }

    /// The table of steps, the outputs of the steps nothing consumes, and the closing counts.
    fn summary(&self, outcomes: &[StepOutcome], elapsed: Duration) -> String {
        let w = self.width.max("step".len());
        let by_id: HashMap<&str, &StepOutcome> =
            outcomes.iter().map(|o| (o.id.as_str(), o)).collect();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n  {:<w$}  {:<7}  {:>9}  cache",
            "step", "status", "time"
        );
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for info in &self.steps {
            let Some(o) = by_id.get(info.id.as_str()) else {
                continue;
            };
            let (status, cache) = match o.status {
                Status::Ran => ("ok", "ran"),
                Status::Cached => ("ok", "cached"),
                Status::Failed => ("FAILED", "-"),
                Status::Skipped => ("skipped", "-"),
            };
            let time = match o.status {
                Status::Skipped => "-".to_string(),
                _ => format!("{:.2}s", o.seconds),
            };
            let _ = writeln!(s, "  {:<w$}  {status:<7}  {time:>9}  {cache}", o.id);
            *counts.entry(status_name(o.status)).or_default() += 1;
        }
        let outputs: Vec<(&StepInfo, &Path)> = self
            .steps
            .iter()
            .filter(|i| i.terminal || i.output == ArtifactType::Export)
            .filter_map(|i| Some((i, by_id.get(i.id.as_str())?.output.as_ref()?.path.as_path())))
            .collect();
        if !outputs.is_empty() {
            let _ = writeln!(s, "\n  outputs (final steps and exports):");
            for (info, path) in outputs {
                let _ = writeln!(s, "  {:<w$}  {}", info.id, path.display());
                if info.output == ArtifactType::Export
                    && let Some(text) = export_line(path)
                {
                    let _ = writeln!(s, "  {:<w$}  {text}", "");
                }
                if info.output == ArtifactType::Report
                    && let Some(text) = report_table(path)
                {
                    for line in text.lines() {
                        let _ = writeln!(s, "  {:<w$}  {line}", "");
                    }
                }
            }
        }
        let c = |k| counts.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "{} ran, {} cached, {} failed, {} skipped in {:.2}s",
            c("ran"),
            c("cached"),
            c("failed"),
            c("skipped"),
            elapsed.as_secs_f64()
        );
        s
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ran => "ran",
        Status::Cached => "cached",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
    }
}

/// The line printed when a step ends (the same live and plain).
fn finished_line(o: &StepOutcome, w: usize) -> String {
    match o.status {
        Status::Ran => format!("  ran      {:<w$}  {:.2}s", o.id, o.seconds),
        Status::Cached if o.warnings.is_empty() => format!("  cached   {:<w$}", o.id),
        Status::Cached => format!(
            "  cached   {:<w$}  ({} from when it ran: {})",
            o.id,
            wf_engine::plural(o.warnings.len(), "warning"),
            o.warnings.join("; ")
        ),
        Status::Skipped => format!(
            "  skipped  {:<w$}  {}",
            o.id,
            o.error.as_deref().unwrap_or("")
        ),
        Status::Failed => {
            let mut t = format!(
                "  FAILED   {:<w$}  {}",
                o.id,
                o.error.as_deref().unwrap_or("failed")
            );
            if let Some(d) = &o.detail {
                for l in d.lines() {
                    t.push_str(&format!("\n           | {l}"));
                }
            }
            if let Some(log) = &o.log {
                t.push_str(&format!("\n           log: {}", log.display()));
            }
            t
        }
    }
}

/// What the summary says under an export's path: its validation Dice and epoch.
fn export_line(dir: &Path) -> Option<String> {
    let m = ExportMetrics::read_in(dir).ok()?;
    let dice = |d: Option<f32>| d.map_or_else(|| "n/a".to_string(), |d| format!("{d:.4}"));
    Some(match m.val_mean_dice {
        Some(mean) => format!(
            "validation Dice {mean:.4} (TC {}, WT {}, ET {}), epoch {}",
            dice(m.val_dice_tc),
            dice(m.val_dice_wt),
            dice(m.val_dice_et),
            m.epoch
        ),
        None => format!("no validation Dice (epoch {})", m.epoch),
    })
}

/// What the summary shows under an evaluation's path: how many cases, and its per-region table.
fn report_table(dir: &Path) -> Option<String> {
    let r = EvalReport::read_in(dir).ok()?;
    Some(format!(
        "{} ({}), whole volumes:\n{}",
        wf_engine::plural(r.cases.len(), "case"),
        r.cases_from,
        r.table()
    ))
}

/// A running step's lines in the live view: a spinner that becomes a bar once the step counts its
/// work, and a second bar for the parts of the current unit.
struct StepBars {
    main: ProgressBar,
    main_phase: Option<Phase>,
    within: Option<(ProgressBar, Phase)>,
    width: usize,
}

/// What a bar counts since when: its rate and ETA average over the phase. A count that changes its
/// unit or total, or goes back, starts a new phase (a download, then its verification).
#[derive(Debug, Clone, Copy)]
struct Phase {
    unit: Unit,
    total: u64,
    start: u64,
    since: Instant,
}

impl Phase {
    fn new(c: Count, now: Instant) -> Phase {
        Phase {
            unit: c.unit,
            total: c.total,
            start: c.done,
            since: now,
        }
    }

    fn continues(&self, pos: u64, c: Count) -> bool {
        self.unit == c.unit && self.total == c.total && c.done >= pos
    }
}

const TICK: Duration = Duration::from_millis(120);

impl StepBars {
    fn new(multi: &MultiProgress, step: &str, width: usize, kind: &str) -> StepBars {
        let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
            .expect("valid template");
        let main = multi.add(ProgressBar::new_spinner().with_style(style));
        main.set_prefix(format!("{step:<width$}"));
        main.set_message(kind.to_string());
        main.enable_steady_tick(TICK);
        StepBars {
            main,
            main_phase: None,
            within: None,
            width,
        }
    }

    fn show(&mut self, multi: &MultiProgress, level: Level, c: Count) {
        let now = Instant::now();
        match level {
            Level::Whole => {
                let pos = self.main.position();
                if !self.main_phase.is_some_and(|p| p.continues(pos, c)) {
                    let phase = Phase::new(c, now);
                    self.main.set_style(bar_style(
                        "{spinner} {prefix:.bold}",
                        "  {wide_msg} {elapsed}",
                        phase,
                    ));
                    self.main_phase = Some(phase);
                }
                set(&self.main, c);
            }
            Level::Within => {
                let continues = self
                    .within
                    .as_ref()
                    .is_some_and(|(bar, p)| p.continues(bar.position(), c));
                if !continues {
                    let bar = match self.within.take() {
                        Some((bar, _)) => bar,
                        None => {
                            let bar = multi.insert_after(&self.main, ProgressBar::new(0));
                            bar.set_prefix(" ".repeat(self.width));
                            bar.enable_steady_tick(TICK);
                            bar
                        }
                    };
                    let phase = Phase::new(c, now);
                    bar.set_style(bar_style("  {prefix}", "", phase));
                    self.within = Some((bar, phase));
                }
                if let Some((bar, _)) = &self.within {
                    set(bar, c);
                }
            }
        }
    }

    fn remove(self, multi: &MultiProgress) {
        if let Some((bar, _)) = self.within {
            bar.finish_and_clear();
            multi.remove(&bar);
        }
        self.main.finish_and_clear();
        multi.remove(&self.main);
    }
}

fn set(bar: &ProgressBar, c: Count) {
    if c.total > 0 {
        bar.set_length(c.total);
    } else {
        bar.unset_length();
    }
    bar.set_position(c.done);
}

/// A bar (or, with an unknown total, a count) with the phase's rate and ETA between `head` and
/// `tail`.
fn bar_style(head: &str, tail: &str, phase: Phase) -> ProgressStyle {
    let middle = if phase.total > 0 {
        " {bar:24.cyan/blue} {count}  {rate}  {eta}"
    } else {
        " {count}  {rate}"
    };
    ProgressStyle::with_template(&format!("{head}{middle}{tail}"))
        .expect("valid template")
        .progress_chars("=> ")
        .with_key(
            "count",
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&count_text(phase.unit, s.pos(), phase.total));
            },
        )
        .with_key(
            "rate",
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate_text(phase, s.pos(), Instant::now()));
            },
        )
        .with_key(
            "eta",
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&eta_text(phase, s.pos(), Instant::now()));
            },
        )
}

/// `3/16 cases`, `12.0 MiB/1.2 GiB`, `12.0 MiB` (total unknown).
fn count_text(unit: Unit, pos: u64, total: u64) -> String {
    match (unit, total) {
        (Unit::Byte, 0) => HumanBytes(pos).to_string(),
        (Unit::Byte, t) => format!("{}/{}", HumanBytes(pos), HumanBytes(t)),
        (u, 0) => format!("{pos} {}", u.name(pos)),
        (u, t) => format!("{pos}/{t} {}", u.name(t)),
    }
}

/// Units per second over the phase so far; `None` until there is something to average.
fn per_second(phase: Phase, pos: u64, now: Instant) -> Option<f64> {
    let n = pos.saturating_sub(phase.start);
    let secs = now.saturating_duration_since(phase.since).as_secs_f64();
    (n > 0 && secs > 0.0).then(|| n as f64 / secs)
}

/// `3.2 cases/s`, `41.3 s/epoch`, `12.0 MiB/s`; empty until known.
fn rate_text(phase: Phase, pos: u64, now: Instant) -> String {
    let Some(r) = per_second(phase, pos, now) else {
        return String::new();
    };
    match phase.unit {
        Unit::Byte => format!("{}/s", HumanBytes(r as u64)),
        u if r >= 1.0 => format!("{r:.1} {}/s", u.name(2)),
        u => format!("{:.1} s/{}", 1.0 / r, u.name(1)),
    }
}

/// `ETA 1m05s`; empty while the rate is unknown or when done.
fn eta_text(phase: Phase, pos: u64, now: Instant) -> String {
    match per_second(phase, pos, now) {
        Some(r) if phase.total > pos => {
            format!("ETA {}", duration_text((phase.total - pos) as f64 / r))
        }
        _ => String::new(),
    }
}

/// `42s`, `12m05s`, `3h02m`.
fn duration_text(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use wf_engine::exec::Output;

    fn phase(unit: Unit, total: u64, start: u64, t0: Instant) -> Phase {
        Phase {
            unit,
            total,
            start,
            since: t0,
        }
    }

    #[test]
    fn counts_rates_and_etas_read_in_their_units() {
        assert_eq!(count_text(Unit::Case, 3, 16), "3/16 cases");
        assert_eq!(count_text(Unit::Epoch, 0, 1), "0/1 epoch");
        assert_eq!(count_text(Unit::Step, 4, 0), "4 steps");
        assert_eq!(count_text(Unit::Byte, 1 << 20, 0), "1.00 MiB");
        assert_eq!(
            count_text(Unit::Byte, 1 << 20, 3 << 30),
            "1.00 MiB/3.00 GiB"
        );

        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let cases = phase(Unit::Case, 16, 0, t0);
        assert_eq!(rate_text(cases, 0, at(5)), "", "nothing to average yet");
        assert_eq!(rate_text(cases, 8, at(2)), "4.0 cases/s");
        assert_eq!(eta_text(cases, 8, at(2)), "ETA 2s");
        assert_eq!(eta_text(cases, 16, at(4)), "", "done");
        // Slow units read as seconds per unit; a resumed count averages from where it resumed.
        let epochs = phase(Unit::Epoch, 50, 10, t0);
        assert_eq!(rate_text(epochs, 12, at(60)), "30.0 s/epoch");
        assert_eq!(eta_text(epochs, 12, at(60)), "ETA 19m00s");
        let bytes = phase(Unit::Byte, 0, 0, t0);
        assert_eq!(rate_text(bytes, 4 << 20, at(2)), "2.00 MiB/s");
        assert_eq!(eta_text(bytes, 4 << 20, at(2)), "", "total unknown");

        assert_eq!(duration_text(59.4), "59s");
        assert_eq!(duration_text(61.0), "1m01s");
        assert_eq!(duration_text(7322.0), "2h02m");
    }

    #[test]
    fn a_new_unit_total_or_a_step_back_starts_a_new_phase() {
        let p = phase(Unit::Byte, 100, 0, Instant::now());
        assert!(p.continues(10, Count::new(20, 100, Unit::Byte)));
        assert!(!p.continues(10, Count::new(5, 100, Unit::Byte)));
        assert!(!p.continues(10, Count::new(20, 200, Unit::Byte)));
        assert!(!p.continues(10, Count::new(20, 100, Unit::Case)));
    }

    fn outcome(id: &str, status: Status, path: Option<&Path>) -> StepOutcome {
        StepOutcome {
            id: id.into(),
            kind: "command",
            status,
            key: None,
            seconds: 1.5,
            output: path.map(|p| Output {
                digest: wf_engine::ArtifactDigest::of_manifest(b"x"),
                path: p.to_path_buf(),
            }),
            error: None,
            detail: None,
            log: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn the_summary_tables_steps_and_names_final_outputs_with_the_exports_dice() {
        let t = tempfile::tempdir().unwrap();
        let export = t.path().join("export");
        std::fs::create_dir(&export).unwrap();
        std::fs::write(
            export.join("metrics.json"),
            r#"{"epoch": 2, "history": [], "train_loss": 0.5, "val_dice_et": 0.25,
                "val_dice_tc": 0.5, "val_dice_wt": 0.75, "val_mean_dice": 0.5}"#,
        )
        .unwrap();
        let info = |id: &str, output, terminal| StepInfo {
            id: id.into(),
            output,
            terminal,
        };
        let r = Reporter {
            live: false,
            width: 6,
            steps: vec![
                info("fetch", ArtifactType::Dataset, false),
                info("export", ArtifactType::Export, true),
                info("notes", ArtifactType::Files, true),
                info("broken", ArtifactType::Files, true),
            ],
        };
        let other = PathBuf::from("/cache/artifacts/n");
        let text = r.summary(
            &[
                outcome("fetch", Status::Cached, Some(Path::new("/cache/a"))),
                outcome("notes", Status::Ran, Some(&other)),
                outcome("export", Status::Ran, Some(&export)),
                outcome("broken", Status::Skipped, None),
            ],
            Duration::from_secs(3),
        );
        let want = format!(
            "
  step    status        time  cache
  fetch   ok           1.50s  cached
  export  ok           1.50s  ran
  notes   ok           1.50s  ran
  broken  skipped          -  -

  outputs (final steps and exports):
  export  {}
          validation Dice 0.5000 (TC 0.5000, WT 0.7500, ET 0.2500), epoch 2
  notes   /cache/artifacts/n
2 ran, 1 cached, 0 failed, 1 skipped in 3.00s
",
            export.display()
        );
        assert_eq!(text, want);
    }
}
