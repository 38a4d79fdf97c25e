//! The wire format: reading a request's fields (names, ARNs, numbers,
//! lists, keys, pages), vectors and metadata as shoal stores them
//! ([`to_record`], [`from_stored`]), filters on those stored names
//! ([`to_stored_filter`]) and `ListVectors` page tokens.

use serde_json::{json, Map, Value};

use super::error::S3vError;
use super::{
    Call, MAX_FILTERABLE_BYTES, MAX_KEY_BYTES, MAX_LIST_NAMES, MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
};
use crate::api::{Consistency, Record};
use crate::coord::catalog::IndexEntry;

/// A bucket or index name: 3 to 63 of `a-z 0-9 - .`, starting and ending
/// with a letter or digit.
pub(super) fn check_name(what: &str, name: &str) -> Result<(), S3vError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !name.chars().all(ok_char)
        || !edge(name.chars().next())
        || !edge(name.chars().last())
    {
        return Err(S3vError::validation(format!(
            "{what} {name:?} is invalid: use 3 to 63 lowercase letters, digits, hyphens and \
             dots, starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

impl Call<'_> {
    pub(super) fn str_field(&self, name: &str) -> Result<Option<&str>, S3vError> {
        match self.input.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(S3vError::validation(format!(
                "{name} must be a string, not {other}"
            ))),
        }
    }

    pub(super) fn bool_field(&self, name: &str) -> Result<bool, S3vError> {
        match self.input.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(S3vError::validation(format!(
                "{name} must be true or false, not {other}"
            ))),
        }
    }

    pub(super) fn int_field(
        &self,
        name: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, S3vError> {
        match self.input.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(S3vError::validation(format!(
                    "{name} must be an integer from {min} to {max}, not {v}"
                ))),
            },
        }
    }

    pub(super) fn list_field(
        &self,
        name: &str,
        min: usize,
        max: usize,
    ) -> Result<&Vec<Value>, S3vError> {
        match self.input.get(name) {
            Some(Value::Array(items)) if (min..=max).contains(&items.len()) => Ok(items),
            Some(Value::Array(items)) => Err(S3vError::validation(format!(
                "{name} holds {} items; from {min} to {max} are allowed",
                items.len()
            ))),
            None | Some(Value::Null) => Err(S3vError::validation(format!("{name} is required"))),
            Some(other) => Err(S3vError::validation(format!(
                "{name} must be a list, not {other}"
            ))),
        }
    }

    /// The vector bucket named by `vectorBucketName` or `vectorBucketArn`.
    pub(super) fn bucket_name(&self) -> Result<String, S3vError> {
        match (
            self.str_field("vectorBucketName")?,
            self.str_field("vectorBucketArn")?,
        ) {
            (Some(name), None) => {
                check_name("vectorBucketName", name)?;
                Ok(name.to_string())
            }
            (None, Some(arn)) => {
                let name = arn
                    .split_once(":bucket/")
                    .map(|(_, rest)| rest)
                    .filter(|rest| arn.starts_with("arn:") && !rest.contains('/'))
                    .ok_or_else(|| {
                        S3vError::validation(format!("{arn:?} is not a vector bucket ARN"))
                    })?;
                check_name("vector bucket", name)?;
                Ok(name.to_string())
            }
            (Some(_), Some(_)) => Err(S3vError::validation(
                "give vectorBucketName or vectorBucketArn, not both",
            )),
            (None, None) => Err(S3vError::validation(
                "vectorBucketName or vectorBucketArn is required",
            )),
        }
    }

    /// The index named by bucket and `indexName`, or by `indexArn`.
    pub(super) fn index_name(&self) -> Result<(String, String), S3vError> {
        if let Some(arn) = self.str_field("indexArn")? {
            if self.input.contains_key("indexName") || self.input.contains_key("vectorBucketName") {
                return Err(S3vError::validation(
                    "give indexArn, or vectorBucketName and indexName, not both",
                ));
            }
            let parsed = arn
                .split_once(":bucket/")
                .and_then(|(_, rest)| rest.split_once("/index/"))
                .filter(|(_, i)| arn.starts_with("arn:") && !i.contains('/'));
            let Some((bucket, index)) = parsed else {
                return Err(S3vError::validation(format!(
                    "{arn:?} is not a vector index ARN"
                )));
            };
            check_name("vector bucket", bucket)?;
            check_name("index", index)?;
            return Ok((bucket.to_string(), index.to_string()));
        }
        let bucket = self.bucket_name()?;
        let index = self
            .str_field("indexName")?
            .ok_or_else(|| S3vError::validation("indexName or indexArn is required"))?;
        check_name("indexName", index)?;
        Ok((bucket, index.to_string()))
    }

    pub(super) fn consistency(&self) -> Result<Consistency, S3vError> {
        match self.input.get("consistency") {
            None | Some(Value::Null) => Ok(self.svc.opts.default_consistency),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                S3vError::validation(format!(
                    "consistency must be strong, bounded or eventual, not {v}"
                ))
            }),
        }
    }

    /// A page of names from `names` (sorted): after `nextToken`, starting
    /// with `prefix`, at most `maxResults`.
    pub(super) fn page<'n>(
        &self,
        names: impl Iterator<Item = &'n String>,
    ) -> Result<(Vec<&'n String>, Option<String>), S3vError> {
        let max = self
            .int_field("maxResults", 1, MAX_LIST_NAMES as u64)?
            .unwrap_or(MAX_LIST_NAMES as u64) as usize;
        let prefix = self.str_field("prefix")?.unwrap_or("");
        let after = self.str_field("nextToken")?.unwrap_or("");
        let mut out: Vec<&String> = names
            .filter(|n| n.starts_with(prefix) && n.as_str() > after)
            .take(max + 1)
            .collect();
        let next = if out.len() > max {
            out.truncate(max);
            out.last().map(|n| n.to_string())
        } else {
            None
        };
        Ok((out, next))
    }

    pub(super) fn keys(&self, max: usize) -> Result<Vec<String>, S3vError> {
        self.list_field("keys", 1, max)?
            .iter()
            .enumerate()
            .map(|(i, k)| match k.as_str() {
                Some(s) => check_key(i, s).map(|()| s.to_string()),
                None => Err(S3vError::validation(format!("keys[{i}] must be a string"))),
            })
            .collect()
    }
}

pub(super) fn check_key(i: usize, key: &str) -> Result<(), S3vError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(S3vError::validation(format!(
            "key {i} is {} bytes; keys are 1 to {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

pub(super) fn floats(what: &str, v: &Value) -> Result<Vec<f32>, S3vError> {
    let list = v.get("float32").and_then(Value::as_array).ok_or_else(|| {
        S3vError::validation(format!("{what} must be {{\"float32\": [numbers]}}"))
    })?;
    list.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    S3vError::validation(format!("{what} element {i} is {x}, not a finite float32"))
                })
        })
        .collect()
}

/// Metadata keys as shoal stores them: shoal keeps a `domain` field of its
/// own, so a user key `domain` (and, to stay reversible, any key starting
/// with `~`) gets one more leading `~`.
pub(super) fn escape_key(k: &str) -> String {
    if k == "domain" || k.starts_with('~') {
        format!("~{k}")
    } else {
        k.to_string()
    }
}

/// A stored key as the user wrote it (see [`escape_key`]).
pub(super) fn unescape_key(k: &str) -> &str {
    k.strip_prefix('~').unwrap_or(k)
}

/// Stored metadata as the user sent it: shoal's `domain` dropped, keys
/// unescaped.
pub(super) fn from_stored(mut meta: Map<String, Value>) -> Map<String, Value> {
    meta.remove("domain");
    meta.into_iter()
        .map(|(k, v)| match k.strip_prefix('~') {
            Some(rest) => (rest.to_string(), v),
            None => (k, v),
        })
        .collect()
}

/// One `PutVectors` item as a shoal record, checked against S3 Vectors'
/// limits (which are tighter than shoal's own).
pub(super) fn to_record(i: usize, item: &Value, entry: &IndexEntry) -> Result<Record, S3vError> {
    let key = item
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| S3vError::validation(format!("vectors[{i}].key is required (a string)")))?;
    check_key(i, key)?;
    let data = item
        .get("data")
        .ok_or_else(|| S3vError::validation(format!("vectors[{i}] (key {key:?}) has no data")))?;
    let vector = floats(&format!("vectors[{i}].data"), data)?;
    if vector.len() != entry.dimension as usize {
        return Err(S3vError::validation(format!(
            "vectors[{i}] (key {key:?}) has {} dimensions; the index has {}",
            vector.len(),
            entry.dimension
        )));
    }
    let mut stored = Map::new();
    match item.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => {
            if meta.len() > MAX_METADATA_KEYS {
                return Err(S3vError::validation(format!(
                    "vectors[{i}] (key {key:?}) has {} metadata keys; at most \
                     {MAX_METADATA_KEYS} are allowed",
                    meta.len()
                )));
            }
            let mut filterable = Map::new();
            for (k, v) in meta {
                let ok = match v {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
                    Value::Array(items) => items
                        .iter()
                        .all(|x| matches!(x, Value::String(_) | Value::Number(_) | Value::Bool(_))),
                    _ => false,
                };
                if !ok {
                    return Err(S3vError::validation(format!(
                        "vectors[{i}] (key {key:?}) metadata {k:?} is {v}: values are strings, \
                         numbers, booleans or lists of them"
                    )));
                }
                if !entry.non_filterable_metadata_keys.contains(k) {
                    filterable.insert(k.clone(), v.clone());
                }
                stored.insert(escape_key(k), v.clone());
            }
            let total = serde_json::to_vec(meta).map_or(0, |b| b.len());
            let part = serde_json::to_vec(&filterable).map_or(0, |b| b.len());
            if total > MAX_METADATA_BYTES || part > MAX_FILTERABLE_BYTES {
                return Err(S3vError::validation(format!(
                    "vectors[{i}] (key {key:?}) metadata is {total} bytes ({part} filterable); \
                     at most {MAX_METADATA_BYTES} ({MAX_FILTERABLE_BYTES} filterable) are allowed"
                )));
            }
        }
        Some(other) => {
            return Err(S3vError::validation(format!(
                "vectors[{i}] (key {key:?}) metadata must be an object, not {other}"
            )))
        }
    }
    Ok(Record::new(key, vector).with_metadata(Value::Object(stored)))
}

/// An S3 Vectors filter (the same operators as shoal's) with its field
/// names escaped like stored keys; a filter on a non-filterable key is
/// refused.
pub(super) fn to_stored_filter(f: &Value, non_filterable: &[String]) -> Result<Value, S3vError> {
    fn walk(f: &Value, nf: &[String], depth: usize) -> Result<Value, S3vError> {
        if depth > crate::filter::MAX_DEPTH {
            return Err(S3vError::validation("the filter is nested too deeply"));
        }
        let Value::Object(obj) = f else {
            return Err(S3vError::validation(format!(
                "a filter must be a JSON object, found {f}"
            )));
        };
        let mut out = Map::new();
        for (k, v) in obj {
            if k == "$and" || k == "$or" {
                let items = v
                    .as_array()
                    .ok_or_else(|| S3vError::validation(format!("{k} needs a list of filters")))?;
                let mapped: Result<Vec<Value>, S3vError> =
                    items.iter().map(|x| walk(x, nf, depth + 1)).collect();
                out.insert(k.clone(), Value::Array(mapped?));
            } else {
                if nf.contains(k) {
                    return Err(S3vError::validation(format!(
                        "metadata key {k:?} is non-filterable in this index and cannot be used \
                         in a filter"
                    )));
                }
                out.insert(escape_key(k), v.clone());
            }
        }
        Ok(Value::Object(out))
    }
    let stored = walk(f, non_filterable, 0)?;
    crate::filter::parse_filter(&stored).map_err(|e| S3vError::validation(e.to_string()))?;
    Ok(stored)
}

/// `ListVectors` tokens: the partition to resume in and the last key
/// already listed from it (`None`: resume at its start).
pub(super) fn encode_token(p: u32, after: Option<&str>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"p": p, "after": after})).expect("json"))
}

pub(super) fn decode_token(
    t: &str,
    count: u32,
    segment: u32,
    partitions: u32,
) -> Result<(u32, Option<String>), S3vError> {
    use base64::Engine;
    let bad = || S3vError::validation("nextToken is not a token this index's ListVectors gave");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let p = v.get("p").and_then(Value::as_u64).ok_or_else(bad)? as u32;
    let after = match v.get("after") {
        Some(Value::String(a)) => Some(a.clone()),
        Some(Value::Null) => None,
        _ => return Err(bad()),
    };
    if p >= partitions || p % count != segment {
        return Err(bad());
    }
    Ok((p, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(nf: &[&str]) -> IndexEntry {
        IndexEntry {
            creation_time: 0.0,
            data_type: "float32".into(),
            dimension: 2,
            distance_metric: "cosine".into(),
            non_filterable_metadata_keys: nf.iter().map(|s| s.to_string()).collect(),
            text_search: Vec::new(),
            incarnation: None,
            deleting_since: None,
        }
    }

    #[test]
    fn metadata_round_trips_through_shoals_domain_field() {
        let meta = json!({"domain": 7, "~x": "tilde", "genre": ["a", "b"], "n": 1.5});
        let rec = to_record(
            0,
            &json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": meta}),
            &entry(&[]),
        )
        .unwrap();
        let stored = rec.metadata.clone().unwrap();
        assert_eq!(stored["~domain"], json!(7));
        assert_eq!(stored["~~x"], json!("tilde"));
        // What shoal adds (its own domain) disappears on the way out.
        let mut back = stored.as_object().unwrap().clone();
        back.insert("domain".into(), json!("general"));
        assert_eq!(Value::Object(from_stored(back)), meta);
    }

    #[test]
    fn filters_are_escaped_like_keys_and_non_filterable_keys_refused() {
        let f = json!({"$and": [{"domain": "x"}, {"genre": {"$in": ["a"]}}]});
        assert_eq!(
            to_stored_filter(&f, &[]).unwrap(),
            json!({"$and": [{"~domain": "x"}, {"genre": {"$in": ["a"]}}]})
        );
        let e = to_stored_filter(&json!({"$or": [{"body": "x"}]}), &["body".into()]).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        assert!(e.message.contains("non-filterable"), "{}", e.message);
        let e = to_stored_filter(&json!({"a": {"$regex": "x"}}), &[]).unwrap_err();
        assert!(e.message.contains("$regex"), "{}", e.message);
    }

    #[test]
    fn vectors_and_metadata_outside_the_limits_are_refused() {
        let e = entry(&["body"]);
        let put = |v: Value| to_record(3, &v, &e).unwrap_err().message;
        assert!(put(json!({"key": "k", "data": {"float32": [1, 0, 0]}})).contains("3 dimensions"));
        assert!(put(json!({"data": {"float32": [1, 0]}})).contains("key is required"));
        assert!(put(json!({"key": "", "data": {"float32": [1, 0]}})).contains("1 to 1024"));
        let big = "x".repeat(MAX_FILTERABLE_BYTES);
        assert!(
            put(json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": {"t": big}}))
                .contains("filterable")
        );
        // The same text under a non-filterable key fits.
        to_record(
            0,
            &json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": {"body": big}}),
            &e,
        )
        .unwrap();
        assert!(
            put(json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": {"o": {"a": 1}}}))
                .contains("values are strings")
        );
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(
            put(json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": many}))
                .contains("51 metadata keys")
        );
    }

    #[test]
    fn names_follow_the_aws_rules() {
        for ok in ["abc", "my-bucket.v2", "a1b"] {
            check_name("n", ok).unwrap();
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a_bc", &"a".repeat(64), "a/b"] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_tokens_round_trip_and_foreign_tokens_are_refused() {
        let t = encode_token(6, Some("key-9"));
        assert_eq!(
            decode_token(&t, 3, 0, 100).unwrap(),
            (6, Some("key-9".into()))
        );
        let start = encode_token(9, None);
        assert_eq!(decode_token(&start, 3, 0, 100).unwrap(), (9, None));
        assert!(
            decode_token(&t, 4, 1, 100).is_err(),
            "another segment's token"
        );
        assert!(decode_token(&t, 3, 0, 5).is_err(), "past the partitions");
        assert!(decode_token("garbage!", 1, 0, 100).is_err());
    }
}
