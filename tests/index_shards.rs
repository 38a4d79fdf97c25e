//! Reading through index shards (DESIGN section 11): a query searches the
//! shards plus each partition's tail and answers exactly as it did before
//! indexing; a tail record (upsert or delete) shadows the shard row of its
//! id; `get` finds records in tails and shards alike.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::{Metric, Settings};
use shoal::reader::{Consistency, Reader, ReaderOptions, SearchRequest, SearchResponse};
use shoal::record::Record;
use shoal::store::{Counted, ObjectStore};

backend_tests!(
    exact_search_answers_the_same_before_and_after_indexing,
    writers_indexer_and_readers_run_concurrently
);

const DIMS: usize = 8;

/// A deterministic pseudo-random vector for (`i`, `version`).
fn vector(i: usize, version: usize) -> Vec<f32> {
    let mut x =
        (i as u64 * 1_000_003 + version as u64 * 7919 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..DIMS)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn record(i: usize, version: usize) -> Record {
    Record::new(format!("r{i}"), vector(i, version))
        .with_metadata(json!({ "group": i % 3, "version": version }))
}

/// What was written: id -> (vector, group).
#[derive(Default)]
struct Model(BTreeMap<String, (Vec<f32>, usize)>);

impl Model {
    fn upsert(&mut self, recs: &[Record]) {
        for r in recs {
            let group = r.metadata.as_ref().unwrap()["group"].as_u64().unwrap() as usize;
            self.0.insert(r.id.clone(), (r.vector.clone(), group));
        }
    }
    fn delete(&mut self, ids: &[String]) {
        for id in ids {
            self.0.remove(id);
        }
    }
    /// The ids of the `k` nearest live records (Euclidean), optionally of
    /// one group only.
    fn nearest(&self, q: &[f32], k: usize, group: Option<usize>) -> Vec<String> {
        let mut all: Vec<(f32, &String)> = self
            .0
            .iter()
            .filter(|(_, (_, g))| group.is_none_or(|want| *g == want))
            .map(|(id, (v, _))| {
                let d: f32 = v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum();
                (d, id)
            })
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        all.into_iter().take(k).map(|(_, id)| id.clone()).collect()
    }
}

/// Exact searches (with and without a filter) and gets: everything a
/// reader answers, as comparable values.
type Answers = Vec<serde_json::Value>;

async fn answers(reader: &Reader, model: &Model, when: &str) -> (Answers, Vec<SearchResponse>) {
    let mut out = Vec::new();
    let mut responses = Vec::new();
    for qi in 0..6 {
        let q = vector(10_000 + qi, 0);
        for group in [None, Some(qi % 3)] {
            let mut req = SearchRequest::new(q.clone(), 10);
            req.exact = true;
            req.consistency = Consistency::Strong;
            req.filter = group.map(|g| json!({ "group": g }));
            let resp = reader.search(&req).await.unwrap();
            let ids: Vec<String> = resp.results.iter().map(|h| h.id.clone()).collect();
            assert_eq!(
                ids,
                model.nearest(&q, 10, group),
                "{when}: query {qi} {group:?}"
            );
            out.push(serde_json::to_value(&resp.results).unwrap());
            responses.push(resp);
        }
    }
    for i in [0usize, 5, 7, 42, 150, 299, 305, 330] {
        let id = format!("r{i}");
        let got = reader.get_with(&id, Consistency::Strong).await.unwrap();
        match (&got, model.0.get(&id)) {
            (Some(rec), Some((v, _))) => assert_eq!(&rec.vector, v, "{when}: get {id}"),
            (None, None) => {}
            (got, want) => panic!("{when}: get {id}: {got:?} but the model has {want:?}"),
        }
        out.push(json!({
            "id": id,
            "vector": got.as_ref().map(|r| r.vector.clone()),
            "metadata": got.as_ref().map(|r| r.metadata.clone()),
        }));
    }
    // A batch get answers every id ever written (in tails, in shards,
    // deleted, re-added) and some never written as the model says.
    let ids: Vec<String> = (0..345).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let batch = reader.get_many(&refs, Consistency::Strong).await.unwrap();
    assert_eq!(batch.len(), ids.len());
    for (id, got) in ids.iter().zip(batch) {
        match (got, model.0.get(id)) {
            (Some(rec), Some((v, _))) => {
                assert_eq!((&rec.id, &rec.vector), (id, v), "{when}: batch get {id}")
            }
            (None, None) => {}
            (got, want) => panic!("{when}: batch get {id}: {got:?} but the model has {want:?}"),
        }
    }
    (out, responses)
}

/// GC with no grace: nothing else runs in these tests.
async fn gc_now(store: &Arc<Counted>, s: &Settings) -> shoal::api::GcReport {
    use shoal::compact::gc::{gc, GcOptions};
    let clock: DynClock = Arc::new(SystemClock);
    let opts = GcOptions {
        grace: Some(std::time::Duration::ZERO),
        allow_unsafe_grace: true,
        ..Default::default()
    };
    gc(store.as_ref(), s, &clock, &opts).await.unwrap()
}

fn fresh_reader(store: &Arc<Counted>, s: &Settings) -> Reader {
    Reader::new(store.clone(), s, ReaderOptions::default())
}

async fn exact_search_answers_the_same_before_and_after_indexing(store: Arc<Counted>) {
    let s = common::create_index(store.as_ref(), 4, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let kept = fresh_reader(&store, &s); // lives through every phase
    let mut model = Model::default();
    let ids = |v: &[usize]| -> Vec<String> { v.iter().map(|i| format!("r{i}")).collect() };

    // Phase A: writes, nothing indexed.
    let first: Vec<Record> = (0..300).map(|i| record(i, 1)).collect();
    let newer: Vec<Record> = (250..300).map(|i| record(i, 2)).collect();
    for batch in [&first, &newer] {
        w.upsert(batch).await.unwrap();
        model.upsert(batch);
    }
    let gone = ids(&[5, 6, 7, 260]);
    w.delete(&gone).await.unwrap();
    model.delete(&gone);
    let (before, _) = answers(&kept, &model, "before indexing").await;

    let r = common::index_now(store.as_ref(), &s).await;
    assert!(r.generation.is_some(), "{r:?}");
    for reader in [&kept, &fresh_reader(&store, &s)] {
        let (after, resps) = answers(reader, &model, "after indexing").await;
        assert_eq!(after, before, "indexing changed an answer");
        for resp in &resps {
            assert!(resp.stats.shards_searched >= 1, "{:?}", resp.stats);
            assert_eq!(
                resp.stats.segments_scanned, 0,
                "nothing is left in the tails"
            );
        }
    }

    // Phase B: newer versions and deletes of indexed ids, re-added and new
    // ids, all in the tails: they shadow the shard rows.
    let updates: Vec<Record> = (0..40).map(|i| record(i, 3)).collect();
    let readded = [record(5, 4)];
    let fresh: Vec<Record> = (300..340).map(|i| record(i, 1)).collect();
    for batch in [&updates[..], &readded[..], &fresh[..]] {
        w.upsert(batch).await.unwrap();
        model.upsert(batch);
    }
    let gone = ids(&[42, 150, 151, 152, 299, 330]);
    w.delete(&gone).await.unwrap();
    model.delete(&gone);
    let (tails, resps) = answers(&kept, &model, "with tails").await;
    assert!(resps.iter().all(|r| r.stats.segments_scanned > 0));
    assert_eq!(
        answers(
            &fresh_reader(&store, &s),
            &model,
            "with tails, fresh reader"
        )
        .await
        .0,
        tails
    );

    let r = common::index_now(store.as_ref(), &s).await;
    assert!(r.rows_killed > 0, "{r:?}");
    for reader in [&kept, &fresh_reader(&store, &s)] {
        let (after, _) = answers(reader, &model, "after indexing the tails").await;
        assert_eq!(after, tails, "indexing the tails changed an answer");
    }
}

/// Four indexing rounds leave four level-0 shards, which the fourth round
/// merges into one level-1 shard (dead rows dropped). Answers stay the
/// same throughout, for a fresh reader and for one that keeps the index
/// view it loaded before the merge, even after GC deleted the merged
/// shards.
#[tokio::test]
async fn merging_shards_changes_no_answer_even_for_a_reader_holding_the_old_index() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model = Model::default();
    let mut old_reader = None;
    let mut before_merge = None;
    for round in 0..4 {
        let batch: Vec<Record> = (round * 80..round * 80 + 100)
            .map(|i| record(i, round + 1))
            .collect();
        w.upsert(&batch).await.unwrap();
        model.upsert(&batch);
        let gone: Vec<String> = vec![format!("r{}", round * 80 + 3)];
        w.delete(&gone).await.unwrap();
        model.delete(&gone);
        let r = common::index_now(store.as_ref(), &s).await;
        if round < 3 {
            assert!(r.merged.is_empty(), "round {round}: {r:?}");
            let reader = fresh_reader(&store, &s);
            before_merge = Some(answers(&reader, &model, "before the merge").await.0);
            old_reader = Some(reader);
        } else {
            assert_eq!(r.merged.len(), 1, "{r:?}");
            assert_eq!(r.merged[0].inputs.len(), 4);
            assert_eq!(r.merged[0].level, 1);
        }
    }
    let (m, _) = shoal::coord::index_manifest::read_index_manifest(store.as_ref(), 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.shards.len(), 1);
    assert_eq!((m.shards[0].level, m.shards[0].dead), (1, 0));
    assert_eq!(m.shards[0].rows, model.0.len() as u64, "dead rows dropped");
    let after = answers(&fresh_reader(&store, &s), &model, "after the merge")
        .await
        .0;
    // GC with no grace (nothing else runs here) deletes the merged inputs.
    let report = gc_now(&store, &s).await;
    assert!(
        report
            .deleted
            .iter()
            .filter(|k| k.ends_with(".shard"))
            .count()
            >= 4,
        "{:?}",
        report.deleted
    );
    // The reader that loaded the index before the last round: an eventual
    // query answers from the view it holds (its shards are in memory) as
    // it did then; a strong one moves to the merged shard.
    let old = old_reader.unwrap();
    let mut req = SearchRequest::new(vector(10_000, 0), 10);
    req.exact = true;
    req.consistency = Consistency::Eventual;
    let eventual = old.search(&req).await.unwrap();
    assert_eq!(
        serde_json::to_value(&eventual.results).unwrap(),
        before_merge.unwrap()[0],
        "the old view answers as it did before the merge, its shards deleted"
    );
    assert_eq!(answers(&old, &model, "old reader, strong").await.0, after);
    assert_eq!(
        answers(&fresh_reader(&store, &s), &model, "after gc")
            .await
            .0,
        after
    );
}

/// Approximate search over shards (IVF lists scanned by one-bit codes,
/// the best candidates reranked exactly) finds nearly what exact search
/// finds, and a filter still returns `k` results.
#[tokio::test]
async fn approximate_search_over_shards_keeps_recall_and_filters_keep_k() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let recs: Vec<Record> = (0..6000).map(|i| record(i, 1)).collect();
    for chunk in recs.chunks(1000) {
        w.upsert(chunk).await.unwrap();
    }
    common::index_now(store.as_ref(), &s).await;
    // `status` shows the routing: sized for these rows and calibrated on
    // them (a sample big enough to hold queries out of).
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    let r = db.status(false).await.unwrap().index.routing.unwrap();
    assert_eq!(
        (r.generation, r.rows, r.trained_rows),
        (1, 6000, 6000),
        "{r:?}"
    );
    assert!(
        r.calibrated_probes > 0 && r.calibrated_probes <= r.clusters,
        "{r:?}"
    );
    assert!(
        r.probes_at_default_nprobe >= u64::from(r.calibrated_probes),
        "{r:?}"
    );
    let reader = fresh_reader(&store, &s);
    let (mut found, mut total) = (0, 0);
    for qi in 0..40 {
        for group in [None, Some(qi % 3)] {
            let mut req = SearchRequest::new(vector(20_000 + qi, 0), 10);
            req.filter = group.map(|g| json!({ "group": g }));
            let approx = reader.search(&req).await.unwrap();
            assert_eq!(approx.results.len(), 10, "k results, filter {group:?}");
            assert_eq!(approx.stats.shards_searched, 1);
            if let Some(g) = group {
                assert!(approx
                    .results
                    .iter()
                    .all(|h| h.metadata.as_ref().unwrap()["group"] == g));
            }
            req.exact = true;
            let exact = reader.search(&req).await.unwrap();
            let want: std::collections::HashSet<&String> =
                exact.results.iter().map(|h| &h.id).collect();
            found += approx
                .results
                .iter()
                .filter(|h| want.contains(&h.id))
                .count();
            total += 10;
            assert!(approx.stats.vectors_compared < 6000, "{:?}", approx.stats);
        }
    }
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.9, "recall@10 {recall:.3}");
}

/// `verify` reads the shards and deletion vectors: clean after indexing;
/// a damaged shard, a deletion vector that disagrees with the manifest,
/// and a partition retired past its watermark are each reported by key.
#[tokio::test]
async fn verify_checks_shards_deletion_vectors_and_watermarks() {
    use shoal::coord::index_manifest::{read_index_manifest, update_index};
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let recs: Vec<Record> = (0..50).map(|i| record(i, 1)).collect();
    w.upsert(&recs).await.unwrap();
    common::index_now(store.as_ref(), &s).await;
    w.delete(&["r1".into(), "r2".into()]).await.unwrap();
    common::index_now(store.as_ref(), &s).await;
    let v = common::verify(&store).await.unwrap();
    assert!(v.is_clean(), "{:?}", v.problems);
    assert_eq!((v.shards, v.shard_rows), (1, 48));

    // The manifest's dead count disagrees with the deletion vector.
    update_index(store.as_ref(), 2, Default::default(), |m| {
        m.shards[0].dead += 1;
        Ok(true)
    })
    .await
    .unwrap();
    let (m, _) = read_index_manifest(store.as_ref(), 2)
        .await
        .unwrap()
        .unwrap();
    let v = common::verify(&store).await.unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.key == m.shards[0].key && p.message.contains("marks 2 dead rows")),
        "{:?}",
        v.problems
    );
    // A shard whose bytes are damaged.
    let key = m.shards[0].key.clone();
    let mut bytes = store.get(&key).await.unwrap().bytes.to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    store.put(&key, bytes.into()).await.unwrap();
    let v = common::verify(&store).await.unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.key == key && p.message.contains("index shard")),
        "{:?}",
        v.problems
    );
    // A watermark moved back under a partition that retired past it.
    update_index(store.as_ref(), 2, Default::default(), |m| {
        m.watermarks[0] = 0;
        Ok(true)
    })
    .await
    .unwrap();
    let v = common::verify(&store).await.unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.key == "_brainy/manifests/p000.json"
                && p.message.contains("records are missing")),
        "{:?}",
        v.problems
    );
}

/// Two writers (each rewriting its own ids in versions, deleting some),
/// an indexer looping rounds and merges, and a reader checking as they
/// run: a strong get returns the version its writer last had
/// acknowledged (or a newer one in flight) and never a deleted or older
/// one; searches never return an id twice. At the end exact search equals
/// brute force over everything acknowledged.
async fn writers_indexer_and_readers_run_concurrently(store: Arc<Counted>) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Mutex;
    let s = common::create_index(store.as_ref(), 4, DIMS as u32, Metric::Euclidean).await;
    // id -> (acknowledged version, deleted)
    let acked: Arc<Mutex<BTreeMap<usize, (usize, bool)>>> = Default::default();
    // ids whose delete has been sent (acknowledged or not)
    let deleting: Arc<Mutex<std::collections::BTreeSet<usize>>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for wi in 0..2usize {
        let (store, s, acked) = (store.clone(), s.clone(), acked.clone());
        let deleting = deleting.clone();
        writers.push(tokio::spawn(async move {
            let w = common::writer(store, &s);
            for version in 1..=6usize {
                let ids: Vec<usize> = (0..40).map(|j| wi * 1000 + j).collect();
                let batch: Vec<Record> = ids.iter().map(|&i| record(i, version)).collect();
                w.upsert(&batch).await.unwrap();
                {
                    let mut a = acked.lock().unwrap();
                    for &i in &ids {
                        a.insert(i, (version, false));
                    }
                }
                let gone = wi * 1000 + version * 5;
                // Announced before it is sent: a reader may see it commit
                // before it is acknowledged.
                deleting.lock().unwrap().insert(gone);
                w.delete(&[format!("r{gone}")]).await.unwrap();
                acked.lock().unwrap().insert(gone, (version, true));
            }
        }));
    }
    let indexer = {
        let (store, s, done) = (store.clone(), s.clone(), done.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !done.load(SeqCst) || rounds < 5 {
                common::index_now(store.as_ref(), &s).await;
                rounds += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            rounds
        })
    };
    let reader = fresh_reader(&store, &s);
    let mut checks = 0;
    while writers.iter().any(|w| !w.is_finished()) || checks < 20 {
        let snapshot = acked.lock().unwrap().clone();
        for (&i, &(version, deleted)) in snapshot.iter().step_by(7) {
            let got = reader
                .get_with(&format!("r{i}"), Consistency::Strong)
                .await
                .unwrap();
            match got {
                None => assert!(
                    deleted || deleting.lock().unwrap().contains(&i),
                    "acknowledged r{i} v{version} is missing, and no delete of it was sent"
                ),
                Some(rec) => {
                    let v = rec.metadata["version"].as_u64().unwrap() as usize;
                    // A delete is followed by a rewrite in a later version.
                    assert!(
                        v >= version + usize::from(deleted),
                        "r{i}: got v{v}, acknowledged v{version} (deleted {deleted})"
                    );
                }
            }
        }
        let mut req = SearchRequest::new(vector(30_000 + checks, 0), 20);
        req.consistency = Consistency::Strong;
        let resp = reader.search(&req).await.unwrap();
        let ids: std::collections::HashSet<&String> = resp.results.iter().map(|h| &h.id).collect();
        assert_eq!(
            ids.len(),
            resp.results.len(),
            "an id twice: {:?}",
            resp.results
        );
        checks += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, SeqCst);
    let rounds = indexer.await.unwrap();
    assert!(rounds >= 5);
    let mut model = Model::default();
    for (&i, &(version, deleted)) in acked.lock().unwrap().iter() {
        if !deleted {
            model.upsert(&[record(i, version)]);
        }
    }
    answers(
        &fresh_reader(&store, &s),
        &model,
        "after the concurrent run",
    )
    .await;
}

/// HNSW inside shards (the option for warm-only deployments): shards are
/// built with the configured kind, searched through the graph, and find
/// nearly what exact search finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_shards_search_well() {
    use shoal::coord::config::{update_config, IndexSettings};
    let store = common::memory_store();
    common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let clock: DynClock = Arc::new(SystemClock);
    let s = update_config(store.as_ref(), clock.as_ref(), |c| {
        c.settings.index = Some(IndexSettings {
            kind: shoal::vocab::AnnKind::Hnsw,
            min_records: 500,
            ef_construction: 40,
            ef_search: 64,
            ..Default::default()
        });
        Ok(())
    })
    .await
    .unwrap()
    .settings;
    let w = common::writer(store.clone(), &s);
    let recs: Vec<Record> = (0..2000).map(|i| record(i, 1)).collect();
    w.upsert(&recs).await.unwrap();
    common::index_now(store.as_ref(), &s).await;
    let (m, _) = shoal::coord::index_manifest::read_index_manifest(store.as_ref(), 2)
        .await
        .unwrap()
        .unwrap();
    let key = &m.shards[0].key;
    let seg = shoal::segment::load(
        store.as_ref(),
        key,
        shoal::segment::Shape {
            dimensions: DIMS,
            metric: Metric::Euclidean,
        },
    )
    .await
    .unwrap();
    assert!(seg.header().has_index, "the shard carries its HNSW graph");
    let reader = fresh_reader(&store, &s);
    let (mut found, mut total) = (0, 0);
    for qi in 0..30 {
        let mut req = SearchRequest::new(vector(40_000 + qi, 0), 10);
        let approx = reader.search(&req).await.unwrap();
        assert!(approx.stats.vectors_compared < 2000, "{:?}", approx.stats);
        req.exact = true;
        let exact = reader.search(&req).await.unwrap();
        let want: std::collections::HashSet<&String> =
            exact.results.iter().map(|h| &h.id).collect();
        found += approx
            .results
            .iter()
            .filter(|h| want.contains(&h.id))
            .count();
        total += 10;
    }
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.9, "recall@10 {recall:.3}");
}

/// `verify` accounts for the records below each watermark whose segments
/// are still in the bucket: a record the shards lost, a stale version in
/// a shard and a deleted record alive in a shard are each reported.
#[tokio::test]
async fn verify_accounts_for_every_record_below_the_watermark() {
    use shoal::coord::index_manifest::update_index;
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 1, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let recs: Vec<Record> = (0..20).map(|i| record(i, 1)).collect();
    w.upsert(&recs).await.unwrap();
    common::index_now(store.as_ref(), &s).await;
    let clean = common::verify(&store).await.unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    // A second round: newer versions of r0..r4, a delete of r5.
    let newer: Vec<Record> = (0..5).map(|i| record(i, 2)).collect();
    w.upsert(&newer).await.unwrap();
    w.delete(&["r5".into()]).await.unwrap();
    let before = shoal::coord::index_manifest::read_index_manifest(store.as_ref(), 1)
        .await
        .unwrap()
        .unwrap()
        .0;
    common::index_now(store.as_ref(), &s).await;
    assert!(common::verify(&store).await.unwrap().is_clean());
    // Roll the shards (not the watermark) back to the first round's: the
    // old versions of r0..r4 and r5 are live again, and the second
    // round's shard is gone.
    update_index(store.as_ref(), 1, Default::default(), |m| {
        m.shards = before.shards.clone();
        Ok(true)
    })
    .await
    .unwrap();
    let v = common::verify(&store).await.unwrap();
    let said = |what: &str| {
        v.problems
            .iter()
            .filter(|p| p.message.contains(what))
            .count()
    };
    assert_eq!(said("holds an older version of"), 5, "{:?}", v.problems);
    assert_eq!(
        said("was deleted at or below the index watermark"),
        1,
        "{:?}",
        v.problems
    );
    // And a shard list without any shard: every record is lost.
    update_index(store.as_ref(), 1, Default::default(), |m| {
        m.shards.clear();
        Ok(true)
    })
    .await
    .unwrap();
    let v = common::verify(&store).await.unwrap();
    assert_eq!(
        v.problems
            .iter()
            .filter(|p| p.message.contains("is in no index shard"))
            .count(),
        19,
        "{:?}",
        v.problems
    );
}

/// Issue 28 F7: a reader holding a shard set whose shards were merged
/// away and collected, its part cache empty, must not answer corrupt
/// data: a vanished shard part means its index manifest is stale, so the
/// reader refreshes and retries once (DESIGN section 8), for searches
/// and gets alike, whatever the consistency asked.
#[tokio::test]
async fn a_reader_whose_shards_were_merged_and_collected_refreshes_instead_of_failing() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model = Model::default();
    let mut stale = Vec::new();
    for round in 0..4 {
        let batch: Vec<Record> = (round * 80..round * 80 + 100)
            .map(|i| record(i, round + 1))
            .collect();
        w.upsert(&batch).await.unwrap();
        model.upsert(&batch);
        let r = common::index_now(store.as_ref(), &s).await;
        assert_eq!(r.merged.len(), usize::from(round == 3), "{r:?}");
        if round == 0 {
            // Two readers (one to search, one to get) load the partitions
            // and the one-shard set, then forget every cached part (as a
            // cache under pressure would).
            for _ in 0..2 {
                let reader = fresh_reader(&store, &s);
                reader
                    .search(&SearchRequest::new(vector(1, 0), 5))
                    .await
                    .unwrap();
                reader.evict_cached_segments().await;
                stale.push(reader);
            }
        }
    }
    let report = gc_now(&store, &s).await;
    assert!(
        report.deleted.iter().any(|k| k.ends_with(".shard")),
        "the merged shards are gone: {:?}",
        report.deleted
    );
    let fresh = fresh_reader(&store, &s);
    let mut req = SearchRequest::new(vector(10_000, 0), 10);
    req.exact = true;
    req.consistency = Consistency::Eventual;
    let got = stale[0]
        .search(&req)
        .await
        .expect("a vanished shard part is a stale view, not corrupt data");
    req.consistency = Consistency::Strong;
    let want = fresh.search(&req).await.unwrap();
    let ids = |r: &SearchResponse| r.results.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want));
    // A get of a row the stale set places in a collected shard.
    let rec = stale[1]
        .get_with("r5", Consistency::Eventual)
        .await
        .expect("a vanished shard row is a stale view, not corrupt data")
        .expect("r5 is live");
    assert_eq!(rec.vector, model.0["r5"].0);
}

/// Where to damage a shard: in its head region, or past it (a part).
#[derive(Clone, Copy)]
enum Damage {
    Head,
    Part,
}

/// An index of 4 partitions whose records r0..r299 are in one range-read
/// shard, damaged as asked (one byte flipped); with `tail`, r1000..r1009
/// wait in the tails. Returns the store, the settings and the shard's key.
async fn one_damaged_shard(damage: Damage, tail: bool) -> (Arc<Counted>, Settings, String) {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let batch: Vec<Record> = (0..300).map(|i| record(i, 1)).collect();
    w.upsert(&batch).await.unwrap();
    let r = common::index_now(store.as_ref(), &s).await;
    let shard = r.shards_written.first().expect("one shard").clone();
    if tail {
        let tail: Vec<Record> = (1000..1010).map(|i| record(i, 1)).collect();
        w.upsert(&tail).await.unwrap();
    }
    let (m, _) = shoal::coord::index_manifest::read_index_manifest(store.as_ref(), 4)
        .await
        .unwrap()
        .unwrap();
    let head = m.shards[0].head_bytes.expect("a range-read shard") as usize;
    let mut bad = store.get(&shard).await.unwrap().bytes.to_vec();
    let at = match damage {
        Damage::Head => head / 2,
        // The body is codes, then rows, then metadata (small here): three
        // quarters in is a row, whatever the code bits make the codes.
        Damage::Part => head + (bad.len() - head) * 3 / 4,
    };
    bad[at] ^= 0xff;
    store.put(&shard, bad.into()).await.unwrap();
    (store, s, shard)
}

/// Issue 28 F4: one damaged part of one shard fails a search that needs
/// it, naming the shard; with `allow_partial` the search answers from
/// everything else and names the shard and how many rows it left out.
#[tokio::test]
async fn a_damaged_shard_part_is_named_and_a_partial_search_goes_around_it() {
    let (store, s, shard) = one_damaged_shard(Damage::Part, true).await;

    let reader = fresh_reader(&store, &s);
    let mut req = SearchRequest::new(vector(1000, 1), 10);
    req.exact = true;
    let e = reader.search(&req).await.unwrap_err();
    assert!(
        e.to_string().contains(&shard),
        "the error names the shard: {e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("shoal repair --shard {shard}")),
        "and the repair: {e}"
    );
    req.allow_partial = true;
    let got = reader.search(&req).await.expect("a partial answer");
    assert!(got.partial, "{got:?}");
    assert_eq!(got.failed_shards.len(), 1, "{got:?}");
    assert_eq!(got.failed_shards[0].shard, shard);
    assert_eq!(got.failed_shards[0].rows, 300);
    assert_eq!(got.results[0].id, "r1000", "the tails still answer");
}

/// Issue 28 F4: a shard whose head is damaged does not take the index
/// down with it: a search names it, a partial search answers from
/// everything else and names it; a get that the shard might answer names
/// it too (its ids are unknown), one a tail decides is answered.
#[tokio::test]
async fn a_shard_with_a_damaged_head_is_left_out_of_partial_searches_and_named() {
    let (store, s, shard) = one_damaged_shard(Damage::Head, true).await;

    let reader = fresh_reader(&store, &s);
    let mut req = SearchRequest::new(vector(1000, 1), 10);
    let e = reader.search(&req).await.unwrap_err();
    assert!(
        e.to_string().contains(&shard),
        "the error names the shard: {e}"
    );
    req.allow_partial = true;
    let got = reader.search(&req).await.expect("a partial answer");
    assert_eq!(got.failed_shards.len(), 1, "{got:?}");
    assert_eq!(
        (
            got.failed_shards[0].shard.as_str(),
            got.failed_shards[0].rows
        ),
        (shard.as_str(), 300)
    );
    assert_eq!(got.results[0].id, "r1000", "the tails still answer");
    let e = reader.get("r5").await.unwrap_err();
    assert!(e.to_string().contains(&shard), "{e}");
    assert!(
        reader.get("r1003").await.unwrap().is_some(),
        "a tail decides it"
    );
}

/// Issue 28 F4: `shoal repair --shard` rebuilds a damaged shard from its
/// readable rows and names each live row it lost; with its head damaged
/// it drops the shard and counts what was lost. After either, every
/// search and get works again without `allow_partial`.
#[tokio::test]
async fn a_damaged_shard_is_rebuilt_from_its_readable_rows_or_dropped_saying_what_is_lost() {
    use shoal::compact::shard_repair::repair_shard;
    for damage_head in [false, true] {
        let damage = if damage_head {
            Damage::Head
        } else {
            Damage::Part
        };
        let (store, s, shard) = one_damaged_shard(damage, false).await;
        let clock: DynClock = Arc::new(SystemClock);

        let preview = repair_shard(store.as_ref(), &s, &clock, &shard, true)
            .await
            .unwrap();
        assert!(!preview.written);
        let rep = repair_shard(store.as_ref(), &s, &clock, &shard, false)
            .await
            .unwrap();
        assert_eq!(
            (rep.kept, rep.lost_ids.clone()),
            (preview.kept, preview.lost_ids.clone())
        );
        assert!(rep.written, "{rep:?}");
        assert_eq!(rep.live, 300);
        if damage_head {
            assert_eq!((rep.kept, rep.lost_unknown), (0, 300), "{rep:?}");
            assert!(rep.replaced_by.is_empty());
        } else {
            assert!(!rep.lost_ids.is_empty(), "a damaged row is named: {rep:?}");
            assert_eq!(rep.kept + rep.lost_ids.len() as u64, 300, "{rep:?}");
            assert_eq!(rep.replaced_by.len(), 1, "{rep:?}");
        }
        // Every search and get answers again, without allow_partial.
        let reader = fresh_reader(&store, &s);
        let mut req = SearchRequest::new(vector(7, 1), 10);
        req.exact = true;
        let got = reader.search(&req).await.expect("a whole answer");
        assert!(!got.partial);
        let lost: std::collections::HashSet<&str> =
            rep.lost_ids.iter().map(String::as_str).collect();
        for i in 0..300 {
            let id = format!("r{i}");
            let rec = reader.get(&id).await.expect("gets answer");
            let gone = damage_head || lost.contains(id.as_str());
            assert_eq!(rec.is_none(), gone, "{id}");
            if let Some(rec) = rec {
                assert_eq!(rec.vector, vector(i, 1), "{id} kept whole");
            }
        }
    }
}

/// Lists `key` (holding `len` bytes) as the index's one routing, of
/// generation 1, in a 2-partition index's manifest.
async fn list_routing(store: &Arc<Counted>, key: &str, len: u64) {
    use shoal::coord::index_manifest::{update_index, RoutingEntry};
    update_index(store.as_ref(), 2, Default::default(), |m| {
        m.version = 2;
        m.routings = vec![RoutingEntry {
            key: key.into(),
            generation: 1,
            clusters: 1,
            trained_rows: 1,
            bytes: len,
            head_bytes: len,
            created_at: "2026-12-04T00:00:00Z".into(),
            extra: Default::default(),
        }];
        Ok(true)
    })
    .await
    .unwrap();
}

/// `status` reads the current routing's head (what it shows of the
/// routing, calibration included, comes from there); a routing it cannot
/// read, damaged or missing, is a problem naming its key, not an error.
#[tokio::test]
async fn status_names_a_routing_it_cannot_read() {
    let store = common::memory_store();
    common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let listed = "index/routing/00000000000000000001-a.routing";
    store
        .put(listed, bytes::Bytes::from_static(b"not a routing"))
        .await
        .unwrap();
    list_routing(&store, listed, 13).await;
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    for (damage, expected) in [
        ("damaged", "routing head unreadable"),
        ("missing", "missing"),
    ] {
        if damage == "missing" {
            store.delete(listed).await.unwrap();
        }
        let st = db.status(false).await.unwrap();
        assert!(st.index.routing.is_none(), "{damage}");
        let p = st.problems.iter().find(|p| p.key == listed);
        assert!(
            p.is_some_and(|p| p.message.contains(expected)),
            "{damage}: {:?}",
            st.problems
        );
    }
}

/// GC keeps the routing objects the index manifest lists (DESIGN section
/// 12) and deletes one it does not list once it is past the grace period,
/// like any orphan under `index/`.
#[tokio::test]
async fn gc_keeps_listed_routings_and_deletes_orphan_ones() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let listed = "index/routing/00000000000000000001-a.routing";
    let orphan = "index/routing/00000000000000000002-b.routing";
    for key in [listed, orphan] {
        store
            .put(key, bytes::Bytes::from_static(b"routing"))
            .await
            .unwrap();
    }
    list_routing(&store, listed, 7).await;
    let report = gc_now(&store, &s).await;
    assert!(report.deleted.iter().any(|k| k == orphan), "{report:?}");
    assert!(!report.deleted.iter().any(|k| k == listed), "{report:?}");
    assert!(store.get(listed).await.is_ok());
    assert!(store.get(orphan).await.is_err());
}
