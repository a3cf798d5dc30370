//! `targets:` blocks, parsed once at load into typed settings that keep their positions. Only key
//! names and value types are checked here; whether a target has everything a compile needs is
//! checked by the compiler for that target (`cloud::AwsTarget::resolve`), with these positions.

use crate::diag::{Diagnostics, Span};
use crate::params::{ParamType, convert};
use crate::workflow::check_keys;
use crate::yaml::Node;
use serde_json::Value as Json;

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// The `targets:` of a workflow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    pub aws: Option<AwsSettings>,
}

/// `targets.aws` as written: every key optional, typed, positioned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwsSettings {
    /// The `aws:` block itself.
    pub span: Span,
    pub region: Option<Spanned<String>>,
    pub role_arn: Option<Spanned<String>>,
    pub image_uri: Option<Spanned<String>>,
    pub bucket: Option<Spanned<String>>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub state_machine_name: Option<Spanned<String>>,
    /// Tags of the state machine and of every job and file system.
    pub tags: Vec<(String, String)>,
    pub kms_key_id: Option<Spanned<String>>,
    /// The state machine's CloudWatch Logs level (`ALL`, `ERROR`, `FATAL`, `OFF`).
    pub log_level: Option<Spanned<String>>,
    pub log_group: Option<Spanned<String>>,
    /// X-Ray tracing of the state machine.
    pub tracing: Option<bool>,
    pub fsx: Option<FsxBlock>,
    /// `targets.aws.steps.<id>`, in file order.
    pub steps: Vec<(Spanned<String>, StepResources)>,
}

/// `targets.aws.fsx` as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FsxBlock {
    pub span: Span,
    pub file_system_id: Option<String>,
    pub storage_capacity_gb: Option<u32>,
    pub deployment_type: Option<Spanned<String>>,
    pub per_unit_storage_throughput: Option<u32>,
}

/// `targets.aws.steps.<id>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResources {
    pub instance_type: Option<String>,
    pub instance_count: Option<u32>,
    pub volume_size_gb: Option<u32>,
    pub max_runtime_seconds: Option<Spanned<u32>>,
    /// Retries of a failed job (each under a new job name).
    pub retries: Option<u32>,
    /// How long the state machine waits for one attempt of the step's job.
    pub timeout: Option<Spanned<u32>>,
    /// Managed spot training.
    pub spot: Option<Spanned<bool>>,
    pub max_wait_seconds: Option<Spanned<u32>>,
    /// Added to the workflow's tags (a key of both takes the step's value).
    pub tags: Vec<(String, String)>,
}

static STR_LIST: ParamType = ParamType::List(&ParamType::Str);

/// One key of a `targets.aws` block: its type, and what the reference says of it (`wf schema`,
/// docs/workflow.md).
#[derive(Debug, Clone, Copy)]
pub struct SettingKey {
    pub name: &'static str,
    pub ty: &'static ParamType,
    pub doc: &'static str,
}

const fn key(name: &'static str, ty: &'static ParamType, doc: &'static str) -> SettingKey {
    SettingKey { name, ty, doc }
}

/// `targets.aws`, besides its `steps` and `fsx` blocks.
pub const AWS_KEYS: &[SettingKey] = &[
    key(
        "region",
        &ParamType::Str,
        "the AWS region of the jobs, the state machine and the bucket; required to compile",
    ),
    key(
        "role_arn",
        &ParamType::Str,
        "the IAM role of the SageMaker jobs (and of the state machine, so it must trust `sagemaker.amazonaws.com` and `states.amazonaws.com`); required to compile",
    ),
    key(
        "image_uri",
        &ParamType::Str,
        "the container image holding `wf` that every job runs; required to compile",
    ),
    key(
        "bucket",
        &ParamType::Str,
        "`s3://bucket[/prefix]`: the cache of the cloud runs; required unless `cache:` is an `s3://` URI",
    ),
    key(
        "subnets",
        &STR_LIST,
        "VPC subnet ids of the jobs; required with an fsx-import step or a Training job",
    ),
    key(
        "security_groups",
        &STR_LIST,
        "VPC security group ids of the jobs; required with an fsx-import step or a Training job",
    ),
    key(
        "state_machine_name",
        &ParamType::Str,
        "the state machine's name (default `wf-<workflow name>`)",
    ),
    key(
        "tags",
        &ParamType::StrMap,
        "tags of the state machine and of every job and file system (`wf:step` names the step; keys starting with `aws:` or `wf:` are reserved)",
    ),
    key(
        "kms_key_id",
        &ParamType::Str,
        "KMS key (id, ARN or alias) for the jobs' storage volumes and outputs and for every S3 object wf writes (SSE-KMS)",
    ),
    key(
        "log_level",
        &ParamType::Enum(&["ALL", "ERROR", "FATAL", "OFF"]),
        "what the state machine logs to CloudWatch Logs (default `ERROR`; `OFF`: no logging)",
    ),
    key(
        "log_group",
        &ParamType::Str,
        "the CloudWatch Logs group of the state machine, created by `wf deploy` when missing (default `/aws/vendedlogs/states/<state machine name>`)",
    ),
    key(
        "tracing",
        &ParamType::Bool,
        "X-Ray tracing of the state machine (default false)",
    ),
];

/// What `targets.aws.steps` is.
pub const AWS_STEPS_DOC: &str =
    "the jobs of each step, by step id (each must name a step of the workflow)";

/// `targets.aws.steps.<id>`.
pub const AWS_STEP_KEYS: &[SettingKey] = &[
    key(
        "instance_type",
        &ParamType::Str,
        "SageMaker instance type (default `ml.m5.xlarge` for processing, `ml.p3.2xlarge` for training)",
    ),
    key(
        "instance_count",
        &ParamType::Int { min: 1, max: 1000 },
        "instances of the job (default: the step's own, e.g. a sharded-transform's `shards`, else 1)",
    ),
    key(
        "volume_size_gb",
        &ParamType::Int { min: 1, max: 16384 },
        "storage per instance in GB (default 50)",
    ),
    key(
        "max_runtime_seconds",
        &ParamType::Int {
            min: 60,
            max: 2_419_200,
        },
        "the job's time limit (default 86400 for processing, 432000 for training)",
    ),
    key(
        "retries",
        &ParamType::Int { min: 0, max: 10 },
        "retries of a failed job, each under a new job name after 60 s (default 0: a failed job fails the step at once; throttling and internal errors of SageMaker are always retried)",
    ),
    key(
        "timeout",
        &ParamType::Int {
            min: 60,
            max: 31_536_000,
        },
        "seconds the state machine waits for one attempt of the step's job (default its `max_runtime_seconds`, plus `max_wait_seconds` with `spot`, plus 1800)",
    ),
    key(
        "spot",
        &ParamType::Bool,
        "managed spot training: Training jobs only (SageMaker runs Processing jobs on on-demand capacity); checkpoints go to `P/checkpoints/<key>/` and an interrupted job resumes from them (default false)",
    ),
    key(
        "max_wait_seconds",
        &ParamType::Int {
            min: 60,
            max: 2_419_200,
        },
        "with `spot`: how long the job may wait for spot capacity and run, at least `max_runtime_seconds` (default twice `max_runtime_seconds`)",
    ),
    key(
        "tags",
        &ParamType::StrMap,
        "tags of this step's jobs, added to `targets.aws.tags`",
    ),
];

/// What `targets.aws.fsx` is.
pub const AWS_FSX_DOC: &str =
    "the FSx for Lustre file system that fsx-import steps put in front of a Training job";

/// `targets.aws.fsx`.
pub const AWS_FSX_KEYS: &[SettingKey] = &[
    key(
        "file_system_id",
        &ParamType::Str,
        "an existing file system to use; without it, one is created for each Training job and deleted after it",
    ),
    key(
        "storage_capacity_gb",
        &ParamType::Int {
            min: 1200,
            max: 1_000_000,
        },
        "capacity of a created file system (default 1200)",
    ),
    key(
        "per_unit_storage_throughput",
        &ParamType::Int { min: 50, max: 1000 },
        "MB/s per TiB; required with a PERSISTENT deployment type",
    ),
    key(
        "deployment_type",
        &ParamType::Enum(&["SCRATCH_1", "SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2"]),
        "deployment type of a created file system (default `SCRATCH_2`)",
    ),
];

/// The keys of one mapping, checked against `schema` (+ `extra` keys handled by the caller):
/// each valid value as JSON with its position.
struct Block<'a> {
    values: Vec<(&'a str, Json, Span)>,
}

impl Block<'_> {
    fn check<'n>(
        node: &'n Node,
        schema: &[SettingKey],
        extra: &[&str],
        context: &str,
        diags: &mut Diagnostics,
    ) -> Option<Block<'n>> {
        let Some(entries) = node.as_map() else {
            diags.error(
                node.span,
                format!("{context} expects a mapping, found {}", node.describe()),
            );
            return None;
        };
        let mut allowed: Vec<&str> = schema.iter().map(|k| k.name).collect();
        allowed.extend_from_slice(extra);
        check_keys(node, &allowed, context, diags);
        let mut values = Vec::new();
        for (k, v) in entries {
            if let Some(key) = schema.iter().find(|key| key.name == k.name)
                && let Some(json) = convert(key.ty, v, &format!("{context}: `{}`", k.name), diags)
            {
                values.push((k.name.as_str(), json, v.span));
            }
        }
        Some(Block { values })
    }

    fn get(&self, key: &str) -> Option<(&Json, Span)> {
        self.values
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, s)| (v, *s))
    }

    /// A non-empty string.
    fn str(&self, key: &str) -> Option<Spanned<String>> {
        let (v, span) = self.get(key)?;
        let s = v.as_str().filter(|s| !s.is_empty())?;
        Some(Spanned {
            value: s.to_string(),
            span,
        })
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|(v, _)| v.as_bool())
    }

    fn spanned<T>(&self, key: &str, f: impl Fn(&Json) -> Option<T>) -> Option<Spanned<T>> {
        let (v, span) = self.get(key)?;
        Some(Spanned { value: f(v)?, span })
    }

    fn u32(&self, key: &str) -> Option<u32> {
        self.get(key)
            .and_then(|(v, _)| v.as_u64())
            .and_then(|n| u32::try_from(n).ok())
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .and_then(|(v, _)| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Parses `targets.aws`; problems go to `diags` (all of them), and what is valid is kept.
pub fn parse_aws(node: &Node, diags: &mut Diagnostics) -> AwsSettings {
    let mut out = AwsSettings {
        span: node.span,
        ..AwsSettings::default()
    };
    let Some(block) = Block::check(node, AWS_KEYS, &["steps", "fsx"], "targets.aws", diags) else {
        return out;
    };
    out.region = block.str("region");
    out.role_arn = block.str("role_arn");
    out.image_uri = block.str("image_uri");
    out.bucket = block.str("bucket");
    out.subnets = block.list("subnets");
    out.security_groups = block.list("security_groups");
    out.state_machine_name = block.str("state_machine_name");
    out.tags = tags(node, &block, "targets.aws", diags);
    out.kms_key_id = block.str("kms_key_id");
    out.log_level = block.str("log_level");
    out.log_group = block.str("log_group");
    out.tracing = block.bool("tracing");
    if let Some(steps) = node.get("steps") {
        match steps.as_map() {
            Some(entries) => {
                for (k, v) in entries {
                    let context = format!("targets.aws.steps.{}", k.name);
                    let Some(b) = Block::check(v, AWS_STEP_KEYS, &[], &context, diags) else {
                        continue;
                    };
                    let u32_of = |v: &Json| v.as_u64().and_then(|n| u32::try_from(n).ok());
                    let resources = StepResources {
                        instance_type: b.str("instance_type").map(|s| s.value),
                        instance_count: b.u32("instance_count"),
                        volume_size_gb: b.u32("volume_size_gb"),
                        max_runtime_seconds: b.spanned("max_runtime_seconds", u32_of),
                        retries: b.u32("retries"),
                        timeout: b.spanned("timeout", u32_of),
                        spot: b.spanned("spot", Json::as_bool),
                        max_wait_seconds: b.spanned("max_wait_seconds", u32_of),
                        tags: tags(v, &b, &context, diags),
                    };
                    let id = Spanned {
                        value: k.name.clone(),
                        span: k.span,
                    };
                    out.steps.push((id, resources));
                }
            }
            None => diags.error(
                steps.span,
                format!(
                    "targets.aws.steps expects a mapping of step ids, found {}",
                    steps.describe()
                ),
            ),
        }
    }
    if let Some(fsx) = node.get("fsx")
        && let Some(b) = Block::check(fsx, AWS_FSX_KEYS, &[], "targets.aws.fsx", diags)
    {
        out.fsx = Some(FsxBlock {
            span: fsx.span,
            file_system_id: b.str("file_system_id").map(|s| s.value),
            storage_capacity_gb: b.u32("storage_capacity_gb"),
            deployment_type: b.str("deployment_type"),
            per_unit_storage_throughput: b.u32("per_unit_storage_throughput"),
        });
    }
    out
}

/// AWS's limits on a tag (SageMaker, Step Functions and FSx share them).
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// The `tags:` of a block, each key checked where it is written: AWS's lengths, and prefixes that
/// are not the user's (`aws:` is AWS's, `wf:` wf's own, e.g. `wf:step`).
fn tags(
    node: &Node,
    block: &Block<'_>,
    context: &str,
    diags: &mut Diagnostics,
) -> Vec<(String, String)> {
    let Some((Json::Object(values), _)) = block.get("tags") else {
        return Vec::new();
    };
    let entries = node.get("tags").and_then(Node::as_map).unwrap_or_default();
    let mut out = Vec::new();
    for (k, v) in entries {
        let Some(value) = values.get(&k.name).and_then(Json::as_str) else {
            continue;
        };
        let problem = if k.name.is_empty() || k.name.chars().count() > MAX_TAG_KEY {
            Some(format!("must be 1 to {MAX_TAG_KEY} characters"))
        } else if k.name.to_ascii_lowercase().starts_with("aws:") {
            Some("starts with `aws:`, which AWS reserves".to_string())
        } else if k.name.starts_with("wf:") {
            Some("starts with `wf:`, which wf reserves for its own tags (`wf:step`)".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            diags.error(k.span, format!("{context}.tags: key `{}` {p}", k.name));
        } else if value.chars().count() > MAX_TAG_VALUE {
            diags.error(
                v.span,
                format!(
                    "{context}.tags.{}: a tag value may hold at most {MAX_TAG_VALUE} characters",
                    k.name
                ),
            );
        } else {
            out.push((k.name.clone(), value.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the reference states are those jobs and file systems get.
    #[test]
    fn documented_defaults_are_the_defaults() {
        use crate::cloud::{FsxSettings, job};
        let doc =
            |keys: &[SettingKey], name: &str| keys.iter().find(|k| k.name == name).unwrap().doc;
        let (p, t) = (job::PROCESSING, job::TRAINING);
        let types = doc(AWS_STEP_KEYS, "instance_type");
        assert!(types.contains(&format!("`{}` for processing", p.instance_type)));
        assert!(types.contains(&format!("`{}` for training", t.instance_type)));
        assert_eq!(p.volume_size_gb, t.volume_size_gb);
        assert!(
            doc(AWS_STEP_KEYS, "volume_size_gb")
                .contains(&format!("(default {})", p.volume_size_gb))
        );
        let runtime = doc(AWS_STEP_KEYS, "max_runtime_seconds");
        assert!(runtime.contains(&format!("{} for processing", p.max_runtime_seconds)));
        assert!(runtime.contains(&format!("{} for training", t.max_runtime_seconds)));
        let fsx = FsxSettings::default();
        assert!(
            doc(AWS_FSX_KEYS, "storage_capacity_gb")
                .contains(&format!("(default {})", fsx.storage_capacity_gb))
        );
        assert!(
            doc(AWS_FSX_KEYS, "deployment_type")
                .contains(&format!("(default `{}`)", fsx.deployment_type))
        );
    }

    fn parse(text: &str) -> (AwsSettings, Vec<String>) {
        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        let root = crate::yaml::parse(text, &mut diags).unwrap();
        let s = parse_aws(root.get("aws").unwrap(), &mut diags);
        (
            s,
            diags.into_sorted().iter().map(|d| d.to_string()).collect(),
        )
    }

    #[test]
    fn typed_with_positions() {
        let (s, errs) = parse(
            "aws:\n  region: us-east-1\n  subnets: [a, b]\n  bucket: ''\n  steps:\n    train: { instance_count: 2 }\n  fsx: { deployment_type: PERSISTENT_1 }\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.region.as_ref().unwrap().value, "us-east-1");
        assert_eq!(s.region.unwrap().span, Span::new(2, 11));
        assert_eq!(s.subnets, ["a", "b"]);
        assert_eq!(s.bucket, None, "an empty string is no setting");
        assert_eq!(s.steps[0].0.value, "train");
        assert_eq!(s.steps[0].0.span, Span::new(6, 5));
        assert_eq!(s.steps[0].1.instance_count, Some(2));
        let fsx = s.fsx.unwrap();
        assert_eq!(fsx.deployment_type.unwrap().value, "PERSISTENT_1");
    }

    #[test]
    fn wrong_types_and_keys_are_reported_and_dropped() {
        let (s, errs) =
            parse("aws:\n  region: 3\n  regoin: x\n  steps:\n    train: { instance_count: 0 }\n");
        assert_eq!(s.region, None);
        assert_eq!(s.steps[0].1.instance_count, None);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("t.yaml:2:11: targets.aws: `region` expects"));
        assert!(errs[1].contains("3:3") && errs[1].contains("regoin"));
        assert!(errs[2].contains("instance_count"));
    }
}
