//! One error vocabulary for callers of the handle ([`crate::Db`]).
//!
//! Every layer keeps its own typed error (`StoreError`, `CoordError`,
//! `SegmentError`, `WriteError`, `ReadError`, `CompactError`) with messages
//! that name the key, partition or field, and sorts its own cases into the
//! small public [`ErrorKind`] (a leaf type in `vocab`) that says what a
//! caller should do (compare slatedb's `ErrorKind`). [`Error`] wraps them
//! without flattening them to strings. HTTP statuses and Lambda error types
//! are derived from the kind (see [`crate::api::ApiError`]), never chosen
//! case by case in a front end.

use crate::compact::CompactError;
use crate::coord::CoordError;
use crate::dataset::DatasetError;
use crate::reader::ReadError;
use crate::store::{ProbeError, StoreError};
pub use crate::vocab::ErrorKind;
use crate::writer::WriteError;

/// Any error the handle returns. The source error is kept whole; match on
/// it when the details matter, or ask [`Error::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Write(e) => e.kind(),
            Error::Read(e) => e.kind(),
            Error::Coord(e) => e.kind(),
            Error::Compact(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Probe(e) => e.kind(),
            Error::InvalidInput(_) | Error::Dataset(_) => ErrorKind::InvalidInput,
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
