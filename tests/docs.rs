//! docs/workflow.md holds generated parts: the key tables, each step kind's inputs, output and
//! params, the transforms and the `targets.aws` keys, rendered from the same definitions `wf
//! validate`, `wf steps` and `wf schema` read. This test fails when any of them is stale or
//! missing; `WF_UPDATE_DOCS=1 cargo test -p wf --test docs` rewrites them in place (the prose
//! around them is left alone).

use std::path::{Path, PathBuf};
use wf_engine::reference;
use wf_engine::workflow::{STEP_KEYS, TOP_KEYS};

const REGENERATE: &str = "WF_UPDATE_DOCS=1 cargo test -p wf --test docs";
const BEGIN: &str = "<!-- generated: ";
const BEGIN_END: &str = " -->\n";
const END: &str = "<!-- end generated -->";

fn workflow_md() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/workflow.md")
}

/// The text a generated region holds, by its name; `None` for a name nothing generates.
fn generate(name: &str) -> Option<String> {
    let registry = wf_steps::registry();
    Some(match name {
        "top-level keys" => reference::keys_markdown(TOP_KEYS),
        "step keys" => reference::keys_markdown(STEP_KEYS),
        "transforms" => wf_imaging::transforms::fields::markdown_table(),
        "targets.aws" => reference::aws_markdown(),
        _ => {
            let kind = name.strip_prefix("kind ")?;
            reference::kind_markdown(registry.get(kind)?.as_ref())
        }
    })
}

/// The document with every region regenerated, and the names of the regions it holds.
fn regenerate(doc: &str) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(doc.len());
    let mut names = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let name_end = after
            .find(BEGIN_END)
            .ok_or("a `<!-- generated: NAME -->` marker must end its line")?;
        let name = &after[..name_end];
        let body = &after[name_end + BEGIN_END.len()..];
        let end = body
            .find(END)
            .ok_or_else(|| format!("region `{name}` has no `{END}`"))?;
        let text = generate(name).ok_or_else(|| format!("nothing generates a region `{name}`"))?;
        out.push_str(&rest[..start + BEGIN.len() + name_end + BEGIN_END.len()]);
        out.push_str(&text);
        names.push(name.to_string());
        rest = &body[end..];
    }
    out.push_str(rest);
    Ok((out, names))
}

#[test]
fn generated_reference_is_current() {
    let path = workflow_md();
    let doc = std::fs::read_to_string(&path).expect("docs/workflow.md");
    let (fresh, names) = regenerate(&doc).unwrap_or_else(|e| panic!("docs/workflow.md: {e}"));

    let mut wanted: Vec<String> = ["top-level keys", "step keys", "transforms", "targets.aws"]
        .map(String::from)
        .to_vec();
    wanted.extend(wf_steps::registry().kinds().map(|k| format!("kind {k}")));
    let missing: Vec<&String> = wanted.iter().filter(|w| !names.contains(w)).collect();
    assert!(
        missing.is_empty(),
        "docs/workflow.md has no region for {missing:?}: add `{BEGIN}NAME{}` and `{END}` lines \
         where each belongs (a kind under its `### kind` heading), then run `{REGENERATE}`",
        BEGIN_END.trim_end()
    );

    if fresh == doc {
        return;
    }
    if std::env::var_os("WF_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &fresh).expect("write docs/workflow.md");
        return;
    }
    let first = doc
        .lines()
        .zip(fresh.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| doc.lines().count().min(fresh.lines().count()));
    panic!(
        "docs/workflow.md is stale from line {}: regenerate it with `{REGENERATE}` and review the diff\n  \
         committed: {:?}\n  generated: {:?}",
        first + 1,
        doc.lines().nth(first).unwrap_or(""),
        fresh.lines().nth(first).unwrap_or("")
    );
}

#[test]
fn regions_are_replaced_and_prose_kept() {
    let doc = format!("intro\n{BEGIN}transforms{BEGIN_END}old\n{END}\nafter\n");
    let (fresh, names) = regenerate(&doc).unwrap();
    assert_eq!(names, ["transforms"]);
    assert!(fresh.starts_with(&format!("intro\n{BEGIN}transforms{BEGIN_END}| transform |")));
    assert!(fresh.ends_with(&format!("|\n{END}\nafter\n")));
    assert!(regenerate(&format!("{BEGIN}kind nope{BEGIN_END}{END}")).is_err());
}
