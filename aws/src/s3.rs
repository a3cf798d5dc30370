//! The S3 calls wf makes, each turning SDK errors into an `AwsError` that names the object.

use crate::AwsError;
use crate::client::{Aws, is_not_found};
use aws_sdk_s3::primitives::ByteStream;
use std::path::Path;

/// Objects of at least this many bytes are uploaded in parts and downloaded in ranges, several at
/// once (`WF_S3_MULTIPART_THRESHOLD` changes it, e.g. to test with small files).
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// The size of a part (and of a ranged read), unless the threshold is smaller.
pub const PART_SIZE: u64 = 16 * 1024 * 1024;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once, per object.
pub const PART_CONCURRENCY: usize = 8;

/// The multipart threshold in effect (`WF_S3_MULTIPART_THRESHOLD`, bytes, or the default).
pub fn multipart_threshold() -> u64 {
    std::env::var("WF_S3_MULTIPART_THRESHOLD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MULTIPART_THRESHOLD)
}

/// The part size for an object of `size` bytes: `PART_SIZE`, or the threshold when that is smaller
/// (never under S3's minimum), grown so that the object fits in S3's 10,000 parts.
pub fn part_size(size: u64, threshold: u64) -> u64 {
    threshold
        .clamp(MIN_PART_SIZE, PART_SIZE)
        .max(size.div_ceil(MAX_PARTS))
}

/// The byte ranges `[start, end)` of an object of `size` bytes in parts of `part` bytes.
pub fn ranges(size: u64, part: u64) -> Vec<(u64, u64)> {
    (0..size.div_ceil(part))
        .map(|i| (i * part, ((i + 1) * part).min(size)))
        .collect()
}

/// A bucket and the client to reach it (cheap to clone).
#[derive(Clone, Debug)]
pub struct Bucket {
    aws: Aws,
    client: aws_sdk_s3::Client,
    pub name: String,
    /// SSE-KMS with this key for every object written (`targets.aws.kms_key_id`); `None`: the
    /// bucket's default encryption.
    kms_key_id: Option<String>,
}

impl Bucket {
    pub fn new(aws: &Aws, name: &str) -> Bucket {
        Bucket {
            aws: aws.clone(),
            client: aws.s3(),
            name: name.to_string(),
            kms_key_id: None,
        }
    }

    /// The same bucket, writing every object with SSE-KMS under `key` (when given).
    pub fn with_kms(mut self, key: Option<String>) -> Bucket {
        self.kms_key_id = key;
        self
    }

    /// `ServerSideEncryption` and `SSEKMSKeyId` of a write.
    fn sse(
        &self,
    ) -> (
        Option<aws_sdk_s3::types::ServerSideEncryption>,
        Option<String>,
    ) {
        match &self.kms_key_id {
            Some(k) => (
                Some(aws_sdk_s3::types::ServerSideEncryption::AwsKms),
                Some(k.clone()),
            ),
            None => (None, None),
        }
    }

    pub fn aws(&self) -> &Aws {
        &self.aws
    }

    fn err<E>(
        &self,
        op: &'static str,
        key: &str,
        e: &aws_sdk_s3::error::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> AwsError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        AwsError::Call {
            target: format!("s3://{}/{key}", self.name),
            op,
            detail: self.aws.describe(e),
        }
    }

    /// Fails with a clear message when the bucket does not exist or cannot be reached.
    pub async fn check(&self) -> Result<(), AwsError> {
        match self.client.head_bucket().bucket(&self.name).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut err = self.err("HeadBucket", "", &e);
                if let AwsError::Call { detail, .. } = &mut err
                    && is_not_found(&e)
                {
                    *detail = format!("the bucket does not exist ({detail})");
                }
                Err(err)
            }
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, AwsError> {
        match self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.err("HeadObject", key, &e)),
        }
    }

    /// The object's bytes, or `None` when there is no such key.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, AwsError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err("GetObject", key, &e)),
        };
        let bytes = out.body.collect().await.map_err(|e| AwsError::Call {
            target: format!("s3://{}/{key}", self.name),
            op: "GetObject",
            detail: format!("reading the body: {e}"),
        })?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    /// Streams an object into a new file at `dst`; returns its size. An object at or above the
    /// multipart threshold is read as ranges, several at once, each written at its offset.
    pub async fn download(&self, key: &str, dst: &Path) -> Result<u64, AwsError> {
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(AwsError::io(parent))?;
        }
        let threshold = multipart_threshold();
        // A HEAD that fails says less than GetObject does (no error code in a HEAD's answer):
        // the GetObject of the whole object then reports it.
        let size = match self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(head) => head.content_length().unwrap_or(0).max(0) as u64,
            Err(_) => return self.download_whole(key, dst).await,
        };
        if size < threshold {
            return self.download_whole(key, dst).await;
        }
        let file = tokio::fs::File::create(dst)
            .await
            .map_err(AwsError::io(dst))?;
        file.set_len(size).await.map_err(AwsError::io(dst))?;
        drop(file);
        let parts = ranges(size, part_size(size, threshold));
        let this = self.clone();
        let (key_s, dst_p) = (key.to_string(), dst.to_path_buf());
        run_parts(parts, move |(start, end)| {
            let (this, key, dst) = (this.clone(), key_s.clone(), dst_p.clone());
            async move { this.download_range(&key, &dst, start, end).await }
        })
        .await?;
        Ok(size)
    }

    async fn download_whole(&self, key: &str, dst: &Path) -> Result<u64, AwsError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("GetObject", key, &e))?;
        let mut file = tokio::fs::File::create(dst)
            .await
            .map_err(AwsError::io(dst))?;
        let mut body = out.body.into_async_read();
        let n = tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| AwsError::Call {
                target: format!("s3://{}/{key}", self.name),
                op: "GetObject",
                detail: format!("downloading to {}: {e}", dst.display()),
            })?;
        Ok(n)
    }

    /// Bytes `[start, end)` of the object, written at `start` in `dst`.
    async fn download_range(
        &self,
        key: &str,
        dst: &Path,
        start: u64,
        end: u64,
    ) -> Result<(), AwsError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let out = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| self.err("GetObject", key, &e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| AwsError::Call {
                target: format!("s3://{}/{key}", self.name),
                op: "GetObject",
                detail: format!("reading bytes {start}-{}: {e}", end - 1),
            })?
            .into_bytes();
        if bytes.len() as u64 != end - start {
            return Err(AwsError::Call {
                target: format!("s3://{}/{key}", self.name),
                op: "GetObject",
                detail: format!(
                    "asked for bytes {start}-{} and got {} bytes",
                    end - 1,
                    bytes.len()
                ),
            });
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(dst)
            .await
            .map_err(AwsError::io(dst))?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(AwsError::io(dst))?;
        file.write_all(&bytes).await.map_err(AwsError::io(dst))?;
        file.flush().await.map_err(AwsError::io(dst))?;
        Ok(())
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), AwsError> {
        let (sse, kms) = self.sse();
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.err("PutObject", key, &e))?;
        Ok(())
    }

    /// Uploads a file: one PutObject below the multipart threshold, else a multipart upload with
    /// several parts in flight, aborted when any part fails (no orphaned parts are left billed).
    pub async fn upload(&self, key: &str, src: &Path) -> Result<(), AwsError> {
        let size = tokio::fs::metadata(src)
            .await
            .map_err(AwsError::io(src))?
            .len();
        let threshold = multipart_threshold();
        if size >= threshold {
            return self.upload_multipart(key, src, size, threshold).await;
        }
        let body = ByteStream::from_path(src).await.map_err(|e| AwsError::Io {
            path: src.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let (sse, kms) = self.sse();
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
            .body(body)
            .send()
            .await
            .map_err(|e| self.err("PutObject", key, &e))?;
        Ok(())
    }

    async fn upload_multipart(
        &self,
        key: &str,
        src: &Path,
        size: u64,
        threshold: u64,
    ) -> Result<(), AwsError> {
        use aws_sdk_s3::types::CompletedPart;
        let upload_id = self.start_multipart(key).await?;
        let parts = ranges(size, part_size(size, threshold));
        let this = self.clone();
        let (key_s, src_p, id) = (key.to_string(), src.to_path_buf(), upload_id.clone());
        let numbered: Vec<(i32, (u64, u64))> = (1..).zip(parts).collect();
        let uploaded = run_parts(numbered, move |(n, (start, end))| {
            let (this, key, src, id) = (this.clone(), key_s.clone(), src_p.clone(), id.clone());
            async move {
                let etag = this.upload_part(&key, &src, &id, n, start, end).await?;
                Ok(CompletedPart::builder().part_number(n).e_tag(etag).build())
            }
        })
        .await;
        self.finish_multipart(key, &upload_id, uploaded).await
    }

    async fn upload_part(
        &self,
        key: &str,
        src: &Path,
        upload_id: &str,
        n: i32,
        start: u64,
        end: u64,
    ) -> Result<String, AwsError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(src)
            .await
            .map_err(AwsError::io(src))?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(AwsError::io(src))?;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact(&mut buf).await.map_err(AwsError::io(src))?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| self.err("UploadPart", key, &e))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    /// Server-side copy within the bucket (`src` must be URL-safe, e.g. `objects/<hex>`). At or
    /// above the multipart threshold the copy goes in parts (UploadPartCopy), as CopyObject stops at
    /// 5 GiB; a failed part aborts the upload.
    pub async fn copy(&self, src: &str, dst: &str) -> Result<(), AwsError> {
        let threshold = multipart_threshold();
        let size = self
            .client
            .head_object()
            .bucket(&self.name)
            .key(src)
            .send()
            .await
            .map_err(|e| self.err("HeadObject", src, &e))?
            .content_length()
            .unwrap_or(0)
            .max(0) as u64;
        let (sse, kms) = self.sse();
        if size < threshold {
            self.client
                .copy_object()
                .bucket(&self.name)
                .copy_source(format!("{}/{src}", self.name))
                .key(dst)
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(kms)
                .send()
                .await
                .map_err(|e| self.err("CopyObject", dst, &e))?;
            return Ok(());
        }
        use aws_sdk_s3::types::CompletedPart;
        let upload_id = self.start_multipart(dst).await?;
        let numbered: Vec<(i32, (u64, u64))> = (1..)
            .zip(ranges(size, part_size(size, threshold)))
            .collect();
        let this = self.clone();
        let (src_s, dst_s, id) = (src.to_string(), dst.to_string(), upload_id.clone());
        let copied = run_parts(numbered, move |(n, (start, end))| {
            let (this, src, dst, id) = (this.clone(), src_s.clone(), dst_s.clone(), id.clone());
            async move {
                let out = this
                    .client
                    .upload_part_copy()
                    .bucket(&this.name)
                    .key(&dst)
                    .upload_id(&id)
                    .part_number(n)
                    .copy_source(format!("{}/{src}", this.name))
                    .copy_source_range(format!("bytes={start}-{}", end - 1))
                    .send()
                    .await
                    .map_err(|e| this.err("UploadPartCopy", &dst, &e))?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_string();
                Ok(CompletedPart::builder().part_number(n).e_tag(etag).build())
            }
        })
        .await;
        self.finish_multipart(dst, &upload_id, copied).await
    }

    /// Starts a multipart upload of `key`, encrypted as every object wf writes; its upload id.
    async fn start_multipart(&self, key: &str) -> Result<String, AwsError> {
        let (sse, kms) = self.sse();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", key, &e))?;
        Ok(created.upload_id().unwrap_or_default().to_string())
    }

    /// Completes multipart upload `upload_id` of `key` from its parts, or aborts it when a part
    /// failed or completing failed, so that no orphaned parts are left to be billed.
    async fn finish_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Result<Vec<aws_sdk_s3::types::CompletedPart>, AwsError>,
    ) -> Result<(), AwsError> {
        let completed = match parts {
            Ok(mut parts) => {
                parts.sort_by_key(|p| p.part_number());
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.name)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(
                        aws_sdk_s3::types::CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| self.err("CompleteMultipartUpload", key, &e))
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Best effort: the part's or the completion's error is what the caller needs to see.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await;
        }
        completed
    }

    /// Deletes one object (no error when it is already gone).
    pub async fn delete(&self, key: &str) -> Result<(), AwsError> {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("DeleteObject", key, &e))?;
        Ok(())
    }

    /// Every key under `prefix` with its size, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.err("ListObjectsV2", prefix, &e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push((k.to_string(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Downloads `s3://bucket/key` to `dst` for a blocking caller (fetch-dataset). Signed with the
/// default credential chain when it yields credentials, anonymous otherwise (public buckets).
/// `AWS_ENDPOINT_URL` is honoured like everywhere else.
pub fn fetch_object(bucket: &str, key: &str, dst: &Path) -> Result<u64, AwsError> {
    use aws_sdk_s3::config::ProvideCredentials;
    let rt = crate::Blocking::new()?;
    rt.block_on(async {
        let signed = Aws::load(None, crate::Credentials::Default).await;
        let has_credentials = match signed.config().credentials_provider() {
            Some(p) => p.provide_credentials().await.is_ok(),
            None => false,
        };
        let aws = if has_credentials {
            signed
        } else {
            tracing::debug!("no AWS credentials found: reading s3://{bucket}/{key} anonymously");
            Aws::load(None, crate::Credentials::Anonymous).await
        };
        let aws = match std::env::var("WF_S3_ENDPOINT") {
            Ok(e) if !e.is_empty() => aws.with_s3_endpoint(&e),
            _ => aws,
        };
        Bucket::new(&aws, bucket).download(key, dst).await
    })
}

/// Runs `f` over `items`, `PART_CONCURRENCY` at a time; the results in no particular order, or the
/// first error (the rest are dropped, which cancels them).
async fn run_parts<T, R, F, Fut>(items: Vec<T>, f: F) -> Result<Vec<R>, AwsError>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R, AwsError>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    let mut items = items.into_iter();
    loop {
        while set.len() < PART_CONCURRENCY {
            match items.next() {
                Some(item) => {
                    set.spawn(f(item));
                }
                None => break,
            }
        }
        match set.join_next().await {
            Some(Ok(Ok(r))) => out.push(r),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(AwsError::Invalid(format!("a transfer task failed: {e}")));
            }
            None => return Ok(out),
        }
    }
}

/// Puts what a step's jobs need before they start (`wf deploy`, the SageMaker executor), skipping
/// objects already there: their keys are content addresses.
pub async fn upload_all(
    bucket: &Bucket,
    uploads: &[wf_engine::cloud::Upload],
) -> Result<(), AwsError> {
    use wf_engine::cloud::UploadSource;
    for u in uploads {
        if bucket.exists(&u.key).await? {
            continue;
        }
        match &u.source {
            UploadSource::Bytes(b) => bucket.put(&u.key, b.clone()).await?,
            UploadSource::File(p) => bucket.upload(&u.key, p).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_object_within_s3s_limits() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(part_size(100 * MIB, MULTIPART_THRESHOLD), PART_SIZE);
        assert_eq!(part_size(13 * MIB, 6 * MIB), 6 * MIB);
        assert_eq!(
            part_size(13 * MIB, MIB),
            MIN_PART_SIZE,
            "never under S3's minimum"
        );
        // 1 TiB in 16 MiB parts would be 65,536 parts: the parts grow to fit 10,000.
        let huge = 1024 * 1024 * MIB;
        let p = part_size(huge, MULTIPART_THRESHOLD);
        assert!(huge.div_ceil(p) <= MAX_PARTS && p > PART_SIZE);
        assert_eq!(
            ranges(13 * MIB, 6 * MIB),
            vec![(0, 6 * MIB), (6 * MIB, 12 * MIB), (12 * MIB, 13 * MIB)]
        );
        assert_eq!(ranges(12 * MIB, 6 * MIB).len(), 2);
    }
}
