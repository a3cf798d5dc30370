//! Typed step parameters: each step declares a schema; `with:` is checked against it (unknown keys,
//! missing required keys, wrong types — all reported at once, with positions) and turned into a
//! canonical JSON object that feeds the cache key and the step's own typed struct. The same specs
//! are the reference: `wf steps`, `wf schema` and docs/workflow.md are generated from them.

use crate::diag::{Diagnostics, Span};
use crate::yaml::{Node, Plain, Value};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    Str,
    /// An integer within an inclusive range.
    Int {
        min: i64,
        max: i64,
    },
    /// A finite number; integers are accepted and stored as floats (so `1` and `1.0` hash the same).
    Float,
    Bool,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    List(&'static ParamType),
    /// A mapping from names to strings.
    StrMap,
    /// Any YAML value; the step checks its structure itself (with positions) in `Step::check`.
    Any,
}

impl ParamType {
    pub const fn int_min(min: i64) -> Self {
        ParamType::Int { min, max: i64::MAX }
    }

    /// The accepted values in words ("an integer ≥ 1"), as messages and the reference say them.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Str => "a string".into(),
            ParamType::Int { min, max } if *max == i64::MAX && *min == i64::MIN => {
                "an integer".into()
            }
            ParamType::Int { min, max } if *max == i64::MAX => format!("an integer ≥ {min}"),
            ParamType::Int { min, max } => format!("an integer in {min}..={max}"),
            ParamType::Float => "a number".into(),
            ParamType::Bool => "true or false".into(),
            ParamType::Enum(options) => {
                format!(
                    "one of {}",
                    options
                        .iter()
                        .map(|o| format!("`{o}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            ParamType::List(inner) => format!("a list of {}", plural(&inner.describe())),
            ParamType::StrMap => "a mapping of names to strings".into(),
            ParamType::Any => "a value".into(),
        }
    }
}

impl ParamType {
    /// JSON Schema of the values `convert` accepts (YAML core-schema scalars are JSON's types).
    pub fn json_schema(&self) -> Json {
        use serde_json::json;
        match self {
            ParamType::Str => json!({ "type": "string" }),
            ParamType::Int { min, max } => {
                let mut s = json!({ "type": "integer" });
                if *min != i64::MIN {
                    s["minimum"] = json!(min);
                }
                if *max != i64::MAX {
                    s["maximum"] = json!(max);
                }
                s
            }
            ParamType::Float => json!({ "type": "number" }),
            ParamType::Bool => json!({ "type": "boolean" }),
            ParamType::Enum(options) => json!({ "enum": options }),
            ParamType::List(inner) => json!({ "type": "array", "items": inner.json_schema() }),
            // Any non-null scalar is taken as its text; no mapping at all is an empty one.
            ParamType::StrMap => json!({
                "type": ["object", "null"],
                "additionalProperties": { "type": ["string", "number", "boolean"] },
            }),
            ParamType::Any => json!({}),
        }
    }
}

fn plural(s: &str) -> String {
    let s = s
        .strip_prefix("an ")
        .or_else(|| s.strip_prefix("a "))
        .unwrap_or(s);
    if s.starts_with("one of") || s.starts_with("true or false") {
        return format!("values, each {s}");
    }
    // The noun is the first word: "integer in 1..=9" → "integers in 1..=9".
    match s.split_once(' ') {
        Some((noun, rest)) => format!("{noun}s {rest}"),
        None => format!("{s}s"),
    }
}

/// The values a param accepts, where its [`ParamType`] says less than the step's `check` enforces
/// (an `Any` param's structure, a number's range, a list's length): for the reference and the
/// schema only. Validation stays with `ParamType` and `Step::check`.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// In words, like [`ParamType::describe`] ("a number > 0").
    pub describe: &'static str,
    /// JSON Schema (draft 2020-12) of the values.
    pub schema: fn() -> Json,
}

#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// `None`: required. `Some(json)`: the default, as JSON text (filled in before hashing, so writing
    /// the default explicitly does not change the cache key).
    pub default: Option<&'static str>,
    pub doc: &'static str,
    /// Whether the param can change the step's output. Params that only change how a step runs
    /// (parallelism: `shards`) are left out of the cache key, so changing them reuses the cache.
    pub in_key: bool,
    /// What the reference and the schema say the param accepts, when `ty` says less.
    pub shape: Option<Shape>,
}

impl ParamSpec {
    /// Marks a param as not affecting the output (left out of the cache key).
    pub const fn not_in_key(mut self) -> Self {
        self.in_key = false;
        self
    }

    /// Describes the accepted values more narrowly than `ty` does (see [`Shape`]).
    pub const fn shape(mut self, describe: &'static str, schema: fn() -> Json) -> Self {
        self.shape = Some(Shape { describe, schema });
        self
    }

    pub const fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: None,
            doc,
            in_key: true,
            shape: None,
        }
    }
    pub const fn optional(
        name: &'static str,
        ty: ParamType,
        default: &'static str,
        doc: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            ty,
            default: Some(default),
            doc,
            in_key: true,
            shape: None,
        }
    }

    /// The accepted values in words.
    pub fn describe(&self) -> String {
        match self.shape {
            Some(shape) => shape.describe.to_string(),
            None => self.ty.describe(),
        }
    }

    /// The default as JSON, `None` for a required param.
    pub fn default_value(&self) -> Option<Json> {
        self.default
            .map(|d| serde_json::from_str(d).expect("param defaults are valid JSON"))
    }

    /// JSON Schema of the param: its values, description and default.
    pub fn json_schema(&self) -> Json {
        let mut schema = match self.shape {
            Some(shape) => (shape.schema)(),
            None => self.ty.json_schema(),
        };
        let mut description = self.doc.to_string();
        if !self.in_key {
            description.push_str(" (not part of the cache key)");
        }
        schema["description"] = Json::String(description);
        if let Some(d) = self.default_value() {
            schema["default"] = d;
        }
        schema
    }
}

/// Validated, canonical parameters of one step, with the source nodes kept for positioned checks.
#[derive(Debug, Clone, Default)]
pub struct Params {
    values: BTreeMap<String, Json>,
    nodes: BTreeMap<String, Node>,
    /// Params that do not affect the output (see `ParamSpec::in_key`).
    not_in_key: Vec<String>,
    /// Where the `with:` block (or the step, when there is none) starts.
    pub span: Span,
}

impl Params {
    /// Builds params from values directly (tests, workers): no positions.
    pub fn from_values(values: BTreeMap<String, Json>) -> Self {
        Params {
            values,
            ..Params::default()
        }
    }

    /// Params as validation makes them, without a YAML file: the schema's defaults filled in, then
    /// `values` on top (tests and workers).
    pub fn with_defaults(specs: &[ParamSpec], values: BTreeMap<String, Json>) -> Self {
        let mut all: BTreeMap<String, Json> = specs
            .iter()
            .filter_map(|s| Some((s.name.to_string(), s.default_value()?)))
            .collect();
        all.extend(values);
        Params {
            values: all,
            not_in_key: specs
                .iter()
                .filter(|s| !s.in_key)
                .map(|s| s.name.to_string())
                .collect(),
            ..Params::default()
        }
    }

    pub fn get(&self, name: &str) -> Option<&Json> {
        self.values.get(name)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Position of a param's value, or of the `with:` block when it was defaulted.
    pub fn span_of(&self, name: &str) -> Span {
        self.nodes.get(name).map_or(self.span, |n| n.span)
    }

    pub fn values(&self) -> &BTreeMap<String, Json> {
        &self.values
    }

    /// Canonical JSON: keys sorted, no whitespace, defaults filled in. Part of the cache key.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(&self.values).expect("JSON values always serialize")
    }

    /// The params that are part of the cache key, as a JSON object.
    pub fn key_value(&self) -> Json {
        Json::Object(
            self.values
                .iter()
                .filter(|(k, _)| !self.not_in_key.iter().any(|n| n == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The step's typed view of its params.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(Json::Object(self.values.clone().into_iter().collect()))
    }
}

/// Checks `with:` against the schema. `context` names the step in messages (`step "train"`).
pub fn validate(
    specs: &[ParamSpec],
    with: Option<&Node>,
    step_span: Span,
    context: &str,
    diags: &mut Diagnostics,
) -> Params {
    let mut params = Params {
        span: with.map_or(step_span, |w| w.span),
        ..Params::default()
    };
    let entries: &[(crate::yaml::Key, Node)] = match with {
        None => &[],
        Some(node) if node.is_null() => &[],
        Some(node) => match node.as_map() {
            Some(m) => m,
            None => {
                diags.error(
                    node.span,
                    format!(
                        "{context}: `with` must be a mapping of params, found {}",
                        node.describe()
                    ),
                );
                &[]
            }
        },
    };
    for (key, node) in entries {
        let Some(spec) = specs.iter().find(|s| s.name == key.name) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            let msg = format!("{context}: unknown param `{}`", key.name);
            match crate::diag::did_you_mean(&key.name, known.iter().copied()) {
                Some(best) => {
                    diags.error_with_help(key.span, msg, format!("did you mean `{best}`?"))
                }
                None if known.is_empty() => {
                    diags.error_with_help(key.span, msg, "this step takes no params")
                }
                None => diags.error_with_help(
                    key.span,
                    msg,
                    format!("known params: {}", known.join(", ")),
                ),
            }
            continue;
        };
        if let Some(value) = convert(
            &spec.ty,
            node,
            &format!("{context}: param `{}`", spec.name),
            diags,
        ) {
            params.values.insert(spec.name.to_string(), value);
            params.nodes.insert(spec.name.to_string(), node.clone());
        }
    }
    params.not_in_key = specs
        .iter()
        .filter(|s| !s.in_key)
        .map(|s| s.name.to_string())
        .collect();
    for spec in specs {
        if params.values.contains_key(spec.name) || entries.iter().any(|(k, _)| k.name == spec.name)
        {
            continue;
        }
        match spec.default_value() {
            Some(v) => {
                params.values.insert(spec.name.to_string(), v);
            }
            None => diags.error_with_help(
                params.span,
                format!("{context}: missing required param `{}`", spec.name),
                format!("`{}`: {}", spec.name, spec.doc),
            ),
        }
    }
    params
}

/// Converts one node to the canonical JSON of its declared type, or reports why it cannot.
pub fn convert(ty: &ParamType, node: &Node, what: &str, diags: &mut Diagnostics) -> Option<Json> {
    let mismatch = |diags: &mut Diagnostics| {
        diags.error(
            node.span,
            format!(
                "{what} expects {}, found {}",
                ty.describe(),
                node.describe()
            ),
        );
        None
    };
    match ty {
        ParamType::Str => match node.plain() {
            Some(Plain::Str(s)) => Some(Json::String(s.to_string())),
            _ => mismatch(diags),
        },
        ParamType::Int { min, max } => match node.plain() {
            Some(Plain::Int(i)) if i >= *min && i <= *max => Some(Json::from(i)),
            Some(Plain::Int(_)) => mismatch(diags),
            _ => mismatch(diags),
        },
        ParamType::Float => match node.plain() {
            Some(Plain::Int(i)) => Some(Json::from(i as f64)),
            Some(Plain::Float(x)) if x.is_finite() => Some(Json::from(x)),
            _ => mismatch(diags),
        },
        ParamType::Bool => match node.plain() {
            Some(Plain::Bool(b)) => Some(Json::Bool(b)),
            _ => mismatch(diags),
        },
        ParamType::Enum(options) => match node.plain() {
            Some(Plain::Str(s)) if options.contains(&s) => Some(Json::String(s.to_string())),
            Some(Plain::Str(s)) => {
                let msg = format!("{what} expects {}, found \"{s}\"", ty.describe());
                match crate::diag::did_you_mean(s, options.iter().copied()) {
                    Some(best) => {
                        diags.error_with_help(node.span, msg, format!("did you mean `{best}`?"))
                    }
                    None => diags.error(node.span, msg),
                }
                None
            }
            _ => mismatch(diags),
        },
        ParamType::List(inner) => match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match convert(inner, item, &subpath(what, &format!("[{i}]")), diags) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(Json::Array(out))
            }
            _ => mismatch(diags),
        },
        ParamType::StrMap => match &node.value {
            Value::Map(entries) => {
                let mut out = serde_json::Map::new();
                let mut ok = true;
                for (k, v) in entries {
                    match v.scalar_text() {
                        Some(text) if !v.is_null() => {
                            out.insert(k.name.clone(), Json::String(text.to_string()));
                        }
                        _ => {
                            diags.error(
                                v.span,
                                format!(
                                    "{what}.{} expects a string, found {}",
                                    k.name,
                                    v.describe()
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(Json::Object(out))
            }
            _ if node.is_null() => Some(Json::Object(serde_json::Map::new())),
            _ => mismatch(diags),
        },
        ParamType::Any => Some(to_json(node)),
    }
}

/// `param `x`` + `[1]` → `param `x[1]``.
fn subpath(what: &str, suffix: &str) -> String {
    match what.strip_suffix('`') {
        Some(head) => format!("{head}{suffix}`"),
        None => format!("{what}{suffix}"),
    }
}

/// The core-schema JSON of any node (maps keep keys sorted, which is what canonical JSON needs).
pub fn to_json(node: &Node) -> Json {
    match &node.value {
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
        Value::Seq(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Scalar { .. } => match node.plain().expect("scalar") {
            Plain::Null => Json::Null,
            Plain::Bool(b) => Json::Bool(b),
            Plain::Int(i) => Json::from(i),
            Plain::Float(x) => serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number),
            Plain::Str(s) => Json::String(s.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_name_their_items() {
        let ints = ParamType::List(&ParamType::Int { min: 4, max: 4096 });
        assert_eq!(ints.describe(), "a list of integers in 4..=4096");
        assert_eq!(
            ParamType::List(&ParamType::Str).describe(),
            "a list of strings"
        );
        assert_eq!(
            ParamType::List(&ParamType::Bool).describe(),
            "a list of values, each true or false"
        );
    }

    #[test]
    fn schemas_follow_types_shapes_and_specs() {
        assert_eq!(
            ParamType::Int { min: 1, max: 9 }.json_schema(),
            json!({ "type": "integer", "minimum": 1, "maximum": 9 })
        );
        assert_eq!(
            ParamType::int_min(0).json_schema(),
            json!({ "type": "integer", "minimum": 0 })
        );
        let spec = ParamSpec::optional("lr", ParamType::Float, "1.0e-4", "learning rate")
            .shape(
                "number > 0",
                || json!({ "type": "number", "exclusiveMinimum": 0 }),
            )
            .not_in_key();
        assert_eq!(spec.describe(), "number > 0");
        assert_eq!(
            spec.json_schema(),
            json!({
                "type": "number",
                "exclusiveMinimum": 0,
                "default": 0.0001,
                "description": "learning rate (not part of the cache key)",
            })
        );
        let required = ParamSpec::required("run", ParamType::Str, "the command");
        assert_eq!(required.json_schema().get("default"), None);
    }
}
