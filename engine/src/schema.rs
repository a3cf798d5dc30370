//! `wf schema`: a JSON Schema (draft 2020-12) of the workflow format, generated from what validation
//! reads: the top-level and step keys (`workflow.rs`), every registered kind's `ParamSpec`s and input
//! slots, and the `targets.aws` keys (`targets.rs`). Editors with yaml-language-server complete and
//! document exactly the keys `wf validate` accepts, and flag the ones it rejects.
//!
//! Each step's `with:` and `inputs:` are chosen by its `uses:` through `if`/`then` (one branch per
//! kind), which language servers follow for completion and hover. The keywords used are those that
//! draft-07 shares with 2020-12, and everything is inline (no `$ref`): yaml-language-server
//! evaluates schemas by draft-07's rules whatever `$schema` says. The schema is a help, not the
//! judge: `wf validate` also checks what a schema cannot (edges, cycles, files, each step's `check`).

use crate::artifact::Slots;
use crate::params::ParamSpec;
use crate::registry::Registry;
use crate::step::Step;
use crate::targets::{
    AWS_FSX_DOC, AWS_FSX_KEYS, AWS_KEYS, AWS_STEP_KEYS, AWS_STEPS_DOC, SettingKey,
};
use crate::workflow::{ID_PATTERN, KeyDoc, SLOT_PATTERN, STEP_KEYS, TOP_KEYS};
use serde_json::{Map, Value as Json, json};

/// The `$schema` the document declares.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The JSON Schema of a workflow file whose steps are the kinds of `registry`.
pub fn workflow_schema(registry: &Registry) -> Json {
    let properties: Map<String, Json> = TOP_KEYS
        .iter()
        .map(|k| {
            let mut schema = match k.name {
                "name" => json!({ "type": "string", "pattern": ID_PATTERN }),
                "description" => json!({ "type": "string" }),
                "seed" => json!({ "type": "integer", "minimum": 0, "default": 0 }),
                "cache" => json!({ "type": "string", "minLength": 1 }),
                "steps" => json!({
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": { "pattern": ID_PATTERN },
                    "additionalProperties": step_schema(registry),
                }),
                "targets" => json!({
                    "type": "object",
                    "properties": { "aws": aws_schema() },
                    "additionalProperties": false,
                }),
                other => unreachable!("top-level key `{other}` has no schema"),
            };
            describe(&mut schema, k);
            (k.name.to_string(), schema)
        })
        .collect();
    json!({
        "$schema": DIALECT,
        "title": "wf workflow",
        "description": "A wf workflow: named steps, each of a kind (`uses:`), wired by typed inputs, with typed params (`with:`). `wf validate FILE` checks everything.",
        "type": "object",
        "required": required(TOP_KEYS),
        "properties": properties,
        "additionalProperties": false,
    })
}

fn describe(schema: &mut Json, key: &KeyDoc) {
    schema["description"] = Json::String(format!("{}; {}", key.doc, key.presence));
}

fn required(keys: &[KeyDoc]) -> Vec<&'static str> {
    keys.iter()
        .filter(|k| k.presence == "required")
        .map(|k| k.name)
        .collect()
}

/// One step: the keys every step has, then per kind (`if uses is K then ...`) its params and slots.
fn step_schema(registry: &Registry) -> Json {
    let kinds: Vec<Json> = registry
        .iter()
        .map(|s| json!({ "const": s.kind(), "description": s.summary() }))
        .collect();
    let properties: Map<String, Json> = STEP_KEYS
        .iter()
        .map(|k| {
            let mut schema = match k.name {
                "uses" => json!({ "type": "string", "oneOf": kinds }),
                "inputs" => json!({
                    "type": ["object", "null"],
                    "additionalProperties": { "type": "string" },
                }),
                "with" => json!({ "type": ["object", "null"] }),
                "description" => json!({ "type": "string" }),
                other => unreachable!("step key `{other}` has no schema"),
            };
            describe(&mut schema, k);
            (k.name.to_string(), schema)
        })
        .collect();
    let branches: Vec<Json> = registry
        .iter()
        .map(|s| {
            json!({
                "if": { "properties": { "uses": { "const": s.kind() } }, "required": ["uses"] },
                "then": kind_schema(s.as_ref()),
            })
        })
        .collect();
    json!({
        "type": "object",
        "required": required(STEP_KEYS),
        "properties": properties,
        "additionalProperties": false,
        "allOf": branches,
    })
}

/// What a step of one kind adds: its `with:` params and its `inputs:` slots.
fn kind_schema(step: &dyn Step) -> Json {
    let specs = step.params();
    let with = params_schema(step.kind(), specs);
    let mut then = json!({ "properties": { "with": with } });
    let mut required: Vec<&str> = Vec::new();
    if specs.iter().any(|p| p.default.is_none()) {
        required.push("with");
    }
    if let Slots::Fixed(slots) = step.inputs() {
        let properties: Map<String, Json> = slots
            .iter()
            .map(|(slot, ty)| {
                let schema = json!({
                    "type": "string",
                    "description": format!("the id of the step whose output ({ty}) feeds `{slot}`"),
                });
                (slot.to_string(), schema)
            })
            .collect();
        let inputs = if slots.is_empty() {
            json!({ "type": ["object", "null"], "properties": {}, "additionalProperties": false })
        } else {
            required.push("inputs");
            json!({
                "type": "object",
                "properties": properties,
                "required": slots.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                "additionalProperties": false,
            })
        };
        then["properties"]["inputs"] = inputs;
    } else {
        then["properties"]["inputs"] = json!({
            "type": ["object", "null"],
            "propertyNames": { "pattern": SLOT_PATTERN },
            "additionalProperties": { "type": "string" },
        });
    }
    if !required.is_empty() {
        then["required"] = json!(required);
    }
    then
}

/// A `with:` block: every param, nothing else; required params required.
fn params_schema(kind: &str, specs: &[ParamSpec]) -> Json {
    let properties: Map<String, Json> = specs
        .iter()
        .map(|p| (p.name.to_string(), p.json_schema()))
        .collect();
    let required: Vec<&str> = specs
        .iter()
        .filter(|p| p.default.is_none())
        .map(|p| p.name)
        .collect();
    let mut schema = json!({
        "description": format!("the params of `{kind}` (`wf steps {kind}` lists them)"),
        "type": ["object", "null"],
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        schema["type"] = json!("object");
        schema["required"] = json!(required);
    }
    schema
}

fn settings(doc: &str, keys: &[SettingKey], extra: Map<String, Json>) -> Json {
    let mut properties: Map<String, Json> = keys
        .iter()
        .map(|k| {
            let mut schema = k.ty.json_schema();
            schema["description"] = Json::String(k.doc.to_string());
            (k.name.to_string(), schema)
        })
        .collect();
    properties.extend(extra);
    json!({
        "description": doc,
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    })
}

/// `targets.aws`: names and types as `wf validate` checks them (completeness is `wf compile`'s).
fn aws_schema() -> Json {
    let step = settings("the jobs of this step", AWS_STEP_KEYS, Map::new());
    let steps = json!({
        "description": AWS_STEPS_DOC,
        "type": "object",
        "propertyNames": { "pattern": ID_PATTERN },
        "additionalProperties": step,
    });
    let mut extra = Map::new();
    extra.insert("steps".into(), steps);
    extra.insert(
        "fsx".into(),
        settings(AWS_FSX_DOC, AWS_FSX_KEYS, Map::new()),
    );
    settings(
        "settings for `wf compile/deploy/start` and `wf run --executor sagemaker` (docs/cloud.md §8)",
        AWS_KEYS,
        extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_key_has_a_schema() {
        // `unreachable!` above would fire for a key added to TOP_KEYS or STEP_KEYS alone.
        let schema = workflow_schema(&Registry::new());
        let top = schema["properties"].as_object().unwrap();
        assert_eq!(top.len(), TOP_KEYS.len());
        let step = &top["steps"]["additionalProperties"]["properties"];
        assert_eq!(step.as_object().unwrap().len(), STEP_KEYS.len());
        assert_eq!(schema["required"], json!(["steps"]));
        assert_eq!(schema["$schema"], DIALECT);
    }

    #[test]
    fn aws_settings_are_closed() {
        let aws = aws_schema();
        assert_eq!(aws["additionalProperties"], json!(false));
        assert_eq!(
            aws["properties"]["fsx"]["properties"]["deployment_type"]["enum"][1],
            "SCRATCH_2"
        );
        assert_eq!(
            aws["properties"]["steps"]["additionalProperties"]["properties"]["instance_count"]["minimum"],
            1
        );
    }
}
