//! The reference of the workflow format, rendered from the definitions validation reads — each
//! kind's `ParamSpec`s, inputs and output, the fixed keys (`workflow.rs`) and the `targets.aws`
//! keys (`targets.rs`) — as plain text for `wf steps [KIND]` and as markdown for the generated
//! parts of docs/workflow.md. Nothing here is written by hand, so the reference cannot drift from
//! what `wf validate` accepts.

use crate::artifact::Slots;
use crate::params::{ParamSpec, Params};
use crate::registry::Registry;
use crate::step::Step;
use crate::targets::{
    AWS_FSX_DOC, AWS_FSX_KEYS, AWS_KEYS, AWS_STEP_KEYS, AWS_STEPS_DOC, SettingKey,
};
use crate::workflow::KeyDoc;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Width that `wf steps KIND` wraps descriptions to.
const TEXT_WIDTH: usize = 100;

/// `wf steps`: one line per kind: kind, output type, summary.
pub fn kinds_text(registry: &Registry) -> String {
    let kw = registry.kinds().map(str::len).max().unwrap_or(0);
    let rows: Vec<(&str, String, &str)> = registry
        .iter()
        .map(|s| (s.kind(), output(s.as_ref()), s.summary()))
        .collect();
    let ow = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (kind, output, summary) in rows {
        let _ = writeln!(out, "{kind:<kw$}  {output:<ow$}  {summary}");
    }
    out
}

/// `wf steps KIND`: the kind's summary, inputs, output and every param with its type, default (or
/// required), whether it is in the cache key, and what it does.
pub fn kind_text(step: &dyn Step) -> String {
    let mut out = format!("{}: {}\n\n", step.kind(), step.summary());
    match step.inputs() {
        Slots::Fixed([]) => out.push_str("inputs: none\n"),
        Slots::Fixed(slots) => {
            out.push_str("inputs:\n");
            for (slot, ty) in slots {
                let _ = writeln!(out, "  {slot}: {ty}");
            }
        }
        Slots::Open => out.push_str("inputs: any slot names (letters, digits, `_`), any types\n"),
    }
    let _ = writeln!(out, "output: {}", output(step));
    if step.seeded() {
        out.push_str("seeded: the workflow's `seed` is part of its cache key\n");
    }
    let params = step.params();
    if params.is_empty() {
        out.push_str("\nparams: none\n");
        return out;
    }
    out.push_str("\nparams (`with:`), each part of the cache key unless marked:\n");
    for p in params {
        let mut head = format!("  {}: {}", p.name, type_text(p));
        match p.default {
            None => head.push_str(", required"),
            Some(_) => {
                let _ = write!(head, ", default {}", default_text(p));
            }
        }
        if !p.in_key {
            head.push_str(", not in the cache key");
        }
        out.push_str(&head);
        out.push('\n');
        for line in wrap(p.doc, TEXT_WIDTH - 6) {
            let _ = writeln!(out, "      {line}");
        }
    }
    out
}

/// The generated part of a kind's section in docs/workflow.md: inputs, output, and a table of its
/// params.
pub fn kind_markdown(step: &dyn Step) -> String {
    let inputs = match step.inputs() {
        Slots::Fixed([]) => "Inputs: none".to_string(),
        Slots::Fixed(slots) => {
            let list: Vec<String> = slots
                .iter()
                .map(|(slot, ty)| format!("`{slot}` ({ty})"))
                .collect();
            let s = if slots.len() == 1 { "" } else { "s" };
            format!("Input{s}: {}", list.join(", "))
        }
        Slots::Open => "Inputs: any slot names (letters, digits, `_`), any types".to_string(),
    };
    let mut out = format!("{inputs}. Output: `{}`.", output(step));
    if step.seeded() {
        out.push_str(" Seeded: the workflow's `seed` is part of its cache key.");
    }
    out.push_str("\n\n");
    let params = step.params();
    if params.is_empty() {
        out.push_str("No params.\n");
        return out;
    }
    out.push_str("| param | type | default | what |\n|---|---|---|---|\n");
    for p in params {
        let default = match p.default {
            None => "required".to_string(),
            Some(_) => format!("`{}`", default_text(p)),
        };
        let key = if p.in_key { "" } else { " (*not in the key*)" };
        let _ = writeln!(
            out,
            "| `{}` | {} | {default} | {}{key} |",
            p.name,
            cell(&type_text(p)),
            cell(p.doc)
        );
    }
    out
}

/// A table of fixed keys (the top level, a step) for docs/workflow.md.
pub fn keys_markdown(keys: &[KeyDoc]) -> String {
    let mut out = String::from("| key | | what |\n|---|---|---|\n");
    for k in keys {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            k.name,
            cell(k.presence),
            cell(k.doc)
        );
    }
    out
}

/// The keys of `targets.aws` and of its `steps.<id>` and `fsx` blocks, for docs/workflow.md.
pub fn aws_markdown() -> String {
    let table = |keys: &[SettingKey], extra: &[(&str, &str, &str)]| {
        let mut out = String::from("| key | type | what |\n|---|---|---|\n");
        for k in keys {
            let ty = strip_article(&k.ty.describe());
            let _ = writeln!(out, "| `{}` | {} | {} |", k.name, cell(&ty), cell(k.doc));
        }
        for (name, ty, doc) in extra {
            let _ = writeln!(out, "| `{name}` | {ty} | {} |", cell(doc));
        }
        out
    };
    format!(
        "{}\n`targets.aws.steps.<id>`:\n\n{}\n`targets.aws.fsx`:\n\n{}",
        table(
            AWS_KEYS,
            &[
                (
                    "steps",
                    "mapping of step ids to jobs (below)",
                    AWS_STEPS_DOC
                ),
                ("fsx", "mapping (below)", AWS_FSX_DOC),
            ]
        ),
        table(AWS_STEP_KEYS, &[]),
        table(AWS_FSX_KEYS, &[]),
    )
}

/// The output type with default params (the `command` step's depends on its `produces`).
fn output(step: &dyn Step) -> String {
    step.output(&Params::with_defaults(step.params(), BTreeMap::new()))
        .to_string()
}

/// The accepted values without the article messages put in front ("integer ≥ 1").
fn type_text(p: &ParamSpec) -> String {
    strip_article(&p.describe())
}

fn strip_article(s: &str) -> String {
    s.strip_prefix("an ")
        .or_else(|| s.strip_prefix("a "))
        .unwrap_or(s)
        .to_string()
}

/// The default as a YAML author writes it: `msd`, `[96, 96, 64]`, `""`.
fn default_text(p: &ParamSpec) -> String {
    fn yaml(v: &Json) -> String {
        match v {
            Json::String(s) if s.is_empty() => "\"\"".into(),
            Json::String(s) => s.clone(),
            Json::Array(items) => {
                let items: Vec<String> = items.iter().map(yaml).collect();
                format!("[{}]", items.join(", "))
            }
            Json::Object(m) if m.is_empty() => "{}".into(),
            other => other.to_string(),
        }
    }
    match p.default_value() {
        // Numbers as written (`1.0e-4`), not as parsed.
        Some(Json::Number(_)) => p.default.unwrap_or_default().trim().to_string(),
        Some(v) => yaml(&v),
        None => String::new(),
    }
}

/// Text safe inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Greedy word wrap.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::ArtifactType;
    use crate::params::ParamType;
    use crate::step::{RemoteTask, RunContext, StepError};

    struct Train;
    const PARAMS: &[ParamSpec] = &[
        ParamSpec::optional("epochs", ParamType::int_min(1), "10", "training epochs"),
        ParamSpec::optional("lr", ParamType::Float, "1.0e-4", "learning rate")
            .shape("number > 0", || serde_json::json!({ "type": "number" })),
        ParamSpec::optional(
            "mode",
            ParamType::Enum(&["a", "b"]),
            "\"a\"",
            "a | b, in a table",
        ),
        ParamSpec::optional("shards", ParamType::int_min(0), "0", "workers").not_in_key(),
        ParamSpec::optional(
            "shape",
            ParamType::List(&ParamType::Int { min: 1, max: 9 }),
            "[4,4,4]",
            "size",
        ),
        ParamSpec::required("source", ParamType::Str, "where from"),
    ];
    impl Step for Train {
        fn kind(&self) -> &'static str {
            "train"
        }
        fn version(&self) -> u32 {
            1
        }
        fn summary(&self) -> &'static str {
            "trains"
        }
        fn params(&self) -> &'static [ParamSpec] {
            PARAMS
        }
        fn inputs(&self) -> Slots {
            Slots::Fixed(&[("samples", ArtifactType::Samples)])
        }
        fn output(&self, _params: &Params) -> ArtifactType {
            ArtifactType::Model
        }
        fn seeded(&self) -> bool {
            true
        }
        fn run(&self, _cx: &RunContext<'_>) -> Result<(), StepError> {
            Ok(())
        }
        fn remote(&self, _params: &Params) -> RemoteTask {
            RemoteTask::Training { instances: 1 }
        }
    }

    #[test]
    fn text_lists_every_param_with_its_default() {
        let text = kind_text(&Train);
        assert!(text.starts_with("train: trains\n\ninputs:\n  samples: Samples\noutput: Model\n"));
        assert!(text.contains("  epochs: integer ≥ 1, default 10\n      training epochs\n"));
        assert!(text.contains("  lr: number > 0, default 1.0e-4\n"));
        assert!(text.contains("  shards: integer ≥ 0, default 0, not in the cache key\n"));
        assert!(text.contains("  shape: list of integers in 1..=9, default [4, 4, 4]\n"));
        assert!(text.contains("  source: string, required\n"));
        assert!(text.contains("seeded:"));
    }

    #[test]
    fn markdown_table() {
        let md = kind_markdown(&Train);
        assert!(md.starts_with("Input: `samples` (Samples). Output: `Model`. Seeded:"));
        assert!(md.contains("| `mode` | one of `a`, `b` | `a` | a \\| b, in a table |\n"));
        assert!(md.contains("| `shards` | integer ≥ 0 | `0` | workers (*not in the key*) |\n"));
        assert!(md.contains("| `source` | string | required | where from |\n"));
    }

    #[test]
    fn listing() {
        let mut r = Registry::new();
        r.register(Train);
        assert_eq!(kinds_text(&r), "train  Model  trains\n");
    }

    #[test]
    fn wraps_words() {
        assert_eq!(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrap("", 5), Vec::<String>::new());
    }
}
