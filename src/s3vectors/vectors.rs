//! The vector operations: `PutVectors`, `GetVectors`, `DeleteVectors`,
//! `ListVectors` and `QueryVectors`, each on the [`Db`] handle of the index
//! it names.

use serde_json::{json, Value};

use super::error::{read_only, S3vError};
use super::wire::{
    decode_token, encode_token, escape_key, floats, from_stored, to_record, to_stored_filter,
    unescape_key,
};
use super::{Call, MAX_GET, MAX_LIST_VECTORS, MAX_PUT, MAX_TOP_K};
use crate::api::MAX_K;
use crate::api::{Consistency, HitScores, QueryText, Role, SearchRequest};
use crate::coord::catalog::IndexEntry;
use crate::db::Db;

impl Call<'_> {
    pub(super) async fn put_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let items = self.list_field("vectors", 1, MAX_PUT)?;
        self.svc
            .on_index(&bucket, &index, |db, entry| async move {
                if db.role() == Role::Reader {
                    return Err(read_only());
                }
                let mut records = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    records.push(to_record(i, item, &entry)?);
                }
                db.upsert(&records).await?;
                Ok(json!({}))
            })
            .await
    }

    /// The answer for stored records: key, and data and metadata if asked.
    async fn fetch(
        &self,
        db: &Db,
        keys: Vec<String>,
        data: bool,
        metadata: bool,
        consistency: Consistency,
    ) -> Result<Vec<Value>, S3vError> {
        // One batch: each partition's freshness is checked once, not per key.
        let wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = db.get_many(&wanted, consistency).await?;
        let vectors = keys
            .iter()
            .zip(found)
            .filter_map(|(key, rec)| {
                let rec = rec?;
                let mut v = json!({"key": key});
                if data {
                    v["data"] = json!({"float32": rec.vector});
                }
                if metadata {
                    v["metadata"] = Value::Object(from_stored(rec.metadata));
                }
                Some(v)
            })
            .collect();
        Ok(vectors)
    }

    pub(super) async fn get_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let keys = self.keys(MAX_GET)?;
        let (data, metadata) = (
            self.bool_field("returnData")?,
            self.bool_field("returnMetadata")?,
        );
        let consistency = self.consistency()?;
        self.svc
            .on_index(&bucket, &index, |db, _| {
                let keys = keys.clone();
                async move {
                    let vectors = self.fetch(&db, keys, data, metadata, consistency).await?;
                    Ok(json!({"vectors": vectors}))
                }
            })
            .await
    }

    pub(super) async fn delete_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let keys = self.keys(MAX_PUT)?;
        let keys = &keys;
        self.svc
            .on_index(&bucket, &index, |db, _| async move {
                if db.role() == Role::Reader {
                    return Err(read_only());
                }
                db.delete(keys).await?;
                Ok(json!({}))
            })
            .await
    }

    pub(super) async fn list_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let max = self
            .int_field("maxResults", 1, MAX_LIST_VECTORS as u64)?
            .unwrap_or(500) as usize;
        let count = self.int_field("segmentCount", 1, 16)?;
        let segment = self.int_field("segmentIndex", 0, 15)?;
        let (count, segment) = match (count, segment) {
            (None, None) => (1u32, 0u32),
            (Some(c), Some(s)) if s < c => (c as u32, s as u32),
            (Some(c), Some(s)) => {
                return Err(S3vError::validation(format!(
                    "segmentIndex {s} must be less than segmentCount {c}"
                )))
            }
            _ => {
                return Err(S3vError::validation(
                    "segmentCount and segmentIndex go together: give both or neither",
                ))
            }
        };
        let (data, metadata) = (
            self.bool_field("returnData")?,
            self.bool_field("returnMetadata")?,
        );
        let consistency = self.consistency()?;
        let token = self.str_field("nextToken")?;
        self.svc
            .on_index(&bucket, &index, |db, _| async move {
                self.list_page(
                    &db,
                    (count, segment),
                    max,
                    token,
                    (data, metadata),
                    consistency,
                )
                .await
            })
            .await
    }

    /// One page of `ListVectors` on `db`: segment `segment` of `count`.
    async fn list_page(
        &self,
        db: &Db,
        (count, segment): (u32, u32),
        max: usize,
        token: Option<&str>,
        (data, metadata): (bool, bool),
        consistency: Consistency,
    ) -> Result<Value, S3vError> {
        let partitions = db.settings().partition_count;
        let (mut p, mut after) = match token {
            None => (segment, None),
            Some(t) => decode_token(t, count, segment, partitions)?,
        };
        // Partitions p ≡ segment (mod count) hold this segment's vectors,
        // each listed in id order; the token says where the page stopped.
        let mut keys: Vec<String> = Vec::new();
        let mut next = None;
        while p < partitions {
            let ids = db.list_ids(p, consistency).await?;
            let start = match &after {
                Some(a) => ids.partition_point(|id| id <= a),
                None => 0,
            };
            for id in &ids[start..] {
                if keys.len() == max {
                    // Resume in this partition after the last key taken
                    // from it (none: from its start).
                    next = Some(encode_token(p, after.as_deref()));
                    break;
                }
                keys.push(id.clone());
                after = Some(id.clone());
            }
            if next.is_some() {
                break;
            }
            p += count;
            after = None;
        }
        let vectors = if data || metadata {
            self.fetch(db, keys, data, metadata, consistency).await?
        } else {
            keys.into_iter().map(|k| json!({"key": k})).collect()
        };
        let mut out = json!({"vectors": vectors});
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        Ok(out)
    }

    pub(super) async fn query_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let k = self
            .int_field("topK", 1, MAX_TOP_K as u64)?
            .ok_or_else(|| S3vError::validation("topK is required (1 to 100)"))?
            as usize;
        let texts = self.query_texts()?;
        let vector = match self.input.get("queryVector") {
            Some(v) => floats("queryVector", v)?,
            None if !texts.is_empty() => Vec::new(),
            None => {
                return Err(S3vError::validation(
                    "a request must include queryVector, queryTexts, or both",
                ))
            }
        };
        match self.str_field("queryMode")? {
            None | Some(super::text::INDEX_MODE) => {}
            Some("CLASSIC") => {
                return Err(S3vError::validation(
                    "queryMode CLASSIC is not available: the index is ENHANCED (filters apply \
                     before the vector search)",
                ))
            }
            Some(other) => {
                return Err(S3vError::validation(format!(
                    "queryMode {other} is not one of CLASSIC, ENHANCED"
                )))
            }
        }
        let page = Page {
            offset: self.query_offset()?,
            k,
        };
        let (vector, texts, name) = (&vector, &texts, index.as_str());
        self.svc
            .on_index(&bucket, &index, |db, entry| async move {
                self.query_on(&db, &entry, name, vector.clone(), texts, page)
                    .await
            })
            .await
    }

    /// Where `nextToken` (one this server issued: the rank the next page
    /// starts at) puts the page; 0 without one.
    fn query_offset(&self) -> Result<usize, S3vError> {
        let Some(token) = self.str_field("nextToken")? else {
            return Ok(0);
        };
        token
            .strip_prefix(QUERY_TOKEN_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..MAX_K).contains(n))
            .ok_or_else(|| {
                S3vError::validation(format!(
                    "nextToken {token:?} is not one QueryVectors returned"
                ))
            })
    }

    /// `queryTexts`: 1 to 10 `{text, metadataKey}`, each key once.
    fn query_texts(&self) -> Result<Vec<(String, String)>, S3vError> {
        let Some(list) = self.input.get("queryTexts") else {
            return Ok(Vec::new());
        };
        let items = list
            .as_array()
            .filter(|a| (1..=10).contains(&a.len()))
            .ok_or_else(|| S3vError::validation("queryTexts must be a list of 1 to 10 entries"))?;
        let mut out: Vec<(String, String)> = Vec::with_capacity(items.len());
        for item in items {
            let key = item.get("metadataKey").and_then(Value::as_str);
            let text = item.get("text").and_then(Value::as_str);
            let (Some(key), Some(text)) = (key, text) else {
                return Err(S3vError::validation(
                    "each queryTexts entry needs text and metadataKey (strings)",
                ));
            };
            if !(1..=1024).contains(&text.chars().count()) {
                return Err(S3vError::validation(format!(
                    "the query text for metadata key {key:?} must hold 1 to 1024 characters"
                )));
            }
            if out.iter().any(|(k, _)| k == key) {
                return Err(S3vError::validation(format!(
                    "metadata key {key:?} appears in more than one queryTexts entry"
                )));
            }
            out.push((key.to_string(), text.to_string()));
        }
        Ok(out)
    }

    /// `QueryVectors` on `db`, the handle of the index `entry` describes.
    async fn query_on(
        &self,
        db: &Db,
        entry: &IndexEntry,
        index: &str,
        vector: Vec<f32>,
        texts: &[(String, String)],
        page: Page,
    ) -> Result<Value, S3vError> {
        // A page past the first: the ranking down to its end, its part.
        let k = (page.offset + page.k).min(MAX_K);
        if !vector.is_empty() && vector.len() != entry.dimension as usize {
            return Err(S3vError::validation(format!(
                "queryVector has {} dimensions; index {index} has {}",
                vector.len(),
                entry.dimension
            )));
        }
        // The index's settings decide what is searchable (the catalog's
        // copy could have been rewritten by an older shoal without it).
        let fields = db.config().settings.text_fields.clone().unwrap_or_default();
        for (key, _) in texts {
            if !fields.contains_key(&escape_key(key)) {
                return Err(S3vError::validation(format!(
                    "metadata key {key:?} is not full-text searchable in index {index}; add it \
                     with UpdateMetadataConfiguration"
                )));
            }
        }
        let metadata = self.bool_field("returnMetadata")?;
        let distance = self.bool_field("returnDistance")?;
        let scores = self.bool_field("returnScores")?;
        let mut req = SearchRequest::new(vector, k);
        req.text = texts
            .iter()
            .map(|(key, text)| QueryText {
                key: Some(escape_key(key)),
                text: text.clone(),
            })
            .collect();
        req.include_metadata = metadata;
        req.consistency = self.consistency()?;
        req.exact = self.bool_field("exact")?;
        req.nprobe = self.int_field("nprobe", 1, 1 << 20)?.map(|n| n as usize);
        if let Some(f) = self.input.get("filter").filter(|f| !f.is_null()) {
            req.filter = Some(to_stored_filter(f, &entry.non_filterable_metadata_keys)?);
        }
        let found = db.search(&req).await?;
        let ranked = found.results.len();
        let vectors: Vec<Value> = found
            .results
            .into_iter()
            .skip(page.offset)
            .map(|hit| {
                let mut v = json!({"key": hit.id});
                if let (true, Some(d)) = (distance, hit.distance) {
                    v["distance"] = json!(d);
                }
                if metadata {
                    v["metadata"] = Value::Object(from_stored(hit.metadata.unwrap_or_default()));
                }
                if let (true, Some(s)) = (scores, &hit.scores) {
                    v["scores"] = query_scores(s);
                }
                v
            })
            .collect();
        let mut out = json!({"vectors": vectors, "distanceMetric": entry.distance_metric});
        // A full page, and the ranking may go on: the next page's token.
        if ranked == k && k < MAX_K {
            out["nextToken"] = json!(format!("{QUERY_TOKEN_PREFIX}{k}"));
        }
        Ok(out)
    }
}

/// Which part of a query's ranking a `QueryVectors` call returns: `k`
/// results from rank `offset` (`nextToken`).
#[derive(Clone, Copy)]
struct Page {
    offset: usize,
    k: usize,
}

/// What a `QueryVectors` `nextToken` starts with (then the next page's
/// first rank). Pages are cut from the ranking each call computes anew,
/// so writes between calls can shift them.
const QUERY_TOKEN_PREFIX: &str = "rank-";

/// A hit's scores in AWS's `QueryScores` shape (keys unescaped).
fn query_scores(s: &HitScores) -> Value {
    let mut out = json!({});
    if let Some(f) = s.fused {
        out["fused"] = json!(f);
    }
    if !s.bm25.is_empty() {
        let bm25: Vec<Value> = s
            .bm25
            .iter()
            .map(|b| json!({"metadataKey": unescape_key(&b.key), "score": b.score}))
            .collect();
        out["bm25Scores"] = json!(bm25);
    }
    if let Some(d) = s.vector_distance {
        out["vectorDistance"] = json!(d);
    }
    out
}
