//! Corrupt objects in the bucket, on every backend: each case is an error
//! naming the key (or a partial result naming it), `verify` reports it,
//! nothing panics, and nothing else in the bucket is touched.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal::coord::config::read_config;
use shoal::coord::manifest::read_manifest;
use shoal::coord::paths::CONFIG_KEY;
use shoal::coord::{Metric, Settings};
use shoal::reader::{Reader, ReaderOptions, SearchRequest};
use shoal::record::Record;
use shoal::store::{Counted, ObjectStore};

backend_tests!(
    every_corruption_is_named_and_contained,
    a_corrupt_batch_object_fails_every_partition_it_holds,
    a_lost_manifest_is_corruption_until_repaired
);

/// A batch object holds a section of each partition a write touched: when
/// it is damaged, every one of them fails naming it (or is left out of a
/// partial result, named), `verify` reports it, and nothing is written.
async fn a_corrupt_batch_object_fails_every_partition_it_holds(store: Arc<Counted>) {
    let s = setup(&store, true).await;
    let (m0, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let (m1, _) = read_manifest(store.as_ref(), 1).await.unwrap().unwrap();
    let batch = m0.segments[0].key.clone();
    assert!(batch.contains("-b"), "{batch}");
    assert!(m0.segments[0].section.is_some());
    assert_eq!(m1.segments[0].key, batch, "one object for both partitions");
    let good = store.get(&batch).await.unwrap().bytes;
    let mut flipped = good.to_vec();
    for b in flipped.iter_mut().take(good.len() - 30) {
        *b ^= 0x5a; // every section damaged, the directory intact
    }
    for bad in [good.slice(..good.len() / 3), Bytes::from(flipped)] {
        store.put(&batch, bad).await.unwrap();
        let before = snapshot(&store).await;
        let r = Reader::new(
            store.clone(),
            &s,
            ReaderOptions {
                max_staleness: Duration::ZERO,
                ..Default::default()
            },
        );
        let q = SearchRequest::new(vec![1.0, 0.0, 0.0], 50);
        let e = r
            .search(&q)
            .await
            .expect_err("search must fail")
            .to_string();
        assert!(e.contains(&batch), "{e}");
        let partial = r
            .search(&SearchRequest {
                allow_partial: true,
                ..q
            })
            .await
            .unwrap();
        let mut failed: Vec<u32> = partial
            .failed_partitions
            .iter()
            .map(|f| f.partition)
            .collect();
        failed.sort();
        assert_eq!(failed, vec![0, 1], "{:?}", partial.failed_partitions);
        assert!(partial
            .failed_partitions
            .iter()
            .all(|f| f.error.contains(&batch)));
        let report = common::verify(&store).await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.key == batch),
            "verify misses {batch}: {:?}",
            report.problems
        );
        assert_eq!(snapshot(&store).await, before, "reading changed the bucket");
    }
    store.put(&batch, good).await.unwrap();
    let r = Reader::new(store.clone(), &s, ReaderOptions::default());
    let all = r
        .search(&SearchRequest::new(vec![1.0, 0.0, 0.0], 50))
        .await
        .unwrap();
    assert_eq!(all.results.len(), 40);
}

/// Two partitions, 40 records in two writes: `batched`, each write is one
/// batch object holding both partitions' sections; otherwise each
/// partition's records are written on their own (one segment each).
async fn setup(store: &Arc<Counted>, batched: bool) -> Settings {
    let settings = common::create_index(store.as_ref(), 2, 3, Metric::Dot).await;
    let w = common::writer(store.clone(), &settings);
    let recs: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), vec![i as f32, 1.0, 0.5]))
        .collect();
    for half in [&recs[..20], &recs[20..]] {
        if batched {
            w.upsert(half).await.unwrap();
            continue;
        }
        for p in 0..2 {
            let mine: Vec<Record> = half
                .iter()
                .filter(|r| shoal::coord::partition_of(&r.id, 2) == p)
                .cloned()
                .collect();
            w.upsert(&mine).await.unwrap();
        }
    }
    settings
}

async fn snapshot(store: &Counted) -> BTreeMap<String, String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.key, m.etag.0))
        .collect()
}

/// Runs every reader path and verify against the bucket as it is, and
/// returns their errors; asserts they name `key` and touch nothing.
async fn probe(store: &Arc<Counted>, s: &Settings, key: &str, partition: u32) {
    let before = snapshot(store).await;
    let r = Reader::new(
        store.clone(),
        s,
        ReaderOptions {
            max_staleness: Duration::ZERO,
            ..Default::default()
        },
    );
    let q = SearchRequest::new(vec![1.0, 0.0, 0.0], 50);
    let e = r
        .search(&q)
        .await
        .expect_err("search must fail")
        .to_string();
    assert!(
        e.contains(key) && e.contains(&format!("partition {partition}")),
        "{e}"
    );
    let partial = r
        .search(&SearchRequest {
            allow_partial: true,
            ..q
        })
        .await
        .unwrap();
    assert!(partial.partial);
    assert_eq!(partial.failed_partitions.len(), 1);
    assert_eq!(partial.failed_partitions[0].partition, partition);
    assert!(partial.failed_partitions[0].error.contains(key));
    assert!(partial.results.iter().all(|h| h.partition != partition));
    let report = common::verify(store).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.key == key),
        "verify misses {key}: {:?}",
        report.problems
    );
    assert_eq!(
        snapshot(store).await,
        before,
        "reading a corrupt bucket changed it"
    );
}

async fn every_corruption_is_named_and_contained(store: Arc<Counted>) {
    let s = setup(&store, false).await;
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let seg = m.segments[0].key.clone();
    let good = store.get(&seg).await.unwrap().bytes;

    // Truncated segment.
    store.put(&seg, good.slice(..good.len() / 2)).await.unwrap();
    probe(&store, &s, &seg, 0).await;
    // Flipped bits in the middle.
    let mut flipped = good.to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0b1010_0101;
    store.put(&seg, Bytes::from(flipped)).await.unwrap();
    probe(&store, &s, &seg, 0).await;
    // Another format version.
    let mut v2 = good.to_vec();
    v2[8..10].copy_from_slice(&9u16.to_le_bytes());
    store.put(&seg, Bytes::from(v2)).await.unwrap();
    probe(&store, &s, &seg, 0).await;
    // Not a segment at all.
    store
        .put(&seg, Bytes::from_static(b"<Error>AccessDenied</Error>"))
        .await
        .unwrap();
    probe(&store, &s, &seg, 0).await;
    store.put(&seg, good).await.unwrap();

    // Garbage manifest.
    let mkey = "_brainy/manifests/p001.json";
    let good_manifest = store.get(mkey).await.unwrap().bytes;
    store
        .put(
            mkey,
            Bytes::from_static(b"{\"version\": 1, \"segments\": \"lol\"}"),
        )
        .await
        .unwrap();
    probe(&store, &s, mkey, 1).await;
    store.put(mkey, good_manifest).await.unwrap();

    // Everything is readable again.
    let r = Reader::new(store.clone(), &s, ReaderOptions::default());
    assert_eq!(r.warm().await.unwrap(), 40);

    // Garbage config: every entry point names the key.
    let good_config = store.get(CONFIG_KEY).await.unwrap().bytes;
    store
        .put(CONFIG_KEY, Bytes::from_static(b"\x00\x01binary junk"))
        .await
        .unwrap();
    let e = read_config(store.as_ref()).await.unwrap_err().to_string();
    assert!(
        e.contains(CONFIG_KEY) && e.contains("corrupt object"),
        "{e}"
    );
    let e = shoal::coord::Cluster::join(
        store.clone(),
        shoal::coord::JoinOptions {
            env: Default::default(),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains(CONFIG_KEY), "{e}");
    store.put(CONFIG_KEY, good_config).await.unwrap();
}

/// Ids are data, never keys: hostile ids are stored and read back intact
/// and every object stays inside the partition layout.
async fn hostile_ids_never_escape_the_layout(
    store: Arc<Counted>,
    root: Option<std::path::PathBuf>,
) {
    let settings = common::create_index(store.as_ref(), 4, 2, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &settings);
    let ids = [
        "../../../../etc/passwd".to_string(),
        "/absolute".into(),
        "a/b/c".into(),
        "%2F%2e%2e".into(),
        "nul\0byte".into(),
        "_brainy/manifests/p000.json".into(),
        "_brainy/config.json".into(),
        "ключ-鍵-🔑".repeat(20),
        "x".repeat(1024),
    ];
    let recs: Vec<Record> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Record::new(id.clone(), vec![i as f32, 1.0]))
        .collect();
    w.upsert(&recs).await.unwrap();
    let r = Reader::new(store.clone(), &settings, ReaderOptions::default());
    for (i, id) in ids.iter().enumerate() {
        let got = r
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id:?} lost"));
        assert_eq!(got.vector, vec![i as f32, 1.0], "{id:?}");
    }
    for m in store.list("").await.unwrap() {
        let ok = m.key == CONFIG_KEY
            || m.key.starts_with("_brainy/manifests/")
            || m.key.starts_with("_brainy/instances/")
            || (m.key.starts_with("vectors/p00") && m.key.ends_with(".seg"));
        assert!(ok, "unexpected key {:?}", m.key);
    }
    if let Some(root) = root {
        let parent = root.parent().unwrap();
        let outside: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside.len(),
            1,
            "nothing written beside the store: {outside:?}"
        );
    }
}

#[tokio::test]
async fn hostile_ids_memory() {
    hostile_ids_never_escape_the_layout(common::memory_store(), None).await;
}

#[tokio::test]
async fn hostile_ids_local() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("store");
    let s = shoal::store::local::LocalStore::open(root.to_str().unwrap()).unwrap();
    let store = Arc::new(Counted::new(Arc::new(s)));
    hostile_ids_never_escape_the_layout(store, Some(root)).await;
}

/// Defect: a deleted partition manifest used to read as an empty
/// partition. Search silently dropped its records, `verify` called the
/// segments orphans, GC deleted them and the next write started the
/// partition again from seq 1. Every index now creates its manifests at
/// init, so a missing one is corruption everywhere, and `repair` brings
/// the data back.
async fn a_lost_manifest_is_corruption_until_repaired(store: Arc<Counted>) {
    let s = setup(&store, true).await;
    assert!(s.partitions_initialized, "create_index initializes");
    // Newer versions of six records, so the rebuilt order matters. (A
    // second writer object under the same name: a millisecond apart, as
    // one writer's segments always are.)
    tokio::time::sleep(Duration::from_millis(2)).await;
    let w = common::writer(store.clone(), &s);
    let newer: Vec<Record> = (0..6)
        .map(|i| Record::new(format!("r{i}"), vec![-(i as f32), 2.0, 0.0]))
        .collect();
    w.upsert(&newer).await.unwrap();
    let mkey = "_brainy/manifests/p000.json";
    let (lost, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert!(lost.segments.len() >= 2, "{:?}", lost.segments);
    store.delete(mkey).await.unwrap();

    // Readers fail the query naming the key, or mark the partition failed;
    // verify reports it; nothing is written.
    probe(&store, &s, mkey, 0).await;
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    let st = db.status(false).await.unwrap();
    assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
    assert_eq!(st.problems[0].key, mkey);
    let report = db.verify().await.unwrap();
    assert!(
        report.orphans.is_empty(),
        "not orphans: {:?}",
        report.orphans
    );
    let problem = report.problems.iter().find(|p| p.key == mkey).unwrap();
    assert!(problem.message.contains("shoal repair 0"), "{problem:?}");

    // GC deletes nothing under the partition, even with no grace at all.
    let before = snapshot(&store).await;
    let gc = db
        .gc(&shoal::api::GcOptions {
            grace: Some(Duration::ZERO),
            allow_unsafe_grace: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(gc.missing_manifests, vec![mkey.to_string()]);
    assert!(
        gc.deleted.iter().all(|k| !k.starts_with("vectors/p000/")),
        "{:?}",
        gc.deleted
    );
    let after = snapshot(&store).await;
    for key in lost.segments.iter().map(|e| &e.key) {
        assert_eq!(after.get(key), before.get(key), "{key} survives gc");
    }

    // Writers refuse to recreate it.
    let in_p0 = (0..40)
        .map(|i| format!("r{i}"))
        .find(|id| shoal::coord::partition_of(id, s.partition_count) == 0)
        .unwrap();
    let e = w
        .upsert(&[Record::new(in_p0.clone(), vec![9.0, 9.0, 9.0])])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), shoal::ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains(mkey), "{e}");
    assert!(store.get(mkey).await.is_err(), "the writer recreated it");

    // Repair rebuilds it in commit order; every record is back, newest wins.
    let repaired = db
        .repair(0, shoal::api::RepairOptions::default())
        .await
        .unwrap();
    assert!(repaired.written, "{repaired:?}");
    assert!(repaired.uncertain.is_empty(), "{:?}", repaired.uncertain);
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let keys = |m: &shoal::coord::manifest::Manifest| {
        m.segments.iter().map(|e| e.key.clone()).collect::<Vec<_>>()
    };
    // Segments written in the same millisecond with disjoint ids may swap
    // places (their order changes nothing); the newer versions come last.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(keys(&m)), sorted(keys(&lost)), "the same segments");
    assert_eq!(
        keys(&m).last(),
        keys(&lost).last(),
        "the newest stays newest"
    );
    let r = Reader::new(store.clone(), &s, ReaderOptions::default());
    assert_eq!(r.warm().await.unwrap(), 40);
    for i in 0..40 {
        let got = r.get(&format!("r{i}")).await.unwrap().unwrap();
        let want = if i < 6 {
            vec![-(i as f32), 2.0, 0.0]
        } else {
            vec![i as f32, 1.0, 0.5]
        };
        assert_eq!(got.vector, want, "r{i}");
    }
    assert!(common::verify(&store).await.unwrap().is_clean());
    // A second repair refuses: the manifest exists.
    let e = db
        .repair(0, shoal::api::RepairOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
}

/// What repair cannot order for certain it reports and does not write:
/// two writers' different versions of one id written moments apart, and a
/// compaction output with segments older than it (inputs or later
/// commits?). `force` writes the creation order and says what it guessed.
#[tokio::test]
async fn repair_reports_what_it_cannot_order() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 1, 3, Metric::Dot).await;
    let clock: shoal::coord::clock::DynClock = Arc::new(shoal::coord::clock::SystemClock);
    let writer = |name: &str| {
        shoal::writer::Writer::new(store.clone(), &s, name, clock.clone(), Default::default())
    };
    let (a, b) = (writer("a"), writer("b"));
    a.upsert(&[Record::new("x", vec![1.0, 0.0, 0.0])])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // distinct creation times
    b.upsert(&[Record::new("x", vec![2.0, 0.0, 0.0])])
        .await
        .unwrap();
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    let mkey = "_brainy/manifests/p000.json";
    store.delete(mkey).await.unwrap();
    let r = db
        .repair(0, shoal::api::RepairOptions::default())
        .await
        .unwrap();
    assert!(!r.written && r.refused.is_some(), "{r:?}");
    assert_eq!(r.uncertain.len(), 1, "{:?}", r.uncertain);
    assert!(r.uncertain[0].contains("\"x\""), "{:?}", r.uncertain);
    assert!(store.get(mkey).await.is_err(), "nothing written");
    // Identical versions need no order.
    let repaired = {
        let store2 = common::memory_store();
        let s2 = common::create_index(store2.as_ref(), 1, 3, Metric::Dot).await;
        for name in ["a", "b"] {
            let w = shoal::writer::Writer::new(
                store2.clone(),
                &s2,
                name,
                clock.clone(),
                Default::default(),
            );
            w.upsert(&[Record::new("x", vec![1.0, 0.0, 0.0])])
                .await
                .unwrap();
        }
        store2.delete(mkey).await.unwrap();
        shoal::compact::repair::repair(store2.as_ref(), &s2, 0, Default::default())
            .await
            .unwrap()
    };
    assert!(
        repaired.written && repaired.uncertain.is_empty(),
        "{repaired:?}"
    );
    // --force writes the creation order.
    let forced = db
        .repair(
            0,
            shoal::api::RepairOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(forced.written && forced.uncertain.len() == 1, "{forced:?}");
    let got = Reader::new(store.clone(), &s, ReaderOptions::default())
        .get("x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.vector,
        vec![2.0, 0.0, 0.0],
        "creation order: b's is newer"
    );

    // A compaction output, with its (retired, not yet collected) inputs.
    let out = shoal::compact::compact_partition(
        store.as_ref(),
        &s,
        0,
        "c",
        &clock,
        &shoal::compact::CompactOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(out, shoal::compact::Outcome::Compacted(_)),
        "{out:?}"
    );
    store.delete(mkey).await.unwrap();
    let r = db
        .repair(0, shoal::api::RepairOptions::default())
        .await
        .unwrap();
    assert!(!r.written, "{r:?}");
    assert!(
        r.uncertain.iter().any(|u| u.contains("compaction output")),
        "{:?}",
        r.uncertain
    );
}

/// A lost manifest of a partition the index shards cover: repair refuses
/// by default (the segments found may include ones the indexer retired,
/// which as tail would hide newer shard rows); forced, it lists what it
/// found above the watermark, so readers and the next commits see them.
#[tokio::test]
async fn repair_of_an_indexed_partition_stays_above_the_watermark() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 1, 3, Metric::Dot).await;
    let w = common::writer(store.clone(), &s);
    w.upsert(&[Record::new("x", vec![1.0, 0.0, 0.0])])
        .await
        .unwrap();
    w.upsert(&[Record::new("x", vec![2.0, 0.0, 0.0])])
        .await
        .unwrap();
    common::index_now(store.as_ref(), &s).await;
    w.upsert(&[Record::new("y", vec![0.0, 1.0, 0.0])])
        .await
        .unwrap(); // seq 3: the tail
    let mkey = "_brainy/manifests/p000.json";
    store.delete(mkey).await.unwrap();
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    let r = db
        .repair(0, shoal::api::RepairOptions::default())
        .await
        .unwrap();
    assert!(!r.written, "{r:?}");
    assert!(
        r.refused
            .as_deref()
            .unwrap_or("")
            .contains("index shards cover"),
        "{r:?}"
    );
    let forced = db
        .repair(
            0,
            shoal::api::RepairOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(forced.written, "{forced:?}");
    assert!(
        forced.segments.iter().all(|e| e.seq > 2),
        "{:?}",
        forced.segments
    );
    // Every segment found (the retired x versions too, in creation order)
    // is tail now: x is its newest version, y is found, and a new commit
    // is seen.
    w.upsert(&[Record::new("z", vec![0.0, 0.0, 1.0])])
        .await
        .unwrap();
    let reader = Reader::new(store.clone(), &s, ReaderOptions::default());
    for (id, v) in [("x", 2.0), ("y", 1.0), ("z", 1.0)] {
        let got = reader
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} is gone"));
        assert!(got.vector.contains(&v), "{id}: {:?}", got.vector);
    }
}
