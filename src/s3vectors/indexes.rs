//! The index operations (`CreateIndex`, `GetIndex`, `ListIndexes`,
//! `DeleteIndex`) and what every index-level call stands on: the catalog
//! as this instance sees it, and the registry of open index handles (one
//! [`Db`] per index, opened on first use, closed when the catalog no
//! longer lists the index).

use std::time::Duration;

use serde_json::{json, Value};

use super::buckets::bucket_of;
use super::error::{quota, S3vError};
use super::wire::check_name;
use super::{now_secs, Call, Service, MAX_DIMENSION, MAX_INDEXES};
use crate::api::{JoinOptions, Metric, RequestedSettings, Role};
use crate::coord::catalog::{Catalog, CatalogError, IndexEntry};
use crate::db::{Db, OpenOptions};
use crate::error::Error;

/// A deletion that has not finished after this long is taken to have
/// died: a `CreateIndex` of the same name then finishes it.
const STALE_DELETE: Duration = Duration::from_secs(10 * 60);

/// The index `bucket/index`, unless it is missing or being deleted.
pub(super) fn live_index<'c>(
    cat: &'c Catalog,
    bucket: &str,
    index: &str,
) -> Result<&'c IndexEntry, S3vError> {
    match bucket_of(cat, bucket)?.indexes.get(index) {
        Some(e) if e.deleting_since.is_none() => Ok(e),
        _ => Err(S3vError::not_found(format!(
            "index {index} does not exist in vector bucket {bucket}"
        ))),
    }
}

/// Adds `entry` as `bucket/index` to the catalog, unless the name is
/// taken (a live index, or one being deleted that is not `stale`) or the
/// bucket is full.
fn add_index(
    c: &mut Catalog,
    bucket: &str,
    index: &str,
    entry: &IndexEntry,
    stale: bool,
) -> Result<(), S3vError> {
    let Some(b) = c.buckets.get_mut(bucket) else {
        return Err(S3vError::not_found(format!(
            "vector bucket {bucket} does not exist"
        )));
    };
    match b.indexes.get(index) {
        Some(e) if e.deleting_since.is_none() => {
            return Err(S3vError::conflict(format!(
                "an index named {index} already exists in vector bucket \
                 {bucket}"
            )))
        }
        Some(e) if !stale => {
            return Err(S3vError::conflict(format!(
                "index {index} in vector bucket {bucket} is being deleted \
                 (since {:.0}); retry shortly",
                e.deleting_since.unwrap_or_default()
            )))
        }
        _ => {}
    }
    if b.indexes.len() >= MAX_INDEXES {
        return Err(quota(format!(
            "vector bucket {bucket} already holds {MAX_INDEXES} indexes"
        )));
    }
    b.indexes.insert(index.to_string(), entry.clone());
    Ok(())
}

impl Service {
    fn index_url(&self, bucket: &str, index: &str) -> String {
        format!("{}/{bucket}/{index}", self.opts.root.trim_end_matches('/'))
    }

    pub(super) async fn fresh_catalog(&self) -> Result<Catalog, S3vError> {
        let cat = self.catalog.get().await?;
        self.forget_gone(&cat).await;
        Ok(cat)
    }

    /// Closes the handles of indexes `cat` no longer lists as live (deleted
    /// by any instance), so their heartbeats and background work stop.
    async fn forget_gone(&self, cat: &Catalog) {
        let gone: Vec<String> = self
            .indexes
            .lock()
            .unwrap()
            .keys()
            .filter(|name| {
                let (b, i) = name.split_once('/').unwrap_or((name, ""));
                live_index(cat, b, i).is_err()
            })
            .cloned()
            .collect();
        for name in gone {
            self.forget(&name).await;
        }
    }

    /// The catalog, revalidated first if the cached copy fails `has`
    /// (a name another instance may have just created is never answered
    /// NotFound from a stale copy).
    pub(super) async fn catalog_with(
        &self,
        has: impl Fn(&Catalog) -> bool,
    ) -> Result<Catalog, S3vError> {
        let cat = self.fresh_catalog().await?;
        if has(&cat) {
            return Ok(cat);
        }
        let cat = self.catalog.revalidate().await?;
        self.forget_gone(&cat).await;
        Ok(cat)
    }

    pub(super) async fn change_catalog<F>(&self, change: F) -> Result<Catalog, S3vError>
    where
        F: FnMut(&mut Catalog) -> Result<(), S3vError>,
    {
        match self.catalog.update(change).await {
            Ok(c) => Ok(c),
            Err(CatalogError::Refused(e)) => Err(e),
            Err(CatalogError::Coord(e)) => Err(e.into()),
        }
    }

    /// The open handle on an index the catalog holds, opened (and its
    /// config created, if a crash left it missing) on first use.
    pub(super) async fn index(
        &self,
        bucket: &str,
        index: &str,
    ) -> Result<(Db, IndexEntry), S3vError> {
        let cat = self
            .catalog_with(|c| live_index(c, bucket, index).is_ok())
            .await?;
        let name = format!("{bucket}/{index}");
        let entry = match live_index(&cat, bucket, index) {
            Ok(e) => e.clone(),
            Err(e) => {
                // Gone (maybe deleted by another instance): let go of it.
                self.forget(&name).await;
                return Err(e);
            }
        };
        let cell = self
            .indexes
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .clone();
        let db = cell
            .get_or_try_init(|| self.open_index(bucket, index, &entry))
            .await?
            .clone();
        Ok((db, entry))
    }

    /// Closes and drops this instance's handle on an index, if it has one.
    pub(super) async fn forget(&self, name: &str) {
        let cell = self.indexes.lock().unwrap().remove(name);
        if let Some(db) = cell.as_ref().and_then(|c| c.get()) {
            let _ = db.close().await;
        }
    }

    async fn open_index(&self, bucket: &str, index: &str, e: &IndexEntry) -> Result<Db, S3vError> {
        let metric = if e.distance_metric == "euclidean" {
            Metric::Euclidean
        } else {
            Metric::Cosine
        };
        let opts = OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    dimensions: Some(e.dimension),
                    distance_metric: Some(metric),
                    partition_count: self.opts.partitions,
                    ..Default::default()
                },
                role: self.opts.role,
                create: self.opts.role != Some(Role::Reader),
                ..Default::default()
            },
            compact_every: self.opts.compact_every,
            gc_every: self.opts.gc_every,
            ..Default::default()
        };
        Ok(Db::open(&self.index_url(bucket, index), opts).await?)
    }

    /// Deletes every object under an index's prefix.
    pub(super) async fn wipe(&self, bucket: &str, index: &str) -> Result<usize, S3vError> {
        self.catalog
            .delete_index_objects(bucket, index)
            .await
            .map_err(|e| S3vError::from(Error::from(e)))
    }
}

impl Call<'_> {
    pub(super) async fn create_index(&self) -> Result<Value, S3vError> {
        let bucket = self.bucket_name()?;
        let index = self
            .str_field("indexName")?
            .ok_or_else(|| S3vError::validation("indexName is required"))?
            .to_string();
        check_name("indexName", &index)?;
        let entry = self.new_index_entry()?;
        // A deletion that died half-way left objects behind: finish it
        // before the name is reused (only after STALE_DELETE, so a
        // deletion still running on another instance is never raced).
        let cat = self.svc.fresh_catalog().await?;
        let stale = cat
            .buckets
            .get(&bucket)
            .and_then(|b| b.indexes.get(&index))
            .and_then(|e| e.deleting_since)
            .is_some_and(|since| now_secs() - since > STALE_DELETE.as_secs_f64());
        if stale {
            self.svc.wipe(&bucket, &index).await?;
        }
        self.svc
            .change_catalog(|c| add_index(c, &bucket, &index, &entry, stale))
            .await?;
        // Create the index's config now, so a bad store fails here.
        self.svc.index(&bucket, &index).await?;
        Ok(json!({"indexArn": self.svc.index_arn(&self.region, &bucket, &index)}))
    }

    /// The catalog entry `CreateIndex` asks for: data type, dimension,
    /// metric and metadata configuration, checked.
    fn new_index_entry(&self) -> Result<IndexEntry, S3vError> {
        match self.str_field("dataType")? {
            Some("float32") => {}
            Some(other) => {
                return Err(S3vError::validation(format!(
                    "dataType {other} is not supported; use float32"
                )))
            }
            None => return Err(S3vError::validation("dataType is required (float32)")),
        }
        let dimension = self
            .int_field("dimension", 1, MAX_DIMENSION)?
            .ok_or_else(|| S3vError::validation("dimension is required (1 to 4096)"))?
            as u32;
        let metric = match self.str_field("distanceMetric")? {
            Some(m @ ("cosine" | "euclidean")) => m.to_string(),
            Some(other) => {
                return Err(S3vError::validation(format!(
                    "distanceMetric {other} is not supported; use cosine or euclidean"
                )))
            }
            None => {
                return Err(S3vError::validation(
                    "distanceMetric is required (cosine or euclidean)",
                ))
            }
        };
        let non_filterable = self.non_filterable_keys()?;
        let created = now_secs();
        Ok(IndexEntry {
            creation_time: created,
            data_type: "float32".into(),
            dimension,
            distance_metric: metric,
            non_filterable_metadata_keys: non_filterable,
            deleting_since: None,
        })
    }

    /// `metadataConfiguration.nonFilterableMetadataKeys` (none if absent).
    fn non_filterable_keys(&self) -> Result<Vec<String>, S3vError> {
        let mut non_filterable = Vec::new();
        if let Some(cfg) = self.input.get("metadataConfiguration") {
            if let Some(keys) = cfg.get("nonFilterableMetadataKeys") {
                let keys = keys.as_array().ok_or_else(|| {
                    S3vError::validation("nonFilterableMetadataKeys must be a list of strings")
                })?;
                if keys.len() > 10 {
                    return Err(S3vError::validation(format!(
                        "nonFilterableMetadataKeys holds {} keys; at most 10 are allowed",
                        keys.len()
                    )));
                }
                for k in keys {
                    match k.as_str() {
                        Some(s) if (1..=63).contains(&s.len()) => non_filterable.push(s.into()),
                        _ => {
                            return Err(S3vError::validation(format!(
                                "non-filterable metadata key {k} must be a string of 1 to 63 \
                                 characters"
                            )))
                        }
                    }
                }
            }
            if cfg.get("textSearchConfigurations").is_some() {
                return Err(S3vError::validation(
                    "textSearchConfigurations are not supported by shoal",
                ));
            }
        }
        Ok(non_filterable)
    }

    fn index_summary(&self, bucket: &str, index: &str, e: &IndexEntry, full: bool) -> Value {
        let mut v = json!({
            "vectorBucketName": bucket,
            "indexName": index,
            "indexArn": self.svc.index_arn(&self.region, bucket, index),
            "creationTime": e.creation_time,
        });
        if full {
            v["dataType"] = json!(e.data_type);
            v["dimension"] = json!(e.dimension);
            v["distanceMetric"] = json!(e.distance_metric);
            if !e.non_filterable_metadata_keys.is_empty() {
                v["metadataConfiguration"] =
                    json!({"nonFilterableMetadataKeys": e.non_filterable_metadata_keys});
            }
        }
        v
    }

    pub(super) async fn get_index(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let cat = self
            .svc
            .catalog_with(|c| live_index(c, &bucket, &index).is_ok())
            .await?;
        let e = live_index(&cat, &bucket, &index)?;
        Ok(json!({"index": self.index_summary(&bucket, &index, e, true)}))
    }

    pub(super) async fn list_indexes(&self) -> Result<Value, S3vError> {
        let bucket = self.bucket_name()?;
        let cat = self
            .svc
            .catalog_with(|c| c.buckets.contains_key(&bucket))
            .await?;
        let b = bucket_of(&cat, &bucket)?;
        let live = b
            .indexes
            .iter()
            .filter(|(_, e)| e.deleting_since.is_none())
            .map(|(n, _)| n);
        let (names, next) = self.page(live)?;
        let list: Vec<Value> = names
            .iter()
            .map(|n| self.index_summary(&bucket, n, &b.indexes[*n], false))
            .collect();
        let mut out = json!({"indexes": list});
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        Ok(out)
    }

    pub(super) async fn delete_index(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let since = now_secs();
        // 1. Hide it: from now on no call finds it.
        self.svc
            .change_catalog(|c| {
                let live = c
                    .buckets
                    .get_mut(&bucket)
                    .and_then(|b| b.indexes.get_mut(&index))
                    .filter(|e| e.deleting_since.is_none());
                let Some(e) = live else {
                    return Err(S3vError::not_found(format!(
                        "index {index} does not exist in vector bucket {bucket}"
                    )));
                };
                e.deleting_since = Some(since);
                Ok(())
            })
            .await?;
        // 2. Let go of our handle, 3. delete its objects, 4. forget the name.
        self.svc.forget(&format!("{bucket}/{index}")).await;
        self.svc.wipe(&bucket, &index).await?;
        self.svc
            .change_catalog(|c| {
                if let Some(b) = c.buckets.get_mut(&bucket) {
                    if b.indexes.get(&index).and_then(|e| e.deleting_since) == Some(since) {
                        b.indexes.remove(&index);
                    }
                }
                Ok(())
            })
            .await?;
        Ok(json!({}))
    }
}
