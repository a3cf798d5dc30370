//! CloudWatch Logs: the state machine's log group (created when missing) and the log tail of a
//! SageMaker job (`wf logs`), which SageMaker writes to `/aws/sagemaker/<kind>Jobs`, one stream per
//! instance named `<job name>/<host>-<timestamp>`.

use crate::AwsError;
use crate::client::Aws;

fn call_err<E>(
    aws: &Aws,
    op: &'static str,
    target: &str,
    e: &aws_sdk_cloudwatchlogs::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> AwsError
where
    E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    AwsError::Call {
        target: target.to_string(),
        op,
        detail: aws.describe(e),
    }
}

/// The log group SageMaker writes a job's output to.
pub fn job_log_group(training: bool) -> &'static str {
    if training {
        "/aws/sagemaker/TrainingJobs"
    } else {
        "/aws/sagemaker/ProcessingJobs"
    }
}

/// Creates log group `name` unless it exists; returns its ARN as Step Functions' logging
/// configuration takes it (`arn:aws:logs:<region>:<account>:log-group:<name>:*`).
pub async fn ensure_log_group(aws: &Aws, name: &str) -> Result<String, AwsError> {
    let client = aws.logs();
    if let Err(e) = client.create_log_group().log_group_name(name).send().await {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_already_exists_exception());
        if !exists {
            return Err(call_err(aws, "CreateLogGroup", name, &e));
        }
    }
    let out = client
        .describe_log_groups()
        .log_group_name_prefix(name)
        .send()
        .await
        .map_err(|e| call_err(aws, "DescribeLogGroups", name, &e))?;
    let arn = out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name))
        .and_then(|g| g.arn())
        .ok_or_else(|| AwsError::Call {
            target: name.to_string(),
            op: "DescribeLogGroups",
            detail: "the log group was created but is not listed".to_string(),
        })?;
    Ok(if arn.ends_with(":*") {
        arn.to_string()
    } else {
        format!("{arn}:*")
    })
}

/// The last `lines` lines of each stream of job `job` in `group` (stream name, lines), streams in
/// name order (one per instance).
pub async fn job_log_tail(
    aws: &Aws,
    group: &str,
    job: &str,
    lines: i32,
) -> Result<Vec<(String, Vec<String>)>, AwsError> {
    let client = aws.logs();
    let target = format!("{group} {job}/");
    let mut streams = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .describe_log_streams()
            .log_group_name(group)
            .log_stream_name_prefix(format!("{job}/"))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| call_err(aws, "DescribeLogStreams", &target, &e))?;
        streams.extend(
            page.log_streams()
                .iter()
                .filter_map(|s| s.log_stream_name().map(str::to_string)),
        );
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    streams.sort();
    let mut out = Vec::new();
    for stream in streams {
        let events = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(&stream)
            .limit(lines)
            .start_from_head(false)
            .send()
            .await
            .map_err(|e| call_err(aws, "GetLogEvents", &format!("{group} {stream}"), &e))?;
        let text = events
            .events()
            .iter()
            .filter_map(|e| e.message().map(str::to_string))
            .collect();
        out.push((stream, text));
    }
    Ok(out)
}
