//! Errors of the read path: [`ReadError`] for an operation, and
//! [`PartitionError`] for one partition or shard, cheap to clone so a
//! cache can hand one error to every query waiting on the same load.

use std::sync::Arc;

use crate::coord::CoordError;
use crate::filter::FilterError;
use crate::segment::SegmentError;
use crate::store::StoreError;

/// Errors of the read path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The request itself is wrong (400-class).
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A partition could not be read; names the partition and object.
    #[error("partition {partition} could not be read ({key}): {source}")]
    Partition {
        partition: u32,
        key: String,
        #[source]
        source: PartitionError,
    },
    /// An index shard or deletion vector could not be read.
    #[error("index shard data could not be read ({key}): {source}{}", shard_hint(.key, .source))]
    Index {
        key: String,
        #[source]
        source: PartitionError,
    },
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// A fault inside the reader (a panicked search worker).
    #[error("internal error: {0}")]
    Internal(String),
    /// The query's deadline passed before every partition was loaded.
    #[error(
        "query deadline of {ms} ms passed while loading partitions; retry later or allow a \
         longer deadline_ms"
    )]
    Deadline { ms: u64 },
    /// The index cannot answer this query yet; retrying later helps.
    #[error("{0}")]
    NotYet(String),
}

/// What to do about a damaged shard (nothing for one that vanished or a
/// store that failed: a retry settles those).
fn shard_hint(key: &str, source: &PartitionError) -> String {
    if source.kind() == crate::vocab::ErrorKind::Corrupt && key.ends_with(".shard") {
        format!(
            "; search with allow_partial to answer around it, or rebuild it with \
             `shoal repair --shard {key}` (it lists what is lost)"
        )
    } else {
        String::new()
    }
}

impl ReadError {
    /// What a caller can do about it.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        use crate::vocab::ErrorKind;
        match self {
            ReadError::Invalid(_) | ReadError::Filter(_) => ErrorKind::InvalidInput,
            ReadError::Coord(e) => e.kind(),
            ReadError::Internal(_) => ErrorKind::Internal,
            ReadError::Deadline { .. } | ReadError::NotYet(_) => ErrorKind::Unavailable,
            ReadError::Partition { source, .. } | ReadError::Index { source, .. } => {
                match source.kind() {
                    // A segment the manifest references is gone even after a
                    // refresh: the bucket is damaged, not the request.
                    ErrorKind::NotFound => ErrorKind::Corrupt,
                    k => k,
                }
            }
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// Why one partition could not be loaded. Cheap to clone (the segment
/// cache hands one error to every query waiting on the same load).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PartitionError {
    /// The manifest could not be fetched, parsed or validated.
    #[error(transparent)]
    Manifest(Arc<CoordError>),
    /// A segment could not be fetched, decoded, or belongs elsewhere.
    #[error(transparent)]
    Segment(Arc<crate::segment::LoadError>),
}

impl PartitionError {
    /// The object the error is about.
    pub fn key(&self) -> String {
        match self {
            PartitionError::Manifest(e) => match &**e {
                CoordError::Store(s) => s.key().to_string(),
                CoordError::Corrupt { key, .. } => key.clone(),
                _ => String::new(),
            },
            PartitionError::Segment(e) => e.key().to_string(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// A referenced segment is gone (compaction + GC since our manifest).
    pub(crate) fn is_missing_segment(&self) -> bool {
        matches!(self, PartitionError::Segment(e) if e.is_missing())
    }

    /// What a caller can do about it.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        match self {
            PartitionError::Manifest(e) => e.kind(),
            PartitionError::Segment(e) => e.kind(),
        }
    }

    pub(super) fn from_store(e: StoreError) -> Self {
        PartitionError::Manifest(Arc::new(CoordError::Store(e)))
    }

    pub(super) fn from_manifest(e: CoordError) -> Self {
        PartitionError::Manifest(Arc::new(e))
    }

    pub(super) fn from_load(e: crate::segment::LoadError) -> Self {
        PartitionError::Segment(Arc::new(e))
    }

    pub(super) fn bad_index(key: &str, reason: String) -> Self {
        PartitionError::Segment(Arc::new(crate::segment::LoadError::Segment(
            SegmentError::Corrupt {
                key: key.to_string(),
                reason: format!("bad index section: {reason}"),
            },
        )))
    }

    pub(super) fn into_read_error(self, partition: u32) -> ReadError {
        ReadError::Partition {
            partition,
            key: self.key(),
            source: self,
        }
    }
}
