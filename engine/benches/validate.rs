//! Validation time and peak memory of large and hostile workflow files: a 100,000-step chain must
//! validate in seconds, and no file within (or past) the limits of `yaml::LIMITS` and
//! `workflow::MAX_STEPS` may take more than a few seconds or 500 MB.
//!
//! `cargo bench -p wf-engine --bench validate [-- CASE]` runs each case in a child process of its own
//! (so its peak RSS is its own) and prints the median of 3 loads, the outcome and the peak RSS. The
//! steps are the engine tests' typed test steps (`tests/common.rs`).

#[path = "../tests/common.rs"]
mod common;

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;
use wf_engine::yaml::LIMITS;

const CASES: &[&str] = &[
    "chain-100k",
    "cycle-100k",
    "unknown-inputs-20k",
    "billion-laughs",
    "too-large",
    "max-list-param",
    "max-tiny-steps",
    "max-top-keys",
];

fn chain(n: usize, first_input: Option<&str>) -> String {
    let mut s = String::from("name: chain\nsteps:\n");
    match first_input {
        None => s.push_str("  s0: { uses: fetch-dataset, with: { source: synthetic } }\n"),
        Some(p) => writeln!(s, "  s0: {{ uses: passthrough, inputs: {{ in: {p} }} }}").unwrap(),
    }
    for i in 1..n {
        writeln!(
            s,
            "  s{i}: {{ uses: passthrough, inputs: {{ in: s{} }} }}",
            i - 1
        )
        .unwrap();
    }
    s
}

/// Lines from `line(i)` until the file would pass `max` bytes.
fn fill(head: &str, line: impl Fn(usize) -> String, tail: &str, max: usize) -> String {
    let mut s = head.to_string();
    for i in 0.. {
        let l = line(i);
        if s.len() + l.len() + tail.len() > max {
            break;
        }
        s.push_str(&l);
    }
    s.push_str(tail);
    s
}

fn input(case: &str) -> Vec<u8> {
    let text = match case {
        "chain-100k" => chain(100_000, None),
        "cycle-100k" => chain(100_000, Some("s99999")),
        "unknown-inputs-20k" => {
            let mut s = String::from("steps:\n");
            for i in 0..20_000 {
                writeln!(s, "  s{i}: {{ uses: passthrough, inputs: {{ in: t{i} }} }}").unwrap();
            }
            s
        }
        "billion-laughs" => {
            std::fs::read_to_string("tests/fixtures/invalid/alias_bomb.yaml").expect("fixture")
        }
        "too-large" => "#".repeat(LIMITS.max_bytes + 1),
        // One param holding as many values as the node limit allows.
        "max-list-param" => {
            let n = LIMITS.max_nodes - 40;
            format!(
                "steps:\n  f: {{ uses: fetch-dataset, with: {{ source: synthetic }} }}\n  p: {{ uses: preprocess, inputs: {{ dataset: f }}, with: {{ shards: 1, pixdim: [{}] }} }}\n",
                "1.5, ".repeat(n)
            )
        }
        // As many steps as allowed, each invalid (no `uses:`).
        "max-tiny-steps" => {
            let mut s = String::from("steps:\n");
            for i in 0..wf_engine::workflow::MAX_STEPS {
                writeln!(s, "  s{i}: {{}}").unwrap();
            }
            s
        }
        // Unknown top-level keys up to the node limit: one diagnostic each.
        "max-top-keys" => fill(
            "",
            |i| format!("k{i}: 0\n"),
            "",
            LIMITS.max_bytes.min(LIMITS.max_nodes / 2 * 10),
        ),
        other => panic!("unknown case {other}; cases: {CASES:?}"),
    };
    text.into_bytes()
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn run_case(case: &str) {
    let bytes = input(case);
    let registry = common::registry();
    let mut times = Vec::new();
    let mut outcome = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let result = wf_engine::load_bytes(&bytes, Path::new("w.yaml"), Path::new("."), &registry);
        times.push(t.elapsed().as_secs_f64());
        outcome = match result {
            Ok(wf) => format!("ok, {} steps", wf.steps.len()),
            Err(e) => {
                let text = e.to_string();
                let first: String = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(110)
                    .collect();
                format!("invalid ({} lines): {first}", text.lines().count())
            }
        };
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{case:<20} {:>6.1} MB in  median {:>7.3} s (min {:.3})  peak RSS {:>5.0} MB  {outcome}",
        bytes.len() as f64 / (1 << 20) as f64,
        times[1],
        times[0],
        peak_rss_mb()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, case] = args.as_slice()
        && flag == "--case"
    {
        run_case(case);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let cases: Vec<&str> = if args.is_empty() {
        CASES.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for case in cases {
        let status = std::process::Command::new(&exe)
            .args(["--case", case])
            .status()
            .expect("runs itself");
        assert!(status.success(), "case {case} failed");
    }
}
