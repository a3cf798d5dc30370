//! `wf run --executor sagemaker`: the local engine orchestrates, and each step with a job form
//! (`RemoteTask::Processing` / `Training`) runs as the SageMaker jobs the cloud contract describes
//! (`wf_engine::cloud::plan_step`) — the same `JobSpec`s the compiled state machine submits, rendered
//! here as SDK requests. The job publishes to the S3 cache; the engine then fetches the entry like
//! any remote hit. A Training input produced by an fsx-import step is read from an FSx for Lustre
//! file system (the target's, or one created for the job and deleted after it).

use crate::client::Aws;
use crate::{AwsError, Blocking};
use aws_sdk_sagemaker::types as sm;
use std::collections::BTreeMap;
use std::time::Duration;
use wf_engine::cloud::job::{
    ChannelSource, FSX_MAX_POLLS, FsxCreate, JobForm, JobSpec, ProcessingInput, StepJobs, Values,
};
use wf_engine::cloud::{AwsTarget, plan_step};
use wf_engine::key::KeyComponents;
use wf_engine::{
    CancelToken, InputArtifact, Progress, RemoteExecutor, RemoteTask, StepError, StepKey, Workflow,
};

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

/// The file system a Training job reads: its id and mount name.
struct FileSystem {
    id: String,
    mount: String,
    /// Created for this job: delete it afterwards.
    created: bool,
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

    fn processing(
        &self,
        job: &JobSpec,
        v: &Values<'_>,
        progress: &dyn Progress,
        cancel: &CancelToken,
    ) -> Result<(), StepError> {
        let JobForm::Processing { inputs } = &job.form else {
            unreachable!("a processing job");
        };
        let name = v.resolve(&job.name);
        let s3_input = |i: &ProcessingInput| {
            sm::ProcessingInput::builder()
                .input_name(&i.name)
                .s3_input(
                    sm::ProcessingS3Input::builder()
                        .s3_uri(v.resolve(&i.s3_uri))
                        .local_path(&i.local_path)
                        .s3_data_type(sm::ProcessingS3DataType::S3Prefix)
                        .s3_input_mode(sm::ProcessingS3InputMode::File)
                        .s3_data_distribution_type(if i.sharded {
                            sm::ProcessingS3DataDistributionType::Shardedbys3Key
                        } else {
                            sm::ProcessingS3DataDistributionType::Fullyreplicated
                        })
                        .build(),
                )
                .build()
        };
        let cluster = sm::ProcessingClusterConfig::builder()
            .instance_count(job.instance_count as i32)
            .instance_type(sm::ProcessingInstanceType::from(job.instance_type.as_str()))
            .volume_size_in_gb(job.volume_size_gb as i32)
            .set_volume_kms_key_id(job.volume_kms_key_id.clone())
            .build();
        let app = sm::AppSpecification::builder()
            .image_uri(&job.image_uri)
            .set_container_entrypoint(Some(job.entrypoint.clone()))
            .set_container_arguments(Some(job.args.iter().map(|a| v.resolve(a)).collect()))
            .build();
        progress.message(&format!(
            "processing job {name} ({})",
            wf_engine::plural(job.instance_count, "instance")
        ));
        let mut req = self
            .aws
            .sagemaker()
            .create_processing_job()
            .processing_job_name(&name)
            .role_arn(&job.role_arn)
            .app_specification(app)
            .processing_resources(
                sm::ProcessingResources::builder()
                    .cluster_config(cluster)
                    .build(),
            )
            .stopping_condition(
                sm::ProcessingStoppingCondition::builder()
                    .max_runtime_in_seconds(job.max_runtime_seconds as i32)
                    .build(),
            )
            .set_tags(Some(tags(&job.tags)));
        if !inputs.is_empty() {
            req = req.set_processing_inputs(Some(inputs.iter().map(s3_input).collect()));
        }
        if let Some(vpc) = &job.vpc {
            req = req.network_config(
                sm::NetworkConfig::builder()
                    .vpc_config(vpc_config(vpc))
                    .build(),
            );
        }
        for (k, val) in &job.environment {
            req = req.environment(k, val);
        }
        self.rt
            .block_on(req.send())
            .map_err(|e| self.call("CreateProcessingJob", &name, &e))?;
        self.wait(&name, false, job.timeout_seconds, cancel)
    }

    fn training(
        &self,
        job: &JobSpec,
        v: &Values<'_>,
        progress: &dyn Progress,
        cancel: &CancelToken,
    ) -> Result<(), StepError> {
        let JobForm::Training {
            channels,
            hyperparameters,
            output_path,
            checkpoint_uri,
            metrics,
            spot,
        } = &job.form
        else {
            unreachable!("a training job");
        };
        let name = v.resolve(&job.name);
        let channels: Vec<sm::Channel> = channels
            .iter()
            .map(|ch| {
                let source = match &ch.source {
                    ChannelSource::Fsx { directory } => sm::DataSource::builder()
                        .file_system_data_source(
                            sm::FileSystemDataSource::builder()
                                .file_system_id(v.fsx.map(|f| f.0).unwrap_or_default())
                                .file_system_type(sm::FileSystemType::Fsxlustre)
                                .file_system_access_mode(sm::FileSystemAccessMode::Ro)
                                .directory_path(v.resolve(directory))
                                .build(),
                        )
                        .build(),
                    ChannelSource::S3(uri) => sm::DataSource::builder()
                        .s3_data_source(
                            sm::S3DataSource::builder()
                                .s3_data_type(sm::S3DataType::S3Prefix)
                                .s3_uri(v.resolve(uri))
                                .s3_data_distribution_type(sm::S3DataDistribution::FullyReplicated)
                                .build(),
                        )
                        .build(),
                };
                sm::Channel::builder()
                    .channel_name(&ch.name)
                    .data_source(source)
                    .input_mode(sm::TrainingInputMode::File)
                    .build()
            })
            .collect();
        progress.message(&format!(
            "training job {name} ({})",
            wf_engine::plural(job.instance_count, "instance")
        ));
        let mut req = self
            .aws
            .sagemaker()
            .create_training_job()
            .training_job_name(&name)
            .role_arn(&job.role_arn)
            .algorithm_specification(
                sm::AlgorithmSpecification::builder()
                    .training_image(&job.image_uri)
                    .training_input_mode(sm::TrainingInputMode::File)
                    .set_container_entrypoint(Some(job.entrypoint.clone()))
                    .set_container_arguments(Some(job.args.iter().map(|a| v.resolve(a)).collect()))
                    .set_metric_definitions((!metrics.is_empty()).then(|| {
                        metrics
                            .iter()
                            .map(|m| {
                                sm::MetricDefinition::builder()
                                    .name(m.name)
                                    .regex(m.regex)
                                    .build()
                            })
                            .collect()
                    }))
                    .build(),
            )
            .set_hyper_parameters(Some(hyperparameters.iter().cloned().collect()))
            .set_input_data_config(Some(channels))
            .output_data_config(
                sm::OutputDataConfig::builder()
                    .s3_output_path(output_path)
                    .set_kms_key_id(job.output_kms_key_id.clone())
                    .build(),
            )
            .resource_config(
                sm::ResourceConfig::builder()
                    .instance_count(job.instance_count as i32)
                    .instance_type(sm::TrainingInstanceType::from(job.instance_type.as_str()))
                    .volume_size_in_gb(job.volume_size_gb as i32)
                    .set_volume_kms_key_id(job.volume_kms_key_id.clone())
                    .build(),
            )
            .stopping_condition(
                sm::StoppingCondition::builder()
                    .max_runtime_in_seconds(job.max_runtime_seconds as i32)
                    .set_max_wait_time_in_seconds(spot.map(|s| s.max_wait_seconds as i32))
                    .build(),
            )
            .set_enable_managed_spot_training(spot.map(|_| true))
            .checkpoint_config(
                sm::CheckpointConfig::builder()
                    .s3_uri(v.resolve(checkpoint_uri))
                    .local_path(wf_engine::cloud::job::CHECKPOINT_DIR)
                    .build(),
            )
            .set_tags(Some(tags(&job.tags)));
        for (k, val) in &job.environment {
            req = req.environment(k, val);
        }
        if let Some(vpc) = &job.vpc {
            req = req.vpc_config(vpc_config(vpc));
        }
        self.rt
            .block_on(req.send())
            .map_err(|e| self.call("CreateTrainingJob", &name, &e))?;
        self.wait(&name, true, job.timeout_seconds, cancel)
    }

    fn run_job(
        &self,
        job: &JobSpec,
        v: &Values<'_>,
        progress: &dyn Progress,
        cancel: &CancelToken,
    ) -> Result<(), StepError> {
        // A failed job is run again under a new name only where `retries` asks (as the state
        // machine's Retry does): most failures are deterministic.
        let mut attempt = 0;
        loop {
            let v = Values { attempt, ..*v };
            let result = match job.form {
                JobForm::Processing { .. } => self.processing(job, &v, progress, cancel),
                JobForm::Training { .. } => self.training(job, &v, progress, cancel),
            };
            match result {
                Err(e) if attempt < job.retries && !cancel.is_cancelled() => {
                    progress.warn(&format!(
                        "{} (attempt {} of {}); retrying in {} s",
                        e.message,
                        attempt + 1,
                        job.retries + 1,
                        wf_engine::cloud::job::RETRY_SECONDS
                    ));
                    self.pause(
                        Duration::from_secs(u64::from(wf_engine::cloud::job::RETRY_SECONDS)),
                        cancel,
                    )?;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Sleeps `d`, or less when the run is stopped meanwhile (then an error).
    fn pause(&self, d: Duration, cancel: &CancelToken) -> Result<(), StepError> {
        let end = std::time::Instant::now() + d;
        loop {
            if cancel.is_cancelled() {
                return Err(StepError::new("interrupted"));
            }
            let now = std::time::Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(100)));
        }
    }

    /// `targets.aws.fsx.file_system_id`, or a new file system as `create` describes it.
    fn file_system(
        &self,
        create: Option<&FsxCreate>,
        v: &Values<'_>,
        progress: &dyn Progress,
        cancel: &CancelToken,
    ) -> Result<FileSystem, StepError> {
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
        let Some(c) = create else {
            let id = self
                .target
                .fsx
                .file_system_id
                .clone()
                .expect("no file system to create means the target names one");
            let (_, mount) = describe(&id)?;
            return Ok(FileSystem {
                id,
                mount,
                created: false,
            });
        };
        let mut lustre = fx::CreateFileSystemLustreConfiguration::builder()
            .import_path(v.resolve(&c.import_path))
            .deployment_type(fx::LustreDeploymentType::from(c.deployment_type.as_str()));
        if let Some(t) = c.per_unit_storage_throughput {
            lustre = lustre.per_unit_storage_throughput(t as i32);
        }
        let tags: Vec<fx::Tag> = c
            .tags
            .iter()
            .map(|(k, val)| fx::Tag::builder().key(k).value(val).build())
            .collect();
        let out = self
            .rt
            .block_on(
                fsx.create_file_system()
                    .file_system_type(fx::FileSystemType::Lustre)
                    .storage_capacity(c.storage_capacity_gb as i32)
                    .set_subnet_ids(Some(c.subnet_ids.clone()))
                    .set_security_group_ids(Some(c.security_group_ids.clone()))
                    .lustre_configuration(lustre.build())
                    .client_request_token(v.resolve(&c.token))
                    .set_tags(Some(tags))
                    .send(),
            )
            .map_err(|e| {
                StepError::new(format!(
                    "FSx: CreateFileSystem failed: {}",
                    self.aws.describe(&e)
                ))
            })?;
        let fs = out
            .file_system()
            .and_then(|f| f.file_system_id())
            .ok_or_else(|| StepError::new("FSx: CreateFileSystem returned no id"))?
            .to_string();
        progress.message(&format!("FSx file system {fs}: waiting until AVAILABLE"));
        let result = (|| {
            for _ in 0..FSX_MAX_POLLS {
                let (lifecycle, mount) = describe(&fs)?;
                match lifecycle {
                    Some(fx::FileSystemLifecycle::Available) => return Ok(mount),
                    Some(fx::FileSystemLifecycle::Failed) => {
                        return Err(StepError::new(format!("FSx file system {fs} FAILED")));
                    }
                    _ => self.pause(self.poll.max(Duration::from_millis(100)), cancel)?,
                }
            }
            Err(StepError::new(format!(
                "FSx file system {fs} did not become AVAILABLE"
            )))
        })();
        match result {
            Ok(mount) => Ok(FileSystem {
                id: fs,
                mount,
                created: true,
            }),
            Err(e) => {
                self.delete_file_system(&fs, progress);
                Err(e)
            }
        }
    }

    fn delete_file_system(&self, fs: &str, progress: &dyn Progress) {
        let r = self.rt.block_on(
            self.aws
                .fsx()
                .delete_file_system()
                .file_system_id(fs)
                .send(),
        );
        if let Err(e) = r {
            progress.warn(&format!(
                "could not delete FSx file system {fs}: {}",
                self.aws.describe(&e)
            ));
        }
    }

    /// Polls the job until it ends; Ok on Completed. A stopped run stops the job.
    /// Polls job `name` until it ends; stops it when the run is stopped or after `timeout_seconds`
    /// (the Task's `TimeoutSeconds` in the state machine).
    fn wait(
        &self,
        name: &str,
        training: bool,
        timeout_seconds: u32,
        cancel: &CancelToken,
    ) -> Result<(), StepError> {
        let sagemaker = self.aws.sagemaker();
        let deadline = std::time::Instant::now() + Duration::from_secs(u64::from(timeout_seconds));
        loop {
            let timed_out = std::time::Instant::now() >= deadline;
            if cancel.is_cancelled() || timed_out {
                // Best effort: the job's own stop ends its processes (SIGTERM, then SIGKILL).
                let stopped = if training {
                    self.rt
                        .block_on(sagemaker.stop_training_job().training_job_name(name).send())
                        .map(|_| ())
                        .map_err(|e| self.call("StopTrainingJob", name, &e))
                } else {
                    self.rt
                        .block_on(
                            sagemaker
                                .stop_processing_job()
                                .processing_job_name(name)
                                .send(),
                        )
                        .map(|_| ())
                        .map_err(|e| self.call("StopProcessingJob", name, &e))
                };
                let why = if timed_out {
                    format!(
                        "SageMaker job {name} did not end within {timeout_seconds} s (the step's timeout)"
                    )
                } else {
                    "interrupted".to_string()
                };
                return Err(match stopped {
                    Ok(()) => StepError::new(format!("{why} (SageMaker job {name} stopped)")),
                    Err(e) => StepError::new(format!("{why}; stopping the job: {e}")),
                });
            }
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
                // A stop is handled at the top of the loop.
                _ => {
                    let _ = self.pause(self.poll, cancel);
                }
            }
        }
    }
}

fn vpc_config(vpc: &wf_engine::cloud::job::Vpc) -> sm::VpcConfig {
    sm::VpcConfig::builder()
        .set_subnets(Some(vpc.subnets.clone()))
        .set_security_group_ids(Some(vpc.security_group_ids.clone()))
        .build()
}

fn tags(t: &[(String, String)]) -> Vec<sm::Tag> {
    t.iter()
        .map(|(k, v)| sm::Tag::builder().key(k).value(v).build())
        .collect()
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
        cancel: &CancelToken,
    ) -> Result<(), StepError> {
        let Some(StepJobs {
            run,
            commit,
            uploads,
            fsx,
        }) = plan_step(wf, i, &self.target, components)
        else {
            return Err(StepError::new(format!(
                "step `{}` has no SageMaker job (it runs locally)",
                wf.steps[i].id
            )));
        };
        let bucket = crate::s3::Bucket::new(&self.aws, &self.target.cache.bucket)
            .with_kms(self.target.kms_key_id.clone());
        self.rt
            .block_on(crate::s3::upload_all(&bucket, &uploads))
            .map_err(step_err)?;
        let key_hex = key.to_hex();
        let artifact = |slot: &str| {
            inputs
                .get(slot)
                .map(|a| a.digest.to_hex())
                .unwrap_or_default()
        };
        let mut values = Values {
            key: &key_hex,
            artifact: &artifact,
            execution_name: &self.run,
            attempt: 0,
            fsx: None,
        };
        let fs = match &fsx {
            Some(use_) => {
                Some(self.file_system(use_.create.as_ref(), &values, progress, cancel)?)
            }
            None => None,
        };
        if let Some(fs) = &fs {
            values.fsx = Some((&fs.id, &fs.mount));
        }
        let result = self
            .run_job(&run, &values, progress, cancel)
            .and_then(|()| match &commit {
                // The shards published parts; one more job merges them (docs/cloud.md §6).
                Some(c) => {
                    progress.message("committing the shards' parts");
                    self.run_job(c, &values, progress, cancel)
                }
                None => Ok(()),
            });
        if let Some(fs) = fs.filter(|f| f.created) {
            self.delete_file_system(&fs.id, progress);
        }
        result
    }
}
