//! Loading a workflow file in phases: YAML → spanned tree (`yaml.rs`) → validated steps (this file) →
//! sealed DAG. Every problem found in any phase is reported at once as `FILE:LINE:COL: message`; only a
//! fully valid file becomes a `Workflow`, and only a `Workflow` can be planned or run.

use crate::artifact::{ArtifactType, Slots};
use crate::diag::{DiagnosticList, Diagnostics, Span, did_you_mean, did_you_mean_within};
use crate::facts::Facts;
use crate::params::{self, Params};
use crate::registry::Registry;
use crate::step::{CheckContext, SizeEstimate, Step};
use crate::yaml::{self, Node, Plain, Value};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most steps a workflow holds. A step costs one to two kilobytes to validate; with the YAML
/// limits (`yaml::LIMITS`) this keeps any file's validation under 200 MB (BENCHMARKS.md).
pub const MAX_STEPS: usize = 200_000;
/// Edit-distance work (characters compared) spent on did-you-mean for unknown step ids: about a
/// tenth of a second, enough for every suggestion in a workflow of thousands of steps.
const SUGGEST_BUDGET: usize = 20_000_000;

/// A fixed key of the workflow format and what the reference says of it (`wf schema`,
/// docs/workflow.md); validation below checks the names.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub name: &'static str,
    /// Whether it must be there, and its default.
    pub presence: &'static str,
    pub doc: &'static str,
}

/// The top level of a workflow file.
pub const TOP_KEYS: &[KeyDoc] = &[
    KeyDoc {
        name: "name",
        presence: "optional, default the file name without extension",
        doc: "letters, digits, `-`, `_`: names run records and the state machine (`wf-<name>`)",
    },
    KeyDoc {
        name: "description",
        presence: "optional",
        doc: "free text",
    },
    KeyDoc {
        name: "seed",
        presence: "optional, default 0",
        doc: "an integer ≥ 0, part of the key of the steps with randomness (the *seeded* kinds)",
    },
    KeyDoc {
        name: "cache",
        presence: "optional",
        doc: "a directory (relative to the file; default `.wf/cache` beside it) or `s3://bucket[/prefix]` (an S3 layer shared by local and cloud runs; docs/cloud.md §1)",
    },
    KeyDoc {
        name: "steps",
        presence: "required",
        doc: "a mapping of step ids to steps (an id starts with a letter and holds letters, digits, `-`, `_`)",
    },
    KeyDoc {
        name: "targets",
        presence: "optional",
        doc: "`aws:` settings for `wf compile/deploy/start` and `wf run --executor sagemaker` (docs/cloud.md §8)",
    },
];

/// The keys of one step.
pub const STEP_KEYS: &[KeyDoc] = &[
    KeyDoc {
        name: "uses",
        presence: "required",
        doc: "the step kind (`wf steps` lists them)",
    },
    KeyDoc {
        name: "inputs",
        presence: "as the kind needs",
        doc: "`slot: producing step id`; the producer's output type must match the slot's",
    },
    KeyDoc {
        name: "with",
        presence: "as the kind needs",
        doc: "the kind's params; unknown keys, wrong types, missing required params are errors",
    },
    KeyDoc {
        name: "description",
        presence: "optional",
        doc: "free text",
    },
];

fn names(keys: &[KeyDoc]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name).collect()
}

/// What a step id (and the workflow's `name`) may be: a letter, then letters, digits, `-`, `_`.
pub const ID_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_-]*$";

/// One validated step.
#[derive(Clone)]
pub struct StepDef {
    pub id: String,
    pub span: Span,
    pub step: Arc<dyn Step>,
    pub params: Params,
    /// slot name → index of the producing step in `Workflow::steps`.
    pub inputs: BTreeMap<String, usize>,
    pub output: ArtifactType,
    pub description: Option<String>,
    /// What validation could tell about the output before it runs (`Step::facts`).
    pub facts: Option<Facts>,
    /// The size of the output as validation estimated it (`Step::output_size`).
    pub size: Option<SizeEstimate>,
}

impl StepDef {
    pub fn kind(&self) -> &'static str {
        self.step.kind()
    }
}

/// A valid workflow whose steps form an acyclic graph, held in topological order.
pub struct Workflow {
    /// The file as the user named it (used in messages).
    pub path: PathBuf,
    /// Absolute directory of the file: relative paths in the workflow resolve here.
    pub dir: PathBuf,
    pub name: String,
    pub seed: u64,
    /// `cache:` as written, with its position.
    pub cache: Option<(String, Span)>,
    /// Steps in a deterministic topological order (file order among independent steps).
    pub steps: Vec<StepDef>,
    /// `targets:`, typed at load (`targets.rs`).
    pub targets: crate::targets::Targets,
    graph: DiGraph<usize, String>,
}

impl Workflow {
    pub fn step(&self, id: &str) -> Option<(usize, &StepDef)> {
        self.steps.iter().enumerate().find(|(_, s)| s.id == id)
    }

    /// Indices of the steps that consume step `i`'s output.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing)
            .map(|n| self.graph[n])
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Edges as (producer index, consumer index, slot).
    pub fn edges(&self) -> Vec<(usize, usize, &str)> {
        let mut edges: Vec<_> = self
            .graph
            .edge_indices()
            .map(|e| {
                let (a, b) = self.graph.edge_endpoints(e).expect("edge exists");
                (self.graph[a], self.graph[b], self.graph[e].as_str())
            })
            .collect();
        edges.sort();
        edges
    }
}

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read workflow {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(DiagnosticList),
}

pub fn load(path: &Path, registry: &Registry) -> Result<Workflow, LoadError> {
    let bytes = yaml::read_limited(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    load_bytes(&bytes, path, &dir, registry)
}

/// Validates a workflow file's bytes: text past the size limit or not UTF-8 is refused with a
/// position, the rest goes to `load_str`.
pub fn load_bytes(
    bytes: &[u8],
    path: &Path,
    dir: &Path,
    registry: &Registry,
) -> Result<Workflow, LoadError> {
    let mut diags = Diagnostics::new(path);
    match yaml::decode(bytes, &mut diags) {
        Some(text) => load_str(text, path, dir, registry),
        None => Err(LoadError::Invalid(DiagnosticList(diags.into_sorted()))),
    }
}

/// Validates workflow text; `path` is used in messages, `dir` to resolve relative paths.
pub fn load_str(
    source: &str,
    path: &Path,
    dir: &Path,
    registry: &Registry,
) -> Result<Workflow, LoadError> {
    load_str_within(source, path, dir, registry, &yaml::LIMITS)
}

/// `load_str` within other YAML limits than `yaml::LIMITS`. The fuzzer uses smaller ones: the same
/// code refuses at the same places, and an input that expands to the limit takes milliseconds.
pub fn load_str_within(
    source: &str,
    path: &Path,
    dir: &Path,
    registry: &Registry,
    limits: &yaml::Limits,
) -> Result<Workflow, LoadError> {
    let mut diags = Diagnostics::new(path);
    let root = yaml::parse_with(source, limits, &mut diags);
    let wf = root.and_then(|root| validate(root, path, dir, registry, &mut diags));
    match wf {
        Some(wf) if diags.is_empty() => Ok(wf),
        _ => Err(LoadError::Invalid(DiagnosticList(diags.into_sorted()))),
    }
}

/// Reports keys of `map` that are not in `allowed`, with a did-you-mean.
pub fn check_keys(map: &Node, allowed: &[&str], context: &str, diags: &mut Diagnostics) {
    for (k, _) in map.as_map().unwrap_or(&[]) {
        if !allowed.contains(&k.name.as_str()) {
            if !diags.would_list(k.span) {
                diags.error(k.span, "");
                continue;
            }
            let msg = format!("unknown key `{}` in {context}", k.name);
            if k.name == "<<" {
                diags.error_with_help(k.span, msg, yaml::MERGE_KEY_HELP);
                continue;
            }
            match did_you_mean(&k.name, allowed.iter().copied()) {
                Some(best) => diags.error_with_help(k.span, msg, format!("did you mean `{best}`?")),
                None => diags.error_with_help(
                    k.span,
                    msg,
                    format!("expected one of: {}", allowed.join(", ")),
                ),
            }
        }
    }
}

/// Matches [`ID_PATTERN`].
fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What an open input slot (the `command` step's) may be: it becomes `$WF_IN_<slot>`.
pub const SLOT_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// Matches [`SLOT_PATTERN`].
fn valid_slot(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct RawStep {
    id: String,
    span: Span,
    step: Option<Arc<dyn Step>>,
    params: Params,
    /// slot → (producer id, position of the reference)
    inputs: Vec<(String, String, Span)>,
    description: Option<String>,
}

/// Takes the tree by value: each step's params move out of it rather than being copied, and each
/// step's subtree is freed once checked (a file may be millions of values).
fn validate(
    mut root: Node,
    path: &Path,
    dir: &Path,
    registry: &Registry,
    diags: &mut Diagnostics,
) -> Option<Workflow> {
    if root.as_map().is_none() {
        diags.error(
            root.span,
            format!(
                "a workflow is a mapping with `steps:`, found {}",
                root.describe()
            ),
        );
        return None;
    }
    check_keys(&root, &names(TOP_KEYS), "the workflow", diags);

    let default_name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("workflow")
        .to_string();
    let name = match root.get("name") {
        None => default_name,
        Some(n) => match n.scalar_text().filter(|s| valid_id(s)) {
            Some(s) => s.to_string(),
            None => {
                diags.error(
                    n.span,
                    format!(
                        "`name` must be letters, digits, `-` or `_`, found {}",
                        n.describe()
                    ),
                );
                default_name
            }
        },
    };
    if let Some(d) = root.get("description")
        && d.as_str().is_none()
    {
        diags.error(
            d.span,
            format!("`description` expects a string, found {}", d.describe()),
        );
    }
    let seed = match root.get("seed") {
        None => 0,
        Some(n) => match n.plain() {
            Some(Plain::Int(i)) if i >= 0 => i as u64,
            _ => {
                diags.error(
                    n.span,
                    format!(
                        "`seed` expects a non-negative integer, found {}",
                        n.describe()
                    ),
                );
                0
            }
        },
    };
    let cache = root.get("cache").and_then(|n| match n.as_str() {
        Some(s) if !s.is_empty() => Some((s.to_string(), n.span)),
        _ => {
            diags.error(
                n.span,
                format!(
                    "`cache` expects a directory or s3:// URI, found {}",
                    n.describe()
                ),
            );
            None
        }
    });
    let mut targets = crate::targets::Targets::default();
    if let Some(t) = root.get("targets") {
        match t.as_map() {
            Some(entries) => {
                for (k, v) in entries {
                    if k.name != "aws" {
                        diags.error_suggest(
                            k.span,
                            format!("unknown target `{}`", k.name),
                            &k.name,
                            ["aws"],
                        );
                    } else {
                        targets.aws = Some(crate::targets::parse_aws(v, diags));
                    }
                }
            }
            None => diags.error(
                t.span,
                format!("`targets` expects a mapping, found {}", t.describe()),
            ),
        }
    }

    let steps_node = match root.take("steps") {
        Some(s) => s,
        None => {
            diags.error(root.span, "the workflow has no `steps:`");
            return None;
        }
    };
    let entries = match steps_node.value {
        Value::Map(e) if e.is_empty() => {
            diags.error_with_help(
                steps_node.span,
                "`steps` is empty; a workflow needs at least one step",
                format!(
                    "a step reads `ID: {{ uses: KIND, with: {{ ... }} }}`; known kinds: {}",
                    registry.kinds().collect::<Vec<_>>().join(", ")
                ),
            );
            return None;
        }
        Value::Map(e) if e.len() > MAX_STEPS => {
            diags.error(
                steps_node.span,
                format!(
                    "`steps` holds {} steps, more than the {MAX_STEPS} a workflow may hold",
                    e.len()
                ),
            );
            return None;
        }
        Value::Map(e) => e,
        _ => {
            diags.error(
                steps_node.span,
                format!(
                    "`steps` expects a mapping of step ids to steps, found {}",
                    steps_node.describe()
                ),
            );
            return None;
        }
    };

    // Steps are looked up by id through maps, never by scanning: a workflow may hold 100,000 steps.
    let mut raw: Vec<RawStep> = Vec::with_capacity(entries.len());
    let mut seen: HashSet<String> = HashSet::with_capacity(entries.len());
    for (key, node) in entries {
        if !seen.insert(key.name.clone()) {
            continue; // duplicate key: already reported by the YAML phase
        }
        if !valid_id(&key.name) {
            diags.error(key.span, format!("step id `{}` must start with a letter and hold only letters, digits, `-` or `_`", key.name));
        }
        raw.push(check_step(&key.name, key.span, node, registry, diags));
    }
    drop(seen);

    // Edges: every input names an existing step with a matching slot and artifact type.
    let ids: Vec<&str> = raw.iter().map(|r| r.id.as_str()).collect();
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // Suggestions compare a name with every id; past this much work, unknown ids get none.
    let mut suggest_budget = SUGGEST_BUDGET;
    let outputs: Vec<Option<ArtifactType>> = raw
        .iter()
        .map(|r| r.step.as_ref().map(|s| s.output(&r.params)))
        .collect();
    // slot → producer per step; a list, as steps have a slot or two.
    let mut resolved: Vec<Vec<(String, usize)>> = vec![Vec::new(); raw.len()];
    for (i, r) in raw.iter().enumerate() {
        for (slot, producer, span) in &r.inputs {
            let Some(&p) = index.get(producer.as_str()) else {
                let msg = format!(
                    "step `{}`: input `{slot}` names step `{producer}`, which does not exist",
                    r.id
                );
                let others = ids.iter().copied().filter(|id| *id != r.id);
                match did_you_mean_within(producer, others, &mut suggest_budget) {
                    Some(best) => {
                        diags.error_with_help(*span, msg, format!("did you mean `{best}`?"))
                    }
                    None => diags.error(*span, msg),
                }
                continue;
            };
            resolved[i].push((slot.clone(), p));
            let (Some(step), Some(produced)) = (&r.step, outputs[p]) else {
                continue;
            };
            if let Slots::Fixed(slots) = step.inputs()
                && let Some((_, want)) = slots.iter().find(|(s, _)| s == slot)
                && *want != produced
            {
                diags.error(
                            *span,
                            format!("{}.inputs.{slot} expects {want}, but step `{producer}` produces {produced}", r.id),
                        );
            }
        }
    }

    // The graph: producer → consumer, then cycles.
    let mut graph: DiGraph<usize, String> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..raw.len()).map(|i| graph.add_node(i)).collect();
    for (i, inputs) in resolved.iter().enumerate() {
        for (slot, p) in inputs {
            graph.add_edge(nodes[*p], nodes[i], slot.clone());
        }
    }
    let order = topo_order(&graph);
    // Each step's own checks, producers first so that every step sees its inputs' facts (on a
    // cycle, in file order and without them).
    let check_order: Vec<usize> = match &order {
        Ok(order) => order.clone(),
        Err(_) => (0..raw.len()).collect(),
    };
    let mut facts: Vec<Option<Facts>> = vec![None; raw.len()];
    let mut sizes: Vec<Option<SizeEstimate>> = vec![None; raw.len()];
    for &i in &check_order {
        let Some(step) = &raw[i].step else { continue };
        let inputs: BTreeMap<String, Facts> = match &order {
            Ok(_) => resolved[i]
                .iter()
                .filter_map(|(slot, p)| Some((slot.clone(), facts[*p].clone()?)))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        let cx = CheckContext {
            step_id: &raw[i].id,
            workflow_dir: dir,
            inputs: &inputs,
        };
        step.check(&raw[i].params, &cx, diags);
        facts[i] = step.facts(&raw[i].params, &cx);
        sizes[i] = step.output_size(&raw[i].params, &cx);
    }
    let order = match order {
        Ok(order) => order,
        Err(cycle) => {
            let first = *cycle
                .iter()
                .min_by_key(|&&i| raw[i].span)
                .expect("cycle is non-empty");
            let id = |i: usize| raw[i].id.as_str();
            // A long cycle is shown by its ends: the message stays one readable line.
            let path = if cycle.len() > 12 {
                let head: Vec<&str> = cycle[..8].iter().map(|&i| id(i)).collect();
                let tail: Vec<&str> = cycle[cycle.len() - 2..].iter().map(|&i| id(i)).collect();
                format!(
                    "{} -> … ({} more) -> {}",
                    head.join(" -> "),
                    cycle.len() - 10,
                    tail.join(" -> ")
                )
            } else {
                cycle
                    .iter()
                    .map(|&i| id(i))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            };
            diags.error(
                raw[first].span,
                format!("the steps form a cycle: {path} -> {}", id(cycle[0])),
            );
            return None;
        }
    };
    if !diags.is_empty() {
        return None;
    }

    // Seal: steps in topological order, indices remapped.
    let mut new_index = vec![0; raw.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut sealed_graph: DiGraph<usize, String> = DiGraph::new();
    let sealed_nodes: Vec<NodeIndex> = (0..raw.len()).map(|i| sealed_graph.add_node(i)).collect();
    let mut slots: Vec<Option<StepDef>> = (0..raw.len()).map(|_| None).collect();
    for (old, r) in raw.into_iter().enumerate() {
        let inputs: BTreeMap<String, usize> = std::mem::take(&mut resolved[old])
            .into_iter()
            .map(|(slot, p)| (slot, new_index[p]))
            .collect();
        for (slot, &p) in &inputs {
            sealed_graph.add_edge(sealed_nodes[p], sealed_nodes[new_index[old]], slot.clone());
        }
        let step = r.step.expect("valid workflows resolve every kind");
        let output = step.output(&r.params);
        slots[new_index[old]] = Some(StepDef {
            id: r.id,
            span: r.span,
            step,
            params: r.params,
            inputs,
            output,
            description: r.description,
            facts: facts[old].take(),
            size: sizes[old].take(),
        });
    }
    Some(Workflow {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        name,
        seed,
        cache,
        steps: slots
            .into_iter()
            .map(|s| s.expect("every index filled"))
            .collect(),
        targets,
        graph: sealed_graph,
    })
}

fn check_step(
    id: &str,
    span: Span,
    mut node: Node,
    registry: &Registry,
    diags: &mut Diagnostics,
) -> RawStep {
    let mut raw = RawStep {
        id: id.to_string(),
        span,
        step: None,
        params: Params::default(),
        inputs: Vec::new(),
        description: None,
    };
    if node.as_map().is_none() {
        diags.error(
            node.span,
            format!(
                "step `{id}` must be a mapping with `uses:`, found {}",
                node.describe()
            ),
        );
        return raw;
    }
    check_keys(&node, &names(STEP_KEYS), &format!("step `{id}`"), diags);
    raw.description = node
        .get("description")
        .and_then(|d| d.as_str())
        .map(str::to_string);

    match node.get("uses") {
        None => diags.error(
            span,
            format!("step `{id}` is missing `uses:` (the kind of step)"),
        ),
        Some(u) => match u.as_str() {
            Some(kind) => match registry.get(kind) {
                Some(step) => raw.step = Some(step.clone()),
                None => {
                    let msg = format!("step `{id}`: unknown step kind `{kind}`");
                    match did_you_mean(kind, registry.kinds()) {
                        Some(best) => {
                            diags.error_with_help(u.span, msg, format!("did you mean `{best}`?"))
                        }
                        None => diags.error_with_help(
                            u.span,
                            msg,
                            format!(
                                "known kinds: {}",
                                registry.kinds().collect::<Vec<_>>().join(", ")
                            ),
                        ),
                    }
                }
            },
            None => diags.error(
                u.span,
                format!(
                    "step `{id}`: `uses` expects a step kind, found {}",
                    u.describe()
                ),
            ),
        },
    }

    if let Some(inputs) = node.get("inputs") {
        match inputs.as_map() {
            Some(entries) => {
                for (slot, producer) in entries {
                    match producer.as_str() {
                        Some(p) => {
                            raw.inputs
                                .push((slot.name.clone(), p.to_string(), producer.span))
                        }
                        None => diags.error(
                            producer.span,
                            format!(
                                "step `{id}`: input `{}` expects the id of another step, found {}",
                                slot.name,
                                producer.describe()
                            ),
                        ),
                    }
                }
            }
            None if inputs.is_null() => {}
            None => diags.error(
                inputs.span,
                format!(
                    "step `{id}`: `inputs` expects a mapping of slot: step, found {}",
                    inputs.describe()
                ),
            ),
        }
    }

    let Some(step) = raw.step.clone() else {
        return raw;
    };
    let context = format!("step `{id}`");
    raw.params = params::validate(step.params(), node.take("with"), span, &context, diags);

    let input_keys: Vec<(&str, Span)> = node
        .get("inputs")
        .and_then(Node::as_map)
        .map(|m| m.iter().map(|(k, _)| (k.name.as_str(), k.span)).collect())
        .unwrap_or_default();
    match step.inputs() {
        Slots::Fixed(slots) => {
            for (slot, sspan) in &input_keys {
                if !slots.iter().any(|(s, _)| s == slot) {
                    let msg = format!("step `{id}` ({}) has no input slot `{slot}`", step.kind());
                    let names: Vec<&str> = slots.iter().map(|(s, _)| *s).collect();
                    match did_you_mean(slot, names.iter().copied()) {
                        Some(best) => {
                            diags.error_with_help(*sspan, msg, format!("did you mean `{best}`?"))
                        }
                        None if names.is_empty() => {
                            diags.error_with_help(*sspan, msg, "this step takes no inputs")
                        }
                        None => diags.error_with_help(
                            *sspan,
                            msg,
                            format!("its slots: {}", names.join(", ")),
                        ),
                    }
                }
            }
            for (slot, ty) in slots {
                if !input_keys.iter().any(|(s, _)| s == slot) {
                    diags.error(
                        span,
                        format!(
                            "step `{id}` ({}) is missing input `{slot}` ({ty})",
                            step.kind()
                        ),
                    );
                }
            }
        }
        Slots::Open => {
            for (slot, sspan) in &input_keys {
                if !valid_slot(slot) {
                    diags.error(*sspan, format!("step `{id}`: input slot `{slot}` must be letters, digits and `_` (it becomes $WF_IN_{slot})"));
                }
            }
        }
    }
    // `Step::check` runs once the edges are known (`validate`): it sees the inputs' facts.
    raw
}

/// Topological order preferring file order among ready steps; on a cycle, the cycle's step indices.
fn topo_order(graph: &DiGraph<usize, String>) -> Result<Vec<usize>, Vec<usize>> {
    let n = graph.node_count();
    let mut indegree = vec![0usize; n];
    for e in graph.edge_indices() {
        let (_, b) = graph.edge_endpoints(e).expect("edge");
        indegree[b.index()] += 1;
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for m in graph.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing) {
            indegree[m.index()] -= 1;
            if indegree[m.index()] == 0 {
                ready.insert(m.index());
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Some node is on a cycle: walk backwards along unfinished predecessors until a node repeats.
    let start = (0..n)
        .find(|&i| indegree[i] > 0)
        .expect("an unfinished node exists");
    let mut path = vec![start];
    // Where each node sits on `path`, so a repeat is found without scanning it.
    let mut on_path: Vec<Option<usize>> = vec![None; n];
    on_path[start] = Some(0);
    let mut cur = start;
    loop {
        let pred = graph
            .neighbors_directed(NodeIndex::new(cur), petgraph::Direction::Incoming)
            .map(|p| p.index())
            .filter(|&p| indegree[p] > 0)
            .min()
            .expect("a node on or behind a cycle has an unfinished predecessor");
        if let Some(pos) = on_path[pred] {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse(); // producer → consumer direction
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|&(_, v)| *v)
                .map(|(i, _)| i)
                .unwrap_or(0);
            cycle.rotate_left(first);
            return Err(cycle);
        }
        on_path[pred] = Some(path.len());
        path.push(pred);
        cur = pred;
    }
}
