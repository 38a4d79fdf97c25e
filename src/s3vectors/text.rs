//! Full-text search in the S3 Vectors API (issue 31): an index's
//! `textSearchConfigurations` (parsed here, kept in the catalog entry,
//! mirrored into the index's `settings.textFields`), and the operations
//! that change them (`UpdateMetadataConfiguration`) or the index mode
//! (`UpdateIndexMode`, `PutVectorBucketDefaultIndexMode`: shoal's
//! indexes are ENHANCED only). `QueryVectors`' `queryTexts` are read in
//! `vectors`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::buckets::bucket_of;
use super::error::S3vError;
use super::indexes::live_index;
use super::Call;
use crate::api::TextField;
use crate::coord::catalog::TextSearch;

impl Call<'_> {
    /// `UpdateMetadataConfiguration`: adds or deletes full-text
    /// searchable keys (one of `add`, `delete`). The index's settings
    /// change first (every instance takes them at its next config check,
    /// this one at once), then the catalog, so a retry after a failure in
    /// between finishes the change.
    pub(super) async fn update_metadata_configuration(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let (add, delete) = (self.input.get("add"), self.input.get("delete"));
        fn configs(v: Option<&Value>) -> Result<&Value, S3vError> {
            v.and_then(|v| v.get("textSearchConfigurations"))
                .ok_or_else(|| S3vError::validation("add and delete hold textSearchConfigurations"))
        }
        let change = match (add, delete) {
            (Some(_), None) => Change::Add(text_search_configs(configs(add)?)?),
            (None, Some(_)) => {
                let keys = configs(delete)?
                    .as_array()
                    .filter(|a| (1..=MAX_TEXT_SEARCH).contains(&a.len()))
                    .ok_or_else(|| {
                        S3vError::validation("delete.textSearchConfigurations: 1 to 10 keys")
                    })?
                    .iter()
                    .map(|k| {
                        k.get("metadataKey")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| {
                        S3vError::validation("each key to delete needs a metadataKey")
                    })?;
                Change::Delete(keys)
            }
            _ => {
                return Err(S3vError::validation(
                    "give add or delete (one of them) with textSearchConfigurations",
                ))
            }
        };
        let (b, i) = (bucket.as_str(), index.as_str());
        let change = &change;
        let incarnation = self
            .svc
            .on_index(b, i, |db, entry| async move {
                let configs = change.apply(&entry.text_search, i)?;
                let fields = serde_json::to_value(text_fields(&configs)).expect("json");
                db.set_settings(&[("textFields".to_string(), fields)])
                    .await?;
                db.refresh_config().await?;
                Ok::<_, S3vError>((entry.incarnation.clone(), configs))
            })
            .await?;
        let (incarnation, configs) = incarnation;
        self.svc
            .change_catalog(|c| {
                let e = c
                    .buckets
                    .get_mut(b)
                    .and_then(|bk| bk.indexes.get_mut(i))
                    .filter(|e| e.incarnation == incarnation && e.deleting_since.is_none())
                    .ok_or_else(|| {
                        S3vError::not_found(format!(
                            "index {i} does not exist in vector bucket {b}"
                        ))
                    })?;
                e.text_search = configs.clone();
                Ok(())
            })
            .await?;
        Ok(json!({"indexArn": self.svc.index_arn(&self.region, b, i)}))
    }

    /// `UpdateIndexMode`: shoal's indexes are ENHANCED (and nothing else).
    pub(super) async fn update_index_mode(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        check_index_mode(self.str_field("indexMode")?)?;
        let cat = self
            .svc
            .catalog_with(|c| live_index(c, &bucket, &index).is_ok())
            .await?;
        live_index(&cat, &bucket, &index)?;
        Ok(json!({}))
    }

    /// `PutVectorBucketDefaultIndexMode`: ENHANCED, the one mode.
    pub(super) async fn put_default_index_mode(&self) -> Result<Value, S3vError> {
        let bucket = self.bucket_name()?;
        check_index_mode(self.str_field("defaultIndexMode")?)?;
        let cat = self
            .svc
            .catalog_with(|c| c.buckets.contains_key(&bucket))
            .await?;
        bucket_of(&cat, &bucket)?;
        Ok(json!({}))
    }
}

/// The one index mode shoal's indexes have: filters apply before the
/// vector search.
pub(super) const INDEX_MODE: &str = "ENHANCED";
/// AWS's `LanguageCode`s, each shoal's analyzer of the same name.
const LANGUAGES: [&str; 10] = ["en", "fr", "es", "pt", "it", "de", "nl", "zh", "ja", "ko"];
const MAX_TEXT_SEARCH: usize = 10;

/// `textSearchConfigurations` (0 to 10, one per key); a `status` sent
/// back is ignored (it is output).
pub(super) fn text_search_configs(list: &Value) -> Result<Vec<TextSearch>, S3vError> {
    let items = list
        .as_array()
        .ok_or_else(|| S3vError::validation("textSearchConfigurations must be a list"))?;
    if items.len() > MAX_TEXT_SEARCH {
        return Err(S3vError::validation(format!(
            "textSearchConfigurations holds {} entries; at most {MAX_TEXT_SEARCH} are allowed",
            items.len()
        )));
    }
    let mut out: Vec<TextSearch> = Vec::with_capacity(items.len());
    for item in items {
        let key = match item.get("metadataKey").and_then(Value::as_str) {
            Some(k) if (1..=63).contains(&k.len()) => k.to_string(),
            _ => {
                return Err(S3vError::validation(format!(
                    "a text search configuration needs a metadataKey of 1 to 63 characters, \
                     found {item}"
                )))
            }
        };
        let language = match item.get("language") {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) if LANGUAGES.contains(&l.as_str()) => Some(l.clone()),
            Some(other) => {
                return Err(S3vError::validation(format!(
                    "language {other} of metadata key {key:?} is not supported; use one of {}",
                    LANGUAGES.join(", ")
                )))
            }
        };
        if out.iter().any(|t| t.metadata_key == key) {
            return Err(S3vError::validation(format!(
                "metadata key {key:?} has more than one text search configuration"
            )));
        }
        out.push(TextSearch {
            metadata_key: key,
            language,
        });
    }
    Ok(out)
}

/// The index settings' `textFields` for an index's configurations (keys
/// as stored, `~`-escaped like every metadata key).
pub(super) fn text_fields(configs: &[TextSearch]) -> BTreeMap<String, TextField> {
    configs
        .iter()
        .map(|t| {
            let analyzer = t.language.clone().unwrap_or_else(|| "standard".into());
            (
                super::wire::escape_key(&t.metadata_key),
                TextField { analyzer },
            )
        })
        .collect()
}

/// What `UpdateMetadataConfiguration` does to an index's configurations.
enum Change {
    Add(Vec<TextSearch>),
    Delete(Vec<String>),
}

impl Change {
    /// The configurations after the change. Adding a key already
    /// configured the same way changes nothing (a retry); with another
    /// language it is refused, as is deleting a key that is not there.
    fn apply(&self, now: &[TextSearch], index: &str) -> Result<Vec<TextSearch>, S3vError> {
        let mut out = now.to_vec();
        match self {
            Change::Add(add) => {
                for t in add {
                    match out.iter().find(|x| x.metadata_key == t.metadata_key) {
                        Some(x) if x == t => {}
                        Some(_) => {
                            return Err(S3vError::validation(format!(
                                "metadata key {:?} is already full-text searchable in index \
                                 {index} with another language; delete it first",
                                t.metadata_key
                            )))
                        }
                        None => out.push(t.clone()),
                    }
                }
                if out.len() > MAX_TEXT_SEARCH {
                    return Err(S3vError::validation(format!(
                        "index {index} would have {} full-text searchable keys; at most \
                         {MAX_TEXT_SEARCH} are allowed",
                        out.len()
                    )));
                }
            }
            Change::Delete(keys) => {
                for k in keys {
                    if !out.iter().any(|x| x.metadata_key == *k) {
                        return Err(S3vError::validation(format!(
                            "metadata key {k:?} is not full-text searchable in index {index}"
                        )));
                    }
                    out.retain(|x| x.metadata_key != *k);
                }
            }
        }
        Ok(out)
    }
}

fn check_index_mode(mode: Option<&str>) -> Result<(), S3vError> {
    match mode {
        Some(INDEX_MODE) => Ok(()),
        Some("CLASSIC") => Err(S3vError::validation(
            "shoal's indexes are ENHANCED only (filters apply before the vector search); \
             CLASSIC is not available",
        )),
        Some(other) => Err(S3vError::validation(format!(
            "index mode {other} is not one of CLASSIC, ENHANCED"
        ))),
        None => Err(S3vError::validation("the index mode is required")),
    }
}
