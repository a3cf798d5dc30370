//! `s3://bucket/prefix` locations.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl S3Url {
    pub fn parse(s: &str) -> Result<S3Url, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{s}` is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid {
            return Err(format!(
                "`{s}`: `{bucket}` is not a valid bucket name (3-63 of a-z, 0-9, `-`, `.`)"
            ));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The object key for `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// `s3://bucket/<prefix>/<rel>`.
    pub fn join(&self, rel: &str) -> S3Url {
        S3Url {
            bucket: self.bucket.clone(),
            prefix: self.key(rel.trim_matches('/')),
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let u = S3Url::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(u.key("entries/x.json"), "a/b/entries/x.json");
        assert_eq!(u.to_string(), "s3://my-bucket/a/b");
        let root = S3Url::parse("s3://bkt").unwrap();
        assert_eq!(root.key("objects/ab"), "objects/ab");
        assert_eq!(root.join("cache").to_string(), "s3://bkt/cache");
        assert!(S3Url::parse("s3://Bad_Bucket/x").is_err());
        assert!(S3Url::parse("https://b/x").is_err());
    }
}
