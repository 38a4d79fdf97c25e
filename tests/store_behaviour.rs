//! Store behaviour beyond the shared suite: the probe refusing a store that
//! ignores conditions, request counters, URL parsing, prefix scoping, and
//! the local backend's cross-process atomicity.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use shoal::store::conformance::{increment, read_counter};
use shoal::store::faults::IgnoreConditions;
use shoal::store::{
    probe_conditional_writes, Counted, DynStore, ETag, ObjectStore, ProbeError, StoreError,
};

async fn assert_probe_refuses(inner: DynStore) {
    let broken = IgnoreConditions(inner);
    let err = probe_conditional_writes(&broken, shoal::coord::paths::probe_keys())
        .await
        .expect_err("probe must refuse");
    assert!(matches!(err, ProbeError::NotEnforced { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("does not enforce conditional writes"), "{msg}");
    assert!(msg.contains("create-only"), "{msg}");
    assert!(
        msg.contains("conditions ignored"),
        "message names the store: {msg}"
    );
}

#[tokio::test]
async fn probe_refuses_store_that_ignores_conditions_memory() {
    assert_probe_refuses(common::memory_store()).await;
}

#[tokio::test]
async fn probe_refuses_store_that_ignores_conditions_local() {
    let (s, _d) = common::local_store();
    assert_probe_refuses(s).await;
}

#[tokio::test]
async fn probe_refuses_store_that_ignores_conditions_s3() {
    let Some(s) = common::s3_store().await else {
        return;
    };
    assert_probe_refuses(s).await;
}

async fn check_counters(store: Arc<Counted>) {
    let base = store.counts();
    let e = store
        .put_if_absent("c/a", Bytes::from_static(b"12345"))
        .await
        .unwrap();
    store.get("c/a").await.unwrap();
    store.get_if_changed("c/a", &e).await.unwrap();
    let _ = store.get("c/missing").await;
    let _ = store.put_if_absent("c/a", Bytes::from_static(b"x")).await;
    let _ = store
        .put_if_match("c/a", Bytes::from_static(b"x"), &ETag("\"stale\"".into()))
        .await;
    store.head("c/a").await.unwrap();
    store.delete("c/a").await.unwrap();
    store.list("c/").await.unwrap();
    let d = store.counts().since(&base);
    assert_eq!(d.get, 3, "{d:?}");
    assert_eq!(d.put, 3, "{d:?}");
    assert_eq!(d.head, 1, "{d:?}");
    assert_eq!(d.delete, 1, "{d:?}");
    assert_eq!(d.list, 1, "{d:?}");
    assert_eq!(d.not_modified, 1, "{d:?}");
    assert_eq!(d.not_found, 1, "{d:?}");
    assert_eq!(d.precondition_failed, 2, "{d:?}");
    assert_eq!(d.bytes_read, 5, "only the one full read moved bytes: {d:?}");
    assert_eq!(d.total(), 9);
}

#[tokio::test]
async fn counters_count_every_kind_and_outcome_memory() {
    check_counters(common::memory_store()).await;
}

#[tokio::test]
async fn counters_count_every_kind_and_outcome_local() {
    let (s, _d) = common::local_store();
    check_counters(s).await;
}

#[tokio::test]
async fn counters_count_every_kind_and_outcome_s3() {
    let Some(s) = common::s3_store().await else {
        return;
    };
    check_counters(s).await;
}

#[tokio::test]
async fn list_counts_one_request_per_page_of_1000() {
    let s = common::memory_store();
    for i in 0..1001 {
        s.put(&format!("p/{i}"), Bytes::new()).await.unwrap();
    }
    let before = s.counts().list;
    assert_eq!(s.list("p/").await.unwrap().len(), 1001);
    assert_eq!(s.counts().list - before, 2);
}

#[tokio::test]
async fn open_parses_urls() {
    let m = shoal::store::open("memory://urltest/some/prefix")
        .await
        .unwrap();
    assert_eq!(m.describe(), "memory://urltest/some/prefix");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let f = shoal::store::open(&format!("file://{path}")).await.unwrap();
    assert!(f.describe().starts_with("file:///"), "{}", f.describe());
    let p = shoal::store::open(&format!("{path}/plain")).await.unwrap();
    p.put("k", Bytes::from_static(b"v")).await.unwrap();
    assert!(dir.path().join("plain/k").exists());
    let e = shoal::store::open("gs://bucket").await.unwrap_err();
    assert!(
        e.to_string().contains("unsupported store url scheme"),
        "{e}"
    );
    let e = shoal::store::open("s3://").await.unwrap_err();
    assert!(e.to_string().contains("needs a bucket"), "{e}");
    let e = shoal::store::open("memory://x/../y").await.unwrap_err();
    assert!(e.to_string().contains("invalid key prefix"), "{e}");
}

async fn check_invalid_keys(store: DynStore) {
    for bad in [
        "",
        "/abs",
        "a//b",
        "../escape",
        "a/../../b",
        "a/./b",
        "nul\0key",
    ] {
        let e = store.put(bad, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(e.to_string().contains("invalid key"), "{bad:?}: {e}");
    }
    assert!(
        store.list("").await.unwrap().is_empty(),
        "a bad key wrote something"
    );
}

#[tokio::test]
async fn invalid_keys_are_refused_and_write_nothing() {
    check_invalid_keys(common::memory_store()).await;
    let (s, dir) = common::local_store();
    check_invalid_keys(s).await;
    // Nothing escaped the root either.
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[tokio::test]
async fn prefixes_scope_every_key_memory() {
    // A fresh store name, unseeded (see `common::s3_store_with_prefix`).
    #[allow(clippy::disallowed_methods)]
    let name = format!("scope-{:016x}", rand::random::<u64>());
    let a = shoal::store::open(&format!("memory://{name}/a"))
        .await
        .unwrap();
    let b = shoal::store::open(&format!("memory://{name}/b"))
        .await
        .unwrap();
    let root = shoal::store::open(&format!("memory://{name}"))
        .await
        .unwrap();
    a.put("k", Bytes::from_static(b"from a")).await.unwrap();
    assert!(matches!(b.get("k").await, Err(StoreError::NotFound { .. })));
    let keys: Vec<_> = root
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["a/k"]);
    let keys: Vec<_> = a
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["k"]);
}

#[tokio::test]
async fn prefixes_scope_every_key_s3() {
    let Some(a) = common::s3_store_with_prefix("tenant-a").await else {
        return;
    };
    let a_bucket = a.describe();
    let bucket = a_bucket
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap();
    let opts = common::s3_options(&common::s3_endpoint().unwrap());
    let root = shoal::store::s3::S3Store::open(bucket, &opts)
        .await
        .unwrap();
    let b = shoal::store::s3::S3Store::open(&format!("{bucket}/tenant-b"), &opts)
        .await
        .unwrap();
    a.put("vectors/p000/manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert!(matches!(
        b.get("vectors/p000/manifest.json").await,
        Err(StoreError::NotFound { .. })
    ));
    let keys: Vec<_> = root
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["tenant-a/vectors/p000/manifest.json"]);
    let keys: Vec<_> = a
        .list("vectors/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["vectors/p000/manifest.json"]);
}

#[tokio::test]
async fn local_etags_are_content_hashes_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let e1 = shoal::store::local::LocalStore::open(path)
        .unwrap()
        .put("x/y", Bytes::from_static(b"same bytes"))
        .await
        .unwrap();
    let reopened = shoal::store::local::LocalStore::open(path).unwrap();
    assert_eq!(reopened.head("x/y").await.unwrap().etag, e1);
    let e2 = reopened
        .put("other", Bytes::from_static(b"same bytes"))
        .await
        .unwrap();
    assert_eq!(e1, e2, "equal bytes give equal etags");
    let e = reopened
        .put(".shoal-locks/x", Bytes::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}

const CHILD_ENV: &str = "SHOAL_CHILD_STORE_DIR";

/// Helper run in child processes by `local_increment_race_across_processes`.
#[tokio::test]
#[ignore = "helper: spawned as a separate process by local_increment_race_across_processes"]
async fn cross_process_increment_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the parent test");
    let store: DynStore = Arc::new(shoal::store::local::LocalStore::open(&dir).unwrap());
    for _ in 0..10 {
        increment(&store, "race/counter").await;
    }
}

#[tokio::test]
async fn local_increment_race_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let store: DynStore = Arc::new(shoal::store::local::LocalStore::open(&path).unwrap());
    store
        .put_if_absent("race/counter", Bytes::from_static(b"0"))
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..5)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "cross_process_increment_child",
                    "--nocapture",
                ])
                .env(CHILD_ENV, &path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child test process")
        })
        .collect();
    let pids: std::collections::BTreeSet<u32> = children.iter().map(|c| c.id()).collect();
    assert_eq!(pids.len(), 5, "five distinct OS processes");
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child process failed");
    }
    assert_eq!(read_counter(&store, "race/counter").await, 50);
}
