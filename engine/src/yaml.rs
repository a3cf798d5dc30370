//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Why our own tree rather than serde: validation must report *every* problem at once (serde stops at
//! the first), must reject duplicate keys, and must point at the offending key or value. The tree is
//! built from saphyr-parser's event stream, which carries exact positions; aliases are expanded.

use crate::diag::{Diagnostics, Span};
use saphyr_parser::{Event, Parser, ScalarStyle};

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar as written. `quoted` scalars are always strings; plain ones are typed on demand.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys are strings (non-string keys are reported and dropped); order is the file's order.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

/// The YAML core-schema reading of a plain scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Plain<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Node {
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The scalar typed by the YAML 1.2 core schema (quoted scalars are strings).
    pub fn plain(&self) -> Option<Plain<'_>> {
        match &self.value {
            Value::Scalar { text, quoted: true } => Some(Plain::Str(text)),
            Value::Scalar {
                text,
                quoted: false,
            } => Some(classify(text)),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.plain(), Some(Plain::Null))
    }

    /// Any scalar's text (numbers included), for places that take a name or a path.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A string scalar (quoted, or plain and not null/bool/number).
    pub fn as_str(&self) -> Option<&str> {
        match self.plain()? {
            Plain::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short description of what this node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Map(_) => "a mapping".into(),
            Value::Seq(_) => "a list".into(),
            Value::Scalar { .. } => match self.plain() {
                Some(Plain::Null) => "nothing (null)".into(),
                Some(Plain::Bool(b)) => format!("boolean `{b}`"),
                Some(Plain::Int(i)) => format!("integer `{i}`"),
                Some(Plain::Float(x)) => format!("number `{x}`"),
                Some(Plain::Str(s)) => format!("string \"{}\"", truncate(s, 40)),
                None => unreachable!("scalar nodes always classify"),
            },
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn classify(text: &str) -> Plain<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Plain::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Plain::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Plain::Int(i);
    }
    // Core schema float: [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let looks_float = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_float && let Ok(x) = text.parse::<f64>() {
        return Plain::Float(x);
    }
    Plain::Str(text)
}

/// Parses one YAML document. Syntax errors, duplicate keys and non-string keys go to `diags`;
/// `None` only when the document could not be parsed at all.
pub fn parse(source: &str, diags: &mut Diagnostics) -> Option<Node> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: Vec::new(),
        root: None,
        docs: 0,
    };
    for item in Parser::new_from_str(source) {
        match item {
            Ok((event, span)) => {
                let at = Span::new(span.start.line(), span.start.col() + 1);
                if let Err((at, msg)) = builder.event(event, at) {
                    diags.error(at, msg);
                    return None;
                }
            }
            Err(e) => {
                let m = e.marker();
                diags.error(
                    Span::new(m.line(), m.col() + 1),
                    format!("invalid YAML: {}", e.info()),
                );
                return None;
            }
        }
    }
    let root = builder.root?;
    check_keys(&root, diags);
    Some(root)
}

/// Reports duplicate and non-string keys everywhere in the tree.
fn check_keys(node: &Node, diags: &mut Diagnostics) {
    match &node.value {
        Value::Map(entries) => {
            for (i, (k, v)) in entries.iter().enumerate() {
                if let Some((first, _)) = entries[..i].iter().find(|(p, _)| p.name == k.name) {
                    diags.error(
                        k.span,
                        format!(
                            "duplicate key `{}` (first defined at {}:{})",
                            k.name, first.span.line, first.span.col
                        ),
                    );
                }
                check_keys(v, diags);
            }
        }
        Value::Seq(items) => items.iter().for_each(|n| check_keys(n, diags)),
        Value::Scalar { .. } => {}
    }
}

enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        pending: Option<Key>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
    docs: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, at: Span) -> Result<(), (Span, String)> {
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.docs += 1;
                if self.docs > 1 {
                    return Err((
                        at,
                        "a workflow file holds one YAML document; found a second `---`".into(),
                    ));
                }
                Ok(())
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| Node {
                        span: at,
                        value: n.value.clone(),
                    })
                    .ok_or((at, "alias refers to an unknown anchor".to_string()))?;
                self.push(node, 0)
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let node = Node {
                    span: at,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        quoted,
                    },
                };
                self.push(node, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    span: at,
                    anchor,
                    items: Vec::new(),
                });
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    span: at,
                    anchor,
                    entries: Vec::new(),
                    pending: None,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        span,
                        anchor,
                        items,
                    }) => (
                        Node {
                            span,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        span,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            span,
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => return Err((at, "unbalanced YAML structure".into())),
                };
                self.push(node, anchor)
            }
        }
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), (Span, String)> {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries, pending, ..
            }) => match pending.take() {
                Some(key) => {
                    entries.push((key, node));
                    Ok(())
                }
                None => match node.value {
                    Value::Scalar { text, .. } => {
                        *pending = Some(Key {
                            name: text,
                            span: node.span,
                        });
                        Ok(())
                    }
                    _ => Err((
                        node.span,
                        "mapping keys must be plain names, not lists or mappings".into(),
                    )),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse_ok(src: &str) -> (Option<Node>, Vec<String>) {
        let mut d = Diagnostics::new(Path::new("t.yaml"));
        let n = parse(src, &mut d);
        (n, d.into_sorted().iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn spans_are_one_based() {
        let (n, errs) = parse_ok("a: 1\nb:\n  c: [x, 'y']\n");
        assert!(errs.is_empty());
        let n = n.unwrap();
        let b = n.get("b").unwrap();
        let c = b.get("c").unwrap();
        assert_eq!(c.span, Span::new(3, 6));
        let items = c.as_seq().unwrap();
        assert_eq!(items[1].as_str(), Some("y"));
        assert_eq!(n.as_map().unwrap()[1].0.span, Span::new(2, 1));
    }

    #[test]
    fn duplicate_keys_reported_at_second() {
        let (_, errs) = parse_ok("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            errs,
            vec!["t.yaml:3:1: duplicate key `a` (first defined at 1:1)"]
        );
    }

    #[test]
    fn core_schema() {
        assert_eq!(classify("12"), Plain::Int(12));
        assert_eq!(classify("-3"), Plain::Int(-3));
        assert_eq!(classify("1.0e-4"), Plain::Float(1.0e-4));
        assert_eq!(classify("0.5"), Plain::Float(0.5));
        assert_eq!(classify("true"), Plain::Bool(true));
        assert_eq!(classify("~"), Plain::Null);
        assert_eq!(classify("e5"), Plain::Str("e5"));
        assert_eq!(classify("1.2.3"), Plain::Str("1.2.3"));
        assert_eq!(classify("ml.c5.9xlarge"), Plain::Str("ml.c5.9xlarge"));
    }

    #[test]
    fn syntax_error_has_position() {
        let (n, errs) = parse_ok("a: [1, 2\nb: 3\n");
        assert!(n.is_none());
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("t.yaml:"), "{errs:?}");
    }

    #[test]
    fn aliases_expand() {
        let (n, errs) = parse_ok("x: &a {k: 1}\ny: *a\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            n.unwrap().get("y").unwrap().get("k").unwrap().plain(),
            Some(Plain::Int(1))
        );
    }
}
