//! A memo of local file digests keyed by (path, size, mtime, inode), so a no-op run over gigabytes of
//! declared `files:` stats them instead of re-reading them. Only ever short-cuts *local* input files;
//! outputs are identified by their manifests.
//!
//! Racy-clean guard (as git does): a file modified within the last 2 seconds is hashed but not
//! memoized, because a second write within the clock's granularity could keep size and mtime.
//! Stored as one text file, `<ino> <size> <mtime_ns> <blake3> <path>` per line, replaced atomically.

use crate::digest::FileDigest;
use crate::manifest::hash_file;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a `stat` says about a file's identity and content: the store records the same stamp for
/// each file of an artifact when it commits it (`Store::check_artifact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

pub struct Memo {
    file: PathBuf,
    entries: Mutex<(HashMap<PathBuf, (Stamp, FileDigest)>, bool)>,
}

impl Memo {
    /// Loads the memo (a missing or damaged memo is simply empty: it is only a cache of a cache).
    pub fn load(file: &Path) -> Memo {
        let mut map = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(file) {
            for line in text.lines() {
                let mut p = line.splitn(5, ' ');
                let parsed = (|| {
                    let ino = p.next()?.parse().ok()?;
                    let size = p.next()?.parse().ok()?;
                    let mtime_ns = p.next()?.parse().ok()?;
                    let digest = FileDigest::from_hex(p.next()?)?;
                    let path = PathBuf::from(p.next()?);
                    Some((
                        path,
                        (
                            Stamp {
                                ino,
                                size,
                                mtime_ns,
                            },
                            digest,
                        ),
                    ))
                })();
                if let Some((path, v)) = parsed {
                    map.insert(path, v);
                }
            }
        }
        Memo {
            file: file.to_path_buf(),
            entries: Mutex::new((map, false)),
        }
    }

    /// The digest of `path` (absolute), from the memo when its stamp is unchanged.
    pub fn digest(&self, path: &Path, meta: &std::fs::Metadata) -> std::io::Result<FileDigest> {
        let stamp = Stamp::of(meta);
        {
            let guard = self.entries.lock().expect("memo lock");
            if let Some((s, d)) = guard.0.get(path)
                && *s == stamp
            {
                return Ok(*d);
            }
        }
        let digest = hash_file(path)?;
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if now_ns - stamp.mtime_ns > 2_000_000_000 {
            let mut guard = self.entries.lock().expect("memo lock");
            guard.0.insert(path.to_path_buf(), (stamp, digest));
            guard.1 = true;
        }
        Ok(digest)
    }

    /// Writes the memo back if it changed (best effort: losing it only costs re-hashing).
    pub fn save(&self) {
        let guard = self.entries.lock().expect("memo lock");
        if !guard.1 {
            return;
        }
        let mut text = String::with_capacity(guard.0.len() * 120);
        for (path, (s, d)) in &guard.0 {
            let Some(p) = path.to_str().filter(|p| !p.contains('\n')) else {
                continue;
            };
            text.push_str(&format!("{} {} {} {} {p}\n", s.ino, s.size, s.mtime_ns, d));
        }
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = dir.join(format!(".memo.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &self.file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_hits_only_on_same_stamp() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a");
        std::fs::write(&f, b"one").unwrap();
        // Backdate so the racy guard allows memoizing.
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let memo = Memo::load(&t.path().join("memo"));
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(
            memo.digest(&f, &meta).unwrap(),
            FileDigest::of_bytes(b"one")
        );
        memo.save();
        let memo = Memo::load(&t.path().join("memo"));
        // Same stamp, different content on disk: the memo answers (that is the point of it).
        std::fs::write(&f, b"two").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            memo.digest(&f, &meta).unwrap(),
            FileDigest::of_bytes(b"one")
        );
        // A real modification changes the stamp and is re-hashed.
        let meta2 = std::fs::metadata(&f).unwrap();
        std::fs::write(&f, b"three!").unwrap();
        let meta3 = std::fs::metadata(&f).unwrap();
        assert_ne!(meta2.len(), meta3.len());
        assert_eq!(
            memo.digest(&f, &meta3).unwrap(),
            FileDigest::of_bytes(b"three!")
        );
    }
}
