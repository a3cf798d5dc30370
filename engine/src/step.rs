//! The `Step` trait: what every kind of step (`uses:`) provides to the engine.
//!
//! A step declares its kind and version (bump the version when its behaviour changes, so cached outputs
//! of the old behaviour are not reused), a param schema, typed input slots, and a typed output. It runs
//! locally through `run`, and describes itself for remote execution through `remote` (consumed by the
//! Step Functions compiler and the SageMaker executor). Steps are stateless; one instance serves all
//! steps of its kind in a workflow.

use crate::artifact::{ArtifactType, Slots};
use crate::diag::Diagnostics;
use crate::digest::{ArtifactDigest, FileDigest};
use crate::facts::Facts;
use crate::params::{ParamSpec, Params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub trait Step: Send + Sync + 'static {
    /// The YAML `uses:` name, e.g. `command`, `sharded-transform`.
    fn kind(&self) -> &'static str;
    /// Part of every cache key of this kind.
    fn version(&self) -> u32;
    /// One line for `wf` listings and did-you-mean help.
    fn summary(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    fn inputs(&self) -> Slots;
    /// The output type; may depend on params (the `command` step's `produces:`).
    fn output(&self, params: &Params) -> ArtifactType;

    /// Checks beyond the schema (structure of `Any` params, files that must exist, what the inputs'
    /// facts rule out: `cx.inputs`), with positions.
    fn check(&self, _params: &Params, _cx: &CheckContext<'_>, _diags: &mut Diagnostics) {}

    /// What validation can tell about this step's output before it runs, from its params and its
    /// inputs' facts (`cx.inputs`), for the checks of the steps that read it (`facts.rs`). A step
    /// that passes its input on unchanged passes its facts on.
    fn facts(&self, _params: &Params, _cx: &CheckContext<'_>) -> Option<Facts> {
        None
    }

    /// The bytes this step's output will take, as far as validation can tell from its params and
    /// its inputs' facts (`cx.inputs`): `wf plan` shows it and `wf run` compares the steps it will
    /// run with the cache's free space before starting any. `None`: the step writes little.
    fn output_size(&self, _params: &Params, _cx: &CheckContext<'_>) -> Option<SizeEstimate> {
        None
    }

    /// The output's size as the step's source announces it, for an `output_size` of
    /// [`SizeEstimate::Ask`]: asked (a `HEAD`) when `wf plan` or `wf run` plans a run of the step.
    /// A wait inside must poll `cancel`.
    fn announced_size(&self, _params: &Params, _cancel: &CancelToken) -> SizeEstimate {
        SizeEstimate::Unknown {
            why: "size unknown until fetched".into(),
        }
    }

    /// Whether this build on this machine can run the step as configured (`gpus:` in a build without
    /// CUDA). The file may be valid for another machine (the cloud), so this is no part of
    /// validation: `wf run` asks it, before running anything, of each step it will run here.
    fn check_local(&self, _params: &Params, _step_id: &str, _diags: &mut Diagnostics) {}

    /// What a run of this step would pick up from earlier work that its output does not hold (the
    /// checkpoints of an interrupted training), for `wf plan`: "resumes from epoch 3". `key` is the
    /// step's key components, which name that work.
    fn resumes(
        &self,
        _store: &crate::store::Store,
        _key: &crate::key::KeyComponents,
    ) -> Option<String> {
        None
    }

    /// Whether the workflow `seed` is part of this step's key (steps with randomness).
    fn seeded(&self) -> bool {
        false
    }

    /// Local files and directories (relative to the workflow file) whose content is part of the key.
    fn local_files(&self, _params: &Params) -> Vec<String> {
        Vec::new()
    }

    /// A source outside the workflow that the output depends on and that the params name without
    /// pinning it (a URL fetched without a checksum). `Some(what)` (`what` names it in messages,
    /// credentials redacted) makes the engine read [`Step::external_state`] whenever it computes the
    /// key, so a change of the source is a cache miss (`wf plan`: "source changed"). Such a key is
    /// known only when it is computed, never beforehand: `wf compile` refuses these steps.
    fn external_source(&self, _params: &Params) -> Option<String> {
        None
    }

    /// The current state of the source named by [`Step::external_source`] (e.g. the server's
    /// validators), added to the key as its `external:` line (key.rs). Called only when
    /// `external_source` is `Some`; a wait inside must poll `cancel`. An error fails the step (and
    /// is the reason `wf plan` shows).
    fn external_state(&self, _params: &Params, _cancel: &CancelToken) -> Result<String, StepError> {
        Err(StepError::new(format!(
            "`{}` names no external source",
            self.kind()
        )))
    }

    /// Runs the step: read inputs from `cx.inputs`, write the output into the empty `cx.out_dir`.
    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError>;

    /// How this step runs remotely (SageMaker job, FSx import, ...).
    fn remote(&self, params: &Params) -> RemoteTask;

    /// Metrics the step prints while it runs (`Progress::note` lines, which a worker writes to the
    /// job's log), for the SageMaker console and CloudWatch (a Training job's `MetricDefinitions`).
    fn metrics(&self) -> &'static [Metric] {
        &[]
    }

    /// Whether (and how) the step runs as parts on several instances whose outputs one commit job
    /// merges (`RemoteTask::Processing { sharded_input: true }`, docs/cloud.md §6).
    fn sharded(&self) -> Option<&dyn Sharded> {
        None
    }
}

/// A step whose work splits into independent items (the cases of a data set): each instance of a
/// sharded job runs the items whose input files it was given (`run_part`), and a commit job checks
/// that the parts cover every item exactly once and adds what spans them all (`merge`). The output
/// is the same artifact a local `run` makes.
pub trait Sharded: Send + Sync {
    /// What an item is called in messages (`case`; `words::plural` makes the plural).
    fn item_name(&self) -> &'static str {
        "item"
    }

    /// Runs the items whose input files `cx` holds, writing their files into `cx.out_dir`.
    fn run_part(&self, cx: &RunContext<'_>) -> Result<Part, StepError>;

    /// Every item id the parts must cover together, in output order, read from the sharded input's
    /// files (`read` returns one by its path in the input artifact).
    fn items(
        &self,
        params: &Params,
        read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<String>, StepError>;

    /// The files only the whole output holds (e.g. an index), from every part's items in the order
    /// `items` gave.
    fn merge(&self, params: &Params, seed: u64, part: Part) -> Result<Merged, StepError>;
}

/// One item of a part: done (with the output files it wrote) or skipped (with the reason).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The items a part (or, merged, all parts) processed and skipped.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// (`cases` in parts written before the contract named it `done`.)
    #[serde(alias = "cases")]
    pub done: Vec<Item>,
    pub skipped: Vec<Item>,
}

/// What `Sharded::merge` adds to the merged output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// (path in the output, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Warnings stored with the output (e.g. skipped items).
    pub warnings: Vec<String>,
}

/// The size of a step's output, estimated before it runs (`Step::output_size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeEstimate {
    /// About `bytes`; `how` says how they add up ("484 cases × 101 copies × 17.8 MB"), `help` what
    /// to change for fewer, and `span` where.
    Bytes {
        bytes: u64,
        how: String,
        help: Option<String>,
        span: crate::diag::Span,
    },
    /// Not known until the step (or one before it) runs; says why ("size unknown until fetched").
    Unknown { why: String },
    /// Known by asking the step's source (`Step::announced_size`: a server's `Content-Length`),
    /// which planning does for a step that will run.
    Ask,
}

/// What `check` (and `facts`) may look at besides the params.
pub struct CheckContext<'a> {
    pub step_id: &'a str,
    /// The directory holding the workflow file; relative paths resolve against it.
    pub workflow_dir: &'a Path,
    /// The facts of the inputs whose producers declared any, by slot.
    pub inputs: &'a BTreeMap<String, Facts>,
}

impl CheckContext<'_> {
    /// The facts of input `slot` as `T`, when its producer declared facts of that type.
    pub fn input<T: std::any::Any>(&self, slot: &str) -> Option<&T> {
        self.inputs.get(slot).and_then(Facts::get)
    }
}

/// One resolved input of a running step.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub ty: ArtifactType,
    pub digest: ArtifactDigest,
    /// A read-only directory holding the artifact's files.
    pub path: PathBuf,
}

/// Everything a running step sees.
pub struct RunContext<'a> {
    pub step_id: &'a str,
    pub workflow_dir: &'a Path,
    pub params: &'a Params,
    pub inputs: &'a BTreeMap<String, InputArtifact>,
    /// Empty directory the step fills; committed to the cache only if `run` returns `Ok`.
    pub out_dir: &'a Path,
    /// Scratch space removed after the step.
    pub scratch_dir: &'a Path,
    /// The step's log file: a step writes its diagnostics and child output here.
    pub log_path: &'a Path,
    pub seed: u64,
    /// Threads the step may use.
    pub threads: usize,
    /// Digests of the declared local files, as used in the key.
    pub local_files: &'a BTreeMap<String, FileDigest>,
    /// The external source's state as used in the key (`Step::external_state`), so the step can
    /// refuse bytes of another state; `None` when the step has no external source.
    pub external: Option<&'a str>,
    pub cancel: &'a CancelToken,
    pub progress: &'a dyn Progress,
    /// The store, for steps that keep finer-grained caches of their own (per-case preprocessing).
    pub store: &'a crate::store::Store,
    /// A directory that outlives an interruption of this run and is restored for the next attempt
    /// (a Training job's checkpoint directory, which SageMaker syncs with S3), for steps that resume;
    /// `None`: such a step keeps its resume state under the store.
    pub resume_dir: Option<&'a Path>,
}

/// Progress reporting from inside a step (the reporter decides how to show it).
///
/// A step says what it is doing (`message`), which lines are worth keeping (`note`: an epoch's loss
/// and Dice), what the user should know (`warn`), and how far its work is in counted units
/// (`advance`), with an optional second level inside the current unit (`advance_within`: the steps
/// of an epoch). A live view shows counts as bars with a rate and an ETA, keeps notes and warnings
/// above them, and replaces a message by the next; plain output prints messages, notes and warnings
/// as lines.
pub trait Progress: Send + Sync {
    /// What the step is doing now (`downloading X`); the next message replaces it.
    fn message(&self, msg: &str);
    /// A line worth keeping in the run's output (an epoch's metrics). Sinks that keep every line
    /// anyway treat it as a message.
    fn note(&self, msg: &str) {
        self.message(msg)
    }
    /// Something the user should know about a successful step (e.g. a skipped bad case). Warnings are
    /// stored with the output, so a cached run reports them again.
    fn warn(&self, msg: &str);
    /// How far the step's work is: `done` of `total` (`total` 0: not known).
    fn advance(&self, count: Count);
    /// How far the current unit of [`Progress::advance`] is (the steps of the current epoch).
    fn advance_within(&self, _count: Count) {}
    /// A fact about this computation that is not part of its output (how long it took, its
    /// throughput). Facts are stored with the cache entry, beside its warnings (`Entry::facts`), and
    /// shown by `wf report`; no digest covers them, so a recomputation that writes the same bytes in
    /// another time is still recognized as unchanged. A later value under a name replaces the
    /// earlier one. Sinks that keep nothing ignore them.
    fn fact(&self, _name: &str, _value: serde_json::Value) {}
}

/// What a step's progress counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Case,
    /// An optimizer step (a batch).
    Step,
    Epoch,
    Byte,
}

impl Unit {
    /// The unit's name for `n` of it: `case` or `cases`.
    pub fn name(self, n: u64) -> &'static str {
        let (one, many) = match self {
            Unit::Case => ("case", "cases"),
            Unit::Step => ("step", "steps"),
            Unit::Epoch => ("epoch", "epochs"),
            Unit::Byte => ("byte", "bytes"),
        };
        if n == 1 { one } else { many }
    }
}

/// `done` of `total` units (`total` 0: not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub done: u64,
    pub total: u64,
    pub unit: Unit,
}

impl Count {
    pub fn new(done: u64, total: u64, unit: Unit) -> Count {
        Count { done, total, unit }
    }
}

/// A progress sink that drops everything.
pub struct NoProgress;
impl Progress for NoProgress {
    fn message(&self, _msg: &str) {}
    fn warn(&self, _msg: &str) {}
    fn advance(&self, _count: Count) {}
}

/// Set when the run is being stopped; long steps should poll it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A step failure: a one-line message and an optional detail block (e.g. the stderr tail).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    pub detail: Option<String>,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            detail: None,
        }
    }
    pub fn with_detail(message: impl Into<String>, detail: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            detail: Some(detail.into()),
        }
    }
}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> Self {
        StepError::new(e.to_string())
    }
}

/// A metric in a step's log lines: SageMaker charts the first capture group of `regex` (a number)
/// under `name` for every line that matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub regex: &'static str,
}

/// The remote form of a step, for the Step Functions compiler and the SageMaker executor.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteTask {
    /// A SageMaker Processing job running `wf worker <kind>`; `instances` from a param or 1.
    Processing { instances: u32, sharded_input: bool },
    /// A SageMaker Training job running `wf worker <kind>`.
    Training { instances: u32 },
    /// An FSx for Lustre file system linked to the input's S3 prefix.
    FsxImport,
}
