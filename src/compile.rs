//! `wf compile FILE --target stepfunctions [-o OUT.json]`: prints (or writes) the Amazon States
//! Language definition of a workflow, as `wf deploy` would create it. The compiler is
//! `wf_engine::asl`; the conventions it follows are in docs/cloud.md.

use crate::error::{CliError, CliResult, Exit};
use std::io::Write;
use std::path::PathBuf;
use wf_engine::asl::{CompileOptions, compile_stepfunctions};
use wf_engine::{DiagnosticList, Workflow};

#[derive(clap::Args)]
pub struct CompileArgs {
    pub file: PathBuf,
    /// What to compile for.
    #[arg(long, value_enum, default_value_t = Target::Stepfunctions)]
    pub target: Target,
    /// Write the definition here instead of stdout.
    #[arg(long, short = 'o', value_name = "OUT.json")]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// AWS Step Functions (ASL JSON) running SageMaker jobs.
    Stepfunctions,
}

/// The message for a workflow the compiler refuses (exit 2): every problem, then a summary.
pub fn not_compilable(wf: &Workflow, list: &DiagnosticList) -> String {
    let n = list.0.len();
    let plural = if n == 1 { "" } else { "s" };
    format!(
        "{list}\nerror: {} cannot be compiled for Step Functions ({n} problem{plural})",
        wf.path.display()
    )
}

/// Compiles a loaded workflow (exit 2 when it cannot be compiled).
pub fn main(wf: &Workflow, args: &CompileArgs) -> CliResult {
    let Target::Stepfunctions = args.target;
    let compiled = compile_stepfunctions(wf, &CompileOptions::default())
        .map_err(|list| CliError::invalid(not_compilable(wf, &list)))?;
    let mut text =
        serde_json::to_string_pretty(&compiled.definition).expect("a definition serializes");
    text.push('\n');
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| {
                CliError::invalid(format!("error: cannot write {}: {e}", path.display()))
            })?;
            eprintln!(
                "wrote {} ({} states, cache {})",
                path.display(),
                compiled.definition["States"]
                    .as_object()
                    .map_or(0, |s| s.len()),
                compiled.target.cache
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            // A closed stdout (e.g. `| head`) ends the command quietly.
            if out.write_all(text.as_bytes()).is_err() {
                return Err(CliError::invalid(""));
            }
        }
    }
    if !compiled.uploads.is_empty() {
        eprintln!(
            "note: {} object(s) (long params, declared files) must be in {} before it runs; `wf deploy` uploads them",
            compiled.uploads.len(),
            compiled.target.cache
        );
    }
    Ok(Exit::Ok)
}
