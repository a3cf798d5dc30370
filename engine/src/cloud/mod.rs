//! The cloud contract: what the Step Functions compiler (`crate::asl`), the SageMaker executor and
//! the S3 cache (`wf-aws`) and the `wf worker` entrypoint (the CLI) must agree on, as data and
//! functions that all of them render from. docs/cloud.md says the same in words.
//!
//! - `layout`: the one S3 URL type and every area under the cache prefix P;
//! - `worker`: the worker's command line, built and parsed here;
//! - `job`: the jobs of a step (`JobSpec`), their defaults and names, and the uploads they need;
//! - `states`: the state names of a compiled state machine;
//! - `target`: `targets.aws`, complete and checked;
//! - `text`: values with holes filled when a job is submitted.
//!
//! Pure data and functions: no SDK, no I/O.

pub mod job;
pub mod layout;
pub mod states;
pub mod target;
pub mod text;
pub mod worker;

pub use job::{JobSpec, StepJobs, Upload, UploadSource, plan_step};
pub use layout::S3Url;
pub use states::State;
pub use target::{AwsTarget, FsxSettings};
pub use text::{Text, Var};
pub use worker::{WorkerCall, WorkerRequest};
