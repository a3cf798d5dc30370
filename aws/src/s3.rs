//! The S3 calls wf makes, each turning SDK errors into an `AwsError` that names the object.

use crate::AwsError;
use crate::client::{Aws, is_not_found};
use aws_sdk_s3::primitives::ByteStream;
use std::path::Path;

/// Larger than this, one PutObject or CopyObject is refused by S3.
pub const SINGLE_REQUEST_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

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

    /// Streams an object into a new file at `dst`; returns its size.
    pub async fn download(&self, key: &str, dst: &Path) -> Result<u64, AwsError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("GetObject", key, &e))?;
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(AwsError::io(parent))?;
        }
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

    pub async fn upload(&self, key: &str, src: &Path) -> Result<(), AwsError> {
        let size = tokio::fs::metadata(src)
            .await
            .map_err(AwsError::io(src))?
            .len();
        if size > SINGLE_REQUEST_LIMIT {
            return Err(AwsError::Invalid(format!(
                "{}: {size} bytes is more than one S3 upload takes (5 GiB); split the output into smaller files",
                src.display()
            )));
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

    /// Server-side copy within the bucket (`src` must be URL-safe, e.g. `objects/<hex>`).
    pub async fn copy(&self, src: &str, dst: &str) -> Result<(), AwsError> {
        let (sse, kms) = self.sse();
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
        Ok(())
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
