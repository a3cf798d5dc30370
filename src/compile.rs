//! `wf compile FILE --target stepfunctions [-o OUT.json]`: prints (or writes) the Amazon States
//! Language definition of a workflow, as `wf deploy` would create it. The compiler is
//! `wf_engine::asl`; the conventions it follows are in docs/cloud.md.

use crate::cli::{EXIT_INVALID, EXIT_OK};
use std::io::Write;
use std::path::PathBuf;
use wf_engine::Workflow;
use wf_engine::asl::{CompileOptions, compile_stepfunctions};

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

/// Compiles a loaded workflow; returns the exit code (2 when the workflow cannot be compiled).
pub fn main(wf: &Workflow, args: &CompileArgs) -> u8 {
    let Target::Stepfunctions = args.target;
    let compiled = match compile_stepfunctions(wf, &CompileOptions::default()) {
        Ok(c) => c,
        Err(list) => {
            let n = list.0.len();
            let plural = if n == 1 { "" } else { "s" };
            eprintln!(
                "{list}\nerror: {} cannot be compiled for Step Functions ({n} problem{plural})",
                args.file.display()
            );
            return EXIT_INVALID;
        }
    };
    let mut text =
        serde_json::to_string_pretty(&compiled.definition).expect("a definition serializes");
    text.push('\n');
    match &args.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return EXIT_INVALID;
            }
            eprintln!(
                "wrote {} ({} states, cache {})",
                path.display(),
                compiled.definition["States"]
                    .as_object()
                    .map_or(0, |s| s.len()),
                compiled.target.cache.uri()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            if out.write_all(text.as_bytes()).is_err() {
                return EXIT_INVALID;
            }
        }
    }
    if !compiled.uploads.is_empty() {
        eprintln!(
            "note: {} object(s) (long params, declared files) must be in {} before it runs; `wf deploy` uploads them",
            compiled.uploads.len(),
            compiled.target.cache.uri()
        );
    }
    EXIT_OK
}
