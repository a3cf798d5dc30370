//! A shared cache layer behind the local store (e.g. an S3 bucket), seen by the executor and `wf plan`.
//!
//! The local store stays the working copy: steps only ever read inputs from and write outputs to it.
//! A remote cache is consulted on a local miss (under the key's lock, so one process downloads) and is
//! given every entry the local store holds for the workflow's steps. Implementations live outside the
//! engine (`wf-aws` for `s3://`), so the engine never links an SDK. Remote layout and ordering are the
//! implementation's business, with one rule: an entry becomes visible to readers only after all the
//! data it references (the same commit-point rule as `store.rs`).

use crate::digest::StepKey;
use crate::store::{Entry, Store};

/// A failure talking to the remote cache, already phrased for the user (names the URL and the cause).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub message: String,
}

impl RemoteError {
    pub fn new(message: impl Into<String>) -> Self {
        RemoteError {
            message: message.into(),
        }
    }
}

pub trait RemoteCache: Send + Sync {
    /// Where it is, for messages (e.g. `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// The remote entry for `key`, without downloading its data (for `wf plan`).
    fn lookup(&self, key: &StepKey) -> Result<Option<Entry>, RemoteError>;

    /// Downloads the entry for `key` with its data into `store` and commits it there; `None` if the
    /// remote has no such entry. The returned entry is the local one (as `Store::lookup` gives it).
    fn fetch(&self, key: &StepKey, store: &Store) -> Result<Option<Entry>, RemoteError>;

    /// Makes a locally committed `entry` available remotely (data first, the entry last). Cheap when
    /// the remote already has it.
    fn publish(&self, store: &Store, entry: &Entry) -> Result<(), RemoteError>;
}

impl std::fmt::Debug for dyn RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteCache({})", self.location())
    }
}

/// Runs a step's computation somewhere else (a SageMaker job) instead of `Step::run` on this
/// machine; the job publishes the output to the remote cache under the step's key, from where the
/// executor fetches it like any remote hit. Steps it does not take (`takes` false) run locally.
pub trait RemoteExecutor: Send + Sync {
    /// Where the steps run, for messages (e.g. `SageMaker (us-east-1)`).
    fn name(&self) -> String;

    /// Whether step `i` of `wf` runs remotely.
    fn takes(&self, wf: &crate::Workflow, i: usize) -> bool;

    /// Runs step `i` remotely under `key` and returns once its output is published (or it failed).
    /// Its waits poll `cancel`: when the run is stopped it stops the remote work (best effort) and
    /// returns an error.
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        wf: &crate::Workflow,
        i: usize,
        key: &StepKey,
        components: &crate::key::KeyComponents,
        inputs: &std::collections::BTreeMap<String, crate::InputArtifact>,
        progress: &dyn crate::Progress,
        cancel: &crate::CancelToken,
    ) -> Result<(), crate::StepError>;
}

impl std::fmt::Debug for dyn RemoteExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteExecutor({})", self.name())
    }
}
