//! Helpers shared by the integration tests: a fresh store per test on each
//! backend. S3 tests need `SHOAL_TEST_S3_ENDPOINT` (the README's test
//! command starts moto and sets it); without it they are skipped loudly.
#![allow(dead_code, unused_macros)]

use std::sync::Arc;

use shoal::store::s3::{S3Options, S3Store};
use shoal::store::{local::LocalStore, memory::MemoryStore, Counted, DynStore};

pub fn memory_store() -> Arc<Counted> {
    Arc::new(Counted::new(Arc::new(MemoryStore::unique())))
}

/// A local store in a fresh temp directory (kept alive by the returned guard).
pub fn local_store() -> (Arc<Counted>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path().to_str().unwrap()).expect("open local store");
    (Arc::new(Counted::new(Arc::new(store))), dir)
}

pub fn s3_endpoint() -> Option<String> {
    match std::env::var("SHOAL_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            eprintln!(
                "\n*** SKIPPED: SHOAL_TEST_S3_ENDPOINT is not set, so this S3 test did not run. \
                 Use the test command from README.md, which starts moto and sets it. ***\n"
            );
            None
        }
    }
}

pub fn s3_options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: Some(true),
        credentials: Some(("test".into(), "test".into())),
    }
}

/// A fresh bucket on the test S3 server, or None (skip) without one.
pub async fn s3_store() -> Option<Arc<Counted>> {
    s3_store_with_prefix("").await
}

/// A fresh bucket, with every key under `prefix` (may be empty).
pub async fn s3_store_with_prefix(prefix: &str) -> Option<Arc<Counted>> {
    let endpoint = s3_endpoint()?;
    let bucket = format!("shoal-test-{:016x}", rand::random::<u64>());
    let opts = s3_options(&endpoint);
    let bare = S3Store::open(&bucket, &opts).await.expect("open s3");
    bare.create_bucket().await.expect("create test bucket");
    let spec = if prefix.is_empty() {
        bucket
    } else {
        format!("{bucket}/{prefix}")
    };
    let store = S3Store::open(&spec, &opts)
        .await
        .expect("open s3 with prefix");
    Some(Arc::new(Counted::new(Arc::new(store))))
}

pub fn dyn_store(s: Arc<Counted>) -> DynStore {
    s
}

/// Instantiates `async fn name(store: Arc<Counted>)` scenarios once per
/// backend: `memory::name`, `local::name`, `s3::name`.
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::common::memory_store()).await;
                }
            )+
        }
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _dir) = crate::common::local_store();
                    super::$name(store).await;
                }
            )+
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(store) = crate::common::s3_store().await else { return };
                    super::$name(store).await;
                }
            )+
        }
    };
}
