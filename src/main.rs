//! The `wf` command line: parses arguments, loads the workflow, and hands off to the engine; one
//! reporter turns run events into output. Exit codes: 0 success, 1 a step failed, 2 invalid input.

mod cli;
mod cloud;
mod compile;
mod predict;
mod report;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
