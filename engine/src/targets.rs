//! Structure of `targets:` blocks. Only key names and value types are checked here; whether a target
//! has everything a compile needs is checked by the compiler for that target.

use crate::diag::Diagnostics;
use crate::params::{ParamType, convert};
use crate::workflow::check_keys;
use crate::yaml::Node;

static STR_LIST: ParamType = ParamType::List(&ParamType::Str);

const AWS_KEYS: &[(&str, &ParamType)] = &[
    ("region", &ParamType::Str),
    ("role_arn", &ParamType::Str),
    ("image_uri", &ParamType::Str),
    ("bucket", &ParamType::Str),
    ("subnets", &STR_LIST),
    ("security_groups", &STR_LIST),
    ("state_machine_name", &ParamType::Str),
];

const AWS_STEP_KEYS: &[(&str, &ParamType)] = &[
    ("instance_type", &ParamType::Str),
    ("instance_count", &ParamType::Int { min: 1, max: 1000 }),
    ("volume_size_gb", &ParamType::Int { min: 1, max: 16384 }),
    (
        "max_runtime_seconds",
        &ParamType::Int {
            min: 60,
            max: 2_419_200,
        },
    ),
];

const AWS_FSX_KEYS: &[(&str, &ParamType)] = &[
    ("file_system_id", &ParamType::Str),
    (
        "storage_capacity_gb",
        &ParamType::Int {
            min: 1200,
            max: 1_000_000,
        },
    ),
    (
        "per_unit_storage_throughput",
        &ParamType::Int { min: 50, max: 1000 },
    ),
    (
        "deployment_type",
        &ParamType::Enum(&["SCRATCH_1", "SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2"]),
    ),
];

fn check_typed(
    node: &Node,
    schema: &[(&str, &ParamType)],
    extra: &[&str],
    context: &str,
    diags: &mut Diagnostics,
) {
    let Some(entries) = node.as_map() else {
        diags.error(
            node.span,
            format!("{context} expects a mapping, found {}", node.describe()),
        );
        return;
    };
    let mut allowed: Vec<&str> = schema.iter().map(|(k, _)| *k).collect();
    allowed.extend_from_slice(extra);
    check_keys(node, &allowed, context, diags);
    for (k, v) in entries {
        if let Some((_, ty)) = schema.iter().find(|(name, _)| *name == k.name) {
            convert(ty, v, &format!("{context}: `{}`", k.name), diags);
        }
    }
}

/// Checks `targets.aws`.
pub fn check_aws(node: &Node, diags: &mut Diagnostics) {
    check_typed(node, AWS_KEYS, &["steps", "fsx"], "targets.aws", diags);
    if let Some(steps) = node.get("steps") {
        match steps.as_map() {
            Some(entries) => {
                for (k, v) in entries {
                    check_typed(
                        v,
                        AWS_STEP_KEYS,
                        &[],
                        &format!("targets.aws.steps.{}", k.name),
                        diags,
                    );
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
    if let Some(fsx) = node.get("fsx") {
        check_typed(fsx, AWS_FSX_KEYS, &[], "targets.aws.fsx", diags);
    }
}
