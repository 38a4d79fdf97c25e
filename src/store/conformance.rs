//! The one conformance suite every backend must pass.
//!
//! Each check is a named async function that panics with a message naming
//! the check and the backend when the backend breaks the contract. The test
//! files (`tests/store_conformance.rs`) instantiate every check for every
//! backend, so `cargo test` lists them as `memory::increment_race`,
//! `s3::increment_race`, ... Each check expects a fresh, empty store.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use super::{probe_conditional_writes, ByteRange, Conditional, DynStore, StoreError};

/// Every check, by name, for runners that iterate.
pub const CHECKS: &[&str] = &[
    "missing_key_is_not_found",
    "delete_missing_is_ok",
    "round_trip_etag",
    "range_reads",
    "conditional_get",
    "create_race",
    "increment_race",
    "put_if_match_stale_etag_fails",
    "put_if_match_missing_does_not_create",
    "list_many_pages",
    "list_prefix_shapes",
    "probe_passes",
];

macro_rules! check {
    ($store:expr, $name:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("conformance check `{}` failed on {}: {}", $name, $store.describe(), format!($($msg)+));
        }
    };
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub async fn missing_key_is_not_found(store: DynStore) {
    const N: &str = "missing_key_is_not_found";
    let k = "no/such/key";
    let r = store.get(k).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::NotFound { .. })),
        "get gave {r:?}"
    );
    let r = store.get_range(k, ByteRange::new(0, 4)).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::NotFound { .. })),
        "get_range gave {r:?}"
    );
    let r = store.head(k).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::NotFound { .. })),
        "head gave {r:?}"
    );
    let r = store.get_if_changed(k, &super::ETag("\"x\"".into())).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::NotFound { .. })),
        "get_if_changed gave {r:?}"
    );
    if let Err(e) = store.get(k).await {
        check!(
            store,
            N,
            e.to_string().contains(k),
            "error message does not name the key: {e}"
        );
    }
}

pub async fn delete_missing_is_ok(store: DynStore) {
    const N: &str = "delete_missing_is_ok";
    let r = store.delete("never/written").await;
    check!(store, N, r.is_ok(), "delete of a missing key gave {r:?}");
}

pub async fn round_trip_etag(store: DynStore) {
    const N: &str = "round_trip_etag";
    let k = "rt/object.bin";
    let e1 = store.put(k, b("hello shoal")).await.expect("put");
    let g = store.get(k).await.expect("get");
    check!(
        store,
        N,
        g.bytes == b("hello shoal"),
        "get returned {:?}",
        g.bytes
    );
    check!(
        store,
        N,
        g.etag == e1,
        "get etag {} != put etag {}",
        g.etag,
        e1
    );
    let h = store.head(k).await.expect("head");
    check!(
        store,
        N,
        h.etag == e1 && h.size == 11,
        "head gave {h:?}, put etag {e1}"
    );
    let l = store.list("rt/").await.expect("list");
    check!(
        store,
        N,
        l.len() == 1 && l[0].key == k && l[0].etag == e1 && l[0].size == 11,
        "list gave {l:?}, put etag {e1}"
    );
    let e2 = store.put(k, b("changed bytes")).await.expect("overwrite");
    check!(store, N, e2 != e1, "etag did not change when the bytes did");
    let g = store.get(k).await.expect("get after overwrite");
    check!(
        store,
        N,
        g.bytes == b("changed bytes") && g.etag == e2,
        "overwrite not visible: {g:?}"
    );
    store.delete(k).await.expect("delete");
    let r = store.get(k).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::NotFound { .. })),
        "get after delete gave {r:?}"
    );
}

pub async fn range_reads(store: DynStore) {
    const N: &str = "range_reads";
    let k = "range/bytes";
    let data: Vec<u8> = (0..=255u8).collect();
    store.put(k, Bytes::from(data.clone())).await.expect("put");
    let r = store
        .get_range(k, ByteRange::new(10, 20))
        .await
        .expect("10..20");
    check!(store, N, r[..] == data[10..20], "10..20 gave {r:?}");
    let r = store
        .get_range(k, ByteRange::from(250))
        .await
        .expect("250..");
    check!(store, N, r[..] == data[250..], "250.. gave {r:?}");
    let r = store
        .get_range(k, ByteRange::new(250, 1000))
        .await
        .expect("250..1000");
    check!(
        store,
        N,
        r[..] == data[250..],
        "250..1000 (past the end) gave {r:?}"
    );
    let r = store
        .get_range(k, ByteRange::new(0, 1))
        .await
        .expect("0..1");
    check!(store, N, r[..] == [0u8], "0..1 gave {r:?}");
    let r = store
        .get_range(k, ByteRange::from(256))
        .await
        .expect("256..");
    check!(
        store,
        N,
        r.is_empty(),
        "a range starting at the end gave {r:?}"
    );
}

pub async fn conditional_get(store: DynStore) {
    const N: &str = "conditional_get";
    let k = "cond/manifest.json";
    let e1 = store.put(k, b("{\"v\":1}")).await.expect("put");
    let r = store.get_if_changed(k, &e1).await.expect("conditional get");
    check!(
        store,
        N,
        matches!(r, Conditional::NotModified),
        "same etag gave {r:?}"
    );
    let e2 = store.put(k, b("{\"v\":2}")).await.expect("put 2");
    match store
        .get_if_changed(k, &e1)
        .await
        .expect("conditional get 2")
    {
        Conditional::Modified(g) => {
            check!(
                store,
                N,
                g.bytes == b("{\"v\":2}") && g.etag == e2,
                "changed gave {g:?}"
            );
        }
        Conditional::NotModified => check!(store, N, false, "changed object reported not modified"),
    }
}

pub async fn create_race(store: DynStore) {
    const N: &str = "create_race";
    let k = "race/create";
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { (i, s.put_if_absent(k, b(&format!("writer-{i}"))).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match r {
            Ok(etag) => winners.push((i, etag)),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => check!(store, N, false, "writer {i} got an unexpected error: {e}"),
        }
    }
    check!(
        store,
        N,
        winners.len() == 1,
        "{} create-only writes won: {winners:?}",
        winners.len()
    );
    let (i, etag) = &winners[0];
    let g = store.get(k).await.expect("get");
    check!(
        store,
        N,
        g.bytes == b(&format!("writer-{i}")) && &g.etag == etag,
        "stored bytes {:?} are not the winner's (writer-{i})",
        g.bytes
    );
}

/// Adds one to the decimal counter at `key` with get + `put_if_match`,
/// retrying lost races. Returns how many attempts lost.
pub async fn increment(store: &DynStore, key: &str) -> u64 {
    let mut lost = 0;
    loop {
        let g = store.get(key).await.expect("get counter");
        let n: u64 = std::str::from_utf8(&g.bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("counter at {key} is not a number: {:?}", g.bytes));
        match store
            .put_if_match(key, b(&(n + 1).to_string()), &g.etag)
            .await
        {
            Ok(_) => return lost,
            Err(e) if e.is_conflict() || e.is_retryable() => {
                lost += 1;
                // A test helper's retry jitter; `store` sits below
                // `coord`'s entropy seam.
                #[allow(clippy::disallowed_methods)]
                let jitter = rand::random::<u64>() % 4;
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(e) => panic!("increment of {key} on {} failed: {e}", store.describe()),
        }
    }
}

/// Reads the decimal counter at `key`.
pub async fn read_counter(store: &DynStore, key: &str) -> u64 {
    let g = store.get(key).await.expect("get counter");
    std::str::from_utf8(&g.bytes)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// 5 tasks × 10 increments of one counter must give exactly 50: the
/// property every manifest commit in shoal relies on.
pub async fn increment_race(store: DynStore) {
    const N: &str = "increment_race";
    let k = "race/counter";
    store
        .put_if_absent(k, b("0"))
        .await
        .expect("create counter");
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move {
                let mut lost = 0;
                for _ in 0..10 {
                    lost += increment(&s, k).await;
                }
                lost
            })
        })
        .collect();
    let mut lost = 0;
    for t in tasks {
        lost += t.await.expect("task");
    }
    let n = read_counter(&store, k).await;
    check!(
        store,
        N,
        n == 50,
        "counter is {n} after 5 x 10 increments ({lost} lost races)"
    );
}

pub async fn put_if_match_stale_etag_fails(store: DynStore) {
    const N: &str = "put_if_match_stale_etag_fails";
    let k = "cas/object";
    let e1 = store.put_if_absent(k, b("v1")).await.expect("create");
    let e2 = store
        .put_if_match(k, b("v2"), &e1)
        .await
        .expect("cas with current etag");
    let r = store.put_if_match(k, b("v3"), &e1).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::PreconditionFailed { .. })),
        "stale cas gave {r:?}"
    );
    let g = store.get(k).await.expect("get");
    check!(
        store,
        N,
        g.bytes == b("v2") && g.etag == e2,
        "a failed cas changed the object: {g:?}"
    );
}

pub async fn put_if_match_missing_does_not_create(store: DynStore) {
    const N: &str = "put_if_match_missing_does_not_create";
    let k = "cas/missing";
    let r = store
        .put_if_match(k, b("x"), &super::ETag("\"abc\"".into()))
        .await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::PreconditionFailed { .. })),
        "cas on missing gave {r:?}"
    );
    let r = store.head(k).await;
    check!(
        store,
        N,
        matches!(r, Err(StoreError::NotFound { .. })),
        "cas on missing created it: {r:?}"
    );
}

pub async fn list_many_pages(store: DynStore) {
    const N: &str = "list_many_pages";
    let want: BTreeSet<String> = (0..1100).map(|i| format!("many/k{i:05}")).collect();
    let keys: Vec<String> = want.iter().cloned().collect();
    // Bounded concurrency: fast, without opening 1,100 connections.
    let mut chunks = keys
        .chunks(1100 / 16 + 1)
        .map(|c| c.to_vec())
        .collect::<Vec<_>>();
    let tasks: Vec<_> = chunks
        .drain(..)
        .map(|chunk| {
            let s = store.clone();
            tokio::spawn(async move {
                for k in chunk {
                    s.put(&k, Bytes::from_static(b"x")).await.expect("put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    store
        .put("manz", b("outside the prefix"))
        .await
        .expect("put");
    let got = store.list("many/").await.expect("list");
    let got_keys: Vec<String> = got.iter().map(|m| m.key.clone()).collect();
    check!(
        store,
        N,
        got_keys.len() == 1100,
        "listed {} keys, want 1100",
        got_keys.len()
    );
    let sorted: Vec<String> = want.into_iter().collect();
    check!(
        store,
        N,
        got_keys == sorted,
        "listed keys differ from the written ones or are unsorted"
    );
}

pub async fn list_prefix_shapes(store: DynStore) {
    const N: &str = "list_prefix_shapes";
    let keys = [
        "seg/a",
        "seg/b",
        "seg0",
        "segx/c",
        "sp ace/k y",
        "plus+key",
        "pct%2Fkey",
        "unicodé/ключ/鍵.seg",
    ];
    for k in keys {
        store.put(k, b(k)).await.expect("put");
    }
    for k in keys {
        let g = store.get(k).await.expect("get");
        check!(
            store,
            N,
            g.bytes == b(k),
            "key {k:?} read back {:?}",
            g.bytes
        );
    }
    let names = |v: Vec<super::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    let cases: &[(&str, &[&str])] = &[
        ("seg/", &["seg/a", "seg/b"]),
        ("seg", &["seg/a", "seg/b", "seg0", "segx/c"]),
        ("seg0", &["seg0"]),
        ("sp ace/", &["sp ace/k y"]),
        ("plus+", &["plus+key"]),
        ("pct%", &["pct%2Fkey"]),
        ("unicodé/ключ/", &["unicodé/ключ/鍵.seg"]),
        ("nothing-here/", &[]),
    ];
    for (prefix, want) in cases {
        let got = names(store.list(prefix).await.expect("list"));
        check!(
            store,
            N,
            got == *want,
            "list({prefix:?}) gave {got:?}, want {want:?}"
        );
    }
    let all = names(store.list("").await.expect("list all"));
    let mut want: Vec<&str> = keys.to_vec();
    want.sort();
    check!(
        store,
        N,
        all == want,
        "list(\"\") gave {all:?}, want {want:?}"
    );
}

pub async fn probe_passes(store: DynStore) {
    const N: &str = "probe_passes";
    let id = super::memory::uuid_like();
    let keys = (
        format!("_brainy/probe/{id}"),
        format!("_brainy/probe/{id}-missing"),
    );
    let r = probe_conditional_writes(store.as_ref(), keys).await;
    check!(
        store,
        N,
        r.is_ok(),
        "probe refused a conforming store: {r:?}"
    );
    let left = store.list("_brainy/probe/").await.expect("list");
    check!(
        store,
        N,
        left.is_empty(),
        "probe left objects behind: {left:?}"
    );
}
