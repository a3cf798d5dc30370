//! The `wf worker` command line (docs/cloud.md §5), built here once (`WorkerCall::args`, rendered by
//! the compiler and the SageMaker executor) and parsed here once (`WorkerRequest::parse`, by the
//! `wf worker` entrypoint inside the job). A round-trip test keeps the two halves together.
//!
//! ```text
//! wf worker <kind>            | wf worker commit --kind <kind>
//!     --step <id>                      the step id (messages, logs)
//!     --key <key>                      the step key the state machine computed
//!     --cache s3://<bucket>/<prefix>   P
//!     --params <json> | --params s3://<bucket>/<prefix>/params/<sha256>.json
//!     --seed <u64>                     the workflow seed
//!     --input <slot>=<digest>          one per input slot, slots sorted
//!     --files <files digest>           only for steps with declared files
//!     --shards <n>                     only for sharded jobs with n > 1 instances
//!     --kms-key-id <key>               only with targets.aws.kms_key_id: SSE-KMS for what it writes
//! ```

use super::layout::S3Url;
use super::text::{Text, Var};
use crate::digest::{ArtifactDigest, StepKey};
use std::collections::BTreeMap;

/// The entrypoint's last word for the job that merges a sharded step's parts.
pub const COMMIT: &str = "commit";

/// The flags, each spelled once.
const STEP: &str = "--step";
const KEY: &str = "--key";
const CACHE: &str = "--cache";
const PARAMS: &str = "--params";
const SEED: &str = "--seed";
const INPUT: &str = "--input";
const FILES: &str = "--files";
const SHARDS: &str = "--shards";
const KIND: &str = "--kind";
const KMS: &str = "--kms-key-id";

/// Help text for `wf worker --help`.
pub const USAGE: &str = "wf worker <KIND> --step ID --key KEY --cache s3://BUCKET/PREFIX --params JSON|s3://... --seed N [--input SLOT=DIGEST]... [--files DIGEST] [--shards N] [--kms-key-id KEY]\n\
wf worker commit --kind KIND <the same arguments, --shards N included>";

/// One job's worker invocation, as the compiler and the executor describe it. The key and the input
/// digests are holes (`Var::Key`, `Var::Artifact(slot)`): known only when the job is submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCall {
    /// The step kind (`uses:`).
    pub kind: String,
    pub step: String,
    /// P.
    pub cache: S3Url,
    /// `--params`: inline canonical JSON, or the URL of an uploaded copy.
    pub params: String,
    pub seed: u64,
    /// Input slots, sorted.
    pub inputs: Vec<String>,
    /// Digest of the declared local files.
    pub files: Option<String>,
    /// Instances of a sharded job (n > 1).
    pub shards: Option<u32>,
    /// The commit job of a sharded step (`wf worker commit --kind <kind>`).
    pub commit: bool,
    /// The KMS key of every object the worker writes (SSE-KMS).
    pub kms_key_id: Option<String>,
}

impl WorkerCall {
    /// The container entrypoint: `wf worker <kind>` or `wf worker commit`.
    pub fn entrypoint(&self) -> Vec<String> {
        let last = if self.commit { COMMIT } else { &self.kind };
        vec!["wf".into(), "worker".into(), last.to_string()]
    }

    /// The container arguments, one `Text` each.
    pub fn args(&self) -> Vec<Text> {
        let mut a: Vec<Text> = Vec::new();
        if self.commit {
            a.extend([KIND.into(), self.kind.as_str().into()]);
        }
        a.extend([
            STEP.into(),
            self.step.as_str().into(),
            KEY.into(),
            Text::var(Var::Key),
            CACHE.into(),
            self.cache.to_string().into(),
            PARAMS.into(),
            self.params.as_str().into(),
            SEED.into(),
            self.seed.to_string().into(),
        ]);
        for slot in &self.inputs {
            a.push(INPUT.into());
            a.push(Text::lit(format!("{slot}=")).then_var(Var::Artifact(slot.clone())));
        }
        if let Some(f) = &self.files {
            a.extend([FILES.into(), f.as_str().into()]);
        }
        if let Some(n) = self.shards {
            a.extend([SHARDS.into(), n.to_string().into()]);
        }
        if let Some(k) = &self.kms_key_id {
            a.extend([KMS.into(), k.as_str().into()]);
        }
        a
    }
}

/// `--params` as given.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamsArg {
    Inline(String),
    /// An object in the cache holding the JSON.
    Url(S3Url),
}

/// A worker's arguments, parsed and checked (exit 2 in the worker when this fails).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRequest {
    /// The kind of the step to run (for `wf worker commit`, the `--kind` of the sharded step).
    pub kind: String,
    /// `wf worker commit`.
    pub commit: bool,
    pub step: String,
    pub key: StepKey,
    pub cache: S3Url,
    pub params: ParamsArg,
    pub seed: u64,
    pub inputs: BTreeMap<String, ArtifactDigest>,
    pub files: Option<String>,
    pub shards: Option<u32>,
    pub kms_key_id: Option<String>,
}

impl WorkerRequest {
    /// Parses the arguments after `wf worker <first>`.
    pub fn parse(first: &str, args: &[String]) -> Result<WorkerRequest, String> {
        let mut kind = None;
        let mut step = None;
        let mut key = None;
        let mut cache = None;
        let mut params = None;
        let mut seed = None;
        let mut inputs = BTreeMap::new();
        let mut files = None;
        let mut shards = None;
        let mut kms_key_id = None;
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let once = |slot: &mut Option<String>, v: String| {
                if slot.replace(v).is_some() {
                    Err(format!("{flag} is given twice"))
                } else {
                    Ok(())
                }
            };
            match flag.as_str() {
                KIND => once(&mut kind, value()?)?,
                STEP => once(&mut step, value()?)?,
                KEY => once(&mut key, value()?)?,
                CACHE => once(&mut cache, value()?)?,
                PARAMS => once(&mut params, value()?)?,
                SEED => once(&mut seed, value()?)?,
                FILES => once(&mut files, value()?)?,
                SHARDS => once(&mut shards, value()?)?,
                KMS => once(&mut kms_key_id, value()?)?,
                INPUT => {
                    let v = value()?;
                    let (slot, digest) = v
                        .split_once('=')
                        .ok_or_else(|| format!("{INPUT} {v}: expected SLOT=DIGEST"))?;
                    let digest = ArtifactDigest::from_hex(digest)
                        .ok_or_else(|| format!("{INPUT} {v}: not a 64-hex artifact digest"))?;
                    if inputs.insert(slot.to_string(), digest).is_some() {
                        return Err(format!("{INPUT} {slot}=...: slot `{slot}` is given twice"));
                    }
                }
                other => return Err(format!("unknown argument `{other}`\nusage: {USAGE}")),
            }
        }
        let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("missing {flag}"));
        let commit = first == COMMIT;
        let kind = match (commit, kind) {
            (false, None) => first.to_string(),
            (false, Some(_)) => return Err(format!("{KIND} belongs to `wf worker {COMMIT}`")),
            (true, Some(k)) => k,
            (true, None) => return Err(format!("`wf worker {COMMIT}` needs {KIND} KIND")),
        };
        let key_text = need(key, KEY)?;
        let key = StepKey::from_hex(&key_text)
            .ok_or_else(|| format!("{KEY} {key_text}: not a 64-hex step key"))?;
        let cache_text = need(cache, CACHE)?;
        let cache = S3Url::parse(&cache_text).map_err(|e| format!("{CACHE}: {e}"))?;
        let params_text = need(params, PARAMS)?;
        let params = if params_text.starts_with("s3://") {
            ParamsArg::Url(S3Url::parse(&params_text).map_err(|e| format!("{PARAMS}: {e}"))?)
        } else {
            ParamsArg::Inline(params_text)
        };
        let seed = match seed {
            None => 0,
            Some(s) => s
                .parse()
                .map_err(|_| format!("{SEED} {s}: not an unsigned integer"))?,
        };
        let shards = match shards {
            None => None,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(format!("{SHARDS} {s}: not a positive integer")),
            },
        };
        Ok(WorkerRequest {
            kind,
            commit,
            step: need(step, STEP)?,
            key,
            cache,
            params,
            seed,
            inputs,
            files,
            shards,
            kms_key_id,
        })
    }
}

/// What shard `shard` of a sharded job leaves for the commit job (`layout::part`, `.cases.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartRecord {
    pub shard: usize,
    #[serde(flatten)]
    pub part: crate::step::Part,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(commit: bool) -> WorkerCall {
        WorkerCall {
            kind: "sharded-transform".into(),
            step: "prep".into(),
            cache: S3Url::cache("s3://bkt/p").unwrap(),
            params: r#"{"shards":4}"#.into(),
            seed: 7,
            inputs: vec!["dataset".into(), "extra".into()],
            files: Some("ab".repeat(32)),
            shards: Some(4),
            commit,
            kms_key_id: Some("alias/wf".into()),
        }
    }

    /// What the compiler and the executor render is exactly what the worker parses back.
    #[test]
    fn render_then_parse_round_trips() {
        let key = StepKey::of_key_string("k");
        let digests: BTreeMap<String, ArtifactDigest> = [
            ("dataset".to_string(), ArtifactDigest::from_bytes([1; 32])),
            ("extra".to_string(), ArtifactDigest::from_bytes([2; 32])),
        ]
        .into();
        for commit in [false, true] {
            let c = call(commit);
            let args: Vec<String> = c
                .args()
                .iter()
                .map(|t| {
                    t.resolve(&|v| match v {
                        Var::Key => key.to_hex(),
                        Var::Artifact(slot) => digests[slot].to_hex(),
                        other => panic!("{other:?} in worker arguments"),
                    })
                })
                .collect();
            let first = c.entrypoint()[2].clone();
            let r = WorkerRequest::parse(&first, &args).unwrap();
            assert_eq!(r.kind, "sharded-transform");
            assert_eq!(r.commit, commit);
            assert_eq!(r.step, "prep");
            assert_eq!(r.key, key);
            assert_eq!(r.cache, c.cache);
            assert_eq!(r.params, ParamsArg::Inline(c.params.clone()));
            assert_eq!(r.seed, 7);
            assert_eq!(r.inputs, digests);
            assert_eq!(r.files, c.files);
            assert_eq!(r.shards, Some(4));
            assert_eq!(r.kms_key_id.as_deref(), Some("alias/wf"));
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let key = StepKey::of_key_string("k").to_hex();
        let base = |extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = [
                "--step",
                "s",
                "--key",
                &key,
                "--cache",
                "s3://bkt/p",
                "--params",
                "{}",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let err =
            |first: &str, extra: &[&str]| WorkerRequest::parse(first, &base(extra)).unwrap_err();
        assert!(err("command", &["--bogus"]).contains("unknown argument `--bogus`"));
        assert!(err("command", &["--input", "x"]).contains("SLOT=DIGEST"));
        assert!(err("command", &["--input", "x=12"]).contains("not a 64-hex"));
        assert!(err("command", &["--seed", "-1"]).contains("--seed -1"));
        assert!(err("command", &["--shards", "0"]).contains("--shards 0"));
        assert!(err("command", &["--step", "t"]).contains("--step is given twice"));
        assert!(err("commit", &[]).contains("needs --kind"));
        assert!(err("command", &["--kind", "x"]).contains("belongs to"));
        assert!(err("command", &["--seed"]).contains("--seed needs a value"));
        let missing = WorkerRequest::parse("command", &["--step".into(), "s".into()]).unwrap_err();
        assert_eq!(missing, "missing --key");
        let url = WorkerRequest::parse(
            "command",
            &base(&[])
                .into_iter()
                .map(|a| {
                    if a == "{}" {
                        "s3://bkt/p/params/x.json".into()
                    } else {
                        a
                    }
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(
            url.params,
            ParamsArg::Url(S3Url::parse("s3://bkt/p/params/x.json").unwrap())
        );
    }
}
