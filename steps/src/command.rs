//! The `command` step: runs a user's shell command as a pipeline step.
//!
//! ```yaml
//! b: { uses: command, inputs: { src: a },
//!      with: { run: "sort $WF_IN_src/data.txt > $WF_OUT/sorted.txt", produces: Files, files: [make.py] } }
//! ```
//! `sh -c RUN` in the workflow file's directory. Environment: `WF_OUT` (an empty directory: the output),
//! `WF_IN_<slot>` (each input's read-only directory), `WF_SCRATCH` (temporary space), `WF_SEED`,
//! `WF_STEP`, `WF_THREADS`, plus `env:`. stdout and stderr go to the step's log; a non-zero exit fails
//! the step and shows the stderr tail. `files:` (files or directories, relative to the workflow) are
//! hashed into the key, so editing a script reruns the step that uses it.

use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CheckContext, Diagnostics, ParamSpec, Params, RemoteTask, RunContext, Slots,
    Step, StepError,
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
        "local files and directories the command reads (part of the key)",
    ),
    ParamSpec::optional(
        "env",
        ParamType::StrMap,
        "{}",
        "extra environment variables",
    ),
];

/// Lines of stderr shown when the command fails.
const STDERR_TAIL: usize = 20;

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
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::piped())
            .env("WF_OUT", cx.out_dir)
            .env("WF_SCRATCH", cx.scratch_dir)
            .env("WF_SEED", cx.seed.to_string())
            .env(wf_engine::cloud::job::STEP_ENV, cx.step_id)
            .env("WF_THREADS", cx.threads.to_string())
            .envs(&p.env)
            // Own process group, so stopping the step stops everything it started.
            .process_group(0);
        for (slot, input) in cx.inputs {
            cmd.env(format!("WF_IN_{slot}"), &input.path);
        }
        #[cfg(target_os = "linux")]
        unsafe {
            // If wf itself dies (even by SIGKILL), the command dies with it instead of running on
            // unobserved. Safe: prctl is async-signal-safe. (The spawning thread waits for the child,
            // so the thread-exit variant of PDEATHSIG cannot fire early.)
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| StepError::new(format!("cannot start `sh`: {e}")))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut log_for_err = log.try_clone()?;
        let reader = std::thread::spawn(move || {
            let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL);
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                let _ = log_for_err.write_all(&line);
                let _ = log_for_err.write_all(b"\n");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(&line).into_owned());
            }
            tail
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if cx.cancel.is_cancelled() {
                unsafe {
                    libc::killpg(child.id() as i32, libc::SIGTERM);
                }
                std::thread::sleep(Duration::from_millis(200));
                unsafe {
                    libc::killpg(child.id() as i32, libc::SIGKILL);
                }
                let _ = child.wait();
                return Err(StepError::new("interrupted"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tail: Vec<String> = reader.join().unwrap_or_default().into();
        if status.success() {
            return Ok(());
        }
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "failed".to_string(),
        };
        let detail = if tail.is_empty() {
            "(no output on stderr)".to_string()
        } else {
            tail.join("\n")
        };
        Err(StepError::with_detail(format!("command {how}"), detail))
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }
}
