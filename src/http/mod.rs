//! `shoal serve`: the HTTP API for containers pointed at a bucket. Its
//! routes are the rows of the shared route table (`crate::routes`), which
//! the Lambda functions serve too; `/metrics` is the one HTTP-only route.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | POST | `/v1/upsert` | `{"records": [...]}` → write receipt (after commit) |
//! | POST | `/v1/delete` | `{"ids": [...]}` → write receipt |
//! | POST | `/v1/search` | a search request → results and stats |
//! | GET | `/v1/records/{id}` | the record, or 404 |
//! | GET | `/v1/status` | config, instances, partitions, counters |
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 when the config loads and the store answers, else 503 |
//! | GET | `/metrics` | Prometheus text |
//!
//! Errors are `{"error": {"code", "message"}}` with 400 (bad input), 401
//! (missing or wrong API key), 403 (a read key on a write route, or a
//! write to a reader instance), 404, 408 (a body that did not arrive
//! within the body timeout), 413 (body or batch too large), 429 (too many
//! concurrent searches; `Retry-After` says when to retry), 503 (store
//! unavailable, or a search past its deadline) or 500. With an API
//! key configured (`crate::auth`: one key, or separate read and write
//! keys), `/v1/*` and `/metrics` need `Authorization: Bearer <key>`
//! (compared in constant time over digests; keys are never logged).
//! Health endpoints stay open; `/readyz` answers from the state the
//! instance already keeps: the last successful read of the config (by the
//! config watcher or a readiness check) counts for 5 seconds, so probes
//! cost at most one store GET per 5 seconds per instance.
//!
//! Connections are accepted by `listen`: a limit on how many are served at
//! once (503 beyond), and timeouts for a request head and an idle
//! kept-alive connection; the body timeout is the handlers' (below).

mod listen;
mod metrics;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use crate::api::ApiError;
pub use crate::auth::ApiKeys;
use crate::auth::Grant;
use crate::db::Db;
use crate::routes::{self, Access, Input, Method, Op, Route, ROUTES};

pub use listen::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
use metrics::HttpMetrics;

/// Largest request body accepted by default: about 1,000 records of
/// 1,536-d vectors as JSON. Larger batches: split them, or raise it
/// (`shoal serve --max-body-bytes`).
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Searches (and warm-ups) one instance runs at once by default, per core.
pub const SEARCHES_PER_CORE: usize = 4;

/// How long a search may take by default before it is abandoned (503).
pub const DEFAULT_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

struct AppState {
    /// The index at the served URL; `None` when `serve --s3vectors` runs
    /// without one (the S3 Vectors indexes live under prefixes).
    db: Option<Db>,
    #[cfg(feature = "s3vectors")]
    s3v: Option<Arc<crate::s3vectors::Service>>,
    keys: ApiKeys,
    body_limit: usize,
    body_timeout: std::time::Duration,
    searches: Arc<tokio::sync::Semaphore>,
    max_searches: usize,
    query_timeout: std::time::Duration,
    metrics: Mutex<HttpMetrics>,
}

/// Settings of the HTTP server.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub keys: ApiKeys,
    pub body_limit: usize,
    /// Searches and warm-ups running at once; one more is answered 429.
    pub max_searches: usize,
    /// A search still running after this is abandoned and answered 503.
    pub query_timeout: std::time::Duration,
    /// A client must send a whole request head within this of connecting,
    /// or of the head's first byte on a kept-alive connection; else the
    /// connection is closed.
    pub header_timeout: std::time::Duration,
    /// A request body must arrive whole within this of the handler
    /// starting to read it (right after the head); else 408, and the
    /// connection is closed.
    pub body_timeout: std::time::Duration,
    /// A kept-alive connection with no request in progress is closed after
    /// this without a byte either way.
    pub idle_timeout: std::time::Duration,
    /// Connections served at once; one more is answered 503 with
    /// `Retry-After` and closed.
    pub max_connections: usize,
    /// The Amazon S3 Vectors API (`POST /<Operation>`), if served.
    #[cfg(feature = "s3vectors")]
    pub s3vectors: Option<Arc<crate::s3vectors::Service>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        HttpOptions {
            keys: ApiKeys::from_env(),
            body_limit: DEFAULT_BODY_LIMIT,
            max_searches: SEARCHES_PER_CORE * cores,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            #[cfg(feature = "s3vectors")]
            s3vectors: None,
        }
    }
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.body())).into_response()
}

fn json_ok<T: Serialize>(v: &T) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

impl AppState {
    fn authorize(&self, need: Grant, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        self.keys.check(need, given)
    }

    async fn body(&self, body: Body) -> Result<axum::body::Bytes, ApiError> {
        self.read_body(body).await.map_err(|e| match e {
            Unread::TooLarge => ApiError::new(413, "payload_too_large", e.say(self)),
            Unread::Late => ApiError::new(408, "request_timeout", e.say(self)),
        })
    }

    /// The whole body, at most `body_limit` bytes, within `body_timeout`.
    /// Answered at the timeout, a body that stopped arriving is dropped
    /// unread, and hyper closes its connection after the answer.
    async fn read_body(&self, body: Body) -> Result<axum::body::Bytes, Unread> {
        let read = axum::body::to_bytes(body, self.body_limit);
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => Err(Unread::TooLarge),
            Err(_) => Err(Unread::Late),
        }
    }

    /// A search slot, or why there is none (answered 429).
    fn search_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
        self.searches.clone().try_acquire_owned().map_err(|_| {
            format!(
                "this instance is already running {} searches; retry shortly",
                self.max_searches
            )
        })
    }

    fn record(&self, endpoint: &'static str, status: u16, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        self.metrics
            .lock()
            .unwrap()
            .observe_request(endpoint, status, secs);
    }
}

/// Why a request body was not read.
enum Unread {
    /// It is larger than the body limit (or broke off).
    TooLarge,
    /// It did not arrive within the body timeout.
    Late,
}

impl Unread {
    fn say(&self, st: &AppState) -> String {
        match self {
            Unread::TooLarge => format!("request body is larger than {} bytes", st.body_limit),
            Unread::Late => format!(
                "the request body did not arrive within {}",
                humantime::format_duration(st.body_timeout)
            ),
        }
    }
}

/// Why a search run by [`run_bounded`] gave no answer.
enum Unfinished {
    /// Its task panicked or was cancelled.
    Failed(tokio::task::JoinError),
    /// It outran the deadline.
    Deadline,
}

/// Runs a search as its own task and waits for it at most `limit`. Answered
/// at the deadline, the task still runs to its end holding what it owns
/// (its search slot), so abandoned searches never add up beyond the
/// concurrency limit.
async fn run_bounded<T: Send + 'static>(
    limit: std::time::Duration,
    search: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Unfinished> {
    match tokio::time::timeout(limit, tokio::spawn(search)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(Unfinished::Failed(e)),
        Err(_) => Err(Unfinished::Deadline),
    }
}

/// Runs a handler body, timing it and turning errors into JSON responses.
async fn respond<F>(
    st: &AppState,
    endpoint: &'static str,
    need: Option<Grant>,
    headers: &HeaderMap,
    f: F,
) -> Response
where
    F: std::future::Future<Output = Result<Response, ApiError>>,
{
    let started = Instant::now();
    let result = match need.map(|g| st.authorize(g, headers)).transpose() {
        Err(e) => Err(e),
        Ok(_) => f.await,
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(endpoint, error = %e, "request failed");
            }
            let mut r = error_response(&e);
            if e.status == 429 {
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
            }
            r
        }
    };
    st.record(endpoint, resp.status().as_u16(), started);
    resp
}

type S = State<Arc<AppState>>;

/// The handler of one row of the route table: authorize, read the body,
/// call the operation, answer JSON.
async fn dispatch(
    st: Arc<AppState>,
    row: &'static Route,
    headers: HeaderMap,
    id: Option<String>,
    body: Body,
) -> Response {
    let need = match row.access {
        Access::Open => None,
        Access::Read => Some(Grant::Read),
        Access::Write => Some(Grant::Write),
    };
    respond(&st, row.name, need, &headers, async {
        // Searches and warm-ups take a slot (429 when none is free) and
        // are abandoned at the deadline, so no request holds the cores.
        let _slot = if matches!(row.op, Op::Search | Op::Warm) {
            Some(
                st.search_slot()
                    .map_err(|m| ApiError::new(429, "too_many_requests", m))?,
            )
        } else {
            None
        };
        let bytes = match row.method {
            Method::Post => st.body(body).await?,
            Method::Get => Default::default(),
        };
        let Some(db) = &st.db else {
            return match row.op {
                Op::Health | Op::Ready => Ok(json_ok(&serde_json::json!({"status": "ok"}))),
                _ => Err(ApiError::not_found(
                    "this server has no index at its URL and serves the S3 Vectors API only \
                     (POST /CreateIndex, ...); start it with --dimensions to serve one here",
                )),
            };
        };
        let value = if row.op == Op::Search {
            let (db, slot) = (db.clone(), _slot);
            let search = async move {
                let _slot = slot;
                routes::call(&db, Op::Search, id, Input::Bytes(&bytes)).await
            };
            match run_bounded(st.query_timeout, search).await {
                Ok(answer) => answer?,
                Err(Unfinished::Failed(e)) => {
                    return Err(ApiError::new(
                        500,
                        "internal",
                        format!("the search failed: {e}"),
                    ))
                }
                Err(Unfinished::Deadline) => {
                    return Err(ApiError::new(
                        503,
                        "deadline_exceeded",
                        format!(
                            "the search took longer than {} and was abandoned; it keeps its \
                             search slot until its work stops",
                            humantime::format_duration(st.query_timeout)
                        ),
                    ))
                }
            }
        } else {
            routes::call(db, row.op, id, Input::Bytes(&bytes)).await?
        };
        if row.op == Op::Search {
            let r = &value["stats"]["requests"];
            let n = ["get", "put", "list", "head", "delete"]
                .iter()
                .filter_map(|k| r[*k].as_u64())
                .sum();
            st.metrics.lock().unwrap().observe_query_requests(n);
        }
        Ok(json_ok(&value))
    })
    .await
}

async fn metrics(State(st): S, headers: HeaderMap) -> Response {
    respond(&st, "metrics", Some(Grant::Read), &headers, async {
        // Cache sizes settle lazily: settle them so the bytes are now's.
        if let Some(db) = &st.db {
            db.settle_caches().await;
        }
        let text = metrics::render(&st.metrics, st.db.as_ref());
        Ok((
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response())
    })
    .await
}

async fn fallback(State(st): S, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    respond(&st, "other", None, &headers, async move {
        Err::<Response, _>(ApiError::not_found(format!(
            "no such endpoint: {}",
            uri.path()
        )))
    })
    .await
}

/// The S3 Vectors API: `POST /<Operation>`, answered in AWS's shapes.
#[cfg(feature = "s3vectors")]
async fn s3vectors(
    State(st): S,
    Path(operation): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    use crate::s3vectors::{Request, S3vError};
    let started = Instant::now();
    let Some(svc) = st.s3v.clone() else {
        return fallback(State(st), headers, uri).await;
    };
    let answer = async {
        // The signature's headers are checked before the body is read: an
        // unsigned or wrongly scoped request never makes the server hold
        // its body (up to the body limit) in memory.
        let head: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        svc.precheck(&Request {
            operation: &operation,
            method: "POST",
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: head.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            body: &[],
        })?;
        let bytes = st.read_body(body).await.map_err(|e| match e {
            Unread::TooLarge => S3vError::new(413, "ValidationException", e.say(&st)),
            Unread::Late => S3vError::new(408, "RequestTimeoutException", e.say(&st)),
        })?;
        let query_op = operation == "QueryVectors";
        let _slot = if query_op {
            Some(
                st.search_slot()
                    .map_err(|m| S3vError::new(429, "TooManyRequestsException", m))?,
            )
        } else {
            None
        };
        // Owned, so a query can run as its own task (below).
        let header_list = head;
        let (path, query) = (
            uri.path().to_string(),
            uri.query().unwrap_or("").to_string(),
        );
        let op = operation.clone();
        let run = async move {
            let _slot = _slot;
            svc.handle(Request {
                operation: &op,
                method: "POST",
                path: &path,
                query: &query,
                headers: header_list
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect(),
                body: &bytes,
            })
            .await
        };
        if query_op {
            match run_bounded(st.query_timeout, run).await {
                Ok(answer) => answer,
                Err(Unfinished::Failed(e)) => Err(S3vError::new(
                    500,
                    "InternalServerException",
                    format!("the query failed: {e}"),
                )),
                Err(Unfinished::Deadline) => Err(S3vError::new(
                    408,
                    "RequestTimeoutException",
                    format!(
                        "the query took longer than {} and was abandoned",
                        humantime::format_duration(st.query_timeout)
                    ),
                )),
            }
        } else {
            run.await
        }
    }
    .await;
    let resp = match answer {
        Ok(v) => json_ok(&v),
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(operation, error = %e.message, "S3 Vectors request failed");
            }
            s3vectors_error(&e)
        }
    };
    st.record("s3vectors", resp.status().as_u16(), started);
    resp
}

/// An S3 Vectors error answer: AWS's status, body and `x-amzn-ErrorType`
/// (and `Retry-After` on a 429).
#[cfg(feature = "s3vectors")]
fn s3vectors_error(e: &crate::s3vectors::S3vError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, axum::Json(e.body())).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(e.code) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    if e.status == 429 {
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    r
}

/// The router: one axum route per row of the route table over `db` (the
/// index at the served URL, if any), `/metrics`, and with
/// `opts.s3vectors` the S3 Vectors API.
pub fn router(db: Option<Db>, opts: HttpOptions) -> Router {
    let max_searches = opts.max_searches.max(1);
    let state = Arc::new(AppState {
        db,
        #[cfg(feature = "s3vectors")]
        s3v: opts.s3vectors,
        keys: opts.keys,
        body_limit: opts.body_limit,
        body_timeout: opts.body_timeout,
        searches: Arc::new(tokio::sync::Semaphore::new(max_searches)),
        max_searches,
        query_timeout: opts.query_timeout,
        metrics: Mutex::default(),
    });
    let mut router = Router::new();
    for row in ROUTES {
        let handler = move |State(st): S,
                            headers: HeaderMap,
                            params: Option<Path<String>>,
                            body: Body| async move {
            dispatch(st, row, headers, params.map(|Path(id)| id), body).await
        };
        router = router.route(
            row.path,
            match row.method {
                Method::Get => get(handler),
                Method::Post => post(handler),
            },
        );
    }
    #[cfg(feature = "s3vectors")]
    {
        router = router.route("/{operation}", post(s3vectors));
    }
    router
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting, finishes the
/// requests in flight and returns. HTTP/1.1, with the connection limit and
/// timeouts of `opts` (see `listen`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: Option<Db>,
    opts: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = listen::Limits {
        header_timeout: opts.header_timeout,
        idle_timeout: opts.idle_timeout,
        max_connections: opts.max_connections,
    };
    listen::serve(listener, router(db, opts), limits, shutdown).await
}
