//! One error vocabulary for callers of the handle ([`crate::Db`]).
//!
//! Every layer keeps its own typed error (`StoreError`, `CoordError`,
//! `SegmentError`, `WriteError`, `ReadError`, `CompactError`) with messages
//! that name the key, partition or field. [`Error`] wraps them without
//! flattening them to strings, and [`Error::kind`] sorts any of them into
//! the small public [`ErrorKind`] that says what a caller should do
//! (compare slatedb's `ErrorKind`). HTTP statuses and Lambda error types
//! are derived from the kind (see [`crate::api::ApiError`]), never chosen
//! case by case in a front end.

use crate::compact::CompactError;
use crate::coord::CoordError;
use crate::dataset::DatasetError;
use crate::reader::ReadError;
use crate::segment::SegmentError;
use crate::store::{ProbeError, StoreError};
use crate::writer::WriteError;

/// What went wrong, as far as a caller needs to know to react.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is wrong (bad vector, filter, setting, JSON): fix it;
    /// retrying as is will fail again. Nothing was written.
    InvalidInput,
    /// What was asked for does not exist (no index at the URL, no record).
    NotFound,
    /// Someone else changed shared state first and shoal gave up (a
    /// contradicting config); re-read before trying again.
    Conflict,
    /// The store is unavailable or throttling, or contention did not settle:
    /// the same request may succeed later.
    Unavailable,
    /// An object in the bucket is damaged, foreign or missing although
    /// referenced; the error names its key. Run `shoal verify`.
    Corrupt,
    /// A bug or an environment problem (a panicked worker, bad
    /// credentials, a store that ignores conditional writes).
    Internal,
}

impl ErrorKind {
    /// Whether the same request may succeed later.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Unavailable
    }
}

/// Any error the handle returns. The source error is kept whole; match on
/// it when the details matter, or ask [`Error::kind`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error(transparent)]
    Compact(#[from] CompactError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// An input file could not be read (ingest, bench).
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A request the handle itself refuses (e.g. a partition that does
    /// not exist), before anything is read or written.
    #[error("{0}")]
    InvalidInput(String),
    /// A record or object the caller asked for is not there.
    #[error("{0}")]
    NotFound(String),
    /// A fault inside shoal (a panicked task); never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Write(e) => write_kind(e),
            Error::Read(e) => read_kind(e),
            Error::Coord(e) => coord_kind(e),
            Error::Compact(e) => match e {
                CompactError::Coord(e) => coord_kind(e),
                CompactError::Store(e) => store_kind(e),
                CompactError::Segment(e) => segment_kind(e),
            },
            Error::Store(e) => store_kind(e),
            Error::Probe(ProbeError::Store { source, .. }) => store_kind(source),
            Error::Probe(ProbeError::NotEnforced { .. }) => ErrorKind::Internal,
            Error::InvalidInput(_) | Error::Dataset(_) => ErrorKind::InvalidInput,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// A batch over the size limits (HTTP answers it with 413).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Error::Write(WriteError::Invalid(
                crate::record::InvalidInput::BatchTooLarge { .. }
            ))
        )
    }
}

pub(crate) fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::NotFound { .. } => ErrorKind::NotFound,
        StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. } => {
            ErrorKind::Conflict
        }
        StoreError::Transient { .. } => ErrorKind::Unavailable,
        StoreError::Other { .. } => ErrorKind::Internal,
    }
}

fn segment_kind(_: &SegmentError) -> ErrorKind {
    ErrorKind::Corrupt
}

pub(crate) fn coord_kind(e: &CoordError) -> ErrorKind {
    match e {
        CoordError::Store(e) => store_kind(e),
        CoordError::Probe(ProbeError::Store { source, .. }) => store_kind(source),
        CoordError::Probe(ProbeError::NotEnforced { .. }) => ErrorKind::Internal,
        CoordError::Corrupt { .. } => ErrorKind::Corrupt,
        CoordError::InvalidSetting { .. }
        | CoordError::Immutable { .. }
        | CoordError::MissingSetting(_)
        | CoordError::InvalidRole { .. } => ErrorKind::InvalidInput,
        CoordError::Contradiction { .. } => ErrorKind::Conflict,
        CoordError::Contention { .. } => ErrorKind::Unavailable,
        CoordError::NoIndex { .. } => ErrorKind::NotFound,
    }
}

fn write_kind(e: &WriteError) -> ErrorKind {
    match e {
        WriteError::Invalid(_) => ErrorKind::InvalidInput,
        WriteError::Commit { source, .. } => write_kind(source),
        WriteError::Coord(e) => coord_kind(e),
        WriteError::Store(e) => store_kind(e),
        WriteError::Segment(e) => segment_kind(e),
    }
}

fn read_kind(e: &ReadError) -> ErrorKind {
    match e {
        ReadError::Invalid(_) | ReadError::Filter(_) => ErrorKind::InvalidInput,
        ReadError::Coord(e) => coord_kind(e),
        ReadError::Internal(_) => ErrorKind::Internal,
        ReadError::Partition { source, .. } => match source.kind() {
            // A segment the manifest references is gone even after a
            // refresh: the bucket is damaged, not the request.
            ErrorKind::NotFound => ErrorKind::Corrupt,
            k => k,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_what_the_caller_can_do() {
        let transient = StoreError::Transient {
            key: "k".into(),
            message: "slow down".into(),
        };
        assert_eq!(Error::from(transient).kind(), ErrorKind::Unavailable);
        let corrupt = CoordError::Corrupt {
            key: "vectors/p000/manifest.json".into(),
            reason: "bad".into(),
            found: "x".into(),
        };
        assert_eq!(Error::from(corrupt).kind(), ErrorKind::Corrupt);
        assert_eq!(
            Error::from(ReadError::Internal("worker panicked".into())).kind(),
            ErrorKind::Internal
        );
        assert_eq!(
            Error::from(ReadError::Invalid("k".into())).kind(),
            ErrorKind::InvalidInput
        );
        assert!(Error::from(CoordError::Contention {
            key: "k".into(),
            attempts: 3
        })
        .is_retryable());
    }
}
