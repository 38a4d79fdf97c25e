//! The Lambda handlers with real payloads (direct invocations, Function
//! URL / API Gateway v2 events, scheduled events) on every backend.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal::api::{GcOptions, JoinOptions, RequestedSettings, Role};
use shoal::coord::clock::SystemClock;
use shoal::coord::config::{update_config, IndexSettings};
use shoal::coord::role::RoleEnv;
use shoal::lambda::{
    error_type, handle_compactor, handle_reader, handle_writer, open_function_db, CURSOR_KEY,
};
use shoal::store::{Counted, ObjectStore};
use shoal::{Db, OpenOptions};

backend_tests!(writer_reader_compactor_round_trip);

async fn service(store: &Arc<Counted>, role: Role) -> Db {
    Db::open_store(
        store.clone(),
        OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    dimensions: Some(3),
                    partition_count: Some(4),
                    ..Default::default()
                },
                role: Some(role),
                background_heartbeat: false,
                env: RoleEnv::default(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn http_event(method: &str, path: &str, body: &str, base64: bool) -> Value {
    use base64::Engine;
    let body = if base64 {
        base64::engine::general_purpose::STANDARD.encode(body)
    } else {
        body.to_string()
    };
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path}, "requestId": "r1"},
        "body": body,
        "isBase64Encoded": base64
    })
}

fn http_body(resp: &Value) -> (u64, Value) {
    let status = resp["statusCode"].as_u64().unwrap();
    (
        status,
        serde_json::from_str(resp["body"].as_str().unwrap()).unwrap(),
    )
}

async fn writer_reader_compactor_round_trip(store: Arc<Counted>) {
    let writer = service(&store, Role::Writer).await;
    // Let the compactor's policy fire after a few writes.
    update_config(store.as_ref(), &SystemClock, |c| {
        c.settings.index = Some(IndexSettings {
            compact_min_segments: 2,
            ..Default::default()
        });
        Ok(())
    })
    .await
    .unwrap();
    let reader = service(&store, Role::Reader).await;

    // Writer: direct invocation, bare form, HTTP event, base64 HTTP event.
    let r = handle_writer(
        &writer,
        json!({"upsert": {"records": [
            {"id": "a", "vector": [1, 0, 0], "metadata": {"sku": "x"}},
            {"id": "b", "vector": [0, 1, 0]}
        ]}}),
    )
    .await
    .unwrap();
    assert_eq!(r["records"], 2);
    let r = handle_writer(
        &writer,
        json!({"records": [{"id": "c", "vector": [0, 0, 1]}]}),
    )
    .await
    .unwrap();
    assert_eq!(r["records"], 1);
    let ev = http_event(
        "POST",
        "/v1/upsert",
        r#"{"records": [{"id": "d", "vector": [1, 1, 0]}]}"#,
        false,
    );
    let (st, body) = http_body(&handle_writer(&writer, ev).await.unwrap());
    assert_eq!((st, body["records"].clone()), (200, json!(1)));
    let ev = http_event(
        "POST",
        "/v1/upsert",
        r#"{"records": [{"id": "e", "vector": [1, 0, 1]}]}"#,
        true,
    );
    assert_eq!(http_body(&handle_writer(&writer, ev).await.unwrap()).0, 200);
    let r = handle_writer(&writer, json!({"delete": {"ids": ["c"]}}))
        .await
        .unwrap();
    assert_eq!(r["records"], 1);

    // Reader: direct search (wrapped and bare), get, HTTP search and get.
    let r = handle_reader(
        &reader,
        json!({"search": {"vector": [1, 0.1, 0], "k": 2, "consistency": "strong"}}),
    )
    .await
    .unwrap();
    assert_eq!(r["results"][0]["id"], "a");
    assert_eq!(r["results"][0]["metadata"]["domain"], "product");
    let r = handle_reader(
        &reader,
        json!({"vector": [0, 0, 1], "k": 5, "consistency": "strong"}),
    )
    .await
    .unwrap();
    let ids: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&"c"), "deleted: {ids:?}");
    assert_eq!(ids.len(), 4);
    let r = handle_reader(&reader, json!({"get": {"id": "b"}}))
        .await
        .unwrap();
    assert_eq!(r["id"], "b");
    let (st, body) = http_body(
        &handle_reader(&reader, http_event("GET", "/v1/records/d", "", false))
            .await
            .unwrap(),
    );
    assert_eq!((st, body["id"].clone()), (200, json!("d")));
    let ev = http_event(
        "POST",
        "/v1/search",
        r#"{"vector": [1, 1, 0], "k": 1}"#,
        false,
    );
    let (st, body) = http_body(&handle_reader(&reader, ev).await.unwrap());
    assert_eq!((st, body["results"][0]["id"].clone()), (200, json!("d")));

    // Malformed events: clear 400-style errors, never a panic.
    let e = handle_reader(&reader, json!({"hello": "world"}))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code), (400, "invalid_request"));
    assert!(e.message.contains("malformed reader event"), "{e}");
    assert_eq!(error_type(&e), "NonRetryable.invalid_request");
    let e = handle_writer(&writer, json!([1, 2, 3])).await.unwrap_err();
    assert!(e.message.contains("malformed writer event"), "{e}");
    let e = handle_writer(
        &writer,
        json!({"upsert": {"records": [{"id": "z", "vector": [1, 2]}]}}),
    )
    .await
    .unwrap_err();
    assert!(e.message.contains("vector has 2 dimensions"), "{e}");
    let (st, body) = http_body(
        &handle_reader(&reader, http_event("POST", "/v1/search", "{nope", false))
            .await
            .unwrap(),
    );
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (st, _) = http_body(
        &handle_reader(&reader, http_event("DELETE", "/v1/everything", "", false))
            .await
            .unwrap(),
    );
    assert_eq!(st, 404);
    let ev = json!({"requestContext": {"http": {"method": "POST"}}, "rawPath": "/v1/upsert", "body": "%%%", "isBase64Encoded": true});
    let e = handle_writer(&writer, ev).await.unwrap_err();
    assert!(e.message.contains("not valid base64"), "{e}");

    // Compactor: a scheduled event with time to spare visits every
    // partition, compacts by policy, runs GC and saves its cursor ...
    let compactor = service(&store, Role::Writer).await;
    let far = Instant::now() + Duration::from_secs(600);
    let r = handle_compactor(
        &compactor,
        far,
        Duration::from_secs(1),
        &GcOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(r["partitionsVisited"], 4);
    assert_eq!(r["gcRuns"], 1);
    assert!(!r["compacted"].as_array().unwrap().is_empty(), "{r}");
    let cursor: Value =
        serde_json::from_slice(&store.get(CURSOR_KEY).await.unwrap().bytes).unwrap();
    assert_eq!(cursor, json!({"nextPartition": 0, "passes": 1}));
    // ... and with no time left it stops at once, keeping the cursor.
    let now = Instant::now();
    let r = handle_compactor(
        &compactor,
        now,
        Duration::from_secs(5),
        &GcOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(r["partitionsVisited"], 0);
    // Data is intact after compaction.
    let r = handle_reader(
        &reader,
        json!({"search": {"vector": [0, 1, 0], "k": 10, "consistency": "strong"}}),
    )
    .await
    .unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn errors_say_whether_a_retry_can_help() {
    let e = shoal::api::ApiError::new(503, "store_unavailable", "slow down");
    assert_eq!(error_type(&e), "Retryable.store_unavailable");
    let e = shoal::api::ApiError::bad_request("bad");
    assert_eq!(error_type(&e), "NonRetryable.invalid_request");
}

/// Defect: a reader function invoked before any writer tried to create
/// the config (its IAM role cannot) and failed with an access error. Now
/// it writes nothing and fails, retryably, naming what creates the index;
/// after the writer's cold start created it, the reader's next cold start
/// serves.
#[tokio::test]
async fn a_reader_function_before_any_writer_says_what_creates_the_index() {
    // A fresh store name, unseeded (see `common::s3_store_with_prefix`).
    #[allow(clippy::disallowed_methods)]
    let url = format!("memory://lambda-fresh-{:016x}", rand::random::<u64>());
    let settings = RequestedSettings {
        dimensions: Some(3),
        partition_count: Some(4),
        ..Default::default()
    };
    let Err(e) = open_function_db(&url, Role::Reader, settings.clone()).await else {
        panic!("a reader created the index");
    };
    assert_eq!(error_type(&e), "Retryable.no_index", "{e:?}");
    assert!(
        e.message.contains("writer or compactor function") && e.message.contains("init"),
        "{}",
        e.message
    );
    let store = shoal::store::open(&url).await.unwrap();
    assert_eq!(
        store.list("").await.unwrap().len(),
        0,
        "the reader wrote nothing"
    );
    let writer = open_function_db(&url, Role::Writer, settings)
        .await
        .unwrap();
    let reader = open_function_db(&url, Role::Reader, RequestedSettings::default())
        .await
        .unwrap();
    assert_eq!(reader.settings().dimensions, 3);
    reader.close().await.unwrap();
    writer.close().await.unwrap();
}
