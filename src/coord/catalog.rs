//! The S3 Vectors catalog: one small JSON object
//! ([`paths::S3VECTORS_CATALOG_KEY`]) naming the vector buckets and their
//! indexes, changed only by compare-and-swap ([`super::cas`]). Listing
//! buckets and indexes reads this object, never a LIST of the store, and
//! the query path checks an index exists against a cached copy
//! revalidated with a conditional GET.
//!
//! Each index is an ordinary shoal index (its own config, partitions and
//! instances) under a prefix of its own; the catalog holds what the S3
//! Vectors API reports about it and decides which names exist: a name
//! enters the catalog before its config is created and leaves it before
//! its objects are deleted.
//!
//! A name is not an index: each `CreateIndex` makes a new *incarnation*
//! with a fresh id, stored under `<vector-bucket>/<index>@<incarnation>/`,
//! so no two incarnations of a name share a key. (Indexes made before
//! incarnations have none and live under `<vector-bucket>/<index>/`;
//! names cannot hold `@`, so that prefix never covers an incarnation's.)
//! Deleting an incarnation ([`CatalogStore::seal`], then
//! [`CatalogStore::wipe`]) touches only its own prefix, so it is safe to
//! run twice, to resume after any pause, and for any instance to finish.
//! ARCHITECTURE.md ("S3 Vectors index lifecycle") has the protocol.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cas::{parse_json, update_json, Backoff, Step};
use super::clock::{format_time, Clock, SystemClock};
use super::config::{parse_config, tombstone};
use super::manifest::partition_of_key;
use super::paths::{
    legacy_manifest_key, manifest_key, CONFIG_KEY, INDEX_MANIFEST_KEY, LEGACY_INDEX_MANIFEST_KEY,
    MANIFESTS_PREFIX, S3VECTORS_CATALOG_KEY, VECTORS_PREFIX,
};
use super::watched::{revalidate, Revalidated};
use super::CoordError;
use crate::store::{Counted, ETag, ObjectStore, RequestCounts, StoreError};

/// Every vector bucket, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub buckets: BTreeMap<String, VectorBucket>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VectorBucket {
    /// Unix time of creation, in seconds (with fraction).
    pub creation_time: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_configuration: Option<serde_json::Value>,
    pub indexes: BTreeMap<String, IndexEntry>,
    /// Sealed incarnations whose objects are still being deleted (their
    /// names are free again). Any instance may finish them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleting: Vec<Deletion>,
}

impl VectorBucket {
    /// Frees `name` if it still names `incarnation` being deleted: the
    /// entry leaves the index list and its deletion is recorded in
    /// `deleting` until its objects are gone. Whether it did.
    pub fn free(&mut self, name: &str, incarnation: Option<&str>) -> bool {
        match self.indexes.get(name) {
            Some(e) if e.deleting_since.is_some() && e.incarnation.as_deref() == incarnation => {
                let since = e.deleting_since.unwrap_or_default();
                self.indexes.remove(name);
                self.deleting.push(Deletion {
                    index_name: name.to_string(),
                    incarnation: incarnation.map(str::to_string),
                    since,
                });
                true
            }
            _ => false,
        }
    }

    /// Drops the record of a finished deletion.
    pub fn forget_deletion(&mut self, name: &str, incarnation: Option<&str>) {
        self.deleting
            .retain(|d| !(d.index_name == name && d.incarnation.as_deref() == incarnation));
    }

    /// The deletion of `name` that is marked but not yet sealed (the name
    /// is still taken), if any.
    pub fn marked(&self, name: &str) -> Option<Deletion> {
        let e = self.indexes.get(name)?;
        e.deleting_since.map(|since| Deletion {
            index_name: name.to_string(),
            incarnation: e.incarnation.clone(),
            since,
        })
    }

    /// Every deletion under way: entries being deleted, then sealed ones.
    pub fn deletions(&self) -> Vec<Deletion> {
        let marked = self.indexes.keys().filter_map(|name| self.marked(name));
        marked.chain(self.deleting.iter().cloned()).collect()
    }
}

/// An incarnation being deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    pub index_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// Unix time (seconds) the deletion began.
    pub since: f64,
}

impl Deletion {
    pub fn prefix(&self, bucket: &str) -> String {
        index_prefix(bucket, &self.index_name, self.incarnation.as_deref())
    }
}

/// Where an incarnation's objects live: `<bucket>/<index>@<incarnation>/`,
/// or `<bucket>/<index>/` for an index made before incarnations.
pub fn index_prefix(bucket: &str, index: &str, incarnation: Option<&str>) -> String {
    match incarnation {
        Some(id) => format!("{bucket}/{index}@{id}/"),
        None => format!("{bucket}/{index}/"),
    }
}

/// A fresh incarnation id: 64 random bits, in hex.
pub fn new_incarnation() -> String {
    format!("{:016x}", super::entropy::random_u64())
}

/// What the API reports about an index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub creation_time: f64,
    /// Always `float32`.
    pub data_type: String,
    pub dimension: u32,
    /// `cosine` or `euclidean`.
    pub distance_metric: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_filterable_metadata_keys: Vec<String>,
    /// The metadata keys searchable as full text, with their languages
    /// (`textSearchConfigurations`; the index's `settings.textFields`
    /// follow them).
    #[serde(
        default,
        rename = "textSearchConfigurations",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub text_search: Vec<TextSearch>,
    /// Which incarnation of the name this is (see the module doc); `None`
    /// for an index made before incarnations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// Set (to the Unix time in seconds) when a deletion began: the index
    /// is gone for every call and the name stays taken until the
    /// incarnation is sealed ([`VectorBucket::free`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since: Option<f64>,
}

/// One full-text searchable key of an S3 Vectors index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TextSearch {
    pub metadata_key: String,
    /// One of AWS's language codes; `None`: the standard analyzer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

impl IndexEntry {
    /// Where this incarnation's objects live.
    pub fn prefix(&self, bucket: &str, name: &str) -> String {
        index_prefix(bucket, name, self.incarnation.as_deref())
    }
}

/// Why a catalog change failed: the store, or the caller's own refusal
/// (`E`, whatever `change` returned: a bucket that already exists, an
/// index that does not, ...).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError<E> {
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("{0}")]
    Refused(E),
}

/// Reads the catalog; a store without one has an empty catalog.
pub async fn read(store: &dyn ObjectStore) -> Result<(Catalog, Option<ETag>), CoordError> {
    match super::cas::read_json::<Catalog>(store, S3VECTORS_CATALOG_KEY).await? {
        Some((c, etag)) => Ok((c, Some(etag))),
        None => Ok((Catalog::default(), None)),
    }
}

/// Applies `change` to the newest catalog with compare-and-swap (re-read
/// and re-applied on a lost race, so it must be a pure function of the
/// catalog it is given). `change` returns `Err(refusal)` to refuse: then
/// nothing is written and [`CatalogError::Refused`] carries the refusal.
pub async fn update<F, E>(
    store: &dyn ObjectStore,
    mut change: F,
) -> Result<Catalog, CatalogError<E>>
where
    F: FnMut(&mut Catalog) -> Result<(), E>,
    E: std::fmt::Display,
{
    let mut refused = None;
    let result = update_json::<Catalog, _>(
        store,
        S3VECTORS_CATALOG_KEY,
        Backoff::default(),
        |current| {
            let mut next = current.unwrap_or_default();
            match change(&mut next) {
                Ok(()) => {
                    refused = None;
                    Ok(Step::Write(next))
                }
                Err(refusal) => {
                    refused = Some(refusal);
                    Ok(Step::Keep(next))
                }
            }
        },
    )
    .await;
    if let Some(refusal) = refused {
        return Err(CatalogError::Refused(refusal));
    }
    Ok(result?.value)
}

/// A catalog kept in memory and revalidated (conditional GET) when older
/// than `max_age`, so the query path pays at most one cheap request per
/// `max_age` to learn which indexes exist.
pub(crate) struct CatalogCache {
    max_age: Duration,
    held: Mutex<Option<(Catalog, Option<ETag>, Instant)>>,
}

impl CatalogCache {
    pub(crate) fn new(max_age: Duration) -> Self {
        CatalogCache {
            max_age,
            held: Mutex::new(None),
        }
    }

    /// The catalog, revalidated if the copy held is older than `max_age`.
    pub(crate) async fn get(&self, store: &dyn ObjectStore) -> Result<Catalog, CoordError> {
        self.get_within(store, self.max_age).await
    }

    /// The catalog, revalidated now (for a name the cached copy lacks:
    /// another instance may have just created it).
    pub(crate) async fn revalidate(&self, store: &dyn ObjectStore) -> Result<Catalog, CoordError> {
        self.get_within(store, Duration::ZERO).await
    }

    async fn get_within(
        &self,
        store: &dyn ObjectStore,
        max_age: Duration,
    ) -> Result<Catalog, CoordError> {
        let held = self.held.lock().unwrap().clone();
        let now = Instant::now();
        let (catalog, etag) = match held {
            Some((c, _, at)) if now.duration_since(at) < max_age => return Ok(c),
            Some((c, etag, _)) => {
                match revalidate(store, S3VECTORS_CATALOG_KEY, etag.as_ref(), None).await? {
                    Revalidated::Unchanged => (c, etag),
                    Revalidated::Changed(got) => (
                        parse_json(S3VECTORS_CATALOG_KEY, &got.bytes)?,
                        Some(got.etag),
                    ),
                    Revalidated::Missing => (Catalog::default(), None),
                }
            }
            None => read(store).await?,
        };
        *self.held.lock().unwrap() = Some((catalog.clone(), etag, now));
        Ok(catalog)
    }

    /// Replaces the copy held with one this instance just wrote.
    pub(crate) fn set(&self, catalog: Catalog) {
        // The ETag of a write is not kept: the next revalidation reads it whole.
        *self.held.lock().unwrap() = Some((catalog, None, Instant::now()));
    }
}

/// The root of a store whose prefixes hold S3 Vectors indexes, with its
/// catalog cached: what the S3 Vectors service holds. It reaches each
/// index through a handle of its own (`Db`); this store serves only the
/// catalog and, once an index is deleted from it, the removal of the
/// index's objects.
pub struct CatalogStore {
    store: Arc<Counted>,
    cache: CatalogCache,
}

impl CatalogStore {
    /// Opens the store at `url`; the catalog copy is revalidated when
    /// older than `max_age` (see [`CatalogCache`]).
    pub async fn open(url: &str, max_age: Duration) -> Result<CatalogStore, StoreError> {
        Ok(CatalogStore::on(crate::store::open(url).await?, max_age))
    }

    /// The catalog of the store `store` (see [`CatalogStore::open`]).
    pub fn on(store: Arc<Counted>, max_age: Duration) -> CatalogStore {
        CatalogStore {
            store,
            cache: CatalogCache::new(max_age),
        }
    }

    /// The catalog, revalidated if the copy held is older than `max_age`.
    pub async fn get(&self) -> Result<Catalog, CoordError> {
        self.cache.get(self.store.as_ref()).await
    }

    /// The catalog, revalidated now.
    pub async fn revalidate(&self) -> Result<Catalog, CoordError> {
        self.cache.revalidate(self.store.as_ref()).await
    }

    /// [`update`], keeping the catalog written as the copy held.
    pub async fn update<F, E>(&self, change: F) -> Result<Catalog, CatalogError<E>>
    where
        F: FnMut(&mut Catalog) -> Result<(), E>,
        E: std::fmt::Display,
    {
        let c = update(self.store.as_ref(), change).await?;
        self.cache.set(c.clone());
        Ok(c)
    }

    /// Seals the incarnation under `prefix` (the catalog already marks it
    /// as being deleted): its config becomes a tombstone (no instance can
    /// open it any more; running ones stop at their next config check),
    /// then every commit point goes, the partition manifests and the index
    /// manifest, so no commit can land in it any more (commits never
    /// recreate a manifest). Idempotent; safe to run concurrently and to
    /// resume after any pause, since it touches only `prefix`.
    pub async fn seal(&self, prefix: &str) -> Result<(), CoordError> {
        let store = self.store.as_ref();
        let config_key = format!("{prefix}{CONFIG_KEY}");
        // The partition count (for the manifests' keys), and whether the
        // tombstone is still to be written (a resumed seal finds it there).
        let (write, partitions) = match store.get(&config_key).await {
            Ok(got) => match parse_config(&config_key, &got.bytes) {
                Ok(c) => (true, Some(c.settings.partition_count)),
                Err(CoordError::Deleted {
                    partition_count, ..
                }) => (false, partition_count),
                Err(e) => {
                    tracing::warn!(key = %config_key, error = %e, "sealing an index whose config is unreadable");
                    (true, None)
                }
            },
            Err(StoreError::NotFound { .. }) => (true, None),
            Err(e) => return Err(e.into()),
        };
        if write {
            let at = format_time(SystemClock.now());
            store
                .put(&config_key, tombstone(partitions, &at).into())
                .await?;
        }
        // Both layouts' manifests (see `layout`): an index made before the
        // move may still have some at their legacy keys.
        let mut manifests = vec![
            format!("{prefix}{INDEX_MANIFEST_KEY}"),
            format!("{prefix}{LEGACY_INDEX_MANIFEST_KEY}"),
        ];
        match partitions {
            Some(n) => manifests.extend((0..n).flat_map(|p| {
                [manifest_key(p), legacy_manifest_key(p)].map(|k| format!("{prefix}{k}"))
            })),
            // Not known: the manifests are whatever a listing finds.
            None => {
                for o in store.list(&format!("{prefix}{MANIFESTS_PREFIX}")).await? {
                    manifests.push(o.key);
                }
                for o in store.list(&format!("{prefix}{VECTORS_PREFIX}")).await? {
                    let rel = &o.key[prefix.len()..];
                    if partition_of_key(rel).is_some_and(|p| legacy_manifest_key(p) == rel) {
                        manifests.push(o.key);
                    }
                }
            }
        }
        for key in manifests {
            store.delete(&key).await?;
        }
        Ok(())
    }

    /// Deletes every object under a sealed incarnation's `prefix` but its
    /// tombstone, listing again until a listing finds nothing more (or
    /// three passes: objects a stopped handle still writes are left to a
    /// later sweep). Returns how many objects it deleted.
    pub async fn wipe(&self, prefix: &str) -> Result<usize, StoreError> {
        let keep = format!("{prefix}{CONFIG_KEY}");
        let mut deleted = 0;
        for _ in 0..3 {
            let objects = self.store.list(prefix).await?;
            let doomed: Vec<_> = objects.into_iter().filter(|o| o.key != keep).collect();
            if doomed.is_empty() {
                break;
            }
            for o in doomed {
                self.store.delete(&o.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Requests made to this store so far (the catalog's, and deletions').
    pub fn counts(&self) -> RequestCounts {
        self.store.counts()
    }

    /// Writes (or refreshes) the instance record of this `shoal serve
    /// --s3vectors` process at `_s3vectors/instances/<id>.json`: one per
    /// process, whatever the number of indexes it holds open (listed in
    /// `indexes`); the indexes themselves hold no records of it.
    pub async fn publish_server(&self, s: &ServerRecord<'_>) -> Result<(), CoordError> {
        let mut rec = super::instance::InstanceRecord {
            instance_id: s.instance_id.to_string(),
            role: s.role,
            status: "active".into(),
            host: super::instance::host_name(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: s.started_at.to_string(),
            last_heartbeat: format_time(SystemClock.now()),
            heartbeat_seq: s.seq,
            metrics: super::instance::MetricsSnapshot {
                memory_usage: super::instance::resident_memory_bytes(),
                requests: self.store.counts(),
                ..Default::default()
            },
            extra: Default::default(),
        };
        rec.extra
            .insert("indexes".into(), serde_json::json!(s.indexes));
        super::instance::write_record_in(self.store.as_ref(), SERVER_REGISTRY, &rec).await
    }

    /// Removes this process's record (a clean shutdown).
    pub async fn withdraw_server(&self, instance_id: &str) -> Result<(), CoordError> {
        super::instance::remove_record_in(self.store.as_ref(), SERVER_REGISTRY, instance_id).await
    }

    /// The ids of the `serve --s3vectors` processes whose record is fresher
    /// than `timeout`.
    pub async fn live_servers(&self, timeout: Duration) -> Result<Vec<String>, CoordError> {
        let now = SystemClock.now();
        Ok(
            super::instance::list_records_in(self.store.as_ref(), SERVER_REGISTRY)
                .await?
                .into_iter()
                .filter(|r| r.is_alive(now, timeout))
                .map(|r| r.instance_id)
                .collect(),
        )
    }

    /// Removes the records of processes silent for longer than `timeout`
    /// (but `keep`'s); returns their ids.
    pub async fn remove_stale_servers(
        &self,
        timeout: Duration,
        keep: &str,
    ) -> Result<Vec<String>, CoordError> {
        let now = SystemClock.now();
        super::instance::remove_stale_in(self.store.as_ref(), SERVER_REGISTRY, now, timeout, keep)
            .await
    }
}

/// The id of this `serve --s3vectors` process: `BRAINY_INSTANCE_ID`, else
/// one generated from the host name, process id and random bits.
pub fn server_instance_id() -> Result<String, CoordError> {
    let given = std::env::var("BRAINY_INSTANCE_ID")
        .ok()
        .filter(|v| !v.is_empty());
    super::instance::instance_id(given.as_deref())
}

/// Where `shoal serve --s3vectors` processes keep their records.
pub const SERVER_INSTANCES_PREFIX: &str = "_s3vectors/instances/";
const SERVER_REGISTRY: super::instance::Registry =
    super::instance::Registry(SERVER_INSTANCES_PREFIX);

/// What a `serve --s3vectors` process publishes about itself.
#[derive(Clone, Debug)]
pub struct ServerRecord<'a> {
    pub instance_id: &'a str,
    pub role: super::role::Role,
    pub started_at: &'a str,
    /// Records written so far, this one included.
    pub seq: u64,
    /// The index incarnations it holds open (their prefixes).
    pub indexes: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn entry(dimension: u32) -> IndexEntry {
        IndexEntry {
            creation_time: 1.0,
            data_type: "float32".into(),
            dimension,
            distance_metric: "cosine".into(),
            non_filterable_metadata_keys: vec![],
            text_search: Vec::new(),
            incarnation: None,
            deleting_since: None,
        }
    }

    #[tokio::test]
    async fn changes_apply_refusals_write_nothing_and_the_cache_sees_other_writers() {
        let store = MemoryStore::unique();
        assert_eq!(read(&store).await.unwrap().0, Catalog::default());
        update(&store, |c| {
            c.buckets.insert("b1".into(), VectorBucket::default());
            Ok::<(), &str>(())
        })
        .await
        .unwrap();
        let cache = CatalogCache::new(Duration::ZERO);
        assert!(cache.get(&store).await.unwrap().buckets.contains_key("b1"));
        let before = store.get(S3VECTORS_CATALOG_KEY).await.unwrap();
        let e = update(&store, |c| {
            if c.buckets.contains_key("b1") {
                return Err("bucket b1 already exists");
            }
            Ok::<(), &str>(())
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let after = store.get(S3VECTORS_CATALOG_KEY).await.unwrap();
        assert_eq!(before.etag, after.etag, "a refused change writes nothing");
        // Another writer adds an index; a zero-age cache sees it at once.
        update(&store, |c| {
            let b = c.buckets.get_mut("b1").ok_or("no bucket")?;
            b.indexes.insert("i1".into(), entry(3));
            Ok::<(), &str>(())
        })
        .await
        .unwrap();
        let seen = cache.get(&store).await.unwrap();
        assert_eq!(seen.buckets["b1"].indexes["i1"], entry(3));
        // A long-lived cache keeps its copy until it ages out, unless
        // asked to revalidate.
        let slow = CatalogCache::new(Duration::from_secs(3600));
        slow.get(&store).await.unwrap();
        update(&store, |c| {
            c.buckets.remove("b1");
            Ok::<(), &str>(())
        })
        .await
        .unwrap();
        assert!(slow.get(&store).await.unwrap().buckets.contains_key("b1"));
        assert!(slow.revalidate(&store).await.unwrap().buckets.is_empty());
        assert!(slow.get(&store).await.unwrap().buckets.is_empty());
        assert!(cache.get(&store).await.unwrap().buckets.is_empty());
    }
}
