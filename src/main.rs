//! The `wf` command line: parses arguments, loads the workflow, and hands off to the engine; one
//! reporter turns run events into output. Exit codes: 0 success, 1 a step failed, 2 invalid input,
//! 128 + the signal's number when SIGINT, SIGTERM or SIGHUP stopped the work (`error.rs`).

mod cli;
mod cloud;
mod compile;
mod error;
mod html_report;
mod predict;
mod preflight;
mod report;
mod signals;
mod worker;

use std::process::ExitCode;

/// Keeps freed blocks of 8 MiB and more for reuse: training batches and activations are fresh
/// multi-megabyte allocations each step, and without it glibc maps, faults in and zeroes their pages
/// again every time (half of the loader's CPU time on a 2-core machine; BENCHMARKS.md).
#[global_allocator]
static ALLOC: wf_trainer::alloc::Recycler = wf_trainer::alloc::Recycler::new();

fn main() -> ExitCode {
    // The same reasoning below 8 MiB: glibc keeps freed blocks up to 32 MiB on its heap instead of
    // unmapping them (a fifth of a UNet training step on a 2-vCPU machine; BENCHMARKS.md).
    wf_trainer::alloc::keep_freed_heap();
    cli::main()
}
