//! The S3 Vectors catalog: one small JSON object
//! ([`paths::S3VECTORS_CATALOG_KEY`]) naming the vector buckets and their
//! indexes, changed only by compare-and-swap ([`super::cas`]). Listing
//! buckets and indexes reads this object, never a LIST of the store, and
//! the query path checks an index exists against a cached copy
//! revalidated with a conditional GET.
//!
//! Each index is an ordinary shoal index (its own config, partitions and
//! instances) under `<vector-bucket>/<index>/`; the catalog holds what the
//! S3 Vectors API reports about it and decides which names exist: a name
//! enters the catalog before its config is created and leaves it before
//! its objects are deleted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cas::{parse_json, update_json, Backoff, Step};
use super::paths::S3VECTORS_CATALOG_KEY;
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
    /// Set (to the Unix time in seconds) when a deletion began: the index
    /// is gone for every call, its objects are being deleted, and the name
    /// is freed when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since: Option<f64>,
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
        Ok(CatalogStore {
            store: crate::store::open(url).await?,
            cache: CatalogCache::new(max_age),
        })
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

    /// Deletes every object under `<bucket>/<index>/`, one by one; returns
    /// how many. Only for an index the catalog already marks as being
    /// deleted (no call finds it) and no handle of this instance holds.
    pub async fn delete_index_objects(
        &self,
        bucket: &str,
        index: &str,
    ) -> Result<usize, StoreError> {
        let prefix = format!("{bucket}/{index}/");
        let objects = self.store.list(&prefix).await?;
        let n = objects.len();
        for o in objects {
            self.store.delete(&o.key).await?;
        }
        Ok(n)
    }

    /// Requests made to this store so far (the catalog's, and deletions').
    pub fn counts(&self) -> RequestCounts {
        self.store.counts()
    }
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
