//! Inputs at and past the loader's limits (`yaml::LIMITS`): each is refused with one positioned
//! message, or, when it is within the limits however large, validates. None may hang or take
//! unbounded memory; the timings live in BENCHMARKS.md, not here.

mod common;

use std::fmt::Write;
use std::path::Path;
use wf_engine::LoadError;
use wf_engine::diag::MAX_DIAGNOSTICS;
use wf_engine::yaml::LIMITS;

fn load(src: &str) -> Result<wf_engine::Workflow, String> {
    wf_engine::load_str(
        src,
        Path::new("w.yaml"),
        Path::new("."),
        &common::registry(),
    )
    .map_err(|e| match e {
        LoadError::Invalid(list) => list.to_string(),
        e => panic!("unexpected error {e}"),
    })
}

/// The diagnostics of a workflow that must be invalid.
fn invalid(src: &str) -> String {
    match load(src) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

/// `s0` fetches, and each later step passes on the one before it.
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

#[test]
fn a_100000_step_chain_validates_in_order() {
    let n = 100_000;
    let wf = load(&chain(n, None)).unwrap();
    assert_eq!(wf.steps.len(), n);
    assert!(
        wf.steps
            .iter()
            .enumerate()
            .all(|(i, s)| s.id == format!("s{i}"))
    );
    assert_eq!(wf.dependents(0), vec![1]);
}

#[test]
fn a_100000_step_cycle_is_reported_once_and_briefly() {
    let err = invalid(&chain(100_000, Some("s99999")));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("w.yaml:3:3: the steps form a cycle: s0 -> s1 -> "),
        "{err}"
    );
    assert!(err.contains("(99990 more)"), "{err}");
    assert!(err.ends_with("-> s99999 -> s0"), "{err}");
}

#[test]
fn many_unknown_inputs_among_many_steps_are_listed_up_to_the_cap() {
    // Every step names a producer that does not exist: 20,000 errors. The first by position are
    // listed, the rest counted.
    let mut s = String::from("steps:\n");
    for i in 0..20_000 {
        writeln!(s, "  s{i}: {{ uses: passthrough, inputs: {{ in: t{i} }} }}").unwrap();
    }
    let err = invalid(&s);
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("  help:")).collect();
    assert_eq!(lines.len(), MAX_DIAGNOSTICS + 1);
    assert_eq!(
        lines[MAX_DIAGNOSTICS],
        format!(
            "w.yaml:{}:{}: {} more problems from here on are not listed (the first {MAX_DIAGNOSTICS} are)",
            MAX_DIAGNOSTICS + 2,
            41 + format!("s{MAX_DIAGNOSTICS}").len() - 1,
            20_000 - MAX_DIAGNOSTICS
        )
    );
    assert!(
        err.starts_with("w.yaml:2:42: step `s0`: input `in` names step `t0`, which does not exist")
    );
}

#[test]
fn a_long_misspelt_name_among_long_ids_is_reported() {
    // Suggestions compare names by edit distance; long names must not make that quadratic.
    let long = "x".repeat(1 << 20);
    let src = format!(
        "steps:\n  ? {long}a\n  : {{ uses: fetch-dataset, with: {{ source: synthetic }} }}\n  b: {{ uses: passthrough, inputs: {{ in: {long}b }} }}\n"
    );
    let err = invalid(&src);
    assert!(err.starts_with("w.yaml:4:41: step `b`: input `in` names step `xxx"));
    assert!(err.ends_with("b`, which does not exist"));
}

#[test]
fn a_file_past_the_size_limit_is_refused_before_parsing() {
    let mut src = String::from("steps: {}\n");
    src.push_str(&"#".repeat(LIMITS.max_bytes + 1 - src.len()));
    let err = invalid(&src);
    assert_eq!(
        err,
        format!(
            "w.yaml:1:1: the file is larger than {} MiB, the most wf reads",
            LIMITS.max_bytes >> 20
        )
    );
    // The same through `load`, which reads no more than the limit (a device or a huge file would
    // otherwise be read whole).
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("big.yaml");
    std::fs::write(&p, &src).unwrap();
    match wf_engine::load(&p, &common::registry()) {
        Err(LoadError::Invalid(list)) => {
            assert!(
                list.to_string().contains("the file is larger than"),
                "{list}"
            )
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn too_many_aliases_are_refused_at_the_first_one_past_the_limit() {
    let mut src = String::from("x: &a 1\ny: [");
    for _ in 0..=LIMITS.max_aliases {
        src.push_str("*a,");
    }
    src.push_str("]\nsteps: {}\n");
    let err = invalid(&src);
    let col = 5 + 3 * LIMITS.max_aliases;
    assert_eq!(
        err,
        format!(
            "w.yaml:2:{col}: more than {} aliases (`*name`), the most wf expands",
            LIMITS.max_aliases
        )
    );
}

#[test]
fn aliases_of_a_long_string_are_bounded_by_expanded_text() {
    let big = "y".repeat(1 << 20);
    let mut src = format!("x: &a \"{big}\"\ny: [");
    for _ in 0..200 {
        src.push_str("*a, ");
    }
    src.push_str("]\nsteps: {}\n");
    let err = invalid(&src);
    assert!(err.starts_with("w.yaml:2:"), "{err}");
    assert!(
        err.contains(&format!(
            "alias `*a` expands the text of the file past {} MiB",
            LIMITS.max_text >> 20
        )),
        "{err}"
    );
}

#[test]
fn an_alias_that_would_nest_too_deep_is_refused() {
    // Each half alone is within the depth limit; the alias puts one inside the other.
    let half = LIMITS.max_depth / 2 + 1;
    let open = "[".repeat(half);
    let close = "]".repeat(half);
    let src = format!("a: &deep {open}1{close}\nb: {open}*deep{close}\nsteps: {{}}\n");
    let err = invalid(&src);
    assert_eq!(
        err,
        format!(
            "w.yaml:2:{}: alias `*deep` nests lists and mappings more than {} levels deep, the most wf accepts",
            4 + half,
            LIMITS.max_depth
        )
    );
}

#[test]
fn aliases_within_the_limits_still_expand() {
    let src = "defaults: &d { source: synthetic }\nsteps:\n  a: { uses: fetch-dataset, with: *d }\n  b: { uses: fetch-dataset, with: *d }\n";
    // `defaults` is not a workflow key: the only complaint.
    let err = invalid(src);
    assert!(
        err.starts_with("w.yaml:1:1: unknown key `defaults` in the workflow"),
        "{err}"
    );
    assert_eq!(err.lines().filter(|l| !l.starts_with("  help")).count(), 1);
}

#[test]
fn more_steps_than_the_limit_are_refused_at_steps() {
    let mut s = String::from("steps:\n");
    for i in 0..=wf_engine::workflow::MAX_STEPS {
        writeln!(s, "  s{i}: {{}}").unwrap();
    }
    assert_eq!(
        invalid(&s),
        format!(
            "w.yaml:2:3: `steps` holds {} steps, more than the {} a workflow may hold",
            wf_engine::workflow::MAX_STEPS + 1,
            wf_engine::workflow::MAX_STEPS
        )
    );
}
