//! Compaction, ANN indexes and GC on every backend.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shoal::compact::gc::{gc, GcOptions};
use shoal::compact::{compact_all, compact_partition, select_prefix, CompactOptions, Outcome};
use shoal::coord::clock::{Clock, DynClock, ManualClock, SystemClock};
use shoal::coord::config::{update_config, IndexSettings};
use shoal::coord::manifest::read_manifest;
use shoal::coord::{Metric, Settings};
use shoal::reader::{Reader, ReaderOptions, SearchRequest, SearchResponse};
use shoal::record::Record;
use shoal::store::faults::WriteFaults;
use shoal::store::{Counted, ObjectStore};
use shoal::writer::{BatchWriter, BatchWriterOptions, Writer};

backend_tests!(
    exact_results_are_identical_before_and_after_compaction,
    a_writer_committing_during_compaction_survives_and_stays_newest,
    racing_compactors_one_wins_nothing_lost,
    gc_keeps_referenced_and_young_deletes_old_orphans_and_expired_retirees,
    gc_keeps_a_batch_object_while_any_partition_needs_it,
);

/// One write to two partitions is one batch object holding both sections.
/// Compacting one partition retires its section; GC must keep the object
/// past that partition's grace while the other still references it, and
/// delete it only once every partition has let go (and the grace passed).
async fn gc_keeps_a_batch_object_while_any_partition_needs_it(store: Arc<Counted>) {
    let (w, s) = setup(&store, 2, "none", Metric::Euclidean).await;
    let recs: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("b{i}"), vec![i as f32; DIMS]))
        .collect();
    w.upsert(&recs[..20]).await.unwrap();
    w.upsert(&recs[20..]).await.unwrap();
    let (m0, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let (m1, _) = read_manifest(store.as_ref(), 1).await.unwrap().unwrap();
    let batches: Vec<String> = m0.segments.iter().map(|e| e.key.clone()).collect();
    assert_eq!(batches.len(), 2);
    assert!(batches.iter().all(|k| k.contains("-b")), "{batches:?}");
    assert_eq!(
        batches,
        m1.segments
            .iter()
            .map(|e| e.key.clone())
            .collect::<Vec<_>>(),
        "both partitions' sections in the same two objects"
    );
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let dyn_clock: DynClock = clock.clone();
    let force = CompactOptions {
        force: true,
        ..Default::default()
    };
    let compact = |p: u32| compact_partition(store.as_ref(), &s, p, "c", &dyn_clock, &force);
    assert!(matches!(compact(0).await.unwrap(), Outcome::Compacted(_)));
    clock.advance(Duration::from_secs(16 * 60));
    let r = gc(store.as_ref(), &s, &dyn_clock, &GcOptions::default())
        .await
        .unwrap();
    for k in &batches {
        assert!(
            !r.deleted.contains(k),
            "{k} deleted while partition 1 needs it: {r:?}"
        );
        assert!(store.head(k).await.is_ok(), "{k}");
    }
    let (m0, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert!(
        m0.retired.is_empty(),
        "partition 0's expired retirements are trimmed"
    );
    let exact = SearchRequest {
        exact: true,
        ..SearchRequest::new(vec![3.0; DIMS], 40)
    };
    let fresh = Reader::new(store.clone(), &s, ReaderOptions::default());
    assert_eq!(fresh.search(&exact).await.unwrap().results.len(), 40);
    // Partition 1 lets go too; after the grace both objects go.
    assert!(matches!(compact(1).await.unwrap(), Outcome::Compacted(_)));
    let r = gc(store.as_ref(), &s, &dyn_clock, &GcOptions::default())
        .await
        .unwrap();
    assert!(
        batches.iter().all(|k| !r.deleted.contains(k)),
        "retired just now: {r:?}"
    );
    clock.advance(Duration::from_secs(16 * 60));
    let r = gc(store.as_ref(), &s, &dyn_clock, &GcOptions::default())
        .await
        .unwrap();
    for k in &batches {
        assert!(
            r.deleted.contains(k),
            "{k} kept after every partition let go: {r:?}"
        );
        assert!(store.head(k).await.is_err(), "{k}");
    }
    let fresh = Reader::new(store.clone(), &s, ReaderOptions::default());
    assert_eq!(fresh.search(&exact).await.unwrap().results.len(), 40);
}

const DIMS: usize = 16;
const DOMAINS: [&str; 4] = ["a", "b", "c", "d"];

async fn setup(
    store: &Arc<Counted>,
    partitions: u32,
    kind: &str,
    metric: Metric,
) -> (Writer, Settings) {
    common::create_index(store.as_ref(), partitions, DIMS as u32, metric).await;
    let clock: DynClock = Arc::new(SystemClock);
    let kind: shoal::vocab::AnnKind = kind.parse().unwrap();
    let cfg = update_config(store.as_ref(), clock.as_ref(), move |c| {
        c.settings.index = Some(IndexSettings {
            kind,
            min_records: 500,
            compact_min_segments: 3,
            ef_construction: 40,
            ef_search: 40,
            ..Default::default()
        });
        Ok(())
    })
    .await
    .unwrap();
    (common::writer(store.clone(), &cfg.settings), cfg.settings)
}

fn rand_vec(rng: &mut StdRng) -> Vec<f32> {
    (0..DIMS).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn reader(store: &Arc<Counted>, s: &Settings) -> Reader {
    Reader::new(
        store.clone(),
        s,
        ReaderOptions {
            max_staleness: Duration::ZERO,
            cache_bytes: 256 << 20,
            ..Default::default()
        },
    )
}

fn ids_scores(r: &SearchResponse) -> Vec<(String, f32)> {
    r.results.iter().map(|h| (h.id.clone(), h.score)).collect()
}

async fn load(store: &Arc<Counted>, w: &Writer, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let bw = BatchWriter::new(
        w.clone(),
        BatchWriterOptions {
            batch_size: 700,
            ..Default::default()
        },
    );
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            Record::new(format!("id{i:05}"), rand_vec(&mut rng))
                .with_metadata(json!({"domain": DOMAINS[i % 4], "n": i % 50}))
        })
        .collect();
    bw.add(&recs).await.unwrap();
    bw.close().await.unwrap();
    let _ = store;
    (0..20).map(|_| rand_vec(&mut rng)).collect()
}

async fn exact_results_are_identical_before_and_after_compaction(store: Arc<Counted>) {
    let (w, s) = setup(&store, 4, "ivf", Metric::Cosine).await;
    let queries = load(&store, &w, 20_000, 1).await;
    let mut rng = StdRng::seed_from_u64(2);
    // Updates and deletes mixed in.
    let upd: Vec<Record> = (0..1500)
        .map(|j| Record::new(format!("id{:05}", j * 13 % 20_000), rand_vec(&mut rng)))
        .collect();
    w.upsert(&upd[..750]).await.unwrap();
    w.upsert(&upd[750..]).await.unwrap();
    let dels: Vec<String> = (0..800)
        .map(|j| format!("id{:05}", j * 23 % 20_000))
        .collect();
    w.delete(&dels).await.unwrap();
    let filters = [
        None,
        Some(json!({"domain": "b"})),
        Some(json!({"n": {"$lt": 2}})),
    ];
    let mut before = Vec::new();
    let r1 = reader(&store, &s);
    for (i, q) in queries.iter().enumerate() {
        let req = SearchRequest {
            exact: true,
            filter: filters[i % 3].clone(),
            ..SearchRequest::new(q.clone(), 20)
        };
        before.push(ids_scores(&r1.search(&req).await.unwrap()));
    }
    let clock: DynClock = Arc::new(SystemClock);
    let outcomes = compact_all(
        store.as_ref(),
        &s,
        "compactor",
        &clock,
        &CompactOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Compacted(_))),
        "{outcomes:?}"
    );
    for p in 0..4 {
        let (m, _) = read_manifest(store.as_ref(), p).await.unwrap().unwrap();
        assert!(
            m.segments
                .iter()
                .all(|e| e.indexed || (e.tombstones > 0 && e.tombstones == e.records)),
            "partition {p}: {:?}",
            m.segments
        );
        assert!(!m.retired.is_empty());
    }
    // A fresh reader and the old one (which refreshes) both agree.
    for r in [reader(&store, &s), r1] {
        for (i, q) in queries.iter().enumerate() {
            let req = SearchRequest {
                exact: true,
                filter: filters[i % 3].clone(),
                ..SearchRequest::new(q.clone(), 20)
            };
            let after = ids_scores(&r.search(&req).await.unwrap());
            assert_eq!(after, before[i], "query {i} changed by compaction");
            // IVF probing every cluster is exact too.
            let all = SearchRequest {
                exact: false,
                nprobe: Some(100_000),
                ..req.clone()
            };
            assert_eq!(
                ids_scores(&r.search(&all).await.unwrap()),
                before[i],
                "query {i} ivf/all"
            );
            // A selective filter falls back to exact over the matches.
            if i % 3 == 2 {
                let ivf = SearchRequest {
                    exact: false,
                    nprobe: Some(1),
                    ..req
                };
                assert_eq!(
                    ids_scores(&r.search(&ivf).await.unwrap()),
                    before[i],
                    "query {i} selective"
                );
            }
        }
    }
    let report = common::verify(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

async fn a_writer_committing_during_compaction_survives_and_stays_newest(store: Arc<Counted>) {
    let (w, s) = setup(&store, 1, "ivf", Metric::Euclidean).await;
    load(&store, &w, 3_000, 3).await;
    let faults = Arc::new(WriteFaults::new(store.clone(), "_brainy/manifests/"));
    faults.close_gate();
    let compactor = {
        let (f, s) = (faults.clone(), s.clone());
        tokio::spawn(async move {
            let clock: DynClock = Arc::new(SystemClock);
            compact_partition(
                f.as_ref(),
                &s,
                0,
                "c",
                &clock,
                &CompactOptions {
                    force: true,
                    ..Default::default()
                },
            )
            .await
        })
    };
    wait_for(|| faults.waiting.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    // While the compactor waits to commit, a writer updates and adds.
    let newest = vec![42.0f32; DIMS];
    w.upsert(&[
        Record::new("id00007", newest.clone()),
        Record::new("brand-new", vec![1.0; DIMS]),
    ])
    .await
    .unwrap();
    faults.open_gate(100);
    let outcome = compactor.await.unwrap().unwrap();
    assert!(
        matches!(outcome, Outcome::Compacted(_)),
        "rebased, not given up: {outcome:?}"
    );
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let last = m.segments.last().unwrap();
    assert!(
        !last.indexed && last.records == 2,
        "the writer's segment is kept, last: {last:?}"
    );
    assert!(m.segments[0].indexed);
    let r = reader(&store, &s);
    assert_eq!(
        r.get("id00007").await.unwrap().unwrap().vector,
        newest,
        "the writer's version stays newest"
    );
    assert!(r.get("brand-new").await.unwrap().is_some());
    assert_eq!(r.warm().await.unwrap(), 3_001);
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn racing_compactors_one_wins_nothing_lost(store: Arc<Counted>) {
    let (w, s) = setup(&store, 1, "ivf", Metric::Dot).await;
    load(&store, &w, 2_000, 4).await;
    let faults = Arc::new(WriteFaults::new(store.clone(), "_brainy/manifests/"));
    faults.close_gate();
    let spawn = |name: &'static str| {
        let (f, s) = (faults.clone(), s.clone());
        tokio::spawn(async move {
            let clock: DynClock = Arc::new(SystemClock);
            compact_partition(
                f.as_ref(),
                &s,
                0,
                name,
                &clock,
                &CompactOptions {
                    force: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        })
    };
    let (a, b) = (spawn("a"), spawn("b"));
    wait_for(|| faults.waiting.load(std::sync::atomic::Ordering::SeqCst) == 2).await;
    faults.open_gate(100);
    let outcomes = [a.await.unwrap(), b.await.unwrap()];
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Compacted(_)))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Superseded))
        .count();
    assert_eq!((won, lost), (1, 1), "{outcomes:?}");
    let r = reader(&store, &s);
    assert_eq!(
        r.warm().await.unwrap(),
        2_000,
        "no record lost or duplicated"
    );
    let resp = r
        .search(&SearchRequest {
            exact: true,
            ..SearchRequest::new(vec![1.0; DIMS], 1000)
        })
        .await
        .unwrap();
    let ids: BTreeSet<&str> = resp.results.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), 1000, "no duplicate ids in results");
    // The loser's outputs are orphans that verify reports and GC collects.
    let v = common::verify(&store).await.unwrap();
    assert!(v.is_clean() && !v.orphans.is_empty(), "{v:?}");
}

async fn gc_keeps_referenced_and_young_deletes_old_orphans_and_expired_retirees(
    store: Arc<Counted>,
) {
    let (w, s) = setup(&store, 1, "none", Metric::Euclidean).await;
    load(&store, &w, 1_000, 5).await;
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let dyn_clock: DynClock = clock.clone();
    // A reader holding the pre-compaction manifest.
    let old_reader = Reader::new(
        store.clone(),
        &s,
        ReaderOptions {
            max_staleness: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    old_reader.warm().await.unwrap();
    let (before, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    // An orphan: a segment PUT whose commit never happened.
    store
        .put("vectors/p000/orphan.seg", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    let out = compact_partition(
        store.as_ref(),
        &s,
        0,
        "c",
        &dyn_clock,
        &CompactOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(out, Outcome::Compacted(_)));
    let opts = GcOptions::default();
    // Right away: nothing is old enough.
    let r = gc(store.as_ref(), &s, &dyn_clock, &opts).await.unwrap();
    assert!(r.deleted.is_empty(), "{r:?}");
    assert_eq!(
        r.kept_young, 1,
        "the young orphan (retired segments count as kept)"
    );
    // A query on the old manifest still finds its (retired) segments.
    let q = SearchRequest {
        exact: true,
        consistency: shoal::reader::Consistency::Eventual,
        ..SearchRequest::new(vec![0.5; DIMS], 5)
    };
    let fresh = Reader::new(store.clone(), &s, ReaderOptions::default());
    assert_eq!(
        ids_scores(&old_reader.search(&q).await.unwrap()),
        ids_scores(&fresh.search(&q).await.unwrap())
    );
    // After the grace period: a dry run reports, a real run deletes.
    clock.advance(Duration::from_secs(16 * 60));
    let dry = gc(
        store.as_ref(),
        &s,
        &dyn_clock,
        &GcOptions {
            dry_run: true,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.deleted.len(), before.segments.len() + 1);
    assert!(
        store.head("vectors/p000/orphan.seg").await.is_ok(),
        "dry run deletes nothing"
    );
    let done = gc(store.as_ref(), &s, &dyn_clock, &opts).await.unwrap();
    assert_eq!(done.deleted, dry.deleted);
    assert!(store.head("vectors/p000/orphan.seg").await.is_err());
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert!(m.retired.is_empty(), "expired retirees are cleared");
    for e in &m.segments {
        assert!(
            store.head(&e.key).await.is_ok(),
            "gc deleted a referenced segment {}",
            e.key
        );
    }
    // The old reader's next query refreshes (its segments are gone) and works.
    let q = SearchRequest {
        consistency: shoal::reader::Consistency::Eventual,
        ..q
    };
    assert_eq!(old_reader.search(&q).await.unwrap().results.len(), 5);
}

// ---- memory only ----

/// A GC host whose clock runs an hour ahead of the store's must not take a
/// segment written a moment ago for an hour old: a writer's segment not
/// yet committed survives, and only what is older than the grace by the
/// store's own clock goes.
#[tokio::test]
async fn gc_on_a_host_whose_clock_runs_ahead_of_the_store_keeps_young_objects() {
    // The store's clock: an hour behind this host's, moved by hand.
    let store_clock = Arc::new(ManualClock::new(
        SystemClock.now() - Duration::from_secs(3600),
    ));
    let time = {
        let c = store_clock.clone();
        Arc::new(move || shoal::coord::clock::Clock::now(c.as_ref()))
    };
    let store = Arc::new(Counted::new(Arc::new(
        shoal::store::memory::MemoryStore::unique().with_time(time),
    )));
    let (w, s) = setup(&store, 1, "none", Metric::Euclidean).await;
    load(&store, &w, 100, 1).await;
    let young = "vectors/p000/uncommitted.seg";
    store
        .put(young, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    let host: DynClock = Arc::new(SystemClock);
    // The preview judges ages as a real run does (issue 28 F15).
    let preview = GcOptions {
        dry_run: true,
        ..Default::default()
    };
    let r = gc(store.as_ref(), &s, &host, &preview).await.unwrap();
    assert!(
        r.deleted.is_empty(),
        "the dry run lists a young object: {r:?}"
    );
    let r = gc(store.as_ref(), &s, &host, &GcOptions::default())
        .await
        .unwrap();
    assert!(r.deleted.is_empty(), "{r:?}");
    assert!(
        store.head(young).await.is_ok(),
        "gc deleted a young segment"
    );
    // Past the grace by the store's clock, the orphan goes.
    store_clock.advance(Duration::from_secs(16 * 60));
    let r = gc(store.as_ref(), &s, &host, &preview).await.unwrap();
    assert_eq!(r.deleted, vec![young.to_string()], "{r:?}");
    assert!(store.head(young).await.is_ok(), "a dry run deletes nothing");
    let r = gc(store.as_ref(), &s, &host, &GcOptions::default())
        .await
        .unwrap();
    assert_eq!(r.deleted, vec![young.to_string()], "{r:?}");
    assert!(
        store.list("_brainy/probe/").await.unwrap().is_empty(),
        "the clock probe cleans up"
    );
}

#[tokio::test]
async fn compaction_drops_shadowed_versions_and_keeps_tombstones() {
    let store = common::memory_store();
    let (w, s) = setup(&store, 1, "none", Metric::Euclidean).await;
    w.upsert(&[
        Record::new("a", vec![1.0; DIMS]),
        Record::new("b", vec![2.0; DIMS]),
    ])
    .await
    .unwrap(); // seq 1
    w.delete(&["a".into()]).await.unwrap(); // seq 2
    w.upsert(&[Record::new("c", vec![3.0; DIMS])])
        .await
        .unwrap(); // seq 3
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    // The selection is always a prefix in seq order.
    let keys = |v: Vec<shoal::coord::manifest::SegmentEntry>| {
        v.into_iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    assert_eq!(keys(select_prefix(&m, Some(2))), vec![1, 2]);
    assert_eq!(keys(select_prefix(&m, Some(1))), vec![1]);
    assert_eq!(keys(select_prefix(&m, None)), vec![1, 2, 3]);
    let clock: DynClock = Arc::new(SystemClock);
    // Prefix {1}: a's old version is the newest *in the prefix*, so it is
    // kept, and the tombstone (seq 2, outside) still hides it.
    let o = compact_partition(
        store.as_ref(),
        &s,
        0,
        "c",
        &clock,
        &CompactOptions {
            force: true,
            upto_seq: Some(1),
        },
    )
    .await
    .unwrap();
    let Outcome::Compacted(r) = o else {
        panic!("{o:?}")
    };
    assert_eq!((r.records_in, r.records_out), (2, 2));
    let rd = reader(&store, &s);
    assert!(rd.get("a").await.unwrap().is_none(), "a must stay deleted");
    // Prefix {1, 2}: the version the tombstone hides goes; the tombstone
    // stays (it may hide a row of an index shard), in a segment of its own.
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let upto = m.segments[1].seq;
    let o = compact_partition(
        store.as_ref(),
        &s,
        0,
        "c",
        &clock,
        &CompactOptions {
            force: true,
            upto_seq: Some(upto),
        },
    )
    .await
    .unwrap();
    let Outcome::Compacted(r) = o else {
        panic!("{o:?}")
    };
    assert_eq!(
        (r.records_in, r.records_out, r.dropped),
        (3, 2, 1),
        "a's version dropped, b and a's tombstone kept"
    );
    assert!(rd.get("a").await.unwrap().is_none(), "a never reappears");
    assert!(rd.get("b").await.unwrap().is_some() && rd.get("c").await.unwrap().is_some());
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert_eq!(
        m.segments
            .iter()
            .map(|e| (e.seq, e.records, e.tombstones))
            .collect::<Vec<_>>(),
        vec![(2, 1, 0), (2, 1, 1), (3, 1, 0)],
        "outputs take the prefix's seq; the tombstone has a segment of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_segments_search_well_and_filters_keep_recall() {
    let store = common::memory_store();
    let (w, s) = setup(&store, 1, "hnsw", Metric::Cosine).await;
    let queries = load(&store, &w, 3_000, 6).await;
    let clock: DynClock = Arc::new(SystemClock);
    compact_all(
        store.as_ref(),
        &s,
        "c",
        &clock,
        &CompactOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert!(m.segments.iter().all(|e| e.indexed));
    let r = reader(&store, &s);
    let mut recall = 0.0;
    for q in &queries {
        let exact = r
            .search(&SearchRequest {
                exact: true,
                ..SearchRequest::new(q.clone(), 10)
            })
            .await
            .unwrap();
        let ann = r.search(&SearchRequest::new(q.clone(), 10)).await.unwrap();
        let want: BTreeSet<_> = exact.results.iter().map(|h| &h.id).collect();
        recall += ann.results.iter().filter(|h| want.contains(&h.id)).count() as f64 / 10.0;
        // A selective filter is answered exactly.
        let f = Some(json!({"n": 7}));
        let e = r
            .search(&SearchRequest {
                exact: true,
                filter: f.clone(),
                ..SearchRequest::new(q.clone(), 10)
            })
            .await
            .unwrap();
        let a = r
            .search(&SearchRequest {
                filter: f,
                ..SearchRequest::new(q.clone(), 10)
            })
            .await
            .unwrap();
        assert_eq!(ids_scores(&a), ids_scores(&e));
    }
    let recall = recall / queries.len() as f64;
    assert!(recall >= 0.9, "hnsw recall@10 {recall}");
}

/// A writer handle on `partitions` 2-d partitions, heartbeats left to
/// the test.
fn writer_opts(partitions: u32) -> shoal::OpenOptions {
    shoal::OpenOptions {
        cluster: shoal::api::JoinOptions {
            settings: shoal::api::RequestedSettings {
                partition_count: Some(partitions),
                dimensions: Some(2),
                ..Default::default()
            },
            role: Some(shoal::api::Role::Writer),
            background_heartbeat: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Defect: manifests grew without bound between GC runs (every compaction
/// added retired entries that only GC removed, and every commit rewrote
/// them all). Many one-record writes with the writer's compaction after
/// each and the clock moving on, no GC: the manifest must level off at what
/// one grace period of retirements needs.
#[tokio::test]
async fn a_busy_partition_keeps_a_small_manifest_without_gc() {
    let store = common::memory_store();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut opts = writer_opts(1);
    opts.cluster.clock = clock.clone();
    let db = shoal::Db::open_store(store.clone(), opts).await.unwrap();
    let grace = db.settings().gc_grace_seconds;
    let step = 10; // seconds per write: 90 writes per grace period
    let mut sizes = Vec::new();
    for i in 0..400 {
        db.upsert(&[Record::new(format!("r{i}"), vec![1.0, i as f32])])
            .await
            .unwrap();
        db.compact_dirty().await;
        clock.advance(Duration::from_secs(step));
        if i % 100 == 99 {
            let bytes = store
                .get("_brainy/manifests/p000.json")
                .await
                .unwrap()
                .bytes;
            let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
            sizes.push((bytes.len(), m.retired.len()));
        }
    }
    // One grace period retires its 90 writer segments plus the compaction
    // outputs that merged them (one per ~8).
    let per_grace = (grace / step) as usize * 5 / 4;
    for &(bytes, retired) in &sizes {
        assert!(
            retired <= per_grace,
            "retired entries beyond one grace period's worth ({per_grace}): {sizes:?}"
        );
        assert!(bytes < 20_000, "{sizes:?}");
    }
    let (first, last) = (sizes[1].0 as f64, sizes[3].0 as f64);
    assert!(
        last < first * 1.3,
        "the manifest keeps growing after the first grace period: {sizes:?}"
    );
    assert_eq!(db.status(true).await.unwrap().totals.live, Some(400));
    db.close().await.unwrap();
}

/// Defect: under `shoal serve` storage grew forever: writers compacted
/// but nothing ran GC outside the compactor Lambda. Many one-record
/// writes on a writer with background compaction (and so background
/// GC), the clock moving on: after the first grace period the bucket's
/// object count and manifest bytes level off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_gc_keeps_storage_flat_under_many_tiny_writes() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    // The store stamps objects with the same clock, as S3 follows real
    // time: GC's grace compares the two.
    let time = {
        let c = clock.clone();
        Arc::new(move || shoal::coord::clock::Clock::now(c.as_ref()))
    };
    let store = Arc::new(Counted::new(Arc::new(
        shoal::store::memory::MemoryStore::unique().with_time(time),
    )));
    let mut opts = shoal::OpenOptions {
        compact_every: Some(Duration::from_millis(5)),
        gc_every: Some(Duration::from_millis(5)),
        ..writer_opts(2)
    };
    opts.cluster.clock = clock.clone();
    let db = shoal::Db::open_store(store.clone(), opts).await.unwrap();
    let grace = db.settings().gc_grace_seconds;
    let step = 10; // seconds per write: 90 writes per grace period
    let mut samples = Vec::new();
    for i in 0..600u32 {
        db.upsert(&[Record::new(format!("r{i}"), vec![1.0, i as f32])])
            .await
            .unwrap();
        db.compact_dirty().await;
        clock.advance(Duration::from_secs(step));
        if i % 30 == 29 {
            // What the background task does every 30 s: move old tails
            // into index shards.
            db.index(false).await.unwrap();
        }
        if i % 10 == 9 {
            // Let the background task run a pass or two.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let objects = store.list("").await.unwrap();
            let manifest_bytes: u64 = objects
                .iter()
                .filter(|o| o.key.starts_with("_brainy/manifests/"))
                .map(|o| o.size)
                .sum();
            samples.push((objects.len(), manifest_bytes));
        }
    }
    assert!(
        grace / step < 100,
        "the first sample is past one grace period"
    );
    let (first, last) = (samples[1], samples[5]);
    assert!(
        (last.0 as f64) < first.0 as f64 * 1.3,
        "objects keep growing after the first grace period: {samples:?}"
    );
    assert!(
        (last.1 as f64) < first.1 as f64 * 1.3,
        "manifest bytes keep growing: {samples:?}"
    );
    // Without GC every write leaves its segment behind: 600 and more.
    assert!(last.0 < 250, "{samples:?}");
    assert_eq!(db.status(true).await.unwrap().totals.live, Some(600));
    db.close().await.unwrap();
}

/// A writer over 4 partitions that has committed `n` one-record upserts
/// (one segment each).
async fn one_record_writes(store: &Arc<Counted>, n: u32) -> shoal::Db {
    let db = shoal::Db::open_store(store.clone(), writer_opts(4))
        .await
        .unwrap();
    for i in 0..n {
        db.upsert(&[Record::new(format!("r{i}"), vec![1.0, i as f32])])
            .await
            .unwrap();
    }
    db
}

async fn segment_count(store: &Arc<Counted>, p: u32) -> usize {
    let (m, _) = read_manifest(store.as_ref(), p).await.unwrap().unwrap();
    m.segments.len()
}

async fn segment_counts(store: &Arc<Counted>) -> Vec<usize> {
    let mut counts = Vec::new();
    for p in 0..4 {
        counts.push(segment_count(store, p).await);
    }
    counts
}

/// Defect: the compactor Lambda saved its cursor only at the end of an
/// invocation, so a partition whose compaction outran the time left was
/// retried first every time and stalled every other partition (and GC)
/// forever. Here partition 2's commit never returns; invocations with a
/// fraction of a second each still compact every other partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compactor_with_little_time_never_stalls_on_one_partition() {
    let faults = Arc::new(WriteFaults::new(
        Arc::new(shoal::store::memory::MemoryStore::unique()),
        "_brainy/manifests/p002.json",
    ));
    let store = Arc::new(Counted::new(faults.clone()));
    let db = one_record_writes(&store, 120).await;
    let segments = |p: u32| segment_count(&store, p);
    let before = segment_counts(&store).await;
    assert!(before.iter().all(|&n| n >= 10), "{before:?}");
    faults.hang_writes(true);
    for _ in 0..3 {
        let round = tokio::time::timeout(
            Duration::from_secs(20),
            db.compact_round(
                std::time::Instant::now() + Duration::from_millis(500),
                Duration::from_millis(50),
                &GcOptions::default(),
            ),
        )
        .await
        .expect("an invocation returns within its time");
        let round = round.unwrap();
        assert!(round.partitions_visited >= 1, "{round:?}");
    }
    for p in [0u32, 1, 3] {
        let after = segments(p).await;
        assert!(
            after < before[p as usize],
            "partition {p}: {after} segments, {before:?}"
        );
    }
    assert_eq!(segments(2).await, before[2], "its commit never returns");
    let cursor = shoal::coord::cursor::read_cursor(store.as_ref())
        .await
        .unwrap();
    assert!(
        cursor.deferred.get(&2).is_some_and(|&n| n >= 1),
        "{cursor:?}"
    );
}

/// A partition whose whole compaction takes longer than an invocation has
/// (its segment reads are slow) is compacted in pieces: every invocation
/// with a short budget still makes progress on it, and on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compactor_with_little_time_compacts_a_slow_partition_in_pieces() {
    let faults = Arc::new(WriteFaults::new(
        Arc::new(shoal::store::memory::MemoryStore::unique()),
        "no-write-faults",
    ));
    let store = Arc::new(Counted::new(faults.clone()));
    let db = one_record_writes(&store, 160).await;
    let segments = |p: u32| segment_count(&store, p);
    let before = segment_counts(&store).await;
    assert!(before[2] >= 25, "{before:?}");
    // Reading partition 2's segments whole takes 25 x 40 ms = 1 s or more;
    // an invocation has 600 ms.
    faults.slow_reads("p002", Duration::from_millis(40)); // segments and manifest
    let mut shrinking = vec![before[2]];
    for _ in 0..12 {
        db.compact_round(
            std::time::Instant::now() + Duration::from_millis(600),
            Duration::from_millis(50),
            &GcOptions::default(),
        )
        .await
        .unwrap();
        shrinking.push(segments(2).await);
    }
    for p in [0u32, 1, 3] {
        assert!(segments(p).await < before[p as usize], "partition {p}");
    }
    // The first invocations learn how large a piece fits; from then on
    // (nearly) every invocation commits one.
    let progressed = shrinking.windows(2).filter(|w| w[1] < w[0]).count();
    let last = *shrinking.last().unwrap();
    assert!(
        progressed >= 5 && last + 8 <= before[2],
        "partition 2 must shrink in pieces; segments after each invocation: {shrinking:?}"
    );
    let cursor = shoal::coord::cursor::read_cursor(store.as_ref())
        .await
        .unwrap();
    assert!(cursor.deferred.contains_key(&2), "{cursor:?}");
    assert_eq!(db.status(true).await.unwrap().totals.live, Some(160));
    db.close().await.unwrap();
}

/// A host whose wall clock runs `ahead` seconds ahead of the store's
/// (negative: behind). Its own clock, so shoal may measure and correct it.
#[derive(Debug)]
struct SkewedHost {
    ahead: i64,
}

impl Clock for SkewedHost {
    fn now(&self) -> std::time::SystemTime {
        let by = Duration::from_secs(self.ahead.unsigned_abs());
        if self.ahead >= 0 {
            SystemClock.now() + by
        } else {
            SystemClock.now() - by
        }
    }
    fn is_host_clock(&self) -> bool {
        true
    }
}

/// Issue 28 F11: retirements are stamped and pruned by the store's clock,
/// never by one host's against another's. A compactor an hour behind
/// retires segments; a writer an hour ahead committing next does not
/// prune them from the manifest (which would let a writer whose commit
/// answer was lost re-append one of them over newer data), and GC on a
/// correct host keeps them for the grace period.
#[tokio::test]
async fn retirements_are_judged_by_the_stores_clock_not_by_skewed_hosts() {
    let store = common::memory_store();
    let (w, s) = setup(&store, 1, "none", Metric::Euclidean).await;
    for round in 0..4 {
        load(&store, &w, 50, round).await;
    }
    let behind: DynClock = Arc::new(SkewedHost { ahead: -3600 });
    let opts = CompactOptions {
        force: true,
        ..Default::default()
    };
    compact_partition(store.as_ref(), &s, 0, "slow-compactor", &behind, &opts)
        .await
        .unwrap();
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let retired: Vec<String> = m.retired.iter().map(|r| r.key.clone()).collect();
    assert!(retired.len() >= 4, "compaction retired its inputs: {m:?}");
    let ahead: DynClock = Arc::new(SkewedHost { ahead: 3600 });
    let fast = Writer::new(store.clone(), &s, "fast-writer", ahead, Default::default());
    fast.upsert(&[Record::new("late", vec![0.5; DIMS])])
        .await
        .unwrap();
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let still: Vec<String> = m.retired.iter().map(|r| r.key.clone()).collect();
    for k in &retired {
        assert!(
            still.contains(k),
            "{k} was pruned from the retired list at once"
        );
    }
    let host: DynClock = Arc::new(SystemClock);
    let r = gc(store.as_ref(), &s, &host, &GcOptions::default())
        .await
        .unwrap();
    let early: Vec<&String> = r.deleted.iter().filter(|k| retired.contains(k)).collect();
    assert!(
        early.is_empty(),
        "GC deleted just-retired segments: {early:?}"
    );
    for k in &retired {
        assert!(store.head(k).await.is_ok(), "{k} is gone");
    }
}

/// Issue 28 F5: one unparsable partition manifest does not stop GC
/// everywhere: GC collects the other partitions, deletes nothing the
/// unreadable manifest governs, and reports it.
#[tokio::test]
async fn gc_goes_on_past_an_unreadable_manifest_and_reports_it() {
    let store = common::memory_store();
    let (w, s) = setup(&store, 2, "none", Metric::Euclidean).await;
    load(&store, &w, 100, 1).await;
    for orphan in ["vectors/p000/orphan.seg", "vectors/p001/orphan.seg"] {
        store
            .put(orphan, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let bad = "_brainy/manifests/p001.json";
    store
        .put(bad, bytes::Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    let later: DynClock = Arc::new(ManualClock::new(
        SystemClock.now() + Duration::from_secs(7200),
    ));
    let r = gc(store.as_ref(), &s, &later, &GcOptions::default())
        .await
        .expect("gc works around an unreadable manifest");
    assert_eq!(r.unreadable, vec![bad.to_string()], "{r:?}");
    assert!(r.missing_manifests.is_empty(), "{r:?}");
    assert!(
        r.deleted.contains(&"vectors/p000/orphan.seg".to_string()),
        "{r:?}"
    );
    assert!(
        !r.deleted.iter().any(|k| k.starts_with("vectors/p001/")),
        "{r:?}"
    );
    assert!(store.head("vectors/p001/orphan.seg").await.is_ok());
}

/// Issue 28 F6 (b): an indexer round that outruns a compactor
/// invocation is dropped where it stands; it gives its lease back on the
/// way out, so the next indexer need not wait for the lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_round_cut_short_by_the_invocation_gives_its_lease_back() {
    use shoal::compact::indexer::{index_round, IndexOptions};
    use shoal::coord::index_manifest::read_index_manifest;
    let mem = Arc::new(shoal::store::memory::MemoryStore::unique());
    let faults = Arc::new(WriteFaults::new(mem.clone(), "index/shards/"));
    let store = Arc::new(Counted::new(faults.clone()));
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut opts = writer_opts(4);
    opts.cluster.clock = clock.clone();
    let db = shoal::Db::open_store(store.clone(), opts).await.unwrap();
    for i in 0..20 {
        db.upsert(&[Record::new(format!("r{i}"), vec![1.0, i as f32])])
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(120)); // the tails are due
    faults.hang_writes(true); // the round's shard PUT never returns
    let round = db
        .compact_round(
            std::time::Instant::now() + Duration::from_millis(500),
            Duration::from_millis(50),
            &GcOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        round.indexed.is_empty(),
        "the round was cut short: {round:?}"
    );
    let (m, _) = read_index_manifest(mem.as_ref(), 4).await.unwrap().unwrap();
    assert_eq!(m.lease, None, "the cut-short round kept its lease");
    // Another indexer runs at once.
    let dyn_clock: DynClock = clock.clone();
    let force = IndexOptions {
        force: true,
        ..Default::default()
    };
    let r = index_round(mem.as_ref(), &db.settings(), "other", &dyn_clock, force)
        .await
        .unwrap();
    assert_eq!((r.lease_held_by, r.rows_out), (None, 20));
    db.close().await.unwrap();
}
