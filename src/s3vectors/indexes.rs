//! The index operations (`CreateIndex`, `GetIndex`, `ListIndexes`,
//! `DeleteIndex`) and what every index-level call stands on: the catalog
//! as this instance sees it, the registry of open index handles (one
//! [`Db`] per index incarnation, opened on first use, closed when the
//! catalog no longer lists that incarnation); `deletion` finishes
//! deletions (ARCHITECTURE.md, "S3 Vectors index lifecycle").

use std::future::Future;

use serde_json::{json, Map, Value};

use super::buckets::bucket_of;
use super::error::{quota, S3vError};
use super::text::{text_fields, text_search_configs, INDEX_MODE};
use super::wire::check_name;
use super::{now_secs, Call, Service, MAX_DIMENSION, MAX_INDEXES};
use crate::api::{JoinOptions, Metric, RequestedSettings, Role};
use crate::coord::catalog::{new_incarnation, Catalog, CatalogError, Deletion, IndexEntry};
use crate::db::{Db, OpenOptions};

/// The index `bucket/index`, unless it is missing or being deleted.
pub(super) fn live_index<'c>(
    cat: &'c Catalog,
    bucket: &str,
    index: &str,
) -> Result<&'c IndexEntry, S3vError> {
    match bucket_of(cat, bucket)?.indexes.get(index) {
        Some(e) if e.deleting_since.is_none() => Ok(e),
        Some(_) => Err(S3vError::not_found(format!(
            "index {index} in vector bucket {bucket} is being deleted"
        ))),
        None => Err(S3vError::not_found(format!(
            "index {index} does not exist in vector bucket {bucket}"
        ))),
    }
}

/// Adds `entry` as `bucket/index` to the catalog, unless the name is
/// taken (a live index, or one being deleted other than `sealed`, which
/// the caller has sealed and this frees) or the bucket is full.
fn add_index(
    c: &mut Catalog,
    bucket: &str,
    index: &str,
    entry: &IndexEntry,
    sealed: Option<&Deletion>,
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
        Some(e) => {
            let ours = sealed.is_some_and(|d| d.incarnation == e.incarnation);
            if !ours || !b.free(index, e.incarnation.clone().as_deref()) {
                return Err(S3vError::conflict(format!(
                    "index {index} in vector bucket {bucket} is being deleted; retry shortly"
                )));
            }
        }
        None => {}
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
    /// The store URL of an incarnation's prefix.
    fn index_url(&self, prefix: &str) -> String {
        format!(
            "{}/{}",
            self.opts.root.trim_end_matches('/'),
            prefix.trim_end_matches('/')
        )
    }

    pub(super) async fn fresh_catalog(&self) -> Result<Catalog, S3vError> {
        let cat = self.catalog.get().await?;
        self.forget_gone(&cat).await;
        Ok(cat)
    }

    /// Closes the handles of incarnations `cat` no longer lists as live
    /// (deleted by any instance, or replaced), so their heartbeats and
    /// background work stop.
    async fn forget_gone(&self, cat: &Catalog) {
        let live: std::collections::HashSet<String> = cat
            .buckets
            .iter()
            .flat_map(|(b, vb)| {
                vb.indexes
                    .iter()
                    .filter(|(_, e)| e.deleting_since.is_none())
                    .map(move |(name, e)| e.prefix(b, name))
            })
            .collect();
        let gone: Vec<String> = self
            .indexes
            .lock()
            .unwrap()
            .keys()
            .filter(|prefix| !live.contains(*prefix))
            .cloned()
            .collect();
        for prefix in gone {
            self.forget(&prefix).await;
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
        self.revalidated_catalog().await
    }

    pub(super) async fn revalidated_catalog(&self) -> Result<Catalog, S3vError> {
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

    /// The open handle on the live incarnation of an index, opened (and
    /// its config created, if a crash left it missing) on first use.
    pub(super) async fn index(
        &self,
        bucket: &str,
        index: &str,
    ) -> Result<(Db, IndexEntry), S3vError> {
        let cat = self
            .catalog_with(|c| live_index(c, bucket, index).is_ok())
            .await?;
        let entry = live_index(&cat, bucket, index)?.clone();
        let prefix = entry.prefix(bucket, index);
        let cell = {
            let mut map = self.indexes.lock().unwrap();
            let h = map.entry(prefix.clone()).or_default();
            h.used = Some(std::time::Instant::now());
            h.cell.clone()
        };
        let db = cell
            .get_or_try_init(|| self.open_index(&prefix, &entry))
            .await?
            .clone();
        Ok((db, entry))
    }

    /// Runs `call` on the live incarnation of `bucket/index`. If it fails
    /// and the catalog, read again, no longer lists that incarnation (it
    /// was deleted, maybe re-created, while this instance's copy was
    /// stale), the call is run once more on the incarnation now live, or
    /// answered NotFound: a call through a stale handle never lands in a
    /// deleted incarnation's place (its commit points are gone) and never
    /// reports that incarnation's errors.
    pub(super) async fn on_index<T, F, Fut>(
        &self,
        bucket: &str,
        index: &str,
        call: F,
    ) -> Result<T, S3vError>
    where
        F: Fn(Db, IndexEntry) -> Fut,
        Fut: Future<Output = Result<T, S3vError>>,
    {
        let mut tried = None;
        loop {
            let (db, entry) = self.index(bucket, index).await?;
            let err = match call(db, entry.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let cat = self.revalidated_catalog().await?;
            let now = live_index(&cat, bucket, index)?;
            if now.incarnation == entry.incarnation || tried == Some(entry.incarnation.clone()) {
                return Err(err);
            }
            tracing::info!(
                bucket,
                index,
                "the index was re-created while a call ran; running it again"
            );
            tried = Some(entry.incarnation);
        }
    }

    /// Closes and drops this instance's handle on the incarnation under
    /// `prefix`, if it has one.
    pub(super) async fn forget(&self, prefix: &str) {
        let cell = self.indexes.lock().unwrap().remove(prefix).map(|h| h.cell);
        if let Some(db) = cell.as_ref().and_then(|c| c.get()) {
            let _ = db.close().await;
        }
    }

    async fn open_index(&self, prefix: &str, e: &IndexEntry) -> Result<Db, S3vError> {
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
                    text_fields: Some(text_fields(&e.text_search)),
                    ..Default::default()
                },
                role: self.opts.role,
                create: self.opts.role != Some(Role::Reader),
                // The process keeps one record at the root instead.
                register: false,
                ..Default::default()
            },
            compact_every: self.opts.compact_every,
            gc_every: self.opts.gc_every,
            ..Default::default()
        };
        Ok(Db::open(&self.index_url(prefix), opts).await?)
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
        // A deletion of the name not yet sealed (running, or its deleter
        // died) holds the name: seal it here (harmless if it is running),
        // and the name is free. Its objects are left to the sweep.
        let cat = self.svc.fresh_catalog().await?;
        let pending = cat.buckets.get(&bucket).and_then(|b| b.marked(&index));
        if let Some(d) = &pending {
            let prefix = d.prefix(&bucket);
            self.svc.forget(&prefix).await;
            self.svc.catalog.seal(&prefix).await?;
        }
        self.svc
            .change_catalog(|c| add_index(c, &bucket, &index, &entry, pending.as_ref()))
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
        let text_search = match self
            .input
            .get("metadataConfiguration")
            .and_then(|c| c.get("textSearchConfigurations"))
        {
            Some(list) => text_search_configs(list)?,
            None => Vec::new(),
        };
        let created = now_secs();
        Ok(IndexEntry {
            creation_time: created,
            data_type: "float32".into(),
            dimension,
            distance_metric: metric,
            non_filterable_metadata_keys: non_filterable,
            text_search,
            incarnation: Some(new_incarnation()),
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
            let mut cfg = Map::new();
            if !e.non_filterable_metadata_keys.is_empty() {
                cfg.insert(
                    "nonFilterableMetadataKeys".into(),
                    json!(e.non_filterable_metadata_keys),
                );
            }
            if !e.text_search.is_empty() {
                // Every key is searchable as soon as it is configured
                // (shards without its text index are scanned); GetIndex
                // reports BUILDING while the indexer backfills it.
                let configs: Vec<Value> = e
                    .text_search
                    .iter()
                    .map(|t| {
                        let mut c = json!({"metadataKey": t.metadata_key, "status": "ACTIVE"});
                        if let Some(l) = &t.language {
                            c["language"] = json!(l);
                        }
                        c
                    })
                    .collect();
                cfg.insert("textSearchConfigurations".into(), json!(configs));
            }
            if !cfg.is_empty() {
                v["metadataConfiguration"] = Value::Object(cfg);
            }
            // Filters always apply before the vector search (shoal routes
            // by the filter's selectivity) and `$startsWith` is supported.
            v["indexMode"] = json!(INDEX_MODE);
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
        let mut summary = self.index_summary(&bucket, &index, e, true);
        if !e.text_search.is_empty() {
            let statuses = self
                .svc
                .on_index(&bucket, &index, |db, _| async move {
                    db.text_index_status().await.map_err(S3vError::from)
                })
                .await?;
            let configs =
                summary["metadataConfiguration"]["textSearchConfigurations"].as_array_mut();
            for c in configs.into_iter().flatten() {
                let key = c["metadataKey"].as_str().unwrap_or_default();
                if let Some(st) = statuses.iter().find(|s| s.key == key) {
                    c["status"] = json!(st.status);
                }
            }
        }
        Ok(json!({"index": summary}))
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
        // An extension AWS clients ignore: deletions under way, which hold
        // storage (and, until sealed, the name).
        let deleting: Vec<Value> = b
            .deletions()
            .iter()
            .map(|d| json!({"indexName": d.index_name, "deletingSince": d.since}))
            .collect();
        if !deleting.is_empty() {
            out["deletingIndexes"] = json!(deleting);
        }
        Ok(out)
    }

    /// Marks the index deleted (no call finds it from now on), then
    /// finishes its deletion ([`Service::finish`]). On a name whose
    /// deletion is already under way (its deleter may have died), it
    /// finishes that deletion.
    pub(super) async fn delete_index(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let since = now_secs();
        let cat = self
            .svc
            .change_catalog(|c| {
                let Some(b) = c.buckets.get_mut(&bucket) else {
                    return Err(S3vError::not_found(format!(
                        "vector bucket {bucket} does not exist"
                    )));
                };
                match b.indexes.get_mut(&index) {
                    Some(e) if e.deleting_since.is_none() => e.deleting_since = Some(since),
                    Some(_) => {}
                    None if b.deleting.iter().any(|d| d.index_name == index) => {}
                    None => {
                        return Err(S3vError::not_found(format!(
                            "index {index} does not exist in vector bucket {bucket}"
                        )))
                    }
                }
                Ok(())
            })
            .await?;
        let doomed: Vec<Deletion> = bucket_of(&cat, &bucket)?
            .deletions()
            .into_iter()
            .filter(|d| d.index_name == index)
            .collect();
        for d in &doomed {
            self.svc.finish(&bucket, d).await?;
        }
        Ok(json!({}))
    }
}
