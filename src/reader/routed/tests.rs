use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::compact::indexer::{index_round, IndexOptions};
use crate::coord::clock::{DynClock, SystemClock};
use crate::coord::index_manifest::read_index_manifest;
use crate::coord::Settings;
use crate::index::routing::Routing;
use crate::reader::ranged::Blocks;
use crate::reader::view::CacheTally;
use crate::reader::{Consistency, Reader, ReaderOptions, SearchRequest};
use crate::record::Record;
use crate::segment::routed::RoutedHead;
use crate::store::memory::MemoryStore;
use crate::store::{
    ByteRange, Conditional, Counted, DynStore, ETag, GetResult, ObjectMeta, ObjectStore, Result,
};

/// A store that logs every ranged GET.
#[derive(Debug)]
struct Ranges {
    inner: DynStore,
    log: Mutex<Vec<(String, Range<u64>)>>,
}

#[async_trait]
impl ObjectStore for Ranges {
    async fn get(&self, key: &str) -> Result<GetResult> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let got = self.inner.get_range(key, range).await?;
        let start = range.start;
        let r = start..start + got.len() as u64;
        self.log.lock().unwrap().push((key.to_string(), r));
        Ok(got)
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        self.inner.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.inner.put_if_absent(key, bytes).await
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        self.inner.put_if_match(key, bytes, etag).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<crate::store::ObjectMeta>> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        "ranges".into()
    }
}

const DIMS: usize = 32;

fn vector(i: usize) -> Vec<f32> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let centre = i % 60;
    (0..DIMS)
        .map(|j| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let noise = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            let c = ((centre * 31 + j * 7) % 13) as f32;
            c + noise
        })
        .collect()
}

async fn routed_index(store: &DynStore, rows: usize) -> Settings {
    routed_index_of(store, (0..rows).map(vector).collect()).await
}

/// An index of `vectors` (ids `r0`, `r1`, ...), built by a forced round.
async fn routed_index_of(store: &DynStore, vectors: Vec<Vec<f32>>) -> Settings {
    let dims = vectors[0].len();
    let (settings, w) = crate::reader::tests::index_with_writer(store, 2, dims).await;
    let clock: DynClock = Arc::new(SystemClock);
    let recs: Vec<Record> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| Record::new(format!("r{i}"), v))
        .collect();
    for chunk in recs.chunks(5000) {
        w.upsert(chunk).await.unwrap();
    }
    let opts = IndexOptions {
        force: true,
        ..Default::default()
    };
    index_round(store.as_ref(), &settings, "ix", &clock, opts)
        .await
        .unwrap();
    settings
}

/// The index manifest of partition 2's index and its current routing.
async fn manifest_and_routing(
    store: &DynStore,
) -> (crate::coord::index_manifest::IndexManifest, Routing) {
    let (m, _) = read_index_manifest(store.as_ref(), 2)
        .await
        .unwrap()
        .unwrap();
    let entry = m.current_routing().unwrap();
    let routing = Routing::decode(&store.get(&entry.key).await.unwrap().bytes).unwrap();
    (m, routing)
}

/// A routing too big to hold whole is held as its top level and its
/// groups' blocks are read by range (`u8` codes, snapped at training):
/// a reader routes through them exactly as through the whole routing.
#[tokio::test]
async fn a_routing_read_by_range_routes_as_one_held_whole() {
    let inner: DynStore = Arc::new(MemoryStore::unique());
    let settings = routed_index(&inner, 30_000).await;
    let (m, routing) = manifest_and_routing(&inner).await;
    let entry = m.current_routing().unwrap();
    let h = &routing.head;
    assert!(h.groups() >= 4, "{} groups", h.groups());
    assert!(h.groups.iter().all(|g| g.snapped(h.dimensions)));

    let search = |reader: Reader, q: Vec<f32>| async move {
        let mut req = SearchRequest::new(q, 10);
        req.consistency = Consistency::Strong;
        req.nprobe = Some(1);
        reader.search(&req).await.unwrap().results
    };
    let whole = Reader::new(inner.clone(), &settings, ReaderOptions::default());
    // Loaded (routing and all) before the limit drops.
    assert_eq!(search(whole.clone(), vector(1)).await.len(), 10);
    let logged = Arc::new(Ranges {
        inner: inner.clone(),
        log: Mutex::default(),
    });
    super::HOLD_WHOLE_LIMIT.with(|l| l.set(0));
    let by_range = Reader::new(logged.clone(), &settings, ReaderOptions::default());
    let mut compared = 0;
    for i in (0..30_000).step_by(1_499) {
        let q: Vec<f32> = vector(i).iter().map(|x| x + 0.02).collect();
        let a = search(whole.clone(), q.clone()).await;
        let b = search(by_range.clone(), q).await;
        assert_eq!(a.len(), 10);
        let ids = |r: &[crate::reader::Hit]| r.iter().map(|h| (h.id.clone(), h.score)).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "query {i}");
        compared += 1;
    }
    super::HOLD_WHOLE_LIMIT.with(|l| l.set(super::HOLD_WHOLE_BYTES));
    assert!(compared >= 20);
    // The range-read reader fetched its head, then group blocks by
    // their ranges (adjacent ones coalesced).
    let log = logged.log.lock().unwrap().clone();
    let reads: Vec<&Range<u64>> = log
        .iter()
        .filter(|(k, _)| *k == entry.key)
        .map(|(_, r)| r)
        .collect();
    assert!(reads.iter().any(|r| r.start == 0 && r.end == h.region_len()));
    let groups: Vec<&&Range<u64>> = reads.iter().filter(|r| r.start > 0).collect();
    assert!(!groups.is_empty(), "no group block read by range");
    for r in groups {
        assert!(
            h.groups.iter().any(|g| g.offset == r.start)
                && h.groups.iter().any(|g| g.offset + g.len == r.end),
            "{r:?} does not span whole group blocks"
        );
    }
}

/// A query reads, of each routed shard, its head and the blocks of the
/// clusters it probes (their probe blocks and the rows it reranks),
/// nothing of any other cluster beyond the small gaps a coalesced
/// request reads through; and it probes `nprobe ×
/// probes_per_nprobe` clusters however many the routing has.
#[tokio::test]
async fn a_query_reads_only_the_probed_clusters_blocks() {
    let inner: DynStore = Arc::new(MemoryStore::unique());
    let settings = routed_index(&inner, 30_000).await;
    let (m, routing) = manifest_and_routing(&inner).await;
    assert!(routing.head.clusters >= 20, "{}", routing.head.clusters);
    let mut heads = Vec::new();
    for s in &m.shards {
        let bytes = inner.get(&s.key).await.unwrap().bytes;
        heads.push((
            s.key.clone(),
            RoutedHead::parse(&s.key, &bytes, s.bytes).unwrap(),
        ));
    }

    let logged = Arc::new(Ranges {
        inner: inner.clone(),
        log: Mutex::default(),
    });
    let reader = Reader::new(logged.clone(), &settings, ReaderOptions::default());
    let q: Vec<f32> = vector(12_345).iter().map(|x| x + 0.01).collect();
    let mut req = SearchRequest::new(q.clone(), 10);
    req.consistency = Consistency::Strong;
    req.nprobe = Some(1);
    let got = reader.search(&req).await.unwrap();
    assert_eq!(got.results.len(), 10);
    assert!(
        got.results.iter().any(|h| h.id == "r12345"),
        "{:?}",
        got.results
    );

    // The clusters a query with nprobe 1 probes: the nearest few.
    let probes = routing.head.probes_per_nprobe();
    let groups = routing.head.groups() as u32;
    let probed: Vec<u32> = routing
        .nearest(&q, groups as usize, probes)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let log = logged.log.lock().unwrap().clone();
    let mut read = 0;
    for (key, range) in log.iter().filter(|(k, _)| k.contains("/shards/")) {
        let (_, head) = heads.iter().find(|(k, _)| k == key).unwrap();
        if range.start == 0 {
            continue; // the head
        }
        // The bytes of probed clusters' blocks this request covers.
        let mut wanted = 0;
        let mut blocks = 0;
        for c in &probed {
            let Some(pos) = head.position(*c) else {
                continue;
            };
            let e = &head.clusters[pos];
            for b in [
                head.probe_range(pos),
                head.rows_range(pos, 0, u64::from(e.rows)),
                e.metadata.range(),
            ] {
                let overlap = range
                    .end
                    .min(b.end)
                    .saturating_sub(range.start.max(b.start));
                wanted += overlap;
                blocks += u64::from(overlap > 0);
            }
        }
        assert!(
            blocks > 0,
            "{key} {range:?} reads no probed cluster's block"
        );
        let gaps = (range.end - range.start) - wanted;
        assert!(
            gaps <= blocks * (64 << 10),
            "{key} {range:?}: {gaps} bytes of other clusters"
        );
        read += range.end - range.start;
    }
    let total: u64 = m.shards.iter().map(|s| s.bytes).sum();
    assert!(read > 0);
    assert!(read * 4 < total, "read {read} of {total} shard bytes");
}

/// On data with no structure for clusters to find, a query's neighbours
/// spread over many clusters: the routing's calibration asks for more
/// probes than the default, and the reader probes them, so recall@10
/// holds at the default `nprobe` without tuning.
#[tokio::test]
async fn a_query_probes_as_many_clusters_as_the_routing_calibrated() {
    use rand::{Rng, SeedableRng};
    let (rows, dims) = (64_000, 64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut noise = |n: usize| -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| (0..dims).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect()
    };
    let data = noise(rows);
    let store: DynStore = Arc::new(MemoryStore::unique());
    let settings = routed_index_of(&store, data.clone()).await;
    let (_, routing) = manifest_and_routing(&store).await;
    let default = 8 * crate::index::routing::PROBES_PER_NPROBE;
    let calibrated = routing.head.calibrated_probes as usize;
    assert!(
        calibrated > default && (calibrated as u32) < routing.head.clusters,
        "calibrated {calibrated} of {} clusters",
        routing.head.clusters
    );
    let reader = Reader::new(store.clone(), &settings, ReaderOptions::default());
    let (mut found, mut codes) = (0, 0);
    let queries = noise(40);
    for q in &queries {
        let got = reader.search(&SearchRequest::new(q.clone(), 10)).await.unwrap();
        codes += got.stats.codes_scanned;
        let mut exact: Vec<(f32, usize)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (crate::index::distance(crate::vocab::Metric::Euclidean, q, v), i))
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        found += exact[..10]
            .iter()
            .filter(|(_, i)| got.results.iter().any(|h| h.id == format!("r{i}")))
            .count();
    }
    let recall = found as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
    // It scanned about the calibrated clusters' rows, more than the
    // default probes hold.
    let per_query = codes as f64 / queries.len() as f64;
    let per_cluster = rows as f64 / f64::from(routing.head.clusters);
    assert!(per_query > 1.2 * default as f64 * per_cluster, "{per_query} codes per query");
}

/// A query's route, ranked from the routing's codes by integer bounds
/// (`index::routing::rank`), picks the clusters, in the order, that
/// ranking every centroid of the same groups by its decoded distance
/// does: held whole and read by range, for a few probes and for many.
#[tokio::test]
async fn the_route_picks_the_clusters_nearest_by_their_decoded_distances() {
    let inner: DynStore = Arc::new(MemoryStore::unique());
    routed_index(&inner, 30_000).await;
    let (m, routing) = manifest_and_routing(&inner).await;
    let entry = m.current_routing().unwrap();
    let h = &routing.head;
    assert!(h.groups.iter().all(|g| g.snapped(h.dimensions)));
    let metric = crate::index::ivf::probe_metric(h.metric);
    let store = Counted::new(inner.clone());
    let tally = CacheTally::until(tokio::time::Instant::now() + std::time::Duration::from_secs(60));
    let mut compared = 0;
    for limit in [super::HOLD_WHOLE_BYTES, 0] {
        super::HOLD_WHOLE_LIMIT.with(|l| l.set(limit));
        let view = Arc::new(super::RoutingView::load(inner.as_ref(), entry, DIMS, &tally).await.unwrap());
        super::HOLD_WHOLE_LIMIT.with(|l| l.set(super::HOLD_WHOLE_BYTES));
        let blocks = Blocks::new(1 << 30, std::time::Duration::from_secs(60), None);
        for i in (0..30_000).step_by(997) {
            let q: Vec<f32> = vector(i).iter().map(|x| x + 0.03).collect();
            let groups = view.head.nearest_groups(&q);
            for take in [1, 8, 40] {
                let got = view
                    .nearest_of(&blocks, &store, &tally, &groups, &q, metric, take)
                    .await
                    .unwrap();
                let got: Vec<u32> = got.iter().map(|c| c.cluster).collect();
                let want: Vec<u32> = routing.nearest(&q, h.groups(), take).iter().map(|&(_, c)| c).collect();
                assert_eq!(got, want, "query {i}, {take} probes, hold limit {limit}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 180);
}
