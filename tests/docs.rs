//! docs/workflow.md lists every step kind, every param of each kind, and every transform: a kind,
//! param or transform added without its documentation fails here.

use std::path::Path;

fn workflow_md() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/workflow.md"))
        .expect("docs/workflow.md")
}

/// The text of the section under `### <kind>`, up to the next heading.
fn section<'a>(doc: &'a str, kind: &str) -> Option<&'a str> {
    let start = doc.find(&format!("\n### {kind}\n"))? + 1;
    let rest = &doc[start + 4 + kind.len()..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    Some(&rest[..end])
}

#[test]
fn every_step_kind_and_param_is_documented() {
    let doc = workflow_md();
    let mut missing = Vec::new();
    for step in wf_steps::registry().iter() {
        let Some(text) = section(&doc, step.kind()) else {
            missing.push(format!(
                "step kind `{}` (a `### {}` section)",
                step.kind(),
                step.kind()
            ));
            continue;
        };
        for p in step.params() {
            if !text.contains(&format!("| `{}` |", p.name)) {
                missing.push(format!("param `{}` of `{}`", p.name, step.kind()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/workflow.md lacks: {}",
        missing.join(", ")
    );
}

#[test]
fn every_transform_is_documented() {
    let doc = workflow_md();
    let missing: Vec<&str> = wf_imaging::transforms::TRANSFORM_NAMES
        .iter()
        .filter(|t| !doc.contains(&format!("| `{t}` |")))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "docs/workflow.md lacks transforms: {missing:?}"
    );
}
