//! The object store: the only shared state shoal has.
//!
//! One narrow async trait, [`ObjectStore`], with conditional writes as
//! first-class methods, and three backends chosen by URL (see [`open`]):
//!
//! | URL                          | backend                      | use                      |
//! |------------------------------|------------------------------|--------------------------|
//! | `s3://bucket/optional/prefix`| [`s3::S3Store`] (aws-sdk-s3) | production, MinIO, moto  |
//! | `file:///abs/dir` or a path  | [`local::LocalStore`]        | the embedded default     |
//! | `memory://name[/prefix]`     | [`memory::MemoryStore`]      | fast unit tests          |
//!
//! Every backend passes one conformance suite (`conformance`, feature `test-util`); every handle
//! returned by [`open`] is wrapped in [`Counted`], which counts requests by kind
//! because request counts are what an S3 deployment pays for. Keys are always
//! relative to the URL's prefix: `_brainy/manifests/p000.json`, never the full
//! bucket path.

// Test helpers, compiled only for shoal's own tests and for users who
// enable the `test-util` feature; release and Lambda builds carry neither.
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod counted;
mod dirlock;
#[cfg(any(test, feature = "test-util"))]
pub mod faults;
pub mod local;
pub mod memory;
mod probe;
#[cfg(feature = "s3")]
pub mod s3;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use counted::{Counted, RequestCounts};
pub use probe::{probe_conditional_writes, store_time, ProbeError};

/// An entity tag: an opaque version identifier of an object's bytes.
///
/// Compare ETags only for equality and only with ETags from the same store.
/// S3 returns them quoted (`"9b2c..."`); the local and memory backends use a
/// content hash. Either way the same bytes read back give the same ETag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ETag(pub String);

impl ETag {
    /// Whether `self` and `other` name the same bytes, quotes aside: S3
    /// quotes ETags, and some stores' listings and GETs disagree on the
    /// quotes.
    pub fn same_as(&self, other: &ETag) -> bool {
        self.0.trim_matches('"') == other.0.trim_matches('"')
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object's bytes together with the ETag of exactly those bytes.
#[derive(Clone, Debug)]
pub struct GetResult {
    pub bytes: Bytes,
    pub etag: ETag,
}

/// The answer to a conditional GET.
#[derive(Clone, Debug)]
pub enum Conditional {
    /// The object still has the ETag the caller holds (HTTP 304).
    NotModified,
    /// The object changed; here are its current bytes and ETag.
    Modified(GetResult),
}

/// What `head` and `list` report about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key relative to the store's prefix.
    pub key: String,
    pub size: u64,
    pub etag: ETag,
    /// When the object was last written, if the backend knows it.
    pub last_modified: Option<SystemTime>,
}

/// A byte range `start..end` (end exclusive); `end: None` reads to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl ByteRange {
    /// Bytes `start..end`, end exclusive.
    pub fn new(start: u64, end: u64) -> Self {
        ByteRange {
            start,
            end: Some(end),
        }
    }

    /// Bytes from `start` to the end of the object.
    pub fn from(start: u64) -> Self {
        ByteRange { start, end: None }
    }

    /// Clamps the range to an object of `len` bytes, returning `start..end`.
    /// A start past the end gives an empty range, like S3 does for `end`.
    fn clamp(&self, len: u64) -> std::ops::Range<usize> {
        let end = self.end.unwrap_or(len).min(len);
        let start = self.start.min(end);
        start as usize..end as usize
    }
}

/// Errors from any backend. Messages are lowercase and name the key.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found: {key}")]
    NotFound { key: String },
    /// A create-only write lost: the object already exists.
    #[error("object already exists: {key}")]
    AlreadyExists { key: String },
    /// A compare-and-swap lost: the object changed (or vanished) since the
    /// caller read it. Covers S3's 412, 409 ConditionalRequestConflict and
    /// `If-Match` on a missing key. Re-read and retry.
    #[error("precondition failed, object changed concurrently: {key}")]
    PreconditionFailed { key: String },
    /// 5xx, SlowDown, timeouts, connection errors: retrying may help.
    #[error("transient store error on {key}: {message}")]
    Transient { key: String, message: String },
    /// Anything else: bad credentials, missing bucket, invalid key, I/O.
    #[error("store error on {key}: {message}")]
    Other { key: String, message: String },
}

impl StoreError {
    /// Whether retrying the same request later can succeed. A lost
    /// conditional write is not retryable as-is: the caller must re-read.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    /// What a caller can do about it.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        use crate::vocab::ErrorKind;
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. } => {
                ErrorKind::Conflict
            }
            StoreError::Transient { .. } => ErrorKind::Unavailable,
            StoreError::Other { .. } => ErrorKind::Internal,
        }
    }

    /// Whether this is a lost create-only or compare-and-swap race.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. }
        )
    }

    /// The key this error is about.
    pub fn key(&self) -> &str {
        match self {
            StoreError::NotFound { key }
            | StoreError::AlreadyExists { key }
            | StoreError::PreconditionFailed { key }
            | StoreError::Transient { key, .. }
            | StoreError::Other { key, .. } => key,
        }
    }

    pub(crate) fn other(key: &str, message: impl fmt::Display) -> Self {
        StoreError::Other {
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    // Used by the S3 backend and the fault-injecting stores only.
    #[cfg_attr(
        not(any(feature = "s3", feature = "test-util", test)),
        allow(dead_code)
    )]
    pub(crate) fn transient(key: &str, message: impl fmt::Display) -> Self {
        StoreError::Transient {
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The object-store contract every backend implements.
///
/// Keys are UTF-8 paths relative to the store's prefix, made of non-empty
/// `/`-separated components (no `.` or `..` components, no NUL). Every write
/// is atomic: a reader sees the old bytes or the new bytes, never a mix.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Reads a whole object and the ETag of exactly those bytes.
    /// Missing key: [`StoreError::NotFound`].
    async fn get(&self, key: &str) -> Result<GetResult>;

    /// Reads `range` of an object. A range reaching past the end is cut at
    /// the end. Missing key: [`StoreError::NotFound`].
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes>;

    /// Conditional GET (`If-None-Match: etag`): [`Conditional::NotModified`]
    /// when the object still has `etag`, otherwise its new bytes and ETag.
    /// Missing key: [`StoreError::NotFound`].
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional>;

    /// Size, ETag and modification time without the bytes.
    /// Missing key: [`StoreError::NotFound`].
    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Unconditional write; returns the new ETag.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag>;

    /// Create-only write (`If-None-Match: *`). If the key exists the write
    /// is not applied and [`StoreError::AlreadyExists`] is returned. Among
    /// racing callers exactly one wins and its bytes are what is stored.
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag>;

    /// Compare-and-swap (`If-Match: etag`). Applied only if the object's
    /// current ETag is `etag`; otherwise, and also when the key does not
    /// exist (which must not create it), [`StoreError::PreconditionFailed`].
    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag>;

    /// Deletes an object. Deleting a missing key is Ok.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Every object whose key starts with `prefix` (a plain string prefix,
    /// not a folder: `seg` matches `seg/a` and `seg0`), in ascending
    /// byte order of the key, across all pages.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// A human-readable location, e.g. `s3://bucket/prefix`, for messages.
    fn describe(&self) -> String;
}

/// A shared, type-erased store handle.
pub type DynStore = Arc<dyn ObjectStore>;

/// Opens the backend named by `url` and wraps it in request counters.
///
/// - `s3://bucket[/prefix]`: S3 or any S3-compatible server (see [`s3`]).
/// - `file:///abs/dir`, or any path without a scheme: a local directory,
///   created if missing.
/// - `memory://name[/prefix]`: an in-process store; every handle opened
///   with the same name shares the same objects.
pub async fn open(url: &str) -> Result<Arc<Counted>> {
    let backend: DynStore = if let Some(rest) = url.strip_prefix("s3://") {
        open_s3(rest).await?
    } else if let Some(rest) = url.strip_prefix("memory://") {
        Arc::new(memory::MemoryStore::open(rest)?)
    } else if let Some(rest) = url.strip_prefix("file://") {
        Arc::new(local::LocalStore::open(rest)?)
    } else if url.contains("://") {
        return Err(StoreError::other(
            url,
            "unsupported store url scheme; use s3://bucket/prefix, file:///dir, a plain path, or memory://name",
        ));
    } else {
        Arc::new(local::LocalStore::open(url)?)
    };
    let counted = Counted::new(backend);
    Ok(Arc::new(match latency_from_env(url)? {
        Some(l) => counted.with_latency(l),
        None => counted,
    }))
}

/// `SHOAL_STORE_LATENCY_MS`: a fixed latency added before every request,
/// for benchmarks that must pay what S3 round trips cost.
fn latency_from_env(url: &str) -> Result<Option<std::time::Duration>> {
    let Ok(v) = std::env::var("SHOAL_STORE_LATENCY_MS") else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(ms) if ms <= 60_000 => Ok(Some(std::time::Duration::from_millis(ms))),
        _ => Err(StoreError::other(
            url,
            format!("SHOAL_STORE_LATENCY_MS must be whole milliseconds from 0 to 60000, not {v:?}"),
        )),
    }
}

#[cfg(feature = "s3")]
async fn open_s3(rest: &str) -> Result<DynStore> {
    Ok(Arc::new(
        s3::S3Store::open(rest, &s3::S3Options::from_env()).await?,
    ))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(rest: &str) -> Result<DynStore> {
    Err(StoreError::other(
        &format!("s3://{rest}"),
        "this build of shoal has no S3 backend; rebuild with the default `s3` feature",
    ))
}

/// Checks that a key is a relative path of non-empty components with no
/// `.`/`..` and no NUL, so no backend can be led outside its root or prefix.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let bad = |why: &str| Err(StoreError::other(key, format!("invalid key: {why}")));
    if key.is_empty() {
        return bad("empty");
    }
    if key.contains('\0') {
        return bad("contains NUL");
    }
    if key.starts_with('/') {
        return bad("starts with /");
    }
    for part in key.split('/') {
        match part {
            "" => return bad("empty path component"),
            "." | ".." => return bad("`.` or `..` path component"),
            _ => {}
        }
    }
    Ok(())
}

/// Joins a store prefix (no leading or trailing `/`, may be empty) and a key.
pub(crate) fn join_prefix(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Normalises a URL prefix: trims slashes, rejects `.`/`..` components.
pub(crate) fn normalize_prefix(url: &str, prefix: &str) -> Result<String> {
    let p = prefix.trim_matches('/');
    if !p.is_empty() {
        validate_key(p).map_err(|_| {
            StoreError::other(url, format!("invalid key prefix `{prefix}` in store url"))
        })?;
    }
    Ok(p.to_string())
}

/// A content-hash ETag (xxh3-128, hex), used by the local and memory backends.
pub(crate) fn content_etag(bytes: &[u8]) -> ETag {
    ETag(format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(bytes)))
}
