//! Renders a workflow's DAG as Mermaid or Graphviz dot (`wf graph`).

use crate::workflow::Workflow;

fn esc(s: &str) -> String {
    s.replace('"', "'")
}

pub fn mermaid(wf: &Workflow) -> String {
    let mut out = String::from("flowchart LR\n");
    for (i, s) in wf.steps.iter().enumerate() {
        out.push_str(&format!(
            "  s{i}[\"{}<br/><small>{} → {}</small>\"]\n",
            esc(&s.id),
            s.kind(),
            s.output
        ));
    }
    for (a, b, slot) in wf.edges() {
        out.push_str(&format!("  s{a} -->|{}| s{b}\n", esc(slot)));
    }
    out
}

pub fn dot(wf: &Workflow) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        esc(&wf.name)
    );
    for s in &wf.steps {
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} → {}\"];\n",
            esc(&s.id),
            esc(&s.id),
            s.kind(),
            s.output
        ));
    }
    for (a, b, slot) in wf.edges() {
        out.push_str(&format!(
            "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
            esc(&wf.steps[a].id),
            esc(&wf.steps[b].id),
            esc(slot)
        ));
    }
    out.push_str("}\n");
    out
}
