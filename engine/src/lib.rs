//! `wf-engine`: the core of wf. A workflow file is parsed into a spanned YAML tree (`yaml`), validated
//! against the registered step kinds into a sealed, acyclic `Workflow` (`workflow`, `params`), planned
//! and run with every step's output cached by content hash (`key`, `manifest`, `store`, `exec`).
//!
//! No AWS SDK and no candle here: the engine builds and tests in seconds. Step kinds live in
//! `wf-steps` and reach the engine through the `Step` trait and one `Registry`.

pub mod artifact;
pub mod asl;
pub mod cloud;
pub mod diag;
pub mod digest;
pub mod exec;
pub mod facts;
pub mod graph;
pub mod key;
pub mod manifest;
pub mod memo;
pub mod params;
pub mod redact;
pub mod reference;
pub mod registry;
pub mod remote;
pub mod schema;
pub mod step;
pub mod store;
pub mod targets;
pub mod words;
pub mod workflow;
pub mod yaml;

pub use artifact::{ArtifactType, Slots};
pub use diag::{Diagnostic, DiagnosticList, Diagnostics, Span};
pub use digest::{ArtifactDigest, FileDigest, StepKey};
pub use exec::{Event, RunOptions, RunSummary, Status, StepOutcome};
pub use facts::Facts;
pub use params::{ParamSpec, ParamType, Params};
pub use registry::Registry;
pub use remote::{RemoteCache, RemoteError, RemoteExecutor};
pub use step::{
    CancelToken, CheckContext, Count, InputArtifact, Item, Merged, Metric, Part, Progress,
    RemoteTask, RunContext, Sharded, SizeEstimate, Step, StepError, Unit,
};
pub use store::Store;
pub use words::plural;
pub use workflow::{LoadError, StepDef, Workflow, load, load_bytes, load_str};
