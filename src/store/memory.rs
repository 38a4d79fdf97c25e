//! In-memory backend for fast unit tests.
//!
//! `memory://name[/prefix]`: every handle opened with the same `name` in one
//! process shares the same objects (so tests can run several "instances"
//! against one bucket). One mutex guards the map; each operation, including
//! the check-and-replace of a conditional write, runs entirely under it,
//! which makes every conditional write atomic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    content_etag, join_prefix, normalize_prefix, validate_key, ByteRange, Conditional, ETag,
    GetResult, ObjectMeta, ObjectStore, Result, StoreError,
};

#[derive(Clone)]
struct Object {
    bytes: Bytes,
    etag: ETag,
    modified: SystemTime,
}

type Bucket = Arc<Mutex<BTreeMap<String, Object>>>;

static BUCKETS: LazyLock<Mutex<HashMap<String, Bucket>>> = LazyLock::new(Default::default);

/// Where an in-memory store's `last_modified` times come from.
pub(crate) type TimeSource = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// An in-process object store. Cheap to clone; clones share objects.
#[derive(Clone)]
pub struct MemoryStore {
    name: String,
    prefix: String,
    objects: Bucket,
    /// `None`: the system clock.
    time: Option<TimeSource>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl MemoryStore {
    /// Opens (or creates) the named in-memory bucket. `spec` is the part of
    /// the URL after `memory://`: `name` or `name/prefix`.
    pub fn open(spec: &str) -> Result<Self> {
        let (name, prefix) = spec.split_once('/').unwrap_or((spec, ""));
        let url = format!("memory://{spec}");
        if name.is_empty() {
            return Err(StoreError::other(
                &url,
                "memory store url needs a name: memory://name",
            ));
        }
        let prefix = normalize_prefix(&url, prefix)?;
        let objects = BUCKETS
            .lock()
            .expect("memory bucket registry poisoned")
            .entry(name.to_string())
            .or_default()
            .clone();
        Ok(MemoryStore {
            name: name.to_string(),
            prefix,
            objects,
            time: None,
        })
    }

    /// Stamps objects' `last_modified` from `time` instead of the system
    /// clock: tests that move a manual clock need the store's times to
    /// move with it, as S3's follow real time.
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_time(mut self, time: TimeSource) -> Self {
        self.time = Some(time);
        self
    }

    // The store's own clock, standing for an S3 server's: what it stamps
    // objects with is read back by the protocol (GC), never trusted as the
    // host's (see `store_time`).
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> SystemTime {
        self.time.as_ref().map_or_else(SystemTime::now, |t| t())
    }

    /// A fresh bucket with a unique name, for tests.
    pub fn unique() -> Self {
        let id = uuid_like();
        MemoryStore::open(&format!("test-{id}")).expect("valid memory url")
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(join_prefix(&self.prefix, key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        // A panic while holding this lock cannot leave a half-written
        // object (inserts are single map operations), so poisoning is safe
        // to ignore.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(
        map: &mut BTreeMap<String, Object>,
        key: String,
        bytes: Bytes,
        modified: SystemTime,
    ) -> ETag {
        let etag = content_etag(&bytes);
        map.insert(
            key,
            Object {
                bytes,
                etag: etag.clone(),
                modified,
            },
        );
        etag
    }
}

// Names that only need to be unique (scratch buckets, temporary files),
// never part of the protocol's keys; `store` sits below `coord`, so the
// entropy seam is out of its reach.
#[allow(clippy::disallowed_methods)]
pub(crate) fn uuid_like() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<GetResult> {
        let full = self.full_key(key)?;
        let map = self.lock();
        let obj = map.get(&full).ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        Ok(GetResult {
            bytes: obj.bytes.clone(),
            etag: obj.etag.clone(),
        })
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let got = self.get(key).await?;
        Ok(got.bytes.slice(range.clamp(got.bytes.len() as u64)))
    }

    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        let got = self.get(key).await?;
        if &got.etag == etag {
            Ok(Conditional::NotModified)
        } else {
            Ok(Conditional::Modified(got))
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let full = self.full_key(key)?;
        let map = self.lock();
        let obj = map.get(&full).ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: obj.bytes.len() as u64,
            etag: obj.etag.clone(),
            last_modified: Some(obj.modified),
        })
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let full = self.full_key(key)?;
        Ok(Self::insert(&mut self.lock(), full, bytes, self.now()))
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let full = self.full_key(key)?;
        let mut map = self.lock();
        if map.contains_key(&full) {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        Ok(Self::insert(&mut map, full, bytes, self.now()))
    }

    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        let full = self.full_key(key)?;
        let mut map = self.lock();
        match map.get(&full) {
            Some(obj) if &obj.etag == etag => Ok(Self::insert(&mut map, full, bytes, self.now())),
            _ => Err(StoreError::PreconditionFailed {
                key: key.to_string(),
            }),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.lock().remove(&full);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let map = self.lock();
        Ok(map
            .range(full_prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&full_prefix))
            .map(|(k, obj)| ObjectMeta {
                key: k[strip..].to_string(),
                size: obj.bytes.len() as u64,
                etag: obj.etag.clone(),
                last_modified: Some(obj.modified),
            })
            .collect())
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("memory://{}", self.name)
        } else {
            format!("memory://{}/{}", self.name, self.prefix)
        }
    }
}
