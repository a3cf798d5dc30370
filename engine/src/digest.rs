//! Typed digests, so a file digest can never be passed where a step key is expected.
//!
//! - `FileDigest`: BLAKE3 of a file's bytes (fast on large volumes; computed locally or by `wf worker`).
//! - `ArtifactDigest`: BLAKE3 of an artifact's canonical manifest (see `manifest.rs`), a Merkle root.
//! - `StepKey`: SHA-256 of the canonical key string (see `key.rs`); SHA-256 because Step Functions can
//!   compute it too (`States.Hash(..., 'SHA-256')`), so local and cloud runs share one cache.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

pub trait DigestKind: 'static {
    const NAME: &'static str;
}

#[derive(Debug)]
pub enum FileKind {}
#[derive(Debug)]
pub enum ArtifactKind {}
#[derive(Debug)]
pub enum KeyKind {}

impl DigestKind for FileKind {
    const NAME: &'static str = "file";
}
impl DigestKind for ArtifactKind {
    const NAME: &'static str = "artifact";
}
impl DigestKind for KeyKind {
    const NAME: &'static str = "step key";
}

pub struct Digest<K: DigestKind> {
    bytes: [u8; 32],
    _kind: PhantomData<K>,
}

pub type FileDigest = Digest<FileKind>;
pub type ArtifactDigest = Digest<ArtifactKind>;
pub type StepKey = Digest<KeyKind>;

impl<K: DigestKind> Digest<K> {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest {
            bytes,
            _kind: PhantomData,
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(Self::from_bytes(bytes))
    }
}

impl FileDigest {
    pub fn of_bytes(data: &[u8]) -> Self {
        Self::from_bytes(*blake3::hash(data).as_bytes())
    }
}

impl ArtifactDigest {
    pub fn of_manifest(canonical: &[u8]) -> Self {
        Self::from_bytes(*blake3::hash(canonical).as_bytes())
    }
}

impl StepKey {
    pub fn of_key_string(canonical: &str) -> Self {
        use sha2::Digest as _;
        let out = sha2::Sha256::digest(canonical.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&out);
        Self::from_bytes(bytes)
    }
}

impl<K: DigestKind> Clone for Digest<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: DigestKind> Copy for Digest<K> {}
impl<K: DigestKind> PartialEq for Digest<K> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl<K: DigestKind> Eq for Digest<K> {}
impl<K: DigestKind> std::hash::Hash for Digest<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}
impl<K: DigestKind> PartialOrd for Digest<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: DigestKind> Ord for Digest<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}
impl<K: DigestKind> fmt::Display for Digest<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl<K: DigestKind> fmt::Debug for Digest<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", K::NAME, self.short())
    }
}
impl<K: DigestKind> Serialize for Digest<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de, K: DigestKind> Deserialize<'de> for Digest<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid {} digest `{s}`", K::NAME)))
    }
}
