//! The request and response types every front end shares (the library
//! handle, the CLI, HTTP and Lambda), and [`ApiError`], the wire shape of
//! an error: `{"error": {"code", "message"}}` with an HTTP status derived
//! from the error's [`ErrorKind`].

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, ErrorKind};

pub use crate::compact::gc::{GcOptions, GcReport, DEFAULT_GRACE, MIN_SAFE_GRACE};
pub use crate::compact::indexer::IndexRound;
pub use crate::compact::repair::{RepairOptions, RepairReport};
pub use crate::compact::schedule::CompactRound;
pub use crate::compact::shard_repair::ShardRepair;
pub use crate::compact::{CompactReport, Outcome};
pub use crate::coord::config::{Config, Settings, DEFAULT_PARTITION_COUNT};
pub use crate::coord::cursor::Cursor;
pub use crate::coord::instance::InstanceRecord;
pub use crate::coord::paths::COMPACTOR_CURSOR_KEY;
pub use crate::coord::{JoinOptions, RequestedSettings, Role};
pub use crate::db::{CompactRequest, ProbeReport};
pub use crate::inspect::{
    PartitionStatus, Problem, RoutingStatus, Status, TextIndexStatus, VerifyReport,
};
pub use crate::reader::{
    Consistency, Hit, HitScores, KeyScore, PartitionFailure, QueryStats, QueryText, ReaderStats,
    SearchRequest, SearchResponse, WarmReport, MAX_K,
};
pub use crate::record::{InvalidInput, Record, StoredRecord};
pub use crate::store::RequestCounts;
pub use crate::vocab::{parse_bytes, Analyzer, Metric, TextField};
pub use crate::writer::{
    Committed, Durable, DurableHook, FlushReport, WriteReceipt, WriterStatsSnapshot,
};

// Input and evaluation helpers the front ends share: reading query rows
// from files, the readable filter syntax, bulk ingest of files, the
// benchmark suite and its statistics.
pub use crate::bench::{
    exact_top_k, percentile, recall, run_cost, run_suite, CostOptions, CostReport, FilteredOptions,
    Requests, SuiteOptions, SuiteResults,
};
pub use crate::dataset::{row_of, DatasetError};
pub use crate::filter::{parse_filter, parse_filter_expr, FilterError};
pub use crate::ingest::{ingest_files, IngestEvent, IngestOptions, IngestSummary};

/// An error as API clients see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Whether the same request may succeed later.
    #[serde(skip)]
    pub retryable: bool,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            // A 500 is a fault in shoal: the same request would fail again.
            retryable: status > 500,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The HTTP status and code of each kind. A panic or internal fault is a
/// 500, never a 400: the caller did nothing wrong.
pub fn status_of(kind: ErrorKind) -> (u16, &'static str) {
    match kind {
        ErrorKind::InvalidInput => (400, "invalid_request"),
        ErrorKind::NotFound => (404, "not_found"),
        ErrorKind::Conflict => (409, "conflict"),
        ErrorKind::Unavailable => (503, "store_unavailable"),
        ErrorKind::Corrupt => (500, "corrupt_data"),
        ErrorKind::Internal => (500, "internal"),
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        let (status, code) = if e.is_too_large() {
            (413, "payload_too_large")
        } else {
            status_of(kind)
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
            retryable: kind.is_retryable(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    pub records: Vec<Record>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub ids: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub id: String,
}

/// Parses a JSON request body, mapping any problem to a 400 that says
/// what is wrong (field, type, position).
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_the_kind() {
        let e = ApiError::from(Error::Read(crate::reader::ReadError::Internal(
            "search worker panicked: boom".into(),
        )));
        assert_eq!((e.status, e.code, e.retryable), (500, "internal", false));
        let e = ApiError::from(Error::Store(crate::store::StoreError::Transient {
            key: "k".into(),
            message: "slow down".into(),
        }));
        assert_eq!(
            (e.status, e.code, e.retryable),
            (503, "store_unavailable", true)
        );
        let e = ApiError::from(Error::InvalidInput("bad".into()));
        assert_eq!((e.status, e.code), (400, "invalid_request"));
    }
}
