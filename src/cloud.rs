//! The CLI's AWS side: the S3 layer of `cache: s3://...` for local runs (this file), and the
//! deploy/start/status/worker commands (docs/cloud.md). All SDK work is in `wf-aws`.

use crate::error::{CliError, CliResult, Exit};
use std::path::PathBuf;
use std::sync::Arc;
use wf_engine::{RemoteCache, Workflow};

/// Where a run keeps its local working copy when the cache is in S3: `$WF_LOCAL_CACHE`, else
/// `.wf/cache` beside the workflow (beside the current directory without a workflow).
pub fn local_working_copy(wf: Option<&Workflow>) -> PathBuf {
    if let Some(dir) = std::env::var_os("WF_LOCAL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match wf {
        Some(wf) => wf.dir.join(".wf").join("cache"),
        None => PathBuf::from(".wf").join("cache"),
    }
}

/// `targets.aws.region`, if the workflow has one.
pub fn aws_region(wf: &Workflow) -> Option<String> {
    let aws = wf.targets.aws.as_ref()?;
    aws.region.as_ref().map(|r| r.value.clone())
}

/// The S3 layer for `--cache s3://...` or `cache: s3://...` (the flag wins), if that is the cache.
pub fn remote_cache(
    wf: &Workflow,
    flag: Option<&str>,
) -> Result<Option<Arc<dyn RemoteCache>>, String> {
    let url = match flag {
        Some(f) => f.to_string(),
        None => match &wf.cache {
            Some((c, _)) => c.clone(),
            None => return Ok(None),
        },
    };
    if !url.starts_with("s3://") {
        return Ok(None);
    }
    let kms = wf
        .targets
        .aws
        .as_ref()
        .and_then(|a| a.kms_key_id.as_ref())
        .map(|k| k.value.clone());
    let cache = wf_aws::S3Cache::open(&url, aws_region(wf).as_deref())
        .map_err(|e| format!("error: cache {url}: {e}"))?
        .with_kms(kms);
    Ok(Some(Arc::new(cache)))
}

/// `wf deploy FILE`: compile, upload what executions read before any job writes (long params,
/// declared files), then create or update the state machine and publish a version.
pub fn deploy(wf: &Workflow) -> CliResult {
    let compiled = compile(wf)?;
    let t = &compiled.target;
    let rt = runtime()?;
    let aws = rt.block_on(wf_aws::Aws::load(
        Some(&t.region),
        wf_aws::Credentials::Default,
    ));
    let bucket = wf_aws::s3::Bucket::new(&aws, &t.cache.bucket).with_kms(t.kms_key_id.clone());
    rt.block_on(async {
        bucket.check().await?;
        wf_aws::s3::upload_all(&bucket, &compiled.uploads).await
    })
    .map_err(|e| CliError::failed(format!("error: {e}")))?;
    let definition =
        serde_json::to_string_pretty(&compiled.definition).expect("a definition serializes");
    let logging = match &t.logging {
        Some(l) => Some((
            l.level.clone(),
            rt.block_on(wf_aws::logs::ensure_log_group(&aws, &l.group))
                .map_err(|e| CliError::failed(format!("error: {e}")))?,
        )),
        None => None,
    };
    let settings = wf_aws::sfn::MachineSettings {
        logging,
        tracing: t.tracing,
        tags: t.tags.clone(),
    };
    let d = rt
        .block_on(wf_aws::sfn::deploy(
            &aws,
            &t.state_machine_name,
            &definition,
            &t.role_arn,
            &settings,
        ))
        .map_err(|e| CliError::failed(format!("error: {e}")))?;
    let what = match d.action {
        wf_aws::sfn::DeployAction::Created => "created",
        wf_aws::sfn::DeployAction::Updated => "updated",
        wf_aws::sfn::DeployAction::Unchanged => "up to date",
    };
    eprintln!(
        "{} {what}: {}, {}, cache {}",
        t.state_machine_name,
        wf_engine::plural(
            compiled.definition["States"]
                .as_object()
                .map_or(0, |s| s.len()),
            "state"
        ),
        wf_engine::plural(compiled.uploads.len(), "upload"),
        t.cache
    );
    if let Some(v) = &d.version_arn {
        eprintln!("published version {v}");
    }
    println!("{}", d.arn);
    Ok(Exit::Ok)
}

/// `wf start FILE [--wait]`: starts an execution of the deployed state machine under a fresh
/// name; with `--wait`, prints each step's state as it changes and exits 0 on SUCCEEDED, 1 otherwise.
pub fn start(wf: &Workflow, wait: bool) -> CliResult {
    let compiled = compile(wf)?;
    let t = &compiled.target;
    let rt = runtime()?;
    let aws = rt.block_on(wf_aws::Aws::load(
        Some(&t.region),
        wf_aws::Credentials::Default,
    ));
    let fail = |e: wf_aws::AwsError| CliError::failed(format!("error: {e}"));
    let arn = rt
        .block_on(wf_aws::sfn::find_state_machine(&aws, &t.state_machine_name))
        .map_err(fail)?
        .ok_or_else(|| {
            CliError::invalid(format!(
                "error: no state machine `{}` in {}: run `wf deploy {}` first",
                t.state_machine_name,
                t.region,
                wf.path.display()
            ))
        })?;
    let (current, _) = rt
        .block_on(wf_aws::sfn::deployed_definition(&aws, &arn))
        .map_err(fail)?;
    let ours = serde_json::to_value(&compiled.definition).expect("json");
    if serde_json::from_str::<serde_json::Value>(&current).ok() != Some(ours) {
        eprintln!(
            "warning: the deployed `{}` differs from {}; run `wf deploy` to update it",
            t.state_machine_name,
            wf.path.display()
        );
    }
    let name = wf_aws::sfn::execution_name();
    let exec = rt
        .block_on(wf_aws::sfn::start(&aws, &arn, &name, "{}"))
        .map_err(fail)?;
    println!("{exec}");
    if !wait {
        return Ok(Exit::Ok);
    }
    watch(&rt, &aws, &exec, true)
}

/// The region of an execution ARN (`arn:aws:states:REGION:...`), or exit 2 for what is not one.
fn execution_region(execution_arn: &str) -> Result<Option<&str>, CliError> {
    let region = execution_arn.split(':').nth(3).filter(|r| !r.is_empty());
    if !execution_arn.starts_with("arn:") || region.is_none() {
        return Err(CliError::invalid(format!(
            "error: `{execution_arn}` is not an execution ARN"
        )));
    }
    Ok(region)
}

/// `wf logs EXECUTION_ARN [STEP]`: the CloudWatch log tail of each job the execution ran for STEP
/// (default: the failed step, else every step with a job), one block per instance.
pub fn logs(execution_arn: &str, step: Option<&str>, lines: i32) -> CliResult {
    let region = execution_region(execution_arn)?;
    let rt = runtime()?;
    let aws = rt.block_on(wf_aws::Aws::load(region, wf_aws::Credentials::Default));
    let fail = |e: wf_aws::AwsError| CliError::failed(format!("error: {e}"));
    let (_, events) = rt
        .block_on(wf_aws::sfn::execution(&aws, execution_arn))
        .map_err(fail)?;
    let jobs = wf_aws::sfn::jobs(&events);
    let failed = wf_aws::sfn::summarize(&events)
        .into_iter()
        .find(|s| s.state == "failed")
        .map(|s| s.id);
    let want = step.map(str::to_string).or(failed);
    let chosen: Vec<&(String, String, bool)> = jobs
        .iter()
        .filter(|(s, _, _)| want.as_ref().is_none_or(|w| w == s))
        .collect();
    if chosen.is_empty() {
        let ran: Vec<&str> = jobs.iter().map(|(s, _, _)| s.as_str()).collect();
        return Err(CliError::invalid(match &want {
            Some(w) => format!(
                "error: the execution ran no job for step `{w}` (steps with jobs: {})",
                if ran.is_empty() {
                    "none".to_string()
                } else {
                    ran.join(", ")
                }
            ),
            None => "error: the execution ran no job".to_string(),
        }));
    }
    for (step, job, training) in chosen {
        let group = wf_aws::logs::job_log_group(*training);
        let streams = rt
            .block_on(wf_aws::logs::job_log_tail(&aws, group, job, lines))
            .map_err(fail)?;
        if streams.is_empty() {
            println!("== {step}: job {job}: no log streams in {group} (yet)");
        }
        for (stream, text) in streams {
            println!("== {step}: {group} {stream}");
            for line in text {
                println!("{line}");
            }
        }
    }
    Ok(Exit::Ok)
}

/// `wf status EXECUTION_ARN`: per-step states from the execution history.
pub fn status(execution_arn: &str) -> CliResult {
    let region = execution_region(execution_arn)?;
    let rt = runtime()?;
    let aws = rt.block_on(wf_aws::Aws::load(region, wf_aws::Credentials::Default));
    watch(&rt, &aws, execution_arn, false)
}

/// Prints per-step states (as they change, when `follow`) and the execution's outcome.
fn watch(rt: &wf_aws::Blocking, aws: &wf_aws::Aws, arn: &str, follow: bool) -> CliResult {
    let poll = std::env::var("WF_POLL_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(5.0);
    let mut printed: Vec<wf_aws::sfn::StepState> = Vec::new();
    loop {
        let (status, events) = rt
            .block_on(wf_aws::sfn::execution(aws, arn))
            .map_err(|e| CliError::failed(format!("error: {e}")))?;
        let steps = wf_aws::sfn::summarize(&events);
        let w = steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
        for s in &steps {
            if printed.iter().any(|p| p == s) {
                continue;
            }
            match &s.error {
                Some(e) => println!("  {:<w$}  {}  {e}", s.id, s.state),
                None => println!("  {:<w$}  {}", s.id, s.state),
            }
            printed.retain(|p| p.id != s.id);
            printed.push(s.clone());
        }
        if status == "RUNNING" && follow {
            std::thread::sleep(std::time::Duration::from_secs_f64(poll));
            continue;
        }
        println!("{status}");
        if status == "SUCCEEDED" {
            return Ok(Exit::Ok);
        }
        if status == "RUNNING" {
            return Ok(Exit::Ok);
        }
        let failed = steps.iter().find(|s| s.state == "failed");
        let cause = events.iter().rev().find_map(|e| match e {
            wf_aws::sfn::Event::ExecutionFailed { error, cause } => {
                Some(format!("{error}: {cause}"))
            }
            _ => None,
        });
        let has_job = |id: &str| wf_aws::sfn::jobs(&events).iter().any(|(s, _, _)| s == id);
        return Err(CliError::failed(match failed {
            Some(s) => format!(
                "error: step `{}` failed{}{}",
                s.id,
                s.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                if has_job(&s.id) {
                    format!("\n  its job's log: wf logs {arn} {}", s.id)
                } else {
                    String::new()
                }
            ),
            None => format!(
                "error: the execution ended {status}{}",
                cause.map(|c| format!(" ({c})")).unwrap_or_default()
            ),
        }));
    }
}

fn runtime() -> CliResult<wf_aws::Blocking> {
    wf_aws::Blocking::new().map_err(|e| CliError::failed(format!("error: {e}")))
}

fn compile(wf: &Workflow) -> CliResult<wf_engine::asl::Compiled> {
    let memo_dir = local_working_copy(Some(wf));
    let memo = wf_engine::memo::Memo::load(&memo_dir.join("memo").join("files-v1"));
    let opts = wf_engine::asl::CompileOptions { memo: Some(&memo) };
    wf_engine::asl::compile_stepfunctions(wf, &opts)
        .map_err(|list| CliError::invalid(crate::compile::not_compilable(wf, &list)))
}

/// `wf run --executor sagemaker`: the executor for `targets.aws`, and the S3 cache at its P when
/// `need_cache` (no `s3://` cache was given).
#[allow(clippy::type_complexity)]
pub fn sagemaker_executor(
    wf: &Workflow,
    need_cache: bool,
) -> CliResult<(
    Arc<dyn wf_engine::RemoteExecutor>,
    Option<Arc<dyn RemoteCache>>,
)> {
    let target = compile(wf)?.target;
    let cache: Option<Arc<dyn RemoteCache>> = if need_cache {
        let url = target.cache.to_string();
        let c = wf_aws::S3Cache::open(&url, Some(&target.region))
            .map_err(|e| CliError::invalid(format!("error: cache {url}: {e}")))?
            .with_kms(target.kms_key_id.clone());
        Some(Arc::new(c))
    } else {
        None
    };
    let x = wf_aws::sagemaker::SageMakerExecutor::new(target)
        .map_err(|e| CliError::failed(format!("error: {e}")))?;
    Ok((Arc::new(x), cache))
}
