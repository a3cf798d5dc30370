//! ASL intrinsic-function text: quoting static strings, and the cache key as a `States.Hash` expression.
//!
//! In an intrinsic string literal `'`, `{`, `}` and `\` must be escaped with a backslash, and there is no
//! escape for a line break. asl-validator 4.0.0 also rejects an escaped backslash (`\\`), so a backslash
//! never appears in our literals either: line breaks and backslashes enter `States.Format` as arguments,
//! `$.nl` and `$.bs`, which the first state of every compiled machine stores (see docs/cloud.md §3).

use crate::key::KeyComponents;

/// Payload path of the `"\n"` constant.
pub const NL_PATH: &str = "$.nl";
/// Payload path of the `"\\"` constant.
pub const BS_PATH: &str = "$.bs";

/// Appends `c` to an intrinsic string literal, escaped. Backslashes and line breaks are the caller's.
fn push_escaped(out: &mut String, c: char) {
    debug_assert!(c != '\\' && c != '\n');
    if matches!(c, '\'' | '{' | '}') {
        out.push('\\');
    }
    out.push(c);
}

/// An intrinsic expression whose value is the static string `s`: `'s'` with escapes, or a
/// `States.Format` feeding backslashes and line breaks from `$.bs` / `$.nl`.
pub fn quote(s: &str) -> String {
    let mut lit = String::with_capacity(s.len() + 2);
    let mut args = Vec::new();
    for c in s.chars() {
        match c {
            '\\' => {
                lit.push_str("{}");
                args.push(BS_PATH);
            }
            '\n' => {
                lit.push_str("{}");
                args.push(NL_PATH);
            }
            c => push_escaped(&mut lit, c),
        }
    }
    if args.is_empty() {
        format!("'{lit}'")
    } else {
        format!("States.Format('{lit}', {})", args.join(", "))
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
                    match c {
                        '\\' => {
                            lit.push_str("{}");
                            args.push(BS_PATH);
                        }
                        '\n' => {
                            lit.push_str("{}");
                            args.push(NL_PATH);
                        }
                        c => push_escaped(&mut lit, c),
                    }
                }
            }
            Piece::Arg(a) => {
                lit.push_str("{}");
                args.push(a);
            }
        }
    }
    format!("States.Format('{lit}', {})", args.join(", "))
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
        }
    }

    fn payload(kc: &KeyComponents) -> Json {
        let steps: serde_json::Map<String, Json> = kc
            .inputs
            .iter()
            .map(|(slot, d)| (format!("p_{slot}"), json!({"artifact": d.to_hex()})))
            .collect();
        json!({"nl": "\n", "bs": "\\", "steps": steps})
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
        assert!(!expr.contains('\n'), "no raw line break in an ASL literal");
        assert!(
            !expr.contains("\\\\"),
            "no escaped backslash (asl-validator)"
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
            eval::eval(&expr, &json!({"nl": "\n", "bs": "\\"})).unwrap(),
            kc.key().to_hex()
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("plain-text_1"), "'plain-text_1'");
        assert_eq!(quote("a'b{c}"), r"'a\'b\{c\}'");
        assert_eq!(quote(r"a\b"), "States.Format('a{}b', $.bs)");
        let p = json!({"nl": "\n", "bs": "\\"});
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
