//! The cache key: SHA-256 of a canonical, line-oriented string (encoding `wf-key-v1`).
//!
//! ```text
//! wf-key-v1
//! kind:<step kind>
//! version:<step version>
//! params:<canonical JSON of the params, defaults filled in, keys sorted, no whitespace>
//! seed:<workflow seed, or - for steps without randomness>
//! input:<slot>:<artifact digest hex>        one line per input slot, sorted by slot
//! files:<files digest hex, or ->            BLAKE3 of "<path>\t<file digest>\n" lines, sorted by path
//! external:<JSON string>                    only for a step with external state (below)
//! ```
//! Lines are joined with `\n` (no trailing newline). Never wall-clock time, absolute paths or mtimes.
//! SHA-256 over a plain string so Step Functions (`States.Hash(States.Format(...), 'SHA-256')`) can
//! derive the same key. Changing anything here changes every key: bump `KEY_SCHEMA` and the tag.
//! `tests::golden_key` pins the encoding.
//!
//! `external:` is the state of a source outside the workflow that the params name but do not pin
//! (`Step::external_source` / `Step::external_state`): the server's validators of a URL fetched
//! without a checksum, read when the key is computed. It is written as a JSON string (one line,
//! whatever the text holds) and the line exists only when a step reports such state, so the keys of
//! every other step are those of the encoding without it (`tests::golden_key_with_external_state`).
//! A compiled state machine cannot know such state when it runs, so `wf compile` refuses these steps
//! (`asl.rs`); the worker, which computes keys from its arguments, never sees one.

use crate::digest::{ArtifactDigest, FileDigest, StepKey};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;

pub const KEY_SCHEMA: u32 = 1;
pub const KEY_TAG: &str = "wf-key-v1";

/// Everything a step's key is made of; stored after each run so `wf plan` can say what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyComponents {
    pub schema: u32,
    pub kind: String,
    pub version: u32,
    /// Canonical JSON text of the params.
    pub params: String,
    pub seed: Option<u64>,
    pub inputs: BTreeMap<String, ArtifactDigest>,
    /// Declared local files (relative path → digest).
    pub files: BTreeMap<String, FileDigest>,
    /// The state of the step's external source when the key was computed (`Step::external_state`);
    /// `None` for every step without one, whose keys and records are then as they always were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
}

impl KeyComponents {
    pub fn canonical_string(&self) -> String {
        let mut s = String::new();
        s.push_str(KEY_TAG);
        s.push_str(&format!("\nkind:{}", self.kind));
        s.push_str(&format!("\nversion:{}", self.version));
        s.push_str(&format!("\nparams:{}", self.params));
        match self.seed {
            Some(seed) => s.push_str(&format!("\nseed:{seed}")),
            None => s.push_str("\nseed:-"),
        }
        for (slot, digest) in &self.inputs {
            s.push_str(&format!("\ninput:{slot}:{digest}"));
        }
        match self.files_digest() {
            Some(d) => s.push_str(&format!("\nfiles:{d}")),
            None => s.push_str("\nfiles:-"),
        }
        if let Some(state) = &self.external {
            s.push_str("\nexternal:");
            s.push_str(&Json::String(state.clone()).to_string());
        }
        s
    }

    /// BLAKE3 of `files_text`, or `None` without declared files.
    pub fn files_digest(&self) -> Option<String> {
        if self.files.is_empty() {
            return None;
        }
        Some(
            blake3::hash(self.files_text().as_bytes())
                .to_hex()
                .to_string(),
        )
    }

    /// The declared files as `<path>\t<file digest>\n` lines, sorted by path: the text whose BLAKE3
    /// is the `files:` component (and the content of `P/files/<digest>.txt` in the cloud).
    pub fn files_text(&self) -> String {
        let mut text = String::new();
        for (path, digest) in &self.files {
            text.push_str(&format!("{path}\t{digest}\n"));
        }
        text
    }

    /// Parses `files_text` back, checking it against `digest` (its BLAKE3).
    pub fn parse_files_text(
        text: &[u8],
        digest: &str,
    ) -> Result<BTreeMap<String, FileDigest>, String> {
        if blake3::hash(text).to_hex().as_str() != digest {
            return Err(format!("the declared-files list does not hash to {digest}"));
        }
        let text = std::str::from_utf8(text).map_err(|_| "the declared-files list is not UTF-8")?;
        let mut files = BTreeMap::new();
        for line in text.lines() {
            let (path, d) = line
                .split_once('\t')
                .and_then(|(p, d)| Some((p.to_string(), FileDigest::from_hex(d)?)))
                .ok_or_else(|| format!("bad line `{line}` in the declared-files list"))?;
            files.insert(path, d);
        }
        Ok(files)
    }

    pub fn key(&self) -> StepKey {
        StepKey::of_key_string(&self.canonical_string())
    }

    /// Human reasons why `self` differs from the components of the previous run.
    pub fn changes_since(&self, prev: &KeyComponents) -> Vec<String> {
        let mut reasons = Vec::new();
        if prev.schema != self.schema {
            reasons.push(format!(
                "cache key schema changed ({} -> {})",
                prev.schema, self.schema
            ));
        }
        if prev.kind != self.kind {
            reasons.push(format!(
                "step kind changed (`{}` -> `{}`)",
                prev.kind, self.kind
            ));
        } else if prev.version != self.version {
            reasons.push(format!(
                "`{}` step version changed ({} -> {})",
                self.kind, prev.version, self.version
            ));
        }
        // Run records keep params with URL credentials redacted: compare what both sides show.
        let (prev_params, params) = (
            crate::redact::params_text(&prev.params),
            crate::redact::params_text(&self.params),
        );
        if prev_params != params {
            let a: BTreeMap<String, Json> = serde_json::from_str(&prev_params).unwrap_or_default();
            let b: BTreeMap<String, Json> = serde_json::from_str(&params).unwrap_or_default();
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            let changed: Vec<String> = names
                .into_iter()
                .filter(|n| a.get(*n) != b.get(*n))
                .map(|n| param_change(n, a.get(n), b.get(n)))
                .collect();
            reasons.push(format!("params changed: {}", changed.join(", ")));
        }
        if prev.seed != self.seed {
            reasons.push("workflow seed changed".to_string());
        }
        for (slot, d) in &self.inputs {
            match prev.inputs.get(slot) {
                Some(p) if p == d => {}
                Some(_) => reasons.push(format!("input `{slot}` changed")),
                None => reasons.push(format!("new input `{slot}`")),
            }
        }
        for slot in prev.inputs.keys().filter(|s| !self.inputs.contains_key(*s)) {
            reasons.push(format!("input `{slot}` removed"));
        }
        for (path, d) in &self.files {
            match prev.files.get(path) {
                Some(p) if p == d => {}
                Some(_) => reasons.push(format!("file `{path}` changed")),
                None => reasons.push(format!("file `{path}` added")),
            }
        }
        for path in prev.files.keys().filter(|p| !self.files.contains_key(*p)) {
            reasons.push(format!("file `{path}` removed"));
        }
        match (&prev.external, &self.external) {
            (Some(a), Some(b)) if a != b => reasons.push(format!("source changed ({a} -> {b})")),
            (None, Some(b)) => reasons.push(format!("source state now part of the key ({b})")),
            (Some(_), None) => reasons.push("source state no longer part of the key".to_string()),
            _ => {}
        }
        reasons
    }
}

/// Canonical JSON: object keys sorted, no whitespace, numbers as serde_json prints them (shortest
/// round-trip). Written by hand so no cargo feature (`preserve_order`) can change key order.
pub fn canonical_json(v: &Json) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Json, out: &mut String) {
    match v {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[*k], out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A changed param with its old and new value when both are short: `` `epochs` 2 → 3 ``; just the
/// name when a value is too long to read in a line (a script, a transform list).
fn param_change(name: &str, old: Option<&Json>, new: Option<&Json>) -> String {
    const SHOWN: usize = 40;
    let text = |v: Option<&Json>| match v {
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
        None => "unset".to_string(),
    };
    let (old, new) = (text(old), text(new));
    if old.chars().count() > SHOWN || new.chars().count() > SHOWN {
        format!("`{name}`")
    } else {
        format!("`{name}` {old} → {new}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyComponents {
        KeyComponents {
            schema: KEY_SCHEMA,
            kind: "command".into(),
            version: 1,
            params: canonical_json(
                &serde_json::json!({"run": "sort $WF_IN_src/a > $WF_OUT/b", "produces": "Files", "files": [], "lr": 1.0e-4}),
            ),
            seed: None,
            inputs: [("src".to_string(), ArtifactDigest::from_bytes([7; 32]))].into(),
            files: [("make.py".to_string(), FileDigest::from_bytes([9; 32]))].into(),
            external: None,
        }
    }

    /// Pins the key encoding: if this fails, every existing cache entry would silently miss.
    /// Change it only together with `KEY_SCHEMA`/`KEY_TAG`.
    #[test]
    fn golden_key() {
        let c = sample();
        insta::assert_snapshot!(c.canonical_string(), @r#"
        wf-key-v1
        kind:command
        version:1
        params:{"files":[],"lr":0.0001,"produces":"Files","run":"sort $WF_IN_src/a > $WF_OUT/b"}
        seed:-
        input:src:0707070707070707070707070707070707070707070707070707070707070707
        files:8f74f5fea47ad67706305f80551b2b9b664b0d4235cc0754c327902a5959cc4b
        "#);
        insta::assert_snapshot!(c.key().to_hex(), @"965c00ebf0dbc25f455a871c468b8272b042a23c717d4615cbc43fc8b6f546e9");
    }

    /// The `external:` line: present only with external state, so `golden_key` above (and every key
    /// of a step without such state) is unchanged.
    #[test]
    fn golden_key_with_external_state() {
        let mut c = sample();
        c.external = Some("etag \"5d41\"\nsecond line".into());
        insta::assert_snapshot!(c.canonical_string(), @r#"
        wf-key-v1
        kind:command
        version:1
        params:{"files":[],"lr":0.0001,"produces":"Files","run":"sort $WF_IN_src/a > $WF_OUT/b"}
        seed:-
        input:src:0707070707070707070707070707070707070707070707070707070707070707
        files:8f74f5fea47ad67706305f80551b2b9b664b0d4235cc0754c327902a5959cc4b
        external:"etag \"5d41\"\nsecond line"
        "#);
        assert_ne!(c.key(), sample().key());
        // Records without the field read back as `None`, and `None` is not written.
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(!json.contains("external"), "{json}");
        let back: KeyComponents = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn a_changed_source_is_named() {
        let mut a = sample();
        a.external = Some("etag \"1\"".into());
        let mut b = a.clone();
        b.external = Some("etag \"2\"".into());
        assert_eq!(
            b.changes_since(&a),
            vec![r#"source changed (etag "1" -> etag "2")"#]
        );
        // Redacted credentials in a recorded URL are not a change.
        a.params = canonical_json(&serde_json::json!({"source": "https://***@h/x"}));
        b.params = canonical_json(&serde_json::json!({"source": "https://u:p@h/x"}));
        b.external = a.external.clone();
        assert!(b.changes_since(&a).is_empty());
    }

    #[test]
    fn key_is_sha256_of_string() {
        use sha2::Digest as _;
        let c = sample();
        let expect = hex::encode(sha2::Sha256::digest(c.canonical_string().as_bytes()));
        assert_eq!(c.key().to_hex(), expect);
    }

    #[test]
    fn canonical_json_sorts_and_normalises() {
        let a = serde_json::json!({"b": 1, "a": {"z": [1.5, "x"], "y": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"y":null,"z":[1.5,"x"]},"b":1}"#
        );
    }

    #[test]
    fn reasons_name_what_changed() {
        let a = sample();
        let mut b = sample();
        b.params = canonical_json(
            &serde_json::json!({"run": "other", "produces": "Files", "files": [], "lr": 1.0e-4}),
        );
        let mut c = b.clone();
        c.params = canonical_json(&serde_json::json!({
            "run": "echo hi",
            "produces": "Files",
            "files": [],
            "epochs": 3,
            "transforms": ["load", {"spacing": {"pixdim": [1.5, 1.5, 2.0], "mode": ["bilinear", "nearest"]}}]
        }));
        let mut d = c.clone();
        d.params = canonical_json(&serde_json::json!({
            "run": "echo hi",
            "produces": "Dataset",
            "files": [],
            "transforms": ["load", {"spacing": {"pixdim": [1.0, 1.0, 1.0], "mode": ["bilinear", "nearest"]}}]
        }));
        assert_eq!(
            d.changes_since(&c),
            vec![
                "params changed: `epochs` 3 → unset, `produces` \"Files\" → \"Dataset\", `transforms`"
            ]
        );
        b.files
            .insert("make.py".into(), FileDigest::from_bytes([1; 32]));
        b.inputs
            .insert("src".into(), ArtifactDigest::from_bytes([2; 32]));
        assert_eq!(
            b.changes_since(&a),
            vec![
                r#"params changed: `run` "sort $WF_IN_src/a > $WF_OUT/b" → "other""#,
                "input `src` changed",
                "file `make.py` changed"
            ]
        );
        assert!(a.changes_since(&a).is_empty());
    }
}
