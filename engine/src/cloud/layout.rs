//! The S3 side of the contract: one URL type, and every area of the cache layout under P
//! (docs/cloud.md §2). No other file spells an area's name: the compiler, the S3 cache, the
//! SageMaker executor and `wf worker` all build keys through these functions.
//!
//! ```text
//! P/objects/<blake3>                  file contents, named by digest (shared by every artifact)
//! P/manifests/<artifact>.txt          the canonical manifest (manifest.rs), after its objects
//! P/trees/<artifact>/<path>           the artifact as a plain tree (what SageMaker jobs read)
//! P/entries/<key>.json                step key -> artifact: the commit point, written LAST
//! P/params/<sha256>.json              params too long for a container argument
//! P/files/<files digest>.txt          a step's declared local files (KeyComponents::files_text)
//! P/staging/<key>/part-<i>.txt|.cases.json   a shard's part of a sharded output
//! P/checkpoints/<key>/                training checkpoints (SageMaker CheckpointConfig)
//! P/jobs/                             SageMaker's OutputDataConfig (required, unused)
//! ```

use super::text::{Text, Var};
use crate::digest::{ArtifactDigest, FileDigest, StepKey};
use std::fmt;

/// The prefix of a cache given as `s3://bucket` alone.
pub const DEFAULT_PREFIX: &str = "wf-cache";

/// `s3://bucket/prefix`: a cache location, an object, or a prefix of objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://bucket[/prefix]` (trailing `/` dropped).
    pub fn parse(s: &str) -> Result<S3Url, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{s}` is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// A cache location P: `s3://bucket[/prefix]`, or a bare `bucket` (as `targets.aws.bucket`
    /// allows); no prefix means `wf-cache` (docs/cloud.md §1).
    pub fn cache(s: &str) -> Result<S3Url, String> {
        let mut url = if s.starts_with("s3://") {
            S3Url::parse(s)?
        } else {
            S3Url::parse(&format!("s3://{s}"))?
        };
        if url.prefix.is_empty() {
            url.prefix = DEFAULT_PREFIX.to_string();
        }
        Ok(url)
    }

    /// Refuses a prefix the compiled state machine cannot carry: it goes into intrinsic literals and
    /// SageMaker/FSx URIs unescaped, so only letters, digits, `-`, `_`, `.` and single `/`.
    pub fn check_plain_prefix(&self) -> Result<(), String> {
        let p = &self.prefix;
        if p.is_empty()
            || p.contains("//")
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "prefix `{p}` may hold only letters, digits, `-`, `_`, `.` and single `/`"
            ));
        }
        Ok(())
    }

    /// The object key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// `s3://bucket/<prefix>/<rel>`.
    pub fn url(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }

    /// The location `rel` below this one.
    pub fn join(&self, rel: &str) -> S3Url {
        S3Url {
            bucket: self.bucket.clone(),
            prefix: self.key(rel.trim_matches('/')),
        }
    }

    /// Whether `url` lies below this location (e.g. a `--params` URL inside the cache).
    pub fn contains(&self, url: &S3Url) -> bool {
        url.bucket == self.bucket
            && (self.prefix.is_empty() || url.prefix.starts_with(&format!("{}/", self.prefix)))
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, `-`, `.`)"
        ))
    }
}

/// One area of the layout: `<dir>/<name><ext>`.
#[derive(Debug, Clone, Copy)]
struct Area {
    dir: &'static str,
    ext: &'static str,
}

const OBJECTS: Area = Area {
    dir: "objects",
    ext: "",
};
const MANIFESTS: Area = Area {
    dir: "manifests",
    ext: ".txt",
};
const TREES: Area = Area {
    dir: "trees",
    ext: "/",
};
const ENTRIES: Area = Area {
    dir: "entries",
    ext: ".json",
};
const PARAMS: Area = Area {
    dir: "params",
    ext: ".json",
};
const FILES: Area = Area {
    dir: "files",
    ext: ".txt",
};
const STAGING: Area = Area {
    dir: "staging",
    ext: "/",
};
const CHECKPOINTS: Area = Area {
    dir: "checkpoints",
    ext: "/",
};
const JOBS: &str = "jobs/";

impl Area {
    fn rel(self, name: &str) -> String {
        format!("{}/{name}{}", self.dir, self.ext)
    }

    /// `<base><dir>/` + `var` + `<ext>`, for values known only when the job runs.
    fn text(self, base: &str, var: Var) -> Text {
        Text::lit(format!("{base}{}/", self.dir))
            .then_var(var)
            .then_lit(self.ext)
    }
}

// Paths relative to P, for values known here.

/// `objects/<blake3>`.
pub fn object(d: &FileDigest) -> String {
    OBJECTS.rel(&d.to_hex())
}

/// `manifests/<artifact>.txt`.
pub fn manifest(a: &ArtifactDigest) -> String {
    MANIFESTS.rel(&a.to_hex())
}

/// `trees/<artifact>/`.
pub fn tree(a: &ArtifactDigest) -> String {
    TREES.rel(&a.to_hex())
}

/// `entries/<key>.json`.
pub fn entry(k: &StepKey) -> String {
    ENTRIES.rel(&k.to_hex())
}

/// `params/<sha256 of the text>.json`.
pub fn params(canonical_json: &str) -> String {
    PARAMS.rel(&StepKey::of_key_string(canonical_json).to_hex())
}

/// `files/<files digest>.txt`.
pub fn files(files_digest: &str) -> String {
    FILES.rel(files_digest)
}

/// `staging/<key>/`: where the shards of a sharded job leave their parts.
pub fn staging(k: &StepKey) -> String {
    STAGING.rel(&k.to_hex())
}

/// Shard `i`'s part: (`staging/<key>/part-<i>.txt`, `staging/<key>/part-<i>.cases.json`). The
/// `.txt` (its manifest) is written last: the part's commit point.
pub fn part(k: &StepKey, i: usize) -> (String, String) {
    let dir = staging(k);
    (
        format!("{dir}part-{i}.txt"),
        format!("{dir}part-{i}.cases.json"),
    )
}

/// `checkpoints/<key>/`.
pub fn checkpoints(k: &StepKey) -> String {
    CHECKPOINTS.rel(&k.to_hex())
}

/// `jobs/`: SageMaker's required `OutputDataConfig`, unused.
pub fn jobs() -> &'static str {
    JOBS
}

// The same paths with values that are known only when the job runs (the key, an input's digest):
// what the compiled state machine formats and the executor resolves.

/// `P/trees/<artifact>/` as a URL.
pub fn tree_url(cache: &S3Url, artifact: Var) -> Text {
    TREES.text(&format!("{}/", cache), artifact)
}

/// `P/entries/<key>.json` as an object key (without the bucket).
pub fn entry_key(cache: &S3Url, key: Var) -> Text {
    ENTRIES.text(&cache.key(""), key)
}

/// `P/checkpoints/<key>/` as a URL.
pub fn checkpoints_url(cache: &S3Url, key: Var) -> Text {
    CHECKPOINTS.text(&format!("{}/", cache), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(u.key("entries/x.json"), "a/b/entries/x.json");
        assert_eq!(u.url("entries/k.json"), "s3://my-bucket/a/b/entries/k.json");
        assert_eq!(u.to_string(), "s3://my-bucket/a/b");
        let root = S3Url::parse("s3://bkt").unwrap();
        assert_eq!(root.key("objects/ab"), "objects/ab");
        assert_eq!(root.join("cache").to_string(), "s3://bkt/cache");
        assert!(root.contains(&S3Url::parse("s3://bkt/x/y").unwrap()));
        assert!(u.contains(&S3Url::parse("s3://my-bucket/a/b/params/x.json").unwrap()));
        assert!(!u.contains(&S3Url::parse("s3://my-bucket/a/bc").unwrap()));
        assert!(S3Url::parse("s3://Bad_Bucket/x").is_err());
        assert!(S3Url::parse("s3://-bucket/x").is_err());
        assert!(S3Url::parse("https://b/x").is_err());
    }

    #[test]
    fn cache_locations() {
        assert_eq!(S3Url::cache("my-bucket").unwrap().prefix, DEFAULT_PREFIX);
        assert_eq!(
            S3Url::cache("s3://my-bucket").unwrap().to_string(),
            "s3://my-bucket/wf-cache"
        );
        assert_eq!(S3Url::cache("s3://b-1/p/").unwrap().prefix, "p");
        let odd = S3Url::cache("s3://bucket/it's").unwrap();
        assert!(odd.check_plain_prefix().is_err());
        assert!(
            S3Url::cache("s3://bucket/a//b")
                .unwrap()
                .check_plain_prefix()
                .is_err()
        );
        assert!(S3Url::cache("s3://My_Bucket/x").is_err());
    }

    #[test]
    fn layout() {
        let k = StepKey::of_key_string("k");
        let a = ArtifactDigest::from_bytes([1; 32]);
        assert_eq!(entry(&k), format!("entries/{k}.json"));
        assert_eq!(tree(&a), format!("trees/{a}/"));
        assert_eq!(manifest(&a), format!("manifests/{a}.txt"));
        assert_eq!(
            part(&k, 3),
            (
                format!("staging/{k}/part-3.txt"),
                format!("staging/{k}/part-3.cases.json")
            )
        );
        let p = S3Url::cache("s3://b-1/p").unwrap();
        let key = k.to_hex();
        assert_eq!(
            entry_key(&p, Var::Key).resolve(&|_| key.clone()),
            p.key(&entry(&k))
        );
        assert_eq!(
            tree_url(&p, Var::Artifact("x".into())).resolve(&|_| a.to_hex()),
            p.url(&tree(&a))
        );
        assert_eq!(
            checkpoints_url(&p, Var::Key).resolve(&|_| key.clone()),
            p.url(&checkpoints(&k))
        );
    }
}
