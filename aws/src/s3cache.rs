//! The S3 layer of the cache (`cache: s3://bucket/prefix`): the engine's `RemoteCache` over the
//! layout of the cloud contract (`wf_engine::cloud::layout`, docs/cloud.md §2), shared by local
//! runs, other checkouts, and `wf worker` inside jobs. Objects first, then the manifest, the tree,
//! and the entry last: a reader that finds an entry finds everything it references. Downloads are
//! checked against the manifest's digests before they enter the local store.

use crate::s3::Bucket;
use crate::{AwsError, Blocking};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wf_engine::cloud::{S3Url, layout};
use wf_engine::manifest::{Manifest, ManifestEntry};
use wf_engine::store::{Entry, Store};
use wf_engine::{ArtifactDigest, RemoteCache, RemoteError, StepKey};

/// Requests in flight at once while moving an artifact's files.
const PARALLEL: usize = 16;

pub struct S3Cache {
    url: S3Url,
    bucket: Bucket,
    rt: Blocking,
}

impl S3Cache {
    /// Connects and checks that the bucket exists. `region`: e.g. `targets.aws.region`.
    /// `s3://bucket` alone means the prefix `wf-cache` (docs/cloud.md §1).
    pub fn open(url: &str, region: Option<&str>) -> Result<S3Cache, AwsError> {
        // `S3Url::parse` names a missing scheme; `cache` fills in the default prefix.
        let url = if url.starts_with("s3://") {
            S3Url::cache(url)
        } else {
            S3Url::parse(url)
        }
        .map_err(AwsError::Invalid)?;
        let rt = Blocking::new()?;
        let aws = rt.block_on(crate::client::Aws::load(
            region,
            crate::client::Credentials::Default,
        ));
        let bucket = Bucket::new(&aws, &url.bucket);
        rt.block_on(bucket.check())?;
        Ok(S3Cache { url, bucket, rt })
    }

    /// Writes every object with SSE-KMS under `key` from now on (`targets.aws.kms_key_id`).
    pub fn with_kms(mut self, key: Option<String>) -> S3Cache {
        self.bucket = self.bucket.with_kms(key);
        self
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    pub fn entry_key(&self, key: &StepKey) -> String {
        self.url.key(&layout::entry(key))
    }

    pub fn manifest_key(&self, a: &ArtifactDigest) -> String {
        self.url.key(&layout::manifest(a))
    }

    pub fn object_key(&self, e: &ManifestEntry) -> String {
        self.url.key(&layout::object(&e.digest))
    }

    pub fn tree_prefix(&self, a: &ArtifactDigest) -> String {
        self.url.key(&layout::tree(a))
    }

    async fn entry(&self, key: &StepKey) -> Result<Option<Entry>, AwsError> {
        let k = self.entry_key(key);
        let Some(bytes) = self.bucket.get(&k).await? else {
            return Ok(None);
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| {
            AwsError::Invalid(format!(
                "s3://{}/{k}: unreadable entry: {e}",
                self.bucket.name
            ))
        })?;
        if entry.key != *key || entry.schema != wf_engine::store::ENTRY_SCHEMA {
            return Ok(None);
        }
        Ok(Some(entry))
    }

    async fn manifest(&self, a: &ArtifactDigest) -> Result<Manifest, AwsError> {
        let k = self.manifest_key(a);
        let missing = || {
            AwsError::Invalid(format!(
                "s3://{}/{k}: the manifest of a committed entry is missing or damaged",
                self.bucket.name
            ))
        };
        let bytes = self.bucket.get(&k).await?.ok_or_else(missing)?;
        let m = std::str::from_utf8(&bytes)
            .ok()
            .and_then(Manifest::parse)
            .ok_or_else(missing)?;
        if m.digest() != *a {
            return Err(missing());
        }
        Ok(m)
    }

    /// Downloads `entry`'s artifact into `store` and commits it there.
    pub fn fetch_entry(&self, entry: &Entry, store: &Store) -> Result<Entry, AwsError> {
        let (manifest, _) = self.fetch_artifact(&entry.artifact, store)?;
        Ok(store.import(entry, &manifest)?)
    }

    /// Downloads an artifact (its manifest and the objects `store` lacks, each checked against its
    /// digest) into `store`; returns the manifest and the local tree.
    pub fn fetch_artifact(
        &self,
        artifact: &ArtifactDigest,
        store: &Store,
    ) -> Result<(Manifest, PathBuf), AwsError> {
        let manifest = self.rt.block_on(self.manifest(artifact))?;
        let missing: Vec<ManifestEntry> = store
            .missing_objects(&manifest)
            .into_iter()
            .cloned()
            .collect();
        let staging = store.stage("s3-fetch")?;
        let jobs: Vec<(String, PathBuf)> = missing
            .iter()
            .map(|e| (self.object_key(e), staging.scratch.join(e.digest.to_hex())))
            .collect();
        self.rt.block_on(run_all(jobs.clone(), {
            let bucket = self.bucket.clone();
            move |(key, path)| {
                let bucket = bucket.clone();
                async move { bucket.download(&key, &path).await.map(|_| ()) }
            }
        }))?;
        for (e, (_, path)) in missing.iter().zip(&jobs) {
            store.add_object(path, e)?;
        }
        let path = store.add_artifact(&manifest)?;
        Ok((manifest, path))
    }

    /// The manifest of an artifact in the cache, checked against its digest (blocking).
    pub fn manifest_of(&self, artifact: &ArtifactDigest) -> Result<Manifest, AwsError> {
        self.rt.block_on(self.manifest(artifact))
    }

    /// An object under the prefix, as bytes (`None`: no such key) (blocking).
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, AwsError> {
        self.rt.block_on(self.bucket.get(&self.url.key(rel)))
    }

    /// Runs a future on this cache's runtime (for callers with more S3 work to do).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Uploads a locally committed entry in the order of docs/cloud.md §2: objects the bucket lacks,
    /// the manifest, the tree, and the entry last. Returns at once when the entry is there already.
    pub fn publish_entry(&self, store: &Store, entry: &Entry) -> Result<(), AwsError> {
        let entry_key = self.entry_key(&entry.key);
        if self.rt.block_on(self.bucket.exists(&entry_key))? {
            return Ok(());
        }
        let manifest = store.manifest(&entry.artifact)?;
        let sources: Vec<(ManifestEntry, PathBuf)> = manifest
            .entries
            .iter()
            .map(|e| (e.clone(), store.object_file(e)))
            .collect();
        self.rt
            .block_on(self.publish_artifact(&manifest, &sources))?;
        let text = entry_json(entry);
        self.rt.block_on(self.bucket.put(&entry_key, text))
    }

    /// Objects, manifest and tree of an artifact whose files are at the given local paths (the
    /// store's objects, or a worker's output directory). Idempotent; skips what is there.
    pub async fn publish_artifact(
        &self,
        manifest: &Manifest,
        sources: &[(ManifestEntry, PathBuf)],
    ) -> Result<(), AwsError> {
        let artifact = manifest.digest();
        let manifest_key = self.manifest_key(&artifact);
        let tree = self.tree_prefix(&artifact);
        let mut seen = std::collections::HashSet::new();
        let uploads: Vec<(String, PathBuf)> = sources
            .iter()
            .filter(|(e, _)| seen.insert(e.digest))
            .map(|(e, path)| (self.object_key(e), path.clone()))
            .collect();
        let have_manifest = self.bucket.exists(&manifest_key).await?;
        // With the manifest present, its objects are too (they are written first).
        if !have_manifest {
            let bucket = self.bucket.clone();
            run_all(uploads, move |(key, path)| {
                let bucket = bucket.clone();
                async move {
                    if !bucket.exists(&key).await? {
                        bucket.upload(&key, &path).await?;
                    }
                    Ok(())
                }
            })
            .await?;
            self.bucket
                .put(&manifest_key, manifest.canonical_text().into_bytes())
                .await?;
        }
        let present: std::collections::HashSet<String> = if have_manifest {
            self.bucket
                .list(&tree)
                .await?
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        } else {
            Default::default()
        };
        let copies: Vec<(String, String)> = manifest
            .entries
            .iter()
            .map(|e| (self.object_key(e), format!("{tree}{}", e.path)))
            .filter(|(_, dst)| !present.contains(dst))
            .collect();
        let bucket = self.bucket.clone();
        run_all(copies, move |(src, dst)| {
            let bucket = bucket.clone();
            async move { bucket.copy(&src, &dst).await }
        })
        .await
    }
}

/// Entries stay under this size (docs/cloud.md §2: the state machine holds one in its payload).
pub const ENTRY_LIMIT: usize = 32 * 1024;

/// The entry's JSON, with warnings dropped from the end (then the input record) until it fits in
/// `ENTRY_LIMIT`.
pub fn entry_json(entry: &Entry) -> Vec<u8> {
    let ser = |e: &Entry| serde_json::to_vec_pretty(e).expect("entries serialize");
    let mut e = entry.clone();
    let mut text = ser(&e);
    while text.len() > ENTRY_LIMIT && !e.warnings.is_empty() {
        let keep = (e.warnings.len() / 2).min(entry.warnings.len());
        e.warnings.truncate(keep);
        e.warnings.push(format!(
            "({} more not kept)",
            wf_engine::plural(entry.warnings.len() - keep, "warning")
        ));
        text = ser(&e);
        if keep == 0 && text.len() > ENTRY_LIMIT {
            e.warnings.clear();
            text = ser(&e);
        }
    }
    // An entry of very many inputs keeps the key → artifact mapping and drops the input record
    // (`wf cache verify --repair` then treats it as an entry written before inputs were recorded).
    if text.len() > ENTRY_LIMIT && e.inputs.is_some() {
        e.inputs = None;
        text = ser(&e);
    }
    text
}

/// Runs `f` over every item, `PARALLEL` at a time; the first error wins (the rest are dropped).
async fn run_all<T, F, Fut>(items: Vec<T>, f: F) -> Result<(), AwsError>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), AwsError>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut set = tokio::task::JoinSet::new();
    for item in items {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let fut = f(item);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        });
        // Stop early once something failed.
        while let Some(done) = set.try_join_next() {
            done.expect("transfer tasks do not panic")?;
        }
    }
    while let Some(done) = set.join_next().await {
        done.expect("transfer tasks do not panic")?;
    }
    Ok(())
}

fn remote_err(url: &S3Url) -> impl Fn(AwsError) -> RemoteError + '_ {
    move |e| RemoteError::new(format!("cache {url}: {e}"))
}

impl RemoteCache for S3Cache {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn lookup(&self, key: &StepKey) -> Result<Option<Entry>, RemoteError> {
        self.rt
            .block_on(self.entry(key))
            .map_err(remote_err(&self.url))
    }

    fn fetch(&self, key: &StepKey, store: &Store) -> Result<Option<Entry>, RemoteError> {
        let Some(entry) = self.lookup(key)? else {
            return Ok(None);
        };
        self.fetch_entry(&entry, store)
            .map(Some)
            .map_err(remote_err(&self.url))
    }

    fn publish(&self, store: &Store, entry: &Entry) -> Result<(), RemoteError> {
        self.publish_entry(store, entry)
            .map_err(remote_err(&self.url))
    }
}
