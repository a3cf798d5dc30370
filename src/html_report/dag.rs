//! The workflow's DAG as inline SVG: one box per step, left to right by depth (a step stands one
//! column right of its deepest input), colored by how the step went in the last run.

use super::html::escape;
use std::fmt::Write;

/// A step as the picture shows it.
pub struct Node {
    pub id: String,
    pub kind: String,
    /// Indices of the steps it reads (earlier in the list: steps are in topological order).
    pub inputs: Vec<usize>,
    /// `ran`, `cached`, `failed`, `earlier` (not in the last run) or `never`.
    pub state: &'static str,
    /// The second line: status and time.
    pub detail: String,
}

const W: usize = 200;
const H: usize = 58;
const GAP_X: usize = 56;
const GAP_Y: usize = 18;
const PAD: usize = 8;

/// Fill and stroke of a box per state.
fn colors(state: &str) -> (&'static str, &'static str) {
    match state {
        "ran" => ("#e3f4e3", "#2ca02c"),
        "cached" => ("#e4eef8", "#1f77b4"),
        "failed" => ("#fbe3e3", "#d62728"),
        _ => ("#f2f2f2", "#999999"),
    }
}

pub fn svg(nodes: &[Node]) -> String {
    let mut depth = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        depth[i] = n
            .inputs
            .iter()
            .filter(|&&p| p < i)
            .map(|&p| depth[p] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut row = vec![0usize; nodes.len()];
    let mut per_column: Vec<usize> = Vec::new();
    for (i, &d) in depth.iter().enumerate() {
        if per_column.len() <= d {
            per_column.resize(d + 1, 0);
        }
        row[i] = per_column[d];
        per_column[d] += 1;
    }
    let cols = per_column.len().max(1);
    let rows = per_column.iter().copied().max().unwrap_or(1).max(1);
    let width = PAD * 2 + cols * W + (cols - 1) * GAP_X;
    let height = PAD * 2 + rows * H + (rows - 1) * GAP_Y;
    let pos = |i: usize| (PAD + depth[i] * (W + GAP_X), PAD + row[i] * (H + GAP_Y));

    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"dag\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"workflow steps\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#777\"/></marker></defs>"
    );
    for (i, n) in nodes.iter().enumerate() {
        let (x2, y2) = pos(i);
        for &p in n.inputs.iter().filter(|&&p| p < i) {
            let (x1, y1) = pos(p);
            let (sx, sy) = (x1 + W, y1 + H / 2);
            let (ex, ey) = (x2, y2 + H / 2);
            let mid = (sx + ex) / 2;
            let _ = write!(
                out,
                "<path d=\"M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}\" fill=\"none\" \
                 stroke=\"#777\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>"
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let (fill, stroke) = colors(n.state);
        let dash = if matches!(n.state, "earlier" | "never") {
            " stroke-dasharray=\"5 3\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<g class=\"step {state}\"><title>{id} ({kind}): {detail}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\" fill=\"{fill}\" \
             stroke=\"{stroke}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{tx}\" y=\"{t1}\" font-weight=\"bold\">{id}</text>\
             <text x=\"{tx}\" y=\"{t2}\" class=\"kind\">{kind}</text>\
             <text x=\"{tx}\" y=\"{t3}\">{detail}</text></g>",
            state = n.state,
            id = escape(&n.id),
            kind = escape(&n.kind),
            detail = escape(&n.detail),
            tx = x + 10,
            t1 = y + 18,
            t2 = y + 34,
            t3 = y + 50,
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, inputs: Vec<usize>, state: &'static str) -> Node {
        Node {
            id: id.into(),
            kind: "k".into(),
            inputs,
            state,
            detail: "ran 1 s".into(),
        }
    }

    #[test]
    fn steps_stand_right_of_their_inputs() {
        let s = svg(&[
            node("fetch", vec![], "cached"),
            node("prep", vec![0], "ran"),
            node("other", vec![0], "failed"),
            node("train<x>", vec![1, 2], "never"),
        ]);
        // Three columns, two rows: (8 + 3 * 200 + 2 * 56 + 8) x (8 + 2 * 58 + 18 + 8).
        assert!(s.contains("width=\"728\" height=\"150\""), "{s}");
        assert_eq!(s.matches("marker-end").count(), 4);
        assert!(
            s.contains("<rect x=\"520\" y=\"8\""),
            "train is in the third column: {s}"
        );
        assert!(s.contains("train&lt;x&gt;") && !s.contains("train<x>"));
        assert!(s.contains("stroke-dasharray"));
    }
}
