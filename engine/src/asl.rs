//! The Step Functions compiler: a sealed `Workflow` becomes an Amazon States Language definition whose
//! tasks run `wf worker` in SageMaker jobs, sharing the S3 cache (and the keys) with local runs.
//!
//! The conventions it implements — S3 layout, key derivation, state names, payload, job names, worker
//! command line — are written down in `docs/cloud.md`; `wf deploy`/`wf start` (crate `wf-aws`) and the
//! workers implement the other halves. Steps run one after another in the workflow's topological order;
//! each one computes its key (`States.Hash`), looks up its entry in S3 (hit: done), and otherwise runs its
//! job and reads the entry the job published. Only keys and digests travel in the payload.

pub mod intrinsic;
pub mod target;

pub use target::{AwsTarget, FsxSettings, S3Location, StepResources};

use crate::diag::{DiagnosticList, Diagnostics, Span};
use crate::digest::ArtifactDigest;
use crate::exec::key_components;
use crate::memo::Memo;
use crate::step::RemoteTask;
use crate::workflow::{StepDef, Workflow};
use intrinsic::{KeyTemplate, Piece, format_n, format1, quote};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Longest execution name the job-name scheme allows (docs/cloud.md §5); `wf start` must respect it.
pub const MAX_EXECUTION_NAME: usize = 32;
/// `States.Hash` input limit, in characters.
pub const MAX_HASH_INPUT: usize = 10_000;
/// Step Functions' limit on the payload between states, in bytes.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Step Functions' limit on a definition, in bytes.
pub const MAX_DEFINITION: usize = 1024 * 1024;
/// Longest state name Step Functions accepts.
const MAX_STATE_NAME: usize = 80;
/// Longest static job-name prefix: 63 = prefix + `-` + execution name + `-c9`.
const MAX_JOB_PREFIX: usize = 63 - MAX_EXECUTION_NAME - 4;
/// SageMaker's limit on one container argument.
const MAX_ARG: usize = 256;
/// Payload budget (docs/cloud.md §4): execution input, one entry JSON, one error, one FSx description.
const PAYLOAD_FIXED: usize = 1024 + 32 * 1024 + 32 * 1024 + 16 * 1024;
/// FSx polls (30 s apart) before giving up on a file system becoming AVAILABLE.
const FSX_MAX_POLLS: u32 = 120;
const FSX_POLL_SECONDS: u32 = 30;

const PROCESSING_INSTANCE: &str = "ml.m5.xlarge";
const TRAINING_INSTANCE: &str = "ml.p3.2xlarge";
const COMMIT_INSTANCE: &str = "ml.m5.large";
const VOLUME_GB: u32 = 50;
const PROCESSING_MAX_RUNTIME: u32 = 86_400;
const TRAINING_MAX_RUNTIME: u32 = 432_000;
const COMMIT_MAX_RUNTIME: u32 = 3_600;
/// Added to a job's own limit for the Task's `TimeoutSeconds` (queueing, image pull, upload).
const JOB_TIMEOUT_SLACK: u32 = 1_800;

/// Knobs of a compile that are not part of the workflow file.
pub struct CompileOptions<'a> {
    /// Memo for hashing declared local files (their digests are part of keys); `None`: hash afresh.
    pub memo: Option<&'a Memo>,
    /// Retries of a job that failed (`States.TaskFailed`), each under a fresh job name. Default 1.
    pub failed_job_retries: u32,
    /// Seconds before retrying a failed job. Default 60.
    pub failed_job_retry_seconds: u32,
}

impl Default for CompileOptions<'_> {
    fn default() -> Self {
        CompileOptions {
            memo: None,
            failed_job_retries: 1,
            failed_job_retry_seconds: 60,
        }
    }
}

/// Where an upload's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadSource {
    Bytes(Vec<u8>),
    /// A local file (a step's declared file).
    File(PathBuf),
}

/// An object `wf deploy` must put into the bucket before executions start (params too long for a
/// container argument, declared local files). Content-addressed: skip it when the key exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// Object key in `AwsTarget::cache.bucket` (the prefix included).
    pub key: String,
    pub source: UploadSource,
}

/// One step as compiled, for deploy/status tooling.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledStep {
    pub id: String,
    pub kind: String,
    /// Its member of `$.steps` in the payload.
    pub field: String,
    /// The canonical key string with `{}` for the input digests (in `slots` order).
    pub key_template: String,
    pub slots: Vec<String>,
    /// Names of its states; the first is where it starts.
    pub states: Vec<String>,
}

/// The result of a compile.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The ASL definition (object keys sorted, so its text is stable).
    pub definition: Json,
    pub target: AwsTarget,
    pub uploads: Vec<Upload>,
    pub steps: Vec<CompiledStep>,
}

/// Compiles `wf` for Step Functions. Errors are positioned diagnostics (exit 2 in the CLI): missing or
/// inconsistent `targets.aws` settings, steps Step Functions cannot express (key string over 10,000
/// characters, payload over 256 KiB, definition over 1 MiB), unreadable declared files.
pub fn compile_stepfunctions(
    wf: &Workflow,
    opts: &CompileOptions<'_>,
) -> Result<Compiled, DiagnosticList> {
    let mut diags = Diagnostics::new(&wf.path);
    let target = AwsTarget::resolve(wf, &mut diags);
    let fields = payload_fields(wf);
    let own_memo;
    let memo = match opts.memo {
        Some(m) => m,
        None => {
            own_memo = Memo::load(Path::new(""));
            &own_memo
        }
    };

    // Keys first: they need nothing from the target, so their errors are reported with its errors.
    let mut keys = Vec::new();
    for (i, def) in wf.steps.iter().enumerate() {
        let placeholders: BTreeMap<String, ArtifactDigest> = def
            .inputs
            .keys()
            .map(|slot| (slot.clone(), ArtifactDigest::from_bytes([0; 32])))
            .collect();
        match key_components(wf, i, &placeholders, memo) {
            Ok(kc) => {
                let t = KeyTemplate::new(&kc);
                if t.formatted_len() >= MAX_HASH_INPUT {
                    diags.error_with_help(
                        def.params.span,
                        format!(
                            "step `{}`: its cache key string is {} characters; Step Functions hashes at most {} (States.Hash)",
                            def.id,
                            t.formatted_len(),
                            MAX_HASH_INPUT - 1
                        ),
                        "shorten its params (e.g. move a long list into a declared file)",
                    );
                }
                keys.push(Some((kc, t)));
            }
            Err(e) => {
                diags.error(
                    def.span,
                    format!("step `{}`: cannot compute its key: {}", def.id, e.message),
                );
                keys.push(None);
            }
        }
        if matches!(def.step.remote(&def.params), RemoteTask::FsxImport) && def.inputs.len() != 1 {
            diags.error(
                def.span,
                format!(
                    "step `{}` ({}) passes one input through in the cloud, but it has {}",
                    def.id,
                    def.kind(),
                    def.inputs.len()
                ),
            );
        }
        for n in state_names(def) {
            if n.chars().count() > MAX_STATE_NAME {
                diags.error(
                    def.span,
                    format!(
                        "step id `{}` is too long for Step Functions: state `{n}` exceeds {MAX_STATE_NAME} characters",
                        def.id
                    ),
                );
                break;
            }
        }
    }
    check_payload(wf, &fields, &mut diags);
    let Some(target) = target.filter(|_| diags.is_empty()) else {
        return Err(DiagnosticList(diags.into_sorted()));
    };

    let mut c = Compiler {
        wf,
        target: &target,
        fields: &fields,
        opts,
        states: Map::new(),
        uploads: Vec::new(),
        steps: Vec::new(),
    };
    c.states.insert(
        "Init".into(),
        json!({
            "Type": "Pass",
            "Comment": "Characters the intrinsic expressions take as arguments instead of escapes (docs/cloud.md §3); the execution input is kept under $.input.",
            "Parameters": init_parameters(),
            "Next": format!("{}.Key", wf.steps[0].id),
        }),
    );
    for (i, def) in wf.steps.iter().enumerate() {
        let (kc, template) = keys[i].take().expect("keys computed above");
        let next = wf.steps.get(i + 1).map(|d| format!("{}.Key", d.id));
        c.step(i, def, &kc, &template, next);
    }
    let definition = sort_keys(json!({
        "Comment": format!("wf workflow `{}` (compiled by wf {}; conventions in docs/cloud.md)", wf.name, env!("CARGO_PKG_VERSION")),
        "StartAt": "Init",
        "TimeoutSeconds": total_timeout(wf, &target),
        "States": Json::Object(std::mem::take(&mut c.states)),
    }));
    let size = serde_json::to_string(&definition)
        .expect("JSON serializes")
        .len();
    if size > MAX_DEFINITION {
        diags.error(
            Span::new(1, 1),
            format!(
                "the compiled state machine is {size} bytes; Step Functions accepts at most {MAX_DEFINITION}"
            ),
        );
        return Err(DiagnosticList(diags.into_sorted()));
    }
    let (uploads, steps) = (c.uploads, c.steps);
    Ok(Compiled {
        definition,
        target,
        uploads,
        steps,
    })
}

/// `Init`'s output: the execution input, the characters literals may not hold, and `steps`.
fn init_parameters() -> Json {
    let mut p = intrinsic::constants_json();
    p.insert("input.$".into(), json!("$"));
    p.insert("steps".into(), json!({}));
    Json::Object(p)
}

/// Member names of `$.steps`: the step id with `-` → `_` (JSONPath-safe), made unique.
fn payload_fields(wf: &Workflow) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for def in &wf.steps {
        let base = def.id.replace('-', "_");
        let mut name = base.clone();
        let mut n = 2;
        while out.contains(&name) || wf.steps.iter().any(|d| d.id != def.id && d.id == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        out.push(name);
    }
    out
}

/// The longest state names a step can get (for the 80-character limit).
fn state_names(def: &StepDef) -> Vec<String> {
    [".Key", ".Fsx.DeleteAfterError"]
        .iter()
        .map(|s| format!("{}{s}", def.id))
        .collect()
}

/// Refuses a workflow whose payload could outgrow 256 KiB (docs/cloud.md §4).
fn check_payload(wf: &Workflow, fields: &[String], diags: &mut Diagnostics) {
    let mut total = PAYLOAD_FIXED;
    for (def, field) in wf.steps.iter().zip(fields) {
        // "<field>":{"key":"<64>","artifact":"<64>"}, plus transient members while it runs.
        total += field.len() + 2 * 64 + 64;
        if total > MAX_PAYLOAD {
            diags.error_with_help(
                def.span,
                format!(
                    "the Step Functions payload could reach {total} bytes at step `{}`, over the {MAX_PAYLOAD}-byte limit ({} steps)",
                    def.id,
                    wf.steps.len()
                ),
                "split the workflow into smaller ones",
            );
            return;
        }
    }
}

/// An upper bound for the whole execution (Step Functions' own limit is one year).
fn total_timeout(wf: &Workflow, target: &AwsTarget) -> u64 {
    let mut total: u64 = 3600;
    for def in &wf.steps {
        let r = target.resources(&def.id);
        total += match def.step.remote(&def.params) {
            RemoteTask::Processing { sharded_input, .. } => {
                let own =
                    r.max_runtime_seconds.unwrap_or(PROCESSING_MAX_RUNTIME) + JOB_TIMEOUT_SLACK;
                let commit = if sharded_input {
                    COMMIT_MAX_RUNTIME + JOB_TIMEOUT_SLACK
                } else {
                    0
                };
                u64::from(own + commit)
            }
            RemoteTask::Training { .. } => u64::from(
                r.max_runtime_seconds.unwrap_or(TRAINING_MAX_RUNTIME)
                    + JOB_TIMEOUT_SLACK
                    + FSX_MAX_POLLS * FSX_POLL_SECONDS,
            ),
            RemoteTask::FsxImport => 0,
        };
    }
    total.min(31_536_000)
}

/// `<id>` made a SageMaker job-name prefix (docs/cloud.md §5).
pub fn job_prefix(id: &str) -> String {
    let s = id.replace('_', "-");
    if s.len() <= MAX_JOB_PREFIX {
        return s;
    }
    use sha2::Digest as _;
    let h = hex::encode(sha2::Sha256::digest(id.as_bytes()));
    format!("{}-{}", &s[..MAX_JOB_PREFIX - 5], &h[..4])
}

/// Recursively rebuilds objects with sorted keys, whatever serde_json's map type is.
fn sort_keys(v: Json) -> Json {
    match v {
        Json::Object(m) => {
            let mut entries: Vec<(String, Json)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Json::Array(a) => Json::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

fn retry_s3() -> Json {
    json!({
        "ErrorEquals": ["S3.SlowDownException", "S3.InternalErrorException", "S3.SdkClientException"],
        "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 5
    })
}

fn retry_fsx() -> Json {
    json!({
        "ErrorEquals": ["FSx.ThrottlingException", "FSx.InternalServerErrorException"],
        "IntervalSeconds": 5, "BackoffRate": 2.0, "MaxAttempts": 6
    })
}

fn retry_sagemaker() -> Json {
    json!({
        "ErrorEquals": ["SageMaker.ThrottlingException", "SageMaker.InternalServerException"],
        "IntervalSeconds": 10, "BackoffRate": 2.0, "MaxAttempts": 6
    })
}

struct Compiler<'a> {
    wf: &'a Workflow,
    target: &'a AwsTarget,
    fields: &'a [String],
    opts: &'a CompileOptions<'a>,
    states: Map<String, Json>,
    uploads: Vec<Upload>,
    steps: Vec<CompiledStep>,
}

/// How a job reads one input.
struct InputRef {
    slot: String,
    /// Payload path of the producer's artifact digest.
    artifact: String,
    /// The producer, when it is an fsx-import step (Training reads such an input from FSx).
    via_fsx: bool,
    /// The input's type is a Dataset (sharded jobs shard its images).
    dataset: bool,
}

impl<'a> Compiler<'a> {
    fn path(&self, i: usize, member: &str) -> String {
        format!("$.steps.{}.{member}", self.fields[i])
    }

    fn add(&mut self, name: String, state: Json) {
        debug_assert!(!self.states.contains_key(&name), "duplicate state {name}");
        self.states.insert(name, state);
    }

    fn step(
        &mut self,
        i: usize,
        def: &'a StepDef,
        kc: &crate::key::KeyComponents,
        template: &KeyTemplate,
        next: Option<String>,
    ) {
        let id = def.id.as_str();
        let inputs: Vec<InputRef> = def
            .inputs
            .iter()
            .map(|(slot, &p)| InputRef {
                slot: slot.clone(),
                artifact: self.path(p, "artifact"),
                via_fsx: matches!(
                    self.wf.steps[p].step.remote(&self.wf.steps[p].params),
                    RemoteTask::FsxImport
                ),
                dataset: self.wf.steps[p].output == crate::ArtifactType::Dataset,
            })
            .collect();
        let key_expr = template.hash_expr(|slot| {
            inputs
                .iter()
                .find(|r| r.slot == slot)
                .map(|r| r.artifact.clone())
                .expect("every key input is an input of the step")
        });
        let done = format!("{id}.Done");
        let failed = format!("{id}.Failed");
        let remote = def.step.remote(&def.params);

        self.add(
            format!("{id}.Key"),
            json!({
                "Type": "Pass",
                "Comment": format!("The cache key of step `{id}` ({}), as a local run computes it", def.kind()),
                "Parameters": { "key.$": key_expr },
                "ResultPath": format!("$.steps.{}", self.fields[i]),
                "Next": if matches!(remote, RemoteTask::FsxImport) { done.clone() } else { format!("{id}.Lookup") },
            }),
        );

        if let RemoteTask::FsxImport = remote {
            // Pass-through: the output is the input; the file system is made on consumers' miss paths.
            let src = inputs
                .first()
                .map(|r| r.artifact.clone())
                .expect("fsx-import steps have one input (checked before compiling)");
            self.add(
                done,
                end_or_next(
                    json!({
                        "Type": "Pass",
                        "Comment": "fsx-import passes its input through; training steps that miss the cache create the file system",
                        "Parameters": { "key.$": self.path(i, "key"), "artifact.$": src },
                        "ResultPath": format!("$.steps.{}", self.fields[i]),
                    }),
                    next,
                ),
            );
            self.finish_step(i, def, template);
            return;
        }

        // Cache lookup: the entry JSON (written last by whoever computed the step) holds the artifact.
        let fsx_input = inputs
            .iter()
            .find(|r| r.via_fsx)
            .map(|r| r.artifact.clone());
        let training = matches!(remote, RemoteTask::Training { .. });
        let miss_next = match (&fsx_input, training) {
            (Some(_), true) if self.target.fsx.file_system_id.is_some() => {
                format!("{id}.Fsx.Describe")
            }
            (Some(_), true) => format!("{id}.Fsx.Create"),
            _ => format!("{id}.Run"),
        };
        self.add(
            format!("{id}.Lookup"),
            self.get_entry(
                i,
                json!([{
                    "ErrorEquals": ["States.ALL"],
                    "ResultPath": self.path(i, "miss"),
                    "Next": miss_next,
                }]),
                done.clone(),
            ),
        );

        let (params_arg, params_upload) = self.params_arg(def);
        if let Some(u) = params_upload {
            self.push_upload(u);
        }
        let files_digest = kc.files_digest();
        if let Some(fd) = &files_digest {
            let mut text = String::new();
            for (path, digest) in &kc.files {
                text.push_str(&format!("{path}\t{digest}\n"));
                self.push_upload(Upload {
                    key: self.target.cache.key(&format!("objects/{digest}")),
                    source: UploadSource::File(self.wf.dir.join(path)),
                });
            }
            self.push_upload(Upload {
                key: self.target.cache.key(&format!("files/{fd}.txt")),
                source: UploadSource::Bytes(text.into_bytes()),
            });
        }
        let res = self.target.resources(id);
        let worker = WorkerArgs {
            id,
            key_path: self.path(i, "key"),
            cache: self.target.cache.uri(),
            params: params_arg,
            seed: self.wf.seed,
            inputs: &inputs,
            files: files_digest,
        };
        let published = format!("{id}.Published");
        let fsx_created =
            fsx_input.is_some() && training && self.target.fsx.file_system_id.is_none();
        let (after_run, run_failed) = if fsx_created {
            (
                format!("{id}.Fsx.Delete"),
                format!("{id}.Fsx.DeleteAfterError"),
            )
        } else {
            (published.clone(), failed.clone())
        };

        match remote {
            RemoteTask::Processing {
                instances,
                sharded_input,
            } => {
                let count = res.instance_count.unwrap_or(instances).max(1);
                let sharded = sharded_input && count > 1;
                let commit = format!("{id}.Commit");
                let job = self.processing_job(
                    &job_name(id, ""),
                    def.kind(),
                    &worker,
                    ProcessingShape {
                        instance_type: res.instance_type.as_deref().unwrap_or(PROCESSING_INSTANCE),
                        count,
                        volume: res.volume_size_gb.unwrap_or(VOLUME_GB),
                        max_runtime: res.max_runtime_seconds.unwrap_or(PROCESSING_MAX_RUNTIME),
                        shard: sharded.then_some(count),
                        commit: false,
                    },
                    if sharded { &commit } else { &after_run },
                    &run_failed,
                    i,
                );
                self.add(format!("{id}.Run"), job);
                if sharded {
                    let job = self.processing_job(
                        &job_name(id, "c"),
                        def.kind(),
                        &worker,
                        ProcessingShape {
                            instance_type: COMMIT_INSTANCE,
                            count: 1,
                            volume: 30,
                            max_runtime: COMMIT_MAX_RUNTIME,
                            shard: Some(count),
                            commit: true,
                        },
                        &after_run,
                        &run_failed,
                        i,
                    );
                    self.add(commit, job);
                }
            }
            RemoteTask::Training { instances } => {
                if fsx_input.is_some() {
                    self.fsx_states(i, id, fsx_input.as_deref().unwrap_or_default(), &failed);
                }
                let job =
                    self.training_job(i, def, &worker, &res, instances, &after_run, &run_failed);
                self.add(format!("{id}.Run"), job);
            }
            RemoteTask::FsxImport => unreachable!("handled above"),
        }

        self.add(
            published.clone(),
            self.get_entry(
                i,
                json!([{
                    "ErrorEquals": ["States.ALL"],
                    "ResultPath": self.path(i, "error"),
                    "Next": failed.clone(),
                }]),
                done.clone(),
            ),
        );
        self.add(
            done,
            end_or_next(
                json!({
                    "Type": "Pass",
                    "Parameters": {
                        "key.$": self.path(i, "key"),
                        "artifact.$": self.path(i, "found.entry.artifact"),
                    },
                    "ResultPath": format!("$.steps.{}", self.fields[i]),
                }),
                next,
            ),
        );
        self.add(
            failed,
            json!({
                "Type": "Fail",
                "Error": "wf.StepFailed",
                "Cause": format!("step `{id}` ({}) failed; its error is in $.steps.{}.error of the execution history, its job's log in CloudWatch", def.kind(), self.fields[i]),
            }),
        );
        self.finish_step(i, def, template);
    }

    fn finish_step(&mut self, i: usize, def: &StepDef, template: &KeyTemplate) {
        let prefix = format!("{}.", def.id);
        let mut states: Vec<String> = self
            .states
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        states.sort_by_key(|s| !s.ends_with(".Key"));
        self.steps.push(CompiledStep {
            id: def.id.clone(),
            kind: def.kind().to_string(),
            field: self.fields[i].clone(),
            key_template: template.text(),
            slots: template.slots().into_iter().map(str::to_string).collect(),
            states,
        });
    }

    fn push_upload(&mut self, u: Upload) {
        if !self.uploads.iter().any(|x| x.key == u.key) {
            self.uploads.push(u);
        }
    }

    /// `s3:getObject` of the step's entry into `$.steps.<f>.found.entry`.
    fn get_entry(&self, i: usize, catch: Json, next: String) -> Json {
        json!({
            "Type": "Task",
            "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
            "Parameters": {
                "Bucket": self.target.cache.bucket,
                "Key.$": format1(&format!("{}/entries/", self.target.cache.prefix), &self.path(i, "key"), ".json"),
            },
            "ResultSelector": { "entry.$": "States.StringToJson($.Body)" },
            "ResultPath": self.path(i, "found"),
            "TimeoutSeconds": 60,
            "Retry": [retry_s3()],
            "Catch": catch,
            "Next": next,
        })
    }

    /// `--params`: inline canonical JSON when it fits a container argument, else an uploaded object.
    fn params_arg(&self, def: &StepDef) -> (String, Option<Upload>) {
        let json = def.params.canonical_json();
        if json.len() <= MAX_ARG {
            return (json, None);
        }
        use sha2::Digest as _;
        let h = hex::encode(sha2::Sha256::digest(json.as_bytes()));
        let rel = format!("params/{h}.json");
        (
            self.target.cache.url(&rel),
            Some(Upload {
                key: self.target.cache.key(&rel),
                source: UploadSource::Bytes(json.into_bytes()),
            }),
        )
    }

    fn retries(&self) -> Vec<Json> {
        let mut r = vec![retry_sagemaker()];
        if self.opts.failed_job_retries > 0 {
            r.push(json!({
                "ErrorEquals": ["States.TaskFailed"],
                "IntervalSeconds": self.opts.failed_job_retry_seconds.max(1),
                "BackoffRate": 2.0,
                "MaxAttempts": self.opts.failed_job_retries,
            }));
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn processing_job(
        &self,
        name_expr: &str,
        kind: &str,
        w: &WorkerArgs<'_>,
        shape: ProcessingShape<'_>,
        next: &str,
        failed: &str,
        i: usize,
    ) -> Json {
        let trees = |artifact: &str, sub: &str| {
            format_n(&[
                Piece::Lit(&format!("{}/trees/", self.target.cache.uri())),
                Piece::Arg(artifact),
                Piece::Lit(&format!("/{sub}")),
            ])
        };
        let input = |name: String, uri: String, local: String, sharded: bool| {
            json!({
                "InputName": name,
                "S3Input": {
                    "S3Uri.$": uri,
                    "LocalPath": local,
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": if sharded { "ShardedByS3Key" } else { "FullyReplicated" },
                },
            })
        };
        let mut inputs = Vec::new();
        if !shape.commit {
            for r in w.inputs {
                let base = format!("/opt/ml/processing/input/{}", r.slot);
                if shape.shard.is_some() && r.dataset {
                    inputs.push(input(
                        format!("{}-images", r.slot),
                        trees(&r.artifact, "imagesTr/"),
                        format!("{base}/imagesTr"),
                        true,
                    ));
                    inputs.push(input(
                        format!("{}-labels", r.slot),
                        trees(&r.artifact, "labelsTr/"),
                        format!("{base}/labelsTr"),
                        false,
                    ));
                    inputs.push(input(
                        format!("{}-meta", r.slot),
                        trees(&r.artifact, "dataset.json"),
                        format!("{base}-meta"),
                        false,
                    ));
                } else {
                    inputs.push(input(r.slot.clone(), trees(&r.artifact, ""), base, false));
                }
            }
        }
        let (entry, args) = if shape.commit {
            let mut a = vec![Arg::lit("--kind"), Arg::lit(kind)];
            a.extend(w.args(shape.shard));
            (["wf", "worker", "commit"], a)
        } else {
            (["wf", "worker", kind], w.args(shape.shard))
        };
        let mut params = json!({
            "ProcessingJobName.$": name_expr,
            "RoleArn": self.target.role_arn,
            "AppSpecification": {
                "ImageUri": self.target.image_uri,
                "ContainerEntrypoint": entry,
                "ContainerArguments.$": array_expr(&args),
            },
            "ProcessingResources": { "ClusterConfig": {
                "InstanceCount": shape.count,
                "InstanceType": shape.instance_type,
                "VolumeSizeInGB": shape.volume,
            }},
            "StoppingCondition": { "MaxRuntimeInSeconds": shape.max_runtime },
            "Environment": { "WF_STEP": w.id },
            "Tags": [{ "Key": "wf:step", "Value": w.id }],
        });
        if !inputs.is_empty() {
            params["ProcessingInputs"] = Json::Array(inputs);
        }
        json!({
            "Type": "Task",
            "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync",
            "Parameters": params,
            "ResultPath": null,
            "TimeoutSeconds": shape.max_runtime + JOB_TIMEOUT_SLACK,
            "Retry": self.retries(),
            "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": self.path(i, "error"), "Next": failed }],
            "Next": next,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn training_job(
        &self,
        i: usize,
        def: &StepDef,
        w: &WorkerArgs<'_>,
        res: &StepResources,
        instances: u32,
        next: &str,
        failed: &str,
    ) -> Json {
        let channels: Vec<Json> = w
            .inputs
            .iter()
            .map(|r| {
                let source = if r.via_fsx {
                    let dir = if self.target.fsx.file_system_id.is_some() {
                        format_n(&[Piece::Lit("/"), Piece::Arg(&self.path(i, "fsx.mount")), Piece::Lit("/"), Piece::Arg(&r.artifact)])
                    } else {
                        format1("/", &self.path(i, "fsx.mount"), "")
                    };
                    json!({ "FileSystemDataSource": {
                        "FileSystemId.$": self.path(i, "fsx.id"),
                        "FileSystemType": "FSxLustre",
                        "FileSystemAccessMode": "ro",
                        "DirectoryPath.$": dir,
                    }})
                } else {
                    json!({ "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri.$": format1(&format!("{}/trees/", self.target.cache.uri()), &r.artifact, "/"),
                        "S3DataDistributionType": "FullyReplicated",
                    }})
                };
                json!({ "ChannelName": r.slot, "DataSource": source, "InputMode": "File" })
            })
            .collect();
        let hyper: Map<String, Json> = def
            .params
            .values()
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Json::String(s) => s.clone(),
                    other => crate::key::canonical_json(other),
                };
                (k.clone(), Json::String(s))
            })
            .collect();
        let max_runtime = res.max_runtime_seconds.unwrap_or(TRAINING_MAX_RUNTIME);
        let mut params = json!({
            "TrainingJobName.$": job_name(w.id, ""),
            "RoleArn": self.target.role_arn,
            "AlgorithmSpecification": {
                "TrainingImage": self.target.image_uri,
                "TrainingInputMode": "File",
                "ContainerEntrypoint": ["wf", "worker", def.kind()],
                "ContainerArguments.$": array_expr(&w.args(None)),
            },
            "HyperParameters": hyper,
            "InputDataConfig": channels,
            "OutputDataConfig": { "S3OutputPath": self.target.cache.url("jobs/") },
            "ResourceConfig": {
                "InstanceType": res.instance_type.as_deref().unwrap_or(TRAINING_INSTANCE),
                "InstanceCount": res.instance_count.unwrap_or(instances).max(1),
                "VolumeSizeInGB": res.volume_size_gb.unwrap_or(VOLUME_GB),
            },
            "StoppingCondition": { "MaxRuntimeInSeconds": max_runtime },
            "CheckpointConfig": {
                "S3Uri.$": format1(&format!("{}/checkpoints/", self.target.cache.uri()), &self.path(i, "key"), "/"),
                "LocalPath": "/opt/ml/checkpoints",
            },
            "Environment": { "WF_STEP": w.id },
            "Tags": [{ "Key": "wf:step", "Value": w.id }],
        });
        if !self.target.subnets.is_empty() {
            params["VpcConfig"] = json!({
                "Subnets": self.target.subnets,
                "SecurityGroupIds": self.target.security_groups,
            });
        }
        json!({
            "Type": "Task",
            "Resource": "arn:aws:states:::sagemaker:createTrainingJob.sync",
            "Parameters": params,
            "ResultPath": null,
            "TimeoutSeconds": max_runtime + JOB_TIMEOUT_SLACK,
            "Retry": self.retries(),
            "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": self.path(i, "error"), "Next": failed }],
            "Next": next,
        })
    }

    /// The FSx states on the miss path of training step `i` (docs/cloud.md §7).
    fn fsx_states(&mut self, i: usize, id: &str, samples: &str, failed: &str) {
        let fsx = self.target.fsx.clone();
        let catch = |next: &str, member: &str| json!([{ "ErrorEquals": ["States.ALL"], "ResultPath": self.path(i, member), "Next": next }]);
        let after_error = format!("{id}.Fsx.DeleteAfterError");
        let describe_ids = match &fsx.file_system_id {
            Some(fs) => json!({ "FileSystemIds": [fs] }),
            None => {
                json!({ "FileSystemIds.$": format!("States.Array({})", self.path(i, "fsx.id")) })
            }
        };
        let describe_next = if fsx.file_system_id.is_some() {
            format!("{id}.Fsx.HasMount")
        } else {
            format!("{id}.Fsx.Ready")
        };
        let describe_fail = if fsx.file_system_id.is_some() {
            failed
        } else {
            after_error.as_str()
        };
        let mut states: Vec<(String, Json)> = vec![(
            format!("{id}.Fsx.Describe"),
            json!({
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:fsx:describeFileSystems",
                "Parameters": describe_ids,
                "Comment": "select FileSystems[0] here and read its fields in the next state (emulator quirk)",
                "ResultSelector": { "fs.$": "$.FileSystems[0]" },
                "ResultPath": self.path(i, "fsx_desc"),
                "TimeoutSeconds": 300,
                "Retry": [retry_fsx()],
                "Catch": catch(describe_fail, "error"),
                "Next": describe_next,
            }),
        )];
        let mount = format!(
            "{}.fs.LustreConfiguration.MountName",
            self.path(i, "fsx_desc")
        );
        states.push((
            format!("{id}.Fsx.HasMount"),
            json!({
                "Type": "Choice",
                "Choices": [{ "Variable": mount, "IsPresent": true, "Next": format!("{id}.Fsx.Mount") }],
                "Default": format!("{id}.Fsx.DefaultMount"),
            }),
        ));
        let fs_id = format!("{}.fs.FileSystemId", self.path(i, "fsx_desc"));
        states.push((
            format!("{id}.Fsx.Mount"),
            json!({
                "Type": "Pass",
                "Parameters": { "id.$": fs_id, "mount.$": mount },
                "ResultPath": self.path(i, "fsx"),
                "Next": format!("{id}.Run"),
            }),
        ));
        states.push((
            format!("{id}.Fsx.DefaultMount"),
            json!({
                "Type": "Pass",
                "Comment": "file systems that report no MountName mount as /fsx",
                "Parameters": { "id.$": fs_id, "mount": "fsx" },
                "ResultPath": self.path(i, "fsx"),
                "Next": format!("{id}.Run"),
            }),
        ));
        if fsx.file_system_id.is_none() {
            let mut lustre = json!({
                "DeploymentType": fsx.deployment_type,
                "ImportPath.$": format1(&format!("{}/trees/", self.target.cache.uri()), samples, "/"),
            });
            if let Some(t) = fsx.per_unit_storage_throughput {
                lustre["PerUnitStorageThroughput"] = json!(t);
            }
            let subnet: Vec<&String> = self.target.subnets.iter().take(1).collect();
            states.push((
                format!("{id}.Fsx.Create"),
                json!({
                    "Type": "Task",
                    "Resource": "arn:aws:states:::aws-sdk:fsx:createFileSystem",
                    "Parameters": {
                        "ClientRequestToken.$": format1(&format!("{}-", job_prefix(id)), "$$.Execution.Name", ""),
                        "FileSystemType": "LUSTRE",
                        "StorageCapacity": fsx.storage_capacity_gb,
                        "SubnetIds": subnet,
                        "SecurityGroupIds": self.target.security_groups,
                        "LustreConfiguration": lustre,
                        "Tags": [{ "Key": "wf:step", "Value": id }],
                    },
                    "ResultSelector": { "id.$": "$.FileSystem.FileSystemId", "polls": 0 },
                    "ResultPath": self.path(i, "fsx"),
                    "TimeoutSeconds": 300,
                    "Retry": [retry_fsx()],
                    "Catch": catch(failed, "error"),
                    "Next": format!("{id}.Fsx.Wait"),
                }),
            ));
            states.push((
                format!("{id}.Fsx.Wait"),
                json!({ "Type": "Wait", "Seconds": FSX_POLL_SECONDS, "Next": format!("{id}.Fsx.Describe") }),
            ));
            states.push((
                format!("{id}.Fsx.Ready"),
                json!({
                    "Type": "Choice",
                    "Choices": [
                        { "Variable": format!("{}.fs.Lifecycle", self.path(i, "fsx_desc")), "StringEquals": "AVAILABLE", "Next": format!("{id}.Fsx.HasMount") },
                        { "Variable": format!("{}.fs.Lifecycle", self.path(i, "fsx_desc")), "StringEquals": "FAILED", "Next": after_error },
                        { "Variable": self.path(i, "fsx.polls"), "NumericGreaterThanEquals": FSX_MAX_POLLS, "Next": after_error },
                    ],
                    "Default": format!("{id}.Fsx.Poll"),
                }),
            ));
            states.push((
                format!("{id}.Fsx.Poll"),
                json!({
                    "Type": "Pass",
                    "Parameters": {
                        "id.$": self.path(i, "fsx.id"),
                        "polls.$": format!("States.MathAdd({}, 1)", self.path(i, "fsx.polls")),
                    },
                    "ResultPath": self.path(i, "fsx"),
                    "Next": format!("{id}.Fsx.Wait"),
                }),
            ));
            let delete = |next: &str| {
                json!({
                    "Type": "Task",
                    "Resource": "arn:aws:states:::aws-sdk:fsx:deleteFileSystem",
                    "Parameters": { "FileSystemId.$": self.path(i, "fsx.id") },
                    "ResultPath": null,
                    "TimeoutSeconds": 300,
                    "Retry": [retry_fsx()],
                    "Catch": catch(next, "fsx_delete_error"),
                    "Next": next,
                })
            };
            states.push((
                format!("{id}.Fsx.Delete"),
                delete(&format!("{id}.Published")),
            ));
            states.push((after_error.clone(), delete(failed)));
        }
        for (name, state) in states {
            self.add(name, state);
        }
    }
}

/// Sizes of one processing job.
struct ProcessingShape<'a> {
    instance_type: &'a str,
    count: u32,
    volume: u32,
    max_runtime: u32,
    /// `Some(n)`: a sharded step with n shards (`--shards n`).
    shard: Option<u32>,
    /// The commit job of a sharded step.
    commit: bool,
}

/// `<prefix>-<execution name>-<retry>` (docs/cloud.md §5); `tag` marks a second job of the step.
fn job_name(id: &str, tag: &str) -> String {
    format!(
        "States.Format('{}-{{}}-{tag}{{}}', $$.Execution.Name, $$.State.RetryCount)",
        job_prefix(id)
    )
}

fn end_or_next(mut state: Json, next: Option<String>) -> Json {
    match next {
        Some(n) => state["Next"] = json!(n),
        None => state["End"] = json!(true),
    }
    state
}

/// One container argument: static text or an intrinsic expression.
enum Arg {
    Lit(String),
    Expr(String),
}

impl Arg {
    fn lit(s: &str) -> Arg {
        Arg::Lit(s.to_string())
    }
}

fn array_expr(args: &[Arg]) -> String {
    let items: Vec<String> = args
        .iter()
        .map(|a| match a {
            Arg::Lit(s) => quote(s),
            Arg::Expr(e) => e.clone(),
        })
        .collect();
    format!("States.Array({})", items.join(", "))
}

/// The `wf worker` command line of one step (docs/cloud.md §5).
struct WorkerArgs<'a> {
    id: &'a str,
    key_path: String,
    cache: String,
    params: String,
    seed: u64,
    inputs: &'a [InputRef],
    files: Option<String>,
}

impl WorkerArgs<'_> {
    fn args(&self, shards: Option<u32>) -> Vec<Arg> {
        let mut a = vec![
            Arg::lit("--step"),
            Arg::lit(self.id),
            Arg::lit("--key"),
            Arg::Expr(self.key_path.clone()),
            Arg::lit("--cache"),
            Arg::Lit(self.cache.clone()),
            Arg::lit("--params"),
            Arg::Lit(self.params.clone()),
            Arg::lit("--seed"),
            Arg::Lit(self.seed.to_string()),
        ];
        for r in self.inputs {
            a.push(Arg::lit("--input"));
            a.push(Arg::Expr(format1(&format!("{}=", r.slot), &r.artifact, "")));
        }
        if let Some(f) = &self.files {
            a.push(Arg::lit("--files"));
            a.push(Arg::Lit(f.clone()));
        }
        if let Some(n) = shards {
            a.push(Arg::lit("--shards"));
            a.push(Arg::Lit(n.to_string()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::{ArtifactType, Slots};
    use crate::params::{ParamSpec, ParamType, Params};
    use crate::registry::Registry;
    use crate::step::{RunContext, Step, StepError};

    /// A stand-in step of each remote shape, so the compiler is tested without `wf-steps`.
    struct Fake(&'static str, Slots, ArtifactType, RemoteTask);
    const PARAMS: &[ParamSpec] = &[ParamSpec::optional("n", ParamType::int_min(0), "1", "n")];

    impl Step for Fake {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn version(&self) -> u32 {
            1
        }
        fn summary(&self) -> &'static str {
            "fake"
        }
        fn params(&self) -> &'static [ParamSpec] {
            PARAMS
        }
        fn inputs(&self) -> Slots {
            self.1
        }
        fn output(&self, _: &Params) -> ArtifactType {
            self.2
        }
        fn run(&self, _: &RunContext<'_>) -> Result<(), StepError> {
            Ok(())
        }
        fn remote(&self, _: &Params) -> RemoteTask {
            self.3.clone()
        }
    }

    fn registry() -> Registry {
        use ArtifactType::*;
        let mut r = Registry::new();
        r.register(Fake(
            "get",
            Slots::Fixed(&[]),
            Dataset,
            RemoteTask::Processing {
                instances: 1,
                sharded_input: false,
            },
        ));
        r.register(Fake(
            "prep",
            Slots::Fixed(&[("dataset", Dataset)]),
            Samples,
            RemoteTask::Processing {
                instances: 4,
                sharded_input: true,
            },
        ));
        r.register(Fake(
            "stage",
            Slots::Fixed(&[("samples", Samples)]),
            Samples,
            RemoteTask::FsxImport,
        ));
        r.register(Fake(
            "fit",
            Slots::Fixed(&[("samples", Samples)]),
            Model,
            RemoteTask::Training { instances: 1 },
        ));
        r
    }

    const WF: &str = "name: t\nsteps:\n  get-data: { uses: get }\n  prep: { uses: prep, inputs: { dataset: get-data } }\n  \
        stage: { uses: stage, inputs: { samples: prep } }\n  fit: { uses: fit, inputs: { samples: stage } }\n";
    const AWS: &str = "targets:\n  aws: { region: r, role_arn: arn, image_uri: img, bucket: s3://bkt/pre,\n    \
        subnets: [s-1, s-2], security_groups: [g-1] }\n";

    fn compile_text(text: &str) -> Result<Compiled, Vec<String>> {
        let wf = crate::workflow::load_str(text, Path::new("t.yaml"), Path::new("."), &registry())
            .map_err(|e| vec![e.to_string()])?;
        compile_stepfunctions(&wf, &CompileOptions::default())
            .map_err(|l| l.0.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn shape_of_a_pipeline() {
        let c = compile_text(&format!("{WF}{AWS}")).unwrap();
        let s = c.definition["States"].as_object().unwrap();
        assert_eq!(c.definition["StartAt"], "Init");
        assert_eq!(s["Init"]["Next"], "get-data.Key");
        assert_eq!(s["get-data.Done"]["Next"], "prep.Key");
        assert_eq!(s["fit.Done"]["End"], true);
        // Payload members are JSONPath-safe.
        assert_eq!(s["get-data.Key"]["ResultPath"], "$.steps.get_data");
        assert!(
            s["prep.Key"]["Parameters"]["key.$"]
                .as_str()
                .unwrap()
                .contains("$.steps.get_data.artifact")
        );
        // Sharded: 4 instances then a commit job with --shards 4.
        assert_eq!(s["prep.Run"]["Next"], "prep.Commit");
        let commit = &s["prep.Commit"]["Parameters"]["AppSpecification"];
        assert_eq!(
            commit["ContainerEntrypoint"],
            json!(["wf", "worker", "commit"])
        );
        let args = commit["ContainerArguments.$"].as_str().unwrap();
        assert!(args.starts_with("States.Array('--kind', 'prep', '--step', 'prep', '--key', $.steps.prep.key, '--cache', 's3://bkt/pre'"), "{args}");
        assert!(args.ends_with("'--shards', '4')"), "{args}");
        assert_eq!(s["prep.Commit"]["Next"], "prep.Published");
        // fsx-import: pass-through, no job.
        assert_eq!(s["stage.Key"]["Next"], "stage.Done");
        assert_eq!(
            s["stage.Done"]["Parameters"]["artifact.$"],
            "$.steps.prep.artifact"
        );
        // Training: FSx created on the miss path, deleted after the job either way.
        assert_eq!(s["fit.Lookup"]["Catch"][0]["Next"], "fit.Fsx.Create");
        assert_eq!(s["fit.Run"]["Next"], "fit.Fsx.Delete");
        assert_eq!(s["fit.Run"]["Catch"][0]["Next"], "fit.Fsx.DeleteAfterError");
        assert_eq!(s["fit.Fsx.DeleteAfterError"]["Next"], "fit.Failed");
        assert_eq!(
            s["fit.Fsx.Create"]["Parameters"]["SubnetIds"],
            json!(["s-1"])
        );
        // Every state is reachable and every Next names a state.
        let names: Vec<&String> = s.keys().collect();
        for (name, st) in s {
            for next in [&st["Next"], &st["Default"]] {
                if let Some(n) = next.as_str() {
                    assert!(names.iter().any(|x| *x == n), "{name} -> {n}");
                }
            }
        }
        assert_eq!(c.steps.len(), 4);
        assert_eq!(c.steps[1].states[0], "prep.Key");
        assert!(c.uploads.is_empty());
    }

    #[test]
    fn missing_settings_name_the_keys() {
        let errs = compile_text(&format!("{WF}targets:\n  aws: {{ region: r }}\n")).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "t.yaml:8:8: targets.aws is missing `bucket` (where the S3 cache lives)\n  help: `bucket: s3://my-bucket/wf-cache`, or `cache: s3://...` at the top of the workflow",
                "t.yaml:8:8: targets.aws is missing `image_uri` (the container image holding `wf`, run by every job)",
                "t.yaml:8:8: targets.aws is missing `role_arn` (the IAM role SageMaker jobs and the state machine run as)",
                "t.yaml:8:8: targets.aws is missing `security_groups` (FSx for Lustre and training jobs run in a VPC)",
                "t.yaml:8:8: targets.aws is missing `subnets` (FSx for Lustre and training jobs run in a VPC)",
            ]
        );
    }

    #[test]
    fn job_prefixes_fit_sagemaker_names() {
        assert_eq!(job_prefix("fail_train"), "fail-train");
        let long = job_prefix("a_very_long_step_identifier_beyond_limits");
        assert_eq!(long.len(), MAX_JOB_PREFIX);
        assert!(long.starts_with("a-very-long-step-ident-"), "{long}");
        // The longest job name: prefix, execution name, `-c9`.
        assert!(long.len() + 1 + MAX_EXECUTION_NAME + 3 <= 63);
    }
}
