//! AWS Lambda handlers, runtime-free so tests call them directly; the
//! binaries in `lambdas/` only wire them to `lambda_runtime`.
//!
//! Each handler accepts the same JSON as the HTTP API, either as a direct
//! invocation payload or wrapped in a Lambda Function URL / API Gateway
//! HTTP (payload v2) event, which it answers with a
//! `{statusCode, headers, body}` response. A direct invocation that fails
//! returns an [`ApiError`]; the binaries report it as a Lambda error whose
//! type says `Retryable` or `NonRetryable`.
//!
//! A frozen sandbox runs no background work, so there is no heartbeat task:
//! each invocation heartbeats first when one is due.

use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{parse_body, ApiError, DeleteRequest, GetRequest, Service, UpsertRequest};
use crate::coord::cas::{read_json, update_json, Backoff, Step};
use crate::coord::role::RoleEnv;
use crate::coord::{Cluster, JoinOptions, Role};
use crate::reader::SearchRequest;

/// Index settings from `SHOAL_DIMENSIONS`, `SHOAL_METRIC` and
/// `SHOAL_PARTITIONS` (all optional: they create the config when the
/// bucket has none, and must agree with it when it has one).
pub fn settings_from_env() -> Result<crate::coord::RequestedSettings, ApiError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let num = |k: &str| -> Result<Option<u32>, ApiError> {
        var(k)
            .map(|v| {
                v.parse::<u32>().map_err(|_| {
                    ApiError::new(500, "misconfigured", format!("{k}={v:?} is not a number"))
                })
            })
            .transpose()
    };
    Ok(crate::coord::RequestedSettings {
        dimensions: num("SHOAL_DIMENSIONS")?,
        partition_count: num("SHOAL_PARTITIONS")?,
        distance_metric: var("SHOAL_METRIC")
            .map(|m| m.parse())
            .transpose()
            .map_err(crate::coord::CoordError::from)?,
        ..Default::default()
    })
}

/// Builds the service once per cold start from the environment
/// (`SHOAL_BUCKET`, `BRAINY_ROLE`, [`settings_from_env`], the AWS
/// variables).
pub async fn service_from_env(default_role: Role) -> Result<Service, ApiError> {
    let url = std::env::var("SHOAL_BUCKET").map_err(|_| {
        ApiError::new(
            500,
            "misconfigured",
            "SHOAL_BUCKET is not set (e.g. s3://bucket/prefix)",
        )
    })?;
    let env = RoleEnv::from_process();
    let role = match &env.brainy_role {
        Some(r) => r.parse::<Role>()?,
        None => default_role,
    };
    let cluster = Cluster::join_url(
        &url,
        JoinOptions {
            settings: settings_from_env()?,
            role: Some(role),
            background_heartbeat: false,
            env,
            ..Default::default()
        },
    )
    .await?;
    Ok(Service::new(cluster, None))
}

/// An HTTP-style event (Function URL / API Gateway v2), reduced to what
/// routing needs.
struct HttpEvent {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn as_http_event(event: &Value) -> Result<Option<HttpEvent>, ApiError> {
    let Some(ctx) = event.get("requestContext") else {
        return Ok(None);
    };
    let method = ctx
        .pointer("/http/method")
        .and_then(Value::as_str)
        .unwrap_or("POST")
        .to_string();
    let path = event
        .get("rawPath")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let raw = event.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if event.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| ApiError::bad_request(format!("body is not valid base64: {e}")))?
    } else {
        raw.as_bytes().to_vec()
    };
    Ok(Some(HttpEvent { method, path, body }))
}

fn http_response(result: Result<Value, ApiError>) -> Value {
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, e.body()),
    };
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": body.to_string(),
    })
}

fn to_value<T: Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

/// A direct reader invocation: `{"search": {...}}`, `{"get": {"id": ...}}`,
/// or a bare search request (`{"vector": [...], ...}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum ReaderCall {
    Search { search: SearchRequest },
    Get { get: GetRequest },
    Bare(SearchRequest),
}

/// The reader function: search and get.
pub async fn handle_reader(svc: &Service, event: Value) -> Result<Value, ApiError> {
    heartbeat(svc).await;
    if let Some(h) = as_http_event(&event)? {
        let r = async {
            match (h.method.as_str(), h.path.as_str()) {
                ("POST", "/v1/search" | "/search" | "/") => {
                    to_value(svc.search(parse_body(&h.body)?).await?)
                }
                ("GET", p) if p.starts_with("/v1/records/") => {
                    to_value(svc.get(&p["/v1/records/".len()..]).await?)
                }
                (m, p) => Err(ApiError::not_found(format!("no such endpoint: {m} {p}"))),
            }
        }
        .await;
        return Ok(http_response(r));
    }
    let call: ReaderCall = serde_json::from_value(event).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed reader event ({e}); send {{\"search\": {{\"vector\": [...], \"k\": 10}}}} or {{\"get\": {{\"id\": \"...\"}}}}"
        ))
    })?;
    match call {
        ReaderCall::Search { search } | ReaderCall::Bare(search) => {
            to_value(svc.search(search).await?)
        }
        ReaderCall::Get { get } => to_value(svc.get(&get.id).await?),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WriterCall {
    Upsert { upsert: UpsertRequest },
    Delete { delete: DeleteRequest },
    BareUpsert(UpsertRequest),
    BareDelete(DeleteRequest),
}

/// The writer function: upsert and delete, answering only after commit.
pub async fn handle_writer(svc: &Service, event: Value) -> Result<Value, ApiError> {
    heartbeat(svc).await;
    if let Some(h) = as_http_event(&event)? {
        let r = async {
            match (h.method.as_str(), h.path.as_str()) {
                ("POST", "/v1/upsert" | "/upsert") => {
                    to_value(svc.upsert(parse_body(&h.body)?).await?)
                }
                ("POST", "/v1/delete" | "/delete") => {
                    to_value(svc.delete(parse_body(&h.body)?).await?)
                }
                (m, p) => Err(ApiError::not_found(format!("no such endpoint: {m} {p}"))),
            }
        }
        .await;
        return Ok(http_response(r));
    }
    let call: WriterCall = serde_json::from_value(event).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed writer event ({e}); send {{\"upsert\": {{\"records\": [...]}}}} or {{\"delete\": {{\"ids\": [...]}}}}"
        ))
    })?;
    match call {
        WriterCall::Upsert { upsert } | WriterCall::BareUpsert(upsert) => {
            to_value(svc.upsert(upsert).await?)
        }
        WriterCall::Delete { delete } | WriterCall::BareDelete(delete) => {
            to_value(svc.delete(delete).await?)
        }
    }
}

/// Where the compactor resumes: kept in the bucket.
pub const CURSOR_KEY: &str = "_brainy/compactor-cursor.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    pub next_partition: u32,
    /// Full passes completed (GC runs after each).
    pub passes: u64,
}

/// The compactor function (a scheduled event): compacts partitions by
/// policy, starting where the last invocation stopped, until `deadline`
/// minus `margin`; after each full pass it runs GC. Saves the cursor.
pub async fn handle_compactor(
    svc: &Service,
    deadline: Instant,
    margin: Duration,
    gc: &crate::compact::gc::GcOptions,
) -> Result<Value, ApiError> {
    heartbeat(svc).await;
    let store = svc.cluster.store().as_ref();
    let settings = &svc.cluster.config().settings;
    let n = settings.partition_count;
    let mut cursor = read_json::<Cursor>(store, CURSOR_KEY)
        .await?
        .map(|(c, _)| c)
        .unwrap_or_default();
    cursor.next_partition %= n;
    let (mut visited, mut compacted, mut gc_runs) = (0u32, Vec::new(), 0u32);
    let id = svc.cluster.instance_id().to_string();
    let clock = svc.cluster.clock().clone();
    while Instant::now() + margin < deadline && visited < n {
        let p = cursor.next_partition;
        let outcome = crate::compact::compact_partition(
            store,
            settings,
            p,
            &id,
            &clock,
            &crate::compact::CompactOptions::default(),
        )
        .await
        .map_err(|e| ApiError::new(503, "store_unavailable", e.to_string()))?;
        if let crate::compact::Outcome::Compacted(r) = outcome {
            compacted.push(r);
        }
        visited += 1;
        cursor.next_partition = (p + 1) % n;
        if cursor.next_partition == 0 {
            cursor.passes += 1;
            crate::compact::gc::gc(store, settings, &clock, gc).await?;
            gc_runs += 1;
        }
    }
    let saved = cursor.clone();
    update_json::<Cursor, _>(store, CURSOR_KEY, Backoff::default(), |_| {
        Ok(Step::Write(saved.clone()))
    })
    .await?;
    Ok(json!({
        "partitionsVisited": visited,
        "compacted": compacted,
        "gcRuns": gc_runs,
        "cursor": cursor,
    }))
}

async fn heartbeat(svc: &Service) {
    if let Err(e) = svc.cluster.heartbeat_if_due().await {
        tracing::warn!(error = %e, "heartbeat failed; continuing");
    }
}

/// The error type a Lambda reports: `Retryable.<code>` or
/// `NonRetryable.<code>`.
pub fn error_type(e: &ApiError) -> String {
    format!(
        "{}.{}",
        if e.retryable {
            "Retryable"
        } else {
            "NonRetryable"
        },
        e.code
    )
}
