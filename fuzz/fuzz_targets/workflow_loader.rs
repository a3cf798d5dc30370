//! Fuzzes the workflow loader: any bytes must give a sealed workflow or positioned diagnostics; never
//! a panic, a hang or unbounded memory. The bytes go through `yaml::decode` (size, UTF-8) and then
//! `load_str_within` (YAML with aliases and nesting bounded, validation against the real step
//! registry). The YAML limits are smaller than wf's (`yaml::LIMITS`) so that an input expanding to
//! them, which the fuzzer finds at once from the dictionary's aliases, costs milliseconds rather than
//! a second: the same checks refuse it, and throughput stays in the hundreds per second.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::LazyLock;
use wf_engine::yaml::{self, LIMITS, Limits};
use wf_engine::{Diagnostics, LoadError, Registry};

static REGISTRY: LazyLock<Registry> = LazyLock::new(wf_steps::registry);

const FUZZ_LIMITS: Limits = Limits {
    max_aliases: 1_000,
    max_nodes: 20_000,
    max_text: 1 << 20,
    ..LIMITS
};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.yaml");
    let mut diags = Diagnostics::new(path);
    let Some(text) = yaml::decode(data, &mut diags) else {
        assert!(!diags.is_empty(), "refused bytes without a diagnostic");
        return;
    };
    // Relative paths in the workflow resolve under a directory that does not exist: checks that
    // look at files find none, and nothing is read or written.
    let dir = Path::new("/nonexistent/wf-fuzz");
    match wf_engine::workflow::load_str_within(text, path, dir, &REGISTRY, &FUZZ_LIMITS) {
        Ok(wf) => {
            assert!(!wf.steps.is_empty() && wf.steps.len() <= wf_engine::workflow::MAX_STEPS);
            // Sealed in topological order: every input comes from an earlier step.
            for (i, step) in wf.steps.iter().enumerate() {
                assert!(
                    step.inputs.values().all(|&p| p < i),
                    "{} before its input",
                    step.id
                );
            }
        }
        Err(LoadError::Invalid(list)) => {
            assert!(!list.0.is_empty(), "invalid with no diagnostic");
            for d in &list.0 {
                assert!(d.span.line >= 1 && d.span.col >= 1, "{d}");
            }
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
});
