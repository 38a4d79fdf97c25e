//! The write path on every backend: concurrent writers, newest wins,
//! deletes, ambiguous writes, validation with zero PUTs, crashes mid-commit,
//! group commit and the batch writer.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shoal::coord::clock::{Clock, DynClock, SystemClock};
use shoal::coord::config::load_or_create;
use shoal::coord::manifest::read_manifest;
use shoal::coord::role::RoleEnv;
use shoal::coord::{JoinOptions, Metric, RequestedSettings, Role};
use shoal::record::Record;
use shoal::store::faults::WriteFaults;
use shoal::store::{Counted, DynStore, ObjectStore};
use shoal::writer::{BatchWriter, BatchWriterOptions, WriteError, Writer, WriterOptions};
use shoal::{Db, OpenOptions};

backend_tests!(
    four_writers_with_overlapping_ids_newest_commit_wins,
    upsert_delete_get,
    ambiguous_manifest_write_is_detected_not_duplicated,
    invalid_batches_are_rejected_with_zero_puts,
    crash_between_segment_put_and_commit_leaves_manifest_untouched,
    concurrent_small_writes_share_segments,
    batch_writer_flushes_at_size_and_on_flush,
    a_writer_frozen_past_the_grace_period_loses_nothing,
);

fn settings(partitions: u32, dims: u32, metric: Metric) -> RequestedSettings {
    RequestedSettings {
        partition_count: Some(partitions),
        dimensions: Some(dims),
        distance_metric: Some(metric),
        ..Default::default()
    }
}

/// A writer over `store` without joining (no probe, no instance record).
async fn writer_on(store: DynStore, partitions: u32, dims: u32, metric: Metric) -> Writer {
    let settings = common::create_index(store.as_ref(), partitions, dims, metric).await;
    common::writer(store, &settings)
}

fn vec_for(tag: u32, dims: usize) -> Vec<f32> {
    (0..dims)
        .map(|i| ((tag as usize * 31 + i * 7) % 97) as f32 + 1.0)
        .collect()
}

async fn manifest_keys(store: &dyn ObjectStore, partitions: u32) -> BTreeMap<u32, Vec<String>> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        if let Some((m, _)) = read_manifest(store, p).await.unwrap() {
            out.insert(p, m.segments.iter().map(|s| s.key.clone()).collect());
        }
    }
    out
}

async fn four_writers_with_overlapping_ids_newest_commit_wins(store: Arc<Counted>) {
    const DIMS: usize = 8;
    let mut writers = Vec::new();
    for _ in 0..4 {
        let o = OpenOptions {
            cluster: JoinOptions {
                settings: settings(8, DIMS as u32, Metric::Euclidean),
                role: Some(Role::Writer),
                background_heartbeat: false,
                env: RoleEnv::default(),
                ..Default::default()
            },
            ..Default::default()
        };
        writers.push(Db::open_store(store.clone(), o).await.unwrap());
    }
    // Each writer upserts 2,000 records in 20 calls of 100, ids drawn from a
    // shared pool of 600 so they overlap across writers and calls. The
    // vector encodes (writer, call, slot) so the test knows which version
    // it reads back.
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(w, writer)| {
            tokio::spawn(async move {
                let mut log = Vec::new();
                for call in 0..20u32 {
                    let ids: BTreeSet<u32> = (0..100u32)
                        .map(|k| (w as u32 * 7919 + call * 104_729 + k * 613) % 600)
                        .collect();
                    let records: Vec<Record> = ids
                        .iter()
                        .map(|&id| {
                            let tag = (w as u32) << 16 | call << 8;
                            let mut v = vec![0.0f32; DIMS];
                            v[0] = tag as f32;
                            v[1] = id as f32;
                            Record::new(format!("doc-{id}"), v)
                        })
                        .collect();
                    let receipt = writer.upsert(&records).await.expect("upsert");
                    log.push((records, receipt));
                }
                log
            })
        })
        .collect();
    // For each id: the version from the commit with the highest seq in its
    // partition (each call writes each id once, so seq decides).
    let mut newest: HashMap<String, (u64, f32)> = HashMap::new();
    let mut committed: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for t in tasks {
        for (records, receipt) in t.await.unwrap() {
            let seq_of: HashMap<u32, u64> = receipt
                .segments
                .iter()
                .map(|c| (c.partition, c.seq))
                .collect();
            for c in &receipt.segments {
                committed
                    .entry(c.partition)
                    .or_default()
                    .push(c.key.clone());
            }
            for r in records {
                let p = shoal::coord::partition_of(&r.id, 8);
                let seq = seq_of[&p];
                let e = newest.entry(r.id.clone()).or_insert((0, 0.0));
                if seq > e.0 {
                    *e = (seq, r.vector[0]);
                }
            }
        }
    }
    // Every manifest lists every committed segment exactly once.
    let manifests = manifest_keys(store.as_ref(), 8).await;
    assert_eq!(manifests.len(), 8, "all 8 partitions written");
    for (p, keys) in &manifests {
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(
            unique.len(),
            keys.len(),
            "partition {p} lists a segment twice"
        );
        let mut want = committed[p].clone();
        want.sort();
        want.dedup();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(
            got, want,
            "partition {p}: manifest != acknowledged segments"
        );
    }
    // A fresh reader's get returns the version whose commit came last (one
    // batch: a reader per id would load all 640 segments 600 times).
    let w = writer_on(store.clone(), 8, DIMS as u32, Metric::Euclidean).await;
    let reader = shoal::reader::Reader::new(
        store.clone(),
        &w.settings(),
        shoal::reader::ReaderOptions::default(),
    );
    assert_eq!(newest.len(), 600);
    let ids: Vec<&str> = newest.keys().map(String::as_str).collect();
    let got = reader
        .get_many(&ids, shoal::reader::Consistency::Strong)
        .await
        .unwrap();
    for ((id, (_, tag)), got) in newest.iter().zip(got) {
        let got = got.unwrap_or_else(|| panic!("{id} is missing"));
        assert_eq!(
            got.vector[0], *tag,
            "{id}: not the newest committed version"
        );
    }
}

async fn upsert_delete_get(store: Arc<Counted>) {
    let w = writer_on(store, 4, 3, Metric::Cosine).await;
    let r = Record::new("a", vec![3.0, 4.0, 0.0]).with_metadata(json!({"symptoms": "x"}));
    w.upsert(&[r]).await.unwrap();
    let got = common::get(&w, "a").await.unwrap().unwrap();
    assert_eq!(
        got.vector,
        vec![0.6, 0.8, 0.0],
        "cosine vectors are normalized"
    );
    assert_eq!(got.metadata["domain"], "medical");
    assert_eq!(got.metadata["symptoms"], "x");
    w.delete(&["a".into()]).await.unwrap();
    assert_eq!(common::get(&w, "a").await.unwrap(), None, "deleted");
    w.delete(&["never-existed".into()]).await.unwrap();
    assert_eq!(common::get(&w, "never-existed").await.unwrap(), None);
    w.upsert(&[Record::new("a", vec![0.0, 0.0, 2.0])])
        .await
        .unwrap();
    assert_eq!(
        common::get(&w, "a").await.unwrap().unwrap().vector,
        vec![0.0, 0.0, 1.0],
        "back after delete"
    );
    assert_eq!(common::get(&w, "b").await.unwrap(), None);
}

async fn ambiguous_manifest_write_is_detected_not_duplicated(store: Arc<Counted>) {
    let faults = Arc::new(WriteFaults::new(store.clone(), "_brainy/manifests/"));
    let w = writer_on(faults.clone(), 1, 2, Metric::Dot).await;
    w.upsert(&[Record::new("first", vec![1.0, 0.0])])
        .await
        .unwrap();
    // The next manifest write is applied, but the writer is told it failed.
    faults.lose_next_responses(1);
    let receipt = w
        .upsert(&[Record::new("second", vec![0.0, 1.0])])
        .await
        .expect("the caller is told success");
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let keys: Vec<&str> = m.segments.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys.len(), 2, "no duplicate entry: {keys:?}");
    assert_eq!(keys[1], receipt.segments[0].key);
    assert_eq!(receipt.segments[0].seq, 2);
    assert_eq!(m.next_seq, 3);
    assert!(common::get(&w, "second").await.unwrap().is_some());
}

async fn invalid_batches_are_rejected_with_zero_puts(store: Arc<Counted>) {
    let opts = WriterOptions {
        max_batch_records: 3,
        max_batch_bytes: 10_000,
        ..Default::default()
    };
    let clock: DynClock = Arc::new(SystemClock);
    let cfg = load_or_create(
        store.as_ref(),
        &settings(4, 3, Metric::Cosine),
        clock.as_ref(),
    )
    .await
    .unwrap();
    let w = Writer::new(store.clone(), &cfg.settings, "w", clock, opts);
    let ok = || Record::new("ok", vec![1.0, 0.0, 0.0]);
    let cases: Vec<(Vec<Record>, &str)> = vec![
        (
            vec![ok(), Record::new("short", vec![1.0, 2.0])],
            "record 1 (id \"short\"): vector has 2 dimensions; the index has 3",
        ),
        (
            vec![Record::new("nan", vec![f32::NAN, 0.0, 0.0])],
            "component 0 is NaN",
        ),
        (
            vec![Record::new("inf", vec![0.0, f32::NEG_INFINITY, 1.0])],
            "component 1 is -inf",
        ),
        (vec![Record::new("", vec![1.0, 0.0, 0.0])], "id is empty"),
        (
            vec![Record::new("x".repeat(1025), vec![1.0, 0.0, 0.0])],
            "at most 1024",
        ),
        (
            vec![ok().with_metadata(json!("text"))],
            "metadata must be a JSON object, found a string",
        ),
        (
            vec![ok().with_metadata(json!({"t": "z".repeat(66_000)}))],
            "at most 65536",
        ),
        (vec![Record::new("zero", vec![0.0, 0.0, 0.0])], "all zeros"),
        (vec![ok(), ok(), ok(), ok()], "4 records; at most 3"),
        (
            vec![ok().with_metadata(json!({"t": "z".repeat(20_000)}))],
            "batch too large",
        ),
    ];
    let puts = store.counts().put;
    for (records, want) in cases {
        let e = w.upsert(&records).await.expect_err(want);
        assert!(matches!(e, WriteError::Invalid(_)), "{e}");
        assert!(e.to_string().contains(want), "got {e}, want {want}");
    }
    let e = w.delete(&["a".into(), String::new()]).await.unwrap_err();
    assert!(
        e.to_string().contains("record 1") && e.to_string().contains("id is empty"),
        "{e}"
    );
    assert_eq!(
        store.counts().put,
        puts,
        "a rejected batch performs zero PUTs"
    );
    assert!(store.list("vectors/").await.unwrap().is_empty());
}

async fn crash_between_segment_put_and_commit_leaves_manifest_untouched(store: Arc<Counted>) {
    let faults = Arc::new(WriteFaults::new(store.clone(), "_brainy/manifests/"));
    let w = writer_on(faults.clone(), 1, 2, Metric::Dot).await;
    w.upsert(&[Record::new("kept", vec![1.0, 0.0])])
        .await
        .unwrap();
    let (before, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    faults.hang_writes(true);
    let lost = [Record::new("lost", vec![0.0, 1.0])];
    let upsert = w.upsert(&lost);
    tokio::select! {
        r = upsert => panic!("the commit cannot finish while the manifest write hangs: {r:?}"),
        // The segment is written and the manifest write has begun: "crash"
        // by dropping the upsert future here.
        _ = faults.hung.notified() => {}
    }
    faults.hang_writes(false);
    let (after, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert_eq!(after, before, "manifest untouched");
    let segs = store.list("vectors/p000/").await.unwrap();
    let orphans: Vec<_> = segs
        .iter()
        .filter(|m| m.key.ends_with(".seg") && after.find(&m.key).is_none())
        .collect();
    assert_eq!(
        orphans.len(),
        1,
        "the crashed write left one unreferenced segment for GC"
    );
    assert_eq!(
        common::get(&w, "lost").await.unwrap(),
        None,
        "not acknowledged, not visible"
    );
    assert!(common::get(&w, "kept").await.unwrap().is_some());
    // The writer still works afterwards.
    w.upsert(&[Record::new("lost", vec![0.0, 1.0])])
        .await
        .unwrap();
    assert!(common::get(&w, "lost").await.unwrap().is_some());
}

async fn concurrent_small_writes_share_segments(store: Arc<Counted>) {
    // Each request takes at least 20 ms (as on S3), so the writes overlap
    // however the machine schedules the tasks: on an instant store under
    // load each could finish before the next began, sharing nothing.
    let slow: Arc<Counted> = Arc::new(store.with_latency(Duration::from_millis(20)));
    let w = writer_on(slow, 1, 4, Metric::Euclidean).await;
    let puts = store.counts().put;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let w = w.clone();
            tokio::spawn(async move {
                w.upsert(&[Record::new(format!("r{i}"), vec_for(i, 4))])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert!(
        m.segments.len() < 25,
        "50 concurrent single-record upserts made {} segments; group commit should share them",
        m.segments.len()
    );
    assert_eq!(m.total_records(), 50);
    let used = store.counts().put - puts;
    assert!(used < 50, "{used} PUTs for 50 writes");
    for i in 0..50 {
        assert!(
            common::get(&w, &format!("r{i}")).await.unwrap().is_some(),
            "r{i} lost"
        );
    }
}

async fn batch_writer_flushes_at_size_and_on_flush(store: Arc<Counted>) {
    let w = writer_on(store.clone(), 1, 4, Metric::Euclidean).await;
    let bw = BatchWriter::new(
        w.clone(),
        BatchWriterOptions {
            batch_size: 1000,
            flush_interval: Duration::from_secs(3600),
            flush_concurrency: 4,
            on_durable: None,
        },
    );
    let records: Vec<Record> = (0..2500)
        .map(|i| Record::new(format!("b{i}"), vec_for(i, 4)))
        .collect();
    let report = bw.add(&records).await.unwrap();
    assert_eq!(report.records, 2000, "two full batches flushed");
    assert_eq!(report.segments, 2);
    assert_eq!(bw.buffered(), 500);
    assert!(
        common::get(&w, "b2400").await.unwrap().is_none(),
        "buffered records are not visible"
    );
    assert!(common::get(&w, "b10").await.unwrap().is_some());
    let report = bw.close().await.unwrap();
    assert_eq!(report.records, 500);
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert_eq!(m.segments.len(), 3);
    assert_eq!(m.total_records(), 2500);
    assert!(
        common::get(&w, "b2400").await.unwrap().is_some(),
        "durable after close"
    );
    let e = BatchWriter::new(w.clone(), BatchWriterOptions::default())
        .add(&[Record::new("bad", vec![1.0])])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("vector has 1 dimensions"), "{e}");
}

// ---- memory only, paused clock ----

#[tokio::test(start_paused = true)]
async fn batch_writer_flushes_on_interval() {
    let store = common::memory_store();
    let w = writer_on(store.clone(), 2, 4, Metric::Euclidean).await;
    let bw = BatchWriter::new(
        w.clone(),
        BatchWriterOptions {
            batch_size: 1000,
            flush_interval: Duration::from_secs(5),
            flush_concurrency: 4,
            on_durable: None,
        },
    );
    bw.add(&[Record::new("t1", vec_for(1, 4))]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(bw.buffered(), 1, "not yet due");
    assert!(common::get(&w, "t1").await.unwrap().is_none());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bw.buffered(), 0, "flushed by the interval");
    assert!(common::get(&w, "t1").await.unwrap().is_some());
}

#[tokio::test]
async fn batch_writer_keeps_newest_version_across_chunks() {
    // The same id in consecutive chunks of one partition must end with the
    // later version, whichever flush commits each chunk.
    let store = common::memory_store();
    let w = writer_on(store.clone(), 1, 2, Metric::Euclidean).await;
    let bw = BatchWriter::new(
        w.clone(),
        BatchWriterOptions {
            batch_size: 10,
            flush_interval: Duration::from_millis(1),
            flush_concurrency: 8,
            on_durable: None,
        },
    );
    for round in 0..50u32 {
        let recs: Vec<Record> = (0..7)
            .map(|i| Record::new(format!("k{i}"), vec![round as f32, i as f32]))
            .collect();
        bw.add(&recs).await.unwrap();
    }
    bw.close().await.unwrap();
    for i in 0..7 {
        assert_eq!(
            common::get(&w, &format!("k{i}"))
                .await
                .unwrap()
                .unwrap()
                .vector[0],
            49.0
        );
    }
}

#[tokio::test]
async fn a_failing_commit_reports_the_partition_and_is_retryable() {
    use shoal::store::faults::{FailNext, Op};
    let mem = common::memory_store();
    let faulty = Arc::new(FailNext::new(mem.clone(), Op::Put, 0));
    let clock: DynClock = Arc::new(SystemClock);
    let cfg = load_or_create(
        faulty.as_ref(),
        &settings(1, 2, Metric::Dot),
        clock.as_ref(),
    )
    .await
    .unwrap();
    let opts = WriterOptions {
        backoff: shoal::coord::cas::Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(4),
            max_attempts: 5,
        },
        ..Default::default()
    };
    let w = Writer::new(faulty.clone(), &cfg.settings, "w", clock, opts);
    faulty.fail_next(1000);
    let e = w
        .upsert(&[Record::new("x", vec![1.0, 1.0])])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("partition 0"), "{e}");
    assert!(e.is_retryable());
    faulty.fail_next(0);
    w.upsert(&[Record::new("x", vec![1.0, 1.0])]).await.unwrap();
    assert!(common::get(&w, "x").await.unwrap().is_some());
}

/// Defect: nothing bounded how old a segment could be when its commit
/// landed. A writer frozen at its manifest PUT (SIGSTOP, a frozen
/// container) for longer than the grace period came back after GC had
/// deleted its segment as an orphan, committed a reference to nothing and
/// acknowledged a write that was gone (and the partition was unreadable).
/// Now a commit that took longer than the age bound checks its segment and
/// writes it back before acknowledging.
async fn a_writer_frozen_past_the_grace_period_loses_nothing(store: Arc<Counted>) {
    use shoal::compact::gc::{gc, GcOptions};
    use shoal::coord::clock::ManualClock;
    use std::sync::atomic::Ordering::SeqCst;
    let faults = Arc::new(WriteFaults::new(store.clone(), "_brainy/manifests/"));
    let settings = common::create_index(store.as_ref(), 1, 2, Metric::Dot).await;
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let w = Writer::new(
        faults.clone(),
        &settings,
        "w",
        clock.clone(),
        WriterOptions::default(),
    );
    w.upsert(&[Record::new("a", vec![1.0, 0.0])]).await.unwrap();
    faults.close_gate();
    let task = tokio::spawn({
        let w = w.clone();
        async move { w.upsert(&[Record::new("b", vec![0.0, 1.0])]).await }
    });
    while faults.waiting.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Frozen at its manifest PUT for longer than the grace period, while
    // GC deletes its segment (unreferenced and, by the store's clock, older
    // than the grace period).
    clock.advance(settings.gc_grace() + Duration::from_secs(60));
    let dyn_clock: DynClock = clock.clone();
    let report = gc(store.as_ref(), &settings, &dyn_clock, &GcOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.deleted.len(),
        1,
        "the frozen writer's segment: {report:?}"
    );
    faults.open_gate(100);
    let receipt = task.await.unwrap().unwrap();
    assert_eq!(receipt.records, 1);
    let b = common::get(&w, "b")
        .await
        .expect("the partition stays readable");
    assert_eq!(
        b.map(|r| r.vector),
        Some(vec![0.0, 1.0]),
        "acknowledged, so kept"
    );
    assert!(common::verify(&store).await.unwrap().is_clean());
}

/// Defect: writers' compare-and-swap conflicts were counted and never
/// published, and shard-part cache lookups never reached the hit rate.
/// Two handles race on one partition until one loses a CAS, then search;
/// the instance record it heartbeats carries exactly its counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_records_publish_exact_counters() {
    // A little latency per request, so two handles' commits overlap.
    let store = Arc::new(common::memory_store().with_latency(Duration::from_millis(2)));
    let open = || {
        Db::open_store(
            store.clone(),
            OpenOptions {
                cluster: JoinOptions {
                    settings: RequestedSettings {
                        partition_count: Some(1),
                        dimensions: Some(2),
                        ..Default::default()
                    },
                    role: Some(Role::Both),
                    background_heartbeat: false,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    };
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let mut written = 0u64;
    for round in 0..50 {
        let writes = (0..8).map(|i| {
            let db = if i % 2 == 0 { a.clone() } else { b.clone() };
            let id = format!("r{round}-{i}");
            async move { db.upsert(&[Record::new(id, vec![1.0, i as f32])]).await }
        });
        let receipts = futures::future::join_all(writes).await;
        written += receipts
            .iter()
            .step_by(2)
            .map(|r| r.as_ref().unwrap().records as u64)
            .sum::<u64>();
        if a.writer_stats().conflicts > 0 {
            break;
        }
    }
    let conflicts = a.writer_stats().conflicts;
    assert!(conflicts > 0, "no CAS race was lost in 50 rounds");
    // Into an index shard, so searches read shard parts through the
    // block cache as well as tail segments.
    let round = a.index(true).await.unwrap();
    assert!(!round.shards_written.is_empty());
    let before = a.instance_record().await.metrics;
    assert_eq!(before.queries, 0);
    assert_eq!(
        before.cache_hit_rate, 0.0,
        "no lookup yet: not a made-up rate"
    );
    for i in 0..3 {
        let req = shoal::api::SearchRequest {
            consistency: shoal::api::Consistency::Strong,
            ..shoal::api::SearchRequest::new(vec![1.0, i as f32], 5)
        };
        a.search(&req).await.unwrap();
    }
    a.heartbeat_now().await.unwrap();
    let key = format!("_brainy/instances/{}.json", a.instance_id());
    let rec: serde_json::Value =
        serde_json::from_slice(&store.get(&key).await.unwrap().bytes).unwrap();
    let m = &rec["metrics"];
    let rs = a.reader_stats();
    assert_eq!(m["casConflicts"], conflicts, "{m}");
    assert_eq!(m["writes"], written, "{m}");
    assert_eq!(m["queries"], 3, "{m}");
    assert_eq!(m["cacheHits"], rs.cache_hits, "{m}");
    assert_eq!(m["cacheMisses"], rs.cache_misses, "{m}");
    assert!(rs.cache_hits + rs.cache_misses > 0, "{m}");
    let rate = rs.cache_hits as f64 / (rs.cache_hits + rs.cache_misses) as f64;
    assert!(
        (m["cacheHitRate"].as_f64().unwrap() - rate).abs() < 1e-9,
        "{m}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Defect: instances kept the settings they opened with until restarted,
/// so `shoal config set` changed nothing running. Now a running instance
/// re-reads the config every `config_refresh` (background) or when a
/// handler asks (`heartbeat_if_due`, the Lambda path) and puts the
/// settings that may change in force: here the domain rules the writer
/// validates with, the reader's default nprobe and the GC grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_instances_pick_up_config_changes_within_the_refresh_interval() {
    let store = Arc::new(Counted::new(Arc::new(
        shoal::store::memory::MemoryStore::unique(),
    )));
    let open = |refresh: Duration, background: bool| {
        let store = store.clone();
        async move {
            Db::open_store(
                store,
                OpenOptions {
                    cluster: JoinOptions {
                        settings: settings(4, 2, Metric::Euclidean),
                        role: Some(Role::Writer),
                        background_heartbeat: background,
                        ..Default::default()
                    },
                    config_refresh: Some(refresh),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let server = open(Duration::from_millis(100), true).await;
    let lambda = open(Duration::from_millis(100), false).await;
    let admin = open(Duration::from_secs(3600), true).await;
    let record = || Record::new("r1", vec![1.0, 0.0]).with_metadata(json!({"isbn": "x"}));
    server.upsert(&[record()]).await.unwrap();
    let domain = |db: Db| async move {
        db.get("r1", shoal::api::Consistency::Strong)
            .await
            .unwrap()
            .unwrap()
            .metadata["domain"]
            .clone()
    };
    assert_eq!(domain(server.clone()).await, json!("general"));
    let before = server.settings();
    admin
        .set_settings(&[
            (
                "domainRules".into(),
                json!([{"fields": ["isbn"], "domain": "books"}]),
            ),
            ("index.nprobe".into(), json!(before.index().nprobe + 3)),
            ("gcGraceSeconds".into(), json!(before.gc_grace_seconds * 2)),
        ])
        .await
        .unwrap();
    // The background watcher: within a few refresh intervals.
    let started = std::time::Instant::now();
    while server.settings().gc_grace_seconds == before.gc_grace_seconds {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the config change never reached the running instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.settings().index().nprobe, before.index().nprobe + 3);
    server.upsert(&[record()]).await.unwrap();
    assert_eq!(
        domain(server.clone()).await,
        json!("books"),
        "the writer validates with the new domain rules"
    );
    // Without a background task nothing changes until a handler asks.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(lambda.settings().gc_grace_seconds, before.gc_grace_seconds);
    lambda.heartbeat_if_due().await;
    assert_eq!(
        lambda.settings().gc_grace_seconds,
        before.gc_grace_seconds * 2
    );
    // A shape change is refused, and the settings in force stay.
    let e = admin
        .set_settings(&[("dimensions".into(), json!(3))])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("dimensions"), "{e}");
    for db in [server, lambda, admin] {
        db.close().await.unwrap();
    }
}

/// Issue 30, item 2: a write that spans partitions costs one object PUT
/// however many partitions it touches, plus the manifest commits it must
/// make (one GET and one conditional PUT per partition touched).
#[tokio::test]
async fn a_batch_costs_one_object_put_whatever_the_partition_count() {
    for partitions in [2u32, 8, 32, 100] {
        let store = common::memory_store();
        let w = writer_on(store.clone(), partitions, 4, Metric::Euclidean).await;
        let recs: Vec<Record> = (0..500)
            .map(|i| Record::new(format!("r{i}"), vec_for(i, 4)))
            .collect();
        let touched: BTreeSet<u32> = recs
            .iter()
            .map(|r| shoal::coord::partition_of(&r.id, partitions))
            .collect();
        let before = store.counts();
        let receipt = w.upsert(&recs).await.unwrap();
        let d = store.counts().since(&before);
        let objects = store.list("vectors/").await.unwrap();
        assert_eq!(objects.len(), 1, "{partitions} partitions: {objects:?}");
        assert!(objects[0].key.contains("-b"), "{}", objects[0].key);
        // It sits in the folder of a partition whose manifest names a
        // section of it, and so is version 2: an older version's GC, which
        // cannot read that manifest, leaves the whole folder alone.
        let home = objects[0].key[8..12]
            .trim_start_matches('p')
            .parse::<u32>()
            .unwrap();
        let (m, _) = read_manifest(store.as_ref(), home).await.unwrap().unwrap();
        assert_eq!(m.version, 2);
        let entry = m
            .find(&objects[0].key)
            .expect("its home partition names it");
        assert!(entry.section.is_some());
        let t = touched.len() as u64;
        assert_eq!(d.put, 1 + t, "{partitions} partitions: {d:?}");
        assert_eq!(d.get, t, "{partitions} partitions: {d:?}");
        assert_eq!(receipt.segments.len(), touched.len());
        assert_eq!(receipt.records, 500);
        for i in [0, 250, 499] {
            let got = common::get(&w, &format!("r{i}")).await.unwrap().unwrap();
            assert_eq!(got.vector, vec_for(i, 4), "r{i}");
        }
    }
}

/// Concurrent batch writes in one process share each partition's manifest
/// commit (their sections wait together), and newest wins per id.
#[tokio::test]
async fn concurrent_batch_writes_share_manifest_commits() {
    let store = common::memory_store();
    let slow: Arc<Counted> = Arc::new(store.with_latency(Duration::from_millis(20)));
    let w = writer_on(slow, 4, 4, Metric::Euclidean).await;
    let before = store.counts();
    let tasks: Vec<_> = (0..16u32)
        .map(|t| {
            let w = w.clone();
            tokio::spawn(async move {
                let recs: Vec<Record> = (0..40)
                    .map(|i| Record::new(format!("t{t}-{i}"), vec_for(t * 100 + i, 4)))
                    .collect();
                w.upsert(&recs).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let d = store.counts().since(&before);
    let objects = store
        .list("vectors/")
        .await
        .unwrap()
        .iter()
        .filter(|o| o.key.contains("-b"))
        .count() as u64;
    assert_eq!(objects, 16, "one object per write");
    let commits = d.put - objects;
    assert!(
        commits < 16 * 4,
        "{commits} manifest PUTs for 16 writes to 4 partitions: sections should share commits"
    );
    let mut total = 0;
    for p in 0..4 {
        let (m, _) = read_manifest(store.as_ref(), p).await.unwrap().unwrap();
        total += m.total_records();
    }
    assert_eq!(total, 16 * 40);
    for t in [0u32, 15] {
        let got = common::get(&w, &format!("t{t}-7")).await.unwrap().unwrap();
        assert_eq!(got.vector, vec_for(t * 100 + 7, 4));
    }
}

/// A store whose manifest writes land but are answered with a transient
/// error, after which every read of a manifest fails too, until `heal`:
/// a commit whose outcome the writer cannot learn.
#[derive(Debug)]
struct LostAnswers {
    inner: DynStore,
    broken: std::sync::atomic::AtomicBool,
}

impl LostAnswers {
    fn transient(&self, key: &str) -> shoal::store::StoreError {
        shoal::store::StoreError::Transient {
            key: key.to_string(),
            message: "injected: the answer was lost".into(),
        }
    }

    fn failing(&self, key: &str) -> bool {
        key.contains("_brainy/manifests/") && self.broken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LostAnswers {
    async fn get(&self, key: &str) -> shoal::store::Result<shoal::store::GetResult> {
        if self.failing(key) {
            return Err(self.transient(key));
        }
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: shoal::store::ByteRange,
    ) -> shoal::store::Result<bytes::Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get_if_changed(
        &self,
        key: &str,
        etag: &shoal::store::ETag,
    ) -> shoal::store::Result<shoal::store::Conditional> {
        if self.failing(key) {
            return Err(self.transient(key));
        }
        self.inner.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> shoal::store::Result<shoal::store::ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        bytes: bytes::Bytes,
    ) -> shoal::store::Result<shoal::store::ETag> {
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        bytes: bytes::Bytes,
    ) -> shoal::store::Result<shoal::store::ETag> {
        let r = self.inner.put_if_absent(key, bytes).await;
        if key.contains("_brainy/manifests/") && r.is_ok() {
            self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(self.transient(key));
        }
        r
    }
    async fn put_if_match(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        etag: &shoal::store::ETag,
    ) -> shoal::store::Result<shoal::store::ETag> {
        let r = self.inner.put_if_match(key, bytes, etag).await;
        if key.contains("_brainy/manifests/") && r.is_ok() {
            self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(self.transient(key));
        }
        r
    }
    async fn delete(&self, key: &str) -> shoal::store::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> shoal::store::Result<Vec<shoal::store::ObjectMeta>> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Review of issue 30: a batch write whose manifest compare-and-swaps
/// landed but whose answers were lost (and whose re-reads then failed)
/// reports an error, and must keep its batch object: the manifests name
/// it. Only a refusal that proves nothing was committed (too late, no
/// manifest) may delete it.
#[tokio::test]
async fn a_batch_whose_commits_cannot_be_confirmed_keeps_its_object() {
    let mem = common::memory_store();
    let clock: DynClock = Arc::new(SystemClock);
    let cfg = load_or_create(mem.as_ref(), &settings(2, 2, Metric::Dot), clock.as_ref())
        .await
        .unwrap();
    shoal::coord::config::initialize_partitions(mem.as_ref(), clock.as_ref(), cfg.clone())
        .await
        .unwrap();
    let lossy = Arc::new(LostAnswers {
        inner: mem.clone(),
        broken: false.into(),
    });
    let opts = WriterOptions {
        backoff: shoal::coord::cas::Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(4),
            max_attempts: 3,
        },
        ..Default::default()
    };
    let w = Writer::new(lossy.clone(), &cfg.settings, "w", clock.clone(), opts);
    let recs: Vec<Record> = (0..20)
        .map(|i| Record::new(format!("r{i}"), vec![i as f32, 1.0]))
        .collect();
    let touched: BTreeSet<u32> = recs
        .iter()
        .map(|r| shoal::coord::partition_of(&r.id, 2))
        .collect();
    assert_eq!(touched.len(), 2, "the write spans both partitions");
    let e = w.upsert(&recs).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    lossy
        .broken
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Whatever the writer could not confirm is committed: every manifest
    // entry's object must still be there, and every record readable.
    let mut named = 0;
    for p in 0..2 {
        let (m, _) = read_manifest(mem.as_ref(), p).await.unwrap().unwrap();
        for entry in &m.segments {
            named += 1;
            assert!(
                mem.head(&entry.key).await.is_ok(),
                "{} is named by partition {p} but was deleted",
                entry.key
            );
        }
    }
    assert!(named >= 1, "at least one commit landed");
    let w = Writer::new(
        mem.clone(),
        &cfg.settings,
        "w2",
        clock,
        WriterOptions::default(),
    );
    let mut found = 0;
    for r in &recs {
        found += usize::from(common::get(&w, &r.id).await.unwrap().is_some());
    }
    assert!(found > 0, "the landed commits' records are readable");
}
