//! The request/response API shared by `shoal serve` (HTTP), the Lambda
//! handlers and tests: a [`Service`] wrapping a joined cluster with its
//! reader and writer, JSON request types, and [`ApiError`] with a stable
//! shape `{"error": {"code", "message"}}` and an HTTP status.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::coord::{Cluster, CoordError};
use crate::reader::{ReadError, Reader, ReaderOptions, SearchRequest, SearchResponse};
use crate::record::{Record, StoredRecord};
use crate::writer::{WriteError, WriteReceipt, Writer, WriterOptions};

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
            retryable: status >= 500,
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

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match &e {
            WriteError::Invalid(crate::record::InvalidInput::BatchTooLarge { .. }) => {
                ApiError::new(413, "payload_too_large", e.to_string())
            }
            WriteError::Invalid(_) => ApiError::bad_request(e.to_string()),
            _ if e.is_retryable() => ApiError::new(503, "store_unavailable", e.to_string()),
            _ => ApiError::new(500, "internal", e.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match &e {
            ReadError::Invalid(_) | ReadError::Filter(_) => ApiError::bad_request(e.to_string()),
            _ if e.is_retryable() => ApiError::new(503, "store_unavailable", e.to_string()),
            _ => ApiError::new(500, "internal", e.to_string()),
        }
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        if e.is_retryable() {
            ApiError::new(503, "store_unavailable", e.to_string())
        } else {
            ApiError::new(500, "internal", e.to_string())
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

/// A joined instance with a reader and a writer: what every front end
/// (HTTP, Lambda) serves.
pub struct Service {
    pub cluster: Cluster,
    pub reader: Reader,
    pub writer: Writer,
    compactor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Service {
    /// Wraps a joined cluster. Writers (role writer or both) compact the
    /// partitions they write in the background every `compact_every`
    /// unless it is `None`.
    pub fn new(cluster: Cluster, compact_every: Option<Duration>) -> Self {
        let reader = cluster.reader(ReaderOptions::for_role(cluster.role()));
        let writer = cluster.writer(WriterOptions::default());
        let compactor = compact_every
            .filter(|_| cluster.role().writes())
            .map(|every| crate::compact::spawn_background(writer.clone(), every));
        Service {
            cluster,
            reader,
            writer,
            compactor: std::sync::Mutex::new(compactor),
        }
    }

    pub async fn upsert(&self, req: UpsertRequest) -> Result<WriteReceipt, ApiError> {
        let receipt = self.writer.upsert(&req.records).await?;
        self.count_writes(receipt.records);
        Ok(receipt)
    }

    pub async fn delete(&self, req: DeleteRequest) -> Result<WriteReceipt, ApiError> {
        let receipt = self.writer.delete(&req.ids).await?;
        self.count_writes(receipt.records);
        Ok(receipt)
    }

    fn count_writes(&self, n: usize) {
        self.cluster
            .metrics()
            .writes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn search(&self, req: SearchRequest) -> Result<SearchResponse, ApiError> {
        Ok(self.reader.search(&req).await?)
    }

    pub async fn get(&self, id: &str) -> Result<StoredRecord, ApiError> {
        self.reader
            .get_with(id, crate::reader::Consistency::Strong)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no record with id {id:?}")))
    }

    pub async fn status(&self) -> Result<crate::inspect::Status, ApiError> {
        let now = self.cluster.clock().now();
        Ok(crate::inspect::status(self.cluster.store(), self.cluster.config(), now).await?)
    }

    /// Ready when the store answers (a GET of the config).
    pub async fn ready(&self) -> Result<(), ApiError> {
        crate::coord::config::read_config(self.cluster.store().as_ref())
            .await
            .map_err(|e| ApiError::new(503, "store_unavailable", e.to_string()))?
            .ok_or_else(|| ApiError::new(503, "store_unavailable", "the index config is gone"))?;
        Ok(())
    }

    /// Clean shutdown: stop background work and deregister. Takes `&self`
    /// because server tasks may still hold the service while they finish.
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        let compactor = self.compactor.lock().unwrap().take();
        if let Some(c) = compactor {
            c.abort();
        }
        self.cluster.deregister().await?;
        Ok(())
    }
}

/// A shared service handle.
pub type SharedService = Arc<Service>;
