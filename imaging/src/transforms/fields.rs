//! What each transform is and which fields it takes: the one table that the workflow's JSON Schema
//! (`wf schema`), the reference (docs/workflow.md) and the positioned errors of [`super::item`]
//! read. Each transform declares its own `DOC` and `FIELDS` next to its struct; a test keeps the
//! tables equal to what the structs deserialize.

use serde_json::{Value as Json, json};

use super::{
    ConvertLabels, EnsureChannelFirst, Load, NormalizeIntensity, Orientation, RandFlip,
    RandScaleIntensity, RandShiftIntensity, RandSpatialCrop, Spacing,
};

/// One field of a transform (`pixdim` of `spacing`).
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    /// The values it accepts, in words ("3 numbers > 0"); messages say "expects <ty>".
    pub ty: &'static str,
    /// `None`: required; otherwise the default as the reference shows it.
    pub default: Option<&'static str>,
    pub doc: &'static str,
    /// JSON Schema (draft 2020-12) of the value, as JSON text.
    pub schema: &'static str,
}

impl Field {
    pub const fn required(
        name: &'static str,
        ty: &'static str,
        doc: &'static str,
        schema: &'static str,
    ) -> Field {
        Field {
            name,
            ty,
            default: None,
            doc,
            schema,
        }
    }

    pub const fn optional(
        name: &'static str,
        ty: &'static str,
        default: &'static str,
        doc: &'static str,
        schema: &'static str,
    ) -> Field {
        Field {
            name,
            ty,
            default: Some(default),
            doc,
            schema,
        }
    }

    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }

    /// The value's schema with the field's description.
    pub fn json_schema(&self) -> Json {
        let mut schema: Json = serde_json::from_str(self.schema).expect("field schemas are JSON");
        let mut description = self.doc.to_string();
        if let Some(d) = self.default {
            description.push_str(&format!(" (default: {d})"));
        }
        schema["description"] = Json::String(description);
        schema
    }
}

/// One transform as the reference describes it.
#[derive(Debug, Clone, Copy)]
pub struct TransformInfo {
    /// The YAML name.
    pub name: &'static str,
    /// What it does, with MONAI's equivalent in parentheses.
    pub doc: &'static str,
    pub fields: &'static [Field],
    /// Whether it draws random numbers (the chain splits at the first such transform).
    pub random: bool,
}

impl TransformInfo {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Whether the bare name (`- load`) is a complete transform.
    pub fn takes_bare_name(&self) -> bool {
        !self.fields.iter().any(Field::is_required)
    }
}

/// Every transform, in the order a chain usually lists them.
pub const TRANSFORMS: &[TransformInfo] = &[
    TransformInfo {
        name: Load::NAME,
        doc: Load::DOC,
        fields: Load::FIELDS,
        random: false,
    },
    TransformInfo {
        name: EnsureChannelFirst::NAME,
        doc: EnsureChannelFirst::DOC,
        fields: EnsureChannelFirst::FIELDS,
        random: false,
    },
    TransformInfo {
        name: ConvertLabels::NAME,
        doc: ConvertLabels::DOC,
        fields: ConvertLabels::FIELDS,
        random: false,
    },
    TransformInfo {
        name: Spacing::NAME,
        doc: Spacing::DOC,
        fields: Spacing::FIELDS,
        random: false,
    },
    TransformInfo {
        name: Orientation::NAME,
        doc: Orientation::DOC,
        fields: Orientation::FIELDS,
        random: false,
    },
    TransformInfo {
        name: RandSpatialCrop::NAME,
        doc: RandSpatialCrop::DOC,
        fields: RandSpatialCrop::FIELDS,
        random: true,
    },
    TransformInfo {
        name: RandFlip::NAME,
        doc: RandFlip::DOC,
        fields: RandFlip::FIELDS,
        random: true,
    },
    TransformInfo {
        name: NormalizeIntensity::NAME,
        doc: NormalizeIntensity::DOC,
        fields: NormalizeIntensity::FIELDS,
        random: false,
    },
    TransformInfo {
        name: RandScaleIntensity::NAME,
        doc: RandScaleIntensity::DOC,
        fields: RandScaleIntensity::FIELDS,
        random: true,
    },
    TransformInfo {
        name: RandShiftIntensity::NAME,
        doc: RandShiftIntensity::DOC,
        fields: RandShiftIntensity::FIELDS,
        random: true,
    },
];

/// The transform of that YAML name.
pub fn info(name: &str) -> Option<&'static TransformInfo> {
    TRANSFORMS.iter().find(|t| t.name == name)
}

/// JSON Schema of one item of a `transforms:` list: a bare name (transforms without required
/// fields) or a one-key mapping of the name to its fields.
pub fn item_schema() -> Json {
    let bare: Vec<Json> = TRANSFORMS
        .iter()
        .filter(|t| t.takes_bare_name())
        .map(|t| json!({ "const": t.name, "description": t.doc }))
        .collect();
    let mut alternatives = vec![json!({ "oneOf": bare })];
    for t in TRANSFORMS {
        let properties: serde_json::Map<String, Json> = t
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.json_schema()))
            .collect();
        let required: Vec<&str> = t
            .fields
            .iter()
            .filter(|f| f.is_required())
            .map(|f| f.name)
            .collect();
        let mut fields = json!({
            "description": t.doc,
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if required.is_empty() {
            fields["type"] = json!(["object", "null"]);
        } else {
            fields["required"] = json!(required);
        }
        alternatives.push(json!({
            "type": "object",
            "description": t.doc,
            "properties": { t.name: fields },
            "required": [t.name],
            "additionalProperties": false,
        }));
    }
    json!({
        "description": "a transform: its name, or a one-key mapping of its name to its fields",
        "anyOf": alternatives,
    })
}

/// JSON Schema of a `transforms:` list.
pub fn list_schema() -> Json {
    json!({
        "type": "array",
        "minItems": 1,
        "items": item_schema(),
    })
}

/// The reference table of every transform (docs/workflow.md), in markdown: one row per transform,
/// its fields one per line.
pub fn markdown_table() -> String {
    let mut out = String::from("| transform | fields | what (MONAI equivalent) |\n|---|---|---|\n");
    for t in TRANSFORMS {
        let fields = if t.fields.is_empty() {
            "none".to_string()
        } else {
            t.fields
                .iter()
                .map(|f| {
                    let when = f
                        .default
                        .map_or("required".to_string(), |d| format!("default {d}"));
                    format!("`{}` ({when}): {} — {}", f.name, f.ty, f.doc)
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let random = if t.random { " Random." } else { "" };
        out.push_str(&format!(
            "| `{}` | {fields} | {}.{random} |\n",
            t.name,
            capitalize(t.doc)
        ));
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The strings a schema names (`enum`, `const`), for did-you-mean on a misspelled value.
pub(crate) fn names_in(schema: &Json) -> Vec<String> {
    let mut out = Vec::new();
    collect_names(schema, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect_names(schema: &Json, out: &mut Vec<String>) {
    match schema {
        Json::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("enum", Json::Array(values)) => {
                        out.extend(values.iter().filter_map(Json::as_str).map(str::to_string))
                    }
                    ("const", Json::String(s)) => out.push(s.clone()),
                    _ => collect_names(v, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| collect_names(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::{
        InterpMode, LabelConvention, Range, SpacingModes, TRANSFORM_NAMES, TransformSpec,
    };

    /// One instance of every transform, every field set.
    fn one_of_each() -> Vec<TransformSpec> {
        let range = Range { lo: -0.1, hi: 0.1 };
        vec![
            TransformSpec::Load(Load::default()),
            TransformSpec::EnsureChannelFirst(EnsureChannelFirst::default()),
            TransformSpec::ConvertLabels(ConvertLabels {
                labels: LabelConvention::Brats,
            }),
            TransformSpec::Spacing(Spacing {
                pixdim: [1.5, 1.5, 2.0],
                mode: SpacingModes {
                    image: InterpMode::Bilinear,
                    label: InterpMode::Nearest,
                },
            }),
            TransformSpec::Orientation(Orientation::default()),
            TransformSpec::RandSpatialCrop(RandSpatialCrop { roi: [8, 8, 8] }),
            TransformSpec::RandFlip(RandFlip {
                prob: 0.5,
                axis: Some(vec![0]),
            }),
            TransformSpec::NormalizeIntensity(NormalizeIntensity::default()),
            TransformSpec::RandScaleIntensity(RandScaleIntensity {
                factors: range,
                prob: 0.5,
            }),
            TransformSpec::RandShiftIntensity(RandShiftIntensity {
                offsets: range,
                prob: 0.5,
            }),
        ]
    }

    /// The table lists each transform's serialized fields, no more, no fewer, and its random flag.
    #[test]
    fn tables_match_the_structs() {
        let specs = one_of_each();
        assert_eq!(specs.len(), TRANSFORMS.len());
        let names: Vec<&str> = TRANSFORMS.iter().map(|t| t.name).collect();
        assert_eq!(names, TRANSFORM_NAMES);
        for (spec, t) in specs.iter().zip(TRANSFORMS) {
            assert_eq!(spec.name(), t.name);
            assert_eq!(spec.is_random(), t.random, "{}", t.name);
            let v = serde_json::to_value(spec).unwrap();
            let fields: Vec<&str> = v[t.name]
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let mut table: Vec<&str> = t.fields.iter().map(|f| f.name).collect();
            table.sort();
            assert_eq!(fields, table, "fields of `{}`", t.name);
            for f in t.fields {
                serde_json::from_str::<Json>(f.schema)
                    .unwrap_or_else(|e| panic!("{}.{}: schema is not JSON: {e}", t.name, f.name));
            }
            // A bare name parses exactly when the table says it may.
            assert_eq!(
                TransformSpec::from_name(t.name).is_ok(),
                t.takes_bare_name(),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn names_for_suggestions() {
        let mode = Spacing::FIELDS.iter().find(|f| f.name == "mode").unwrap();
        let schema: Json = serde_json::from_str(mode.schema).unwrap();
        assert_eq!(names_in(&schema), ["bilinear", "nearest"]);
    }

    #[test]
    fn every_transform_has_a_table_row() {
        let table = markdown_table();
        for t in TRANSFORMS {
            assert!(table.contains(&format!("| `{}` |", t.name)), "{table}");
        }
        assert!(
            table.contains("`pixdim` (required): 3 numbers > 0 — "),
            "{table}"
        );
    }
}
