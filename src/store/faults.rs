//! Store decorators that misbehave on purpose, for tests.
//!
//! [`IgnoreConditions`] models servers that accept conditional headers and
//! ignore them, so tests can prove the probe refuses such a store.

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteRange, Conditional, DynStore, ETag, GetResult, ObjectMeta, ObjectStore, Result};

/// Turns every conditional write into an unconditional one.
#[derive(Debug)]
pub struct IgnoreConditions(pub DynStore);

#[async_trait]
impl ObjectStore for IgnoreConditions {
    async fn get(&self, key: &str) -> Result<GetResult> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.0.get_range(key, range).await
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        self.0.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.0.head(key).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.0.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.0.put(key, bytes).await
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, _etag: &ETag) -> Result<ETag> {
        self.0.put(key, bytes).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.0.list(prefix).await
    }
    fn describe(&self) -> String {
        format!("{} (conditions ignored)", self.0.describe())
    }
}
