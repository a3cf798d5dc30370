//! `targets.aws` resolved for the cloud: every setting the state machine, `wf deploy`/`wf start` and
//! `wf run --executor sagemaker` need, or a positioned error naming the missing key. The settings
//! were typed at load (`crate::targets`); this checks that they are complete and consistent.

use super::layout::S3Url;
use crate::diag::{Diagnostics, Span, did_you_mean};
use crate::step::RemoteTask;
use crate::targets::{AwsSettings, StepResources};
use crate::workflow::{StepDef, Workflow};
use std::collections::BTreeMap;

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

/// The state machine's CloudWatch Logs `loggingConfiguration` (docs/cloud.md §8).
#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    /// `ALL`, `ERROR` or `FATAL`.
    pub level: String,
    /// The log group's name; `wf deploy` creates it when missing.
    pub group: String,
}

/// `targets.aws.log_level` when not given.
pub const DEFAULT_LOG_LEVEL: &str = "ERROR";

/// The log group of a state machine when `targets.aws.log_group` is not given.
pub fn default_log_group(state_machine: &str) -> String {
    format!("/aws/vendedlogs/states/{state_machine}")
}

/// Tags AWS allows on one resource; the step's own `wf:step` tag is one of them.
pub const MAX_TAGS: usize = 50;

/// Everything the cloud side needs from `targets.aws`.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsTarget {
    pub region: String,
    /// SageMaker job role (and, unless deploy is told otherwise, the state machine's role).
    pub role_arn: String,
    pub image_uri: String,
    /// P: from `cache: s3://...` or `targets.aws.bucket`.
    pub cache: S3Url,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// Default `wf-<workflow name>`.
    pub state_machine_name: String,
    pub fsx: FsxSettings,
    pub steps: BTreeMap<String, StepResources>,
    /// Tags of the state machine and of every job and file system (before each step's own).
    pub tags: Vec<(String, String)>,
    /// SSE-KMS for every object wf writes, and the jobs' volumes and outputs.
    pub kms_key_id: Option<String>,
    /// `None`: `log_level: OFF`.
    pub logging: Option<Logging>,
    /// X-Ray tracing of the state machine.
    pub tracing: bool,
}

impl AwsTarget {
    /// Resolves `targets.aws` of a loaded workflow; problems go to `diags` (all of them).
    pub fn resolve(wf: &Workflow, diags: &mut Diagnostics) -> Option<AwsTarget> {
        let empty = AwsSettings::default();
        let settings = wf.targets.aws.as_ref();
        let s = settings.unwrap_or(&empty);
        let block = settings.map_or(Span::new(1, 1), |s| s.span);
        let needs_vpc = wf.steps.iter().any(|d| {
            matches!(
                d.step.remote(&d.params),
                RemoteTask::FsxImport | RemoteTask::Training { .. }
            )
        });
        let before = diags.len();
        if settings.is_none() {
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
            if !present && settings.is_some() {
                diags.error(block, format!("targets.aws is missing `{key}` ({why})"));
            }
        };
        let value =
            |v: &Option<crate::targets::Spanned<String>>| v.as_ref().map(|v| v.value.clone());
        let region = value(&s.region);
        require("region", region.is_some(), "the AWS region to run in");
        let role_arn = value(&s.role_arn);
        require(
            "role_arn",
            role_arn.is_some(),
            "the IAM role SageMaker jobs and the state machine run as",
        );
        let image_uri = value(&s.image_uri);
        require(
            "image_uri",
            image_uri.is_some(),
            "the container image holding `wf`, run by every job",
        );
        if needs_vpc {
            let why = "FSx for Lustre and training jobs run in a VPC";
            require("subnets", !s.subnets.is_empty(), why);
            require("security_groups", !s.security_groups.is_empty(), why);
        }

        // The cache: `cache: s3://...` and/or targets.aws.bucket.
        let parse = |text: &str| S3Url::cache(text).and_then(|u| u.check_plain_prefix().map(|_| u));
        let from_cache = wf
            .cache
            .as_ref()
            .filter(|(c, _)| c.starts_with("s3://"))
            .map(|(c, span)| (parse(c), *span));
        let from_bucket = s.bucket.as_ref().map(|b| (parse(&b.value), b.span));
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
                    "targets.aws.bucket names {b} but `cache:` names {a}; the cloud run shares the workflow's S3 cache, so name one location"
                ),
            );
        }
        if from_cache.is_none() && from_bucket.is_none() && settings.is_some() {
            diags.error_with_help(
                block,
                "targets.aws is missing `bucket` (where the S3 cache lives)",
                "`bucket: s3://my-bucket/wf-cache`, or `cache: s3://...` at the top of the workflow",
            );
        }

        let state_machine_name =
            value(&s.state_machine_name).unwrap_or_else(|| format!("wf-{}", wf.name));
        let ok_name = state_machine_name.len() <= 80
            && state_machine_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_name {
            diags.error(
                s.state_machine_name.as_ref().map_or(block, |n| n.span),
                format!(
                    "state machine name `{state_machine_name}` must be at most 80 letters, digits, `-` or `_`"
                ),
            );
        }

        let mut fsx = FsxSettings::default();
        if let Some(f) = &s.fsx {
            fsx.file_system_id = f.file_system_id.clone();
            if let Some(c) = f.storage_capacity_gb {
                fsx.storage_capacity_gb = c;
            }
            if let Some(d) = &f.deployment_type {
                fsx.deployment_type = d.value.clone();
            }
            fsx.per_unit_storage_throughput = f.per_unit_storage_throughput;
        }
        if fsx.deployment_type.starts_with("PERSISTENT")
            && fsx.per_unit_storage_throughput.is_none()
        {
            let at = s
                .fsx
                .as_ref()
                .and_then(|f| f.deployment_type.as_ref())
                .map_or(block, |d| d.span);
            diags.error(
                at,
                format!(
                    "targets.aws.fsx: deployment type {} needs `per_unit_storage_throughput`",
                    fsx.deployment_type
                ),
            );
        }

        if s.tags.len() + 1 > MAX_TAGS {
            diags.error(
                block,
                format!(
                    "targets.aws.tags: {} tags; with `wf:step` on every job AWS allows {}",
                    s.tags.len(),
                    MAX_TAGS - 1
                ),
            );
        }

        let ids: Vec<&str> = wf.steps.iter().map(|d| d.id.as_str()).collect();
        let mut steps = BTreeMap::new();
        for (id, resources) in &s.steps {
            if !ids.contains(&id.value.as_str()) {
                let msg = format!(
                    "targets.aws.steps.{} names no step of the workflow",
                    id.value
                );
                match did_you_mean(&id.value, ids.iter().copied()) {
                    Some(best) => {
                        diags.error_with_help(id.span, msg, format!("did you mean `{best}`?"))
                    }
                    None => diags.error_with_help(
                        id.span,
                        msg,
                        format!("its steps: {}", ids.join(", ")),
                    ),
                }
            }
            if let Some(def) = wf.steps.iter().find(|d| d.id == id.value) {
                check_step(def, resources, &s.tags, id.span, diags);
            }
            steps.insert(id.value.clone(), resources.clone());
        }

        if diags.len() > before {
            return None;
        }
        Some(AwsTarget {
            region: region?,
            role_arn: role_arn?,
            image_uri: image_uri?,
            cache: cache?,
            subnets: s.subnets.clone(),
            security_groups: s.security_groups.clone(),
            logging: match s.log_level.as_ref().map(|l| l.value.as_str()) {
                Some("OFF") => None,
                level => Some(Logging {
                    level: level.unwrap_or(DEFAULT_LOG_LEVEL).to_string(),
                    group: value(&s.log_group)
                        .unwrap_or_else(|| default_log_group(&state_machine_name)),
                }),
            },
            state_machine_name,
            fsx,
            steps,
            tags: s.tags.clone(),
            kms_key_id: value(&s.kms_key_id),
            tracing: s.tracing.unwrap_or(false),
        })
    }

    /// The tags of step `step`'s jobs: `wf:step`, the workflow's, then the step's (a key of both
    /// takes the step's value).
    pub fn tags(&self, step: &str) -> Vec<(String, String)> {
        let mut out = vec![(super::job::STEP_TAG.to_string(), step.to_string())];
        for (k, v) in self.tags.iter().chain(&self.resources(step).tags) {
            match out.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => out.push((k.clone(), v.clone())),
            }
        }
        out
    }

    /// `targets.aws.steps.<step>`, or no settings.
    pub fn resources(&self, step: &str) -> StepResources {
        self.steps.get(step).cloned().unwrap_or_default()
    }
}

/// What `targets.aws.steps.<id>` may ask of its step: spot capacity only for Training jobs, a spot
/// job's wait at least its run time, a task timeout no shorter than the job's own limit, and no more
/// tags than AWS allows.
fn check_step(
    def: &StepDef,
    r: &StepResources,
    workflow_tags: &[(String, String)],
    at: Span,
    diags: &mut Diagnostics,
) {
    let remote = def.step.remote(&def.params);
    let training = matches!(remote, RemoteTask::Training { .. });
    let defaults = if training {
        super::job::TRAINING
    } else {
        super::job::PROCESSING
    };
    let runtime = r
        .max_runtime_seconds
        .as_ref()
        .map_or(defaults.max_runtime_seconds, |m| m.value);
    let spot = r.spot.as_ref().is_some_and(|s| s.value);
    if let Some(s) = r.spot.as_ref().filter(|s| s.value) {
        match remote {
            RemoteTask::Training { .. } => {}
            RemoteTask::Processing { .. } => diags.error_with_help(
                s.span,
                format!(
                    "targets.aws.steps.{}.spot: step `{}` ({}) runs as a SageMaker Processing job, which SageMaker runs on on-demand capacity only; managed spot is for Training jobs",
                    def.id,
                    def.id,
                    def.kind()
                ),
                "remove `spot`",
            ),
            RemoteTask::FsxImport => diags.error(
                s.span,
                format!(
                    "targets.aws.steps.{}.spot: step `{}` ({}) runs no job",
                    def.id,
                    def.id,
                    def.kind()
                ),
            ),
        }
    }
    if let Some(w) = &r.max_wait_seconds {
        if !spot {
            diags.error(
                w.span,
                format!(
                    "targets.aws.steps.{}.max_wait_seconds is for managed spot training; add `spot: true` or remove it",
                    def.id
                ),
            );
        } else if w.value < runtime {
            diags.error(
                w.span,
                format!(
                    "targets.aws.steps.{}.max_wait_seconds ({}) must be at least the job's max_runtime_seconds ({runtime})",
                    def.id, w.value
                ),
            );
        }
    }
    if let Some(t) = &r.timeout
        && t.value < runtime
    {
        diags.error(
            t.span,
            format!(
                "targets.aws.steps.{}.timeout ({}) is shorter than the job's max_runtime_seconds ({runtime}): the state machine would give up on a job that is still allowed to run",
                def.id, t.value
            ),
        );
    }
    let count = 1
        + workflow_tags.len()
        + r.tags
            .iter()
            .filter(|(k, _)| !workflow_tags.iter().any(|(w, _)| w == k))
            .count();
    if count > MAX_TAGS {
        diags.error(
            at,
            format!(
                "targets.aws.steps.{}: its jobs would have {count} tags (the workflow's, the step's and `wf:step`); AWS allows {MAX_TAGS}",
                def.id
            ),
        );
    }
}
