//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Why our own tree rather than serde: validation must report *every* problem at once (serde stops at
//! the first), must reject duplicate keys, and must point at the offending key or value. The tree is
//! built from saphyr-parser's event stream, which carries exact positions; aliases are expanded.

use crate::diag::{Diagnostics, Span};
use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// What one YAML file may hold. A workflow is a few kilobytes and nests about 8 levels; a generated
/// one with 100,000 steps is about 10 MiB and 1.2 million values. Past these bounds the file is refused
/// with a positioned message rather than parsed into unbounded memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of source text.
    pub max_bytes: usize,
    /// Lists and mappings inside each other, the outermost counting as 1.
    pub max_depth: usize,
    /// Uses of aliases (`*name`).
    pub max_aliases: usize,
    /// Values (scalars, lists, mappings, mapping keys) built, aliases expanded.
    pub max_nodes: usize,
    /// Bytes of scalar and key text built, aliases expanded.
    pub max_text: usize,
}

/// The limits `parse` applies.
pub const LIMITS: Limits = Limits {
    max_bytes: 16 << 20,
    max_depth: 64,
    max_aliases: 100_000,
    max_nodes: 1_500_000,
    max_text: 32 << 20,
};

/// Help for a `<<` key: YAML 1.1 merge keys are not part of YAML 1.2, which this parser reads, so
/// `<<` is an ordinary (and unknown) key.
pub const MERGE_KEY_HELP: &str = "merge keys (`<<`) are not supported: write the keys out, or alias a whole value (`with: *common`)";

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

    /// Removes a mapping's first entry named `key` and returns its value.
    pub fn take(&mut self, key: &str) -> Option<Node> {
        let Value::Map(entries) = &mut self.value else {
            return None;
        };
        let i = entries.iter().position(|(k, _)| k.name == key)?;
        Some(entries.remove(i).1)
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

/// Reads a YAML file, at most one byte past `LIMITS.max_bytes`: a larger file (or a device that never
/// ends) is then refused by `decode` without being read whole.
pub fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let limit = LIMITS.max_bytes as u64 + 1;
    // Sized from the file's length, so a big file is not copied as its buffer doubles.
    let size = file.metadata().map_or(0, |m| m.len().min(limit));
    let mut bytes = Vec::with_capacity(size as usize + 1);
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A file's bytes as text. Past `LIMITS.max_bytes`, or not UTF-8, it is refused with a position.
pub fn decode<'b>(bytes: &'b [u8], diags: &mut Diagnostics) -> Option<&'b str> {
    if bytes.len() > LIMITS.max_bytes {
        too_large(&LIMITS, diags);
        return None;
    }
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        diags.error(Span::new(1, 1), "the file is UTF-16 text; save it as UTF-8");
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) => {
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            let line = good.matches('\n').count() + 1;
            let col = good.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            diags.error(
                Span::new(line, col),
                format!(
                    "the file is not UTF-8 text (byte 0x{:02X} here); save it as UTF-8",
                    bytes[e.valid_up_to()]
                ),
            );
            None
        }
    }
}

fn too_large(limits: &Limits, diags: &mut Diagnostics) {
    diags.error(
        Span::new(1, 1),
        format!(
            "the file is larger than {}, the most wf reads",
            mib(limits.max_bytes)
        ),
    );
}

fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Parses one YAML document within `LIMITS`. Syntax errors, duplicate keys, non-string keys and
/// limits exceeded go to `diags`; `None` when no tree could be built.
pub fn parse(source: &str, diags: &mut Diagnostics) -> Option<Node> {
    parse_with(source, &LIMITS, diags)
}

/// `parse` within other limits.
pub fn parse_with(source: &str, limits: &Limits, diags: &mut Diagnostics) -> Option<Node> {
    if source.len() > limits.max_bytes {
        too_large(limits, diags);
        return None;
    }
    let mut builder = Builder {
        source,
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        docs: 0,
        aliases: 0,
        built: Stats::default(),
    };
    for item in Parser::new_from_str(source) {
        match item {
            Ok((event, span)) => {
                if let Err((at, msg)) = builder.event(event, span) {
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
    let Some(root) = builder.root else {
        let msg = if source.trim().is_empty() {
            "the file is empty: it holds no YAML document"
        } else {
            "the file holds only comments: it has no YAML document"
        };
        diags.error(Span::new(1, 1), msg);
        return None;
    };
    check_keys(&root, diags);
    Some(root)
}

/// Reports duplicate and non-string keys everywhere in the tree.
fn check_keys(node: &Node, diags: &mut Diagnostics) {
    match &node.value {
        Value::Map(entries) => {
            // A workflow's `steps:` may hold 100,000 keys: a big mapping looks earlier keys up by
            // name; the many small ones scan.
            let mut first: HashMap<&str, Span> = HashMap::new();
            for (i, (k, v)) in entries.iter().enumerate() {
                let earlier = if entries.len() > 8 {
                    first.get(k.name.as_str()).copied()
                } else {
                    entries[..i]
                        .iter()
                        .find(|(p, _)| p.name == k.name)
                        .map(|(p, _)| p.span)
                };
                match earlier {
                    Some(at) => diags.error(
                        k.span,
                        format!(
                            "duplicate key `{}` (first defined at {}:{})",
                            k.name, at.line, at.col
                        ),
                    ),
                    None if entries.len() > 8 => {
                        first.insert(&k.name, k.span);
                    }
                    None => {}
                }
                check_keys(v, diags);
            }
        }
        Value::Seq(items) => items.iter().for_each(|n| check_keys(n, diags)),
        Value::Scalar { .. } => {}
    }
}

/// What a subtree costs: its values (keys included), their text, and how deep its collections nest
/// (0 for a scalar). An alias copies its anchor's subtree, so it costs the same again.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    nodes: usize,
    text: usize,
    height: usize,
}

impl Stats {
    fn add(&mut self, child: Stats) {
        self.nodes = self.nodes.saturating_add(child.nodes);
        self.text = self.text.saturating_add(child.text);
        self.height = self.height.max(child.height + 1);
    }
}

enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
        stats: Stats,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        pending: Option<Key>,
        stats: Stats,
    },
}

struct Builder<'s> {
    source: &'s str,
    limits: &'s Limits,
    stack: Vec<Frame>,
    /// Anchor id → the anchored subtree and its cost.
    anchors: HashMap<usize, (Node, Stats)>,
    root: Option<Node>,
    docs: usize,
    aliases: usize,
    /// Everything built so far, anchors' copies and expanded aliases included.
    built: Stats,
}

type Refusal = (Span, String);

impl Builder<'_> {
    fn event(&mut self, event: Event<'_>, span: saphyr_parser::Span) -> Result<(), Refusal> {
        let at = Span::new(span.start.line(), span.start.col() + 1);
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
                self.aliases += 1;
                if self.aliases > self.limits.max_aliases {
                    return Err((
                        at,
                        format!(
                            "more than {} aliases (`*name`), the most wf expands",
                            self.limits.max_aliases
                        ),
                    ));
                }
                let stats = self
                    .anchors
                    .get(&id)
                    .map(|(_, stats)| *stats)
                    .ok_or((at, "alias refers to an unknown anchor".to_string()))?;
                if self.stack.len() + stats.height > self.limits.max_depth {
                    return Err((
                        at,
                        format!(
                            "alias `{}` nests lists and mappings more than {} levels deep, the most wf accepts",
                            self.alias_name(span),
                            self.limits.max_depth
                        ),
                    ));
                }
                // Checked before the copy is made: the copy is what a billion-laughs file multiplies.
                self.charge(stats, at, Some(span))?;
                let node = Node {
                    span: at,
                    value: self.anchors[&id].0.value.clone(),
                };
                self.push(node, 0, stats)
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let stats = Stats {
                    nodes: 1,
                    text: text.len(),
                    height: 0,
                };
                self.charge(stats, at, None)?;
                let quoted = !matches!(style, ScalarStyle::Plain);
                // A copy of exact size: the scanner leaves room to grow in each string, and a big
                // file keeps millions of them.
                let text = String::from(&*text);
                let node = Node {
                    span: at,
                    value: Value::Scalar { text, quoted },
                };
                self.push(node, anchor, stats)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= self.limits.max_depth {
                    return Err((
                        at,
                        format!(
                            "lists and mappings are nested more than {} levels deep, the most wf accepts",
                            self.limits.max_depth
                        ),
                    ));
                }
                let stats = Stats {
                    nodes: 1,
                    text: 0,
                    height: 1,
                };
                self.charge(stats, at, None)?;
                self.stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq {
                        span: at,
                        anchor,
                        items: Vec::new(),
                        stats,
                    },
                    _ => Frame::Map {
                        span: at,
                        anchor,
                        entries: Vec::new(),
                        pending: None,
                        stats,
                    },
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                // Exact sizes: a big file holds millions of small collections.
                let (node, anchor, stats) = match self.stack.pop() {
                    Some(Frame::Seq {
                        span,
                        anchor,
                        mut items,
                        stats,
                    }) => {
                        items.shrink_to_fit();
                        let value = Value::Seq(items);
                        (Node { span, value }, anchor, stats)
                    }
                    Some(Frame::Map {
                        span,
                        anchor,
                        mut entries,
                        stats,
                        ..
                    }) => {
                        entries.shrink_to_fit();
                        let value = Value::Map(entries);
                        (Node { span, value }, anchor, stats)
                    }
                    None => return Err((at, "unbalanced YAML structure".into())),
                };
                self.push(node, anchor, stats)
            }
        }
    }

    /// Counts `stats` more built, refusing past the limits; `alias` names the alias being expanded.
    fn charge(
        &mut self,
        stats: Stats,
        at: Span,
        alias: Option<saphyr_parser::Span>,
    ) -> Result<(), Refusal> {
        self.built.nodes = self.built.nodes.saturating_add(stats.nodes);
        self.built.text = self.built.text.saturating_add(stats.text);
        // Named only on failure: finding the name walks the source.
        let what = |span| format!("alias `{}` expands ", self.alias_name(span));
        if self.built.nodes > self.limits.max_nodes {
            let msg = match alias {
                Some(span) => format!(
                    "{}the file past {} values",
                    what(span),
                    self.limits.max_nodes
                ),
                None => format!("the file holds more than {} values", self.limits.max_nodes),
            };
            return Err((
                at,
                format!("{msg} (scalars, lists, mappings), the most wf builds"),
            ));
        }
        if self.built.text > self.limits.max_text {
            let msg = match alias {
                Some(span) => format!(
                    "{}the text of the file past {}",
                    what(span),
                    mib(self.limits.max_text)
                ),
                None => format!(
                    "the file holds more than {} of text",
                    mib(self.limits.max_text)
                ),
            };
            return Err((at, format!("{msg}, the most wf builds")));
        }
        Ok(())
    }

    /// `*name` as written at an alias event (for messages only).
    fn alias_name(&self, span: saphyr_parser::Span) -> String {
        let (start, end) = (span.start.index(), span.end.index());
        let text: String = self
            .source
            .chars()
            .skip(start)
            .take(end.saturating_sub(start).min(200))
            .collect();
        if text.starts_with('*') {
            text
        } else {
            "*".to_string()
        }
    }

    fn push(&mut self, node: Node, anchor: usize, stats: Stats) -> Result<(), Refusal> {
        if anchor != 0 {
            // The anchor keeps its own copy, so that copy counts too.
            self.charge(stats, node.span, None)?;
            self.anchors.insert(anchor, (node.clone(), stats));
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq {
                items, stats: s, ..
            }) => {
                s.add(stats);
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries,
                pending,
                stats: s,
                ..
            }) => {
                s.add(stats);
                match pending.take() {
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
                }
            }
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

    fn parse_within(src: &str, limits: Limits) -> Vec<String> {
        let mut d = Diagnostics::new(Path::new("t.yaml"));
        parse_with(src, &limits, &mut d);
        d.into_sorted().iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn limits_count_expanded_aliases_and_anchored_copies() {
        let small = Limits {
            max_nodes: 21,
            ..LIMITS
        };
        // The root, keys a to c, the list and its 3 values, the anchor's copy of the list (4) and
        // two aliases of it (4 each): 20 values; key `d` makes 21 and its alias 25.
        let src = "a: &x [1, 2, 3]\nb: *x\nc: *x\n";
        assert_eq!(parse_within(src, small), Vec::<String>::new());
        assert_eq!(
            parse_within(&format!("{src}d: *x\n"), small),
            [
                "t.yaml:4:4: alias `*x` expands the file past 21 values (scalars, lists, mappings), the most wf builds"
            ]
        );
        let text = Limits {
            max_text: 10,
            ..LIMITS
        };
        assert_eq!(
            parse_within("a: &x abcd\nb: *x\n", text),
            [
                "t.yaml:2:4: alias `*x` expands the text of the file past 10 bytes, the most wf builds"
            ]
        );
        let shallow = Limits {
            max_depth: 2,
            ..LIMITS
        };
        assert_eq!(parse_within("a: [1]\n", shallow), Vec::<String>::new());
        assert_eq!(
            parse_within("a: [[1]]\n", shallow),
            [
                "t.yaml:1:5: lists and mappings are nested more than 2 levels deep, the most wf accepts"
            ]
        );
    }

    #[test]
    fn empty_and_comment_only_files_say_so() {
        assert_eq!(
            parse_ok("").1,
            ["t.yaml:1:1: the file is empty: it holds no YAML document"]
        );
        assert_eq!(
            parse_ok("  \n\n").1,
            ["t.yaml:1:1: the file is empty: it holds no YAML document"]
        );
        assert_eq!(
            parse_ok("# nothing\n").1,
            ["t.yaml:1:1: the file holds only comments: it has no YAML document"]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_placed() {
        let mut d = Diagnostics::new(Path::new("t.yaml"));
        assert_eq!(decode(b"a: 1\nb: \xc3\xa9\xff\n", &mut d), None);
        assert_eq!(
            d.into_sorted()[0].to_string(),
            "t.yaml:2:5: the file is not UTF-8 text (byte 0xFF here); save it as UTF-8"
        );
        let mut d = Diagnostics::new(Path::new("t.yaml"));
        assert_eq!(decode(b"\xff\xfea\x00", &mut d), None);
        assert_eq!(
            d.into_sorted()[0].to_string(),
            "t.yaml:1:1: the file is UTF-16 text; save it as UTF-8"
        );
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
