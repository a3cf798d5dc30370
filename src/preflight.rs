//! What `wf run` checks before it runs anything: that this machine can run each step it will run
//! here (`Step::check_local`: GPUs a build without CUDA lacks), and that the outputs it will write
//! fit the free space of the cache's file system (`Step::output_size`). Both are about this
//! machine, not the file, so they are no part of validation: a file meant for the cloud stays valid.
//!
//! Which steps will run: those `wf plan` does not show as hits. The plan (keys, a HEAD for a URL
//! source) is computed only when some step could be refused, so a run with nothing to refuse costs
//! nothing more. A step after a miss counts as running: whether it will hit is not known before the
//! steps it waits for have run.

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
    let sized: Vec<(usize, u64)> = wf
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, def)| match &def.size {
            Some(SizeEstimate::Bytes { bytes, .. }) if checks.space => Some((i, *bytes)),
            _ => None,
        })
        .collect();
    let free = free_space(store.root());
    let too_big = |steps: &[(usize, u64)]| {
        free.is_some_and(|free| steps.iter().map(|&(_, b)| b).sum::<u64>() > free)
    };
    if local.is_empty() && !too_big(&sized) {
        return Ok(());
    }
    let running = will_run(wf, store, opts);
    let mut refused = Vec::new();
    for (i, diags) in local {
        if running.contains(&i) {
            refused.extend(diags.into_sorted());
        }
    }
    let sized: Vec<(usize, u64)> = sized
        .into_iter()
        .filter(|(i, _)| running.contains(i))
        .collect();
    let mut space_line = None;
    if let (true, Some(free)) = (too_big(&sized), free) {
        let total: u64 = sized.iter().map(|&(_, b)| b).sum();
        for &(i, _) in &sized {
            let def = &wf.steps[i];
            let Some(SizeEstimate::Bytes {
                bytes,
                how,
                help,
                span,
            }) = &def.size
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

/// The indices of the steps a run would compute rather than take from a cache. When the plan
/// cannot be made (the cache cannot be read), every step.
fn will_run(wf: &Workflow, store: &Store, opts: &RunOptions) -> BTreeSet<usize> {
    match exec::plan_with(wf, store, &opts.force, opts.remote.as_deref()) {
        Ok(plan) => plan
            .iter()
            .enumerate()
            .filter(|(_, p)| p.runs())
            .map(|(i, _)| i)
            .collect(),
        Err(_) => (0..wf.steps.len()).collect(),
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
