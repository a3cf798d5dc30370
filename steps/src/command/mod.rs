//! The `command` step: runs a user's shell command as a pipeline step.
//!
//! ```yaml
//! b: { uses: command, inputs: { src: a },
//!      with: { run: "sort $WF_IN_src/data.txt > $WF_OUT/sorted.txt", produces: Files, files: [make.py] } }
//! ```
//! `sh -c RUN` in the workflow file's directory. Environment: `WF_OUT` (an empty directory: the output),
//! `WF_IN_<slot>` (each input's read-only directory), `WF_SCRATCH` (temporary space), `WF_SEED`,
//! `WF_STEP`, `WF_THREADS`, plus `env:`. stdout and stderr go to the step's log, capped (`output.rs`);
//! a non-zero exit fails the step and shows the stderr tail. `files:` (files or directories, relative
//! to the workflow) are hashed into the key, so editing a script reruns the step that uses it.
//!
//! The step ends when its shell exits, not when its output closes: a background job may hold stdout or
//! stderr for ever. Whatever the command left running is then ended, with a warning; a stopped run
//! ends the whole tree, and so does a killed wf (`supervise.rs`).

mod output;
pub mod supervise;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CheckContext, Diagnostics, ParamSpec, Params, RemoteTask, RunContext, Slots,
    Step, StepError, plural,
};

pub struct Command;

static STR_LIST: ParamType = ParamType::List(&ParamType::Str);
const ARTIFACT_NAMES: &[&str] = &["Dataset", "Samples", "Model", "Export", "Files"];

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "run",
        ParamType::Str,
        "the shell command, run with `sh -c` in the workflow's directory",
    ),
    ParamSpec::optional(
        "produces",
        ParamType::Enum(ARTIFACT_NAMES),
        "\"Files\"",
        "the output's artifact type",
    ),
    ParamSpec::optional(
        "files",
        STR_LIST,
        "[]",
        "local files and directories the command reads; their content is part of the key (directories tagged as caches with `CACHEDIR.TAG`, such as wf's own `.wf/cache`, are skipped)",
    )
    .shape("list of paths (relative to the workflow file)", || {
        STR_LIST.json_schema()
    }),
    ParamSpec::optional(
        "env",
        ParamType::StrMap,
        "{}",
        "extra environment variables",
    ),
];

#[derive(Debug, Deserialize)]
struct CommandParams {
    run: String,
    files: Vec<String>,
    env: BTreeMap<String, String>,
}

fn decode(params: &Params) -> Result<CommandParams, StepError> {
    params
        .decode()
        .map_err(|e| StepError::new(format!("invalid params: {e}")))
}

impl Step for Command {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "run a shell command; inputs in $WF_IN_<slot>, output written to $WF_OUT"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> Slots {
        Slots::Open
    }
    fn output(&self, params: &Params) -> ArtifactType {
        params
            .get("produces")
            .and_then(|v| v.as_str())
            .and_then(ArtifactType::parse)
            .unwrap_or(ArtifactType::Files)
    }

    fn check(&self, params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        let Some(list) = params.node("files").and_then(|n| n.as_seq()) else {
            return;
        };
        for item in list {
            let Some(rel) = item.as_str() else { continue };
            let span = item.span;
            if Path::new(rel).is_absolute() {
                diags.error(
                    span,
                    format!(
                        "step `{}`: `files` entry `{rel}` must be relative to the workflow file",
                        cx.step_id
                    ),
                );
            } else if !cx.workflow_dir.join(rel).exists() {
                diags.error(
                    span,
                    format!(
                        "step `{}`: `files` entry `{rel}` does not exist (paths are relative to the workflow file)",
                        cx.step_id
                    ),
                );
            }
        }
        if let Some(env) = params.node("env").and_then(|n| n.as_map()) {
            for (k, _) in env {
                if k.name.starts_with("WF_") {
                    diags.error(
                        k.span,
                        format!(
                            "step `{}`: `env` may not set `{}` (WF_ variables are set by wf)",
                            cx.step_id, k.name
                        ),
                    );
                }
            }
        }
    }

    fn local_files(&self, params: &Params) -> Vec<String> {
        decode(params).map(|p| p.files).unwrap_or_default()
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let p = decode(cx.params)?;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(cx.log_path)?;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&p.run)
            .current_dir(cx.workflow_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("WF_OUT", cx.out_dir)
            .env("WF_SCRATCH", cx.scratch_dir)
            .env("WF_SEED", cx.seed.to_string())
            .env(wf_engine::cloud::job::STEP_ENV, cx.step_id)
            .env("WF_THREADS", cx.threads.to_string())
            .envs(&p.env);
        for (slot, input) in cx.inputs {
            cmd.env(format!("WF_IN_{slot}"), &input.path);
        }
        let (child, streams) = supervise::spawn(&mut cmd)
            .map_err(|e| StepError::new(format!("cannot start `sh`: {e}")))?;
        let capture = output::Capture::start(log, streams.stdout, streams.stderr);
        let cancelled = || cx.cancel.is_cancelled();
        let waited = child.wait(&cancelled);
        let out = capture.finish(&cancelled);
        let end = waited.map_err(|e| StepError::new(format!("waiting for the command: {e}")))?;

        if out.dropped > 0 {
            cx.progress.warn(&format!(
                "the command wrote {} more than the log keeps ({} MiB); the log ends with a note",
                plural(out.dropped, "byte"),
                output::LOG_CAP >> 20
            ));
        }
        if end.survivors {
            cx.progress.warn(
                "some processes of the command could not be ended (not wf's to signal, or stuck)",
            );
        } else if out.unfinished {
            cx.progress.warn(
                "a process outside the command's tree still holds its output; the rest is not logged",
            );
        }
        if end.stopped {
            return Err(StepError::new("interrupted"));
        }
        let detail = if out.tail.is_empty() {
            "(no output on stderr)".to_string()
        } else {
            out.tail
        };
        if let Some(guard) = end.guard_lost {
            return Err(StepError::with_detail(
                format!(
                    "the process supervising the command {}; the command's processes were ended",
                    how(&guard)
                ),
                detail,
            ));
        }
        if end.leftovers {
            cx.progress.warn(
                "the command's shell exited but left processes running (a background job?); they were ended",
            );
        }
        match end.status {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(StepError::with_detail(
                format!("command {}", how(&status)),
                detail,
            )),
            None => Err(StepError::with_detail("command failed", detail)),
        }
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }
}

/// "exited with status N" or "was killed by signal N".
fn how(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_string(),
    }
}
