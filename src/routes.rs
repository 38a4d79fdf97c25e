//! The one route table: every operation the HTTP API and the Lambda
//! functions serve, with its method, path, direct-invocation name and
//! handler. `http` builds its router from [`ROUTES`]; `lambda.rs`
//! matches Function URL events and direct invocations against it. A new
//! operation is one row here plus one handler function.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{ApiError, Consistency, DeleteRequest, GetRequest, SearchRequest, UpsertRequest};
use crate::db::Db;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// The operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Upsert,
    Delete,
    Search,
    Get,
    Status,
    Health,
    Ready,
    Warm,
}

/// Who may call a route when an API key is configured (`crate::auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Health probes: always open.
    Open,
    /// A read key (or the write key, or the single key).
    Read,
    /// The write key (or the single key).
    Write,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub op: Op,
    pub method: Method,
    /// The path, with `{id}` for the record id.
    pub path: &'static str,
    /// Endpoint name for metrics.
    pub name: &'static str,
    /// The key of a direct Lambda invocation (`{"search": {...}}`); empty
    /// for routes no Lambda function serves directly.
    pub invocation: &'static str,
    /// Shorter paths Lambda Function URLs also accept.
    pub lambda_aliases: &'static [&'static str],
    pub access: Access,
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: Op::Upsert,
        method: Method::Post,
        path: "/v1/upsert",
        name: "upsert",
        invocation: "upsert",
        lambda_aliases: &["/upsert"],
        access: Access::Write,
    },
    Route {
        op: Op::Delete,
        method: Method::Post,
        path: "/v1/delete",
        name: "delete",
        invocation: "delete",
        lambda_aliases: &["/delete"],
        access: Access::Write,
    },
    Route {
        op: Op::Search,
        method: Method::Post,
        path: "/v1/search",
        name: "search",
        invocation: "search",
        lambda_aliases: &["/search", "/"],
        access: Access::Read,
    },
    Route {
        op: Op::Get,
        method: Method::Get,
        path: "/v1/records/{id}",
        name: "record",
        invocation: "get",
        lambda_aliases: &[],
        access: Access::Read,
    },
    Route {
        op: Op::Status,
        method: Method::Get,
        path: "/v1/status",
        name: "status",
        invocation: "",
        lambda_aliases: &[],
        access: Access::Read,
    },
    Route {
        op: Op::Warm,
        method: Method::Post,
        path: "/v1/warm",
        name: "warm",
        invocation: "warm",
        lambda_aliases: &[],
        access: Access::Read,
    },
    Route {
        op: Op::Health,
        method: Method::Get,
        path: "/healthz",
        name: "healthz",
        invocation: "",
        lambda_aliases: &[],
        access: Access::Open,
    },
    Route {
        op: Op::Ready,
        method: Method::Get,
        path: "/readyz",
        name: "readyz",
        invocation: "",
        lambda_aliases: &[],
        access: Access::Open,
    },
];

/// The row of `op`.
pub(crate) fn route(op: Op) -> &'static Route {
    ROUTES
        .iter()
        .find(|r| r.op == op)
        .expect("every op has a row")
}

/// What a call carries besides the operation.
pub(crate) enum Input<'a> {
    /// A request body as received (HTTP, Function URL events).
    Bytes(&'a [u8]),
    /// The payload of a direct Lambda invocation of `function`; a body
    /// that does not parse is answered with the payload shapes it takes.
    Event {
        body: Value,
        function: &'static str,
        usage: &'static str,
    },
}

impl Input<'_> {
    fn parse<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        match self {
            Input::Bytes(b) => crate::api::parse_body(b),
            Input::Event {
                body,
                function,
                usage,
            } => serde_json::from_value(body).map_err(|e| {
                ApiError::bad_request(format!("malformed {function} event ({e}); send {usage}"))
            }),
        }
    }
}

/// Matches `path` against a route's path, returning what stands for
/// `{id}` (if the pattern has one; it may hold `/`, as ids may).
pub(crate) fn match_path(pattern: &str, path: &str) -> Option<Option<String>> {
    match pattern.split_once("{id}") {
        None => (pattern == path).then_some(None),
        Some((head, tail)) => {
            let id = path.strip_prefix(head)?.strip_suffix(tail)?;
            (!id.is_empty()).then(|| Some(id.to_string()))
        }
    }
}

/// Runs `op` on `db`. `id` is the path's record id, if any.
pub(crate) async fn call(
    db: &Db,
    op: Op,
    id: Option<String>,
    input: Input<'_>,
) -> Result<Value, ApiError> {
    if matches!(op, Op::Upsert | Op::Delete) && db.role() == crate::coord::role::Role::Reader {
        // A reader never compacts what it would write: refuse rather
        // than leave uncompacted segments behind.
        return Err(ApiError::new(
            403,
            "read_only_instance",
            "this instance runs as a reader and serves reads only; send upserts and \
             deletes to a writer (or both) instance, or start this one with --role writer \
             (BRAINY_ROLE=writer)",
        ));
    }
    match op {
        Op::Upsert => upsert(db, input).await,
        Op::Delete => delete(db, input).await,
        Op::Search => search(db, input).await,
        Op::Get => get(db, id, input).await,
        Op::Status => to_value(db.status(false).await?),
        Op::Health => Ok(json!({"status": "ok"})),
        Op::Ready => ready(db).await,
        Op::Warm => to_value(db.warm_up().await?),
    }
}

fn to_value<T: Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

async fn upsert(db: &Db, input: Input<'_>) -> Result<Value, ApiError> {
    let req: UpsertRequest = input.parse()?;
    to_value(db.upsert(&req.records).await?)
}

async fn delete(db: &Db, input: Input<'_>) -> Result<Value, ApiError> {
    let req: DeleteRequest = input.parse()?;
    to_value(db.delete(&req.ids).await?)
}

async fn search(db: &Db, input: Input<'_>) -> Result<Value, ApiError> {
    let req: SearchRequest = input.parse()?;
    to_value(db.search(&req).await?)
}

/// Reads are strong: a client that just wrote an id sees it.
async fn get(db: &Db, id: Option<String>, input: Input<'_>) -> Result<Value, ApiError> {
    let id = match id {
        Some(id) => id,
        None => input.parse::<GetRequest>()?.id,
    };
    match db.get(&id, Consistency::Strong).await? {
        Some(rec) => to_value(rec),
        None => Err(ApiError::not_found(format!("no record with id {id:?}"))),
    }
}

/// Ready when the store answers (a GET of the config).
async fn ready(db: &Db) -> Result<Value, ApiError> {
    db.ready()
        .await
        .map_err(|e| ApiError::new(503, "store_unavailable", e.to_string()))?;
    Ok(json!({"status": "ready"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_and_without_ids() {
        assert_eq!(match_path("/v1/search", "/v1/search"), Some(None));
        assert_eq!(match_path("/v1/search", "/v1/searchx"), None);
        assert_eq!(
            match_path("/v1/records/{id}", "/v1/records/a-1"),
            Some(Some("a-1".into()))
        );
        assert_eq!(match_path("/v1/records/{id}", "/v1/records/"), None);
        assert_eq!(
            match_path("/v1/records/{id}", "/v1/records/a/b"),
            Some(Some("a/b".into()))
        );
    }

    #[test]
    fn every_op_has_exactly_one_row_and_names_are_unique() {
        for op in [
            Op::Upsert,
            Op::Delete,
            Op::Search,
            Op::Get,
            Op::Status,
            Op::Health,
            Op::Ready,
            Op::Warm,
        ] {
            assert_eq!(ROUTES.iter().filter(|r| r.op == op).count(), 1, "{op:?}");
        }
        let mut names: Vec<&str> = ROUTES.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ROUTES.len());
    }
}
