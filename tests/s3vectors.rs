//! The S3 Vectors mapping, driven through `shoal::s3vectors::Service`
//! (the same calls `shoal serve --s3vectors` makes) on shared in-memory
//! stores: several services play several instances of one deployment.
//! `tests/s3vectors_boto3.py` drives the same API over HTTP with boto3.
#![cfg(feature = "s3vectors")]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal::api::Role;
use shoal::coord::catalog::{self, CatalogStore, IndexEntry};
use shoal::coord::clock::{Clock, SystemClock};
use shoal::s3vectors::{Request, S3VectorsOptions, S3vError, Service};
use shoal::store::faults::WriteFaults;
use shoal::store::{Counted, ObjectStore};

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

/// Where the live incarnation of `bucket/index` keeps its objects.
async fn prefix_of(root: &str, bucket: &str, index: &str) -> String {
    let store = shoal::store::open(root).await.unwrap();
    let (cat, _) = catalog::read(store.as_ref()).await.unwrap();
    cat.buckets[bucket].indexes[index].prefix(bucket, index)
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
    let prefix = prefix_of(&root, "vb1", "docs").await;
    assert!(prefix.starts_with("vb1/docs@"), "{prefix}");
    let put = json!({"vectorBucketName": "vb1", "indexName": "docs",
        "vectors": [{"key": "k1", "data": {"float32": [0.5, 0.5]}, "metadata": {"n": 1}}]});
    call(&b, "PutVectors", put.clone()).await.unwrap();
    assert!(!keys_under(&root, &format!("{prefix}vectors/"))
        .await
        .is_empty());

    assert!(
        keys_under(&root, &format!("{prefix}_brainy/instances/"))
            .await
            .is_empty(),
        "servers keep no records in an index"
    );
    assert_eq!(
        keys_under(&root, "_s3vectors/instances/").await.len(),
        2,
        "one record per server"
    );
    call(
        &a,
        "DeleteIndex",
        json!({"vectorBucketName": "vb1", "indexName": "docs"}),
    )
    .await
    .unwrap();
    let tombstone = vec![format!("{prefix}_brainy/config.json")];
    // b held an open handle: any request b serves lets go of it, even one
    // about something else, so its heartbeats stop writing an instance
    // record into the deleted index (they would after 10 s).
    call(&b, "ListVectorBuckets", json!({})).await.unwrap();
    tokio::time::sleep(shoal::coord::DEFAULT_HEARTBEAT_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(
        keys_under(&root, &prefix).await,
        tombstone,
        "nothing of the deleted index is left but its tombstone, nor written again"
    );
    let e = call(&b, "PutVectors", put.clone()).await.unwrap_err();
    assert_eq!((e.status, e.code), (404, "NotFoundException"), "{e:?}");
    b.close().await;
    assert_eq!(keys_under(&root, &prefix).await, tombstone);
    // The tombstone keeps the deleted incarnation from being opened again.
    let Err(e) = shoal::Db::open(&format!("{root}/{prefix}"), Default::default()).await else {
        panic!("a deleted index opened");
    };
    assert_eq!(e.kind(), shoal::vocab::ErrorKind::NotFound, "{e}");

    // The name is free, and the new index is empty and may differ.
    let mut again = index("vb1", "docs");
    again["dimension"] = json!(3);
    call(&a, "CreateIndex", again).await.unwrap();
    assert_ne!(prefix_of(&root, "vb1", "docs").await, prefix);
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

/// A deleter that marked an index and died before sealing it does not
/// hold the name: `CreateIndex` seals the old incarnation itself and
/// proceeds at once, and the sweep deletes the old objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_whose_deleter_died_does_not_hold_the_name() {
    let root = root();
    let a = service(&root, None).await;
    call(&a, "CreateVectorBucket", json!({"vectorBucketName": "vb2"}))
        .await
        .unwrap();
    call(&a, "CreateIndex", index("vb2", "old")).await.unwrap();
    let old_prefix = prefix_of(&root, "vb2", "old").await;
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
    catalog::update(
        store.as_ref(),
        |c: &mut catalog::Catalog| -> Result<(), &str> {
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
            e.deleting_since = Some(now - 5.0);
            Ok(())
        },
    )
    .await
    .unwrap();
    let a = service(&root, None).await;
    let e = call(
        &a,
        "GetIndex",
        json!({"vectorBucketName": "vb2", "indexName": "old"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NotFoundException");
    assert!(e.message.contains("being deleted"), "{e:?}");
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
    assert!(
        keys_under(&root, &old_prefix).await.len() > 1,
        "left to the sweep"
    );
    assert_eq!(a.sweep().await.unwrap(), 1);
    assert_eq!(
        keys_under(&root, &old_prefix).await,
        [format!("{old_prefix}_brainy/config.json")]
    );
    let listed = call(&a, "ListIndexes", json!({"vectorBucketName": "vb2"}))
        .await
        .unwrap();
    assert!(listed.get("deletingIndexes").is_none(), "{listed}");
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
        vec![format!("_s3vectors/instances/{}.json", svc.instance_id())],
        "nothing written but the server's own instance record"
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

/// An instance whose catalog copy is `max_age` old at most.
async fn service_aged(root: &str, max_age: Duration) -> Service {
    let mut opts = S3VectorsOptions::new(root);
    opts.catalog_max_age = max_age;
    Service::open(opts).await.expect("open service")
}

/// An instance whose deletes of keys containing `pattern` wait at a gate
/// the test holds (closed: the instance is frozen mid-deletion).
async fn gated_service(root: &str, pattern: &str) -> (Service, Arc<WriteFaults>) {
    let store = shoal::store::open(root).await.unwrap();
    let faults = Arc::new(WriteFaults::new(store, pattern));
    faults.gate_deletes();
    let mut opts = S3VectorsOptions::new(root);
    opts.catalog_max_age = Duration::ZERO;
    let store = Arc::new(Counted::new(faults.clone()));
    let svc = Service::open_on(CatalogStore::on(store, Duration::ZERO), opts).unwrap();
    (svc, faults)
}

/// Waits until a deletion is held at the gate.
async fn until_held(faults: &WriteFaults) {
    for _ in 0..500 {
        if faults.waiting.load(Ordering::SeqCst) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no deletion reached the gate");
}

fn put_body(
    bucket: &str,
    index: &str,
    keys: impl IntoIterator<Item = String>,
    dim: usize,
) -> Value {
    let vectors: Vec<Value> = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let v: Vec<f32> = (0..dim).map(|d| 1.0 + (i * dim + d) as f32).collect();
            json!({"key": k, "data": {"float32": v}})
        })
        .collect();
    json!({"vectorBucketName": bucket, "indexName": index, "vectors": vectors})
}

/// The keys `GetVectors` finds among `keys`.
async fn found(svc: &Service, bucket: &str, index: &str, keys: &[String]) -> Vec<String> {
    let got = call(
        svc,
        "GetVectors",
        json!({"vectorBucketName": bucket, "indexName": index, "keys": keys}),
    )
    .await
    .unwrap();
    let mut out: Vec<String> = got["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// Issue 28 F1 and F2: instances holding handles on an index that another
/// instance deleted and re-created (with another metric) never write into
/// the new index with the old one's schema, nor leave objects in its way;
/// their next writes land in the new index, validated against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_on_a_deleted_index_never_write_into_the_index_that_reuses_its_name() {
    let root = root();
    let a = service(&root, None).await;
    // One instance revalidates its catalog on every call, one holds a
    // copy for an hour (a copy up to a second old, stretched).
    let fresh = service(&root, None).await;
    let stale = service_aged(&root, Duration::from_secs(3600)).await;
    call(&a, "CreateVectorBucket", json!({"vectorBucketName": "vbk"}))
        .await
        .unwrap();
    let mut cosine = index("vbk", "idx");
    cosine["dimension"] = json!(4);
    cosine["distanceMetric"] = json!("cosine");
    call(&a, "CreateIndex", cosine).await.unwrap();
    for (svc, key) in [(&fresh, "old-fresh"), (&stale, "old-stale")] {
        call(
            svc,
            "PutVectors",
            put_body("vbk", "idx", [key.to_string()], 4),
        )
        .await
        .unwrap();
    }
    call(
        &a,
        "DeleteIndex",
        json!({"vectorBucketName": "vbk", "indexName": "idx"}),
    )
    .await
    .unwrap();
    let mut euclidean = index("vbk", "idx");
    euclidean["dimension"] = json!(4);
    call(&a, "CreateIndex", euclidean).await.unwrap();
    // Both old handles' instances write now: into the new index, or not
    // at all (what they acknowledge must be found there).
    let mut acked = Vec::new();
    for (svc, key) in [(&fresh, "new-fresh"), (&stale, "new-stale")] {
        match call(
            svc,
            "PutVectors",
            put_body("vbk", "idx", [key.to_string()], 4),
        )
        .await
        {
            Ok(_) => acked.push(key.to_string()),
            Err(e) => assert_eq!(e.code, "NotFoundException", "{key}: {e:?}"),
        }
    }
    // The new index works for every call, on every partition.
    let many: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    call(&a, "PutVectors", put_body("vbk", "idx", many.clone(), 4))
        .await
        .unwrap();
    let q = call(
        &a,
        "QueryVectors",
        json!({"vectorBucketName": "vbk", "indexName": "idx", "topK": 5,
               "queryVector": {"float32": [1.0, 2.0, 3.0, 4.0]}}),
    )
    .await
    .unwrap();
    assert_eq!(q["vectors"].as_array().unwrap().len(), 5, "{q}");
    let wanted: Vec<String> = ["old-fresh", "old-stale", "new-fresh", "new-stale"]
        .map(String::from)
        .to_vec();
    let seen = found(&a, "vbk", "idx", &wanted).await;
    assert!(
        !seen.iter().any(|k| k.starts_with("old-")),
        "the deleted index's vectors are gone: {seen:?}"
    );
    assert_eq!(found(&a, "vbk", "idx", &many).await.len(), 100);
    // What the old handles' instances acknowledged is in the new index,
    // and they read it there too.
    assert_eq!(acked.len(), 2, "both re-route to the new index: {acked:?}");
    for key in &acked {
        assert!(seen.contains(key), "{key} acknowledged but lost: {seen:?}");
        assert!(found(&stale, "vbk", "idx", std::slice::from_ref(key))
            .await
            .contains(key));
    }
    for svc in [a, fresh, stale] {
        svc.close().await;
    }
}

/// Issue 28 F3: a deleter frozen half-way through (its listing taken) that
/// resumes after the name was re-created deletes nothing of the new index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_deletion_that_resumes_deletes_nothing_of_the_new_index() {
    let root = root();
    let (a, gate) = gated_service(&root, "vbk/idx").await;
    let b = service(&root, None).await;
    // An instance whose catalog copy stays old, with a handle on the index.
    let c = service_aged(&root, Duration::from_secs(3600)).await;
    call(&b, "CreateVectorBucket", json!({"vectorBucketName": "vbk"}))
        .await
        .unwrap();
    call(&b, "CreateIndex", index("vbk", "idx")).await.unwrap();
    let old: Vec<String> = (0..10).map(|i| format!("old{i}")).collect();
    call(&c, "PutVectors", put_body("vbk", "idx", old.clone(), 2))
        .await
        .unwrap();
    gate.close_gate();
    let a = Arc::new(a);
    let deleting = tokio::spawn({
        let a = a.clone();
        async move {
            call(
                &a,
                "DeleteIndex",
                json!({"vectorBucketName": "vbk", "indexName": "idx"}),
            )
            .await
        }
    });
    until_held(&gate).await;
    // Frozen long enough to count as dead (what another instance would
    // conclude after ten minutes).
    let store = shoal::store::open(&root).await.unwrap();
    catalog::update(
        store.as_ref(),
        |c: &mut catalog::Catalog| -> Result<(), &str> {
            let e = c
                .buckets
                .get_mut("vbk")
                .and_then(|b| b.indexes.get_mut("idx"));
            if let Some(since) = e.and_then(|e| e.deleting_since.as_mut()) {
                *since -= 3600.0;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    call(&b, "CreateIndex", index("vbk", "idx")).await.unwrap();
    let new: Vec<String> = (0..64).map(|i| format!("new{i}")).collect();
    call(&b, "PutVectors", put_body("vbk", "idx", new.clone(), 2))
        .await
        .unwrap();
    // The stale instance writes while the old incarnation is still being
    // deleted: into the new index, or not at all.
    let late = ["late".to_string()];
    let acked = call(&c, "PutVectors", put_body("vbk", "idx", late.clone(), 2)).await;
    // The deleter wakes up and goes on where it stopped.
    gate.open_gate(1 << 20);
    let _ = deleting.await.unwrap();
    assert_eq!(
        found(&b, "vbk", "idx", &new).await.len(),
        64,
        "every new vector survives"
    );
    assert!(found(&b, "vbk", "idx", &old).await.is_empty());
    match acked {
        Ok(_) => assert_eq!(
            found(&b, "vbk", "idx", &late).await,
            late,
            "acknowledged, so kept"
        ),
        Err(e) => assert_eq!(e.code, "NotFoundException", "{e:?}"),
    }
    let q = call(
        &b,
        "QueryVectors",
        json!({"vectorBucketName": "vbk", "indexName": "idx", "topK": 3,
               "queryVector": {"float32": [1.0, 2.0]}}),
    )
    .await
    .unwrap();
    assert_eq!(q["vectors"].as_array().unwrap().len(), 3);
    a.close().await;
    b.close().await;
    c.close().await;
}

/// Issue 28 F9: a deletion cut short (its instance died) is listed as
/// under way, and any instance finishes it: `DeleteIndex` of the name, or
/// `DeleteVectorBucket`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_cut_short_is_listed_and_any_instance_finishes_it() {
    let root = root();
    let (a, gate) = gated_service(&root, "vbk/").await;
    call(&a, "CreateVectorBucket", json!({"vectorBucketName": "vbk"}))
        .await
        .unwrap();
    for name in ["one", "two"] {
        call(&a, "CreateIndex", index("vbk", name)).await.unwrap();
        call(
            &a,
            "PutVectors",
            put_body("vbk", name, ["k".to_string()], 2),
        )
        .await
        .unwrap();
    }
    gate.close_gate();
    let a = Arc::new(a);
    for name in ["one", "two"] {
        let dying = tokio::spawn({
            let a = a.clone();
            async move {
                call(
                    &a,
                    "DeleteIndex",
                    json!({"vectorBucketName": "vbk", "indexName": name}),
                )
                .await
            }
        });
        until_held(&gate).await;
        dying.abort(); // the instance dies mid-deletion
        let _ = dying.await;
    }
    let b = service(&root, None).await;
    let listed = call(&b, "ListIndexes", json!({"vectorBucketName": "vbk"}))
        .await
        .unwrap();
    assert_eq!(listed["indexes"], json!([]), "{listed}");
    let deleting: Vec<&str> = listed["deletingIndexes"]
        .as_array()
        .unwrap_or_else(|| panic!("the listing names deletions under way: {listed}"))
        .iter()
        .map(|d| d["indexName"].as_str().unwrap())
        .collect();
    assert_eq!(deleting, ["one", "two"]);
    call(
        &b,
        "DeleteIndex",
        json!({"vectorBucketName": "vbk", "indexName": "one"}),
    )
    .await
    .unwrap();
    call(&b, "DeleteVectorBucket", json!({"vectorBucketName": "vbk"}))
        .await
        .unwrap();
    // Nothing but each deleted index's tombstone config is left.
    let left = keys_under(&root, "vbk/").await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|k| k.ends_with("/_brainy/config.json")),
        "{left:?}"
    );
    b.close().await;
}

/// Issue 28: an index made before incarnations (no id in its catalog
/// entry, objects under `<bucket>/<index>/`) keeps working, and its
/// deletion and re-creation follow the same protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_made_before_incarnations_keeps_working_and_deletes_cleanly() {
    let root = root();
    let a = service(&root, None).await;
    call(
        &a,
        "CreateVectorBucket",
        json!({"vectorBucketName": "old-vb"}),
    )
    .await
    .unwrap();
    call(&a, "CreateIndex", index("old-vb", "legacy"))
        .await
        .unwrap();
    call(
        &a,
        "PutVectors",
        put_body("old-vb", "legacy", ["k0".to_string()], 2),
    )
    .await
    .unwrap();
    a.close().await;
    // Move it to the layout of the previous version: no incarnation id,
    // objects under old-vb/legacy/.
    let store = shoal::store::open(&root).await.unwrap();
    let prefix = prefix_of(&root, "old-vb", "legacy").await;
    for key in keys_under(&root, &prefix).await {
        let got = store.get(&key).await.unwrap();
        let moved = key.replacen(&prefix, "old-vb/legacy/", 1);
        store.put(&moved, got.bytes).await.unwrap();
        store.delete(&key).await.unwrap();
    }
    catalog::update(
        store.as_ref(),
        |c: &mut catalog::Catalog| -> Result<(), &str> {
            let e = c
                .buckets
                .get_mut("old-vb")
                .and_then(|b| b.indexes.get_mut("legacy"))
                .ok_or("missing")?;
            e.incarnation = None;
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(prefix_of(&root, "old-vb", "legacy").await, "old-vb/legacy/");

    let a = service(&root, None).await;
    assert_eq!(
        found(&a, "old-vb", "legacy", &["k0".to_string()]).await,
        ["k0"]
    );
    call(
        &a,
        "PutVectors",
        put_body("old-vb", "legacy", ["k1".to_string()], 2),
    )
    .await
    .unwrap();
    let both = ["k0".to_string(), "k1".to_string()];
    assert_eq!(found(&a, "old-vb", "legacy", &both).await, both);
    call(
        &a,
        "DeleteIndex",
        json!({"vectorBucketName": "old-vb", "indexName": "legacy"}),
    )
    .await
    .unwrap();
    assert_eq!(
        keys_under(&root, "old-vb/legacy/").await,
        ["old-vb/legacy/_brainy/config.json"],
        "only the tombstone is left of the old layout"
    );
    call(&a, "CreateIndex", index("old-vb", "legacy"))
        .await
        .unwrap();
    assert!(prefix_of(&root, "old-vb", "legacy")
        .await
        .starts_with("old-vb/legacy@"));
    assert!(found(&a, "old-vb", "legacy", &both).await.is_empty());
    a.close().await;
}

/// `QueryVectors` carries no consistency field, so the server's default
/// decides: `strong` (the default) sees a write made through another
/// instance at once; a server started with `bounded` may answer from what
/// it checked up to `max_staleness` (2 s) ago; a request that names a
/// consistency gets it either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_default_consistency_decides_what_a_query_sees() {
    let root = root();
    let strong = service(&root, None).await;
    call(
        &strong,
        "CreateVectorBucket",
        json!({"vectorBucketName": "bkt"}),
    )
    .await
    .unwrap();
    call(&strong, "CreateIndex", index("bkt", "idx"))
        .await
        .unwrap();
    let put = |key: &str, v: [f32; 2]| {
        json!({"vectorBucketName": "bkt", "indexName": "idx",
               "vectors": [{"key": key, "data": {"float32": v}}]})
    };
    call(&strong, "PutVectors", put("far", [0.0, 0.0]))
        .await
        .unwrap();
    let mut opts = S3VectorsOptions::new(root.as_str());
    opts.default_consistency = shoal::api::Consistency::Bounded;
    let bounded = Service::open(opts).await.unwrap();
    let query = json!({"vectorBucketName": "bkt", "indexName": "idx", "topK": 1,
                       "queryVector": {"float32": [1.0, 1.0]}});
    let top = |v: Value| v["vectors"][0]["key"].as_str().unwrap().to_string();
    for svc in [&strong, &bounded, &bounded] {
        assert_eq!(
            top(call(svc, "QueryVectors", query.clone()).await.unwrap()),
            "far"
        );
    }
    let checked = std::time::Instant::now();
    let writer = service(&root, None).await;
    call(&writer, "PutVectors", put("near", [1.0, 1.0]))
        .await
        .unwrap();
    assert_eq!(
        top(call(&strong, "QueryVectors", query.clone()).await.unwrap()),
        "near"
    );
    let stale = top(call(&bounded, "QueryVectors", query.clone()).await.unwrap());
    if checked.elapsed() < Duration::from_secs(2) {
        assert_eq!(stale, "far", "bounded answers from its recent check");
    }
    let mut asked = query.clone();
    asked["consistency"] = json!("strong");
    assert_eq!(
        top(call(&bounded, "QueryVectors", asked).await.unwrap()),
        "near"
    );
    for s in [strong, bounded, writer] {
        s.close().await;
    }
}

/// An index nobody calls is closed by the sweeper's idle check (no
/// background work, no handle), and the next call opens it again. No index
/// ever holds an instance record of the server: the process keeps one at
/// the root, whatever the number of indexes it serves (issue 30, item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_index_handles_are_closed_and_reopen_on_the_next_call() {
    let root = root();
    let svc = service(&root, None).await;
    call(
        &svc,
        "CreateVectorBucket",
        json!({"vectorBucketName": "bkt"}),
    )
    .await
    .unwrap();
    for name in ["idx", "two", "three"] {
        call(&svc, "CreateIndex", index("bkt", name)).await.unwrap();
        let put = json!({"vectorBucketName": "bkt", "indexName": name,
                         "vectors": [{"key": "a", "data": {"float32": [1.0, 2.0]}}]});
        call(&svc, "PutVectors", put).await.unwrap();
    }
    let query = json!({"vectorBucketName": "bkt", "indexName": "idx", "topK": 1,
                       "queryVector": {"float32": [1.0, 2.0]}});
    let top = |v: Value| v["vectors"][0]["key"].as_str().unwrap().to_string();
    assert_eq!(
        top(call(&svc, "QueryVectors", query.clone()).await.unwrap()),
        "a"
    );
    let server_records = || keys_under(&root, "_s3vectors/instances/");
    let own = format!("_s3vectors/instances/{}.json", svc.instance_id());
    assert_eq!(server_records().await, vec![own.clone()]);
    svc.heartbeat().await.unwrap();
    let store = shoal::store::open(&root).await.unwrap();
    let rec: Value = serde_json::from_slice(&store.get(&own).await.unwrap().bytes).unwrap();
    assert_eq!(rec["heartbeatSeq"], 2);
    assert_eq!(rec["indexes"].as_array().unwrap().len(), 3, "{rec}");
    for name in ["idx", "two", "three"] {
        let instances = format!("{}_brainy/instances/", prefix_of(&root, "bkt", name).await);
        assert!(
            keys_under(&root, &instances).await.is_empty(),
            "{name}: an index holds no record of the server"
        );
    }
    // A heartbeat costs one PUT (and, at most every 30 s, one LIST for
    // records of dead servers), whatever the number of indexes open.
    let before = svc.store_counts();
    svc.heartbeat().await.unwrap();
    let d = svc.store_counts().since(&before);
    assert_eq!((d.put, d.get), (1, 0), "{d:?}");
    assert_eq!(
        svc.close_idle(Duration::from_secs(3600)).await,
        0,
        "used just now"
    );
    assert_eq!(svc.close_idle(Duration::ZERO).await, 3);
    svc.heartbeat().await.unwrap();
    let rec: Value = serde_json::from_slice(&store.get(&own).await.unwrap().bytes).unwrap();
    assert!(rec["indexes"].as_array().unwrap().is_empty(), "{rec}");
    assert_eq!(
        top(call(&svc, "QueryVectors", query.clone()).await.unwrap()),
        "a"
    );
    svc.close().await;
    assert!(server_records().await.is_empty(), "its record is gone");
}

/// Issue 30, item 4: 10k vectors loaded as 100 `PutVectors` of 100 (a
/// common client default) make one object per call, not one per partition
/// touched (about 6,400 before), so the first query after the load reads
/// a hundred objects and answers at once, with the nearest vector first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_put_vectors_batches_make_one_object_each_and_the_first_query_answers() {
    let root = root();
    let svc = service(&root, None).await;
    call(
        &svc,
        "CreateVectorBucket",
        json!({"vectorBucketName": "bkt"}),
    )
    .await
    .unwrap();
    call(&svc, "CreateIndex", index("bkt", "idx"))
        .await
        .unwrap();
    for call_no in 0..100 {
        let vectors: Vec<Value> = (0..100)
            .map(|i| {
                let n = call_no * 100 + i;
                json!({"key": format!("k{n}"), "data": {"float32": [n as f32, 1.0]}})
            })
            .collect();
        call(
            &svc,
            "PutVectors",
            json!({"vectorBucketName": "bkt", "indexName": "idx", "vectors": vectors}),
        )
        .await
        .unwrap();
    }
    let prefix = prefix_of(&root, "bkt", "idx").await;
    let objects = keys_under(&root, &format!("{prefix}vectors/")).await;
    let batches = objects.iter().filter(|k| k.contains("-b")).count();
    assert_eq!(batches, 100, "one object per PutVectors call: {objects:?}");
    // A fresh instance: a cold reader over everything just written.
    let cold = service(&root, Some(Role::Reader)).await;
    let got = call(
        &cold,
        "QueryVectors",
        json!({"vectorBucketName": "bkt", "indexName": "idx", "topK": 3,
               "queryVector": {"float32": [4321.2, 1.0]}}),
    )
    .await
    .unwrap();
    let keys: Vec<&str> = got["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k4321", "k4322", "k4320"]);
    for s in [svc, cold] {
        s.close().await;
    }
}

/// Issue 31: full-text and hybrid search through the S3 Vectors API:
/// `textSearchConfigurations` at `CreateIndex` (status ACTIVE, index mode
/// ENHANCED in `GetIndex`), `queryTexts` alone (BM25) and with a vector
/// (RRF) with `returnScores` in AWS's shape, `UpdateMetadataConfiguration`
/// adding and deleting keys, `$startsWith`, and the errors of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_hybrid_queries_with_scores_and_metadata_configuration() {
    let root = root();
    let svc = service(&root, None).await;
    call(
        &svc,
        "CreateVectorBucket",
        json!({"vectorBucketName": "bkt"}),
    )
    .await
    .unwrap();
    let mut create = index("bkt", "docs");
    create["metadataConfiguration"] = json!({"textSearchConfigurations": [
        {"metadataKey": "body", "language": "en"}, {"metadataKey": "title"}]});
    call(&svc, "CreateIndex", create).await.unwrap();
    let got = call(
        &svc,
        "GetIndex",
        json!({"vectorBucketName": "bkt", "indexName": "docs"}),
    )
    .await
    .unwrap();
    assert_eq!(got["index"]["indexMode"], "ENHANCED");
    let cfg = &got["index"]["metadataConfiguration"]["textSearchConfigurations"];
    assert_eq!(
        cfg,
        &json!([{"metadataKey": "body", "language": "en", "status": "ACTIVE"},
                {"metadataKey": "title", "status": "ACTIVE"}])
    );
    let docs = [
        (
            "ini",
            [1.0, 0.0],
            "Small INI library for Python 3",
            "python3-iniconfig",
        ),
        (
            "toml",
            [0.9, 0.1],
            "TOML parsing library for Python",
            "python3-toml",
        ),
        (
            "yaml",
            [0.0, 1.0],
            "YAML parser and emitter",
            "python3-yaml",
        ),
        ("rust", [0.1, 0.9], "Rust compiler", "rustc"),
    ];
    let vectors: Vec<Value> = docs
        .iter()
        .map(|(k, v, body, title)| {
            json!({"key": k, "data": {"float32": v}, "metadata": {"body": body, "title": title}})
        })
        .collect();
    call(
        &svc,
        "PutVectors",
        json!({"vectorBucketName": "bkt", "indexName": "docs", "vectors": vectors}),
    )
    .await
    .unwrap();
    let query = |extra: Value| {
        let mut q = json!({"vectorBucketName": "bkt", "indexName": "docs", "topK": 3,
                           "returnScores": true, "returnDistance": true});
        for (k, v) in extra.as_object().unwrap() {
            q[k] = v.clone();
        }
        q
    };
    let keys = |v: &Value| -> Vec<String> {
        v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["key"].as_str().unwrap().to_string())
            .collect()
    };
    // Text alone: BM25 in one key, scores per key, no fused score, no distance.
    let text = call(
        &svc,
        "QueryVectors",
        query(json!({"queryTexts": [
        {"metadataKey": "body", "text": "libraries for python"}]})),
    )
    .await
    .unwrap();
    // Both hold both terms (stemmed: librari, python); the shorter text
    // ranks first.
    assert_eq!(keys(&text), ["toml", "ini"], "{text}");
    let first = &text["vectors"][0];
    assert!(first.get("distance").is_none(), "{first}");
    assert!(first["scores"].get("fused").is_none(), "{first}");
    assert_eq!(first["scores"]["bm25Scores"][0]["metadataKey"], "body");
    assert!(first["scores"]["bm25Scores"][0]["score"].as_f64().unwrap() > 0.0);
    // Hybrid: the vector's nearest is yaml ([0, 1]); "iniconfig" names ini.
    let hybrid = call(
        &svc,
        "QueryVectors",
        query(json!({
        "queryVector": {"float32": [0.0, 1.0]},
        "queryTexts": [{"metadataKey": "title", "text": "python3-iniconfig"}]})),
    )
    .await
    .unwrap();
    let top = &hybrid["vectors"][0];
    assert!(top["scores"]["fused"].as_f64().unwrap() > 0.0, "{hybrid}");
    let ini = hybrid["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["key"] == "ini")
        .expect("ini fused in");
    assert_eq!(
        ini["scores"]["bm25Scores"][0]["metadataKey"], "title",
        "{ini}"
    );
    assert!(
        ini["scores"]["vectorDistance"].is_number(),
        "ini is in the vector list too: {ini}"
    );
    // $startsWith filters both lists.
    let filtered = call(
        &svc,
        "QueryVectors",
        query(json!({
        "queryVector": {"float32": [0.0, 1.0]},
        "filter": {"title": {"$startsWith": "python3-t"}}})),
    )
    .await
    .unwrap();
    assert_eq!(keys(&filtered), ["toml"]);
    // Errors: a key that is not searchable, CLASSIC, nothing to search.
    for (bad, says) in [
        (
            json!({"queryTexts": [{"metadataKey": "other", "text": "x"}]}),
            "not full-text searchable",
        ),
        (
            json!({"queryTexts": [{"metadataKey": "body", "text": ""}]}),
            "1 to 1024",
        ),
        (
            json!({"queryVector": {"float32": [0.0, 1.0]}, "queryMode": "CLASSIC"}),
            "CLASSIC",
        ),
        (json!({}), "queryVector, queryTexts, or both"),
    ] {
        let e = call(&svc, "QueryVectors", query(bad)).await.unwrap_err();
        assert_eq!(e.status, 400, "{}", e.message);
        assert!(e.message.contains(says), "{}", e.message);
    }
    // Delete a key, add another: queries follow at once.
    let umc = |change: Value| {
        let mut q = json!({"vectorBucketName": "bkt", "indexName": "docs"});
        for (k, v) in change.as_object().unwrap() {
            q[k] = v.clone();
        }
        q
    };
    call(
        &svc,
        "UpdateMetadataConfiguration",
        umc(json!({"delete": {"textSearchConfigurations": [{"metadataKey": "title"}]}})),
    )
    .await
    .unwrap();
    let e = call(
        &svc,
        "QueryVectors",
        query(json!({"queryTexts": [{"metadataKey": "title", "text": "rustc"}]})),
    )
    .await
    .unwrap_err();
    assert!(
        e.message.contains("not full-text searchable"),
        "{}",
        e.message
    );
    call(&svc, "UpdateMetadataConfiguration", umc(json!({"add": {"textSearchConfigurations": [{"metadataKey": "title", "language": "en"}]}})))
        .await
        .unwrap();
    let again = call(
        &svc,
        "QueryVectors",
        query(json!({"queryTexts": [{"metadataKey": "title", "text": "rustc"}]})),
    )
    .await
    .unwrap();
    assert_eq!(keys(&again), ["rust"]);
    let got = call(
        &svc,
        "GetIndex",
        json!({"vectorBucketName": "bkt", "indexName": "docs"}),
    )
    .await
    .unwrap();
    assert_eq!(
        got["index"]["metadataConfiguration"]["textSearchConfigurations"][1],
        json!({"metadataKey": "title", "language": "en", "status": "ACTIVE"})
    );
    for (bad, says) in [
        (json!({}), "add or delete"),
        (
            json!({"delete": {"textSearchConfigurations": [{"metadataKey": "nope"}]}}),
            "not full-text searchable",
        ),
        (
            json!({"add": {"textSearchConfigurations": [{"metadataKey": "x", "language": "tlh"}]}}),
            "not supported",
        ),
    ] {
        let e = call(&svc, "UpdateMetadataConfiguration", umc(bad))
            .await
            .unwrap_err();
        assert_eq!(e.status, 400, "{}", e.message);
        assert!(e.message.contains(says), "{}", e.message);
    }
    call(
        &svc,
        "UpdateIndexMode",
        umc(json!({"indexMode": "ENHANCED"})),
    )
    .await
    .unwrap();
    let e = call(
        &svc,
        "UpdateIndexMode",
        umc(json!({"indexMode": "CLASSIC"})),
    )
    .await
    .unwrap_err();
    assert_eq!(e.status, 400);
    call(
        &svc,
        "PutVectorBucketDefaultIndexMode",
        json!({"vectorBucketName": "bkt", "defaultIndexMode": "ENHANCED"}),
    )
    .await
    .unwrap();
    let b = call(&svc, "GetVectorBucket", json!({"vectorBucketName": "bkt"}))
        .await
        .unwrap();
    assert_eq!(b["vectorBucket"]["defaultIndexMode"], "ENHANCED");
    svc.close().await;
}

/// Issue 30 target, "an idle index costs nothing": `serve --s3vectors`
/// opens index handles as `open_index` does (no instance record, no
/// heartbeat) and its sweeper closes idle ones
/// (`idle_index_handles_are_closed_and_reopen_on_the_next_call`). An open
/// writer handle checks its index in the background (a LIST every 30 s);
/// once closed, the index sees no request at all, counted over ten
/// minutes of (paused) time.
#[tokio::test(start_paused = true)]
async fn a_closed_index_handle_sends_no_requests() {
    let store = shoal::store::open(&root()).await.unwrap();
    let mut opts = shoal::OpenOptions::default();
    opts.cluster.settings.dimensions = Some(2);
    opts.cluster.role = Some(Role::Writer);
    opts.cluster.register = false;
    opts.compact_every = Some(Duration::from_secs(30));
    opts.gc_every = Some(Duration::from_secs(600));
    let db = shoal::Db::open_store(store.clone(), opts).await.unwrap();
    db.upsert(&[shoal::api::Record::new("a", vec![1.0, 2.0])])
        .await
        .unwrap();
    let before = store.counts();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let open = store.counts().since(&before);
    assert!(
        open.total() > 0,
        "an open handle works in the background: {open:?}"
    );
    db.close().await.unwrap();
    let before = store.counts();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let closed = store.counts().since(&before);
    assert_eq!(
        closed.total(),
        0,
        "a closed handle sends nothing: {closed:?}"
    );
}

/// Issue 31: adding a searchable key to an index whose rows sit in index
/// shards backfills it. `GetIndex` says BUILDING until the indexer has
/// rebuilt every shard with the key's text index, then ACTIVE; queries
/// on the key answer the same all along (shards without it are scanned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_to_indexed_rows_is_building_until_the_indexer_backfills_it() {
    let root = root();
    let svc = service(&root, None).await;
    call(
        &svc,
        "CreateVectorBucket",
        json!({"vectorBucketName": "bkt"}),
    )
    .await
    .unwrap();
    call(&svc, "CreateIndex", index("bkt", "docs"))
        .await
        .unwrap();
    let names = ["alpha red", "beta red green", "gamma blue", "delta red"];
    let vectors: Vec<Value> = (0..300)
        .map(|i| {
            let v = [(i % 17) as f32, (i % 5) as f32];
            json!({"key": format!("k{i:03}"), "data": {"float32": v},
                   "metadata": {"name": format!("{} n{i}", names[i % 4])}})
        })
        .collect();
    call(
        &svc,
        "PutVectors",
        json!({"vectorBucketName": "bkt", "indexName": "docs", "vectors": vectors}),
    )
    .await
    .unwrap();
    // The rows go to index shards built without any text index.
    let prefix = prefix_of(&root, "bkt", "docs").await;
    let index_now = || async {
        let mut opts = shoal::OpenOptions::default();
        opts.cluster.role = Some(Role::Writer);
        opts.compact_every = None;
        let db = shoal::Db::open(&format!("{root}/{prefix}"), opts)
            .await
            .unwrap();
        db.compact(Default::default()).await.unwrap();
        let round = db.index(true).await.unwrap();
        db.close().await.unwrap();
        round
    };
    assert!(index_now().await.rows_out >= 300);
    let status = || async {
        let got = call(
            &svc,
            "GetIndex",
            json!({"vectorBucketName": "bkt", "indexName": "docs"}),
        )
        .await
        .unwrap();
        got["index"]["metadataConfiguration"]["textSearchConfigurations"][0]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    call(
        &svc,
        "UpdateMetadataConfiguration",
        json!({"vectorBucketName": "bkt", "indexName": "docs",
               "add": {"textSearchConfigurations": [{"metadataKey": "name"}]}}),
    )
    .await
    .unwrap();
    assert_eq!(status().await, "BUILDING");
    let query = || async {
        let got = call(
            &svc,
            "QueryVectors",
            json!({"vectorBucketName": "bkt", "indexName": "docs", "topK": 5,
                   "returnScores": true,
                   "queryTexts": [{"metadataKey": "name", "text": "green n1"}]}),
        )
        .await
        .unwrap();
        got["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let s = h["scores"]["bm25Scores"][0]["score"].as_f64().unwrap();
                (h["key"].as_str().unwrap().to_string(), s)
            })
            .collect::<Vec<_>>()
    };
    let scanned = query().await;
    // "n1" names one row; "green" one in four.
    assert_eq!(scanned.len(), 5, "{scanned:?}");
    assert_eq!(scanned[0].0, "k001", "{scanned:?}");
    // The indexer's next round rebuilds the shards with the key indexed.
    let round = index_now().await;
    assert!(!round.merged.is_empty(), "{round:?}");
    assert_eq!(status().await, "ACTIVE");
    let indexed = query().await;
    assert_eq!(
        indexed.iter().map(|h| &h.0).collect::<Vec<_>>(),
        scanned.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    for (a, b) in indexed.iter().zip(&scanned) {
        assert!((a.1 - b.1).abs() < 1e-4, "{indexed:?} {scanned:?}");
    }
    svc.close().await;
}

/// `QueryVectors` pages with `nextToken`: page after page of `topK`
/// continues the one ranking (for a vector query and a text query), the
/// last page comes without a token, and a token this server did not
/// issue is a ValidationException.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_vectors_pages_through_the_ranking_with_next_token() {
    let root = root();
    let svc = service(&root, None).await;
    call(
        &svc,
        "CreateVectorBucket",
        json!({"vectorBucketName": "bkt"}),
    )
    .await
    .unwrap();
    let mut create = index("bkt", "docs");
    create["metadataConfiguration"] =
        json!({"textSearchConfigurations": [{"metadataKey": "body"}]});
    call(&svc, "CreateIndex", create).await.unwrap();
    let vectors: Vec<Value> = (0..7)
        .map(|i| {
            json!({"key": format!("k{i}"), "data": {"float32": [i as f32, 0.0]},
                   "metadata": {"body": "word ".repeat(i + 1)}})
        })
        .collect();
    call(
        &svc,
        "PutVectors",
        json!({"vectorBucketName": "bkt", "indexName": "docs", "vectors": vectors}),
    )
    .await
    .unwrap();
    for search in [
        json!({"queryVector": {"float32": [0.0, 0.0]}}),
        json!({"queryTexts": [{"metadataKey": "body", "text": "word"}]}),
    ] {
        let query = |top_k: usize, token: Option<&str>| {
            let mut q = json!({"vectorBucketName": "bkt", "indexName": "docs", "topK": top_k});
            for (k, v) in search.as_object().unwrap() {
                q[k] = v.clone();
            }
            if let Some(t) = token {
                q["nextToken"] = json!(t);
            }
            q
        };
        let keys = |v: &Value| -> Vec<String> {
            v["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["key"].as_str().unwrap().to_string())
                .collect()
        };
        let all = call(&svc, "QueryVectors", query(10, None)).await.unwrap();
        assert_eq!(keys(&all).len(), 7, "{all}");
        assert!(all.get("nextToken").is_none(), "{all}");
        let (mut paged, mut token) = (Vec::new(), None::<String>);
        for _ in 0..4 {
            let page = call(&svc, "QueryVectors", query(3, token.as_deref()))
                .await
                .unwrap();
            paged.extend(keys(&page));
            token = page["nextToken"].as_str().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        assert!(token.is_none(), "the last page has no token");
        assert_eq!(paged, keys(&all), "{search}");
    }
    let e = call(
        &svc,
        "QueryVectors",
        json!({"vectorBucketName": "bkt", "indexName": "docs", "topK": 2,
               "queryVector": {"float32": [0.0, 0.0]}, "nextToken": "forged"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.status, 400, "{}", e.message);
    assert!(e.message.contains("nextToken"), "{}", e.message);
    svc.close().await;
}
