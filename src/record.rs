//! The record model and the validation every write goes through before
//! anything is written (DESIGN section 6, "bad input").
//!
//! A [`Record`] is an id, a vector, optional JSON-object metadata and an
//! optional domain. [`prepare_batch`] checks a whole batch and returns the
//! records ready to encode, or the first problem, naming the record's
//! position and id:
//!
//! - id: UTF-8, 1..=1024 bytes (an S3 Vectors key's limit);
//! - vector: exactly `dimensions` finite f32s; with the `cosine` metric it
//!   is normalized to unit length and a zero vector is refused;
//! - metadata: a JSON object of at most 64 KiB encoded (domain included);
//! - domain: given, or already in the metadata as `domain`, or detected
//!   from the metadata's field names by the config's rules; always stored
//!   in the metadata as `domain`;
//! - batch: at most `max_records` records and `max_bytes` bytes.
//!
//! Duplicate ids within one batch: **the last occurrence wins**, exactly as
//! if the records had been written one after another. The earlier ones are
//! dropped before encoding.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::vocab::Metric;

pub(crate) const MAX_ID_BYTES: usize = 1024;
pub(crate) const MAX_METADATA_BYTES: usize = 64 * 1024;
pub(crate) const DEFAULT_MAX_BATCH_RECORDS: usize = 10_000;
pub(crate) const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// A record as a caller hands it in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub vector: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Record {
    pub fn new(id: impl Into<String>, vector: Vec<f32>) -> Self {
        Record {
            id: id.into(),
            vector,
            metadata: None,
            domain: None,
        }
    }

    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// A record as stored: the newest live version of an id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub partition: u32,
    /// The seq of the segment holding it; for a record in an index shard,
    /// the partition's watermark (it was committed at or below it).
    pub seq: u64,
    /// Its position in that segment or shard.
    pub position: usize,
    /// The index shard holding it, if it is indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// A validated write, ready to be encoded into a segment: an upsert
/// (vector + metadata) or a delete (tombstone).
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub id: String,
    /// Empty for a tombstone.
    pub vector: Vec<f32>,
    /// Encoded JSON object; empty for a tombstone.
    pub metadata: Vec<u8>,
    pub tombstone: bool,
}

impl Prepared {
    pub fn tombstone(id: String) -> Self {
        Prepared {
            id,
            vector: Vec::new(),
            metadata: Vec::new(),
            tombstone: true,
        }
    }

    /// Rough encoded size, for batch limits.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.id.len() + self.vector.len() * 4 + self.metadata.len() + 8
    }

    /// The vector as stored: a tombstone's is `dims` zeros.
    pub(crate) fn stored_vector(&self, dims: usize) -> std::borrow::Cow<'_, [f32]> {
        if self.tombstone {
            std::borrow::Cow::Owned(vec![0.0; dims])
        } else {
            std::borrow::Cow::Borrowed(&self.vector)
        }
    }
}

/// The records' stored vectors back to back (`n × dims`), as index
/// builds and codes take them.
pub(crate) fn flat_vectors(records: &[Prepared], dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(records.len() * dims);
    for r in records {
        out.extend_from_slice(&r.stored_vector(dims));
    }
    out
}

pub use crate::vocab::{default_domain_rules, DomainRule};

pub(crate) const FALLBACK_DOMAIN: &str = "general";

/// The first rule whose fields appear in `metadata`, else `general`.
pub(crate) fn detect_domain(metadata: &Map<String, Value>, rules: &[DomainRule]) -> String {
    rules
        .iter()
        .find(|r| r.fields.iter().any(|f| metadata.contains_key(f)))
        .map(|r| r.domain.clone())
        .unwrap_or_else(|| FALLBACK_DOMAIN.into())
}

/// What validation checks records against.
#[derive(Clone, Debug)]
pub struct Schema {
    pub dimensions: usize,
    pub metric: Metric,
    pub domain_rules: Vec<DomainRule>,
    /// Keys whose values must be text (`settings.textFields`).
    pub text_fields: crate::text::TextFields,
    pub max_records: usize,
    pub max_bytes: usize,
}

/// A record that failed validation: where, which, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    #[error("record {position} (id {id:?}): {reason}")]
    Record {
        position: usize,
        id: String,
        reason: String,
    },
    #[error("batch too large: {reason}")]
    BatchTooLarge { reason: String },
}

fn invalid(position: usize, id: &str, reason: impl Into<String>) -> InvalidInput {
    let mut shown = id.to_string();
    if shown.len() > 80 {
        let mut cut = 80;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    InvalidInput::Record {
        position,
        id: shown,
        reason: reason.into(),
    }
}

/// Checks an id (for upserts and deletes alike).
pub fn check_id(position: usize, id: &str) -> Result<(), InvalidInput> {
    if id.is_empty() {
        return Err(invalid(position, id, "id is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(invalid(
            position,
            id,
            format!("id is {} bytes; at most {MAX_ID_BYTES} allowed", id.len()),
        ));
    }
    Ok(())
}

/// Checks one vector and returns it ready to store (normalized for cosine).
pub fn check_vector(
    position: usize,
    id: &str,
    vector: &[f32],
    dimensions: usize,
    metric: Metric,
) -> Result<Vec<f32>, InvalidInput> {
    if vector.len() != dimensions {
        return Err(invalid(
            position,
            id,
            format!(
                "vector has {} dimensions; the index has {dimensions}",
                vector.len()
            ),
        ));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            position,
            id,
            format!("vector component {i} is {} (must be finite)", vector[i]),
        ));
    }
    let mut v = vector.to_vec();
    let norm2 = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>();
    // Every score shoal computes between two accepted vectors must be a
    // finite f32: |q·v| <= |q||v| and |q - v|² <= 2|q|² + 2|v|², so a
    // squared length up to a quarter of f32::MAX keeps dot products and
    // squared distances finite (larger ones overflow to inf or NaN, which
    // would rank first and serialize as null).
    if metric != Metric::Cosine && norm2 > f64::from(f32::MAX) / 4.0 {
        return Err(invalid(
            position,
            id,
            format!(
                "vector's squared length is {norm2:.3e}, over {:.3e}: its scores would \
                 overflow a 32-bit float; scale it down",
                f64::from(f32::MAX) / 4.0
            ),
        ));
    }
    if metric == Metric::Cosine {
        let norm = norm2.sqrt();
        if norm == 0.0 {
            return Err(invalid(
                position,
                id,
                "vector is all zeros, which has no direction under the cosine metric",
            ));
        }
        for x in &mut v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    Ok(v)
}

/// Validates a batch of upserts. Either every record is fine and the
/// result holds them deduplicated (last occurrence of an id wins, in
/// order of that last occurrence), or nothing is returned but the first
/// problem.
pub fn prepare_batch(records: &[Record], schema: &Schema) -> Result<Vec<Prepared>, InvalidInput> {
    if records.len() > schema.max_records {
        return Err(InvalidInput::BatchTooLarge {
            reason: format!(
                "{} records; at most {} per batch",
                records.len(),
                schema.max_records
            ),
        });
    }
    let mut out = Vec::with_capacity(records.len());
    let mut bytes = 0usize;
    for (position, r) in records.iter().enumerate() {
        check_id(position, &r.id)?;
        let vector = check_vector(position, &r.id, &r.vector, schema.dimensions, schema.metric)?;
        let mut meta = match &r.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(invalid(
                    position,
                    &r.id,
                    format!("metadata must be a JSON object, found {}", json_kind(other)),
                ))
            }
        };
        let domain = match (&r.domain, meta.get("domain")) {
            (Some(d), _) => d.clone(),
            (None, Some(Value::String(d))) => d.clone(),
            (None, Some(other)) => {
                return Err(invalid(
                    position,
                    &r.id,
                    format!(
                        "metadata field `domain` must be a string, found {}",
                        json_kind(other)
                    ),
                ))
            }
            (None, None) => detect_domain(&meta, &schema.domain_rules),
        };
        if domain.is_empty() {
            return Err(invalid(position, &r.id, "domain is empty"));
        }
        schema
            .text_fields
            .check(Some(&meta))
            .map_err(|reason| invalid(position, &r.id, reason))?;
        meta.insert("domain".into(), Value::String(domain));
        let metadata = serde_json::to_vec(&meta).expect("json map serializes");
        if metadata.len() > MAX_METADATA_BYTES {
            return Err(invalid(
                position,
                &r.id,
                format!(
                    "metadata is {} bytes encoded; at most {MAX_METADATA_BYTES} allowed",
                    metadata.len()
                ),
            ));
        }
        let p = Prepared {
            id: r.id.clone(),
            vector,
            metadata,
            tombstone: false,
        };
        bytes += p.approx_bytes();
        if bytes > schema.max_bytes {
            return Err(InvalidInput::BatchTooLarge {
                reason: format!(
                    "more than {} bytes by record {position} (id {:?})",
                    schema.max_bytes, r.id
                ),
            });
        }
        out.push(p);
    }
    Ok(dedupe_last_wins(out))
}

/// Validates one record (position 0) for callers that validate record by
/// record, such as file ingest reporting `file:line`.
pub(crate) fn prepare_one(record: &Record, schema: &Schema) -> Result<Prepared, InvalidInput> {
    let one = Schema {
        max_records: 1,
        max_bytes: usize::MAX,
        ..schema.clone()
    };
    Ok(prepare_batch(std::slice::from_ref(record), &one)?
        .pop()
        .expect("one valid record"))
}

/// Validates a batch of deletes into tombstones (deduplicated).
pub fn prepare_deletes(ids: &[String], schema: &Schema) -> Result<Vec<Prepared>, InvalidInput> {
    if ids.len() > schema.max_records {
        return Err(InvalidInput::BatchTooLarge {
            reason: format!(
                "{} ids; at most {} per batch",
                ids.len(),
                schema.max_records
            ),
        });
    }
    for (position, id) in ids.iter().enumerate() {
        check_id(position, id)?;
    }
    Ok(dedupe_last_wins(
        ids.iter().cloned().map(Prepared::tombstone).collect(),
    ))
}

/// Keeps only the last occurrence of each id, preserving the order of
/// those last occurrences.
pub(crate) fn dedupe_last_wins(records: Vec<Prepared>) -> Vec<Prepared> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        last.insert(r.id.as_str(), i);
    }
    if last.len() == records.len() {
        return records;
    }
    let keep: Vec<bool> = (0..records.len())
        .map(|i| last[records[i].id.as_str()] == i)
        .collect();
    records
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Issue 28 F14: finite components whose products overflow (±3e38
    /// under dot) are refused, naming the record, under dot and euclidean;
    /// large but safe lengths pass, and cosine normalizes anything finite.
    #[test]
    fn vectors_whose_scores_would_overflow_are_refused() {
        for metric in [Metric::Dot, Metric::Euclidean] {
            let e = check_vector(3, "big", &[3e38, -3e38], 2, metric).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("record 3 (id \"big\")"), "{msg}");
            assert!(msg.contains("overflow"), "{msg}");
            assert!(check_vector(0, "ok", &[1e18, -1e18], 2, metric).is_ok());
        }
        let v = check_vector(0, "cos", &[3e38, -3e38], 2, Metric::Cosine).unwrap();
        assert!((v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }

    fn schema(metric: Metric) -> Schema {
        Schema {
            dimensions: 3,
            metric,
            domain_rules: default_domain_rules(),
            text_fields: Default::default(),
            max_records: 4,
            max_bytes: 1 << 20,
        }
    }

    fn err(records: &[Record], metric: Metric) -> String {
        prepare_batch(records, &schema(metric))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_invalid_case_names_position_id_and_problem() {
        let ok = Record::new("ok", vec![1.0, 0.0, 0.0]);
        let m = err(&[ok.clone(), Record::new("short", vec![1.0])], Metric::Dot);
        assert!(
            m.contains("record 1") && m.contains("\"short\"") && m.contains("1 dimensions"),
            "{m}"
        );
        let m = err(&[Record::new("nan", vec![1.0, f32::NAN, 0.0])], Metric::Dot);
        assert!(
            m.contains("record 0") && m.contains("component 1 is NaN"),
            "{m}"
        );
        let m = err(
            &[Record::new("inf", vec![f32::INFINITY, 0.0, 0.0])],
            Metric::Dot,
        );
        assert!(m.contains("component 0 is inf"), "{m}");
        let m = err(&[Record::new("", vec![1.0, 0.0, 0.0])], Metric::Dot);
        assert!(m.contains("id is empty"), "{m}");
        let long = "x".repeat(1025);
        let m = err(&[Record::new(long, vec![1.0, 0.0, 0.0])], Metric::Dot);
        assert!(
            m.contains("1025 bytes") && m.contains("at most 1024"),
            "{m}"
        );
        let m = err(&[ok.clone().with_metadata(json!([1, 2]))], Metric::Dot);
        assert!(
            m.contains("metadata must be a JSON object, found an array"),
            "{m}"
        );
        let big = json!({ "text": "y".repeat(70_000) });
        let m = err(&[ok.clone().with_metadata(big)], Metric::Dot);
        assert!(m.contains("metadata is") && m.contains("65536"), "{m}");
        let m = err(&[Record::new("zero", vec![0.0; 3])], Metric::Cosine);
        assert!(m.contains("all zeros"), "{m}");
        let m = err(&vec![ok.clone(); 5], Metric::Dot);
        assert!(
            m.contains("batch too large") && m.contains("5 records"),
            "{m}"
        );
        let mut s = schema(Metric::Dot);
        s.max_bytes = 30;
        let m = prepare_batch(&[ok.clone(), ok], &s)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("batch too large") && m.contains("30 bytes"),
            "{m}"
        );
    }

    #[test]
    fn zero_vector_is_fine_without_cosine() {
        let r = prepare_batch(
            &[Record::new("z", vec![0.0; 3])],
            &schema(Metric::Euclidean),
        );
        assert_eq!(r.unwrap()[0].vector, vec![0.0; 3]);
    }

    #[test]
    fn cosine_vectors_are_normalized() {
        let p = prepare_batch(
            &[Record::new("a", vec![3.0, 4.0, 0.0])],
            &schema(Metric::Cosine),
        )
        .unwrap();
        assert_eq!(p[0].vector, vec![0.6, 0.8, 0.0]);
        let p = prepare_batch(
            &[Record::new("a", vec![3.0, 4.0, 0.0])],
            &schema(Metric::Dot),
        )
        .unwrap();
        assert_eq!(p[0].vector, vec![3.0, 4.0, 0.0], "dot keeps magnitudes");
    }

    #[test]
    fn duplicate_ids_last_wins() {
        let recs = [
            Record::new("a", vec![1.0, 0.0, 0.0]),
            Record::new("b", vec![0.0, 1.0, 0.0]),
            Record::new("a", vec![0.0, 0.0, 1.0]),
        ];
        let p = prepare_batch(&recs, &schema(Metric::Dot)).unwrap();
        let ids: Vec<&str> = p.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(p[1].vector, vec![0.0, 0.0, 1.0]);
    }

    #[test]
    fn domains_are_detected_given_or_kept() {
        let base = Record::new("r", vec![1.0, 0.0, 0.0]);
        let dom = |r: Record| {
            let p = prepare_batch(&[r], &schema(Metric::Dot)).unwrap();
            let m: Value = serde_json::from_slice(&p[0].metadata).unwrap();
            m["domain"].as_str().unwrap().to_string()
        };
        assert_eq!(
            dom(base.clone().with_metadata(json!({"symptoms": "cough"}))),
            "medical"
        );
        assert_eq!(
            dom(base.clone().with_metadata(json!({"clause": 7}))),
            "legal"
        );
        assert_eq!(
            dom(base.clone().with_metadata(json!({"sku": "A1"}))),
            "product"
        );
        assert_eq!(
            dom(base.clone().with_metadata(json!({"text": "hi"}))),
            "general"
        );
        assert_eq!(dom(base.clone()), "general");
        assert_eq!(
            dom(base.clone().with_metadata(json!({"domain": "admin"}))),
            "admin"
        );
        let mut given = base.with_metadata(json!({"price": 3}));
        given.domain = Some("custom".into());
        assert_eq!(dom(given), "custom");
    }

    #[test]
    fn deletes_validate_ids_and_dedupe() {
        let s = schema(Metric::Dot);
        let p = prepare_deletes(&["a".into(), "b".into(), "a".into()], &s).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|r| r.tombstone));
        let e = prepare_deletes(&["a".into(), String::new()], &s).unwrap_err();
        assert!(e.to_string().contains("record 1") && e.to_string().contains("id is empty"));
    }
}
