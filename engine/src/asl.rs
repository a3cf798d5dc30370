//! The Step Functions compiler: a sealed `Workflow` becomes an Amazon States Language definition whose
//! tasks run `wf worker` in SageMaker jobs, sharing the S3 cache (and the keys) with local runs.
//!
//! What the jobs are (names, worker command line, inputs, S3 layout, FSx) comes from the cloud
//! contract (`crate::cloud`), which the SageMaker executor renders too; this file renders it as
//! states. Steps run one after another in the workflow's topological order; each one computes its
//! key (`States.Hash`), looks up its entry in S3 (hit: done), and otherwise runs its job and reads the
//! entry the job published. Only keys and digests travel in the payload (docs/cloud.md §4).

pub mod intrinsic;

use crate::cloud::job::{
    self, ChannelSource, FSX_MAX_POLLS, FSX_POLL_SECONDS, FsxCreate, JobForm, JobSpec, StepJobs,
    Upload,
};
use crate::cloud::states::{self, Fsx, State};
use crate::cloud::text::{Piece as TextPiece, Text, Var};
use crate::cloud::{AwsTarget, layout};
use crate::diag::{DiagnosticList, Diagnostics, Span};
use crate::digest::ArtifactDigest;
use crate::exec::key_components;
use crate::memo::Memo;
use crate::step::{CancelToken, RemoteTask};
use crate::workflow::{StepDef, Workflow};
use intrinsic::{KeyTemplate, Piece, format_n, quote};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;
use std::path::Path;

/// Retries of an S3 read that failed with anything but "not found" (1 + 2 + 4 s of backoff).
pub const S3_ATTEMPTS: u32 = 3;
/// The error of a step whose SageMaker job failed (its `FailureReason` is the cause).
pub const JOB_FAILED: &str = "wf.JobFailed";
/// The error of a step that failed otherwise.
pub const STEP_FAILED: &str = "wf.StepFailed";
/// `States.Hash` input limit, in characters.
pub const MAX_HASH_INPUT: usize = 10_000;
/// Step Functions' limit on the payload between states, in bytes.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Step Functions' limit on a definition, in bytes.
pub const MAX_DEFINITION: usize = 1024 * 1024;
/// Longest state name Step Functions accepts.
const MAX_STATE_NAME: usize = 80;
/// Payload budget (docs/cloud.md §4): execution input, one entry JSON, one error, one FSx description.
const PAYLOAD_FIXED: usize = 1024 + 32 * 1024 + 32 * 1024 + 16 * 1024;

/// Knobs of a compile that are not part of the workflow file.
#[derive(Default)]
pub struct CompileOptions<'a> {
    /// Memo for hashing declared local files (their digests are part of keys); `None`: hash afresh.
    pub memo: Option<&'a Memo>,
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
    /// Objects `wf deploy` puts into the bucket before executions start.
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
        if let Some(what) = def.step.external_source(&def.params) {
            diags.error_with_help(
                def.span,
                format!(
                    "step `{}`: its cache key holds the current state of {what}, read when a run starts; a state machine compiled beforehand cannot know it",
                    def.id
                ),
                "pin the source by its content (a checksum param such as `sha256`), so that its key is known when compiling",
            );
            keys.push(None);
        } else {
            match key_components(wf, i, &placeholders, memo, &CancelToken::default()) {
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
        }
        match def.step.remote(&def.params) {
            // A step kind that asks for a sharded input must be able to run as parts.
            RemoteTask::Processing {
                sharded_input: true,
                ..
            } if def.step.sharded().is_none() => diags.error(
                def.span,
                format!(
                    "step `{}` ({}) asks for a sharded input but its kind cannot run sharded",
                    def.id,
                    def.kind()
                ),
            ),
            // One FSx file system per training job: it imports one artifact.
            RemoteTask::Training { .. } => {
                let fsx_inputs = def
                    .inputs
                    .values()
                    .filter(|&&p| {
                        let p = &wf.steps[p];
                        matches!(p.step.remote(&p.params), RemoteTask::FsxImport)
                    })
                    .count();
                if fsx_inputs > 1 {
                    diags.error(
                        def.span,
                        format!(
                            "step `{}` ({}) reads {fsx_inputs} inputs from fsx-import steps; a training job reads at most one through FSx for Lustre",
                            def.id,
                            def.kind()
                        ),
                    );
                }
            }
            _ => {}
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
        let longest = State::longest(&def.id);
        if longest.chars().count() > MAX_STATE_NAME {
            diags.error(
                def.span,
                format!(
                    "step id `{}` is too long for Step Functions: state `{longest}` exceeds {MAX_STATE_NAME} characters",
                    def.id
                ),
            );
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
        states: Map::new(),
        uploads: Vec::new(),
        steps: Vec::new(),
        in_branch: false,
    };
    let levels = levels(wf);
    let entry = |k: usize| -> String {
        match levels[k].as_slice() {
            [i] => State::Key.of(&wf.steps[*i].id),
            _ => states::parallel(k + 1),
        }
    };
    c.states.insert(
        states::INIT.into(),
        json!({
            "Type": "Pass",
            "Comment": "Characters the intrinsic expressions take as arguments instead of escapes (docs/cloud.md §3); the execution input is kept under $.input.",
            "Parameters": init_parameters(),
            "Next": entry(0),
        }),
    );
    let mut timeout: u64 = 3600;
    let mut done: Vec<usize> = Vec::new();
    for (k, level) in levels.iter().enumerate() {
        let next = (k + 1 < levels.len()).then(|| entry(k + 1));
        let mut level_timeout = 0;
        let mut branches = Vec::new();
        for &i in level {
            let def = &wf.steps[i];
            let (kc, template) = keys[i].take().expect("keys computed above");
            let plan = job::plan_step(wf, i, &target, &kc);
            level_timeout = level_timeout.max(step_timeout(plan.as_ref()));
            if let [_] = level.as_slice() {
                c.step(i, def, plan, &template, next.clone());
            } else {
                // Each independent step is a branch of one Parallel state: its own states, its
                // Done ending the branch with the step's member as the branch's output.
                let outside = std::mem::take(&mut c.states);
                c.in_branch = true;
                c.step(i, def, plan, &template, None);
                c.in_branch = false;
                let inside = std::mem::replace(&mut c.states, outside);
                branches.push(json!({ "StartAt": State::Key.of(&def.id), "States": inside }));
            }
        }
        timeout += level_timeout;
        if !branches.is_empty() {
            c.parallel(k + 1, level, &done, branches, next);
        }
        done.extend(level);
    }
    // Reported in the workflow's order, whatever order the levels emitted them in.
    c.steps
        .sort_by_key(|s| wf.steps.iter().position(|d| d.id == s.id));
    let definition = sort_keys(json!({
        "Comment": format!("wf workflow `{}` (compiled by wf {}; conventions in docs/cloud.md)", wf.name, env!("CARGO_PKG_VERSION")),
        "StartAt": states::INIT,
        "TimeoutSeconds": timeout.min(31_536_000),
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

/// The steps grouped by depth (the longest chain of inputs before each), each group in the
/// workflow's order. The steps of one group never read each other, so they run at once (docs/cloud.md
/// §4): a diamond is three groups, a fan-out two.
fn levels(wf: &Workflow) -> Vec<Vec<usize>> {
    let mut depth = vec![0usize; wf.steps.len()];
    // `wf.steps` is in topological order: inputs come first.
    for (i, def) in wf.steps.iter().enumerate() {
        depth[i] = def
            .inputs
            .values()
            .map(|&p| depth[p] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); depth.iter().max().map_or(0, |d| d + 1)];
    for (i, d) in depth.into_iter().enumerate() {
        out[d].push(i);
    }
    out
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
                    "the Step Functions payload could reach {total} bytes at step `{}`, over the {MAX_PAYLOAD}-byte limit ({})",
                    def.id,
                    crate::plural(wf.steps.len(), "step")
                ),
                "split the workflow into smaller ones",
            );
            return;
        }
    }
}

/// The longest a step's states can take: its jobs (each with slack) and the FSx polls.
fn step_timeout(plan: Option<&StepJobs>) -> u64 {
    let Some(p) = plan else { return 0 };
    let jobs: u32 = std::iter::once(&p.run)
        .chain(&p.commit)
        .map(|j| j.timeout_seconds.saturating_mul(j.retries + 1))
        .sum();
    let fsx = match p.run.form {
        JobForm::Training { .. } => FSX_MAX_POLLS * FSX_POLL_SECONDS,
        JobForm::Processing { .. } => 0,
    };
    u64::from(jobs + fsx)
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

/// What `s3:getObject` raises for a missing entry: the only error that means a cache miss. Step
/// Functions names an SDK error `S3.<code>Exception`; `S3.NoSuchKey` is S3's own code.
const NOT_FOUND: [&str; 2] = ["S3.NoSuchKeyException", "S3.NoSuchKey"];

/// A missing entry is an answer, not a fault: not retried (the first matching retrier decides).
fn not_found_is_final() -> Json {
    json!({ "ErrorEquals": NOT_FOUND, "MaxAttempts": 0 })
}

/// Any other error of an entry read (access denied, throttling, a wrong bucket, a timeout) is
/// retried with backoff and then fails the execution: taking it for a miss would rerun the step.
fn retry_s3() -> Json {
    json!({
        "ErrorEquals": ["States.ALL"],
        "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": S3_ATTEMPTS
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

/// A step's last state inside a branch: the branch's output is the step's member.
fn branch_end(mut state: Json, field: &str) -> Json {
    state["End"] = json!(true);
    state["OutputPath"] = json!(format!("$.steps.{field}"));
    state
}

fn end_or_next(mut state: Json, next: Option<String>) -> Json {
    match next {
        Some(n) => state["Next"] = json!(n),
        None => state["End"] = json!(true),
    }
    state
}

/// `[{"Key": k, "Value": v}, ...]`.
fn tags(t: &[(String, String)]) -> Json {
    Json::Array(
        t.iter()
            .map(|(k, v)| json!({ "Key": k, "Value": v }))
            .collect(),
    )
}

/// `{k: v, ...}`.
fn object(pairs: &[(String, String)]) -> Json {
    Json::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

struct Compiler<'a> {
    wf: &'a Workflow,
    target: &'a AwsTarget,
    fields: &'a [String],
    states: Map<String, Json>,
    uploads: Vec<Upload>,
    steps: Vec<CompiledStep>,
    /// Emitting a branch of a Parallel state: a step's Done ends the branch.
    in_branch: bool,
}

impl<'a> Compiler<'a> {
    /// Parallel state `n` running `level`'s steps as branches, and the Pass after it that puts
    /// each branch's output (the step's `key` and `artifact`) under `$.steps`, beside the steps
    /// `done` before, and drops the branches' array (so the payload stays small).
    fn parallel(
        &mut self,
        n: usize,
        level: &[usize],
        done: &[usize],
        branches: Vec<Json>,
        next: Option<String>,
    ) {
        let merge = states::merge(n);
        self.add(
            states::parallel(n),
            json!({
                "Type": "Parallel",
                "Comment": format!(
                    "steps {} read nothing of each other: they run at once",
                    level.iter().map(|&i| format!("`{}`", self.wf.steps[i].id)).collect::<Vec<_>>().join(", ")
                ),
                "Branches": branches,
                "ResultPath": "$.parallel",
                "Next": merge,
            }),
        );
        let mut steps = Map::new();
        for &i in done {
            steps.insert(
                format!("{}.$", self.fields[i]),
                json!(format!("$.steps.{}", self.fields[i])),
            );
        }
        for (k, &i) in level.iter().enumerate() {
            steps.insert(
                format!("{}.$", self.fields[i]),
                json!(format!("$.parallel[{k}]")),
            );
        }
        let mut p = intrinsic::constants_json();
        p.insert("input.$".into(), json!("$.input"));
        p.insert("steps".into(), Json::Object(steps));
        self.add(
            merge,
            end_or_next(
                json!({ "Type": "Pass", "Parameters": Json::Object(p) }),
                next,
            ),
        );
    }

    fn path(&self, i: usize, member: &str) -> String {
        format!("$.steps.{}.{member}", self.fields[i])
    }

    /// A step's Done: on to `next`, the end of the machine, or the end of its branch.
    fn last(&self, i: usize, state: Json, next: Option<String>) -> Json {
        if self.in_branch {
            branch_end(state, &self.fields[i])
        } else {
            end_or_next(state, next)
        }
    }

    fn add(&mut self, name: String, state: Json) {
        debug_assert!(!self.states.contains_key(&name), "duplicate state {name}");
        self.states.insert(name, state);
    }

    /// The payload path (or context path) holding a hole's value while step `i` runs.
    fn var_path(&self, i: usize, v: &Var) -> String {
        match v {
            Var::Key => self.path(i, "key"),
            Var::Artifact(slot) => self.path(self.wf.steps[i].inputs[slot], "artifact"),
            Var::ExecutionName => "$$.Execution.Name".into(),
            Var::Attempt => "$$.State.RetryCount".into(),
            Var::FsxId => self.path(i, "fsx.id"),
            Var::FsxMount => self.path(i, "fsx.mount"),
        }
    }

    /// An intrinsic expression for `t`: a quoted literal, a bare path, or a `States.Format`.
    fn expr(&self, i: usize, t: &Text) -> String {
        if let Some(s) = t.as_lit() {
            return quote(&s);
        }
        let paths: Vec<String> = t
            .pieces()
            .iter()
            .filter_map(|p| match p {
                TextPiece::Var(v) => Some(self.var_path(i, v)),
                TextPiece::Lit(_) => None,
            })
            .collect();
        if let [TextPiece::Var(_)] = t.pieces() {
            return paths[0].clone();
        }
        let mut next = paths.iter();
        let pieces: Vec<Piece<'_>> = t
            .pieces()
            .iter()
            .map(|p| match p {
                TextPiece::Lit(s) => Piece::Lit(s),
                TextPiece::Var(_) => Piece::Arg(next.next().expect("one path per hole")),
            })
            .collect();
        format_n(&pieces)
    }

    /// Sets `obj[field]` to `t`: a plain string when it has no holes, else `field.$` with its
    /// expression.
    fn set(&self, i: usize, obj: &mut Json, field: &str, t: &Text) {
        match t.as_lit() {
            Some(s) => obj[field] = json!(s),
            None => obj[format!("{field}.$")] = json!(self.expr(i, t)),
        }
    }

    fn step(
        &mut self,
        i: usize,
        def: &'a StepDef,
        plan: Option<StepJobs>,
        template: &KeyTemplate,
        next: Option<String>,
    ) {
        let id = def.id.as_str();
        let key_expr = template.hash_expr(|slot| self.path(def.inputs[slot], "artifact"));
        let done = State::Done.of(id);
        // Every error route leads to the diagnosis, which names the job's FailureReason when
        // there is one.
        let failed = State::Diagnose.of(id);

        let Some(plan) = plan else {
            // fsx-import: pass-through; the file system is made on consumers' miss paths.
            self.add(
                State::Key.of(id),
                json!({
                    "Type": "Pass",
                    "Comment": format!("The cache key of step `{id}` ({}), as a local run computes it", def.kind()),
                    "Parameters": { "key.$": key_expr },
                    "ResultPath": format!("$.steps.{}", self.fields[i]),
                    "Next": done,
                }),
            );
            let src = def
                .inputs
                .values()
                .next()
                .map(|&p| self.path(p, "artifact"))
                .expect("fsx-import steps have one input (checked before compiling)");
            let state = json!({
                "Type": "Pass",
                "Comment": "fsx-import passes its input through; training steps that miss the cache create the file system",
                "Parameters": { "key.$": self.path(i, "key"), "artifact.$": src },
                "ResultPath": format!("$.steps.{}", self.fields[i]),
            });
            self.add(done, self.last(i, state, next));
            self.finish_step(i, def, template);
            return;
        };

        self.add(
            State::Key.of(id),
            json!({
                "Type": "Pass",
                "Comment": format!("The cache key of step `{id}` ({}), as a local run computes it", def.kind()),
                "Parameters": { "key.$": key_expr },
                "ResultPath": format!("$.steps.{}", self.fields[i]),
                "Next": State::Lookup.of(id),
            }),
        );

        // Cache lookup: the entry JSON (written last by whoever computed the step) holds the artifact.
        let run = State::Run.of(id);
        let miss_next = match &plan.fsx {
            Some(f) if f.create.is_none() => State::Fsx(Fsx::Describe).of(id),
            Some(_) => State::Fsx(Fsx::Create).of(id),
            None => run.clone(),
        };
        self.add(
            State::Lookup.of(id),
            self.get_entry(
                i,
                json!([{
                    "ErrorEquals": NOT_FOUND,
                    "ResultPath": self.path(i, "miss"),
                    "Next": miss_next,
                }]),
                done.clone(),
            ),
        );
        for u in &plan.uploads {
            self.push_upload(u.clone());
        }

        let published = State::Published.of(id);
        let fsx_created = plan.fsx.as_ref().and_then(|f| f.create.as_ref());
        let (after_run, run_failed) = if fsx_created.is_some() {
            (
                State::Fsx(Fsx::Delete).of(id),
                State::Fsx(Fsx::DeleteAfterError).of(id),
            )
        } else {
            (published.clone(), failed.clone())
        };
        if let Some(f) = &plan.fsx {
            self.fsx_states(i, id, f.create.as_ref(), &failed);
        }
        let commit = State::Commit.of(id);
        let run_next = if plan.commit.is_some() {
            &commit
        } else {
            &after_run
        };
        let task = self.job_task(i, &plan.run, run_next, &run_failed);
        self.add(run, task);
        if let Some(c) = &plan.commit {
            let task = self.job_task(i, c, &after_run, &run_failed);
            self.add(commit, task);
        }

        self.add(
            published.clone(),
            self.get_entry(
                i,
                json!([{
                    "ErrorEquals": NOT_FOUND,
                    "ResultPath": self.path(i, "error"),
                    "Next": State::NotPublished.of(id),
                }]),
                done.clone(),
            ),
        );
        let state = json!({
            "Type": "Pass",
            "Parameters": {
                "key.$": self.path(i, "key"),
                "artifact.$": self.path(i, "found.entry.artifact"),
            },
            "ResultPath": format!("$.steps.{}", self.fields[i]),
        });
        self.add(done, self.last(i, state, next));
        self.failure_states(i, def);
        self.finish_step(i, def, template);
    }

    /// How step `i` fails: a SageMaker job that failed (its `FailureReason` in the cause), the job
    /// publishing nothing, or any other error (its name and cause). `$.steps.<f>.error` holds the
    /// caught error.
    fn failure_states(&mut self, i: usize, def: &StepDef) {
        let id = def.id.as_str();
        let error = self.path(i, "error");
        let job = self.path(i, "failure.job");
        let what = format!("step `{id}` ({})", def.kind());
        self.add(
            State::Diagnose.of(id),
            json!({
                "Type": "Choice",
                "Comment": "a failed job's task error holds its description (JSON) as the cause",
                "Choices": [{
                    "And": [
                        { "Variable": format!("{error}.Error"), "StringEquals": "States.TaskFailed" },
                        { "Variable": format!("{error}.Cause"), "StringMatches": "{*" },
                    ],
                    "Next": State::Job.of(id),
                }],
                "Default": State::Failed.of(id),
            }),
        );
        self.add(
            State::Job.of(id),
            json!({
                "Type": "Pass",
                "Parameters": { "job.$": format!("States.StringToJson({error}.Cause)") },
                "ResultPath": self.path(i, "failure"),
                "Next": State::HasReason.of(id),
            }),
        );
        self.add(
            State::HasReason.of(id),
            json!({
                "Type": "Choice",
                "Choices": [{
                    "Variable": format!("{job}.FailureReason"),
                    "IsPresent": true,
                    "Next": State::JobFailed.of(id),
                }],
                "Default": State::Failed.of(id),
            }),
        );
        let reason = format!("{job}.FailureReason");
        self.add(
            State::JobFailed.of(id),
            json!({
                "Type": "Fail",
                "Error": JOB_FAILED,
                "CausePath": format_n(&[
                    Piece::Lit(&format!("{what}: its SageMaker job failed: ")),
                    Piece::Arg(&reason),
                ]),
            }),
        );
        let (name, cause) = (format!("{error}.Error"), format!("{error}.Cause"));
        self.add(
            State::Failed.of(id),
            json!({
                "Type": "Fail",
                "Error": STEP_FAILED,
                "CausePath": format_n(&[
                    Piece::Lit(&format!("{what} failed: ")),
                    Piece::Arg(&name),
                    Piece::Lit(": "),
                    Piece::Arg(&cause),
                ]),
            }),
        );
        if self.states.contains_key(&State::Published.of(id)) {
            let entry = layout::entry_key(&self.target.cache, Var::Key);
            self.add(
                State::NotPublished.of(id),
                json!({
                    "Type": "Fail",
                    "Error": STEP_FAILED,
                    "Cause": format!(
                        "{what}: its job completed but published no entry at s3://{}/{} (see its job's log)",
                        self.target.cache.bucket,
                        entry.resolve(&|_| "<key>".to_string())
                    ),
                }),
            );
        }
    }

    fn finish_step(&mut self, i: usize, def: &StepDef, template: &KeyTemplate) {
        let mut states: Vec<String> = self
            .states
            .keys()
            .filter(|k| State::parse(k).is_some_and(|(id, _)| id == def.id))
            .cloned()
            .collect();
        states.sort_by_key(|s| *s != State::Key.of(&def.id));
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
        let mut params = json!({ "Bucket": self.target.cache.bucket });
        self.set(
            i,
            &mut params,
            "Key",
            &layout::entry_key(&self.target.cache, Var::Key),
        );
        json!({
            "Type": "Task",
            "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
            "Parameters": params,
            "ResultSelector": { "entry.$": "States.StringToJson($.Body)" },
            "ResultPath": self.path(i, "found"),
            "TimeoutSeconds": 60,
            "Retry": [not_found_is_final(), retry_s3()],
            "Catch": catch,
            "Next": next,
        })
    }

    /// A job as a `.sync` task of the SageMaker integration.
    fn job_task(&self, i: usize, job: &JobSpec, next: &str, failed: &str) -> Json {
        let args = format!(
            "States.Array({})",
            job.args
                .iter()
                .map(|a| self.expr(i, a))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stopping = json!({ "MaxRuntimeInSeconds": job.max_runtime_seconds });
        let vpc = job
            .vpc
            .as_ref()
            .map(|v| json!({ "Subnets": v.subnets, "SecurityGroupIds": v.security_group_ids }));
        let (resource, mut params) = match &job.form {
            JobForm::Processing { inputs } => {
                let mut cluster = json!({
                    "InstanceCount": job.instance_count,
                    "InstanceType": job.instance_type,
                    "VolumeSizeInGB": job.volume_size_gb,
                });
                if let Some(k) = &job.volume_kms_key_id {
                    cluster["VolumeKmsKeyId"] = json!(k);
                }
                let mut params = json!({
                    "RoleArn": job.role_arn,
                    "AppSpecification": {
                        "ImageUri": job.image_uri,
                        "ContainerEntrypoint": job.entrypoint,
                        "ContainerArguments.$": args,
                    },
                    "ProcessingResources": { "ClusterConfig": cluster },
                    "StoppingCondition": stopping,
                });
                self.set(i, &mut params, "ProcessingJobName", &job.name);
                if let Some(v) = vpc {
                    params["NetworkConfig"] = json!({ "VpcConfig": v });
                }
                if !inputs.is_empty() {
                    let inputs: Vec<Json> = inputs
                        .iter()
                        .map(|input| {
                            let mut s3 = json!({
                                "LocalPath": input.local_path,
                                "S3DataType": "S3Prefix",
                                "S3InputMode": "File",
                                "S3DataDistributionType": if input.sharded { "ShardedByS3Key" } else { "FullyReplicated" },
                            });
                            self.set(i, &mut s3, "S3Uri", &input.s3_uri);
                            json!({ "InputName": input.name, "S3Input": s3 })
                        })
                        .collect();
                    params["ProcessingInputs"] = Json::Array(inputs);
                }
                ("createProcessingJob", params)
            }
            JobForm::Training {
                channels,
                hyperparameters,
                output_path,
                checkpoint_uri,
                metrics,
                spot,
            } => {
                let channels: Vec<Json> = channels
                    .iter()
                    .map(|ch| {
                        let source = match &ch.source {
                            ChannelSource::Fsx { directory } => {
                                let mut fs = json!({
                                    "FileSystemType": "FSxLustre",
                                    "FileSystemAccessMode": "ro",
                                });
                                self.set(i, &mut fs, "FileSystemId", &Text::var(Var::FsxId));
                                self.set(i, &mut fs, "DirectoryPath", directory);
                                json!({ "FileSystemDataSource": fs })
                            }
                            ChannelSource::S3(uri) => {
                                let mut s3 = json!({
                                    "S3DataType": "S3Prefix",
                                    "S3DataDistributionType": "FullyReplicated",
                                });
                                self.set(i, &mut s3, "S3Uri", uri);
                                json!({ "S3DataSource": s3 })
                            }
                        };
                        json!({ "ChannelName": ch.name, "DataSource": source, "InputMode": "File" })
                    })
                    .collect();
                let mut checkpoint = json!({ "LocalPath": job::CHECKPOINT_DIR });
                self.set(i, &mut checkpoint, "S3Uri", checkpoint_uri);
                let mut algorithm = json!({
                    "TrainingImage": job.image_uri,
                    "TrainingInputMode": "File",
                    "ContainerEntrypoint": job.entrypoint,
                    "ContainerArguments.$": args,
                });
                if !metrics.is_empty() {
                    algorithm["MetricDefinitions"] = Json::Array(
                        metrics
                            .iter()
                            .map(|m| json!({ "Name": m.name, "Regex": m.regex }))
                            .collect(),
                    );
                }
                let mut resources = json!({
                    "InstanceType": job.instance_type,
                    "InstanceCount": job.instance_count,
                    "VolumeSizeInGB": job.volume_size_gb,
                });
                if let Some(k) = &job.volume_kms_key_id {
                    resources["VolumeKmsKeyId"] = json!(k);
                }
                let mut output = json!({ "S3OutputPath": output_path });
                if let Some(k) = &job.output_kms_key_id {
                    output["KmsKeyId"] = json!(k);
                }
                if let Some(s) = spot {
                    stopping["MaxWaitTimeInSeconds"] = json!(s.max_wait_seconds);
                }
                let mut params = json!({
                    "RoleArn": job.role_arn,
                    "AlgorithmSpecification": algorithm,
                    "HyperParameters": object(hyperparameters),
                    "InputDataConfig": channels,
                    "OutputDataConfig": output,
                    "ResourceConfig": resources,
                    "StoppingCondition": stopping,
                    "CheckpointConfig": checkpoint,
                });
                if spot.is_some() {
                    params["EnableManagedSpotTraining"] = json!(true);
                }
                self.set(i, &mut params, "TrainingJobName", &job.name);
                if let Some(v) = vpc {
                    params["VpcConfig"] = v;
                }
                ("createTrainingJob", params)
            }
        };
        params["Environment"] = object(&job.environment);
        params["Tags"] = tags(&job.tags);
        let mut retry = vec![retry_sagemaker()];
        if job.retries > 0 {
            // A failed job is retried only where asked: most failures are deterministic
            // (the worker exited non-zero) and a retry would fail the same way.
            retry.push(json!({
                "ErrorEquals": ["States.TaskFailed"],
                "IntervalSeconds": job::RETRY_SECONDS,
                "BackoffRate": 2.0,
                "MaxAttempts": job.retries,
            }));
        }
        json!({
            "Type": "Task",
            "Resource": format!("arn:aws:states:::sagemaker:{resource}.sync"),
            "Parameters": params,
            "ResultPath": null,
            "TimeoutSeconds": job.timeout_seconds,
            "Retry": retry,
            "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": self.path(i, "error"), "Next": failed }],
            "Next": next,
        })
    }

    /// The FSx states on the miss path of training step `i` (docs/cloud.md §7): describe an existing
    /// file system, or create one, wait until it is AVAILABLE and delete it after the job.
    fn fsx_states(&mut self, i: usize, id: &str, create: Option<&FsxCreate>, failed: &str) {
        let st = |f: Fsx| State::Fsx(f).of(id);
        let catch = |next: &str, member: &str| json!([{ "ErrorEquals": ["States.ALL"], "ResultPath": self.path(i, member), "Next": next }]);
        let after_error = st(Fsx::DeleteAfterError);
        let describe_ids = match &self.target.fsx.file_system_id {
            Some(fs) => json!({ "FileSystemIds": [fs] }),
            None => {
                json!({ "FileSystemIds.$": format!("States.Array({})", self.path(i, "fsx.id")) })
            }
        };
        let (describe_next, describe_fail) = match create {
            None => (st(Fsx::HasMount), failed.to_string()),
            Some(_) => (st(Fsx::Ready), after_error.clone()),
        };
        let mut states: Vec<(String, Json)> = vec![(
            st(Fsx::Describe),
            json!({
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:fsx:describeFileSystems",
                "Parameters": describe_ids,
                "Comment": "select FileSystems[0] here and read its fields in the next state (emulator quirk)",
                "ResultSelector": { "fs.$": "$.FileSystems[0]" },
                "ResultPath": self.path(i, "fsx_desc"),
                "TimeoutSeconds": 300,
                "Retry": [retry_fsx()],
                "Catch": catch(&describe_fail, "error"),
                "Next": describe_next,
            }),
        )];
        let mount = format!(
            "{}.fs.LustreConfiguration.MountName",
            self.path(i, "fsx_desc")
        );
        states.push((
            st(Fsx::HasMount),
            json!({
                "Type": "Choice",
                "Choices": [{ "Variable": mount, "IsPresent": true, "Next": st(Fsx::Mount) }],
                "Default": st(Fsx::DefaultMount),
            }),
        ));
        let fs_id = format!("{}.fs.FileSystemId", self.path(i, "fsx_desc"));
        let run = State::Run.of(id);
        states.push((
            st(Fsx::Mount),
            json!({
                "Type": "Pass",
                "Parameters": { "id.$": fs_id, "mount.$": mount },
                "ResultPath": self.path(i, "fsx"),
                "Next": run,
            }),
        ));
        states.push((
            st(Fsx::DefaultMount),
            json!({
                "Type": "Pass",
                "Comment": "file systems that report no MountName mount as /fsx",
                "Parameters": { "id.$": fs_id, "mount": "fsx" },
                "ResultPath": self.path(i, "fsx"),
                "Next": run,
            }),
        ));
        if let Some(c) = create {
            let mut lustre = json!({ "DeploymentType": c.deployment_type });
            self.set(i, &mut lustre, "ImportPath", &c.import_path);
            if let Some(t) = c.per_unit_storage_throughput {
                lustre["PerUnitStorageThroughput"] = json!(t);
            }
            let mut params = json!({
                "FileSystemType": "LUSTRE",
                "StorageCapacity": c.storage_capacity_gb,
                "SubnetIds": c.subnet_ids,
                "SecurityGroupIds": c.security_group_ids,
                "LustreConfiguration": lustre,
                "Tags": tags(&c.tags),
            });
            self.set(i, &mut params, "ClientRequestToken", &c.token);
            states.push((
                st(Fsx::Create),
                json!({
                    "Type": "Task",
                    "Resource": "arn:aws:states:::aws-sdk:fsx:createFileSystem",
                    "Parameters": params,
                    "ResultSelector": { "id.$": "$.FileSystem.FileSystemId", "polls": 0 },
                    "ResultPath": self.path(i, "fsx"),
                    "TimeoutSeconds": 300,
                    "Retry": [retry_fsx()],
                    "Catch": catch(failed, "error"),
                    "Next": st(Fsx::Wait),
                }),
            ));
            states.push((
                st(Fsx::Wait),
                json!({ "Type": "Wait", "Seconds": FSX_POLL_SECONDS, "Next": st(Fsx::Describe) }),
            ));
            let lifecycle = format!("{}.fs.Lifecycle", self.path(i, "fsx_desc"));
            states.push((
                st(Fsx::Ready),
                json!({
                    "Type": "Choice",
                    "Choices": [
                        { "Variable": lifecycle, "StringEquals": "AVAILABLE", "Next": st(Fsx::HasMount) },
                        { "Variable": lifecycle, "StringEquals": "FAILED", "Next": st(Fsx::NotAvailable) },
                        { "Variable": self.path(i, "fsx.polls"), "NumericGreaterThanEquals": FSX_MAX_POLLS, "Next": st(Fsx::NotAvailable) },
                    ],
                    "Default": st(Fsx::Poll),
                }),
            ));
            states.push((
                st(Fsx::NotAvailable),
                json!({
                    "Type": "Pass",
                    "Parameters": {
                        "Error": "wf.FsxNotAvailable",
                        "Cause": format!("the FSx for Lustre file system did not become AVAILABLE within {} s", FSX_MAX_POLLS * FSX_POLL_SECONDS),
                    },
                    "ResultPath": self.path(i, "error"),
                    "Next": after_error.clone(),
                }),
            ));
            states.push((
                st(Fsx::Poll),
                json!({
                    "Type": "Pass",
                    "Parameters": {
                        "id.$": self.path(i, "fsx.id"),
                        "polls.$": format!("States.MathAdd({}, 1)", self.path(i, "fsx.polls")),
                    },
                    "ResultPath": self.path(i, "fsx"),
                    "Next": st(Fsx::Wait),
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
            states.push((st(Fsx::Delete), delete(&State::Published.of(id))));
            states.push((after_error, delete(failed)));
        }
        for (name, state) in states {
            self.add(name, state);
        }
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
        fn metrics(&self) -> &'static [crate::step::Metric] {
            match self.3 {
                RemoteTask::Training { .. } => &[crate::step::Metric {
                    name: "train:loss",
                    regex: "loss ([0-9.]+)",
                }],
                _ => &[],
            }
        }
        fn sharded(&self) -> Option<&dyn crate::step::Sharded> {
            let sharded = matches!(
                self.3,
                RemoteTask::Processing {
                    sharded_input: true,
                    ..
                }
            );
            sharded.then_some(self as &dyn crate::step::Sharded)
        }
    }

    /// Compiling never runs parts; a kind with a sharded input only has to be able to.
    impl crate::step::Sharded for Fake {
        fn run_part(&self, _: &RunContext<'_>) -> Result<crate::step::Part, StepError> {
            Err(StepError::new("the compiler tests run no parts"))
        }
        fn items(
            &self,
            _: &Params,
            _: &dyn Fn(&str) -> Result<Vec<u8>, String>,
        ) -> Result<Vec<String>, StepError> {
            Err(StepError::new("the compiler tests run no parts"))
        }
        fn merge(
            &self,
            _: &Params,
            _: u64,
            _: crate::step::Part,
        ) -> Result<crate::step::Merged, StepError> {
            Err(StepError::new("the compiler tests run no parts"))
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

    /// `AWS` in block style, so that a test can add keys.
    const AWS_BLOCK: &str = "targets:\n  aws:\n    region: r\n    role_arn: arn\n    image_uri: img\n    \
        bucket: s3://bkt/pre\n    subnets: [s-1, s-2]\n    security_groups: [g-1]\n";

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
        assert_eq!(s["fit.Fsx.DeleteAfterError"]["Next"], "fit.Diagnose");
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

    /// A kind whose remote form asks for a sharded input but cannot run as parts, and a training
    /// step reading two fsx-import outputs, are refused at compile time (not by a worker later).
    #[test]
    fn inconsistent_remote_forms_are_refused() {
        struct Unshardable;
        impl Step for Unshardable {
            fn kind(&self) -> &'static str {
                "unshardable"
            }
            fn version(&self) -> u32 {
                1
            }
            fn summary(&self) -> &'static str {
                "x"
            }
            fn params(&self) -> &'static [ParamSpec] {
                PARAMS
            }
            fn inputs(&self) -> Slots {
                Slots::Fixed(&[("dataset", ArtifactType::Dataset)])
            }
            fn output(&self, _: &Params) -> ArtifactType {
                ArtifactType::Samples
            }
            fn run(&self, _: &RunContext<'_>) -> Result<(), StepError> {
                Ok(())
            }
            fn remote(&self, _: &Params) -> RemoteTask {
                RemoteTask::Processing {
                    instances: 2,
                    sharded_input: true,
                }
            }
        }
        let mut r = registry();
        r.register(Unshardable);
        r.register(Fake(
            "fit2",
            Slots::Fixed(&[("a", ArtifactType::Samples), ("b", ArtifactType::Samples)]),
            ArtifactType::Model,
            RemoteTask::Training { instances: 1 },
        ));
        let text = format!(
            "name: t\nsteps:\n  get: {{ uses: get }}\n  u: {{ uses: unshardable, inputs: {{ dataset: get }} }}\n  \
             p: {{ uses: prep, inputs: {{ dataset: get }} }}\n  s1: {{ uses: stage, inputs: {{ samples: p }} }}\n  \
             s2: {{ uses: stage, inputs: {{ samples: p }} }}\n  fit: {{ uses: fit2, inputs: {{ a: s1, b: s2 }} }}\n{AWS}"
        );
        let wf = crate::workflow::load_str(&text, Path::new("t.yaml"), Path::new("."), &r).unwrap();
        let errs: Vec<String> = compile_stepfunctions(&wf, &CompileOptions::default())
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("`u` (unshardable) asks for a sharded input"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("`fit` (fit2) reads 2 inputs from fsx-import steps"),
            "{errs:?}"
        );
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

    /// Only "no such key" is a cache miss; any other S3 error is retried and then fails the
    /// execution (an AccessDenied or a throttle must not rerun a step).
    #[test]
    fn only_a_missing_entry_is_a_miss() {
        let c = compile_text(&format!("{WF}{AWS}")).unwrap();
        let s = c.definition["States"].as_object().unwrap();
        let reads: Vec<&String> = s
            .keys()
            .filter(|k| matches!(State::parse(k), Some((_, State::Lookup | State::Published))))
            .collect();
        assert_eq!(reads.len(), 6, "{reads:?}");
        for name in reads {
            let st = &s[name];
            for c in st["Catch"].as_array().unwrap() {
                assert_eq!(c["ErrorEquals"], json!(NOT_FOUND), "{name}");
            }
            let retry = st["Retry"].as_array().unwrap();
            assert_eq!(
                retry[0],
                json!({ "ErrorEquals": NOT_FOUND, "MaxAttempts": 0 })
            );
            assert_eq!(retry[1]["ErrorEquals"], json!(["States.ALL"]), "{name}");
            assert_eq!(retry[1]["MaxAttempts"], S3_ATTEMPTS);
        }
        assert_eq!(s["fit.Published"]["Catch"][0]["Next"], "fit.NotPublished");
        assert_eq!(s["fit.NotPublished"]["Type"], "Fail");
    }

    /// A failed job fails its step at once with the job's FailureReason; `retries:` asks for
    /// more attempts; `timeout:` bounds one attempt.
    #[test]
    fn a_failed_job_fails_with_its_reason_and_retries_only_when_asked() {
        let c = compile_text(&format!("{WF}{AWS}")).unwrap();
        let s = c.definition["States"].as_object().unwrap();
        let run = &s["get-data.Run"];
        assert_eq!(run["Retry"].as_array().unwrap().len(), 1, "{run}");
        assert_eq!(
            run["Retry"][0]["ErrorEquals"],
            json!([
                "SageMaker.ThrottlingException",
                "SageMaker.InternalServerException"
            ])
        );
        assert_eq!(run["Catch"][0]["Next"], "get-data.Diagnose");
        assert_eq!(run["TimeoutSeconds"], 86_400 + 1_800);
        let diagnose = &s["get-data.Diagnose"];
        assert_eq!(diagnose["Choices"][0]["Next"], "get-data.Job");
        assert_eq!(diagnose["Default"], "get-data.Failed");
        assert_eq!(
            s["get-data.Job"]["Parameters"]["job.$"],
            "States.StringToJson($.steps.get_data.error.Cause)"
        );
        assert_eq!(
            s["get-data.HasReason"]["Choices"][0]["Next"],
            "get-data.JobFailed"
        );
        let failed = &s["get-data.JobFailed"];
        assert_eq!(failed["Error"], JOB_FAILED);
        assert_eq!(
            failed["CausePath"],
            "States.Format('step `get-data` (get): its SageMaker job failed: {}', $.steps.get_data.failure.job.FailureReason)"
        );
        assert_eq!(
            s["get-data.Failed"]["CausePath"],
            "States.Format('step `get-data` (get) failed: {}: {}', $.steps.get_data.error.Error, $.steps.get_data.error.Cause)"
        );

        let text = format!(
            "{WF}{AWS_BLOCK}    steps:\n      get-data: {{ retries: 2, timeout: 4000, max_runtime_seconds: 3600 }}\n"
        );
        let c = compile_text(&text).unwrap();
        let run = &c.definition["States"]["get-data.Run"];
        assert_eq!(run["Retry"][1]["ErrorEquals"], json!(["States.TaskFailed"]));
        assert_eq!(run["Retry"][1]["MaxAttempts"], 2);
        assert_eq!(run["TimeoutSeconds"], 4000);
        let errs = compile_text(&format!(
            "{WF}{AWS_BLOCK}    steps:\n      get-data: {{ timeout: 600, max_runtime_seconds: 3600 }}\n"
        ))
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("t.yaml:16:") && errs[0].contains("timeout (600) is shorter"),
            "{errs:?}"
        );
    }

    /// Tags, the KMS key and the VPC reach every job; metrics and managed spot the Training job.
    #[test]
    fn governance_metrics_and_spot_reach_the_jobs() {
        let text = format!(
            "{WF}{AWS_BLOCK}    tags: {{ project: p, team: t }}\n    kms_key_id: alias/k\n    log_level: ALL\n    tracing: true\n    steps:\n      \
             fit: {{ spot: true, max_runtime_seconds: 3600, tags: {{ team: gpu }} }}\n"
        );
        let c = compile_text(&text).unwrap();
        let s = c.definition["States"].as_object().unwrap();
        let jobs: Vec<(&String, &Json)> = s
            .iter()
            .filter(|(_, st)| {
                st["Resource"]
                    .as_str()
                    .is_some_and(|r| r.contains(":sagemaker:"))
            })
            .collect();
        assert_eq!(jobs.len(), 4, "get, prep, prep's commit, fit");
        for (name, st) in &jobs {
            let p = &st["Parameters"];
            let tags = p["Tags"].as_array().unwrap();
            let step = State::parse(name).unwrap().0;
            let team = if step == "fit" { "gpu" } else { "t" };
            assert_eq!(
                tags,
                &vec![
                    json!({ "Key": "wf:step", "Value": step }),
                    json!({ "Key": "project", "Value": "p" }),
                    json!({ "Key": "team", "Value": team }),
                ],
                "{name}"
            );
            let (cluster, vpc) = if p["ProcessingResources"].is_object() {
                (
                    &p["ProcessingResources"]["ClusterConfig"],
                    &p["NetworkConfig"]["VpcConfig"],
                )
            } else {
                assert_eq!(p["OutputDataConfig"]["KmsKeyId"], "alias/k");
                (&p["ResourceConfig"], &p["VpcConfig"])
            };
            assert_eq!(cluster["VolumeKmsKeyId"], "alias/k", "{name}");
            assert_eq!(vpc["Subnets"], json!(["s-1", "s-2"]), "{name}");
            let args = p["AppSpecification"]["ContainerArguments.$"]
                .as_str()
                .or(p["AlgorithmSpecification"]["ContainerArguments.$"].as_str())
                .unwrap();
            assert!(args.contains("'--kms-key-id', 'alias/k'"), "{name}: {args}");
        }
        let fit = &s["fit.Run"]["Parameters"];
        assert_eq!(
            fit["AlgorithmSpecification"]["MetricDefinitions"],
            json!([{ "Name": "train:loss", "Regex": "loss ([0-9.]+)" }])
        );
        assert_eq!(fit["EnableManagedSpotTraining"], true);
        assert_eq!(fit["StoppingCondition"]["MaxRuntimeInSeconds"], 3600);
        assert_eq!(fit["StoppingCondition"]["MaxWaitTimeInSeconds"], 7200);
        assert_eq!(fit["CheckpointConfig"]["LocalPath"], "/opt/ml/checkpoints");
        assert_eq!(
            fit["CheckpointConfig"]["S3Uri.$"],
            "States.Format('s3://bkt/pre/checkpoints/{}/', $.steps.fit.key)"
        );
        assert_eq!(s["fit.Run"]["TimeoutSeconds"], 7200 + 1_800);
        assert!(s["prep.Run"]["Parameters"]["EnableManagedSpotTraining"].is_null());
        assert_eq!(
            s["fit.Fsx.Create"]["Parameters"]["Tags"][2],
            json!({ "Key": "team", "Value": "gpu" })
        );
    }

    /// Settings that cannot work are refused where they are written: spot on a Processing step,
    /// a spot wait shorter than the run, reserved tag keys.
    #[test]
    fn governance_and_spot_mistakes_are_positioned() {
        let errs = compile_text(&format!(
            "{WF}{AWS_BLOCK}    tags: {{ \"aws:x\": y, \"wf:step\": z }}\n"
        ))
        .unwrap_err();
        // Found while loading the workflow: one error listing both.
        let lines: Vec<&str> = errs[0].lines().collect();
        assert_eq!(lines.len(), 2, "{errs:?}");
        assert!(
            lines[0].starts_with("t.yaml:15:13: ") && lines[0].contains("`aws:x`"),
            "{errs:?}"
        );
        assert!(
            lines[1].starts_with("t.yaml:15:25: ") && lines[1].contains("`wf:step`"),
            "{errs:?}"
        );
        let text = format!(
            "{WF}{AWS_BLOCK}    steps:\n      prep: {{ spot: true }}\n      \
             fit: {{ spot: true, max_runtime_seconds: 3600, max_wait_seconds: 600 }}\n"
        );
        let errs = compile_text(&text).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("t.yaml:16:21: ") && errs[0].contains("Processing job"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("t.yaml:17:") && errs[1].contains("max_wait_seconds (600)"),
            "{errs:?}"
        );
    }
}
