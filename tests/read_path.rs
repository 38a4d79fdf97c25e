//! The read path on every backend: exact search equals brute force,
//! freshness under each consistency level, request counts of warm and
//! strong queries, partial results, corrupt segments, bad requests.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shoal::coord::manifest::read_manifest;
use shoal::coord::{Metric, Settings};
use shoal::filter::parse_filter;
use shoal::index::distance;
use shoal::reader::{Consistency, ReadError, Reader, ReaderOptions, SearchRequest};
use shoal::record::{check_vector, Record};
use shoal::store::{Counted, ObjectStore};
use shoal::writer::{BatchWriter, BatchWriterOptions, Writer};

backend_tests!(
    exact_search_equals_brute_force_for_all_metrics,
    updates_and_deletes_are_visible_to_another_reader_with_strong,
    warm_queries_make_no_requests_and_strong_only_one_list,
    freshness_costs_one_list_whatever_the_partition_count,
    bounded_queries_check_in_the_background_once_per_staleness,
    a_strong_batch_get_checks_each_partition_once,
    allow_partial_names_the_partition_of_a_vanished_segment,
    a_segment_collected_under_a_reader_is_refetched_after_one_refresh,
    corrupt_segment_is_reported_by_key,
    bad_requests_are_refused_clearly,
);

const DIMS: usize = 16;

async fn setup(store: &Arc<Counted>, partitions: u32, metric: Metric) -> (Writer, Settings) {
    let settings = common::create_index(store.as_ref(), partitions, DIMS as u32, metric).await;
    let w = common::writer(store.clone(), &settings);
    (w, settings)
}

fn reader(store: &Arc<Counted>, settings: &Settings, staleness: Duration) -> Reader {
    let opts = ReaderOptions {
        max_staleness: staleness,
        cache_bytes: 256 << 20,
        ..Default::default()
    };
    Reader::new(store.clone(), settings, opts)
}

fn rand_vec(rng: &mut StdRng) -> Vec<f32> {
    (0..DIMS).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn metadata(i: usize) -> Value {
    let domains = ["medical", "legal", "product", "general"];
    json!({"domain": domains[i % 4], "price": (i * 7) % 100, "tag": format!("t{}", i % 13)})
}

/// The model: what every id should hold now.
type Model = BTreeMap<String, (Vec<f32>, serde_json::Map<String, Value>)>;

fn brute_force(
    model: &Model,
    metric: Metric,
    q: &[f32],
    k: usize,
    filter: Option<&Value>,
) -> Vec<String> {
    let f = filter.map(|f| parse_filter(f).unwrap());
    let mut scored: Vec<(f32, &String)> = model
        .iter()
        .filter(|(_, (_, m))| f.as_ref().is_none_or(|f| f.matches(m)))
        .map(|(id, (v, _))| (distance(metric, q, v), id))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(k)
        .map(|(_, id)| id.clone())
        .collect()
}

async fn exact_search_equals_brute_force_for_all_metrics(store: Arc<Counted>) {
    // One bucket per metric: reuse the backend's bucket with a prefix each.
    for (n, metric) in [Metric::Cosine, Metric::Euclidean, Metric::Dot]
        .into_iter()
        .enumerate()
    {
        let scoped = scoped(&store, &format!("m{n}")).await;
        check_exact_search(scoped, metric, 20_000).await;
    }
}

/// A store under `prefix` inside the test's bucket.
async fn scoped(store: &Arc<Counted>, prefix: &str) -> Arc<Counted> {
    let d = store.describe();
    let url = if d.starts_with("file://") {
        let dir = d.trim_start_matches("file://");
        format!("{dir}/{prefix}")
    } else {
        format!("{d}/{prefix}")
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        let opts = common::s3_options(&common::s3_endpoint().unwrap());
        let s = shoal::store::s3::S3Store::open(rest, &opts).await.unwrap();
        return Arc::new(Counted::new(Arc::new(s)));
    }
    shoal::store::open(&url).await.unwrap()
}

async fn check_exact_search(store: Arc<Counted>, metric: Metric, n: usize) {
    let (w, settings) = setup(&store, 8, metric).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut model = Model::new();
    let bw = BatchWriter::new(w.clone(), BatchWriterOptions::default());
    let records: Vec<Record> = (0..n)
        .map(|i| Record::new(format!("id{i:05}"), rand_vec(&mut rng)).with_metadata(metadata(i)))
        .collect();
    bw.add(&records).await.unwrap();
    bw.close().await.unwrap();
    for r in &records {
        let v = check_vector(0, &r.id, &r.vector, DIMS, metric).unwrap();
        model.insert(
            r.id.clone(),
            (v, r.metadata.clone().unwrap().as_object().unwrap().clone()),
        );
    }
    // Updates (new vectors, some with new metadata) and deletes.
    let updates: Vec<Record> = (0..2_000)
        .map(|j| {
            let i = (j * 9) % n;
            Record::new(format!("id{i:05}"), rand_vec(&mut rng)).with_metadata(metadata(i + 1))
        })
        .collect();
    w.upsert(&updates[..1000]).await.unwrap();
    w.upsert(&updates[1000..]).await.unwrap();
    for r in &updates {
        let v = check_vector(0, &r.id, &r.vector, DIMS, metric).unwrap();
        model.insert(
            r.id.clone(),
            (v, r.metadata.clone().unwrap().as_object().unwrap().clone()),
        );
    }
    let deletes: Vec<String> = (0..1_000)
        .map(|j| format!("id{:05}", (j * 17 + 5) % n))
        .collect();
    w.delete(&deletes).await.unwrap();
    for id in &deletes {
        model.remove(id);
    }

    let r = reader(&store, &settings, Duration::from_secs(60));
    let filters = [
        None,
        Some(json!({"domain": "medical"})),
        Some(json!({"price": {"$lt": 5}})),
        Some(json!({"$or": [{"domain": "legal"}, {"tag": {"$in": ["t1", "t2"]}}]})),
        Some(json!({"domain": {"$ne": "general"}, "price": {"$gte": 90}})),
        Some(json!({"tag": "t12", "price": {"$lte": 3}})),
    ];
    for qi in 0..30 {
        let q = rand_vec(&mut rng);
        let filter = filters[qi % filters.len()].clone();
        let k = [1, 10, 57][qi % 3];
        let mut req = SearchRequest::new(q.clone(), k);
        req.filter = filter.clone();
        let resp = r.search(&req).await.unwrap();
        let qn = check_vector(0, "q", &q, DIMS, metric).unwrap();
        let want = brute_force(&model, metric, &qn, k, filter.as_ref());
        let got: Vec<String> = resp.results.iter().map(|h| h.id.clone()).collect();
        assert_eq!(got, want, "{metric} query {qi} filter {filter:?}");
        assert!(!resp.partial);
        for h in &resp.results {
            let (v, m) = &model[&h.id];
            assert_eq!(h.metadata.as_ref().unwrap(), m, "metadata of {}", h.id);
            let (score, dist) = shoal::index::present(metric, distance(metric, &qn, v));
            assert!((h.score - score).abs() < 1e-5 && (h.distance.unwrap() - dist).abs() < 1e-5);
        }
        assert_eq!(resp.stats.partitions_searched, 8);
    }
}

async fn updates_and_deletes_are_visible_to_another_reader_with_strong(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 4, Metric::Euclidean).await;
    let mut rng = StdRng::seed_from_u64(2);
    let recs: Vec<Record> = (0..200)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let other = reader(&store, &settings, Duration::from_secs(3600));
    other.warm().await.unwrap();
    let target = vec![9.0f32; DIMS];
    let mut req = SearchRequest::new(target.clone(), 1);
    req.consistency = Consistency::Strong;
    assert_ne!(other.search(&req).await.unwrap().results[0].id, "r7");
    // Move r7 right onto the query.
    w.upsert(&[Record::new("r7", target.clone())])
        .await
        .unwrap();
    let eventual = SearchRequest {
        consistency: Consistency::Eventual,
        ..req.clone()
    };
    assert_ne!(
        other.search(&eventual).await.unwrap().results[0].id,
        "r7",
        "eventual uses the cached manifest"
    );
    let hit = &other.search(&req).await.unwrap().results[0];
    assert_eq!(
        (hit.id.as_str(), hit.distance),
        ("r7", Some(0.0)),
        "strong sees the upsert at once"
    );
    w.delete(&["r7".into()]).await.unwrap();
    let resp = other
        .search(&SearchRequest::new(target.clone(), 200).tap_strong())
        .await
        .unwrap();
    assert!(
        resp.results.iter().all(|h| h.id != "r7"),
        "strong sees the delete at once"
    );
    assert_eq!(resp.results.len(), 199);
    assert!(other
        .get_with("r7", Consistency::Strong)
        .await
        .unwrap()
        .is_none());
    assert!(other
        .get_with("r8", Consistency::Strong)
        .await
        .unwrap()
        .is_some());
}

trait TapStrong {
    fn tap_strong(self) -> Self;
}
impl TapStrong for SearchRequest {
    fn tap_strong(mut self) -> Self {
        self.consistency = Consistency::Strong;
        self
    }
}

async fn warm_queries_make_no_requests_and_strong_only_one_list(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 8, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(3);
    let recs: Vec<Record> = (0..500)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let r = reader(&store, &settings, Duration::from_secs(3600));
    assert_eq!(r.warm().await.unwrap(), 500);
    let q = rand_vec(&mut rng);
    let warm = r.search(&SearchRequest::new(q.clone(), 10)).await.unwrap();
    assert_eq!(
        warm.stats.requests.total(),
        0,
        "warm bounded query: {:?}",
        warm.stats.requests
    );
    assert_eq!(warm.stats.cache_misses, 0);
    assert!(warm.stats.cache_hits >= 8);
    let strong = r
        .search(&SearchRequest::new(q, 10).tap_strong())
        .await
        .unwrap();
    let c = strong.stats.requests;
    assert_eq!(c.list, 1, "one LIST shows every manifest unchanged: {c:?}");
    assert_eq!(c.total(), 1, "nothing else: {c:?}");
    assert_eq!(strong.results, warm.results);
}

/// A strong query's freshness check is one LIST at 100 partitions as at
/// 8, and after a write it fetches only what changed: the one manifest
/// and its new segment. The write is seen (read-your-writes).
async fn freshness_costs_one_list_whatever_the_partition_count(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 100, Metric::Euclidean).await;
    let mut rng = StdRng::seed_from_u64(11);
    let recs: Vec<Record> = (0..400)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let r = reader(&store, &settings, Duration::from_secs(3600));
    r.warm().await.unwrap();
    let q = rand_vec(&mut rng);
    let strong = SearchRequest::new(q.clone(), 5).tap_strong();
    let c = r.search(&strong).await.unwrap().stats.requests;
    assert_eq!((c.list, c.total()), (1, 1), "nothing changed: {c:?}");
    // A record right at the query, written by another writer.
    let other = common::writer(store.clone(), &settings);
    other
        .upsert(&[Record::new("new", q.clone())])
        .await
        .unwrap();
    let after = r.search(&strong).await.unwrap();
    let c = after.stats.requests;
    assert_eq!(after.results[0].id, "new", "the acknowledged write is seen");
    assert_eq!(c.list, 1, "{c:?}");
    assert_eq!(c.get, 2, "the changed manifest and its new segment: {c:?}");
    assert_eq!(c.total(), 3, "nothing else: {c:?}");
}

/// Bounded queries at a steady rate send about two LISTs per
/// `max_staleness` (run in the background: a query whose copy is recent
/// enough makes no request itself), and still see a write within the
/// bound plus one check.
async fn bounded_queries_check_in_the_background_once_per_staleness(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 16, Metric::Euclidean).await;
    let mut rng = StdRng::seed_from_u64(12);
    let recs: Vec<Record> = (0..200)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    // Long enough that a background check (one LIST, then the changed
    // manifest and segment) ends well within half of it on a busy machine.
    let staleness = Duration::from_secs(1);
    let r = reader(&store, &settings, staleness);
    r.warm().await.unwrap();
    let q = rand_vec(&mut rng);
    w.upsert(&[Record::new("new", q.clone())]).await.unwrap();
    let before = r.stats().requests;
    let start = std::time::Instant::now();
    let (mut queries, mut waited, mut seen) = (0u64, 0u64, None);
    while start.elapsed() < Duration::from_secs(3) {
        let got = r.search(&SearchRequest::new(q.clone(), 1)).await.unwrap();
        queries += 1;
        waited += u64::from(got.stats.requests.list > 0);
        if got.results[0].id == "new" && seen.is_none() {
            seen = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let lists = r.stats().requests.since(&before).list;
    assert!(queries >= 20, "{queries}");
    // 3 s at 1 s, a check once the copies are 500 ms old: about 6, never
    // one per query.
    assert!(
        (1..=10).contains(&lists),
        "{lists} LISTs for {queries} queries"
    );
    assert!(waited <= 1, "{waited} queries waited for a check");
    let seen = seen.expect("the write became visible");
    assert!(seen < Duration::from_millis(2500), "seen after {seen:?}");
}

/// A batch get (S3 Vectors' GetVectors) answers each id as a single get
/// does, and a strong one checks freshness once for the batch (one LIST),
/// not once per id.
async fn a_strong_batch_get_checks_each_partition_once(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 8, Metric::Euclidean).await;
    let mut rng = StdRng::seed_from_u64(5);
    let recs: Vec<Record> = (0..300)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let gone: Vec<String> = (0..300).step_by(7).map(|i| format!("r{i}")).collect();
    w.delete(&gone).await.unwrap();
    let r = reader(&store, &settings, Duration::from_secs(3600));
    r.warm().await.unwrap();
    // Every written id (some deleted) and some never written, in an order
    // that mixes partitions.
    let ids: Vec<String> = (0..320).rev().map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let before = store.counts();
    let batch = r.get_many(&refs, Consistency::Strong).await.unwrap();
    let c = store.counts().since(&before);
    assert_eq!(c.list, 1, "one LIST checks every manifest: {c:?}");
    assert_eq!(c.total(), 1, "nothing else: {c:?}");
    assert_eq!(batch.len(), ids.len());
    let mut found = 0;
    for (id, got) in ids.iter().zip(&batch) {
        let i: usize = id[1..].parse().unwrap();
        match got {
            Some(rec) => {
                assert!(i < 300 && !i.is_multiple_of(7), "{id} should not be found");
                assert_eq!(&rec.id, id);
                assert_eq!(rec.vector, recs[i].vector, "{id}");
                found += 1;
            }
            None => assert!(
                i >= 300 || i.is_multiple_of(7),
                "{id} is live but was not found"
            ),
        }
    }
    assert_eq!(found, 300 - gone.len());
}

async fn allow_partial_names_the_partition_of_a_vanished_segment(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 4, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(4);
    let recs: Vec<Record> = (0..100)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    // A write to partition 2 alone is a segment of its own (the write
    // above is one batch object for all four partitions).
    let only_2 = (100..)
        .map(|i| format!("r{i}"))
        .find(|id| shoal::coord::partition_of(id, 4) == 2)
        .unwrap();
    w.upsert(&[Record::new(only_2, rand_vec(&mut rng))])
        .await
        .unwrap();
    let (m, _) = read_manifest(store.as_ref(), 2).await.unwrap().unwrap();
    let victim = m.segments.last().unwrap().key.clone();
    assert!(victim.starts_with("vectors/p002/"), "{victim}");
    store.delete(&victim).await.unwrap();
    let r = reader(&store, &settings, Duration::from_secs(60));
    let q = rand_vec(&mut rng);
    let err = r
        .search(&SearchRequest::new(q.clone(), 100))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ReadError::Partition { partition: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("partition 2") && msg.contains(&victim),
        "{msg}"
    );
    let mut req = SearchRequest::new(q, 100);
    req.allow_partial = true;
    let resp = r.search(&req).await.unwrap();
    assert!(resp.partial);
    assert_eq!(resp.failed_partitions.len(), 1);
    assert_eq!(resp.failed_partitions[0].partition, 2);
    assert!(resp.failed_partitions[0].error.contains(&victim));
    assert!(!resp.results.is_empty());
    assert!(resp.results.iter().all(|h| h.partition != 2));
    assert_eq!(resp.stats.partitions_searched, 3);
}

async fn corrupt_segment_is_reported_by_key(store: Arc<Counted>) {
    let (w, settings) = setup(&store, 1, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(5);
    w.upsert(&[Record::new("a", rand_vec(&mut rng))])
        .await
        .unwrap();
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    let key = m.segments[0].key.clone();
    let mut bytes = store.get(&key).await.unwrap().bytes.to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    store.put(&key, Bytes::from(bytes)).await.unwrap();
    let r = reader(&store, &settings, Duration::from_secs(60));
    let e = r
        .search(&SearchRequest::new(rand_vec(&mut rng), 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&key) && e.contains("corrupt segment"), "{e}");
    let e = r.get("a").await.unwrap_err().to_string();
    assert!(e.contains(&key), "{e}");
}

async fn bad_requests_are_refused_clearly(store: Arc<Counted>) {
    let (_w, settings) = setup(&store, 2, Metric::Cosine).await;
    let r = reader(&store, &settings, Duration::from_secs(60));
    let v = vec![1.0f32; DIMS];
    let cases: Vec<(SearchRequest, &str)> = vec![
        (
            SearchRequest::new(v.clone(), 0),
            "k must be between 1 and 1000, got 0",
        ),
        (SearchRequest::new(v.clone(), 1001), "got 1001"),
        (
            SearchRequest::new(vec![1.0; 3], 5),
            "query vector has 3 dimensions; the index has 16",
        ),
        (SearchRequest::new(vec![0.0; DIMS], 5), "all zeros"),
        (
            {
                let mut x = v.clone();
                x[2] = f32::NAN;
                SearchRequest::new(x, 5)
            },
            "component 2 is NaN",
        ),
        (
            SearchRequest {
                filter: Some(json!({"price": {"$near": 3}})),
                ..SearchRequest::new(v.clone(), 5)
            },
            "unknown operator `$near`",
        ),
    ];
    let before = store.counts().total();
    for (req, want) in cases {
        let e = r.search(&req).await.unwrap_err().to_string();
        assert!(e.contains(want), "got {e}, want {want}");
    }
    assert_eq!(store.counts().total(), before, "bad requests touch nothing");
    // An empty index answers with no results.
    let resp = r.search(&SearchRequest::new(v, 5)).await.unwrap();
    assert!(resp.results.is_empty());
}

// ---- memory only: bounded staleness under tokio's paused clock ----

#[tokio::test(start_paused = true)]
async fn bounded_queries_see_writes_within_max_staleness() {
    let store = common::memory_store();
    let (w, settings) = setup(&store, 2, Metric::Euclidean).await;
    w.upsert(&[Record::new("a", vec![1.0; DIMS])])
        .await
        .unwrap();
    let r = reader(&store, &settings, Duration::from_secs(1));
    let q = SearchRequest::new(vec![5.0; DIMS], 1);
    assert_eq!(r.search(&q).await.unwrap().results[0].id, "a");
    w.upsert(&[Record::new("b", vec![5.0; DIMS])])
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    let resp = r.search(&q).await.unwrap();
    assert_eq!(
        resp.results[0].id, "a",
        "within max_staleness the cached manifest is used"
    );
    assert_eq!(resp.stats.requests.total(), 0);
    tokio::time::advance(Duration::from_millis(600)).await;
    let resp = r.search(&q).await.unwrap();
    assert_eq!(
        resp.results[0].id, "b",
        "after max_staleness the write is visible"
    );
    // A per-query staleness override.
    w.upsert(&[Record::new("c", vec![5.0; DIMS])])
        .await
        .unwrap();
    let mut fresh = q.clone();
    fresh.max_staleness_ms = Some(0);
    assert_eq!(
        r.search(&fresh).await.unwrap().results[0].id,
        "b",
        "tie broken by id: b < c"
    );
    w.delete(&["b".into()]).await.unwrap();
    assert_eq!(r.search(&fresh).await.unwrap().results[0].id, "c");
}

#[tokio::test]
async fn concurrent_cold_queries_load_each_segment_once() {
    let store = common::memory_store();
    let (w, settings) = setup(&store, 4, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(6);
    let recs: Vec<Record> = (0..100)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let r = reader(&store, &settings, Duration::from_secs(60));
    let before = store.counts();
    let q = rand_vec(&mut rng);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (r, q) = (r.clone(), q.clone());
            tokio::spawn(async move { r.search(&SearchRequest::new(q, 5)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let d = store.counts().since(&before);
    // 4 manifests + the one batch object holding the 4 partitions'
    // sections + the index manifest, once each, however many queries raced.
    assert_eq!(d.get, 6, "{d:?}");
    let s = r.stats();
    assert_eq!(s.cache_misses, 4);
    assert_eq!(s.live_records, 100);
}

#[tokio::test]
async fn reader_role_prefetches_and_feeds_instance_metrics() {
    use shoal::coord::role::RoleEnv;
    use shoal::coord::{JoinOptions, Role};
    use shoal::{Db, OpenOptions};
    let store = common::memory_store();
    let (w, _) = setup(&store, 4, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(8);
    let recs: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let c = Db::open_store(
        store.clone(),
        OpenOptions {
            cluster: JoinOptions {
                role: Some(Role::Reader),
                background_heartbeat: false,
                env: RoleEnv::default(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let opts = ReaderOptions::for_role(c.role());
    assert!(opts.prefetch, "the reader role prefetches");
    // Wait (bounded) for the background prefetch to load all partitions.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.reader_stats().partitions_loaded < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resp = c
        .search(&SearchRequest::new(rand_vec(&mut rng), 3))
        .await
        .unwrap();
    assert_eq!(
        resp.stats.cache_misses, 0,
        "first query after prefetch is warm"
    );
    c.heartbeat_now().await.unwrap();
    let rec = c.instance_record().await;
    assert_eq!(rec.metrics.vector_count, 40);
    assert_eq!(rec.metrics.queries, 1);
    assert!(rec.metrics.cache_hit_rate > 0.0);
    assert_eq!(
        Role::Writer.preset().aggressive_prefetch,
        ReaderOptions::for_role(Role::Writer).prefetch
    );
}

const CHILD_URL: &str = "SHOAL_CHILD_BUCKET";
const CHILD_QUERY: &str = "SHOAL_CHILD_QUERY";

/// Helper run as a separate OS process by `strong_reads_see_writes_from_another_process`:
/// opens the bucket cold, runs one strong search, prints `TOP=<id>`.
#[tokio::test]
#[ignore = "helper: spawned as a separate process"]
async fn child_strong_search() {
    let url = std::env::var(CHILD_URL).expect("run by the parent test");
    let q: Vec<f32> = serde_json::from_str(&std::env::var(CHILD_QUERY).unwrap()).unwrap();
    let store = match url.strip_prefix("s3://") {
        Some(rest) => {
            let opts = common::s3_options(&common::s3_endpoint().unwrap());
            let s = shoal::store::s3::S3Store::open(rest, &opts).await.unwrap();
            Arc::new(Counted::new(Arc::new(s)))
        }
        None => shoal::store::open(&url).await.unwrap(),
    };
    let (cfg, _) = shoal::coord::config::read_config(store.as_ref())
        .await
        .unwrap()
        .unwrap();
    let r = reader(&store, &cfg.settings, Duration::from_secs(3600));
    let resp = r
        .search(&SearchRequest::new(q, 1).tap_strong())
        .await
        .unwrap();
    let top = resp
        .results
        .first()
        .map_or("none".to_string(), |h| h.id.clone());
    println!("TOP={top}");
}

fn child_top(url: &str, q: &[f32]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_strong_search", "--nocapture"])
        .env(CHILD_URL, url)
        .env(CHILD_QUERY, serde_json::to_string(q).unwrap())
        .output()
        .expect("spawn child process");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOP="))
        .unwrap_or_else(|| panic!("no TOP= line in {stdout}"))
        .to_string()
}

async fn strong_reads_across_processes(store: Arc<Counted>, url: &str) {
    let (w, _) = setup(&store, 4, Metric::Euclidean).await;
    let mut rng = StdRng::seed_from_u64(9);
    let recs: Vec<Record> = (0..50)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let target = vec![7.0f32; DIMS];
    assert_ne!(child_top(url, &target), "r3");
    w.upsert(&[Record::new("r3", target.clone())])
        .await
        .unwrap();
    assert_eq!(
        child_top(url, &target),
        "r3",
        "another process sees the upsert"
    );
    w.delete(&["r3".into()]).await.unwrap();
    assert_ne!(
        child_top(url, &target),
        "r3",
        "another process sees the delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_see_writes_from_another_process_local() {
    let (store, dir) = common::local_store();
    strong_reads_across_processes(store, dir.path().to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_see_writes_from_another_process_s3() {
    let Some(store) = common::s3_store().await else {
        return;
    };
    let url = store.describe();
    strong_reads_across_processes(store, &url).await;
}

/// Regression (found by the simulation, seed 103): with a paused or coarse
/// clock a refresh made by an earlier strong query carried the same instant
/// as a later strong query's start, so the later query reused a view from
/// before a write it had to see.
#[tokio::test(start_paused = true)]
async fn strong_reads_see_writes_even_when_no_time_passes() {
    let store = common::memory_store();
    let (w, settings) = setup(&store, 2, Metric::Euclidean).await;
    let r = reader(&store, &settings, Duration::from_secs(3600));
    let q = SearchRequest::new(vec![3.0; DIMS], 1).tap_strong();
    w.upsert(&[Record::new("a", vec![1.0; DIMS])])
        .await
        .unwrap();
    assert_eq!(r.search(&q).await.unwrap().results[0].id, "a");
    // No time passes (paused clock): the next strong query must still look.
    w.upsert(&[Record::new("b", vec![3.0; DIMS])])
        .await
        .unwrap();
    assert_eq!(r.search(&q).await.unwrap().results[0].id, "b");
    w.delete(&["b".into()]).await.unwrap();
    assert_eq!(r.search(&q).await.unwrap().results[0].id, "a");
    assert!(r
        .get_with("b", Consistency::Strong)
        .await
        .unwrap()
        .is_none());
}

/// Transient GET errors (503 SlowDown) are retried with backoff inside the
/// query's deadline: a few of them cost latency, not the query. A store
/// that keeps failing ends the query by its deadline, naming the key.
#[tokio::test]
async fn transient_read_errors_are_retried_within_the_query_deadline() {
    use shoal::store::faults::{FailNext, Op};
    let store = common::memory_store();
    let (w, settings) = setup(&store, 4, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(11);
    let recs: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let flaky = Arc::new(FailNext::new(store.clone(), Op::Get, 0));
    let reader = Reader::new(flaky.clone(), &settings, ReaderOptions::default());
    let q = SearchRequest::new(rand_vec(&mut rng), 5);
    // Cold: 4 manifests and 4 segments to GET, 6 of the GETs fail first.
    flaky.fail_next(6);
    let resp = reader
        .search(&q)
        .await
        .expect("transient errors are retried");
    assert_eq!(resp.results.len(), 5);
    // Every GET fails: the query ends by its deadline with the key named.
    let cold = Reader::new(flaky.clone(), &settings, ReaderOptions::default());
    flaky.fail_next(u64::MAX);
    let started = std::time::Instant::now();
    let e = cold
        .search(&SearchRequest {
            deadline_ms: Some(300),
            ..q.clone()
        })
        .await
        .expect_err("a store that keeps failing fails the query");
    let took = started.elapsed();
    assert!(e.is_retryable(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("_brainy/manifests/p00"),
        "names the key: {msg}"
    );
    assert!(
        took < Duration::from_secs(5),
        "bounded by the deadline, took {took:?}"
    );
}

/// DESIGN 8: a segment that is gone (404) means the reader's manifest is
/// older than a compaction plus GC; it refreshes that manifest and retries
/// once. Exercised with a forced cache miss: the reader's cache is emptied,
/// so its second query must fetch the segments its (stale, but within
/// staleness) manifest names, and finds them collected.
async fn a_segment_collected_under_a_reader_is_refetched_after_one_refresh(store: Arc<Counted>) {
    use shoal::compact::{compact_partition, CompactOptions, Outcome};
    let (w, settings) = setup(&store, 1, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(44);
    let recs: Vec<Record> = (0..30)
        .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
        .collect();
    for chunk in recs.chunks(10) {
        w.upsert(chunk).await.unwrap();
    }
    let r = reader(&store, &settings, Duration::from_secs(3600));
    let q = SearchRequest::new(rand_vec(&mut rng), 30);
    let before = r.search(&q).await.unwrap();
    assert_eq!(before.results.len(), 30);
    // Compaction retires the three segments, GC deletes them.
    let clock: shoal::coord::clock::DynClock = Arc::new(shoal::coord::clock::SystemClock);
    let opts = CompactOptions {
        force: true,
        ..Default::default()
    };
    let out = compact_partition(store.as_ref(), &settings, 0, "c", &clock, &opts)
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Compacted(_)), "{out:?}");
    let gc = shoal::compact::gc::gc(
        store.as_ref(),
        &settings,
        &clock,
        &shoal::compact::gc::GcOptions {
            grace: Some(Duration::ZERO),
            allow_unsafe_grace: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(gc.deleted.len(), 3, "{gc:?}");
    // Within its staleness the reader trusts its old manifest; with its
    // cache emptied it fetches the segments that manifest names, finds them
    // gone, refreshes once and answers from the compacted one.
    r.evict_cached_segments().await;
    let after = r.search(&q).await.expect("refreshed and retried");
    assert!(
        after.stats.requests.not_found >= 1,
        "the stale manifest's segment was fetched and missing: {:?}",
        after.stats.requests
    );
    let ids = |resp: &shoal::reader::SearchResponse| {
        resp.results
            .iter()
            .map(|h| h.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
}

/// A segment a query fetched is one miss, not a miss and a hit (the
/// refresh loads it, the query then reads it through the cache): a cold
/// query over N segments reports N misses and no hits; the next query N
/// hits and no misses; the reader's totals agree.
#[tokio::test]
async fn a_fetched_segment_is_one_miss_not_a_miss_and_a_hit() {
    let store = common::memory_store();
    let (w, settings) = setup(&store, 4, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..3 {
        let recs: Vec<Record> = (0..40)
            .map(|i| Record::new(format!("r{i}"), rand_vec(&mut rng)))
            .collect();
        w.upsert(&recs).await.unwrap();
    }
    let segments = 3 * 4; // three upserts over four partitions
    let r = reader(&store, &settings, Duration::from_secs(3600));
    let q = SearchRequest::new(rand_vec(&mut rng), 5);
    let cold = r.search(&q).await.unwrap();
    assert_eq!(
        (cold.stats.cache_misses, cold.stats.cache_hits),
        (segments, 0),
        "{:?}",
        cold.stats
    );
    let warm = r.search(&q).await.unwrap();
    assert_eq!(
        (warm.stats.cache_misses, warm.stats.cache_hits),
        (0, segments),
        "{:?}",
        warm.stats
    );
    let s = r.stats();
    assert_eq!((s.cache_misses, s.cache_hits), (segments, segments));
}

/// Readiness probes arrive every few seconds from every load balancer and
/// kubelet: a success is reused for a few seconds instead of costing a
/// store GET each time (operations issue, `/readyz`).
#[tokio::test]
async fn readiness_checks_reuse_a_recent_success() {
    let store = common::memory_store();
    common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Dot).await;
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    let before = store.counts();
    for _ in 0..5 {
        db.ready().await.unwrap();
    }
    assert_eq!(
        store.counts().since(&before).get,
        1,
        "one GET for five probes"
    );
}
