//! The store conformance suite, run against every backend.
//!
//! Each check from `shoal::store::conformance` becomes one test per backend,
//! so the output reads `memory::increment_race ... ok`,
//! `local::increment_race ... ok`, `s3::increment_race ... ok`.

mod common;

use shoal::store::conformance as c;

macro_rules! suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            suite!(@checks $make;
                missing_key_is_not_found, delete_missing_is_ok, round_trip_etag, range_reads,
                conditional_get, create_race, increment_race, put_if_match_stale_etag_fails,
                put_if_match_missing_does_not_create, list_many_pages, list_prefix_shapes,
                probe_passes);
        }
    };
    (@checks $make:expr; $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let made = $make;
                let Some((store, _guard)) = made.await else { return };
                c::$check(store).await;
            }
        )+
    };
}

suite!(memory, async {
    Some((common::dyn_store(common::memory_store()), ()))
});

suite!(local, async {
    let (s, dir) = common::local_store();
    Some((common::dyn_store(s), dir))
});

suite!(s3, async {
    common::s3_store().await.map(|s| (common::dyn_store(s), ()))
});

// The same suite with every key under a URL prefix, so scoping works too.
suite!(s3_prefixed, async {
    common::s3_store_with_prefix("idx/one")
        .await
        .map(|s| (common::dyn_store(s), ()))
});

suite!(memory_prefixed, async {
    // A fresh store name, unseeded (see `common::s3_store_with_prefix`).
    #[allow(clippy::disallowed_methods)]
    let name = format!("prefixed-{:016x}/idx/one", rand::random::<u64>());
    let s = shoal::store::memory::MemoryStore::open(&name).unwrap();
    Some((
        common::dyn_store(std::sync::Arc::new(shoal::store::Counted::new(
            std::sync::Arc::new(s),
        ))),
        (),
    ))
});

#[test]
fn every_check_is_instantiated() {
    // Guards against adding a check to the library and forgetting it here.
    let src = include_str!("store_conformance.rs");
    for name in c::CHECKS {
        assert!(src.contains(name), "check {name} is not run by this file");
    }
}
