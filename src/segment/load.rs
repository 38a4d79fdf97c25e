//! The one way to read a segment from the bucket: GET, decode, and check
//! that it belongs to the index (dimensions and metric). The reader's
//! cache, compaction, `verify` and tests all come through [`load`].

use crate::store::{ObjectStore, StoreError};
use crate::vocab::Metric;

use super::{decode_segment, Segment, SegmentError, SegmentHeader};

/// What every segment of an index must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub dimensions: usize,
    pub metric: Metric,
}

impl Shape {
    /// Refuses a segment written for other dimensions or another metric.
    pub fn check(&self, key: &str, header: &SegmentHeader) -> Result<(), SegmentError> {
        if header.dimensions as usize != self.dimensions || header.metric != self.metric {
            return Err(SegmentError::Foreign {
                key: key.to_string(),
                reason: format!(
                    "it holds {}-d {} vectors, the index is {}-d {}",
                    header.dimensions, header.metric, self.dimensions, self.metric
                ),
            });
        }
        Ok(())
    }
}

/// Why a segment could not be loaded: the store failed, or the bytes are
/// not a segment of this index. Both name the object key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

impl LoadError {
    pub fn key(&self) -> &str {
        match self {
            LoadError::Store(e) => e.key(),
            LoadError::Segment(e) => e.key(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// A segment that does not decode or belongs elsewhere is corrupt data;
    /// a store failure is whatever the store says.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        match self {
            LoadError::Store(e) => e.kind(),
            LoadError::Segment(_) => crate::vocab::ErrorKind::Corrupt,
        }
    }

    /// The object is gone (a compaction and GC since the manifest was read).
    pub(crate) fn is_missing(&self) -> bool {
        matches!(self, LoadError::Store(StoreError::NotFound { .. }))
    }
}

/// The head of the routed shard `key` (`total` bytes), from a ranged GET
/// of its first `head_bytes` bytes.
pub(crate) async fn load_routed_head(
    store: &dyn ObjectStore,
    key: &str,
    head_bytes: u64,
    total: u64,
) -> Result<super::routed::RoutedHead, LoadError> {
    let region = store
        .get_range(key, crate::store::ByteRange::new(0, head_bytes))
        .await?;
    Ok(super::routed::RoutedHead::parse(key, &region, total)?)
}

/// GETs `key`, decodes it and checks it against `expected`.
pub async fn load(
    store: &dyn ObjectStore,
    key: &str,
    expected: Shape,
) -> Result<Segment, LoadError> {
    let got = store.get(key).await?;
    decode_checked(key, &got.bytes, expected)
}

/// The segment at `key`: the whole object, or (`section` = offset,
/// length, from a manifest entry) one partition's section of a batch
/// object, fetched with one ranged GET.
pub async fn load_at(
    store: &dyn ObjectStore,
    key: &str,
    section: Option<(u64, u64)>,
    expected: Shape,
) -> Result<Segment, LoadError> {
    let Some((offset, length)) = section else {
        return load(store, key, expected).await;
    };
    let end = offset.saturating_add(length);
    let got = store
        .get_range(key, crate::store::ByteRange::new(offset, end))
        .await?;
    if got.len() as u64 != length {
        return Err(short_section(key, offset, length, got.len()).into());
    }
    decode_checked(key, &got, expected)
}

/// The segment at `section` of the whole batch object `buf` (see
/// [`ObjectCache`]).
pub fn decode_section(
    key: &str,
    buf: &[u8],
    section: (u64, u64),
    expected: Shape,
) -> Result<Segment, LoadError> {
    let bytes = super::batch::slice_section(key, buf, section.0, section.1)?;
    decode_checked(key, bytes, expected)
}

fn short_section(key: &str, offset: u64, length: u64, got: usize) -> SegmentError {
    SegmentError::Corrupt {
        key: key.to_string(),
        reason: format!("section {offset}+{length} lies beyond the object (got {got} bytes)"),
    }
}

fn decode_checked(key: &str, bytes: &[u8], expected: Shape) -> Result<Segment, LoadError> {
    let seg = decode_segment(key, bytes)?;
    expected.check(key, &seg.header)?;
    Ok(seg)
}

/// Whole batch objects held briefly, so the sections of one object that a
/// reader or an indexer round needs for many partitions cost one GET
/// together (single flight per key), not one ranged GET each. Bounded by
/// bytes; entries expire after a minute (the sections themselves are
/// cached decoded by their users).
#[derive(Clone)]
pub struct ObjectCache {
    objects: moka::future::Cache<String, bytes::Bytes>,
    max_bytes: u64,
}

impl ObjectCache {
    pub fn new(max_bytes: u64) -> Self {
        ObjectCache {
            objects: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, v: &bytes::Bytes| v.len().try_into().unwrap_or(u32::MAX))
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            max_bytes,
        }
    }

    /// The segment at `key` (whole, or its `section`), the batch object
    /// fetched whole at most once while it stays cached; one whose size
    /// (`object_bytes`) is unknown or above a quarter of the cache is read
    /// section by section instead (it would not stay).
    pub async fn load_at(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        section: Option<(u64, u64)>,
        object_bytes: Option<u64>,
        expected: Shape,
    ) -> Result<Segment, LoadError> {
        let Some(section) = section else {
            return load(store, key, expected).await;
        };
        if object_bytes.is_none_or(|n| n > self.max_bytes / 4) {
            return load_at(store, key, Some(section), expected).await;
        }
        let whole = self
            .objects
            .try_get_with(key.to_string(), async {
                store.get(key).await.map(|g| g.bytes)
            })
            .await
            .map_err(|e: std::sync::Arc<StoreError>| LoadError::Store((*e).clone()))?;
        decode_section(key, &whole, section, expected)
    }
}
