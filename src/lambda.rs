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
use serde_json::{json, Value};

use crate::api::{ApiError, GcOptions, JoinOptions, Metric, RequestedSettings, Role};
use crate::db::{Db, OpenOptions};
use crate::error::Error;
use crate::routes::{self, Input, Op, ROUTES};

/// Index settings from `SHOAL_DIMENSIONS`, `SHOAL_METRIC` and
/// `SHOAL_PARTITIONS` (all optional: they create the config when the
/// bucket has none, and must agree with it when it has one).
pub(crate) fn settings_from_env() -> Result<RequestedSettings, ApiError> {
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
    Ok(RequestedSettings {
        dimensions: num("SHOAL_DIMENSIONS")?,
        partition_count: num("SHOAL_PARTITIONS")?,
        distance_metric: var("SHOAL_METRIC")
            .map(|m| m.parse::<Metric>())
            .transpose()
            .map_err(|e| ApiError::new(500, "misconfigured", format!("SHOAL_METRIC: {e}")))?,
        ..Default::default()
    })
}

/// Opens the handle once per cold start from the environment
/// (`SHOAL_BUCKET`, `BRAINY_ROLE`, [`settings_from_env`], the AWS
/// variables).
pub async fn db_from_env(default_role: Role) -> Result<Db, ApiError> {
    let url = std::env::var("SHOAL_BUCKET").map_err(|_| {
        ApiError::new(
            500,
            "misconfigured",
            "SHOAL_BUCKET is not set (e.g. s3://bucket/prefix)",
        )
    })?;
    let role = match std::env::var("BRAINY_ROLE").ok().filter(|r| !r.is_empty()) {
        Some(r) => r
            .parse::<Role>()
            .map_err(|e| ApiError::from(Error::from(e)))?,
        None => default_role,
    };
    let db = open_function_db(&url, role, settings_from_env()?).await?;
    if let Some(limit) = warm_on_init()? {
        // Part of the cold start, so the first invocation is warm; a
        // failure is logged and queries load on demand as usual.
        match db.warm_up_within(limit).await {
            Ok(r) => tracing::info!(
                live = r.live_records,
                ms = r.ms,
                cut_short = r.cut_short,
                "warmed up at init"
            ),
            Err(e) => tracing::warn!(error = %e, "warm-up at init failed; queries load on demand"),
        }
    }
    Ok(db)
}

/// Opens a function's handle: heartbeats per invocation, not from a
/// task. Writers and compactors create the config from `settings` when
/// the bucket has none (create-only, so racing cold starts agree); a
/// reader never does (its IAM role cannot write it) and fails naming what
/// creates it, and Lambda retries the cold start on the next invocation.
pub async fn open_function_db(
    url: &str,
    role: Role,
    settings: RequestedSettings,
) -> Result<Db, ApiError> {
    let opts = OpenOptions {
        cluster: JoinOptions {
            settings,
            role: Some(role),
            background_heartbeat: false,
            create: role != Role::Reader,
            ..Default::default()
        },
        ..Default::default()
    };
    match Db::open(url, opts).await {
        Ok(db) => Ok(db),
        Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Err(ApiError::new(
            503,
            "no_index",
            format!(
                "{e}. A reader never creates the index config: invoke the writer or \
                 compactor function once (they create it from SHOAL_DIMENSIONS, \
                 SHOAL_METRIC and SHOAL_PARTITIONS), or run `shoal --bucket {url} init \
                 --dimensions N`; this function then starts on its next invocation"
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// How long a warm-up at init may fetch by default: Lambda ends an init
/// phase that runs past 10 seconds (and runs init again inside the first
/// invocation), so the warm-up stops with room to spare for the rest.
const WARM_ON_INIT_LIMIT: Duration = Duration::from_secs(7);

/// `SHOAL_WARM_ON_INIT`: `true`/`1` warms the reader during the cold start
/// for at most [`WARM_ON_INIT_LIMIT`]; a number of seconds (`30`, `2.5`)
/// sets that limit (for init phases that may run longer, such as
/// provisioned concurrency's); `false`/`0`/unset: no warm-up.
fn warm_on_init() -> Result<Option<Duration>, ApiError> {
    let raw = std::env::var("SHOAL_WARM_ON_INIT").ok();
    parse_warm_on_init(raw.as_deref())
}

fn parse_warm_on_init(raw: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let bad = |other: &str| {
        ApiError::new(
            500,
            "misconfigured",
            format!(
                "SHOAL_WARM_ON_INIT must be true, false or a number of seconds to warm for, \
                 not {other:?}"
            ),
        )
    };
    match raw.map(str::trim) {
        None | Some("") | Some("0") | Some("false") => Ok(None),
        Some("1") | Some("true") => Ok(Some(WARM_ON_INIT_LIMIT)),
        Some(other) => match other.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 900.0 => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(bad(other)),
        },
    }
}

/// Which operations a function serves, and how its bare direct payload
/// (no `{"<op>": ...}` wrapper) is read.
struct Function {
    name: &'static str,
    ops: &'static [Op],
    /// Picks the operation of a bare payload.
    bare: fn(&Value) -> Op,
    usage: &'static str,
}

const READER: Function = Function {
    name: "reader",
    ops: &[Op::Search, Op::Get, Op::Warm],
    bare: |_| Op::Search,
    usage: r#"{"search": {"vector": [...], "k": 10}} or {"get": {"id": "..."}}"#,
};

const WRITER: Function = Function {
    name: "writer",
    ops: &[Op::Upsert, Op::Delete],
    bare: |v| {
        if v.get("ids").is_some() && v.get("records").is_none() {
            Op::Delete
        } else {
            Op::Upsert
        }
    },
    usage: r#"{"upsert": {"records": [...]}} or {"delete": {"ids": [...]}}"#,
};

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

/// Routes a Function URL event through the shared route table.
async fn handle_http(db: &Db, f: &Function, h: HttpEvent) -> Value {
    let found = ROUTES
        .iter()
        .filter(|r| f.ops.contains(&r.op) && r.method.as_str() == h.method)
        .find_map(|r| {
            std::iter::once(r.path)
                .chain(r.lambda_aliases.iter().copied())
                .find_map(|p| routes::match_path(p, &h.path))
                .map(|id| (r.op, id))
        });
    let result = match found {
        Some((op, id)) => routes::call(db, op, id, Input::Bytes(&h.body)).await,
        None => Err(ApiError::not_found(format!(
            "no such endpoint: {} {}",
            h.method, h.path
        ))),
    };
    http_response(result)
}

/// Routes a direct invocation: `{"<op>": body}` for an op this function
/// serves, or a bare body.
async fn handle_direct(db: &Db, f: &Function, event: Value) -> Result<Value, ApiError> {
    let wrapped = event.as_object().filter(|o| o.len() == 1).and_then(|o| {
        let (key, body) = o.iter().next()?;
        let op = f
            .ops
            .iter()
            .copied()
            .find(|op| routes::route(*op).invocation == key)?;
        Some((op, body.clone()))
    });
    let (op, body) = match wrapped {
        Some(x) => x,
        None => ((f.bare)(&event), event),
    };
    let input = Input::Event {
        body,
        function: f.name,
        usage: f.usage,
    };
    routes::call(db, op, None, input).await
}

async fn handle(db: &Db, f: &Function, event: Value) -> Result<Value, ApiError> {
    db.heartbeat_if_due().await;
    match as_http_event(&event)? {
        Some(h) => Ok(handle_http(db, f, h).await),
        None => handle_direct(db, f, event).await,
    }
}

/// The reader function: search and get.
pub async fn handle_reader(db: &Db, event: Value) -> Result<Value, ApiError> {
    handle(db, &READER, event).await
}

/// The writer function: upsert and delete, answering only after commit.
pub async fn handle_writer(db: &Db, event: Value) -> Result<Value, ApiError> {
    handle(db, &WRITER, event).await
}

/// Where the compactor resumes: kept in the bucket (for tests; the
/// handler reads it through `Db::compact_round`).
#[cfg(any(test, feature = "test-util"))]
pub const CURSOR_KEY: &str = crate::api::COMPACTOR_CURSOR_KEY;

/// The compactor function (a scheduled event): compacts partitions by
/// policy, starting where the last invocation stopped, until `deadline`
/// minus `margin`; after each full pass it runs GC. Saves the cursor.
pub async fn handle_compactor(
    db: &Db,
    deadline: Instant,
    margin: Duration,
    gc: &GcOptions,
) -> Result<Value, ApiError> {
    db.heartbeat_if_due().await;
    let round = db.compact_round(deadline, margin, gc).await?;
    serde_json::to_value(round).map_err(|e| ApiError::new(500, "internal", e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_on_init_reads_a_switch_or_a_time_limit() {
        let limit = |raw| parse_warm_on_init(raw).unwrap();
        for off in [None, Some(""), Some("0"), Some("false"), Some(" false ")] {
            assert_eq!(limit(off), None, "{off:?}");
        }
        for on in [Some("true"), Some("1")] {
            assert_eq!(limit(on), Some(WARM_ON_INIT_LIMIT), "{on:?}");
        }
        assert_eq!(limit(Some("30")), Some(Duration::from_secs(30)));
        assert_eq!(limit(Some("2.5")), Some(Duration::from_millis(2500)));
        for bad in ["yes", "-3", "nan", "inf", "1e9"] {
            let e = parse_warm_on_init(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("SHOAL_WARM_ON_INIT"), "{bad}: {e}");
        }
    }
}
