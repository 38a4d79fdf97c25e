//! Errors of the coordination layer.

use crate::store::{ProbeError, StoreError};
use crate::vocab::ErrorKind;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// An object in the bucket is not what shoal wrote.
    #[error("corrupt object {key}: {reason}; found: {found}")]
    Corrupt {
        key: String,
        reason: String,
        found: String,
    },
    /// A setting has a value shoal does not accept.
    #[error("invalid setting {setting} = {value}: {expected}")]
    InvalidSetting {
        setting: &'static str,
        value: String,
        expected: String,
    },
    /// This instance asked for settings the bucket already has otherwise.
    #[error(
        "setting {setting} contradicts the bucket's config: the bucket has {bucket}, this \
         instance asked for {requested}; use the bucket's value or a different bucket/prefix"
    )]
    Contradiction {
        setting: &'static str,
        bucket: String,
        requested: String,
    },
    /// A setting that shapes stored data cannot change once data exists.
    #[error(
        "setting {setting} cannot change from {from} to {to}: the bucket already holds data \
         under vectors/"
    )]
    Immutable {
        setting: &'static str,
        from: String,
        to: String,
    },
    /// The bucket holds no index (no config) and this caller may not
    /// create one.
    #[error("no shoal index at {store}")]
    NoIndex { store: String },
    /// No config in the bucket and not enough settings to create one.
    #[error("{0}")]
    MissingSetting(String),
    /// A settings change names an unknown setting, a value of the wrong
    /// type, or one that may not change.
    #[error("{0}")]
    BadChange(String),
    /// A partition manifest is gone from an index whose manifests all
    /// exist from `init` on: the partition's segments are unreachable
    /// until `shoal repair` rebuilds it. Nothing recreates it silently.
    #[error(
        "partition manifest {key} is missing: this index creates every manifest at init, so \
         it was deleted or lost and partition {partition}'s data is unreachable; nothing will \
         recreate it empty. Rebuild it from the segments with `shoal repair {partition}`"
    )]
    MissingManifest { key: String, partition: u32 },
    /// A commit came too late: the segment was PUT longer ago than the
    /// commit age bound (half the GC grace period), so GC may already have
    /// deleted it as an orphan. Nothing was committed; send the data again.
    #[error(
        "not committing {key}: it was written {age_s} s ago, past the commit age bound of \
         {bound_s} s (half the GC grace period), so GC may have deleted it; the data must be \
         written again as a new segment"
    )]
    CommitTooLate {
        key: String,
        age_s: u64,
        bound_s: u64,
    },
    /// Compare-and-swap kept losing.
    #[error("gave up updating {key} after {attempts} attempts: too much contention")]
    Contention { key: String, attempts: u32 },
    #[error("invalid role {value:?}: allowed values are reader, writer, both")]
    InvalidRole { value: String },
    /// The index was deleted (an S3 Vectors `DeleteIndex`): `key` holds
    /// its tombstone, so it can be neither opened nor written again.
    #[error("the index was deleted at {at} ({key} marks it deleted): it can no longer be used")]
    Deleted {
        key: String,
        at: String,
        partition_count: Option<u32>,
    },
}

impl From<crate::vocab::InvalidSetting> for CoordError {
    fn from(e: crate::vocab::InvalidSetting) -> Self {
        CoordError::InvalidSetting {
            setting: e.setting,
            value: e.value,
            expected: e.expected,
        }
    }
}

impl CoordError {
    /// What a caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoordError::Store(e) => e.kind(),
            CoordError::Probe(e) => e.kind(),
            CoordError::Corrupt { .. } | CoordError::MissingManifest { .. } => ErrorKind::Corrupt,
            CoordError::CommitTooLate { .. } => ErrorKind::Unavailable,
            CoordError::InvalidSetting { .. }
            | CoordError::Immutable { .. }
            | CoordError::MissingSetting(_)
            | CoordError::BadChange(_)
            | CoordError::InvalidRole { .. } => ErrorKind::InvalidInput,
            CoordError::Contradiction { .. } => ErrorKind::Conflict,
            CoordError::Contention { .. } => ErrorKind::Unavailable,
            CoordError::NoIndex { .. } | CoordError::Deleted { .. } => ErrorKind::NotFound,
        }
    }

    /// Whether retrying the operation later may succeed: the kind says.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// A short, printable excerpt of bytes found in the bucket, for errors.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > MAX {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    if out.trim().is_empty() {
        format!("{} bytes of non-text or whitespace", bytes.len())
    } else {
        format!("`{out}`")
    }
}
