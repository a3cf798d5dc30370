//! Step Functions: deploy a compiled definition (create or update, publishing a version), start an
//! execution, and read an execution's history back as per-step states (state names are the cloud
//! contract's `wf_engine::cloud::State`).

use crate::AwsError;
use crate::client::Aws;
use aws_sdk_sfn::types::{
    CloudWatchLogsLogGroup, HistoryEventType, LogDestination, LogLevel, LoggingConfiguration,
    StateMachineType, Tag, TracingConfiguration,
};

fn call_err<E>(
    aws: &Aws,
    op: &'static str,
    target: &str,
    e: &aws_sdk_sfn::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> AwsError
where
    E: aws_sdk_sfn::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    AwsError::Call {
        target: target.to_string(),
        op,
        detail: aws.describe(e),
    }
}

/// What `deploy` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployAction {
    Created,
    Updated,
    /// The deployed definition and role are already these.
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Deployed {
    pub arn: String,
    /// The version published by this deploy (none when unchanged).
    pub version_arn: Option<String>,
    pub action: DeployAction,
}

/// The ARN of the state machine called `name`, if there is one.
pub async fn find_state_machine(aws: &Aws, name: &str) -> Result<Option<String>, AwsError> {
    let client = aws.sfn();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_state_machines()
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| call_err(aws, "ListStateMachines", name, &e))?;
        if let Some(sm) = page.state_machines().iter().find(|s| s.name() == name) {
            return Ok(Some(sm.state_machine_arn().to_string()));
        }
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(None),
        }
    }
}

/// The definition text and role of a deployed state machine.
pub async fn deployed_definition(aws: &Aws, arn: &str) -> Result<(String, String), AwsError> {
    let d = aws
        .sfn()
        .describe_state_machine()
        .state_machine_arn(arn)
        .send()
        .await
        .map_err(|e| call_err(aws, "DescribeStateMachine", arn, &e))?;
    Ok((d.definition().to_string(), d.role_arn().to_string()))
}

fn same_definition(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b)
            ),
            (Ok(x), Ok(y)) if x == y
        )
}

/// How the state machine itself is configured beside its definition (`targets.aws`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineSettings {
    /// CloudWatch Logs: the level (`ALL`, `ERROR`, `FATAL`) and the log group's ARN.
    pub logging: Option<(String, String)>,
    /// X-Ray tracing.
    pub tracing: bool,
    pub tags: Vec<(String, String)>,
}

impl MachineSettings {
    fn logging_configuration(&self) -> LoggingConfiguration {
        match &self.logging {
            Some((level, group)) => LoggingConfiguration::builder()
                .level(LogLevel::from(level.as_str()))
                .include_execution_data(true)
                .destinations(
                    LogDestination::builder()
                        .cloud_watch_logs_log_group(
                            CloudWatchLogsLogGroup::builder()
                                .log_group_arn(group)
                                .build(),
                        )
                        .build(),
                )
                .build(),
            None => LoggingConfiguration::builder().level(LogLevel::Off).build(),
        }
    }

    fn tracing_configuration(&self) -> TracingConfiguration {
        TracingConfiguration::builder()
            .enabled(self.tracing)
            .build()
    }

    fn tags(&self) -> Vec<Tag> {
        self.tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }
}

/// Creates the state machine `name`, or updates it when its definition, role, logging or tracing
/// differ; either way publishes a version and applies the tags. Running it again with the same
/// input changes nothing.
pub async fn deploy(
    aws: &Aws,
    name: &str,
    definition: &str,
    role_arn: &str,
    settings: &MachineSettings,
) -> Result<Deployed, AwsError> {
    let client = aws.sfn();
    match find_state_machine(aws, name).await? {
        Some(arn) => {
            let d = client
                .describe_state_machine()
                .state_machine_arn(&arn)
                .send()
                .await
                .map_err(|e| call_err(aws, "DescribeStateMachine", &arn, &e))?;
            let logging = settings.logging_configuration();
            let same_logging = d.logging_configuration().map(|l| l.level())
                == Some(logging.level())
                && d.tracing_configuration()
                    .is_some_and(|t| t.enabled() == settings.tracing);
            if !settings.tags.is_empty() {
                client
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(settings.tags()))
                    .send()
                    .await
                    .map_err(|e| call_err(aws, "TagResource", &arn, &e))?;
            }
            if same_definition(d.definition(), definition)
                && d.role_arn() == role_arn
                && same_logging
            {
                return Ok(Deployed {
                    arn,
                    version_arn: None,
                    action: DeployAction::Unchanged,
                });
            }
            let out = client
                .update_state_machine()
                .state_machine_arn(&arn)
                .definition(definition)
                .role_arn(role_arn)
                .logging_configuration(logging)
                .tracing_configuration(settings.tracing_configuration())
                .publish(true)
                .send()
                .await
                .map_err(|e| call_err(aws, "UpdateStateMachine", &arn, &e))?;
            Ok(Deployed {
                arn,
                version_arn: out.state_machine_version_arn().map(str::to_string),
                action: DeployAction::Updated,
            })
        }
        None => {
            let out = client
                .create_state_machine()
                .name(name)
                .definition(definition)
                .role_arn(role_arn)
                .r#type(StateMachineType::Standard)
                .logging_configuration(settings.logging_configuration())
                .tracing_configuration(settings.tracing_configuration())
                .set_tags((!settings.tags.is_empty()).then(|| settings.tags()))
                .publish(true)
                .send()
                .await
                .map_err(|e| call_err(aws, "CreateStateMachine", name, &e))?;
            Ok(Deployed {
                arn: out.state_machine_arn().to_string(),
                version_arn: out.state_machine_version_arn().map(str::to_string),
                action: DeployAction::Created,
            })
        }
    }
}

/// Starts an execution; returns its ARN.
pub async fn start(
    aws: &Aws,
    state_machine_arn: &str,
    name: &str,
    input: &str,
) -> Result<String, AwsError> {
    let out = aws
        .sfn()
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(name)
        .input(input)
        .send()
        .await
        .map_err(|e| call_err(aws, "StartExecution", state_machine_arn, &e))?;
    Ok(out.execution_arn().to_string())
}

/// One history event, reduced to what `summarize` needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StateEntered(String),
    /// A SageMaker job was submitted for step `step` (its `WF_STEP`).
    JobSubmitted {
        step: String,
        job: String,
        training: bool,
    },
    TaskFailed {
        error: String,
        cause: String,
    },
    ExecutionFailed {
        error: String,
        cause: String,
    },
}

/// The execution's status (RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED) and its history.
pub async fn execution(aws: &Aws, arn: &str) -> Result<(String, Vec<Event>), AwsError> {
    let client = aws.sfn();
    let d = client
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .map_err(|e| call_err(aws, "DescribeExecution", arn, &e))?;
    let status = d.status().as_str().to_string();
    let mut events = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .get_execution_history()
            .execution_arn(arn)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| call_err(aws, "GetExecutionHistory", arn, &e))?;
        for e in page.events() {
            match e.r#type() {
                HistoryEventType::TaskFailed => {
                    if let Some(d) = e.task_failed_event_details() {
                        events.push(Event::TaskFailed {
                            error: d.error().unwrap_or_default().to_string(),
                            cause: d.cause().unwrap_or_default().to_string(),
                        });
                    }
                }
                HistoryEventType::ExecutionFailed => {
                    let d = e.execution_failed_event_details();
                    events.push(Event::ExecutionFailed {
                        error: d.and_then(|d| d.error()).unwrap_or_default().to_string(),
                        cause: d.and_then(|d| d.cause()).unwrap_or_default().to_string(),
                    });
                }
                HistoryEventType::TaskScheduled => {
                    if let Some(job) = e
                        .task_scheduled_event_details()
                        .and_then(|d| submitted_job(d.parameters()))
                    {
                        events.push(job);
                    }
                }
                _ => {
                    if let Some(d) = e.state_entered_event_details() {
                        events.push(Event::StateEntered(d.name().to_string()));
                    }
                }
            }
        }
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    Ok((status, events))
}

/// The job a SageMaker task's parameters create, and its step (`Environment.WF_STEP`).
fn submitted_job(parameters: &str) -> Option<Event> {
    let p: serde_json::Value = serde_json::from_str(parameters).ok()?;
    let step = p["Environment"][wf_engine::cloud::job::STEP_ENV].as_str()?;
    let (job, training) = match (
        p["TrainingJobName"].as_str(),
        p["ProcessingJobName"].as_str(),
    ) {
        (Some(j), _) => (j, true),
        (None, Some(j)) => (j, false),
        _ => return None,
    };
    Some(Event::JobSubmitted {
        step: step.to_string(),
        job: job.to_string(),
        training,
    })
}

/// The SageMaker jobs an execution submitted, in order: (step, job name, training?).
pub fn jobs(events: &[Event]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::JobSubmitted {
                step,
                job,
                training,
            } => Some((step.clone(), job.clone(), *training)),
            _ => None,
        })
        .collect()
}

/// The state of one workflow step in an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepState {
    pub id: String,
    /// checking | creating file system | running | committing | cached | ran | failed
    pub state: String,
    /// For a failed step: the error of the task that failed it.
    pub error: Option<String>,
}

/// Per-step states from a history, in the order steps started; state names are `<id>.<part>`.
pub fn summarize(events: &[Event]) -> Vec<StepState> {
    let mut steps: Vec<StepState> = Vec::new();
    let mut ran: Vec<String> = Vec::new();
    let mut last_error: Option<String> = None;
    for e in events {
        match e {
            Event::TaskFailed { error, cause } => {
                last_error = Some(short_cause(error, cause));
            }
            Event::JobSubmitted { .. } => {}
            // An error no state caught (an S3 error reading a cache entry, retried and still
            // failing) fails the execution in the step that was checking or publishing.
            Event::ExecutionFailed { error, cause } => {
                if let Some(s) = steps
                    .iter_mut()
                    .rev()
                    .find(|s| matches!(s.state.as_str(), "checking" | "publishing"))
                {
                    s.state = "failed".to_string();
                    s.error = Some(
                        last_error
                            .take()
                            .unwrap_or_else(|| short_cause(error, cause)),
                    );
                }
            }
            Event::StateEntered(name) => {
                use wf_engine::cloud::State;
                let Some((id, part)) = State::parse(name) else {
                    continue;
                };
                let state = match part {
                    State::Key | State::Lookup => "checking",
                    State::Fsx(_) => "creating file system",
                    State::Run => {
                        ran.push(id.to_string());
                        "running"
                    }
                    State::Commit => "committing",
                    State::Published => "publishing",
                    State::Done if ran.iter().any(|r| r == id) => "ran",
                    State::Done => "cached",
                    State::Diagnose
                    | State::Job
                    | State::HasReason
                    | State::JobFailed
                    | State::NotPublished
                    | State::Failed => "failed",
                };
                let error = (state == "failed").then(|| last_error.take()).flatten();
                match steps.iter_mut().find(|s| s.id == id) {
                    Some(s) => {
                        s.state = state.to_string();
                        if error.is_some() || state != "failed" {
                            s.error = error;
                        }
                    }
                    None => steps.push(StepState {
                        id: id.to_string(),
                        state: state.to_string(),
                        error,
                    }),
                }
            }
        }
    }
    steps
}

/// `error: cause` with a SageMaker job's FailureReason pulled out of its describe output.
fn short_cause(error: &str, cause: &str) -> String {
    let reason = serde_json::from_str::<serde_json::Value>(cause)
        .ok()
        .and_then(|v| {
            let name = v
                .get("ProcessingJobName")
                .or_else(|| v.get("TrainingJobName"))
                .and_then(|n| n.as_str())
                .map(str::to_string);
            let why = v
                .get("FailureReason")
                .and_then(|n| n.as_str())
                .map(str::to_string);
            match (name, why) {
                (Some(n), Some(w)) => Some(format!("job {n} failed: {w}")),
                (Some(n), None) => Some(format!("job {n} failed")),
                (None, w) => w,
            }
        });
    let text = reason.unwrap_or_else(|| cause.chars().take(300).collect());
    if text.is_empty() {
        error.to_string()
    } else {
        format!("{error}: {text}")
    }
}

/// A new execution name, `<yyyymmdd>-<hhmmss>-<8 hex>` (UTC; 24 characters, within the 32 the job
/// names allow, docs/cloud.md §5).
pub fn execution_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let salt = format!("{}-{}-{}", now.as_nanos(), std::process::id(), secs);
    let rand = &hash_hex(salt.as_bytes())[..8];
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{rand}",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

fn hash_hex(bytes: &[u8]) -> String {
    // FNV-1a, twice with different seeds: uniqueness, not security.
    let mut out = String::new();
    for seed in [0xcbf29ce484222325u64, 0x84222325cbf29ce4u64] {
        let mut h = seed;
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        let name = execution_name();
        assert_eq!(name.len(), 24, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn steps_from_history() {
        let e = |s: &str| Event::StateEntered(s.to_string());
        let events = vec![
            e("Init"),
            e("fetch.Key"),
            e("fetch.Lookup"),
            e("fetch.Done"),
            e("train.Key"),
            e("train.Lookup"),
            e("train.Fsx.Create"),
            e("train.Run"),
            Event::TaskFailed {
                error: "States.TaskFailed".into(),
                cause: r#"{"TrainingJobName":"fail-train-x-0","FailureReason":"boom"}"#.into(),
            },
            e("train.Failed"),
        ];
        let s = summarize(&events);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].id.as_str(), s[0].state.as_str()), ("fetch", "cached"));
        assert_eq!((s[1].id.as_str(), s[1].state.as_str()), ("train", "failed"));
        assert_eq!(
            s[1].error.as_deref(),
            Some("States.TaskFailed: job fail-train-x-0 failed: boom")
        );
    }
}
