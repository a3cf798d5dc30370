//! The local content-addressed store (the cache directory).
//!
//! ```text
//! <cache>/
//!   objects/ab/<blake3>[.x]      file contents, read-only, named by digest (`.x`: executable)
//!   manifests/ab/<artifact>.txt  canonical manifests (see manifest.rs)
//!   artifacts/<artifact>/        the artifact as a read-only tree of hard links to objects
//!   entries/ab/<key>.json        step key → artifact: THE commit point, written last, atomically
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

use crate::artifact::ArtifactType;
use crate::digest::{ArtifactDigest, FileDigest, StepKey};
use crate::key::KeyComponents;
use crate::manifest::{self, Manifest, ManifestEntry, ManifestError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ENTRY_SCHEMA: u32 = 1;

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
    pub facts: Facts,
}

/// Facts about a computation by name (`Progress::fact`), kept outside its artifact.
pub type Facts = BTreeMap<String, serde_json::Value>;

/// What a successful step said besides its output, committed with it into its entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepNotes {
    pub warnings: Vec<String>,
    pub facts: Facts,
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

/// Holds a key's lock until dropped.
#[derive(Debug)]
pub struct KeyLock(#[allow(dead_code)] File);

pub struct Store {
    root: PathBuf,
    /// Shared lock on gc.lock for the life of the store (a gc takes it exclusively).
    _gc_guard: Option<File>,
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
        Ok(Store {
            root,
            _gc_guard: None,
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
                    "`{}` arrived with {size} bytes and digest {}, its manifest says {} bytes and {}",
                    e.path,
                    digest.short(),
                    e.size,
                    e.digest.short()
                ),
            });
        }
        self.put_object(src, &e.digest, e.executable)
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
        self.materialize(manifest, &artifact, &staging.dir)?;
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

    /// Blocks until this process is the only one computing `key`.
    pub fn lock_key(&self, key: &StepKey) -> Result<KeyLock, StoreError> {
        let path = self
            .root
            .join("locks")
            .join(format!("{}.lock", key.to_hex()));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(KeyLock(f))
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

    /// Moves a successful step's output into the store and commits `key` → artifact.
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
        let mut entries = Vec::with_capacity(files.len());
        for ((rel, path, meta), digest) in files.iter().zip(digests) {
            let digest = digest.map_err(io_err(path))?;
            let executable = manifest::is_executable(meta);
            self.put_object(path, &digest, executable)?;
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
        self.materialize(&manifest, &artifact, &staging.dir)?;
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
        };
        let path = self.entry_path(key);
        let text = serde_json::to_string_pretty(&entry).expect("entries serialize");
        write_atomic(&path, text.as_bytes(), true)?;
        Ok(entry)
    }

    fn put_object(
        &self,
        src: &Path,
        digest: &FileDigest,
        executable: bool,
    ) -> Result<(), StoreError> {
        let dst = self.object_path(digest, executable);
        if dst.exists() {
            return Ok(()); // the same bytes are already stored; the staging copy goes with the staging dir
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
    fn materialize(
        &self,
        manifest: &Manifest,
        artifact: &ArtifactDigest,
        staging: &Path,
    ) -> Result<(), StoreError> {
        let target = self.artifact_path(artifact);
        if target.is_dir() {
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
        match fs::rename(&tree, &target) {
            Ok(()) => Ok(()),
            // Another process materialized the same artifact first: identical content, keep theirs.
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

    /// Re-hashes everything reachable from entries. With `repair`, damaged entries are removed so the
    /// next run recomputes them.
    pub fn verify(&self, repair: bool, threads: usize) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for (path, entry) in self.entries() {
            report.entries += 1;
            let problems = match entry {
                Err(e) => vec![format!("unreadable entry: {e}")],
                Ok(entry) => self.verify_entry(&entry, &path, threads, &mut report),
            };
            if !problems.is_empty() {
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
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    report.removed += 1;
                }
            }
        }
        Ok(report)
    }

    fn verify_entry(
        &self,
        entry: &Entry,
        path: &Path,
        threads: usize,
        report: &mut VerifyReport,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if path.file_stem().and_then(|s| s.to_str()) != Some(entry.key.to_hex().as_str()) {
            problems.push("file name does not match its key".into());
        }
        let manifest = match self.manifest(&entry.artifact) {
            Ok(m) => m,
            Err(e) => return vec![format!("manifest missing or damaged: {e}")],
        };
        if manifest.digest() != entry.artifact {
            problems.push("manifest does not hash to the artifact digest".into());
        }
        let objects: Vec<PathBuf> = manifest
            .entries
            .iter()
            .map(|e| self.object_path(&e.digest, e.executable))
            .collect();
        for ((e, p), d) in manifest
            .entries
            .iter()
            .zip(&objects)
            .zip(manifest::hash_files(&objects, threads))
        {
            match d {
                Ok(d) if d == e.digest => {}
                Ok(_) => problems.push(format!(
                    "object {} of `{}` has different content",
                    p.display(),
                    e.path
                )),
                Err(err) => problems.push(format!("object {} of `{}`: {err}", p.display(), e.path)),
            }
        }
        report.files_checked += 2 * manifest.entries.len();
        problems.extend(manifest::verify_tree(
            &self.artifact_path(&entry.artifact),
            &manifest,
            threads,
        ));
        problems
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
    pub removed: usize,
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
