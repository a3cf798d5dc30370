//! The SageMaker jobs of a step (docs/cloud.md §5–7): `plan_step` describes them once as `JobSpec`s
//! (name, image, worker command line, instances, inputs or channels, checkpoints, FSx), with the
//! job defaults; the Step Functions compiler renders a `JobSpec` as a `.sync` task and the SageMaker
//! executor as SDK requests. Values known only at submission are `Text` holes.

use super::layout;
use super::target::AwsTarget;
use super::text::{Text, Var};
use super::worker::WorkerCall;
use crate::artifact::ArtifactType;
use crate::key::KeyComponents;
use crate::step::RemoteTask;
use crate::workflow::Workflow;
use std::path::PathBuf;

/// Sizes of a job when `targets.aws.steps.<id>` does not set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    pub instance_type: &'static str,
    pub volume_size_gb: u32,
    pub max_runtime_seconds: u32,
}

pub const PROCESSING: JobDefaults = JobDefaults {
    instance_type: "ml.m5.xlarge",
    volume_size_gb: 50,
    max_runtime_seconds: 86_400,
};

pub const TRAINING: JobDefaults = JobDefaults {
    instance_type: "ml.p3.2xlarge",
    volume_size_gb: 50,
    max_runtime_seconds: 432_000,
};

/// The commit job of a sharded step (fixed: it only merges parts).
pub const COMMIT: JobDefaults = JobDefaults {
    instance_type: "ml.m5.large",
    volume_size_gb: 30,
    max_runtime_seconds: 3_600,
};

/// Longest execution name the job-name scheme allows (docs/cloud.md §5); `wf start` respects it.
pub const MAX_EXECUTION_NAME: usize = 32;
/// Longest static job-name prefix: 63 = prefix + `-` + execution name + `-c99` (attempts below 100:
/// throttling retries plus failed-job retries).
pub const MAX_JOB_PREFIX: usize = 63 - MAX_EXECUTION_NAME - 5;
/// Polls of a new FSx file system (`FSX_POLL_SECONDS` apart) before giving up on it becoming
/// AVAILABLE.
pub const FSX_MAX_POLLS: u32 = 120;
pub const FSX_POLL_SECONDS: u32 = 30;
/// SageMaker's limit on one container argument.
pub const MAX_ARG: usize = 256;
/// Where SageMaker puts a Training job's checkpoints on the instance (`CheckpointConfig.LocalPath`).
pub const CHECKPOINT_DIR: &str = "/opt/ml/checkpoints";
/// Added to a job's own limit for the Task's `TimeoutSeconds` (queueing, image pull, upload).
pub const TASK_TIMEOUT_SLACK: u32 = 1_800;
/// Seconds before a failed job's retry (`targets.aws.steps.<id>.retries`).
pub const RETRY_SECONDS: u32 = 60;
/// SageMaker's longest `MaxWaitTimeInSeconds` (28 days).
pub const MAX_WAIT_LIMIT: u32 = 2_419_200;

/// `MaxWaitTimeInSeconds` of a spot job without `max_wait_seconds`: twice its run time (spot
/// capacity may take as long again), within SageMaker's limit.
pub fn default_max_wait(max_runtime_seconds: u32) -> u32 {
    max_runtime_seconds
        .saturating_mul(2)
        .min(MAX_WAIT_LIMIT)
        .max(max_runtime_seconds)
}

/// Instance families with local NVMe storage. SageMaker encrypts that storage in hardware and
/// refuses a `VolumeKmsKeyId` for them.
const INSTANCE_STORAGE_FAMILIES: &[&str] = &[
    "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "g4dn", "g5", "g6", "g6e", "gr6", "trn1",
    "trn1n", "trn2", "inf2", "m5d", "m5dn", "m5ad", "m6id", "c5d", "c6id", "r5d", "r5dn", "r5ad",
    "r6id", "x2iedn",
];

/// Whether an `ml.<family>.<size>` instance type has local NVMe storage (no volume key then).
pub fn has_instance_storage(instance_type: &str) -> bool {
    let family = instance_type
        .strip_prefix("ml.")
        .unwrap_or(instance_type)
        .rsplit_once('.')
        .map_or("", |(f, _)| f);
    INSTANCE_STORAGE_FAMILIES.contains(&family)
}

/// Paths inside a job's container, relative to SageMaker's root `/opt/ml` (docs/cloud.md §5).
pub mod paths {
    /// SageMaker's root; `wf worker` reads `$WF_SM_ROOT` instead when it is set (tests).
    pub const ROOT: &str = "/opt/ml";

    /// A Processing job's input `<slot>` (for a sharded Dataset: its `imagesTr/` and `labelsTr/`).
    pub fn processing_input(slot: &str) -> String {
        format!("processing/input/{slot}")
    }

    /// A sharded Dataset's `dataset.json`, replicated to every instance.
    pub fn processing_meta(slot: &str) -> String {
        format!("processing/input/{slot}-meta")
    }

    /// A Training job's channel `<slot>`.
    pub fn training_channel(slot: &str) -> String {
        format!("input/data/{slot}")
    }

    /// The part of a Dataset that a sharded job deals to its instances (ShardedByS3Key); the rest
    /// (labels, `dataset.json`) goes to every instance.
    pub const SHARDED_DIR: &str = "imagesTr";
    /// Replicated to every instance of a sharded job beside the images.
    pub const REPLICATED_DIR: &str = "labelsTr";

    /// The hosts of the job: Training, then Processing.
    pub const RESOURCE_CONFIGS: [&str; 2] = [
        "input/config/resourceconfig.json",
        "config/resourceconfig.json",
    ];

    /// A Training job's checkpoint directory (`CHECKPOINT_DIR`), relative to the root.
    pub const CHECKPOINTS: &str = "checkpoints";
}

/// The environment variable naming the step in every job.
pub const STEP_ENV: &str = "WF_STEP";
/// The tag naming the step on every job and file system.
pub const STEP_TAG: &str = "wf:step";

/// `<id>` made a SageMaker job-name prefix (docs/cloud.md §5).
pub fn job_prefix(id: &str) -> String {
    let s = id.replace('_', "-");
    if s.len() <= MAX_JOB_PREFIX {
        return s;
    }
    use sha2::Digest as _;
    let h = hex::encode(sha2::Sha256::digest(id.as_bytes()));
    format!("{}-{}", &s[..MAX_JOB_PREFIX - 5], &h[..4])
}

/// `<prefix>-<execution name>-<tag><attempt>`: unique per execution and attempt.
fn job_name(id: &str, tag: &str) -> Text {
    Text::lit(format!("{}-", job_prefix(id)))
        .then_var(Var::ExecutionName)
        .then_lit(format!("-{tag}"))
        .then_var(Var::Attempt)
}

/// Where an upload's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadSource {
    Bytes(Vec<u8>),
    /// A local file (a step's declared file).
    File(PathBuf),
}

/// An object that must be in the bucket before a step's job starts (params too long for a container
/// argument, declared local files). Content-addressed: skip it when the key exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// Object key in the cache's bucket (the prefix included).
    pub key: String,
    pub source: UploadSource,
}

/// One SageMaker job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub step: String,
    pub name: Text,
    pub role_arn: String,
    pub image_uri: String,
    pub entrypoint: Vec<String>,
    pub args: Vec<Text>,
    pub instance_type: String,
    pub instance_count: u32,
    pub volume_size_gb: u32,
    pub max_runtime_seconds: u32,
    pub environment: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// `VpcConfig` (Training) or `NetworkConfig.VpcConfig` (Processing), when the target has subnets.
    pub vpc: Option<Vpc>,
    /// `VolumeKmsKeyId`: the target's key, unless the instance type has local NVMe storage
    /// ([`has_instance_storage`]).
    pub volume_kms_key_id: Option<String>,
    /// The target's key, for what the job writes itself (a Training job's `OutputDataConfig` and
    /// checkpoints).
    pub output_kms_key_id: Option<String>,
    /// Retries after the job failed, each under a new name (`targets.aws.steps.<id>.retries`).
    pub retries: u32,
    /// How long the state machine waits for one attempt (the Task's `TimeoutSeconds`).
    pub timeout_seconds: u32,
    pub form: JobForm,
}

/// Managed spot training (`targets.aws.steps.<id>.spot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spot {
    /// `MaxWaitTimeInSeconds`: waiting for capacity plus running, at least the job's run time.
    pub max_wait_seconds: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobForm {
    Processing {
        inputs: Vec<ProcessingInput>,
    },
    Training {
        channels: Vec<Channel>,
        /// Each param as text (strings unquoted, the rest canonical JSON), for the console.
        hyperparameters: Vec<(String, String)>,
        output_path: String,
        /// `CheckpointConfig.S3Uri`: `P/checkpoints/<key>/`, synced with `CHECKPOINT_DIR`, where
        /// the worker resumes from (`RunContext::resume_dir`).
        checkpoint_uri: Text,
        /// `AlgorithmSpecification.MetricDefinitions` (`Step::metrics`).
        metrics: Vec<crate::step::Metric>,
        spot: Option<Spot>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessingInput {
    pub name: String,
    pub s3_uri: Text,
    pub local_path: String,
    /// `ShardedByS3Key` (else `FullyReplicated`).
    pub sharded: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub name: String,
    pub source: ChannelSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelSource {
    /// An S3 prefix, FullyReplicated, File mode.
    S3(Text),
    /// The file system `Var::FsxId`, read-only, at this directory.
    Fsx { directory: Text },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vpc {
    pub subnets: Vec<String>,
    pub security_group_ids: Vec<String>,
}

/// A Training step's input read through FSx for Lustre (docs/cloud.md §7).
#[derive(Debug, Clone, PartialEq)]
pub struct FsxUse {
    /// The input slot (produced by an fsx-import step).
    pub slot: String,
    /// The file system to create for the job and delete after it; `None`: the target's existing
    /// `fsx.file_system_id`.
    pub create: Option<FsxCreate>,
}

/// `CreateFileSystem` for one Training job.
#[derive(Debug, Clone, PartialEq)]
pub struct FsxCreate {
    /// `ClientRequestToken`: one file system per step and run, whatever the retries.
    pub token: Text,
    pub storage_capacity_gb: u32,
    pub deployment_type: String,
    pub per_unit_storage_throughput: Option<u32>,
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    /// `P/trees/<digest>/` of the input.
    pub import_path: Text,
    pub tags: Vec<(String, String)>,
}

/// Everything a step needs in the cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct StepJobs {
    pub run: JobSpec,
    /// A sharded step's commit job, after `run` (docs/cloud.md §6).
    pub commit: Option<JobSpec>,
    pub uploads: Vec<Upload>,
    pub fsx: Option<FsxUse>,
}

/// The jobs of step `i` under key components `kc` (its input digests are not used: they are holes),
/// or `None` for a step without a job (fsx-import passes its input through).
pub fn plan_step(
    wf: &Workflow,
    i: usize,
    target: &AwsTarget,
    kc: &KeyComponents,
) -> Option<StepJobs> {
    let def = &wf.steps[i];
    let id = def.id.as_str();
    let res = target.resources(id);
    let cache = &target.cache;
    let remote = def.step.remote(&def.params);
    let mut uploads = Vec::new();

    // `--params`: inline canonical JSON when it fits a container argument, else an uploaded object.
    let json = def.params.canonical_json();
    let params = if json.len() <= MAX_ARG {
        json
    } else {
        let rel = layout::params(&json);
        uploads.push(Upload {
            key: cache.key(&rel),
            source: UploadSource::Bytes(json.into_bytes()),
        });
        cache.url(&rel)
    };
    let files = kc.files_digest();
    if let Some(fd) = &files {
        for (path, digest) in &kc.files {
            let key = cache.key(&layout::object(digest));
            if !uploads.iter().any(|u: &Upload| u.key == key) {
                uploads.push(Upload {
                    key,
                    source: UploadSource::File(wf.dir.join(path)),
                });
            }
        }
        uploads.push(Upload {
            key: cache.key(&layout::files(fd)),
            source: UploadSource::Bytes(kc.files_text().into_bytes()),
        });
    }
    let producer_remote = |slot: &str| {
        let p = &wf.steps[def.inputs[slot]];
        (p.step.remote(&p.params), p.output)
    };
    let mut call = WorkerCall {
        kind: def.kind().to_string(),
        step: id.to_string(),
        cache: cache.clone(),
        params,
        seed: wf.seed,
        inputs: def.inputs.keys().cloned().collect(),
        files,
        shards: None,
        commit: false,
        kms_key_id: target.kms_key_id.clone(),
    };
    let vpc = (!target.subnets.is_empty()).then(|| Vpc {
        subnets: target.subnets.clone(),
        security_group_ids: target.security_groups.clone(),
    });
    let job = |call: &WorkerCall, name: Text, d: &JobDefaults, count: u32, form: JobForm| {
        let instance_type = res
            .instance_type
            .clone()
            .unwrap_or_else(|| d.instance_type.to_string());
        let max_runtime_seconds = res
            .max_runtime_seconds
            .as_ref()
            .map_or(d.max_runtime_seconds, |m| m.value);
        let waits = match &form {
            JobForm::Training {
                spot: Some(spot), ..
            } => spot.max_wait_seconds,
            _ => max_runtime_seconds,
        };
        JobSpec {
            step: id.to_string(),
            name,
            role_arn: target.role_arn.clone(),
            image_uri: target.image_uri.clone(),
            entrypoint: call.entrypoint(),
            args: call.args(),
            volume_kms_key_id: target
                .kms_key_id
                .clone()
                .filter(|_| !has_instance_storage(&instance_type)),
            output_kms_key_id: target.kms_key_id.clone(),
            instance_type,
            instance_count: count,
            volume_size_gb: res.volume_size_gb.unwrap_or(d.volume_size_gb),
            max_runtime_seconds,
            environment: vec![(STEP_ENV.into(), id.to_string())],
            tags: target.tags(id),
            vpc: vpc.clone(),
            retries: res.retries.unwrap_or(0),
            timeout_seconds: res
                .timeout
                .as_ref()
                .map_or_else(|| waits.saturating_add(TASK_TIMEOUT_SLACK), |t| t.value),
            form,
        }
    };

    match remote {
        RemoteTask::FsxImport => None,
        RemoteTask::Processing {
            instances,
            sharded_input,
        } => {
            let count = res.instance_count.unwrap_or(instances).max(1);
            let sharded = sharded_input && count > 1;
            call.shards = sharded.then_some(count);
            let mut inputs = Vec::new();
            for slot in def.inputs.keys() {
                let base = format!("{}/{}", paths::ROOT, paths::processing_input(slot));
                let tree = layout::tree_url(cache, Var::Artifact(slot.clone()));
                let input = |name: String, s3_uri: Text, local_path: String, sharded: bool| {
                    ProcessingInput {
                        name,
                        s3_uri,
                        local_path,
                        sharded,
                    }
                };
                if sharded && producer_remote(slot).1 == ArtifactType::Dataset {
                    // A Dataset's images are dealt to the instances; labels and dataset.json go to
                    // every one (docs/cloud.md §5).
                    inputs.push(input(
                        format!("{slot}-images"),
                        tree.clone().then_lit(format!("{}/", paths::SHARDED_DIR)),
                        format!("{base}/{}", paths::SHARDED_DIR),
                        true,
                    ));
                    inputs.push(input(
                        format!("{slot}-labels"),
                        tree.clone().then_lit(format!("{}/", paths::REPLICATED_DIR)),
                        format!("{base}/{}", paths::REPLICATED_DIR),
                        false,
                    ));
                    inputs.push(input(
                        format!("{slot}-meta"),
                        tree.then_lit("dataset.json"),
                        format!("{}/{}", paths::ROOT, paths::processing_meta(slot)),
                        false,
                    ));
                } else {
                    inputs.push(input(slot.clone(), tree, base, false));
                }
            }
            let run = job(
                &call,
                job_name(id, ""),
                &PROCESSING,
                count,
                JobForm::Processing { inputs },
            );
            let commit = sharded.then(|| {
                let call = WorkerCall {
                    commit: true,
                    ..call.clone()
                };
                let instance_type = COMMIT.instance_type.to_string();
                JobSpec {
                    volume_kms_key_id: target
                        .kms_key_id
                        .clone()
                        .filter(|_| !has_instance_storage(&instance_type)),
                    instance_type,
                    volume_size_gb: COMMIT.volume_size_gb,
                    max_runtime_seconds: COMMIT.max_runtime_seconds,
                    timeout_seconds: COMMIT.max_runtime_seconds + TASK_TIMEOUT_SLACK,
                    ..job(
                        &call,
                        job_name(id, "c"),
                        &COMMIT,
                        1,
                        JobForm::Processing { inputs: Vec::new() },
                    )
                }
            });
            Some(StepJobs {
                run,
                commit,
                uploads,
                fsx: None,
            })
        }
        RemoteTask::Training { instances } => {
            let fsx_slot = def
                .inputs
                .keys()
                .find(|slot| matches!(producer_remote(slot).0, RemoteTask::FsxImport))
                .cloned();
            let existing = target.fsx.file_system_id.is_some();
            let channels = def
                .inputs
                .keys()
                .map(|slot| {
                    let artifact = Var::Artifact(slot.clone());
                    let source = if matches!(producer_remote(slot).0, RemoteTask::FsxImport) {
                        // An existing file system imports all of `P/trees/`; one created for the
                        // job imports just this artifact's tree.
                        let dir = Text::lit("/").then_var(Var::FsxMount);
                        ChannelSource::Fsx {
                            directory: if existing {
                                dir.then_lit("/").then_var(artifact)
                            } else {
                                dir
                            },
                        }
                    } else {
                        ChannelSource::S3(layout::tree_url(cache, artifact))
                    };
                    Channel {
                        name: slot.clone(),
                        source,
                    }
                })
                .collect();
            let hyperparameters = def
                .params
                .values()
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => crate::key::canonical_json(other),
                    };
                    (k.clone(), s)
                })
                .collect();
            let count = res.instance_count.unwrap_or(instances).max(1);
            let runtime = res
                .max_runtime_seconds
                .as_ref()
                .map_or(TRAINING.max_runtime_seconds, |m| m.value);
            let spot = res.spot.as_ref().filter(|s| s.value).map(|_| Spot {
                max_wait_seconds: res
                    .max_wait_seconds
                    .as_ref()
                    .map_or_else(|| default_max_wait(runtime), |w| w.value),
            });
            let run = job(
                &call,
                job_name(id, ""),
                &TRAINING,
                count,
                JobForm::Training {
                    channels,
                    hyperparameters,
                    output_path: cache.url(layout::jobs()),
                    checkpoint_uri: layout::checkpoints_url(cache, Var::Key),
                    metrics: def.step.metrics().to_vec(),
                    spot,
                },
            );
            let fsx = fsx_slot.map(|slot| FsxUse {
                create: (!existing).then(|| fsx_create(target, id, &slot)),
                slot,
            });
            Some(StepJobs {
                run,
                commit: None,
                uploads,
                fsx,
            })
        }
    }
}

fn fsx_create(target: &AwsTarget, id: &str, slot: &str) -> FsxCreate {
    let s = &target.fsx;
    FsxCreate {
        token: Text::lit(format!("{}-", job_prefix(id))).then_var(Var::ExecutionName),
        storage_capacity_gb: s.storage_capacity_gb,
        deployment_type: s.deployment_type.clone(),
        per_unit_storage_throughput: s.per_unit_storage_throughput,
        subnet_ids: target.subnets.iter().take(1).cloned().collect(),
        security_group_ids: target.security_groups.clone(),
        import_path: layout::tree_url(&target.cache, Var::Artifact(slot.to_string())),
        tags: target.tags(id),
    }
}

/// Resolves the holes of a job's texts for a submission outside Step Functions.
pub struct Values<'a> {
    pub key: &'a str,
    pub artifact: &'a dyn Fn(&str) -> String,
    pub execution_name: &'a str,
    pub attempt: u32,
    pub fsx: Option<(&'a str, &'a str)>,
}

impl Values<'_> {
    pub fn resolve(&self, t: &Text) -> String {
        t.resolve(&|v| match v {
            Var::Key => self.key.to_string(),
            Var::Artifact(slot) => (self.artifact)(slot),
            Var::ExecutionName => self.execution_name.to_string(),
            Var::Attempt => self.attempt.to_string(),
            Var::FsxId => self.fsx.map(|f| f.0).unwrap_or_default().to_string(),
            Var::FsxMount => self.fsx.map(|f| f.1).unwrap_or_default().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_prefixes_fit_sagemaker_names() {
        assert_eq!(job_prefix("fail_train"), "fail-train");
        let long = job_prefix("a_very_long_step_identifier_beyond_limits");
        assert_eq!(long.len(), MAX_JOB_PREFIX);
        assert!(long.starts_with("a-very-long-step-iden-"), "{long}");
        // The longest job name: prefix, execution name, `-c99`.
        assert!(long.len() + 1 + MAX_EXECUTION_NAME + 4 <= 63);
    }

    #[test]
    fn job_names_fill_their_holes() {
        let t = job_name("pre_process", "c");
        let v = Values {
            key: "",
            artifact: &|_| String::new(),
            execution_name: "20261206-120000-abcdef01",
            attempt: 0,
            fsx: None,
        };
        assert_eq!(v.resolve(&t), "pre-process-20261206-120000-abcdef01-c0");
    }

    #[test]
    fn volume_keys_only_where_sagemaker_takes_them() {
        for t in [
            "ml.m5.xlarge",
            "ml.c5.9xlarge",
            "ml.p3.2xlarge",
            "ml.m5.large",
        ] {
            assert!(!has_instance_storage(t), "{t}");
        }
        for t in [
            "ml.p4d.24xlarge",
            "ml.g5.2xlarge",
            "ml.m5d.large",
            "ml.p5.48xlarge",
        ] {
            assert!(has_instance_storage(t), "{t}");
        }
        assert_eq!(default_max_wait(3600), 7200);
        assert_eq!(default_max_wait(MAX_WAIT_LIMIT), MAX_WAIT_LIMIT);
    }
}
