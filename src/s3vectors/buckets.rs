//! The vector-bucket operations: `CreateVectorBucket`, `GetVectorBucket`,
//! `ListVectorBuckets`, `DeleteVectorBucket`. A vector bucket is only a
//! name in the catalog; its indexes live under `<vector-bucket>/`.

use serde_json::{json, Value};

use super::error::{quota, S3vError};
use super::wire::check_name;
use super::{now_secs, Call, MAX_BUCKETS};
use crate::coord::catalog::{Catalog, VectorBucket};

/// Names that would collide with an index at the root of the store.
const RESERVED_BUCKET_NAMES: [&str; 2] = ["vectors", "index"];

/// The vector bucket `bucket`, or NotFound.
pub(super) fn bucket_of<'c>(cat: &'c Catalog, bucket: &str) -> Result<&'c VectorBucket, S3vError> {
    cat.buckets
        .get(bucket)
        .ok_or_else(|| S3vError::not_found(format!("vector bucket {bucket} does not exist")))
}

impl Call<'_> {
    pub(super) async fn create_bucket(&self) -> Result<Value, S3vError> {
        let name = self
            .str_field("vectorBucketName")?
            .ok_or_else(|| S3vError::validation("vectorBucketName is required"))?
            .to_string();
        check_name("vectorBucketName", &name)?;
        if RESERVED_BUCKET_NAMES.contains(&name.as_str()) {
            return Err(S3vError::validation(format!(
                "vector bucket name {name:?} is reserved by shoal's layout; pick another"
            )));
        }
        let encryption = match self.input.get("encryptionConfiguration") {
            None | Some(Value::Null) => None,
            Some(v) => match v.get("sseType").and_then(Value::as_str) {
                None | Some("AES256") => Some(v.clone()),
                Some(other) => {
                    return Err(S3vError::validation(format!(
                        "sseType {other} is not supported by shoal; objects are encrypted as \
                         the underlying bucket is (AES256)"
                    )))
                }
            },
        };
        let created = now_secs();
        self.svc
            .change_catalog(|c| {
                if c.buckets.contains_key(&name) {
                    return Err(S3vError::conflict(format!(
                        "a vector bucket named {name} already exists"
                    )));
                }
                if c.buckets.len() >= MAX_BUCKETS {
                    return Err(quota(format!(
                        "this store already holds {MAX_BUCKETS} vector buckets"
                    )));
                }
                c.buckets.insert(
                    name.clone(),
                    VectorBucket {
                        creation_time: created,
                        encryption_configuration: encryption.clone(),
                        indexes: Default::default(),
                        deleting: Vec::new(),
                    },
                );
                Ok(())
            })
            .await?;
        Ok(json!({"vectorBucketArn": self.svc.bucket_arn(&self.region, &name)}))
    }

    fn bucket_summary(&self, name: &str, b: &VectorBucket, full: bool) -> Value {
        let mut v = json!({
            "vectorBucketName": name,
            "vectorBucketArn": self.svc.bucket_arn(&self.region, name),
            "creationTime": b.creation_time,
        });
        if full {
            if let Some(e) = &b.encryption_configuration {
                v["encryptionConfiguration"] = e.clone();
            }
            v["defaultIndexMode"] = json!(super::text::INDEX_MODE);
        }
        v
    }

    pub(super) async fn get_bucket(&self) -> Result<Value, S3vError> {
        let name = self.bucket_name()?;
        let cat = self
            .svc
            .catalog_with(|c| c.buckets.contains_key(&name))
            .await?;
        let b = bucket_of(&cat, &name)?;
        Ok(json!({"vectorBucket": self.bucket_summary(&name, b, true)}))
    }

    pub(super) async fn list_buckets(&self) -> Result<Value, S3vError> {
        let cat = self.svc.fresh_catalog().await?;
        let (names, next) = self.page(cat.buckets.keys())?;
        let list: Vec<Value> = names
            .iter()
            .map(|n| self.bucket_summary(n, &cat.buckets[*n], false))
            .collect();
        let mut out = json!({"vectorBuckets": list});
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        Ok(out)
    }

    /// Deletes an empty vector bucket, first finishing the deletions of
    /// its indexes still under way (any instance may: a deleter that died
    /// never keeps a bucket from being deleted).
    pub(super) async fn delete_bucket(&self) -> Result<Value, S3vError> {
        let name = self.bucket_name()?;
        let cat = self
            .svc
            .catalog_with(|c| c.buckets.contains_key(&name))
            .await?;
        let b = bucket_of(&cat, &name)?;
        refuse_live_indexes(&name, b)?;
        for d in b.deletions() {
            self.svc.finish(&name, &d).await?;
        }
        self.svc
            .change_catalog(|c| {
                let b = bucket_of(c, &name)?;
                refuse_live_indexes(&name, b)?;
                if !b.deletions().is_empty() {
                    return Err(S3vError::conflict(format!(
                        "vector bucket {name} has index deletions under way; retry shortly"
                    )));
                }
                c.buckets.remove(&name);
                Ok(())
            })
            .await?;
        Ok(json!({}))
    }
}

/// Refuses to delete a bucket that still holds live indexes.
fn refuse_live_indexes(name: &str, b: &VectorBucket) -> Result<(), S3vError> {
    let live = b
        .indexes
        .values()
        .filter(|e| e.deleting_since.is_none())
        .count();
    if live > 0 {
        return Err(S3vError::conflict(format!(
            "vector bucket {name} still holds {live} indexes; delete them first"
        )));
    }
    Ok(())
}
