//! `wf run --executor sagemaker`: the local engine orchestrates, and each step with a job form
//! (`RemoteTask::Processing` / `Training`) runs as a SageMaker job executing `wf worker <kind>` with
//! the arguments of docs/cloud.md §5 — the same jobs the compiled state machine creates. The job
//! publishes to the S3 cache; the engine then fetches the entry like any remote hit. A Training
//! input produced by an fsx-import step is read from an FSx for Lustre file system created for the
//! job (ImportPath `P/trees/<digest>/`) and deleted after it.

use crate::client::Aws;
use crate::{AwsError, Blocking};
use aws_sdk_sagemaker::types as sm;
use std::collections::BTreeMap;
use std::time::Duration;
use wf_engine::asl::{AwsTarget, job_prefix};
use wf_engine::key::KeyComponents;
use wf_engine::{
    ArtifactType, InputArtifact, Progress, RemoteExecutor, RemoteTask, StepError, StepKey, Workflow,
};

const PROCESSING_INSTANCE: &str = "ml.m5.xlarge";
const TRAINING_INSTANCE: &str = "ml.p3.2xlarge";
const VOLUME_GB: i32 = 50;
const PROCESSING_MAX_RUNTIME: i32 = 86_400;
const TRAINING_MAX_RUNTIME: i32 = 432_000;
/// SageMaker's limit on one container argument.
const MAX_ARG: usize = 256;
/// The commit job of a sharded step (docs/cloud.md §5).
const COMMIT_INSTANCE: &str = "ml.m5.large";
const COMMIT_VOLUME_GB: i32 = 30;
const COMMIT_MAX_RUNTIME: i32 = 3600;
const FSX_MAX_POLLS: u32 = 120;

pub struct SageMakerExecutor {
    target: AwsTarget,
    aws: Aws,
    rt: Blocking,
    /// Unique per `wf run`, in job names.
    run: String,
    poll: Duration,
}

fn step_err(e: AwsError) -> StepError {
    StepError::new(e.to_string())
}

impl SageMakerExecutor {
    pub fn new(target: AwsTarget) -> Result<SageMakerExecutor, AwsError> {
        let rt = Blocking::new()?;
        let aws = rt.block_on(Aws::load(Some(&target.region), crate::Credentials::Default));
        let poll = std::env::var("WF_POLL_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(15));
        Ok(SageMakerExecutor {
            target,
            aws,
            rt,
            run: crate::sfn::execution_name(),
            poll,
        })
    }

    fn uri(&self, rel: &str) -> String {
        self.target.cache.url(rel)
    }

    fn call<E>(
        &self,
        op: &'static str,
        target: &str,
        e: &aws_sdk_sagemaker::error::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> StepError
    where
        E: aws_sdk_sagemaker::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        StepError::new(format!("{target}: {op} failed: {}", self.aws.describe(e)))
    }

    /// The worker's arguments; uploads what they refer to (long params, declared files).
    fn worker_args(
        &self,
        wf: &Workflow,
        i: usize,
        key: &StepKey,
        components: &KeyComponents,
        inputs: &BTreeMap<String, InputArtifact>,
        shards: Option<u32>,
    ) -> Result<Vec<String>, StepError> {
        let def = &wf.steps[i];
        let bucket = crate::s3::Bucket::new(&self.aws, &self.target.cache.bucket);
        let params = def.params.canonical_json();
        let params_arg = if params.len() <= MAX_ARG {
            params
        } else {
            // Content-addressed: SHA-256 of the text (StepKey's hash is exactly that).
            let name = StepKey::of_key_string(&params).to_hex();
            let rel = format!("params/{name}.json");
            let k = self.target.cache.key(&rel);
            self.rt
                .block_on(async {
                    if !bucket.exists(&k).await? {
                        bucket.put(&k, params.into_bytes()).await?;
                    }
                    Ok::<(), AwsError>(())
                })
                .map_err(step_err)?;
            self.uri(&rel)
        };
        let mut args = vec![
            "--step".to_string(),
            def.id.clone(),
            "--key".into(),
            key.to_hex(),
            "--cache".into(),
            self.target.cache.uri(),
            "--params".into(),
            params_arg,
            "--seed".into(),
            wf.seed.to_string(),
        ];
        for (slot, input) in inputs {
            args.push("--input".into());
            args.push(format!("{slot}={}", input.digest));
        }
        if let Some(d) = components.files_digest() {
            let mut text = String::new();
            for (path, digest) in &components.files {
                text.push_str(&format!("{path}\t{digest}\n"));
            }
            let list = self.target.cache.key(&format!("files/{d}.txt"));
            self.rt
                .block_on(async {
                    for (path, digest) in &components.files {
                        let k = self
                            .target
                            .cache
                            .key(&format!("objects/{}", digest.to_hex()));
                        if !bucket.exists(&k).await? {
                            bucket.upload(&k, &wf.dir.join(path)).await?;
                        }
                    }
                    if !bucket.exists(&list).await? {
                        bucket.put(&list, text.into_bytes()).await?;
                    }
                    Ok::<(), AwsError>(())
                })
                .map_err(step_err)?;
            args.push("--files".into());
            args.push(d);
        }
        if let Some(n) = shards.filter(|n| *n > 1) {
            args.push("--shards".into());
            args.push(n.to_string());
        }
        Ok(args)
    }

    fn job_name(&self, id: &str) -> String {
        format!("{}-{}-0", job_prefix(id), self.run)
    }

    #[allow(clippy::too_many_arguments)]
    fn processing(
        &self,
        wf: &Workflow,
        i: usize,
        args: Vec<String>,
        instances: u32,
        sharded: bool,
        inputs: &BTreeMap<String, InputArtifact>,
        progress: &dyn Progress,
    ) -> Result<(), StepError> {
        let def = &wf.steps[i];
        let res = self.target.resources(&def.id);
        let name = self.job_name(&def.id);
        let s3_input = |name: &str, uri: String, local: String, sharded: bool| {
            sm::ProcessingInput::builder()
                .input_name(name)
                .s3_input(
                    sm::ProcessingS3Input::builder()
                        .s3_uri(uri)
                        .local_path(local)
                        .s3_data_type(sm::ProcessingS3DataType::S3Prefix)
                        .s3_input_mode(sm::ProcessingS3InputMode::File)
                        .s3_data_distribution_type(if sharded {
                            sm::ProcessingS3DataDistributionType::Shardedbys3Key
                        } else {
                            sm::ProcessingS3DataDistributionType::Fullyreplicated
                        })
                        .build(),
                )
                .build()
        };
        let mut processing_inputs = Vec::new();
        for (slot, input) in inputs {
            let tree = self.uri(&format!("trees/{}", input.digest));
            let local = format!("/opt/ml/processing/input/{slot}");
            if sharded && input.ty == ArtifactType::Dataset {
                processing_inputs.push(s3_input(
                    &format!("{slot}-images"),
                    format!("{tree}/imagesTr/"),
                    format!("{local}/imagesTr"),
                    true,
                ));
                processing_inputs.push(s3_input(
                    &format!("{slot}-labels"),
                    format!("{tree}/labelsTr/"),
                    format!("{local}/labelsTr"),
                    false,
                ));
                processing_inputs.push(s3_input(
                    &format!("{slot}-meta"),
                    format!("{tree}/dataset.json"),
                    format!("/opt/ml/processing/input/{slot}-meta"),
                    false,
                ));
            } else {
                processing_inputs.push(s3_input(slot, format!("{tree}/"), local, false));
            }
        }
        let instance_count = res.instance_count.unwrap_or(instances).max(1) as i32;
        let cluster = sm::ProcessingClusterConfig::builder()
            .instance_count(instance_count)
            .instance_type(sm::ProcessingInstanceType::from(
                res.instance_type.as_deref().unwrap_or(PROCESSING_INSTANCE),
            ))
            .volume_size_in_gb(res.volume_size_gb.map_or(VOLUME_GB, |v| v as i32))
            .build();
        let app = sm::AppSpecification::builder()
            .image_uri(&self.target.image_uri)
            .set_container_entrypoint(Some(vec![
                "wf".into(),
                "worker".into(),
                def.kind().to_string(),
            ]))
            .set_container_arguments(Some(args))
            .build();
        progress.message(&format!(
            "processing job {name} ({instance_count} instances)"
        ));
        self.rt
            .block_on(
                self.aws
                    .sagemaker()
                    .create_processing_job()
                    .processing_job_name(&name)
                    .role_arn(&self.target.role_arn)
                    .app_specification(app)
                    .processing_resources(
                        sm::ProcessingResources::builder()
                            .cluster_config(cluster)
                            .build(),
                    )
                    .set_processing_inputs(Some(processing_inputs))
                    .stopping_condition(
                        sm::ProcessingStoppingCondition::builder()
                            .max_runtime_in_seconds(
                                res.max_runtime_seconds
                                    .map_or(PROCESSING_MAX_RUNTIME, |v| v as i32),
                            )
                            .build(),
                    )
                    .environment("WF_STEP", &def.id)
                    .send(),
            )
            .map_err(|e| self.call("CreateProcessingJob", &name, &e))?;
        self.wait(&name, false)
    }

    /// The commit job after a sharded job: `wf worker commit --kind <kind> <the shards' arguments>`
    /// on one small instance, no inputs (docs/cloud.md §5–6).
    fn commit(
        &self,
        wf: &Workflow,
        i: usize,
        shard_args: Vec<String>,
        progress: &dyn Progress,
    ) -> Result<(), StepError> {
        let def = &wf.steps[i];
        let name = format!("{}-{}-c0", job_prefix(&def.id), self.run);
        let mut args = vec!["--kind".to_string(), def.kind().to_string()];
        args.extend(shard_args);
        let app = sm::AppSpecification::builder()
            .image_uri(&self.target.image_uri)
            .set_container_entrypoint(Some(vec!["wf".into(), "worker".into(), "commit".into()]))
            .set_container_arguments(Some(args))
            .build();
        let cluster = sm::ProcessingClusterConfig::builder()
            .instance_count(1)
            .instance_type(sm::ProcessingInstanceType::from(COMMIT_INSTANCE))
            .volume_size_in_gb(COMMIT_VOLUME_GB)
            .build();
        progress.message(&format!("commit job {name}"));
        self.rt
            .block_on(
                self.aws
                    .sagemaker()
                    .create_processing_job()
                    .processing_job_name(&name)
                    .role_arn(&self.target.role_arn)
                    .app_specification(app)
                    .processing_resources(
                        sm::ProcessingResources::builder()
                            .cluster_config(cluster)
                            .build(),
                    )
                    .stopping_condition(
                        sm::ProcessingStoppingCondition::builder()
                            .max_runtime_in_seconds(COMMIT_MAX_RUNTIME)
                            .build(),
                    )
                    .environment("WF_STEP", &def.id)
                    .send(),
            )
            .map_err(|e| self.call("CreateProcessingJob", &name, &e))?;
        self.wait(&name, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn training(
        &self,
        wf: &Workflow,
        i: usize,
        key: &StepKey,
        args: Vec<String>,
        instances: u32,
        inputs: &BTreeMap<String, InputArtifact>,
        progress: &dyn Progress,
    ) -> Result<(), StepError> {
        let def = &wf.steps[i];
        let res = self.target.resources(&def.id);
        let name = self.job_name(&def.id);
        let mut channels = Vec::new();
        let mut created_fs = Vec::new();
        let mut vpc = false;
        let result = (|| {
            for (slot, input) in inputs {
                let producer = def.inputs.get(slot).map(|&p| wf.steps[p].kind());
                let source = if producer == Some("fsx-import") {
                    vpc = true;
                    let (fs, dir, created) =
                        self.file_system(&def.id, &input.digest.to_hex(), progress)?;
                    if created {
                        created_fs.push(fs.clone());
                    }
                    sm::DataSource::builder()
                        .file_system_data_source(
                            sm::FileSystemDataSource::builder()
                                .file_system_id(fs)
                                .file_system_type(sm::FileSystemType::Fsxlustre)
                                .file_system_access_mode(sm::FileSystemAccessMode::Ro)
                                .directory_path(dir)
                                .build(),
                        )
                        .build()
                } else {
                    sm::DataSource::builder()
                        .s3_data_source(
                            sm::S3DataSource::builder()
                                .s3_data_type(sm::S3DataType::S3Prefix)
                                .s3_uri(self.uri(&format!("trees/{}/", input.digest)))
                                .s3_data_distribution_type(sm::S3DataDistribution::FullyReplicated)
                                .build(),
                        )
                        .build()
                };
                channels.push(
                    sm::Channel::builder()
                        .channel_name(slot)
                        .data_source(source)
                        .input_mode(sm::TrainingInputMode::File)
                        .build(),
                );
            }
            let instance_count = res.instance_count.unwrap_or(instances).max(1) as i32;
            progress.message(&format!("training job {name} ({instance_count} instances)"));
            let mut req = self
                .aws
                .sagemaker()
                .create_training_job()
                .training_job_name(&name)
                .role_arn(&self.target.role_arn)
                .algorithm_specification(
                    sm::AlgorithmSpecification::builder()
                        .training_image(&self.target.image_uri)
                        .training_input_mode(sm::TrainingInputMode::File)
                        .set_container_entrypoint(Some(vec![
                            "wf".into(),
                            "worker".into(),
                            def.kind().to_string(),
                        ]))
                        .set_container_arguments(Some(args.clone()))
                        .build(),
                )
                .set_input_data_config(Some(channels.clone()))
                .output_data_config(
                    sm::OutputDataConfig::builder()
                        .s3_output_path(self.uri("jobs/"))
                        .build(),
                )
                .resource_config(
                    sm::ResourceConfig::builder()
                        .instance_count(instance_count)
                        .instance_type(sm::TrainingInstanceType::from(
                            res.instance_type.as_deref().unwrap_or(TRAINING_INSTANCE),
                        ))
                        .volume_size_in_gb(res.volume_size_gb.map_or(VOLUME_GB, |v| v as i32))
                        .build(),
                )
                .stopping_condition(
                    sm::StoppingCondition::builder()
                        .max_runtime_in_seconds(
                            res.max_runtime_seconds
                                .map_or(TRAINING_MAX_RUNTIME, |v| v as i32),
                        )
                        .build(),
                )
                .checkpoint_config(
                    sm::CheckpointConfig::builder()
                        .s3_uri(self.uri(&format!("checkpoints/{key}/")))
                        .local_path("/opt/ml/checkpoints")
                        .build(),
                );
            if vpc {
                req = req.vpc_config(
                    sm::VpcConfig::builder()
                        .set_subnets(Some(self.target.subnets.clone()))
                        .set_security_group_ids(Some(self.target.security_groups.clone()))
                        .build(),
                );
            }
            self.rt
                .block_on(req.send())
                .map_err(|e| self.call("CreateTrainingJob", &name, &e))?;
            self.wait(&name, true)
        })();
        for fs in created_fs {
            let r = self.rt.block_on(
                self.aws
                    .fsx()
                    .delete_file_system()
                    .file_system_id(&fs)
                    .send(),
            );
            if let Err(e) = r {
                progress.warn(&format!(
                    "could not delete FSx file system {fs}: {}",
                    self.aws.describe(&e)
                ));
            }
        }
        result
    }

    /// The FSx for Lustre file system holding artifact `digest`, and the directory to read:
    /// `targets.aws.fsx.file_system_id` (importing `P/trees/`), or a new one importing
    /// `P/trees/<digest>/` (returned with `true`: delete it after the job).
    fn file_system(
        &self,
        id: &str,
        digest: &str,
        progress: &dyn Progress,
    ) -> Result<(String, String, bool), StepError> {
        use aws_sdk_fsx::types as fx;
        let fsx = self.aws.fsx();
        let describe = |fs: &str| -> Result<(Option<fx::FileSystemLifecycle>, String), StepError> {
            let out = self
                .rt
                .block_on(fsx.describe_file_systems().file_system_ids(fs).send())
                .map_err(|e| {
                    StepError::new(format!(
                        "FSx {fs}: DescribeFileSystems failed: {}",
                        self.aws.describe(&e)
                    ))
                })?;
            let f = out
                .file_systems()
                .first()
                .ok_or_else(|| StepError::new(format!("FSx {fs}: no such file system")))?;
            let mount = f
                .lustre_configuration()
                .and_then(|l| l.mount_name())
                .filter(|m| !m.is_empty())
                .unwrap_or("fsx")
                .to_string();
            Ok((f.lifecycle().cloned(), mount))
        };
        if let Some(fs) = &self.target.fsx.file_system_id {
            let (_, mount) = describe(fs)?;
            return Ok((fs.clone(), format!("/{mount}/{digest}"), false));
        }
        let s = &self.target.fsx;
        let mut lustre = fx::CreateFileSystemLustreConfiguration::builder()
            .import_path(self.uri(&format!("trees/{digest}/")))
            .deployment_type(fx::LustreDeploymentType::from(s.deployment_type.as_str()));
        if let Some(t) = s.per_unit_storage_throughput {
            lustre = lustre.per_unit_storage_throughput(t as i32);
        }
        let out = self
            .rt
            .block_on(
                fsx.create_file_system()
                    .file_system_type(fx::FileSystemType::Lustre)
                    .storage_capacity(s.storage_capacity_gb as i32)
                    .set_subnet_ids(Some(self.target.subnets.iter().take(1).cloned().collect()))
                    .set_security_group_ids(Some(self.target.security_groups.clone()))
                    .lustre_configuration(lustre.build())
                    .client_request_token(format!("{}-{}", job_prefix(id), self.run))
                    .send(),
            )
            .map_err(|e| {
                StepError::new(format!(
                    "FSx for `{id}`: CreateFileSystem failed: {}",
                    self.aws.describe(&e)
                ))
            })?;
        let fs = out
            .file_system()
            .and_then(|f| f.file_system_id())
            .ok_or_else(|| StepError::new("FSx: CreateFileSystem returned no id"))?
            .to_string();
        progress.message(&format!("FSx file system {fs}: waiting until AVAILABLE"));
        for _ in 0..FSX_MAX_POLLS {
            let (lifecycle, mount) = describe(&fs)?;
            match lifecycle {
                Some(fx::FileSystemLifecycle::Available) => {
                    return Ok((fs, format!("/{mount}"), true));
                }
                Some(fx::FileSystemLifecycle::Failed) => {
                    return Err(StepError::new(format!("FSx file system {fs} FAILED")));
                }
                _ => std::thread::sleep(self.poll.max(Duration::from_millis(100))),
            }
        }
        Err(StepError::new(format!(
            "FSx file system {fs} did not become AVAILABLE"
        )))
    }

    /// Polls the job until it ends; Ok on Completed.
    fn wait(&self, name: &str, training: bool) -> Result<(), StepError> {
        let sagemaker = self.aws.sagemaker();
        loop {
            let (status, reason) = if training {
                let d = self
                    .rt
                    .block_on(
                        sagemaker
                            .describe_training_job()
                            .training_job_name(name)
                            .send(),
                    )
                    .map_err(|e| self.call("DescribeTrainingJob", name, &e))?;
                (
                    d.training_job_status().map(|s| s.as_str().to_string()),
                    d.failure_reason().map(str::to_string),
                )
            } else {
                let d = self
                    .rt
                    .block_on(
                        sagemaker
                            .describe_processing_job()
                            .processing_job_name(name)
                            .send(),
                    )
                    .map_err(|e| self.call("DescribeProcessingJob", name, &e))?;
                (
                    d.processing_job_status().map(|s| s.as_str().to_string()),
                    d.failure_reason().map(str::to_string),
                )
            };
            match status.as_deref() {
                Some("Completed") => return Ok(()),
                Some("Failed") | Some("Stopped") => {
                    return Err(StepError::with_detail(
                        format!(
                            "SageMaker job {name} {}",
                            status.unwrap_or_default().to_lowercase()
                        ),
                        reason.unwrap_or_default(),
                    ));
                }
                _ => std::thread::sleep(self.poll),
            }
        }
    }
}

impl RemoteExecutor for SageMakerExecutor {
    fn name(&self) -> String {
        format!("SageMaker ({})", self.target.region)
    }

    fn takes(&self, wf: &Workflow, i: usize) -> bool {
        let def = &wf.steps[i];
        matches!(
            def.step.remote(&def.params),
            RemoteTask::Processing { .. } | RemoteTask::Training { .. }
        )
    }

    fn execute(
        &self,
        wf: &Workflow,
        i: usize,
        key: &StepKey,
        components: &KeyComponents,
        inputs: &BTreeMap<String, InputArtifact>,
        progress: &dyn Progress,
    ) -> Result<(), StepError> {
        let def = &wf.steps[i];
        match def.step.remote(&def.params) {
            RemoteTask::Processing {
                instances,
                sharded_input,
            } => {
                let res = self.target.resources(&def.id);
                let n = res.instance_count.unwrap_or(instances);
                let args =
                    self.worker_args(wf, i, key, components, inputs, sharded_input.then_some(n))?;
                self.processing(
                    wf,
                    i,
                    args.clone(),
                    instances,
                    sharded_input,
                    inputs,
                    progress,
                )?;
                if sharded_input && n > 1 {
                    // The shards published parts; one more job merges them (docs/cloud.md §6).
                    self.commit(wf, i, args, progress)?;
                }
                Ok(())
            }
            RemoteTask::Training { instances } => {
                let args = self.worker_args(wf, i, key, components, inputs, None)?;
                self.training(wf, i, key, args, instances, inputs, progress)
            }
            RemoteTask::FsxImport => Err(StepError::new("fsx-import runs locally")),
        }
    }
}
