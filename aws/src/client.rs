//! One SDK configuration for every AWS call wf makes, and one way of turning SDK errors into messages.
//!
//! - HTTPS through rustls with ring (the SDK's default client would add aws-lc to the build).
//! - Retries: the SDK's standard mode (exponential backoff with jitter on throttling, 5xx and
//!   connection errors), `DEFAULT_MAX_ATTEMPTS` attempts unless `AWS_MAX_ATTEMPTS` says otherwise.
//! - `AWS_ENDPOINT_URL` (read by aws-config) points every client at an emulator; S3 then uses
//!   path-style addressing, which emulators need and real S3 still accepts.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// Attempts per request (the first one included) when `AWS_MAX_ATTEMPTS` is unset.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Loaded configuration plus what error messages need to know about it.
#[derive(Clone, Debug)]
pub struct Aws {
    config: SdkConfig,
    max_attempts: u32,
    path_style: bool,
    s3_endpoint: Option<String>,
}

/// How the SDK finds credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// The default chain: environment, profile, web identity, container, instance metadata.
    Default,
    /// Unsigned requests (public buckets).
    Anonymous,
}

impl Aws {
    /// Loads the configuration; `region` (e.g. `targets.aws.region`) wins over the environment.
    pub async fn load(region: Option<&str>, credentials: Credentials) -> Aws {
        let max_attempts = std::env::var("AWS_MAX_ATTEMPTS")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(DEFAULT_MAX_ATTEMPTS);
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(max_attempts));
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        if credentials == Credentials::Anonymous {
            loader = loader.no_credentials();
        }
        let mut config = loader.load().await;
        // Without any region configured, us-east-1 (S3 needs one even for an explicit endpoint).
        if config.region().is_none() {
            config = config
                .to_builder()
                .region(aws_config::Region::new("us-east-1"))
                .build();
        }
        let path_style =
            config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        Aws {
            config,
            max_attempts,
            path_style,
            s3_endpoint: None,
        }
    }

    /// S3 calls go to `endpoint` (path style) instead, e.g. an S3-compatible store.
    pub fn with_s3_endpoint(mut self, endpoint: &str) -> Aws {
        self.s3_endpoint = Some(endpoint.to_string());
        self.path_style = true;
        self
    }

    pub fn config(&self) -> &SdkConfig {
        &self.config
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub fn region(&self) -> Option<&str> {
        self.config.region().map(|r| r.as_ref())
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        let mut b =
            aws_sdk_s3::config::Builder::from(&self.config).force_path_style(self.path_style);
        if let Some(e) = &self.s3_endpoint {
            b = b.endpoint_url(e);
        }
        if self.config.credentials_provider().is_none() {
            b = b.allow_no_auth();
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }

    pub fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&self.config)
    }

    pub fn sagemaker(&self) -> aws_sdk_sagemaker::Client {
        aws_sdk_sagemaker::Client::new(&self.config)
    }

    pub fn fsx(&self) -> aws_sdk_fsx::Client {
        aws_sdk_fsx::Client::new(&self.config)
    }

    pub fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&self.config)
    }

    /// A one-line description of a failed call, with the service's code and message, the HTTP
    /// status, and whether retries were exhausted.
    pub fn describe<E>(&self, err: &SdkError<E, HttpResponse>) -> String
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        describe(err, self.max_attempts)
    }
}

/// Throttling codes the standard retry mode backs off on (S3 says SlowDown).
fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "TransactionInProgressException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "RequestThrottled"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "EC2ThrottledException"
    )
}

/// See [`Aws::describe`].
pub fn describe<E>(err: &SdkError<E, HttpResponse>, max_attempts: u32) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let gave_up = format!("gave up after {max_attempts} attempts");
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code();
            let mut s = match (code, se.err().message()) {
                (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m} (HTTP {status})"),
                (Some(c), _) => format!("{c} (HTTP {status})"),
                (None, _) => format!("HTTP {status}"),
            };
            if status >= 500 || status == 429 || code.is_some_and(is_throttling) {
                s.push_str(&format!("; {gave_up}"));
            } else if status == 403 {
                s.push_str(
                    "; the credentials in use lack a permission for this (see README: Run on AWS)",
                );
            }
            s
        }
        SdkError::DispatchFailure(_) => {
            format!(
                "cannot reach the service ({}); {gave_up}",
                DisplayErrorContext(err)
            )
        }
        SdkError::TimeoutError(_) => format!("timed out; {gave_up}"),
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// Whether a failed call means "no such object/key" (S3 HeadObject says it with a bare 404).
pub fn is_not_found<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(se) => {
            se.raw().status().as_u16() == 404 && !matches!(se.err().code(), Some("NoSuchBucket"))
        }
        _ => false,
    }
}
