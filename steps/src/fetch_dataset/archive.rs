//! fetch-dataset's archives: telling tar and tar.gz apart (by name, else by content) and extracting
//! them safely. Absolute member paths, `..` components, links out of the archive (by their text, and
//! again by canonical path once extracted) and device or fifo members are refused, each naming the
//! member; links inside the archive become copies of what they point to.

use flate2::read::MultiGzDecoder;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wf_engine::{RunContext, StepError};

use super::source::file_name;
use super::tree::{Mode, find_msd_root, place, read_dir_sorted, transfer};
use super::{Ticker, io_step, no_dataset_json};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Tar,
    TarGz,
    Single,
}

fn is_tar_header(h: &[u8]) -> bool {
    h.len() >= 262 && &h[257..262] == b"ustar"
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// By name first; a URL may carry no telling name, so then by content.
fn archive_kind(name: &str, path: &Path) -> io::Result<Kind> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".tar") {
        return Ok(Kind::Tar);
    }
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        return Ok(Kind::TarGz);
    }
    let mut head = [0u8; 512];
    let n = read_full(&mut File::open(path)?, &mut head)?;
    if is_tar_header(&head[..n]) {
        return Ok(Kind::Tar);
    }
    if head[..n].starts_with(&[0x1f, 0x8b]) {
        let mut inner = [0u8; 512];
        let mut gz = MultiGzDecoder::new(File::open(path)?);
        if let Ok(k) = read_full(&mut gz, &mut inner)
            && is_tar_header(&inner[..k])
        {
            return Ok(Kind::TarGz);
        }
    }
    Ok(Kind::Single)
}

/// Puts a fetched file into `out_dir`: an archive is extracted and its MSD root moved there, any
/// other file is placed as it is.
pub(super) fn unpack(
    cx: &RunContext<'_>,
    file: &Path,
    name: &str,
    mode: Mode,
    what: &str,
) -> Result<(), StepError> {
    let kind = archive_kind(name, file).map_err(|e| io_step(file, e))?;
    if kind == Kind::Single {
        let dest = cx.out_dir.join(file_name(name));
        return transfer(file, &dest, mode);
    }
    let scratch = cx.scratch_dir.join("extract");
    fs::create_dir_all(&scratch).map_err(|e| io_step(&scratch, e))?;
    cx.progress.message(&format!("extracting {what}"));
    extract(cx, file, kind == Kind::TarGz, &scratch, what)?;
    let confine = fs::canonicalize(&scratch).map_err(|e| io_step(&scratch, e))?;
    // Links first, while every target is still where the archive put it, and before anything
    // (dataset.json included) is read through one.
    resolve_links(&scratch, &scratch, &confine)?;
    let root = find_msd_root(&scratch)?.ok_or_else(|| no_dataset_json(what))?;
    place(&root, cx.out_dir, Mode::Move, Some(&confine), 0)
}

/// Replaces each symbolic link under `dir` by a copy of the file it points to, refusing links that
/// resolve outside `confine` (the canonical extraction directory) — including those that only
/// escape through another link, which the check on the link's text cannot see — and links to
/// directories.
fn resolve_links(dir: &Path, base: &Path, confine: &Path) -> Result<(), StepError> {
    for e in read_dir_sorted(dir)? {
        let p = e.path();
        let ft = e.file_type().map_err(|err| io_step(&p, err))?;
        if ft.is_dir() {
            resolve_links(&p, base, confine)?;
            continue;
        }
        if !ft.is_symlink() {
            continue;
        }
        let member = p.strip_prefix(base).unwrap_or(&p).display().to_string();
        let target = fs::canonicalize(&p).map_err(|err| {
            StepError::new(format!("archive member `{member}` is a broken link: {err}"))
        })?;
        if !target.starts_with(confine) {
            return Err(StepError::new(format!(
                "refusing archive member `{member}`: a link to outside the archive"
            )));
        }
        let meta = fs::metadata(&target).map_err(|err| io_step(&target, err))?;
        if !meta.is_file() {
            // A directory link would be copied as a tree: a few links to `.` make that grow
            // exponentially. Data sets have no need for them.
            return Err(StepError::new(format!(
                "refusing archive member `{member}`: a link to a directory or special file"
            )));
        }
        fs::remove_file(&p).map_err(|err| io_step(&p, err))?;
        fs::copy(&target, &p).map_err(|err| io_step(&target, err))?;
    }
    Ok(())
}

/// Counts the bytes read through it, for progress over the compressed archive.
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}
impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// Why a member path may not be extracted.
fn member_path_problem(path: &Path) -> Option<&'static str> {
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Some("absolute paths are not allowed");
            }
            Component::ParentDir => return Some("`..` components are not allowed"),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    None
}

/// Whether a symbolic link at `member` pointing to `target` stays inside the archive, judged by
/// its text (links through earlier links are caught when the tree is placed, by canonical path).
fn link_escapes(member: &Path, target: &Path) -> bool {
    if target.has_root() {
        return true;
    }
    let mut depth: usize = member.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for c in target.components() {
        match c {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

fn extract(
    cx: &RunContext<'_>,
    archive: &Path,
    gz: bool,
    dest: &Path,
    what: &str,
) -> Result<(), StepError> {
    let file = File::open(archive).map_err(|e| io_step(archive, e))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    let counted = Counting {
        inner: BufReader::with_capacity(1 << 20, file),
        n: read.clone(),
    };
    let reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.set_unpack_xattrs(false);
    let corrupt = |e: io::Error| StepError::new(format!("{what}: not a readable tar archive: {e}"));
    let mut ticker = Ticker::new();
    for entry in ar.entries().map_err(corrupt)? {
        if cx.cancel.is_cancelled() {
            return Err(StepError::new("interrupted"));
        }
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        let shown = path.display().to_string();
        let refuse = |why: String| {
            StepError::new(format!("{what}: refusing archive member `{shown}`: {why}"))
        };
        if let Some(why) = member_path_problem(&path) {
            return Err(refuse(why.into()));
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::GNUSparse | T::Directory => {}
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .unwrap_or_default()
                    .into_owned();
                if link_escapes(&path, &target) {
                    return Err(refuse(format!(
                        "a symbolic link to `{}`, outside the archive",
                        target.display()
                    )));
                }
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .unwrap_or_default()
                    .into_owned();
                if let Some(why) = member_path_problem(&target) {
                    return Err(refuse(format!(
                        "a hard link to `{}`: {why}",
                        target.display()
                    )));
                }
            }
            T::Char | T::Block => return Err(refuse("device files are not allowed".into())),
            T::Fifo => return Err(refuse("fifos are not allowed".into())),
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => return Err(refuse(format!("unsupported member type {other:?}"))),
        }
        if path.components().all(|c| c == Component::CurDir) {
            continue;
        }
        // unpack_in re-checks, by canonical path, that nothing is written through a link out of `dest`.
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(refuse("its path leaves the archive".into())),
            Err(e) => return Err(refuse(e.to_string())),
        }
        if ticker.due() {
            cx.progress.advance(read.load(Ordering::Relaxed), total);
        }
    }
    cx.progress.advance(total, total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch_dataset::testutil::*;

    #[test]
    fn links_are_judged_by_where_they_point() {
        assert!(!link_escapes(Path::new("a/b/l"), Path::new("../c")));
        assert!(!link_escapes(Path::new("a/l"), Path::new("..")));
        assert!(link_escapes(Path::new("a/l"), Path::new("../..")));
        assert!(link_escapes(Path::new("l"), Path::new("/etc/passwd")));
        assert!(link_escapes(Path::new("./l"), Path::new("x/../../y")));
    }

    #[test]
    fn a_plain_tar_without_a_telling_name_is_sniffed() {
        let wf = tempfile::tempdir().unwrap();
        let t = tempfile::tempdir().unwrap();
        msd_tree(t.path());
        let mut b = tar::Builder::new(File::create(wf.path().join("blob")).unwrap());
        b.append_dir_all(".", t.path()).unwrap();
        b.finish().unwrap();
        drop(b);
        let r = run(wf.path(), &[("source", "blob".into())]);
        r.result.as_ref().unwrap();
        assert_msd(&r.staging.out);
    }

    #[test]
    fn hostile_archives_are_refused() {
        use tar::EntryType as T;
        let cases: &[(&str, T, Option<&str>, &str)] = &[
            ("../evil", T::Regular, None, "`..` components"),
            ("imagesTr/../../evil", T::Regular, None, "`..` components"),
            ("/tmp/wf-evil-abs", T::Regular, None, "absolute paths"),
            (
                "escape",
                T::Symlink,
                Some("../../outside"),
                "outside the archive",
            ),
            (
                "abs-link",
                T::Symlink,
                Some("/etc/passwd"),
                "outside the archive",
            ),
            ("hard", T::Link, Some("../x"), "a hard link"),
            ("hard-abs", T::Link, Some("/etc/passwd"), "a hard link"),
            ("dev", T::Char, None, "device files"),
            ("pipe", T::Fifo, None, "fifos"),
            (
                "imagesTr/up",
                T::Symlink,
                Some(".."),
                "a link to a directory",
            ),
        ];
        for (name, kind, link, why) in cases {
            let wf = tempfile::tempdir().unwrap();
            raw_tar(&wf.path().join("x.tar"), name, *kind, *link);
            let r = run(wf.path(), &[("source", "x.tar".into())]);
            let e = err(&r);
            assert!(
                e.contains(&format!("refusing archive member `{name}`")),
                "{name}: {e}"
            );
            assert!(e.contains(why), "{name}: {e}");
            assert!(!wf.path().parent().unwrap().join("evil").exists());
        }
        assert!(!Path::new("/tmp/wf-evil-abs").exists());
    }

    #[test]
    fn a_link_escaping_through_another_link_is_refused() {
        use tar::EntryType as T;
        let wf = tempfile::tempdir().unwrap();
        // `a/l/m` looks like `a/m` by its text, but `a/l` is the root, so `m` lands beside `a`,
        // pointing above the extraction directory.
        raw_tar_n(
            &wf.path().join("x.tar"),
            &[
                ("a/", T::Directory, None),
                ("a/l", T::Symlink, Some("..")),
                ("a/l/m", T::Symlink, Some("..")),
            ],
        );
        let e = err(&run(wf.path(), &[("source", "x.tar".into())]));
        assert!(
            e.contains("refusing archive member `a/l`")
                || e.contains("refusing archive member `m`"),
            "{e}"
        );
    }

    #[test]
    fn a_link_inside_the_archive_is_materialized() {
        let wf = tempfile::tempdir().unwrap();
        raw_tar(
            &wf.path().join("x.tar"),
            "imagesTr/alias.nii.gz",
            tar::EntryType::Symlink,
            Some("BRATS_001.nii.gz"),
        );
        let r = run(wf.path(), &[("source", "x.tar".into())]);
        r.result.as_ref().unwrap();
        let alias = r.staging.out.join("imagesTr/alias.nii.gz");
        assert!(
            !fs::symlink_metadata(&alias)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(alias).unwrap(), "img1");
    }
}
