//! `targets.aws` resolved for a compile: every setting the state machine needs, or a positioned error
//! naming the missing key. `targets.rs` checks key names and types at load; this checks completeness.

use crate::diag::{Diagnostics, Span, did_you_mean};
use crate::step::RemoteTask;
use crate::workflow::Workflow;
use crate::yaml::Node;
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// Prefix under the bucket when none is given (docs/cloud.md §1).
pub const DEFAULT_PREFIX: &str = "wf-cache";

/// The cache location P = `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`.
    pub prefix: String,
}

impl S3Location {
    /// Parses `bucket`, `s3://bucket` or `s3://bucket/prefix` (a trailing `/` is dropped).
    pub fn parse(text: &str) -> Result<S3Location, String> {
        let rest = text.strip_prefix("s3://").unwrap_or(text);
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(format!(
                "`{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, `-`, `.`)"
            ));
        }
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX
        } else {
            prefix
        };
        // The prefix goes into intrinsic literals and SageMaker/FSx URIs unescaped: keep it plain.
        if prefix.starts_with('/')
            || prefix.contains("//")
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "prefix `{prefix}` may hold only letters, digits, `-`, `_`, `.` and single `/`"
            ));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `s3://bucket/prefix`.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The object key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// `s3://bucket/prefix/rel`.
    pub fn url(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }
}

/// `targets.aws.steps.<id>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResources {
    pub instance_type: Option<String>,
    pub instance_count: Option<u32>,
    pub volume_size_gb: Option<u32>,
    pub max_runtime_seconds: Option<u32>,
}

/// `targets.aws.fsx`, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct FsxSettings {
    /// An existing file system importing `P/trees/` (no create/delete in the state machine).
    pub file_system_id: Option<String>,
    pub storage_capacity_gb: u32,
    pub deployment_type: String,
    pub per_unit_storage_throughput: Option<u32>,
}

impl Default for FsxSettings {
    fn default() -> Self {
        FsxSettings {
            file_system_id: None,
            storage_capacity_gb: 1200,
            deployment_type: "SCRATCH_2".into(),
            per_unit_storage_throughput: None,
        }
    }
}

/// Everything the compiled state machine and `wf deploy`/`wf start` need from `targets.aws`.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsTarget {
    pub region: String,
    /// SageMaker job role (and, unless deploy is told otherwise, the state machine's role).
    pub role_arn: String,
    pub image_uri: String,
    /// P: from `cache: s3://...` or `targets.aws.bucket`.
    pub cache: S3Location,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// Default `wf-<workflow name>`.
    pub state_machine_name: String,
    pub fsx: FsxSettings,
    pub steps: BTreeMap<String, StepResources>,
}

fn str_of(v: &Json, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn u32_of(v: &Json, key: &str) -> Option<u32> {
    v.get(key)
        .and_then(Json::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

fn list_of(v: &Json, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn span_of(node: Option<&Node>, key: &str, fallback: Span) -> Span {
    node.and_then(|n| n.get(key)).map_or(fallback, |n| n.span)
}

impl AwsTarget {
    /// Resolves `targets.aws` of a loaded workflow; problems go to `diags` (all of them).
    pub fn resolve(wf: &Workflow, diags: &mut Diagnostics) -> Option<AwsTarget> {
        let (json, node) = match wf.targets.get("aws") {
            Some((j, n)) => (j.clone(), Some(n)),
            None => (Json::Object(Default::default()), None),
        };
        let block = node.map_or(Span::new(1, 1), |n| n.span);
        let needs_vpc = wf.steps.iter().any(|s| {
            matches!(
                s.step.remote(&s.params),
                RemoteTask::FsxImport | RemoteTask::Training { .. }
            )
        });
        let before = diags.len();
        if node.is_none() {
            let mut keys = vec!["region", "role_arn", "image_uri", "bucket"];
            if needs_vpc {
                keys.extend(["subnets", "security_groups"]);
            }
            diags.error_with_help(
                block,
                "the workflow has no `targets.aws`, which compiling for Step Functions needs",
                format!(
                    "add `targets: {{ aws: {{ {}: ... }} }}`",
                    keys.join(": ..., ")
                ),
            );
        }
        let mut require = |key: &str, present: bool, why: &str| {
            if !present && node.is_some() {
                diags.error(block, format!("targets.aws is missing `{key}` ({why})"));
            }
        };
        let region = str_of(&json, "region");
        require("region", region.is_some(), "the AWS region to run in");
        let role_arn = str_of(&json, "role_arn");
        require(
            "role_arn",
            role_arn.is_some(),
            "the IAM role SageMaker jobs and the state machine run as",
        );
        let image_uri = str_of(&json, "image_uri");
        require(
            "image_uri",
            image_uri.is_some(),
            "the container image holding `wf`, run by every job",
        );
        let subnets = list_of(&json, "subnets");
        let security_groups = list_of(&json, "security_groups");
        if needs_vpc {
            let why = "FSx for Lustre and training jobs run in a VPC";
            require("subnets", !subnets.is_empty(), why);
            require("security_groups", !security_groups.is_empty(), why);
        }

        // The cache: `cache: s3://...` and/or targets.aws.bucket.
        let from_cache = wf
            .cache
            .as_ref()
            .filter(|(c, _)| c.starts_with("s3://"))
            .map(|(c, span)| (S3Location::parse(c), *span));
        let bucket_span = span_of(node, "bucket", block);
        let from_bucket = str_of(&json, "bucket").map(|b| (S3Location::parse(&b), bucket_span));
        let mut cache = None;
        for (parsed, span) in [&from_cache, &from_bucket].into_iter().flatten() {
            match parsed {
                Ok(loc) => {
                    if cache.is_none() {
                        cache = Some(loc.clone());
                    }
                }
                Err(e) => diags.error(*span, format!("cache location: {e}")),
            }
        }
        if let (Some((Ok(a), _)), Some((Ok(b), span))) = (&from_cache, &from_bucket)
            && a != b
        {
            diags.error(
                *span,
                format!(
                    "targets.aws.bucket names {} but `cache:` names {}; the cloud run shares the workflow's S3 cache, so name one location",
                    b.uri(),
                    a.uri()
                ),
            );
        }
        if from_cache.is_none() && from_bucket.is_none() && node.is_some() {
            diags.error_with_help(
                block,
                "targets.aws is missing `bucket` (where the S3 cache lives)",
                "`bucket: s3://my-bucket/wf-cache`, or `cache: s3://...` at the top of the workflow",
            );
        }

        let state_machine_name =
            str_of(&json, "state_machine_name").unwrap_or_else(|| format!("wf-{}", wf.name));
        let ok_name = state_machine_name.len() <= 80
            && state_machine_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_name {
            diags.error(
                span_of(node, "state_machine_name", block),
                format!(
                    "state machine name `{state_machine_name}` must be at most 80 letters, digits, `-` or `_`"
                ),
            );
        }

        let mut fsx = FsxSettings::default();
        if let Some(f) = json.get("fsx") {
            fsx.file_system_id = str_of(f, "file_system_id");
            if let Some(c) = u32_of(f, "storage_capacity_gb") {
                fsx.storage_capacity_gb = c;
            }
            if let Some(d) = str_of(f, "deployment_type") {
                fsx.deployment_type = d;
            }
            fsx.per_unit_storage_throughput = u32_of(f, "per_unit_storage_throughput");
        }
        if fsx.deployment_type.starts_with("PERSISTENT")
            && fsx.per_unit_storage_throughput.is_none()
        {
            diags.error(
                span_of(node.and_then(|n| n.get("fsx")), "deployment_type", block),
                format!(
                    "targets.aws.fsx: deployment type {} needs `per_unit_storage_throughput`",
                    fsx.deployment_type
                ),
            );
        }

        let mut steps = BTreeMap::new();
        if let (Some(Json::Object(map)), Some(steps_node)) =
            (json.get("steps"), node.and_then(|n| n.get("steps")))
        {
            let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
            for (key, _) in steps_node.as_map().unwrap_or(&[]) {
                if !ids.contains(&key.name.as_str()) {
                    let msg = format!(
                        "targets.aws.steps.{} names no step of the workflow",
                        key.name
                    );
                    match did_you_mean(&key.name, ids.iter().copied()) {
                        Some(best) => {
                            diags.error_with_help(key.span, msg, format!("did you mean `{best}`?"))
                        }
                        None => diags.error_with_help(
                            key.span,
                            msg,
                            format!("its steps: {}", ids.join(", ")),
                        ),
                    }
                }
            }
            for (id, v) in map {
                steps.insert(
                    id.clone(),
                    StepResources {
                        instance_type: str_of(v, "instance_type"),
                        instance_count: u32_of(v, "instance_count"),
                        volume_size_gb: u32_of(v, "volume_size_gb"),
                        max_runtime_seconds: u32_of(v, "max_runtime_seconds"),
                    },
                );
            }
        }

        if diags.len() > before {
            return None;
        }
        Some(AwsTarget {
            region: region?,
            role_arn: role_arn?,
            image_uri: image_uri?,
            cache: cache?,
            subnets,
            security_groups,
            state_machine_name,
            fsx,
            steps,
        })
    }

    pub fn resources(&self, step: &str) -> StepResources {
        self.steps.get(step).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_locations() {
        let l = S3Location::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(l.url("entries/k.json"), "s3://my-bucket/a/b/entries/k.json");
        assert_eq!(
            S3Location::parse("my-bucket").unwrap().prefix,
            DEFAULT_PREFIX
        );
        assert_eq!(
            S3Location::parse("s3://my-bucket").unwrap().uri(),
            "s3://my-bucket/wf-cache"
        );
        assert!(S3Location::parse("s3://My_Bucket/x").is_err());
        assert!(S3Location::parse("s3://bucket/a//b").is_err());
        assert!(S3Location::parse("s3://bucket/it's").is_err());
    }
}
