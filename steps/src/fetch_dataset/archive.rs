//! fetch-dataset's archives: telling tar and tar.gz apart (by name, else by content) and extracting
//! them safely. Absolute member paths, `..` components, links out of the archive (by their text, and
//! again by canonical path once extracted) and device or fifo members are refused, each naming the
//! member; links inside the archive become copies of what they point to.
//!
//! Extraction is bounded ([`Limits`], the `max_extract_bytes` / `max_extract_files` params): each
//! member's size is charged before it is written, hard links by their target's size, and links
//! replaced by copies by the copy's size, so a small archive cannot fill the disk. A gzip stream is
//! read to its end, past the tar's end-of-archive blocks, so its trailer (CRC-32 and length) is
//! always checked; a single `.gz` file that is not a tar is checked the same way. I/O errors keep
//! their cause (`No space left on device`), not only the member they happened on.

use flate2::read::MultiGzDecoder;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wf_engine::{Count, RunContext, StepError, Unit};

use super::source::file_name;
use super::tree::{Mode, find_msd_root, place, read_dir_sorted, transfer};
use super::{Ticker, io_step, no_dataset_json};

/// Most an archive may expand to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    /// Bytes of files written (`max_extract_bytes`).
    pub(super) bytes: u64,
    /// Members extracted (`max_extract_files`).
    pub(super) files: u64,
}

/// What an extraction has written so far, against its [`Limits`].
struct Budget<'a> {
    limits: Limits,
    what: &'a str,
    bytes: u64,
    files: u64,
    /// Sizes of the regular members, by normalized path: what a hard link to one adds.
    sizes: HashMap<PathBuf, u64>,
}

impl<'a> Budget<'a> {
    fn new(limits: Limits, what: &'a str) -> Self {
        Budget {
            limits,
            what,
            bytes: 0,
            files: 0,
            sizes: HashMap::new(),
        }
    }

    /// Counts `files` more members and `bytes` more bytes for `member`, refusing to pass a limit.
    fn charge(&mut self, member: &str, files: u64, bytes: u64) -> Result<(), StepError> {
        self.files += files;
        self.bytes = self.bytes.saturating_add(bytes);
        let over = |param: &str, limit: String| {
            StepError::new(format!(
                "{}: archive member `{member}` takes the extracted data to more than `{param}` ({limit}); raise `{param}` if the archive is what you expect",
                self.what
            ))
        };
        if self.files > self.limits.files {
            return Err(over("max_extract_files", self.limits.files.to_string()));
        }
        if self.bytes > self.limits.bytes {
            return Err(over(
                "max_extract_bytes",
                format!("{} bytes", self.limits.bytes),
            ));
        }
        Ok(())
    }

    fn bytes_left(&self) -> u64 {
        self.limits.bytes.saturating_sub(self.bytes)
    }
}

/// A member path without `.` components, as a link names its target.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// An error and its causes, `: `-joined: tar reports "failed to unpack `x`" and keeps the reason
/// (`No space left on device`) only as the error's source.
pub(super) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

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
    limits: &Limits,
) -> Result<(), StepError> {
    let kind = archive_kind(name, file).map_err(|e| io_step(file, e))?;
    if kind == Kind::Single {
        check_gzip(cx, file, what, limits)?;
        let dest = cx.out_dir.join(file_name(name));
        return transfer(file, &dest, mode);
    }
    let scratch = cx.scratch_dir.join("extract");
    fs::create_dir_all(&scratch).map_err(|e| io_step(&scratch, e))?;
    cx.progress.message(&format!("extracting {what}"));
    let mut budget = Budget::new(*limits, what);
    extract(cx, file, kind == Kind::TarGz, &scratch, &mut budget)?;
    let confine = fs::canonicalize(&scratch).map_err(|e| io_step(&scratch, e))?;
    // Links first, while every target is still where the archive put it, and before anything
    // (dataset.json included) is read through one.
    resolve_links(&scratch, &scratch, &confine, &mut budget)?;
    let root = find_msd_root(&scratch)?.ok_or_else(|| no_dataset_json(what))?;
    place(&root, cx.out_dir, Mode::Move, Some(&confine), 0)
}

/// Replaces each symbolic link under `dir` by a copy of the file it points to, refusing links that
/// resolve outside `confine` (the canonical extraction directory) — including those that only
/// escape through another link, which the check on the link's text cannot see — and links to
/// directories.
fn resolve_links(
    dir: &Path,
    base: &Path,
    confine: &Path,
    budget: &mut Budget<'_>,
) -> Result<(), StepError> {
    for e in read_dir_sorted(dir)? {
        let p = e.path();
        let ft = e.file_type().map_err(|err| io_step(&p, err))?;
        if ft.is_dir() {
            resolve_links(&p, base, confine, budget)?;
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
        // The copy is new data: a thousand links to one big member would be a thousand copies.
        budget.charge(&member, 0, meta.len())?;
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

/// Reads a gzip file to its end, so a damaged one fails here (CRC-32 or length), bounded by the
/// byte limit. Anything else passes as it is.
fn check_gzip(
    cx: &RunContext<'_>,
    file: &Path,
    what: &str,
    limits: &Limits,
) -> Result<(), StepError> {
    let mut head = [0u8; 2];
    let n = read_full(
        &mut File::open(file).map_err(|e| io_step(file, e))?,
        &mut head,
    )
    .map_err(|e| io_step(file, e))?;
    if head[..n] != [0x1f, 0x8b] {
        return Ok(());
    }
    let gz = MultiGzDecoder::new(BufReader::new(
        File::open(file).map_err(|e| io_step(file, e))?,
    ));
    let mut budget = Budget::new(*limits, what);
    drain(cx, gz, &mut budget, &file_name(what))
}

/// Reads `r` to its end (checking what a decoder checks there), charging the bytes to `budget`.
fn drain(
    cx: &RunContext<'_>,
    mut r: impl Read,
    budget: &mut Budget<'_>,
    member: &str,
) -> Result<(), StepError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cx.cancel.is_cancelled() {
            return Err(StepError::new("interrupted"));
        }
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StepError::new(format!(
                    "{}: {}",
                    budget.what,
                    with_causes(&e)
                )));
            }
        };
        budget.charge(member, 0, n as u64)?;
    }
}

fn extract(
    cx: &RunContext<'_>,
    archive: &Path,
    gz: bool,
    dest: &Path,
    budget: &mut Budget<'_>,
) -> Result<(), StepError> {
    let what = budget.what;
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
    let corrupt = |e: io::Error| {
        StepError::new(format!(
            "{what}: not a readable tar archive: {}",
            with_causes(&e)
        ))
    };
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
        // Charged before anything is written. A sparse member's size is what it expands to.
        let header = entry.header();
        let bytes = match header.entry_type() {
            T::Regular | T::Continuous => entry.size(),
            T::GNUSparse => header
                .as_gnu()
                .and_then(|g| g.real_size().ok())
                .unwrap_or(0)
                .max(entry.size()),
            T::Link => entry
                .link_name()
                .ok()
                .flatten()
                .and_then(|t| budget.sizes.get(&normalized(&t)).copied())
                .unwrap_or(0),
            _ => 0,
        };
        budget.charge(&shown, 1, bytes)?;
        if bytes > 0 && header.entry_type() != T::Link {
            budget.sizes.insert(normalized(&path), bytes);
        }
        // unpack_in re-checks, by canonical path, that nothing is written through a link out of `dest`.
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(refuse("its path leaves the archive".into())),
            Err(e) => {
                return Err(StepError::new(format!(
                    "{what}: extracting archive member `{shown}`: {}",
                    with_causes(&e)
                )));
            }
        }
        if ticker.due() {
            cx.progress
                .advance(Count::new(read.load(Ordering::Relaxed), total, Unit::Byte));
        }
    }
    if gz {
        // The tar ends before the gzip stream does: read on to its trailer, which checks the
        // CRC-32 and length of everything decompressed.
        let left = budget.bytes_left();
        let rest = ar.into_inner().take(left.saturating_add(1));
        drain(cx, rest, budget, "(after the end of the tar)")?;
    }
    cx.progress.advance(Count::new(total, total, Unit::Byte));
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

    /// The gzip trailer (CRC-32 and length) is checked, also past the tar's end-of-archive blocks.
    #[test]
    fn a_gzip_trailer_that_does_not_match_is_refused() {
        for at in [8, 4] {
            let wf = tempfile::tempdir().unwrap();
            let tgz = wf.path().join("Task01.tar.gz");
            msd_tar_gz(&tgz);
            let mut bytes = fs::read(&tgz).unwrap();
            let n = bytes.len();
            bytes[n - at] ^= 0x55;
            fs::write(&tgz, &bytes).unwrap();
            let e = err(&run(wf.path(), &[("source", "Task01.tar.gz".into())]));
            assert!(
                e.contains("Task01.tar.gz: corrupt gzip stream"),
                "byte {at} from the end: {e}"
            );
        }
    }

    /// A small tar.gz that expands to more than the limits is refused before it fills the disk.
    #[test]
    fn extraction_is_bounded_in_bytes_and_files() {
        let wf = tempfile::tempdir().unwrap();
        let tgz = wf.path().join("bomb.tar.gz");
        {
            let t = tempfile::tempdir().unwrap();
            msd_tree(t.path());
            fs::write(t.path().join("zeros"), vec![0u8; 8 << 20]).unwrap();
            let gz = flate2::write::GzEncoder::new(
                File::create(&tgz).unwrap(),
                flate2::Compression::best(),
            );
            let mut b = tar::Builder::new(gz);
            b.append_dir_all(".", t.path()).unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        assert!(fs::metadata(&tgz).unwrap().len() < 64 << 10);
        let e = err(&run(
            wf.path(),
            &[
                ("source", "bomb.tar.gz".into()),
                ("max_extract_bytes", (1u64 << 20).into()),
            ],
        ));
        assert!(
            e.contains("bomb.tar.gz: archive member `zeros`")
                && e.contains("more than `max_extract_bytes` (1048576 bytes)"),
            "{e}"
        );
        let e = err(&run(
            wf.path(),
            &[
                ("source", "bomb.tar.gz".into()),
                ("max_extract_files", 4.into()),
            ],
        ));
        assert!(e.contains("more than `max_extract_files` (4)"), "{e}");
        // Within the limits it extracts.
        run(wf.path(), &[("source", "bomb.tar.gz".into())])
            .result
            .unwrap();
    }

    /// Links copied out of one big member count against the limit too.
    #[test]
    fn materialized_links_count_against_the_limit() {
        use tar::EntryType as T;
        let wf = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..8).map(|i| format!("imagesTr/l{i}")).collect();
        let mut members: Vec<(&str, T, Option<&str>)> = names
            .iter()
            .map(|n| (n.as_str(), T::Symlink, Some("BRATS_001.nii.gz")))
            .collect();
        members.push(("imagesTr/h", T::Link, Some("imagesTr/BRATS_002.nii.gz")));
        raw_tar_n(&wf.path().join("x.tar"), &members);
        // The tree's files, plus 20 bytes: less than the 8 copies of `img1` (32 bytes).
        let tree: u64 = {
            let t = tempfile::tempdir().unwrap();
            msd_tree(t.path());
            let mut n = 0;
            for sub in ["", "imagesTr", "labelsTr", "imagesTs"] {
                for e in fs::read_dir(t.path().join(sub)).unwrap().flatten() {
                    let m = e.metadata().unwrap();
                    if m.is_file() {
                        n += m.len();
                    }
                }
            }
            n
        };
        let limit = tree + 20;
        let e = err(&run(
            wf.path(),
            &[
                ("source", "x.tar".into()),
                ("max_extract_bytes", limit.into()),
            ],
        ));
        assert!(e.contains("more than `max_extract_bytes`"), "{e}");
    }

    /// The reason an extraction failed (here "Not a directory"; ENOSPC alike) stays in the message.
    #[test]
    fn an_unpack_error_keeps_its_cause() {
        use tar::EntryType as T;
        let wf = tempfile::tempdir().unwrap();
        raw_tar_n(
            &wf.path().join("x.tar"),
            &[("f", T::Regular, None), ("f/g", T::Regular, None)],
        );
        let e = err(&run(wf.path(), &[("source", "x.tar".into())]));
        assert!(e.contains("archive member `f/g`"), "{e}");
        assert!(e.contains("(os error "), "{e}");
    }

    #[test]
    fn error_chains_are_spelled_out() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("failed to unpack `x`")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = io::Error::other(Outer(io::Error::from_raw_os_error(28)));
        assert_eq!(
            with_causes(&e),
            "failed to unpack `x`: No space left on device (os error 28)"
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
