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
    let region = store.get_range(key, crate::store::ByteRange::new(0, head_bytes)).await?;
    Ok(super::routed::RoutedHead::parse(key, &region, total)?)
}

/// GETs `key`, decodes it and checks it against `expected`.
pub async fn load(
    store: &dyn ObjectStore,
    key: &str,
    expected: Shape,
) -> Result<Segment, LoadError> {
    let got = store.get(key).await?;
    let seg = decode_segment(key, &got.bytes)?;
    expected.check(key, &seg.header)?;
    Ok(seg)
}
