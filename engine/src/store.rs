//! The local content-addressed store (the cache directory).
//!
//! ```text
//! <cache>/
//!   CACHEDIR.TAG                 marks a cache (backup tools and declared `files:` directories skip it)
//!   objects/ab/<blake3>[.x]      file contents, read-only, named by digest (`.x`: executable)
//!   manifests/ab/<artifact>.txt  canonical manifests (see manifest.rs)
//!   manifests/ab/<artifact>.stat stamps (inode, size, mtime) of the artifact's tree, taken at commit
//!   artifacts/<artifact>/        the artifact as a read-only tree of hard links to objects
//!   entries/ab/<key>.json        step key → artifact (and the input artifacts it was computed from):
//!                                THE commit point, written last, atomically
//!   runs/<workflow>/<step>.json  the last run of each step: its key components (for `wf plan`
//!                                reasons; URL credentials in params redacted, `redact.rs`) and how
//!                                it went (status, seconds, which `wf run`; for `wf report`)
//!   logs/<workflow>/<step>.log   the last log of each step
//!   memo/files-v1                local file digest memo (memo.rs)
//!   derived/<namespace>/         finer-grained caches managed by steps (e.g. one preprocessed case)
//!   tmp/                         staging of running steps; garbage after a crash
//!   locks/<key>.lock             one writer per key at a time
//!   gc.lock                      shared by runs, exclusive for `wf cache gc`
//! ```
//! A step's output is written to `tmp/`, and only after the step succeeded are its files moved into
//! `objects/`, its tree linked under `artifacts/`, and finally its entry renamed into `entries/`. A run
//! killed at any moment leaves at most unreferenced objects or staging directories (removed by gc),
//! never an entry pointing at missing or partial data. Two processes committing the same key produce
//! the same entry (each step is computed under its key's lock, and rechecked after taking it).
//!
//! What is not a function of the inputs stays out of the artifact: an entry records when it was
//! made, the warnings and the facts (timings) of the computation that made it, and a run record how
//! the last run of a step went. None of them is hashed, so early cutoff holds for a step whose
//! output is the same bytes whatever its run took.
//!
//! ## What the store guarantees about the bytes it serves
//! - **Commit stores only bytes it owns.** An output file with more than one link (`ln ~/notes.txt
//!   $WF_OUT/`) is copied into `objects/`, never adopted, so editing that file later cannot change a
//!   cached artifact, and its mode is left alone. (A file of `derived/` that a step linked in through
//!   [`Store::link_derived`] is the store's own and is adopted; so is a link to the very object.)
//!   Names that cannot round-trip through a manifest line (line breaks, not UTF-8) are refused.
//! - **No link to a damaged object.** An object already stored under the digest being committed is
//!   confirmed (hashed, unless it is the very file just hashed) before anything links to it; a
//!   damaged one is replaced, and an artifact tree that does not hold the confirmed bytes is rebuilt.
//! - **Inputs are checked before a step reads them.** [`Store::check_artifact`] compares every file
//!   and directory of an input's tree with the stamps taken at commit: one `stat` each, no hashing
//!   while they match. A file whose stamp differs is hashed; other bytes than committed fail the step,
//!   naming the file, so nothing is computed from them (the same bytes, e.g. after a `touch`, renew
//!   the stamp). This sees any change made through the file system: an edit as root, a replaced,
//!   added or removed file. A change that keeps size and mtime (a failing disk, `touch -r`) is
//!   invisible to a `stat`; `wf cache verify` finds it.
//! - **Repair heals.** `wf cache verify` re-hashes every object and tree an entry reaches. With
//!   `--repair` it removes damaged objects (and the `derived/` files that are the same file), trees
//!   and manifests, each entry whose artifact is damaged, and each entry whose recorded inputs
//!   include a damaged artifact (its output may have been computed from the damaged bytes). Entries
//!   further downstream stay: their keys name the digest of bytes that are intact, so they are
//!   right for their keys. An entry written before inputs were recorded takes them from the run
//!   record of its key (`runs/`) when there is one; otherwise, once damage has been found, it is
//!   removed as well, since nothing says what it read. Repair takes the store exclusively (no run
//!   may be using it). The next run recomputes what was removed.

use crate::artifact::ArtifactType;
use crate::digest::{ArtifactDigest, FileDigest, StepKey};
use crate::key::KeyComponents;
use crate::manifest::{self, Manifest, ManifestEntry, ManifestError};
use crate::memo::Stamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ENTRY_SCHEMA: u32 = 1;

/// The Cache Directory Tagging convention (<https://bford.info/cachedir/>): backup tools skip a
/// directory holding this file, and so does hashing a declared directory (`files: ["."]` must not
/// hash the cache that sits inside it).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";
const CACHEDIR_TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by wf (a workflow cache).\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";

/// Whether `dir` is tagged as a cache directory (by wf or any other tool).
pub fn is_cache_dir(dir: &Path) -> bool {
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    File::open(dir.join(CACHEDIR_TAG))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == CACHEDIR_SIGNATURE.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cache {}: entry {key} is damaged ({reason}); run `wf cache verify --repair`", path.display())]
    Damaged {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("cache {} is in use by a running `wf`; try again when it has finished", path.display())]
    Busy { path: PathBuf },
    /// Data brought in from elsewhere (a remote cache) does not match what it claims to be.
    #[error("cache {}: refusing imported data: {reason}", path.display())]
    Import { path: PathBuf, reason: String },
    /// A committed artifact's tree no longer holds the committed bytes (`check_artifact`).
    #[error("cache {}: artifact {artifact} changed on disk after it was cached: {problem}; run `wf cache verify --repair`, then run again", path.display())]
    Changed {
        path: PathBuf,
        artifact: String,
        /// The first problem, naming the file (and how many more there are).
        problem: String,
    },
    /// An output file linked from outside the output changed while commit copied it.
    #[error(
        "output file `{file}` changed while it was being committed (it is a link to a file outside the output); write a copy instead"
    )]
    OutputChanged { file: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who produced an entry (provenance for `wf cache ls`; not part of the key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    pub workflow: String,
    pub step: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub schema: u32,
    pub key: StepKey,
    pub kind: String,
    pub version: u32,
    pub output_type: ArtifactType,
    pub artifact: ArtifactDigest,
    pub files: usize,
    pub bytes: u64,
    pub created_unix: u64,
    pub producer: Producer,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the step reported about this computation (`Progress::fact`: timings, throughput).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: RunFacts,
    /// The artifacts the step read, by input slot (the digests its key holds), so that `wf cache
    /// verify --repair` finds the entries computed from a damaged artifact. `None` in entries
    /// written before inputs were recorded (see the header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<BTreeMap<String, ArtifactDigest>>,
}

/// Facts about a computation by name (`Progress::fact`), kept outside its artifact.
pub type RunFacts = BTreeMap<String, serde_json::Value>;

/// What a successful step said besides its output, committed with it into its entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepNotes {
    pub warnings: Vec<String>,
    pub facts: RunFacts,
}

/// The last run of a step: what its key was made of, and how it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub key: StepKey,
    pub components: KeyComponents,
    /// The output; `None` when the run failed.
    pub artifact: Option<ArtifactDigest>,
    /// Absent in records written before outcomes were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
}

/// How the last run of a step went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The `wf run` it belongs to (`exec::run` names each run), so a report can tell the steps of
    /// the last run from those an earlier run left.
    pub run: String,
    /// `ran`, `cached` or `failed`.
    pub status: crate::exec::Status,
    /// Wall time of the step in that run (a cached step: its lookup).
    pub seconds: f64,
    pub finished_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A staging area for one step attempt.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub scratch: PathBuf,
    pub log: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// A key's lock file ([`Store::key_lock`]); once taken, the lock is held until this is dropped.
#[derive(Debug)]
pub struct KeyLock {
    file: File,
    path: PathBuf,
}

impl KeyLock {
    /// Takes the lock unless another process holds it.
    pub fn try_take(&self) -> Result<bool, StoreError> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&self.path)(e)),
        }
    }
}

pub struct Store {
    root: PathBuf,
    /// Shared lock on gc.lock for the life of the store (a gc takes it exclusively).
    _gc_guard: Option<File>,
    /// (device, inode) of the `derived/` files that steps of this process linked into an output
    /// (`link_derived`): commit adopts these instead of copying them.
    derived_links: Mutex<HashSet<(u64, u64)>>,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) a store for running: holds a shared lock against gc.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let mut store = Store::open_unlocked(root)?;
        let lock_path = store.root.join("gc.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        f.lock_shared().map_err(io_err(&lock_path))?;
        store._gc_guard = Some(f);
        Ok(store)
    }

    fn open_unlocked(root: &Path) -> Result<Store, StoreError> {
        for sub in [
            "objects",
            "manifests",
            "artifacts",
            "entries",
            "runs",
            "logs",
            "memo",
            "tmp",
            "locks",
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        // Best effort: a read-only cache can still be read.
        let tag = root.join(CACHEDIR_TAG);
        if !tag.exists() {
            let _ = write_atomic(&tag, CACHEDIR_TAG_TEXT.as_bytes(), false);
        }
        Ok(Store {
            root,
            _gc_guard: None,
            derived_links: Mutex::new(HashSet::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn memo_path(&self) -> PathBuf {
        self.root.join("memo").join("files-v1")
    }

    pub fn artifact_path(&self, d: &ArtifactDigest) -> PathBuf {
        self.root.join("artifacts").join(d.to_hex())
    }

    fn entry_path(&self, key: &StepKey) -> PathBuf {
        let h = key.to_hex();
        self.root
            .join("entries")
            .join(&h[..2])
            .join(format!("{h}.json"))
    }

    fn manifest_path(&self, d: &ArtifactDigest) -> PathBuf {
        let h = d.to_hex();
        self.root
            .join("manifests")
            .join(&h[..2])
            .join(format!("{h}.txt"))
    }

    fn stamps_path(&self, d: &ArtifactDigest) -> PathBuf {
        let h = d.to_hex();
        self.root
            .join("manifests")
            .join(&h[..2])
            .join(format!("{h}.stat"))
    }

    fn object_path(&self, d: &FileDigest, executable: bool) -> PathBuf {
        let h = d.to_hex();
        let name = if executable {
            format!("{h}.x")
        } else {
            h.clone()
        };
        self.root.join("objects").join(&h[..2]).join(name)
    }

    /// The stored file holding the bytes of a manifest entry (for publishing them elsewhere).
    pub fn object_file(&self, e: &ManifestEntry) -> PathBuf {
        self.object_path(&e.digest, e.executable)
    }

    /// The manifest's files whose bytes are not stored yet, each (digest, executable) once.
    pub fn missing_objects<'m>(&self, manifest: &'m Manifest) -> Vec<&'m ManifestEntry> {
        let mut seen = std::collections::HashSet::new();
        manifest
            .entries
            .iter()
            .filter(|e| seen.insert((e.digest, e.executable)) && !self.object_file(e).exists())
            .collect()
    }

    /// Adds a downloaded file as the object of `e` after checking its size and digest; `src` is
    /// moved (it should lie inside this store, e.g. in a staging area).
    pub fn add_object(&self, src: &Path, e: &ManifestEntry) -> Result<(), StoreError> {
        let size = fs::metadata(src).map_err(io_err(src))?.len();
        let digest = manifest::hash_file(src).map_err(io_err(src))?;
        if size != e.size || digest != e.digest {
            return Err(StoreError::Import {
                path: self.root.clone(),
                reason: format!(
                    "`{}` arrived with {} and digest {}, its manifest says {} and {}",
                    e.path,
                    crate::plural(size, "byte"),
                    digest.short(),
                    crate::plural(e.size, "byte"),
                    e.digest.short()
                ),
            });
        }
        self.put_object(src, &e.digest, e.executable, None)
    }

    /// Stores an artifact whose objects are all present (see `add_object`): its manifest and its
    /// read-only tree. Returns the tree's path.
    pub fn add_artifact(&self, manifest: &Manifest) -> Result<PathBuf, StoreError> {
        if let Some(e) = self.missing_objects(manifest).first() {
            return Err(StoreError::Import {
                path: self.root.clone(),
                reason: format!("`{}` was not downloaded", e.path),
            });
        }
        let artifact = manifest.digest();
        self.put_manifest(manifest, &artifact)?;
        let staging = self.stage("import")?;
        self.materialize(manifest, &artifact, &staging.dir, default_threads())?;
        self.write_stamps(manifest, &artifact)?;
        Ok(self.artifact_path(&artifact))
    }

    /// Records an artifact's manifest without its objects, for a process whose inputs live elsewhere
    /// (`wf worker` reading SageMaker-mounted inputs): `manifest()` then finds it. Creates no entry.
    pub fn add_manifest(&self, manifest: &Manifest) -> Result<ArtifactDigest, StoreError> {
        let artifact = manifest.digest();
        self.put_manifest(manifest, &artifact)?;
        Ok(artifact)
    }

    /// Commits an entry computed elsewhere (a remote cache) whose objects are all stored already:
    /// the manifest must hash to the entry's artifact. Written in the same order as `commit`.
    pub fn import(&self, entry: &Entry, manifest: &Manifest) -> Result<Entry, StoreError> {
        let refuse = |reason: String| StoreError::Import {
            path: self.root.clone(),
            reason,
        };
        if entry.schema != ENTRY_SCHEMA {
            return Err(refuse(format!(
                "entry {} has schema {}, this build reads {ENTRY_SCHEMA}",
                entry.key.short(),
                entry.schema
            )));
        }
        if manifest.digest() != entry.artifact {
            return Err(refuse(format!(
                "the manifest of entry {} does not hash to its artifact {}",
                entry.key.short(),
                entry.artifact.short()
            )));
        }
        self.add_artifact(manifest)?;
        let text = serde_json::to_string_pretty(entry).expect("entries serialize");
        write_atomic(&self.entry_path(&entry.key), text.as_bytes(), true)?;
        Ok(entry.clone())
    }

    /// A directory for a step kind's own finer-grained cache (e.g. per-case preprocessing). The step
    /// names files by a key of its own and writes them with [`write_atomic`] or a rename from
    /// [`Store::stage`], so readers never see a partial file. `wf cache gc --older-than` removes files
    /// there not used for that long (a step refreshes a file's mtime when it reuses it).
    pub fn derived_dir(&self, namespace: &str) -> PathBuf {
        self.root.join("derived").join(namespace)
    }

    /// Hard-links a file of a [`Store::derived_dir`] into a step's output (copies where a link is
    /// impossible). Commit then adopts that file as its object rather than copying it, because it
    /// is the store's own; any other output file with more than one link is copied (see `commit`).
    pub fn link_derived(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        if fs::hard_link(from, to).is_err() {
            fs::copy(from, to)?;
            return Ok(());
        }
        if from.starts_with(self.root.join("derived")) {
            let meta = fs::symlink_metadata(to)?;
            self.derived_links
                .lock()
                .expect("derived links lock")
                .insert((meta.dev(), meta.ino()));
        }
        Ok(())
    }

    pub fn log_path(&self, workflow: &str, step: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(workflow)
            .join(format!("{step}.log"))
    }

    /// The committed entry for `key`, if any (and if its artifact is present).
    pub fn lookup(&self, key: &StepKey) -> Result<Option<Entry>, StoreError> {
        let path = self.entry_path(key);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let entry: Entry = serde_json::from_str(&text).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            key: key.to_hex(),
            reason: e.to_string(),
        })?;
        if entry.key != *key || entry.schema != ENTRY_SCHEMA {
            return Ok(None);
        }
        if !self.artifact_path(&entry.artifact).is_dir() {
            return Ok(None);
        }
        // Remember the use, for `gc --older-than` (best effort).
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some(entry))
    }

    /// The lock file of `key`, not yet taken: one computation per key across processes. The caller
    /// waits by retrying [`KeyLock::try_take`], so that it can give up when its run is stopped.
    pub fn key_lock(&self, key: &StepKey) -> Result<KeyLock, StoreError> {
        let path = self
            .root
            .join("locks")
            .join(format!("{}.lock", key.to_hex()));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(KeyLock { file, path })
    }

    /// A fresh staging area: an empty `out/`, a `scratch/`, and a log file.
    pub fn stage(&self, label: &str) -> Result<Staging, StoreError> {
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let safe: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = self
            .root
            .join("tmp")
            .join(format!("{safe}-{}-{n}-{nanos}", std::process::id()));
        let out = dir.join("out");
        let scratch = dir.join("scratch");
        fs::create_dir_all(&out).map_err(io_err(&out))?;
        fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
        let log = dir.join("step.log");
        File::create(&log).map_err(io_err(&log))?;
        Ok(Staging {
            dir,
            out,
            scratch,
            log,
        })
    }

    /// Moves a successful step's output into the store and commits `key` → artifact. Stored objects
    /// are confirmed before they are linked, and a file linked from outside the output is copied
    /// (see the header).
    pub fn commit(
        &self,
        staging: &Staging,
        key: &StepKey,
        components: &KeyComponents,
        output_type: ArtifactType,
        producer: Producer,
        notes: StepNotes,
        threads: usize,
    ) -> Result<Entry, StoreError> {
        let files = manifest::list_files(&staging.out)?;
        let paths: Vec<PathBuf> = files.iter().map(|(_, p, _)| p.clone()).collect();
        let digests = manifest::hash_files(&paths, threads);
        let mut staged = Vec::with_capacity(files.len());
        for ((rel, path, meta), digest) in files.iter().zip(digests) {
            let digest = digest.map_err(io_err(path))?;
            staged.push((rel, path, meta, digest, manifest::is_executable(meta)));
        }
        // Objects stored already are confirmed before anything links to them, hashed in parallel
        // (object path → intact). The very file just hashed needs no second look.
        let mut known: HashMap<PathBuf, bool> = HashMap::new();
        let mut to_hash: Vec<(PathBuf, FileDigest)> = Vec::new();
        let mut seen = HashSet::new();
        for &(_, _, meta, digest, executable) in &staged {
            let dst = self.object_path(&digest, executable);
            if !seen.insert(dst.clone()) {
                continue;
            }
            match fs::symlink_metadata(&dst) {
                Ok(m) if same_file(&m, meta) => {
                    known.insert(dst, true);
                }
                Ok(_) => to_hash.push((dst, digest)),
                Err(_) => {}
            }
        }
        let hash_paths: Vec<PathBuf> = to_hash.iter().map(|(p, _)| p.clone()).collect();
        for ((path, digest), found) in to_hash
            .into_iter()
            .zip(manifest::hash_files(&hash_paths, threads))
        {
            known.insert(path, found.ok() == Some(digest));
        }
        let mut entries = Vec::with_capacity(staged.len());
        for (rel, path, meta, digest, executable) in staged {
            let dst = self.object_path(&digest, executable);
            if known.get(&dst) != Some(&true) {
                let adopt = meta.nlink() <= 1
                    || self
                        .derived_links
                        .lock()
                        .expect("derived links lock")
                        .contains(&(meta.dev(), meta.ino()));
                if adopt {
                    self.put_object(path, &digest, executable, Some(meta))?;
                } else {
                    // Linked from elsewhere (a user's file): store a copy, never the file itself.
                    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
                    let copy = staging.dir.join(format!("copy-{n}"));
                    let copied = manifest::copy_hashing(path, &copy).map_err(io_err(path))?;
                    if copied != digest {
                        return Err(StoreError::OutputChanged { file: rel.clone() });
                    }
                    let copy_meta = fs::symlink_metadata(&copy).map_err(io_err(&copy))?;
                    self.put_object(&copy, &digest, executable, Some(&copy_meta))?;
                }
                known.insert(dst, true);
            }
            entries.push(ManifestEntry {
                path: rel.clone(),
                size: meta.len(),
                digest,
                executable,
            });
        }
        let manifest = Manifest { entries };
        let artifact = manifest.digest();
        self.put_manifest(&manifest, &artifact)?;
        self.materialize(&manifest, &artifact, &staging.dir, threads)?;
        self.write_stamps(&manifest, &artifact)?;
        let entry = Entry {
            schema: ENTRY_SCHEMA,
            key: *key,
            kind: components.kind.clone(),
            version: components.version,
            output_type,
            artifact,
            files: manifest.entries.len(),
            bytes: manifest.total_bytes(),
            created_unix: now_unix(),
            producer,
            warnings: notes.warnings,
            facts: notes.facts,
            inputs: Some(components.inputs.clone()),
        };
        let path = self.entry_path(key);
        let text = serde_json::to_string_pretty(&entry).expect("entries serialize");
        write_atomic(&path, text.as_bytes(), true)?;
        Ok(entry)
    }

    /// Makes `src`, a file of this store that hashes to `digest` (`meta`: its metadata, if known),
    /// the object of `digest`, unless an intact object is there already. A damaged object is
    /// replaced.
    fn put_object(
        &self,
        src: &Path,
        digest: &FileDigest,
        executable: bool,
        meta: Option<&fs::Metadata>,
    ) -> Result<(), StoreError> {
        let dst = self.object_path(digest, executable);
        if let Ok(found) = fs::symlink_metadata(&dst) {
            let intact = meta.is_some_and(|m| same_file(&found, m))
                || manifest::hash_file(&dst).ok() == Some(*digest);
            if intact {
                return Ok(()); // the same bytes are stored; the staging copy goes with the staging dir
            }
            tracing::warn!("replacing damaged object {}", dst.display());
        }
        let parent = dst.parent().expect("object paths have a parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let mode = if executable { 0o555 } else { 0o444 };
        fs::set_permissions(src, fs::Permissions::from_mode(mode)).map_err(io_err(src))?;
        fs::rename(src, &dst).map_err(io_err(&dst))
    }

    fn put_manifest(
        &self,
        manifest: &Manifest,
        artifact: &ArtifactDigest,
    ) -> Result<(), StoreError> {
        let path = self.manifest_path(artifact);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, manifest.canonical_text().as_bytes(), false)
    }

    /// Builds `artifacts/<digest>/` from hard links to objects (copies where links are impossible).
    /// An existing tree is kept only if it holds the objects' bytes (the objects themselves, or
    /// copies that hash right) and nothing else; otherwise it is rebuilt.
    fn materialize(
        &self,
        manifest: &Manifest,
        artifact: &ArtifactDigest,
        staging: &Path,
        threads: usize,
    ) -> Result<(), StoreError> {
        let target = self.artifact_path(artifact);
        let stale = target.is_dir();
        if stale && self.tree_intact(manifest, &target, threads) {
            return Ok(());
        }
        let tree = staging.join("tree");
        fs::create_dir_all(&tree).map_err(io_err(&tree))?;
        let mut dirs = vec![tree.clone()];
        for e in &manifest.entries {
            let dst = tree.join(&e.path);
            let parent = dst.parent().expect("tree paths have a parent");
            if !parent.is_dir() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
                let mut p = parent.to_path_buf();
                while p != tree && !dirs.contains(&p) {
                    dirs.push(p.clone());
                    p = p.parent().expect("inside tree").to_path_buf();
                }
            }
            let obj = self.object_path(&e.digest, e.executable);
            if fs::hard_link(&obj, &dst).is_err() {
                fs::copy(&obj, &dst).map_err(io_err(&dst))?;
                let mode = if e.executable { 0o555 } else { 0o444 };
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&dst))?;
            }
        }
        // Read-only view (deepest directories first so parents can still be written meanwhile).
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            fs::set_permissions(d, fs::Permissions::from_mode(0o555)).map_err(io_err(d))?;
        }
        if stale {
            // Moved aside rather than deleted in place, so the rebuilt tree appears in one rename.
            let old = staging.join("stale-tree");
            if fs::rename(&target, &old).is_ok() {
                remove_tree(&old);
            }
        }
        match fs::rename(&tree, &target) {
            Ok(()) => Ok(()),
            // Another process materialized the same artifact first, from the same confirmed
            // objects: keep theirs.
            Err(_) if target.is_dir() => {
                remove_tree(&tree);
                Ok(())
            }
            Err(e) => Err(StoreError::Io {
                path: target,
                source: e,
            }),
        }
    }

    /// Whether the tree at `tree` holds exactly the manifest's files with its bytes: a file that is
    /// the object itself (same inode) is as good as the object, others are hashed.
    fn tree_intact(&self, manifest: &Manifest, tree: &Path, threads: usize) -> bool {
        let mut copies = Vec::new();
        let mut digests = Vec::new();
        for e in &manifest.entries {
            let path = tree.join(&e.path);
            let Ok(found) = fs::symlink_metadata(&path) else {
                return false;
            };
            let object = fs::symlink_metadata(self.object_path(&e.digest, e.executable));
            if !found.is_file() {
                return false;
            }
            if !object.is_ok_and(|o| same_file(&o, &found)) {
                copies.push(path);
                digests.push(e.digest);
            }
        }
        let hashed = manifest::hash_files(&copies, threads);
        hashed
            .into_iter()
            .zip(digests)
            .all(|(h, d)| h.ok() == Some(d))
            && manifest::list_files(tree).is_ok_and(|l| l.len() == manifest.entries.len())
    }

    /// Records the stamp of every file and directory of an artifact's tree, for `check_artifact`.
    /// Called once the tree is known to hold the committed bytes.
    fn write_stamps(
        &self,
        manifest: &Manifest,
        artifact: &ArtifactDigest,
    ) -> Result<(), StoreError> {
        let tree = self.artifact_path(artifact);
        let mut text = String::with_capacity(32 + manifest.entries.len() * 80);
        text.push_str(STAMPS_TAG);
        text.push('\n');
        for rel in tree_paths(manifest) {
            let path = tree.join(&rel);
            let s = Stamp::of(&fs::symlink_metadata(&path).map_err(io_err(&path))?);
            text.push_str(&format!("{} {} {} {rel}\n", s.ino, s.size, s.mtime_ns));
        }
        write_atomic(&self.stamps_path(artifact), text.as_bytes(), false)
    }

    /// Confirms, before a step reads it, that an artifact's tree is as committed: one `stat` per
    /// file and directory against the stamps taken at commit. Files whose stamp differs are hashed
    /// (the same bytes renew the stamp); a changed directory (a file added or removed) or missing
    /// stamps (an artifact stored by an older version) has the whole tree hashed once. Fails with
    /// [`StoreError::Changed`], naming the file, when the bytes are not the committed ones.
    pub fn check_artifact(
        &self,
        artifact: &ArtifactDigest,
        threads: usize,
    ) -> Result<(), StoreError> {
        let tree = self.artifact_path(artifact);
        let stamps = fs::read_to_string(self.stamps_path(artifact))
            .ok()
            .and_then(|t| parse_stamps(&t));
        let Some(stamps) = stamps else {
            return self.recheck(artifact, None, threads);
        };
        let mut changed = Vec::new();
        for (rel, stamp) in &stamps {
            match fs::symlink_metadata(tree.join(rel)) {
                Ok(m) if Stamp::of(&m) == *stamp => {}
                Ok(m) if m.is_file() && !rel.ends_with('/') => changed.push(rel.as_str()),
                _ => return self.recheck(artifact, None, threads),
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.recheck(artifact, Some(&changed), threads)
    }

    /// Hashes the files `only` names (all of them, and counts them, when `None`) against the
    /// manifest; stamps the tree anew when they match.
    fn recheck(
        &self,
        artifact: &ArtifactDigest,
        only: Option<&[&str]>,
        threads: usize,
    ) -> Result<(), StoreError> {
        let changed = |problem: String| StoreError::Changed {
            path: self.root.clone(),
            artifact: artifact.short(),
            problem,
        };
        let manifest = self.manifest(artifact)?;
        let tree = self.artifact_path(artifact);
        let mut problems = Vec::new();
        let checked: Vec<&ManifestEntry> = match only {
            Some(files) => {
                let listed: HashSet<&str> =
                    manifest.entries.iter().map(|e| e.path.as_str()).collect();
                for f in files.iter().filter(|f| !listed.contains(*f)) {
                    problems.push(format!("`{f}` is not part of the artifact"));
                }
                let files: HashSet<&str> = files.iter().copied().collect();
                manifest
                    .entries
                    .iter()
                    .filter(|e| files.contains(e.path.as_str()))
                    .collect()
            }
            None => manifest.entries.iter().collect(),
        };
        let paths: Vec<PathBuf> = checked.iter().map(|e| tree.join(&e.path)).collect();
        for (e, found) in checked.iter().zip(manifest::hash_files(&paths, threads)) {
            match found {
                Ok(d) if d == e.digest => {}
                Ok(_) => problems.push(format!(
                    "`{}` holds other bytes than were committed",
                    e.path
                )),
                Err(err) => problems.push(format!("`{}`: {err}", e.path)),
            }
        }
        if only.is_none() {
            match manifest::list_files(&tree) {
                Ok(listed) if listed.len() != manifest.entries.len() => problems.push(format!(
                    "it holds {}, {} committed",
                    crate::plural(listed.len(), "file"),
                    manifest.entries.len()
                )),
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        match problems.len() {
            0 => self.write_stamps(&manifest, artifact),
            1 => Err(changed(problems.remove(0))),
            n => Err(changed(format!("{} (and {} more)", problems[0], n - 1))),
        }
    }

    pub fn manifest(&self, artifact: &ArtifactDigest) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(artifact);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        Manifest::parse(&text).ok_or_else(|| StoreError::Damaged {
            path: path.clone(),
            key: artifact.to_hex(),
            reason: "unparseable manifest".into(),
        })
    }

    fn run_path(&self, workflow: &str, step: &str) -> PathBuf {
        self.root
            .join("runs")
            .join(workflow)
            .join(format!("{step}.json"))
    }

    pub fn save_run(
        &self,
        workflow: &str,
        step: &str,
        record: &RunRecord,
    ) -> Result<(), StoreError> {
        // The record is for people (`wf plan` reasons): credentials in URL params stay out of it.
        let mut record = record.clone();
        record.components.params = crate::redact::params_text(&record.components.params);
        if let Some(error) = record.outcome.as_mut().and_then(|o| o.error.as_mut()) {
            *error = crate::redact::text(error).into_owned();
        }
        let text = serde_json::to_string_pretty(&record).expect("run records serialize");
        write_atomic(&self.run_path(workflow, step), text.as_bytes(), false)
    }

    pub fn last_run(&self, workflow: &str, step: &str) -> Option<RunRecord> {
        let text = fs::read_to_string(self.run_path(workflow, step)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Keeps the step's log for later reading (`logs/<workflow>/<step>.log`).
    pub fn keep_log(&self, staging: &Staging, workflow: &str, step: &str) -> Option<PathBuf> {
        let dst = self.log_path(workflow, step);
        fs::create_dir_all(dst.parent()?).ok()?;
        fs::rename(&staging.log, &dst)
            .or_else(|_| fs::copy(&staging.log, &dst).map(|_| ()))
            .ok()?;
        Some(dst)
    }

    /// Every committed entry (unreadable ones are skipped; `verify` reports them).
    pub fn entries(&self) -> Vec<(PathBuf, Result<Entry, String>)> {
        let mut out = Vec::new();
        let root = self.root.join("entries");
        for shard in read_dir_sorted(&root) {
            for path in read_dir_sorted(&shard) {
                if path.extension().is_some_and(|e| e == "json") {
                    let parsed = fs::read_to_string(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|t| serde_json::from_str::<Entry>(&t).map_err(|e| e.to_string()));
                    out.push((path, parsed));
                }
            }
        }
        out
    }

    /// Re-hashes everything reachable from entries, each artifact once. With `repair`, damaged
    /// objects, trees and manifests are removed with every entry that uses them or was computed from
    /// them (see the header), so the next run recomputes them. Repair refuses (Busy) while any `wf
    /// run` holds the store open.
    pub fn verify(&self, repair: bool, threads: usize) -> Result<VerifyReport, StoreError> {
        let guard = self._gc_guard.as_ref().filter(|_| repair);
        if let Some(g) = guard
            && g.try_lock().is_err()
        {
            // A failed conversion may have dropped the shared lock: take it back.
            let _ = g.lock_shared();
            return Err(StoreError::Busy {
                path: self.root.clone(),
            });
        }
        let result = self.verify_locked(repair, threads);
        if let Some(g) = guard {
            let _ = g.lock_shared();
        }
        result
    }

    fn verify_locked(&self, repair: bool, threads: usize) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut checks: HashMap<ArtifactDigest, ArtifactCheck> = HashMap::new();
        let mut listed = Vec::new();
        for (path, entry) in self.entries() {
            report.entries += 1;
            let mut problems = Vec::new();
            match &entry {
                Err(e) => problems.push(format!("unreadable entry: {e}")),
                Ok(entry) => {
                    if path.file_stem().and_then(|s| s.to_str())
                        != Some(entry.key.to_hex().as_str())
                    {
                        problems.push("file name does not match its key".into());
                    }
                    let check = checks
                        .entry(entry.artifact)
                        .or_insert_with(|| self.verify_artifact(&entry.artifact, threads));
                    problems.extend(check.problems.iter().cloned());
                }
            }
            listed.push((path, entry.ok(), problems));
        }
        report.files_checked = checks.values().map(|c| c.files_checked).sum();
        let damaged: HashSet<ArtifactDigest> = checks
            .iter()
            .filter(|(_, c)| !c.problems.is_empty())
            .map(|(a, _)| *a)
            .collect();
        // Entries computed from a damaged artifact go too. Entries without recorded inputs take
        // them from the run record of their key; without either, nothing says what they read.
        if !damaged.is_empty() {
            let recorded = self.run_record_inputs();
            for (_, entry, problems) in &mut listed {
                let Some(entry) = entry.as_ref().filter(|_| problems.is_empty()) else {
                    continue;
                };
                match entry.inputs.as_ref().or_else(|| recorded.get(&entry.key)) {
                    Some(inputs) => {
                        for (slot, a) in inputs.iter().filter(|(_, a)| damaged.contains(a)) {
                            problems.push(format!(
                                "computed from damaged artifact {} (input `{slot}`)",
                                a.short()
                            ));
                        }
                    }
                    None => problems.push(
                        "written before entries recorded their inputs, so it may have been computed from a damaged artifact"
                            .into(),
                    ),
                }
            }
        }
        for (path, _, problems) in &listed {
            if problems.is_empty() {
                continue;
            }
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("?")
                .to_string();
            for p in problems {
                report
                    .problems
                    .push(format!("entry {}: {p}", &name[..name.len().min(12)]));
            }
            if repair {
                fs::remove_file(path).map_err(io_err(path))?;
                report.removed += 1;
            }
        }
        if repair {
            // A damaged object adopted from `derived/` is that derived file too: it goes as well,
            // or the step would link the damaged bytes into its next output.
            let mut linked = HashSet::new();
            for (artifact, check) in checks.iter().filter(|(_, c)| !c.problems.is_empty()) {
                for object in &check.damaged_objects {
                    if let Ok(m) = fs::symlink_metadata(object)
                        && m.nlink() > 1
                    {
                        linked.insert((m.dev(), m.ino()));
                    }
                    if fs::remove_file(object).is_ok() {
                        report.objects_removed += 1;
                    }
                }
                remove_tree(&self.artifact_path(artifact));
                let _ = fs::remove_file(self.stamps_path(artifact));
                if check.manifest_damaged {
                    let _ = fs::remove_file(self.manifest_path(artifact));
                }
            }
            if !linked.is_empty() {
                remove_inodes(&self.root.join("derived"), &linked);
            }
        }
        Ok(report)
    }

    /// Input digests by step key, from the run records (for entries that do not record theirs).
    fn run_record_inputs(&self) -> HashMap<StepKey, BTreeMap<String, ArtifactDigest>> {
        let mut out = HashMap::new();
        for dir in read_dir_sorted(&self.root.join("runs")) {
            for path in read_dir_sorted(&dir) {
                if let Some(r) = fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<RunRecord>(&t).ok())
                {
                    out.insert(r.key, r.components.inputs);
                }
            }
        }
        out
    }

    fn verify_artifact(&self, artifact: &ArtifactDigest, threads: usize) -> ArtifactCheck {
        let mut check = ArtifactCheck::default();
        let manifest = match self.manifest(artifact) {
            Ok(m) if m.digest() == *artifact => m,
            Ok(_) => {
                check.manifest_damaged = true;
                check
                    .problems
                    .push("manifest does not hash to the artifact digest".into());
                return check;
            }
            Err(e) => {
                check.manifest_damaged = true;
                check
                    .problems
                    .push(format!("manifest missing or damaged: {e}"));
                return check;
            }
        };
        let mut seen = HashSet::new();
        let objects: Vec<(&ManifestEntry, PathBuf)> = manifest
            .entries
            .iter()
            .map(|e| (e, self.object_path(&e.digest, e.executable)))
            .filter(|(_, p)| seen.insert(p.clone()))
            .collect();
        let paths: Vec<PathBuf> = objects.iter().map(|(_, p)| p.clone()).collect();
        for ((e, p), d) in objects.iter().zip(manifest::hash_files(&paths, threads)) {
            match d {
                Ok(d) if d == e.digest => {}
                Ok(_) => {
                    check.problems.push(format!(
                        "object {} of `{}` has different content",
                        p.display(),
                        e.path
                    ));
                    check.damaged_objects.push(p.clone());
                }
                Err(err) => {
                    check
                        .problems
                        .push(format!("object {} of `{}`: {err}", p.display(), e.path))
                }
            }
        }
        check.files_checked = paths.len() + manifest.entries.len();
        check.problems.extend(manifest::verify_tree(
            &self.artifact_path(artifact),
            &manifest,
            threads,
        ));
        check
    }

    /// Removes garbage: staging directories, locks, and objects/manifests/artifacts that no entry
    /// references. With `older_than`, entries unused for that long are removed first.
    /// Refuses (Busy) while any `wf run` holds the store open.
    pub fn gc(root: &Path, older_than: Option<Duration>) -> Result<GcReport, StoreError> {
        let store = Store::open_unlocked(root)?;
        let lock_path = store.root.join("gc.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Busy {
                path: store.root.clone(),
            });
        }
        let mut report = GcReport::default();
        let mut live_artifacts = std::collections::HashSet::new();
        for (path, entry) in store.entries() {
            let age = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            let expired = matches!((older_than, age), (Some(limit), Some(age)) if age > limit);
            match entry {
                Ok(e) if !expired => {
                    live_artifacts.insert(e.artifact);
                }
                _ => {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    report.entries_removed += 1;
                }
            }
        }
        let mut live_objects = std::collections::HashSet::new();
        for a in &live_artifacts {
            if let Ok(m) = store.manifest(a) {
                for e in m.entries {
                    live_objects.insert(store.object_path(&e.digest, e.executable));
                }
            }
        }
        for dir in read_dir_sorted(&store.root.join("artifacts")) {
            let live = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(ArtifactDigest::from_hex)
                .is_some_and(|d| live_artifacts.contains(&d));
            if !live {
                remove_tree(&dir);
                report.artifacts_removed += 1;
            }
        }
        for shard in read_dir_sorted(&store.root.join("manifests")) {
            for path in read_dir_sorted(&shard) {
                let live = path
                    .file_stem()
                    .and_then(|n| n.to_str())
                    .and_then(ArtifactDigest::from_hex)
                    .is_some_and(|d| live_artifacts.contains(&d));
                if !live {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for shard in read_dir_sorted(&store.root.join("objects")) {
            for path in read_dir_sorted(&shard) {
                if !live_objects.contains(&path) {
                    report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let _ = fs::remove_file(&path);
                    report.objects_removed += 1;
                }
            }
        }
        if let Some(limit) = older_than {
            report.derived_removed += remove_older(&store.root.join("derived"), limit);
        }
        for path in read_dir_sorted(&store.root.join("tmp")) {
            remove_tree(&path);
            report.staging_removed += 1;
        }
        for path in read_dir_sorted(&store.root.join("locks")) {
            let _ = fs::remove_file(&path);
        }
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub entries: usize,
    pub files_checked: usize,
    pub problems: Vec<String>,
    /// Entries removed by a repair.
    pub removed: usize,
    /// Damaged objects removed by a repair.
    pub objects_removed: usize,
}

/// What `verify` found about one artifact.
#[derive(Debug, Default)]
struct ArtifactCheck {
    problems: Vec<String>,
    /// Objects whose bytes do not hash to their name.
    damaged_objects: Vec<PathBuf>,
    manifest_damaged: bool,
    files_checked: usize,
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub entries_removed: usize,
    pub artifacts_removed: usize,
    pub objects_removed: usize,
    pub staging_removed: usize,
    pub derived_removed: usize,
    pub bytes_freed: u64,
}

/// Removes the files under `dir` that are one of `inodes` (device, inode).
fn remove_inodes(dir: &Path, inodes: &HashSet<(u64, u64)>) {
    for path in read_dir_sorted(dir) {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_inodes(&path, inodes),
            Ok(m) if inodes.contains(&(m.dev(), m.ino())) => {
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

/// Removes files under `dir` whose modification time is older than `limit`; returns how many.
fn remove_older(dir: &Path, limit: Duration) -> usize {
    let mut n = 0;
    for path in read_dir_sorted(dir) {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => n += remove_older(&path, limit),
            Ok(m)
                if m.modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > limit)
                    && fs::remove_file(&path).is_ok() =>
            {
                n += 1;
            }
            _ => {}
        }
    }
    n
}

/// First line of a stamps file; then `<inode> <size> <mtime_ns> <path>` per file and directory of
/// the tree (directories end in `/`, the tree itself is `./`), in `tree_paths` order.
const STAMPS_TAG: &str = "wf-stamps-v1";

/// The tree's directories (`./` and `d/`) and files, in a stable order.
fn tree_paths(manifest: &Manifest) -> Vec<String> {
    let mut dirs = BTreeSet::new();
    for e in &manifest.entries {
        let mut p = e.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if !dirs.insert(format!("{p}/")) {
                break;
            }
        }
    }
    let mut out = vec!["./".to_string()];
    out.extend(dirs);
    out.extend(manifest.entries.iter().map(|e| e.path.clone()));
    out
}

fn parse_stamps(text: &str) -> Option<Vec<(String, Stamp)>> {
    let mut lines = text.split_terminator('\n');
    if lines.next()? != STAMPS_TAG {
        return None;
    }
    lines
        .map(|line| {
            let mut p = line.splitn(4, ' ');
            let ino = p.next()?.parse().ok()?;
            let size = p.next()?.parse().ok()?;
            let mtime_ns = p.next()?.parse().ok()?;
            let rel = p.next()?.to_string();
            Some((
                rel,
                Stamp {
                    ino,
                    size,
                    mtime_ns,
                },
            ))
        })
        .collect()
}

/// Whether two stats are of the same file (hard links to one inode).
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Writes `path` via a unique temporary file and a rename, so readers see the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    let parent = path.parent().expect("store paths have a parent");
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(
        ".{}.{}.{n}.tmp",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    if durable {
        f.sync_all().map_err(io_err(&tmp))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if durable && let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes a tree, making read-only directories writable first (artifact views are 0555).
pub fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn unlock(p: &Path) {
        if let Ok(meta) = fs::symlink_metadata(p)
            && meta.is_dir()
        {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                unlock(&e.path());
            }
        }
    }
    unlock(path);
    let _ = fs::remove_dir_all(path);
}

/// Age for `gc --older-than`.
pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KEY_SCHEMA;
    use std::io::{Read, Seek};

    fn components(params: &str, inputs: &[(&str, ArtifactDigest)]) -> KeyComponents {
        KeyComponents {
            schema: KEY_SCHEMA,
            kind: "t".into(),
            version: 1,
            params: params.into(),
            seed: None,
            inputs: inputs.iter().map(|(s, d)| (s.to_string(), *d)).collect(),
            files: BTreeMap::new(),
            external: None,
        }
    }

    /// Commits `files` (path, contents) as the output of a step with `params` and `inputs`.
    fn commit(
        store: &Store,
        params: &str,
        inputs: &[(&str, ArtifactDigest)],
        files: &[(&str, &str)],
    ) -> Result<Entry, StoreError> {
        let st = store.stage("t").unwrap();
        for (path, text) in files {
            let p = st.out.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        commit_staged(store, &st, params, inputs)
    }

    /// Commits what `st` holds as a Files artifact of a step whose params are `params`.
    fn commit_staged(
        store: &Store,
        st: &Staging,
        params: &str,
        inputs: &[(&str, ArtifactDigest)],
    ) -> Result<Entry, StoreError> {
        let c = components(params, inputs);
        let producer = Producer {
            workflow: "w".into(),
            step: params.into(),
        };
        store.commit(
            st,
            &c.key(),
            &c,
            ArtifactType::Files,
            producer,
            Default::default(),
            2,
        )
    }

    /// Flips the first byte of a (read-only) file in place: same inode, same size. With
    /// `keep_mtime`, its modification time is put back too.
    fn flip_first_byte(path: &Path, keep_mtime: bool) {
        let meta = fs::metadata(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = File::options().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact(&mut b).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&[b[0] ^ 1]).unwrap();
        if keep_mtime {
            f.set_modified(meta.modified().unwrap()).unwrap();
        }
        fs::set_permissions(path, meta.permissions()).unwrap();
    }

    fn object_of(store: &Store, e: &Entry, path: &str) -> PathBuf {
        let m = store.manifest(&e.artifact).unwrap();
        store.object_file(m.entries.iter().find(|x| x.path == path).unwrap())
    }

    #[test]
    fn commit_replaces_a_damaged_object_instead_of_linking_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        let object = object_of(&store, &a, "data.txt");
        flip_first_byte(&object, true);
        // The same bytes again (a forced rerun): the object and the tree hold them afterwards.
        let again = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        assert_eq!(again.artifact, a.artifact);
        assert_eq!(fs::read_to_string(&object).unwrap(), "one\n");
        let tree = store.artifact_path(&a.artifact).join("data.txt");
        assert_eq!(fs::read_to_string(tree).unwrap(), "one\n");
        let report = store.verify(false, 1).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        store.check_artifact(&a.artifact, 1).unwrap();
    }

    #[test]
    fn an_output_linked_to_an_outside_file_is_copied() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("cache")).unwrap();
        let mine = t.path().join("notes.txt");
        fs::write(&mine, "mine\n").unwrap();
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o640)).unwrap();
        let st = store.stage("t").unwrap();
        fs::hard_link(&mine, st.out.join("v")).unwrap();
        let e = commit_staged(&store, &st, "link", &[]).unwrap();
        let meta = fs::metadata(&mine).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let object = fs::metadata(object_of(&store, &e, "v")).unwrap();
        assert_ne!(object.ino(), meta.ino());
        fs::write(&mine, "edited\n").unwrap();
        assert!(store.verify(false, 1).unwrap().problems.is_empty());
    }

    #[test]
    fn a_derived_file_linked_in_is_adopted_and_repaired_with_its_object() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let derived = store.derived_dir("t");
        fs::create_dir_all(&derived).unwrap();
        fs::write(derived.join("x"), "sample").unwrap();
        let st = store.stage("t").unwrap();
        store
            .link_derived(&derived.join("x"), &st.out.join("x"))
            .unwrap();
        let e = commit_staged(&store, &st, "derived", &[]).unwrap();
        let object = object_of(&store, &e, "x");
        let ino = fs::metadata(&object).unwrap().ino();
        assert_eq!(ino, fs::metadata(derived.join("x")).unwrap().ino());

        // Damaged, the object and the derived file are one: repair removes both.
        flip_first_byte(&object, true);
        let report = store.verify(true, 1).unwrap();
        assert_eq!(report.objects_removed, 1);
        assert!(!derived.join("x").exists());
    }

    #[test]
    fn a_name_with_a_line_break_is_refused_at_commit() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let err = commit(&store, "crlf", &[], &[("sub/out.txt\r", "x")]).unwrap_err();
        assert!(err.to_string().contains("`sub/out.txt\\r`"), "{err}");
        assert!(store.entries().is_empty());
    }

    #[test]
    fn check_artifact_sees_changed_bytes_and_forgives_a_touch() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = commit(&store, "a", &[], &[("d/data.txt", "one\n"), ("b", "2")]).unwrap();
        store.check_artifact(&a.artifact, 1).unwrap();
        let file = store.artifact_path(&a.artifact).join("d/data.txt");

        // Only the mtime changed: the bytes are hashed, found right, and stamped anew.
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        store.check_artifact(&a.artifact, 1).unwrap();
        let stamps = fs::read_to_string(store.stamps_path(&a.artifact)).unwrap();
        let meta = fs::metadata(&file).unwrap();
        assert!(
            stamps.contains(&format!("{} d/data.txt", Stamp::of(&meta).mtime_ns)),
            "{stamps}"
        );

        flip_first_byte(&file, false);
        let err = store.check_artifact(&a.artifact, 1).unwrap_err();
        assert!(matches!(err, StoreError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("`d/data.txt`"), "{err}");
    }

    #[test]
    fn check_artifact_sees_an_added_file_and_hashes_unstamped_artifacts() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        // Stored by an older version: no stamps. The tree is hashed once, then stamped.
        fs::remove_file(store.stamps_path(&a.artifact)).unwrap();
        store.check_artifact(&a.artifact, 1).unwrap();
        assert!(store.stamps_path(&a.artifact).is_file());

        let tree = store.artifact_path(&a.artifact);
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(tree.join("extra"), "x").unwrap();
        let err = store.check_artifact(&a.artifact, 1).unwrap_err();
        assert!(
            err.to_string().contains("holds 2 files, 1 committed"),
            "{err}"
        );
    }

    #[test]
    fn repair_removes_the_damaged_object_and_the_entries_computed_from_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        let c = commit(&store, "c", &[("src", a.artifact)], &[("out", "c")]).unwrap();
        let d = commit(&store, "d", &[("src", c.artifact)], &[("out", "d")]).unwrap();
        let other = commit(&store, "other", &[], &[("x", "x")]).unwrap();
        let object = object_of(&store, &a, "data.txt");
        flip_first_byte(&object, true);

        let report = store.verify(true, 1).unwrap();
        assert_eq!(report.removed, 2, "{:?}", report.problems);
        assert_eq!(report.objects_removed, 1);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("computed from damaged artifact")),
            "{:?}",
            report.problems
        );
        assert!(!object.exists());
        assert!(!store.artifact_path(&a.artifact).exists());
        assert!(store.lookup(&a.key).unwrap().is_none());
        assert!(store.lookup(&c.key).unwrap().is_none());
        // `d` read `c`'s intact bytes: right for its key, kept. So is the unrelated entry.
        assert!(store.lookup(&d.key).unwrap().is_some());
        assert!(store.lookup(&other.key).unwrap().is_some());
        assert!(store.verify(false, 1).unwrap().problems.is_empty());

        // Recomputing stores the object afresh.
        let again = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        assert_eq!(again.artifact, a.artifact);
        assert!(store.verify(false, 1).unwrap().problems.is_empty());
    }

    #[test]
    fn repair_of_entries_without_inputs_uses_run_records_or_removes_them() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        let b = commit(&store, "b", &[], &[("b", "b")]).unwrap();
        let c = commit(&store, "c", &[("src", b.artifact)], &[("out", "c")]).unwrap();
        let unknown = commit(&store, "u", &[], &[("u", "u")]).unwrap();
        // Entries as an older version wrote them: no `inputs`. A run record knows `c`'s.
        for e in [&c, &unknown] {
            let mut old = e.clone();
            old.inputs = None;
            let text = serde_json::to_string_pretty(&old).unwrap();
            assert!(!text.contains("inputs"));
            write_atomic(&store.entry_path(&e.key), text.as_bytes(), false).unwrap();
        }
        let record = RunRecord {
            key: c.key,
            components: components("c", &[("src", b.artifact)]),
            artifact: Some(c.artifact),
            outcome: None,
        };
        store.save_run("w", "c", &record).unwrap();

        // No damage: entries without inputs are left alone.
        assert!(store.verify(true, 1).unwrap().problems.is_empty());
        flip_first_byte(&object_of(&store, &a, "data.txt"), true);
        let report = store.verify(true, 1).unwrap();
        // `a` (damaged) and `u` (unknown inputs) go; `c` read `b`, which is intact.
        assert_eq!(report.removed, 2, "{:?}", report.problems);
        assert!(store.lookup(&c.key).unwrap().is_some());
        assert!(store.lookup(&unknown.key).unwrap().is_none());
    }

    #[test]
    fn an_entry_written_without_inputs_still_loads() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = commit(&store, "a", &[], &[("data.txt", "one\n")]).unwrap();
        let text = format!(
            r#"{{
  "schema": 1,
  "key": "{}",
  "kind": "t",
  "version": 1,
  "output_type": "Files",
  "artifact": "{}",
  "files": 1,
  "bytes": 4,
  "created_unix": 1700000000,
  "producer": {{ "workflow": "w", "step": "a" }}
}}"#,
            a.key, a.artifact
        );
        write_atomic(&store.entry_path(&a.key), text.as_bytes(), false).unwrap();
        let e = store.lookup(&a.key).unwrap().unwrap();
        assert_eq!(e.inputs, None);
        assert_eq!(e.artifact, a.artifact);
    }

    #[test]
    fn repair_refuses_while_a_run_holds_the_store() {
        let t = tempfile::tempdir().unwrap();
        let _run = Store::open(t.path()).unwrap();
        let store = Store::open(t.path()).unwrap();
        assert!(matches!(
            store.verify(true, 1),
            Err(StoreError::Busy { .. })
        ));
        assert!(store.verify(false, 1).is_ok());
    }

    /// A run record is for people: credentials in a failure's message stay out of it, as in params.
    #[test]
    fn run_records_keep_outcomes_without_credentials() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let c = components("{\"source\":\"https://u:secret@h/x.tar\"}", &[]);
        let record = RunRecord {
            key: c.key(),
            components: c,
            artifact: None,
            outcome: Some(RunOutcome {
                run: "r".into(),
                status: crate::exec::Status::Failed,
                seconds: 1.5,
                finished_unix: 7,
                error: Some("GET https://u:secret@h/x.tar: 404".into()),
            }),
        };
        store.save_run("w", "s", &record).unwrap();
        let text = fs::read_to_string(store.run_path("w", "s")).unwrap();
        assert!(!text.contains("secret"), "{text}");
        let back = store.last_run("w", "s").unwrap();
        let outcome = back.outcome.unwrap();
        assert_eq!(
            (outcome.status, outcome.seconds),
            (crate::exec::Status::Failed, 1.5)
        );
        assert!(outcome.error.unwrap().starts_with("GET https://"));
        // A record written before outcomes were kept still reads.
        let old = text.replace("\"outcome\"", "\"unused\"");
        fs::write(store.run_path("w", "s"), old).unwrap();
        assert!(store.last_run("w", "s").unwrap().outcome.is_none());
    }
}
