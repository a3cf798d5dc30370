//! `targets.aws` resolved for the cloud: every setting the state machine, `wf deploy`/`wf start` and
//! `wf run --executor sagemaker` need, or a positioned error naming the missing key. The settings
//! were typed at load (`crate::targets`); this checks that they are complete and consistent.

use super::layout::S3Url;
use crate::diag::{Diagnostics, Span, did_you_mean};
use crate::step::RemoteTask;
use crate::targets::{AwsSettings, StepResources};
use crate::workflow::Workflow;
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
            state_machine_name,
            fsx,
            steps,
        })
    }

    /// `targets.aws.steps.<step>`, or no settings.
    pub fn resources(&self, step: &str) -> StepResources {
        self.steps.get(step).cloned().unwrap_or_default()
    }
}
