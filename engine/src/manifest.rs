//! Merkle manifests: an artifact (a directory tree) is identified by the digest of a canonical listing
//! of its files (`wf-manifest-v1`): one line per regular file, sorted by path,
//! `<blake3 hex> <size> <x|-> <relative/path>`. Empty directories are not part of an artifact.
//! Symbolic links and other special files are refused, so an artifact is always plain bytes.

use crate::digest::{ArtifactDigest, FileDigest};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const MANIFEST_TAG: &str = "wf-manifest-v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative path with `/` separators.
    pub path: String,
    pub size: u64,
    pub digest: FileDigest,
    pub executable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: outputs must be regular files and directories; this is a symbolic link or special file", path.display())]
    NotRegular { path: PathBuf },
    /// A name a manifest line cannot hold: not UTF-8, or with a line break (`\n`, `\r`), which
    /// would not survive the round trip through the canonical text.
    #[error(
        "output file `{name}`: file names must be UTF-8 without line breaks (a manifest holds one file per line); rename it"
    )]
    BadName {
        path: PathBuf,
        /// The path relative to the listed root, with control characters escaped.
        name: String,
    },
}

impl Manifest {
    pub fn canonical_text(&self) -> String {
        let mut s = String::with_capacity(64 + self.entries.len() * 100);
        s.push_str(MANIFEST_TAG);
        s.push('\n');
        for e in &self.entries {
            let x = if e.executable { 'x' } else { '-' };
            s.push_str(&format!("{} {} {x} {}\n", e.digest, e.size, e.path));
        }
        s
    }

    pub fn digest(&self) -> ArtifactDigest {
        ArtifactDigest::of_manifest(self.canonical_text().as_bytes())
    }

    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Parses `canonical_text` back (lines end at `\n` only, so a path keeps every other byte).
    pub fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.split_terminator('\n');
        if lines.next()? != MANIFEST_TAG {
            return None;
        }
        let mut entries = Vec::new();
        for line in lines {
            let mut parts = line.splitn(4, ' ');
            let digest = FileDigest::from_hex(parts.next()?)?;
            let size = parts.next()?.parse().ok()?;
            let executable = match parts.next()? {
                "x" => true,
                "-" => false,
                _ => return None,
            };
            let path = parts.next()?.to_string();
            entries.push(ManifestEntry {
                path,
                size,
                digest,
                executable,
            });
        }
        Some(Manifest { entries })
    }
}

/// Lists every regular file under `root` (sorted by relative path). Fails on links and special files.
pub fn list_files(root: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, ManifestError> {
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
) -> Result<(), ManifestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .filter(|n| !n.contains(['\n', '\r']))
            .ok_or_else(|| ManifestError::BadName {
                path: path.clone(),
                name: escaped_rel(prefix, &name.to_string_lossy()),
            })?;
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if meta.is_dir() {
            walk(&path, &rel, out)?;
        } else if meta.is_file() {
            out.push((rel, path, meta));
        } else {
            return Err(ManifestError::NotRegular { path });
        }
    }
    Ok(())
}

/// `prefix/name` for messages, with line breaks and other control characters escaped.
fn escaped_rel(prefix: &str, name: &str) -> String {
    let name: String = name.chars().flat_map(char::escape_debug).collect();
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// BLAKE3 of a file's bytes (memory-mapped reads are not worth a dependency here: 1 MiB buffers
/// reach the same speed on the files we see).
pub fn hash_file(path: &Path) -> std::io::Result<FileDigest> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(FileDigest::from_bytes(*hasher.finalize().as_bytes()))
}

/// Copies `src` to a new file `dst` and returns the BLAKE3 of the bytes written, read once: what is
/// stored is exactly what was hashed, even if `src` changes meanwhile.
pub fn copy_hashing(src: &Path, dst: &Path) -> std::io::Result<FileDigest> {
    use std::io::Write;
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::File::create_new(dst)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    Ok(FileDigest::from_bytes(*hasher.finalize().as_bytes()))
}

pub fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Hashes many files on up to `threads` threads, keeping order.
pub fn hash_files(paths: &[PathBuf], threads: usize) -> Vec<std::io::Result<FileDigest>> {
    let threads = threads.clamp(1, 16).min(paths.len().max(1));
    if threads <= 1 || paths.len() < 4 {
        return paths.iter().map(|p| hash_file(p)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<std::io::Result<FileDigest>>>> =
        paths.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= paths.len() {
                        break;
                    }
                    *results[i].lock().expect("no panics while hashing") =
                        Some(hash_file(&paths[i]));
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("unpoisoned")
                .expect("every slot filled")
        })
        .collect()
}

/// Checks that the tree at `root` holds exactly the manifest's files with the manifest's contents.
/// Returns one message per problem (empty when the tree matches).
pub fn verify_tree(root: &Path, manifest: &Manifest, threads: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let paths: Vec<PathBuf> = manifest
        .entries
        .iter()
        .map(|e| root.join(&e.path))
        .collect();
    for ((e, p), d) in manifest
        .entries
        .iter()
        .zip(&paths)
        .zip(hash_files(&paths, threads))
    {
        match d {
            Ok(d) if d == e.digest => {}
            Ok(_) => problems.push(format!(
                "{}: content differs from the manifest",
                p.display()
            )),
            Err(err) => problems.push(format!("{}: {err}", p.display())),
        }
    }
    match list_files(root) {
        Ok(listed) if listed.len() != manifest.entries.len() => problems.push(format!(
            "{}: holds {}, the manifest lists {}",
            root.display(),
            crate::plural(listed.len(), "file"),
            manifest.entries.len()
        )),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_roundtrip_and_digest() {
        let m = Manifest {
            entries: vec![
                ManifestEntry {
                    path: "a.txt".into(),
                    size: 3,
                    digest: FileDigest::of_bytes(b"abc"),
                    executable: false,
                },
                ManifestEntry {
                    path: "d/run.sh".into(),
                    size: 0,
                    digest: FileDigest::of_bytes(b""),
                    executable: true,
                },
            ],
        };
        let text = m.canonical_text();
        assert_eq!(Manifest::parse(&text), Some(m.clone()));
        assert_eq!(m.digest(), ArtifactDigest::of_manifest(text.as_bytes()));
    }

    #[test]
    fn symlinks_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let err = list_files(t.path()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn names_with_line_breaks_are_refused_with_the_name_escaped() {
        for (name, shown) in [("out.txt\r", "`d/out.txt\\r`"), ("a\nb", "`d/a\\nb`")] {
            let t = tempfile::tempdir().unwrap();
            std::fs::create_dir(t.path().join("d")).unwrap();
            std::fs::write(t.path().join("d").join(name), b"x").unwrap();
            let err = list_files(t.path()).unwrap_err();
            assert!(matches!(err, ManifestError::BadName { .. }), "{err}");
            assert!(err.to_string().contains(shown), "{err}");
        }
    }

    #[test]
    fn a_path_ending_in_a_carriage_return_round_trips() {
        let m = Manifest {
            entries: vec![ManifestEntry {
                path: "a\r".into(),
                size: 1,
                digest: FileDigest::of_bytes(b"x"),
                executable: false,
            }],
        };
        assert_eq!(Manifest::parse(&m.canonical_text()), Some(m));
    }
}
