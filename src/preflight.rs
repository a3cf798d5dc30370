//! What `wf run` checks before it runs anything: that this machine can run each step it will run
//! here (`Step::check_local`: GPUs a build without CUDA lacks), and that the outputs it will write
//! fit the free space of the cache's file system (`Step::output_size`). Both are about this
//! machine, not the file, so they are no part of validation: a file meant for the cloud stays valid.
//!
//! Which steps will run: those `wf plan` does not show as hits. The plan (keys, a HEAD for a URL
//! source) is computed only when some step could be refused or a download's announced size must be
//! asked (`SizeEstimate::Ask`), so a run with nothing to refuse costs nothing more. A step after a
//! miss counts as running: whether it will hit is not known before the steps it waits for have run.

use crate::error::{CliError, CliResult};
use std::collections::BTreeSet;
use std::path::Path;
use wf_engine::exec::{self, RunOptions};
use wf_engine::words::human_bytes;
use wf_engine::{Diagnostic, DiagnosticList, Diagnostics, SizeEstimate, Store, Workflow, plural};

/// The checks that apply to one run.
pub struct Checks {
    /// Steps run on this machine (else each step with a job form runs as a SageMaker job).
    pub local: bool,
    /// Compare the estimated output sizes with the free space (`--no-space-check` turns it off).
    pub space: bool,
}

/// Refuses the run (exit 2) when a step that will run cannot run here, or when the outputs of the
/// steps that will run exceed the free space of the cache's file system.
pub fn check(wf: &Workflow, store: &Store, opts: &RunOptions, checks: Checks) -> CliResult<()> {
    // Every step's problems first, from the file alone; the plan only when there are any.
    let mut local: Vec<(usize, Diagnostics)> = Vec::new();
    if checks.local {
        for (i, def) in wf.steps.iter().enumerate() {
            let mut diags = Diagnostics::new(&wf.path);
            def.step.check_local(&def.params, &def.id, &mut diags);
            if !diags.is_empty() {
                local.push((i, diags));
            }
        }
    }
    // The sizes validation knows; a source's announced size (`SizeEstimate::Ask`) needs the plan.
    let estimates: Vec<Option<SizeEstimate>> = wf
        .steps
        .iter()
        .map(|def| def.size.clone().filter(|_| checks.space))
        .collect();
    let asks = estimates
        .iter()
        .any(|e| matches!(e, Some(SizeEstimate::Ask)));
    let free = free_space(store.root());
    let too_big = |estimates: &[Option<SizeEstimate>]| {
        free.is_some_and(|free| estimates.iter().map(bytes_of).sum::<u64>() > free)
    };
    if local.is_empty() && !asks && !too_big(&estimates) {
        return Ok(());
    }
    // Which steps will run, and the plan's estimates for them (with announced sizes asked).
    let (running, estimates): (BTreeSet<usize>, Vec<Option<SizeEstimate>>) =
        match exec::plan_with(wf, store, &opts.force, opts.remote.as_deref()) {
            Ok(plan) => (
                plan.iter()
                    .enumerate()
                    .filter(|(_, p)| p.runs())
                    .map(|(i, _)| i)
                    .collect(),
                plan.into_iter()
                    .map(|p| p.size_estimate.filter(|_| checks.space))
                    .collect(),
            ),
            // Without a plan (the cache cannot be read), every step counts as running.
            Err(_) => ((0..wf.steps.len()).collect(), estimates),
        };
    let mut refused = Vec::new();
    for (i, diags) in local {
        if running.contains(&i) {
            refused.extend(diags.into_sorted());
        }
    }
    let sized: Vec<(usize, u64)> = estimates
        .iter()
        .enumerate()
        .filter(|(i, e)| running.contains(i) && bytes_of(e) > 0)
        .map(|(i, e)| (i, bytes_of(e)))
        .collect();
    let mut space_line = None;
    let total: u64 = sized.iter().map(|&(_, b)| b).sum();
    if let Some(free) = free.filter(|&free| total > free) {
        for &(i, _) in &sized {
            let def = &wf.steps[i];
            let Some(SizeEstimate::Bytes {
                bytes,
                how,
                help,
                span,
            }) = &estimates[i]
            else {
                continue;
            };
            refused.push(Diagnostic {
                file: wf.path.clone(),
                span: *span,
                message: format!(
                    "step `{}` would write about {} ({how}), but the file system of the cache ({}) has {} free",
                    def.id,
                    human_bytes(*bytes),
                    store.root().display(),
                    human_bytes(free)
                ),
                help: Some(format!(
                    "{}; or free space, or run anyway with `wf run --no-space-check`",
                    help.as_deref().unwrap_or("store less")
                )),
            });
        }
        space_line = Some(format!(
            "the {} to run would write about {} ({total} bytes); the cache's file system has {} ({free} bytes) free",
            if sized.len() == 1 { "step" } else { "steps" },
            human_bytes(total),
            human_bytes(free),
        ));
    }
    if refused.is_empty() {
        return Ok(());
    }
    let n = refused.len();
    let mut text = DiagnosticList(refused).to_string();
    if let Some(line) = space_line {
        text.push_str(&format!("\nerror: {line}"));
    }
    Err(CliError::invalid(format!(
        "{text}\nerror: not starting {} ({}); nothing ran",
        wf.path.display(),
        plural(n, "problem")
    )))
}

/// The bytes of an estimate that has them (else 0).
fn bytes_of(estimate: &Option<SizeEstimate>) -> u64 {
    match estimate {
        Some(SizeEstimate::Bytes { bytes, .. }) => *bytes,
        _ => 0,
    }
}

/// The bytes an unprivileged process may still write on the file system holding `dir`
/// (`statvfs`: available blocks × fragment size); `None` when it cannot be asked.
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` a buffer of the size statvfs fills.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The fields' types differ between platforms (u32 on some).
    #[allow(clippy::unnecessary_cast)]
    let (blocks, size) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(blocks.saturating_mul(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_asked_of_the_file_system() {
        let t = tempfile::tempdir().unwrap();
        let free = free_space(t.path()).unwrap();
        assert!(free > 0);
        assert_eq!(free_space(&t.path().join("missing")), None);
    }
}
