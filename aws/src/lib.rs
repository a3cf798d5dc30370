//! `wf-aws`: every line of wf that talks to AWS. The S3 layer of the cache (`s3cache`), S3 sources
//! for fetch-dataset (`s3`), Step Functions deploy/start/status, SageMaker jobs and FSx.
//!
//! Only the CLI and (behind their `aws` feature) the steps depend on this crate, so the engine,
//! imaging and trainer build without the SDK. The SDK is async; wf's steps and the engine's
//! `RemoteCache` are blocking, so this crate owns a small runtime ([`Blocking`]) and exposes
//! blocking calls where the engine needs them.

pub mod client;
pub mod logs;
pub mod s3;
pub mod s3cache;
pub mod sagemaker;
pub mod sfn;

pub use client::{Aws, Credentials};
pub use s3cache::S3Cache;
pub use wf_engine::cloud::S3Url;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// A call the service refused or that could not be made (after the SDK's retries).
    #[error("{target}: {op} failed: {detail}")]
    Call {
        target: String,
        op: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] wf_engine::store::StoreError),
}

impl AwsError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AwsError + '_ {
        move |source| AwsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A private tokio runtime for blocking callers (engine threads, the CLI). Usable from a
/// `spawn_blocking` thread of another runtime; dropping it never blocks.
pub struct Blocking(Option<tokio::runtime::Runtime>);

impl Blocking {
    pub fn new() -> Result<Blocking, AwsError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wf-aws")
            .enable_all()
            .build()
            .map_err(|e| AwsError::Invalid(format!("cannot start the AWS runtime: {e}")))?;
        Ok(Blocking(Some(rt)))
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.as_ref().expect("present until drop").block_on(f)
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
