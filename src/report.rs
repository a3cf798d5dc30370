//! The one reporter: turns run events into progress on stderr — a live view (indicatif) on a terminal,
//! plain lines otherwise — and a closing summary line.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use wf_engine::Workflow;
use wf_engine::exec::{Event, Status};

pub struct Reporter {
    live: bool,
    width: usize,
}

impl Reporter {
    pub fn new(wf: &Workflow) -> Reporter {
        Reporter {
            live: std::io::stderr().is_terminal() && std::env::var_os("WF_PLAIN").is_none(),
            width: wf.steps.iter().map(|s| s.id.len()).max().unwrap_or(4),
        }
    }

    pub fn consume(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let t0 = Instant::now();
        let multi = MultiProgress::with_draw_target(if self.live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
            .expect("valid template");
        let mut bars: HashMap<String, ProgressBar> = HashMap::new();
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        let w = self.width;
        let line = |multi: &MultiProgress, text: String| {
            if self.live {
                let _ = multi.println(text);
            } else {
                eprintln!("{text}");
            }
        };
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Started { step, kind, key } => {
                    if self.live {
                        let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                        bar.set_prefix(format!("{step:<w$}"));
                        bar.set_message(kind.to_string());
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bars.insert(step, bar);
                    } else {
                        eprintln!("  start    {step:<w$}  {kind} {}", key.short());
                    }
                }
                Event::Progress {
                    step,
                    message,
                    done,
                    total,
                } => {
                    if let Some(bar) = bars.get(&step) {
                        match message {
                            Some(m) => bar.set_message(m),
                            None => bar.set_message(format!("{done}/{total}")),
                        }
                    } else if let Some(m) = message {
                        eprintln!("           {step:<w$}  {m}");
                    }
                }
                Event::Warning { step, message } => {
                    line(&multi, format!("  warning  {step:<w$}  {message}"));
                }
                Event::Finished(o) => {
                    if let Some(bar) = bars.remove(&o.id) {
                        bar.finish_and_clear();
                        multi.remove(&bar);
                    }
                    let text = match o.status {
                        Status::Ran => format!("  ran      {:<w$}  {:.2}s", o.id, o.seconds),
                        Status::Cached if o.warnings.is_empty() => {
                            format!("  cached   {:<w$}", o.id)
                        }
                        Status::Cached => format!(
                            "  cached   {:<w$}  ({} warning{} from when it ran: {})",
                            o.id,
                            o.warnings.len(),
                            if o.warnings.len() == 1 { "" } else { "s" },
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
                    };
                    line(&multi, text);
                    let k = match o.status {
                        Status::Ran => "ran",
                        Status::Cached => "cached",
                        Status::Failed => "failed",
                        Status::Skipped => "skipped",
                    };
                    *counts.entry(k).or_default() += 1;
                }
            }
        }
        let c = |k| counts.get(k).copied().unwrap_or(0);
        eprintln!(
            "{} ran, {} cached, {} failed, {} skipped in {:.2}s",
            c("ran"),
            c("cached"),
            c("failed"),
            c("skipped"),
            t0.elapsed().as_secs_f64()
        );
    }
}
