//! Placing a data set's tree into the step's output: finding its root (the directory holding
//! dataset.json), leaving macOS junk behind, copying the user's files or moving ours, and replacing
//! links by what they point to.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use wf_engine::StepError;
use wf_imaging::msd::DATASET_JSON;

use super::io_step;

/// macOS metadata that archives made on a Mac carry next to every file.
fn is_junk(name: &str) -> bool {
    name.starts_with("._") || name == "__MACOSX" || name == ".DS_Store"
}

/// The shallowest directory (up to 3 levels down) holding a dataset.json; two at the same depth are
/// ambiguous.
pub(super) fn find_msd_root(dir: &Path) -> Result<Option<PathBuf>, StepError> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..4 {
        let found: Vec<&PathBuf> = level
            .iter()
            .filter(|d| d.join(DATASET_JSON).is_file())
            .collect();
        match found.as_slice() {
            [] => {}
            [one] => return Ok(Some((*one).clone())),
            many => {
                return Err(StepError::new(format!(
                    "more than one data set (dataset.json) found: {}",
                    many.iter()
                        .map(|d| d.strip_prefix(dir).unwrap_or(d).display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut next = Vec::new();
        for d in &level {
            for e in read_dir_sorted(d)? {
                let name = e.file_name().to_string_lossy().into_owned();
                if !is_junk(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    Ok(None)
}

pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<fs::DirEntry>, StepError> {
    let mut v = fs::read_dir(dir)
        .and_then(|it| it.collect::<io::Result<Vec<_>>>())
        .map_err(|e| io_step(dir, e))?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    /// The source is ours (extracted, downloaded): rename.
    Move,
    /// The source is the user's: copy. (Never hard links: the store makes committed files
    /// read-only, which would reach through a link into the user's data.)
    Copy,
}

pub(super) fn transfer(from: &Path, to: &Path, mode: Mode) -> Result<(), StepError> {
    if mode == Mode::Move && fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(|e| io_step(from, e))?;
    Ok(())
}

/// Fills `dst` with the tree under `src`, minus macOS junk. Links are replaced by what they point
/// to; with `confine`, a link resolving outside it is refused (the archive case).
pub(super) fn place(
    src: &Path,
    dst: &Path,
    mode: Mode,
    confine: Option<&Path>,
    depth: usize,
) -> Result<(), StepError> {
    if depth > 64 {
        return Err(StepError::new(format!(
            "{}: directories nested too deep (a link loop?)",
            src.display()
        )));
    }
    for e in read_dir_sorted(src)? {
        let name = e.file_name();
        if is_junk(&name.to_string_lossy()) {
            continue;
        }
        let from = e.path();
        let to = dst.join(&name);
        let ft = e.file_type().map_err(|err| io_step(&from, err))?;
        let (from, ft, mode) = if ft.is_symlink() {
            let target = fs::canonicalize(&from)
                .map_err(|err| StepError::new(format!("{}: broken link: {err}", from.display())))?;
            if let Some(root) = confine
                && !target.starts_with(root)
            {
                return Err(StepError::new(format!(
                    "refusing archive member `{}`: a link to outside the archive",
                    from.strip_prefix(root).unwrap_or(&from).display()
                )));
            }
            let meta = fs::metadata(&target).map_err(|err| io_step(&target, err))?;
            // The target may be placed elsewhere too, so it is copied, never moved.
            (target, meta.file_type(), Mode::Copy)
        } else {
            (from, ft, mode)
        };
        if ft.is_dir() {
            fs::create_dir_all(&to).map_err(|err| io_step(&to, err))?;
            place(&from, &to, mode, confine, depth + 1)?;
        } else if ft.is_file() {
            transfer(&from, &to, mode)?;
        } else {
            return Err(StepError::new(format!(
                "{}: not a regular file or directory",
                from.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::fetch_dataset::testutil::*;

    #[test]
    fn a_directory_source_is_copied() {
        let wf = tempfile::tempdir().unwrap();
        msd_tree(&wf.path().join("data/Task01"));
        let r = run(wf.path(), &[("source", "data".into())]);
        r.result.as_ref().unwrap();
        assert_msd(&r.staging.out);
        // Copied, never linked: the user's files stay theirs.
        assert!(
            wf.path()
                .join("data/Task01/imagesTr/._BRATS_001.nii.gz")
                .exists()
        );
    }
}
