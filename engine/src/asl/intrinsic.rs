//! ASL intrinsic-function text: quoting static strings, and the cache key as a `States.Hash` expression.
//!
//! ASL wants `'`, `{`, `}` and `\` in an intrinsic string literal escaped with a backslash and has no
//! escape for a line break; interpreters disagree on the rest (asl-validator 4.0.0 rejects `\\`, moto
//! keeps `\{` as two characters and feeds the template to Python's `str.format`). So our literals hold
//! no escapes at all: each of these characters is a `{}` placeholder fed from a constant the first state
//! of every compiled machine stores (`$.nl`, `$.bs`, `$.lb`, `$.rb`, `$.sq`; docs/cloud.md §3). The
//! formatted value is the same under every reading of the rules.

use crate::key::KeyComponents;

/// The characters that never appear in a literal, and the payload path holding each.
pub const CONSTANTS: [(char, &str, &str); 5] = [
    ('\n', "nl", "$.nl"),
    ('\\', "bs", "$.bs"),
    ('{', "lb", "$.lb"),
    ('}', "rb", "$.rb"),
    ('\'', "sq", "$.sq"),
];

/// The payload path standing for `c` in a literal, if `c` may not appear there.
fn constant(c: char) -> Option<&'static str> {
    CONSTANTS
        .iter()
        .find(|(k, _, _)| *k == c)
        .map(|(_, _, p)| *p)
}

/// The `Init` state's constants: `{"nl": "\n", "bs": "\\", ...}`.
pub fn constants_json() -> serde_json::Map<String, serde_json::Value> {
    CONSTANTS
        .iter()
        .map(|(c, name, _)| (name.to_string(), serde_json::Value::String(c.to_string())))
        .collect()
}

/// An intrinsic expression whose value is the static string `s`: `'s'`, or a `States.Format` feeding
/// the characters a literal may not hold from the constants.
pub fn quote(s: &str) -> String {
    if s.chars().any(|c| constant(c).is_some()) {
        format_n(&[Piece::Lit(s)])
    } else {
        format!("'{s}'")
    }
}

/// `States.Format('<prefix>{}<suffix>', <path>)`: a static text around one dynamic value.
pub fn format1(prefix: &str, path: &str, suffix: &str) -> String {
    format_n(&[Piece::Lit(prefix), Piece::Arg(path), Piece::Lit(suffix)])
}

/// A piece of a `States.Format` call: static text or a payload path (or nested intrinsic).
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    Lit(&'a str),
    Arg(&'a str),
}

/// `States.Format` over static and dynamic pieces.
pub fn format_n(pieces: &[Piece<'_>]) -> String {
    let mut lit = String::new();
    let mut args: Vec<&str> = Vec::new();
    for p in pieces {
        match p {
            Piece::Lit(s) => {
                for c in s.chars() {
                    match constant(c) {
                        Some(path) => {
                            lit.push_str("{}");
                            args.push(path);
                        }
                        None => lit.push(c),
                    }
                }
            }
            Piece::Arg(a) => {
                lit.push_str("{}");
                args.push(a);
            }
        }
    }
    if args.is_empty() {
        format!("States.Format('{lit}')")
    } else {
        format!("States.Format('{lit}', {})", args.join(", "))
    }
}

/// One part of a key's canonical string.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    /// The artifact digest of an input slot.
    Input(String),
}

/// The canonical key string of a step with its input digests left open: what the state machine
/// formats and hashes to get the same key a local run gets (docs/cloud.md §3).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTemplate {
    segs: Vec<Seg>,
    /// Length of the formatted string (every digest is 64 hex characters).
    formatted_len: usize,
}

impl KeyTemplate {
    /// Built from the components a local run would hash; the input digests in `kc` are ignored.
    pub fn new(kc: &KeyComponents) -> KeyTemplate {
        let canonical = kc.canonical_string();
        let mut segs = Vec::new();
        // Params are canonical JSON (no raw line breaks), kinds and slots are names, so each line is
        // one component and `input:` lines are exactly the input digests, in slot order.
        for (i, line) in canonical.split('\n').enumerate() {
            if i > 0 {
                segs.push(Seg::Lit("\n".into()));
            }
            let input = line.strip_prefix("input:").and_then(|rest| {
                let (slot, digest) = rest.rsplit_once(':')?;
                kc.inputs
                    .get(slot)
                    .filter(|d| d.to_hex() == digest)
                    .map(|_| slot)
            });
            match input {
                Some(slot) => {
                    segs.push(Seg::Lit(format!("input:{slot}:")));
                    segs.push(Seg::Input(slot.to_string()));
                }
                None => segs.push(Seg::Lit(line.to_string())),
            }
        }
        KeyTemplate {
            segs,
            formatted_len: canonical.chars().count(),
        }
    }

    /// Characters of the formatted string (the input of `States.Hash`, limited to 10,000).
    pub fn formatted_len(&self) -> usize {
        self.formatted_len
    }

    /// The input slots in the order their digests are formatted in.
    pub fn slots(&self) -> Vec<&str> {
        self.segs
            .iter()
            .filter_map(|s| match s {
                Seg::Input(slot) => Some(slot.as_str()),
                Seg::Lit(_) => None,
            })
            .collect()
    }

    /// The canonical string with `{}` for each input digest, unescaped (for messages and docs).
    pub fn text(&self) -> String {
        self.segs
            .iter()
            .map(|s| match s {
                Seg::Lit(t) => t.as_str(),
                Seg::Input(_) => "{}",
            })
            .collect()
    }

    /// The canonical string with each input digest filled in from `digest_of(slot)`.
    pub fn fill(&self, digest_of: impl Fn(&str) -> String) -> String {
        self.segs
            .iter()
            .map(|s| match s {
                Seg::Lit(t) => t.clone(),
                Seg::Input(slot) => digest_of(slot),
            })
            .collect()
    }

    /// `States.Hash(States.Format(...), 'SHA-256')`, reading each input's digest from `path_of(slot)`.
    pub fn hash_expr(&self, path_of: impl Fn(&str) -> String) -> String {
        let paths: Vec<(usize, String)> = self
            .segs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Seg::Input(slot) => Some((i, path_of(slot))),
                Seg::Lit(_) => None,
            })
            .collect();
        let pieces: Vec<Piece<'_>> = self
            .segs
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Seg::Lit(t) => Piece::Lit(t),
                Seg::Input(_) => Piece::Arg(
                    &paths
                        .iter()
                        .find(|(j, _)| *j == i)
                        .expect("every input has a path")
                        .1,
                ),
            })
            .collect();
        format!("States.Hash({}, 'SHA-256')", format_n(&pieces))
    }
}

/// A small evaluator of the intrinsics this compiler emits (`States.Format` over string literals and
/// `$.a.b` paths, `States.Hash(..., 'SHA-256')`), following the ASL escaping rules. Tests use it to
/// check that what the state machine computes is what a local run computes.
pub mod eval {
    use serde_json::Value as Json;

    #[derive(Debug, PartialEq)]
    enum Tok {
        Char(char),
        Placeholder,
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
        text: &'a str,
    }

    impl<'a> P<'a> {
        fn ws(&mut self) {
            while self.i < self.s.len() && self.s[self.i] == b' ' {
                self.i += 1;
            }
        }
        fn eat(&mut self, t: &str) -> Result<(), String> {
            self.ws();
            if self.text[self.i..].starts_with(t) {
                self.i += t.len();
                Ok(())
            } else {
                Err(format!(
                    "expected `{t}` at {}: {}",
                    self.i,
                    &self.text[self.i..]
                ))
            }
        }
        fn literal(&mut self) -> Result<Vec<Tok>, String> {
            self.eat("'")?;
            let mut out = Vec::new();
            let mut chars = self.text[self.i..].char_indices();
            while let Some((off, c)) = chars.next() {
                match c {
                    '\'' => {
                        self.i += off + 1;
                        return Ok(out);
                    }
                    '\\' => {
                        let (_, e) = chars.next().ok_or("dangling escape")?;
                        if !matches!(e, '\'' | '{' | '}' | '\\') {
                            return Err(format!("invalid escape `\\{e}`"));
                        }
                        out.push(Tok::Char(e));
                    }
                    '{' => match chars.next() {
                        Some((_, '}')) => out.push(Tok::Placeholder),
                        _ => return Err("unescaped `{` not followed by `}`".into()),
                    },
                    '}' => return Err("unescaped `}`".into()),
                    '\n' => return Err("raw line break in a literal".into()),
                    c => out.push(Tok::Char(c)),
                }
            }
            Err("unterminated literal".into())
        }
        fn value(&mut self, payload: &Json) -> Result<String, String> {
            self.ws();
            let rest = &self.text[self.i..];
            if rest.starts_with('\'') {
                let toks = self.literal()?;
                if toks.contains(&Tok::Placeholder) {
                    return Err("placeholder outside States.Format".into());
                }
                return Ok(toks
                    .into_iter()
                    .map(|t| match t {
                        Tok::Char(c) => c,
                        Tok::Placeholder => unreachable!(),
                    })
                    .collect());
            }
            if rest.starts_with("States.Format(") {
                self.i += "States.Format(".len();
                let toks = self.literal()?;
                let mut args = Vec::new();
                loop {
                    self.ws();
                    if self.text[self.i..].starts_with(')') {
                        self.i += 1;
                        break;
                    }
                    self.eat(",")?;
                    args.push(self.value(payload)?);
                }
                let mut args = args.into_iter();
                let mut out = String::new();
                for t in toks {
                    match t {
                        Tok::Char(c) => out.push(c),
                        Tok::Placeholder => out.push_str(&args.next().ok_or("too few arguments")?),
                    }
                }
                if args.next().is_some() {
                    return Err("too many arguments".into());
                }
                return Ok(out);
            }
            if rest.starts_with("States.Hash(") {
                self.i += "States.Hash(".len();
                let data = self.value(payload)?;
                self.eat(",")?;
                let alg = self.value(payload)?;
                self.eat(")")?;
                if alg != "SHA-256" {
                    return Err(format!("unsupported hash {alg}"));
                }
                if data.chars().count() > 10_000 {
                    return Err("States.Hash input over 10,000 characters".into());
                }
                use sha2::Digest as _;
                return Ok(hex::encode(sha2::Sha256::digest(data.as_bytes())));
            }
            if rest.starts_with("$.") {
                let end = rest.find([',', ')', ' ']).unwrap_or(rest.len());
                let path = &rest[2..end];
                self.i += end;
                let mut v = payload;
                for part in path.split('.') {
                    v = v.get(part).ok_or(format!("no `{part}` in the payload"))?;
                }
                return v
                    .as_str()
                    .map(str::to_string)
                    .ok_or(format!("$.{path} is not a string"));
            }
            Err(format!("cannot evaluate `{rest}`"))
        }
    }

    /// Evaluates `expr` against `payload`; errors describe what is not valid ASL.
    pub fn eval(expr: &str, payload: &Json) -> Result<String, String> {
        let mut p = P {
            s: expr.as_bytes(),
            i: 0,
            text: expr,
        };
        let v = p.value(payload)?;
        p.ws();
        if p.i != expr.len() {
            return Err(format!("trailing text: {}", &expr[p.i..]));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{ArtifactDigest, FileDigest};
    use crate::key::{KEY_SCHEMA, canonical_json};
    use serde_json::json;

    fn components() -> KeyComponents {
        KeyComponents {
            schema: KEY_SCHEMA,
            kind: "command".into(),
            version: 3,
            // Everything ASL treats specially: quotes, braces, backslashes, a JSON-escaped line break.
            params: canonical_json(&json!({
                "run": "echo '{a}' \"b\" \\ c\nd",
                "lr": 1.0e-4,
                "files": ["x.py"],
            })),
            seed: Some(42),
            inputs: [
                ("src".to_string(), ArtifactDigest::from_bytes([7; 32])),
                ("aux".to_string(), ArtifactDigest::from_bytes([9; 32])),
            ]
            .into(),
            files: [("x.py".to_string(), FileDigest::from_bytes([1; 32]))].into(),
            external: None,
        }
    }

    fn payload(kc: &KeyComponents) -> Json {
        let steps: serde_json::Map<String, Json> = kc
            .inputs
            .iter()
            .map(|(slot, d)| (format!("p_{slot}"), json!({"artifact": d.to_hex()})))
            .collect();
        let mut p = constants_json();
        p.insert("steps".into(), Json::Object(steps));
        Json::Object(p)
    }
    use serde_json::Value as Json;

    /// The acceptance test of docs/cloud.md §3: the template, formatted with the input digests by the
    /// ASL rules, is the local canonical string, and its hash is the local key.
    #[test]
    fn template_formats_to_canonical_string() {
        let kc = components();
        let t = KeyTemplate::new(&kc);
        assert_eq!(t.slots(), vec!["aux", "src"]);
        assert_eq!(t.fill(|s| kc.inputs[s].to_hex()), kc.canonical_string());
        assert_eq!(t.formatted_len(), kc.canonical_string().chars().count());

        let expr = t.hash_expr(|slot| format!("$.steps.p_{slot}.artifact"));
        let inner = expr
            .strip_prefix("States.Hash(")
            .and_then(|e| e.strip_suffix(", 'SHA-256')"))
            .unwrap();
        assert_eq!(
            eval::eval(inner, &payload(&kc)).unwrap(),
            kc.canonical_string()
        );
        assert_eq!(eval::eval(&expr, &payload(&kc)).unwrap(), kc.key().to_hex());
        assert!(
            !expr.contains('\n') && !expr.contains('\\'),
            "no line break and no escape in an ASL literal: {expr}"
        );
    }

    #[test]
    fn template_text_keeps_placeholders_for_inputs_only() {
        let mut kc = components();
        kc.inputs.clear();
        kc.files.clear();
        kc.seed = None;
        let t = KeyTemplate::new(&kc);
        assert!(t.slots().is_empty());
        assert_eq!(t.text(), kc.canonical_string());
        let expr = t.hash_expr(|_| unreachable!());
        assert_eq!(
            eval::eval(&expr, &Json::Object(constants_json())).unwrap(),
            kc.key().to_hex()
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("plain-text_1"), "'plain-text_1'");
        assert_eq!(
            quote("a'b{c}"),
            "States.Format('a{}b{}c{}', $.sq, $.lb, $.rb)"
        );
        assert_eq!(quote(r"a\b"), "States.Format('a{}b', $.bs)");
        let p = Json::Object(constants_json());
        for s in [r#"{"run":"x \"y\" \\ z'"}"#, "two\nlines", "{}", ""] {
            assert_eq!(eval::eval(&quote(s), &p).unwrap(), s);
        }
        assert_eq!(
            eval::eval(
                &format1("s3://b/p/entries/", "$.k", ".json"),
                &json!({"k": "abc"})
            )
            .unwrap(),
            "s3://b/p/entries/abc.json"
        );
    }
}
