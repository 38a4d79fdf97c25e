//! The S3 Vectors mapping, driven through `shoal::s3vectors::Service`
//! (the same calls `shoal serve --s3vectors` makes) on shared in-memory
//! stores: several services play several instances of one deployment.
//! `tests/s3vectors_boto3.py` drives the same API over HTTP with boto3.
#![cfg(feature = "s3vectors")]

use std::time::Duration;

use serde_json::{json, Value};
use shoal::api::Role;
use shoal::coord::catalog::{self, IndexEntry};
use shoal::coord::clock::{Clock, SystemClock};
use shoal::s3vectors::{Request, S3VectorsOptions, S3vError, Service};
use shoal::store::ObjectStore;

/// A fresh store name: it must differ from run to run, so it is not
/// drawn from the entropy seam (which a simulation may seed).
#[allow(clippy::disallowed_methods)]
fn root() -> String {
    format!("memory://s3v-{:016x}", rand::random::<u64>())
}

async fn service(root: &str, role: Option<Role>) -> Service {
    let mut opts = S3VectorsOptions::new(root);
    opts.role = role;
    // Every call revalidates the catalog: instances see each other at once.
    opts.catalog_max_age = Duration::ZERO;
    Service::open(opts).await.expect("open service")
}

async fn call(svc: &Service, op: &str, body: Value) -> Result<Value, S3vError> {
    let bytes = serde_json::to_vec(&body).unwrap();
    let path = format!("/{op}");
    svc.handle(Request {
        operation: op,
        method: "POST",
        path: &path,
        query: "",
        headers: vec![],
        body: &bytes,
    })
    .await
}

fn index(bucket: &str, name: &str) -> Value {
    json!({"vectorBucketName": bucket, "indexName": name, "dataType": "float32",
           "dimension": 2, "distanceMetric": "euclidean"})
}

async fn keys_under(root: &str, prefix: &str) -> Vec<String> {
    let store = shoal::store::open(root).await.unwrap();
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_of_one_index_have_exactly_one_winner() {
    let root = root();
    let a = service(&root, None).await;
    let b = service(&root, None).await;
    call(
        &a,
        "CreateVectorBucket",
        json!({"vectorBucketName": "shared"}),
    )
    .await
    .unwrap();
    for round in 0..4 {
        let name = format!("idx-{round}");
        let (ra, rb) = tokio::join!(
            call(&a, "CreateIndex", index("shared", &name)),
            call(&b, "CreateIndex", index("shared", &name)),
        );
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {ra:?} / {rb:?}");
        let lost = if ra.is_ok() { rb } else { ra }.unwrap_err();
        assert_eq!(
            (lost.status, lost.code),
            (409, "ConflictException"),
            "{lost:?}"
        );
        // Both instances use the one index.
        call(
            &a,
            "PutVectors",
            json!({"vectorBucketName": "shared", "indexName": name,
            "vectors": [{"key": "from-a", "data": {"float32": [1.0, 0.0]}}]}),
        )
        .await
        .unwrap();
        let got = call(
            &b,
            "GetVectors",
            json!({"vectorBucketName": "shared", "indexName": name,
            "keys": ["from-a"]}),
        )
        .await
        .unwrap();
        assert_eq!(got["vectors"][0]["key"], "from-a");
    }
    let listed = call(&b, "ListIndexes", json!({"vectorBucketName": "shared"}))
        .await
        .unwrap();
    assert_eq!(listed["indexes"].as_array().unwrap().len(), 4);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_index_is_gone_everywhere_with_its_objects_and_its_name_is_free() {
    let root = root();
    let a = service(&root, None).await;
    let b = service(&root, None).await;
    call(&a, "CreateVectorBucket", json!({"vectorBucketName": "vb1"}))
        .await
        .unwrap();
    call(&a, "CreateIndex", index("vb1", "docs")).await.unwrap();
    let put = json!({"vectorBucketName": "vb1", "indexName": "docs",
        "vectors": [{"key": "k1", "data": {"float32": [0.5, 0.5]}, "metadata": {"n": 1}}]});
    call(&b, "PutVectors", put.clone()).await.unwrap();
    assert!(!keys_under(&root, "vb1/docs/vectors/").await.is_empty());

    assert!(
        keys_under(&root, "vb1/docs/_brainy/instances/").await.len() >= 2,
        "both instances have registered with the index"
    );
    call(
        &a,
        "DeleteIndex",
        json!({"vectorBucketName": "vb1", "indexName": "docs"}),
    )
    .await
    .unwrap();
    // b held an open handle: any request b serves lets go of it, even one
    // about something else, so its heartbeats stop writing an instance
    // record into the deleted index (they would after 10 s).
    call(&b, "ListVectorBuckets", json!({})).await.unwrap();
    tokio::time::sleep(shoal::coord::DEFAULT_HEARTBEAT_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(
        keys_under(&root, "vb1/docs/").await,
        Vec::<String>::new(),
        "nothing of the deleted index is left, nor written again"
    );
    let e = call(&b, "PutVectors", put.clone()).await.unwrap_err();
    assert_eq!((e.status, e.code), (404, "NotFoundException"), "{e:?}");
    let left = keys_under(&root, "vb1/docs/").await;
    assert!(
        left.iter()
            .all(|k| k.starts_with("vb1/docs/_brainy/instances/")),
        "only b's own instance record may remain until b closes: {left:?}"
    );
    b.close().await;
    assert_eq!(keys_under(&root, "vb1/docs/").await, Vec::<String>::new());

    // The name is free, and the new index is empty and may differ.
    let mut again = index("vb1", "docs");
    again["dimension"] = json!(3);
    call(&a, "CreateIndex", again).await.unwrap();
    let listed = call(
        &a,
        "ListVectors",
        json!({"vectorBucketName": "vb1", "indexName": "docs"}),
    )
    .await
    .unwrap();
    assert_eq!(listed["vectors"], json!([]));
    let e = call(&a, "PutVectors", put).await.unwrap_err();
    assert_eq!(
        e.code, "ValidationException",
        "2 dimensions into a 3-d index: {e:?}"
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_deletion_blocks_the_name_until_it_is_stale_then_is_finished() {
    let root = root();
    let a = service(&root, None).await;
    call(&a, "CreateVectorBucket", json!({"vectorBucketName": "vb2"}))
        .await
        .unwrap();
    call(&a, "CreateIndex", index("vb2", "old")).await.unwrap();
    call(
        &a,
        "PutVectors",
        json!({"vectorBucketName": "vb2", "indexName": "old",
        "vectors": [{"key": "ghost", "data": {"float32": [1.0, 1.0]}}]}),
    )
    .await
    .unwrap();
    a.close().await;
    // A deleter that marked the index and died before deleting anything.
    let store = shoal::store::open(&root).await.unwrap();
    let mark = |age_secs: f64| {
        move |c: &mut catalog::Catalog| -> Result<(), &str> {
            let e: &mut IndexEntry = c
                .buckets
                .get_mut("vb2")
                .and_then(|b| b.indexes.get_mut("old"))
                .ok_or("missing")?;
            let now = SystemClock
                .now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            e.deleting_since = Some(now - age_secs);
            Ok(())
        }
    };
    catalog::update(store.as_ref(), mark(5.0)).await.unwrap();
    let a = service(&root, None).await;
    let e = call(
        &a,
        "GetIndex",
        json!({"vectorBucketName": "vb2", "indexName": "old"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NotFoundException");
    let e = call(&a, "CreateIndex", index("vb2", "old"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code, "ConflictException",
        "a deletion still running: {e:?}"
    );
    assert!(e.message.contains("being deleted"), "{e:?}");
    // Ten minutes later it counts as dead: create finishes the deletion.
    catalog::update(store.as_ref(), mark(3600.0)).await.unwrap();
    call(&a, "CreateIndex", index("vb2", "old")).await.unwrap();
    let got = call(
        &a,
        "GetVectors",
        json!({"vectorBucketName": "vb2", "indexName": "old",
        "keys": ["ghost"]}),
    )
    .await
    .unwrap();
    assert_eq!(
        got["vectors"],
        json!([]),
        "the old index's vectors are gone"
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_instance_refuses_writes_and_writes_nothing() {
    let root = root();
    let writer = service(&root, Some(Role::Writer)).await;
    call(
        &writer,
        "CreateVectorBucket",
        json!({"vectorBucketName": "vb3"}),
    )
    .await
    .unwrap();
    call(&writer, "CreateIndex", index("vb3", "docs"))
        .await
        .unwrap();
    let reader = service(&root, Some(Role::Reader)).await;
    let before = keys_under(&root, "").await;
    for (op, body) in [
        ("CreateVectorBucket", json!({"vectorBucketName": "vb4"})),
        ("CreateIndex", index("vb3", "more")),
        (
            "DeleteIndex",
            json!({"vectorBucketName": "vb3", "indexName": "docs"}),
        ),
        (
            "PutVectors",
            json!({"vectorBucketName": "vb3", "indexName": "docs",
            "vectors": [{"key": "x", "data": {"float32": [1.0, 0.0]}}]}),
        ),
        (
            "DeleteVectors",
            json!({"vectorBucketName": "vb3", "indexName": "docs", "keys": ["x"]}),
        ),
    ] {
        let e = call(&reader, op, body).await.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (403, "AccessDeniedException"),
            "{op}: {e:?}"
        );
        assert!(e.message.contains("reader"), "{e:?}");
    }
    assert_eq!(keys_under(&root, "").await, before, "nothing was written");
    // Reads work on the reader.
    call(
        &reader,
        "QueryVectors",
        json!({"vectorBucketName": "vb3", "indexName": "docs",
        "topK": 1, "queryVector": {"float32": [1.0, 0.0]}}),
    )
    .await
    .unwrap();
    reader.close().await;
    writer.close().await;
}

#[tokio::test]
async fn unknown_and_unimplemented_operations_and_bad_bodies_get_aws_errors() {
    let root = root();
    let svc = service(&root, None).await;
    let e = call(&svc, "FrobnicateVectors", json!({}))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code), (404, "UnknownOperationException"));
    let e = call(&svc, "TagResource", json!({})).await.unwrap_err();
    assert_eq!((e.status, e.code), (501, "NotImplemented"));
    let path = "/CreateVectorBucket";
    let e = svc
        .handle(Request {
            operation: "CreateVectorBucket",
            method: "POST",
            path,
            query: "",
            headers: vec![],
            body: b"{not json",
        })
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code), (400, "ValidationException"));
    assert_eq!(e.body()["__type"], "ValidationException");
    for (op, body, want) in [
        (
            "CreateVectorBucket",
            json!({"vectorBucketName": "x"}),
            "3 to 63",
        ),
        (
            "CreateVectorBucket",
            json!({"vectorBucketName": "vectors"}),
            "reserved",
        ),
        (
            "QueryVectors",
            json!({"vectorBucketName": "abc", "indexName": "def", "topK": 101,
            "queryVector": {"float32": [1.0]}}),
            "topK must be an integer from 1 to 100",
        ),
        (
            "GetIndex",
            json!({"indexArn": "arn:aws:s3vectors:us-east-1:0:bucket/abc"}),
            "not a vector index ARN",
        ),
        (
            "ListVectors",
            json!({"vectorBucketName": "abc", "indexName": "def",
            "segmentCount": 2}),
            "give both or neither",
        ),
    ] {
        let e = call(&svc, op, body).await.unwrap_err();
        assert_eq!(e.code, "ValidationException", "{op}: {e:?}");
        assert!(e.message.contains(want), "{op}: {} lacks {want}", e.message);
    }
    assert_eq!(
        keys_under(&root, "").await,
        Vec::<String>::new(),
        "nothing written"
    );
    svc.close().await;
}

/// Every page size lists every key exactly once, pages that end exactly
/// at a partition's last key included (the token must then point at the
/// next partition's start, not past keys there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_vectors_pages_of_every_size_list_each_key_once() {
    let root = root();
    let svc = service(&root, None).await;
    call(
        &svc,
        "CreateVectorBucket",
        json!({"vectorBucketName": "pages"}),
    )
    .await
    .unwrap();
    call(&svc, "CreateIndex", index("pages", "docs"))
        .await
        .unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i:02}")).collect();
    let vectors: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"key": k, "data": {"float32": [1.0, i as f32]}}))
        .collect();
    call(
        &svc,
        "PutVectors",
        json!({"vectorBucketName": "pages", "indexName": "docs",
        "vectors": vectors}),
    )
    .await
    .unwrap();
    for max in 1..=9 {
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({"vectorBucketName": "pages", "indexName": "docs",
                "maxResults": max});
            if let Some(t) = &token {
                body["nextToken"] = json!(t);
            }
            let page = call(&svc, "ListVectors", body).await.unwrap();
            let got = page["vectors"].as_array().unwrap();
            assert!(got.len() <= max, "maxResults {max}: {}", got.len());
            listed.extend(got.iter().map(|v| v["key"].as_str().unwrap().to_string()));
            match page["nextToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), listed.len(), "maxResults {max}: duplicates");
        assert_eq!(sorted, keys, "maxResults {max}: keys missing");
    }
    svc.close().await;
}

/// An instance whose cached catalog predates a bucket or index another
/// instance just created rechecks before answering NotFound, however
/// long it may otherwise cache the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_created_elsewhere_is_found_at_once_despite_a_cached_catalog() {
    let root = root();
    let a = service(&root, None).await;
    let mut opts = S3VectorsOptions::new(root.as_str());
    opts.catalog_max_age = Duration::from_secs(3600);
    let b = Service::open(opts).await.unwrap();
    // b caches the (empty) catalog.
    let listed = call(&b, "ListVectorBuckets", json!({})).await.unwrap();
    assert_eq!(listed["vectorBuckets"], json!([]));
    call(
        &a,
        "CreateVectorBucket",
        json!({"vectorBucketName": "fresh"}),
    )
    .await
    .unwrap();
    call(&a, "CreateIndex", index("fresh", "docs"))
        .await
        .unwrap();
    call(&b, "GetVectorBucket", json!({"vectorBucketName": "fresh"}))
        .await
        .unwrap();
    call(
        &b,
        "GetIndex",
        json!({"vectorBucketName": "fresh", "indexName": "docs"}),
    )
    .await
    .unwrap();
    call(
        &b,
        "PutVectors",
        json!({"vectorBucketName": "fresh", "indexName": "docs",
        "vectors": [{"key": "k", "data": {"float32": [1.0, 0.0]}}]}),
    )
    .await
    .unwrap();
    // A name that really is missing is still NotFound.
    let e = call(
        &b,
        "GetIndex",
        json!({"vectorBucketName": "fresh", "indexName": "nope"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NotFoundException");
    a.close().await;
    b.close().await;
}
