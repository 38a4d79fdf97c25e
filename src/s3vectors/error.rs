//! [`S3vError`], an error as S3 Vectors clients see it (`{"__type",
//! "message"}` with the HTTP status AWS uses), and how shoal's own errors
//! become one.

use serde_json::{json, Value};

use crate::error::{Error, ErrorKind};

/// An error as S3 Vectors clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct S3vError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl S3vError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        S3vError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn validation(message: impl Into<String>) -> Self {
        S3vError::new(400, "ValidationException", message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        S3vError::new(404, "NotFoundException", message)
    }

    pub(super) fn conflict(message: impl Into<String>) -> Self {
        S3vError::new(409, "ConflictException", message)
    }

    /// The JSON body of the error answer.
    pub fn body(&self) -> Value {
        json!({"__type": self.code, "message": self.message})
    }
}

impl std::fmt::Display for S3vError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<Error> for S3vError {
    fn from(e: Error) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::InvalidInput if e.is_too_large() => (413, "ValidationException"),
            ErrorKind::InvalidInput => (400, "ValidationException"),
            ErrorKind::NotFound => (404, "NotFoundException"),
            ErrorKind::Conflict => (409, "ConflictException"),
            ErrorKind::Unavailable => (503, "ServiceUnavailableException"),
            ErrorKind::Corrupt | ErrorKind::Internal => (500, "InternalServerException"),
        };
        S3vError::new(status, code, e.to_string())
    }
}

impl From<crate::coord::CoordError> for S3vError {
    fn from(e: crate::coord::CoordError) -> Self {
        Error::from(e).into()
    }
}

/// Past one of AWS's quotas (vector buckets per store, indexes per bucket).
pub(super) fn quota(message: String) -> S3vError {
    S3vError::new(402, "ServiceQuotaExceededException", message)
}

/// A write sent to an instance that serves reads only.
pub(super) fn read_only() -> S3vError {
    S3vError::new(
        403,
        "AccessDeniedException",
        "this instance runs as a reader and serves reads only; send writes to a writer \
         (or both) instance, or start this one with --role writer (BRAINY_ROLE=writer)",
    )
}
