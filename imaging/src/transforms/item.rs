//! One item of a `transforms:` list, checked so that every problem sits where it was written: the
//! item, the transform's name, a field's name, a field's value, or one entry of a list value.
//! Messages speak the reference's words ("`spacing.pixdim` expects 3 numbers > 0, found a list of
//! 2"), never serde's: serde only finds *where* a value fails, the field table ([`super::fields`])
//! says what belongs there. Callers map [`ItemError::path`] onto their own positions (the workflow's
//! YAML nodes).

use std::fmt;

use serde_json::Value as Json;

use super::TransformSpec;
use super::fields::{self, TRANSFORMS, TransformInfo};

/// One step from an item down to where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A mapping key: the transform's name, then a field's name.
    Key(String),
    /// An entry of a list value.
    Index(usize),
}

/// A name that is none of those expected (a transform, a field, a value): the caller may suggest
/// the closest.
#[derive(Debug, Clone, PartialEq)]
pub struct Unknown {
    pub got: String,
    pub expected: Vec<String>,
}

/// A problem of one list item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemError {
    /// From the item down; empty: the item itself.
    pub path: Vec<PathSeg>,
    /// Whether the last key's *name* is at fault (unknown, or a transform whose fields are
    /// missing) rather than its value.
    pub at_key: bool,
    pub message: String,
    /// A hint for when no close name is found in `unknown` (or there is none).
    pub help: Option<String>,
    pub unknown: Option<Unknown>,
}

impl ItemError {
    fn new(path: Vec<PathSeg>, at_key: bool, message: String) -> Self {
        ItemError {
            path,
            at_key,
            message,
            help: None,
            unknown: None,
        }
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

fn key(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}

/// Parses one list item (`"load"` or `{"spacing": {...}}`, as JSON) into a validated transform, or
/// says everything wrong with its shape (unknown names, missing fields), or else the first value
/// that does not fit.
pub fn parse_item(item: &Json) -> Result<TransformSpec, Vec<ItemError>> {
    let (name, fields) = match item {
        Json::String(s) => (s.as_str(), None),
        Json::Object(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            (k.as_str(), Some(v))
        }
        Json::Object(m) if m.len() > 1 => return Err(vec![several_keys(m)]),
        other => {
            return Err(vec![ItemError::new(
                Vec::new(),
                false,
                format!(
                    "a transform is a name or a one-key mapping `name: {{ fields }}`, found {}",
                    describe(other)
                ),
            )]);
        }
    };
    // A bare name is the item itself; a mapping's name is its key.
    let (name_path, in_map) = match fields {
        Some(_) => (vec![key(name)], true),
        None => (Vec::new(), false),
    };
    let Some(t) = fields::info(name) else {
        let names: Vec<String> = TRANSFORMS.iter().map(|t| t.name.to_string()).collect();
        return Err(vec![ItemError {
            help: Some(format!("known transforms: {}", names.join(", "))),
            unknown: Some(Unknown {
                got: name.to_string(),
                expected: names,
            }),
            ..ItemError::new(name_path, in_map, format!("unknown transform `{name}`"))
        }]);
    };

    let mut errors = Vec::new();
    let missing = |present: &dyn Fn(&str) -> bool| -> Vec<String> {
        t.fields
            .iter()
            .filter(|f| f.is_required() && !present(f.name))
            .map(|f| format!("`{}` ({})", f.name, f.ty))
            .collect()
    };
    match fields {
        None | Some(Json::Null) => {
            let missing = missing(&|_| false);
            if !missing.is_empty() {
                errors.push(ItemError {
                    help: Some(format!("write it as `{}`", example(t))),
                    ..ItemError::new(
                        name_path,
                        in_map,
                        format!("transform `{name}` needs {}", missing.join(" and ")),
                    )
                });
            }
        }
        Some(Json::Object(m)) => {
            for k in m.keys() {
                if t.field(k).is_some() {
                    continue;
                }
                let names: Vec<String> = t.fields.iter().map(|f| f.name.to_string()).collect();
                let (message, help) = if names.is_empty() {
                    (
                        format!("transform `{name}` takes no fields, found `{k}`"),
                        None,
                    )
                } else {
                    (
                        format!("transform `{name}` has no field `{k}`"),
                        Some(format!("its fields: {}", names.join(", "))),
                    )
                };
                errors.push(ItemError {
                    help,
                    unknown: (!names.is_empty()).then(|| Unknown {
                        got: k.clone(),
                        expected: names,
                    }),
                    ..ItemError::new(vec![key(name), key(k)], true, message)
                });
            }
            // An unknown field is most often a misspelled required one: say that only once.
            let missing = missing(&|f| m.contains_key(f));
            if errors.is_empty() && !missing.is_empty() {
                errors.push(ItemError::new(
                    vec![key(name)],
                    true,
                    format!("transform `{name}` is missing {}", missing.join(" and ")),
                ));
            }
        }
        Some(other) => errors.push(ItemError::new(
            vec![key(name)],
            false,
            format!(
                "transform `{name}` expects a mapping of its fields, found {}",
                describe(other)
            ),
        )),
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let spec = match serde_path_to_error::deserialize::<_, super::Unchecked>(item) {
        Ok(super::Unchecked(spec)) => spec,
        Err(e) => return Err(vec![value_error(t, item, &e)]),
    };
    spec.validate().map_err(|invalid| {
        vec![ItemError::new(
            vec![key(name), key(invalid.field)],
            false,
            format!("transform `{name}`: {}", invalid.reason),
        )]
    })?;
    Ok(spec)
}

/// An item with several keys: blame a key that is not a transform, else the second one.
fn several_keys(m: &serde_json::Map<String, Json>) -> ItemError {
    let first = m
        .keys()
        .find(|k| fields::info(k).is_some())
        .unwrap_or_else(|| m.keys().next().expect("several keys"));
    let other = m.keys().find(|k| *k != first).expect("several keys");
    // A field written level with its transform's name, instead of under it.
    let help = match fields::info(first).and_then(|t| t.field(other)) {
        Some(_) => format!("indent `{other}` under `{first}:` to make it a field of `{first}`"),
        None => "each transform is its own list item, starting with `- `".into(),
    };
    ItemError {
        help: Some(help),
        ..ItemError::new(
            vec![key(other)],
            true,
            format!("a list item holds one transform: `{other}` is a second key beside `{first}`"),
        )
    }
}

/// `spacing: { pixdim: … }`: the transform with its required fields.
fn example(t: &TransformInfo) -> String {
    let required: Vec<String> = t
        .fields
        .iter()
        .filter(|f| f.is_required())
        .map(|f| format!("{}: …", f.name))
        .collect();
    format!("- {}: {{ {} }}", t.name, required.join(", "))
}

/// A value serde could not take: named by the field, in the field table's words, at the value (or
/// the list entry) that does not fit.
fn value_error(
    t: &TransformInfo,
    item: &Json,
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> ItemError {
    use serde_path_to_error::Segment;
    let segments: Vec<PathSeg> = e
        .path()
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(PathSeg::Key(key.clone())),
            Segment::Seq { index } => Some(PathSeg::Index(*index)),
            _ => None,
        })
        .collect();
    let field = match segments.get(1) {
        Some(PathSeg::Key(k)) => t.field(k),
        _ => None,
    };
    let Some(field) = field else {
        // Not at a field: a shape the checks above do not know; serde's words are all there is.
        return ItemError::new(
            segments,
            false,
            format!("transform `{}`: {}", t.name, e.inner()),
        );
    };
    let value = &item[t.name][field.name];
    let mut entry = match segments.get(2) {
        Some(PathSeg::Index(i)) => Some(*i),
        _ => None,
    };
    // A misspelled name (`mode: [bilinear, nerest]`): point at it, and suggest.
    let names = fields::names_in(&field.json_schema());
    let mut unknown = None;
    if !names.is_empty() {
        fn stray<'a>(v: &'a Json, names: &[String]) -> Option<&'a str> {
            v.as_str().filter(|s| !names.iter().any(|n| n == s))
        }
        let bad = match value {
            Json::Array(entries) => entries
                .iter()
                .enumerate()
                .find_map(|(i, v)| stray(v, &names).map(|s| (Some(i), s))),
            v => stray(v, &names).map(|s| (None, s)),
        };
        if let Some((i, s)) = bad {
            entry = i;
            unknown = Some(Unknown {
                got: s.to_string(),
                expected: names,
            });
        }
    }
    let mut path = vec![key(t.name), key(field.name)];
    let what = format!("`{}.{}` expects {}", t.name, field.name, field.ty);
    let message = match entry {
        Some(i) => {
            path.push(PathSeg::Index(i));
            format!("{what}; entry {} is {}", i + 1, describe(&value[i]))
        }
        None => format!("{what}, found {}", describe(value)),
    };
    ItemError {
        unknown,
        ..ItemError::new(path, false, message)
    }
}

/// What a value is, for "expects X, found Y" (the words of the workflow's own messages).
fn describe(v: &Json) -> String {
    match v {
        Json::Null => "nothing (null)".into(),
        Json::Bool(b) => format!("boolean `{b}`"),
        Json::Number(n) if n.is_i64() || n.is_u64() => format!("integer `{n}`"),
        Json::Number(n) => format!("number `{n}`"),
        Json::String(s) if s.chars().count() > 40 => {
            format!("string \"{}…\"", s.chars().take(40).collect::<String>())
        }
        Json::String(s) => format!("string \"{s}\""),
        Json::Array(a) if a.is_empty() => "an empty list".into(),
        Json::Array(a) => format!("a list of {}", a.len()),
        Json::Object(_) => "a mapping".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(item: Json) -> Vec<ItemError> {
        parse_item(&item).expect_err(&item.to_string())
    }

    fn one(item: Json) -> ItemError {
        let mut e = errors(item);
        assert_eq!(e.len(), 1, "{e:?}");
        e.remove(0)
    }

    fn keys(path: &[&str]) -> Vec<PathSeg> {
        path.iter().map(|k| key(k)).collect()
    }

    #[test]
    fn valid_items_parse_as_the_deserializer_does() {
        for item in [
            json!("load"),
            json!({"load": null}),
            json!({"spacing": {"pixdim": [1.5, 1.5, 2], "mode": "nearest"}}),
            json!({"rand-flip": {"prob": 0.5, "axis": [0, 2]}}),
            json!({"rand-scale-intensity": {"factors": [0.9, 1.1]}}),
        ] {
            let spec = parse_item(&item).unwrap();
            assert_eq!(spec, serde_json::from_value::<TransformSpec>(item).unwrap());
        }
    }

    #[test]
    fn wrong_length_names_the_field() {
        let e = one(json!({"spacing": {"pixdim": [1.5, 2.0]}}));
        assert_eq!(
            e.message,
            "`spacing.pixdim` expects 3 numbers > 0, found a list of 2"
        );
        assert_eq!(e.path, keys(&["spacing", "pixdim"]));
        assert!(!e.at_key);
    }

    #[test]
    fn wrong_entry_points_at_the_entry() {
        let e = one(json!({"rand-spatial-crop": {"roi": [64, "x", 32]}}));
        assert_eq!(
            e.message,
            "`rand-spatial-crop.roi` expects 3 integers ≥ 1; entry 2 is string \"x\""
        );
        assert_eq!(
            e.path,
            [key("rand-spatial-crop"), key("roi"), PathSeg::Index(1)]
        );
    }

    #[test]
    fn misspelled_values_are_suggested() {
        let e = one(json!({"spacing": {"pixdim": [1, 1, 1], "mode": ["bilinear", "nerest"]}}));
        assert_eq!(e.path, [key("spacing"), key("mode"), PathSeg::Index(1)]);
        assert_eq!(e.unknown.unwrap().got, "nerest");
        let e = one(json!({"convert-labels": {"labels": "brat"}}));
        assert_eq!(
            e.message,
            "`convert-labels.labels` expects `msd`, `brats` or `brats-monai`, found string \"brat\""
        );
        assert_eq!(e.unknown.unwrap().expected, ["brats", "brats-monai", "msd"]);
    }

    #[test]
    fn unknown_names_sit_on_their_key() {
        let e = one(json!({"spacng": {"pixdim": [1, 1, 1]}}));
        assert_eq!(e.message, "unknown transform `spacng`");
        assert_eq!((e.path, e.at_key), (keys(&["spacng"]), true));
        assert_eq!(e.unknown.unwrap().got, "spacng");
        let e = one(json!("blur"));
        assert!(e.path.is_empty());
        let e = one(json!({"spacing": {"pixdm": [1, 1, 1]}}));
        assert_eq!(e.message, "transform `spacing` has no field `pixdm`");
        assert_eq!((e.path, e.at_key), (keys(&["spacing", "pixdm"]), true));
        let e = one(json!({"load": {"path": "x"}}));
        assert_eq!(e.message, "transform `load` takes no fields, found `path`");
    }

    #[test]
    fn every_shape_problem_at_once() {
        let e = errors(json!({"spacing": {"pixdm": [1, 1, 1], "moed": "nearest"}}));
        let messages: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "transform `spacing` has no field `moed`",
                "transform `spacing` has no field `pixdm`",
            ]
        );
        let e = one(json!({"spacing": {"mode": "nearest"}}));
        assert_eq!(
            (e.path, e.at_key, e.message.as_str()),
            (
                keys(&["spacing"]),
                true,
                "transform `spacing` is missing `pixdim` (3 numbers > 0)"
            )
        );
    }

    #[test]
    fn missing_fields_and_bad_shapes() {
        let e = one(json!("spacing"));
        assert_eq!(
            e.message,
            "transform `spacing` needs `pixdim` (3 numbers > 0)"
        );
        assert_eq!(
            e.help.as_deref(),
            Some("write it as `- spacing: { pixdim: … }`")
        );
        let e = one(json!({"rand-flip": 0.5}));
        assert_eq!(
            e.message,
            "transform `rand-flip` expects a mapping of its fields, found number `0.5`"
        );
        let e = one(json!({"spacing": {"pixdim": [1, 1, 1]}, "orientation": null}));
        assert_eq!(
            e.path,
            keys(&["spacing"]),
            "of two transforms, the later by name"
        );
        let e = one(json!({"spacing": {"pixdim": [1, 1, 1]}, "x": 1}));
        assert_eq!(
            (e.path, e.message.as_str()),
            (
                keys(&["x"]),
                "a list item holds one transform: `x` is a second key beside `spacing`"
            )
        );
        let e = one(json!({"rand-flip": null, "prob": 0.5}));
        assert_eq!(
            e.help.as_deref(),
            Some("indent `prob` under `rand-flip:` to make it a field of `rand-flip`")
        );
        let e = one(json!(3));
        assert!(e.message.ends_with("found integer `3`"), "{}", e.message);
    }

    #[test]
    fn range_checks_sit_on_the_field() {
        let e = one(json!({"rand-flip": {"prob": 2.0}}));
        assert_eq!(e.message, "transform `rand-flip`: prob 2 is outside [0, 1]");
        assert_eq!(e.path, keys(&["rand-flip", "prob"]));
        let e = one(json!({"orientation": {"axcodes": "RRS"}}));
        assert_eq!(e.path, keys(&["orientation", "axcodes"]));
    }
}
