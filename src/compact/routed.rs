//! The indexer's side of one routing for the whole index (DESIGN section
//! 12): which routing a round builds with, routed shards written under
//! it, older rows found through a shard's id index, and merges that keep
//! each row in its cluster (or move shards of an older routing, or with
//! their own IVF, to the current one).
//!
//! A routing is trained when the index has none, and again when the
//! index has grown [`REGROW_FACTOR`] times past the rows it was sized
//! for; the sample is the round's rows plus rows of the listed shards
//! (reservoir-sampled, one shard in memory at a time). Shards under an
//! older routing are then rebuilt under the new one by merges, one shard
//! per commit, so each piece fits a compactor invocation.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::indexer::{put_shards, ShardOut};
use super::CompactError;
use crate::coord::cas::{put_new_object, Backoff};
use crate::coord::clock::{format_time, unix_millis, DynClock};
use crate::coord::index_manifest::{
    IndexManifest, RoutingEntry, ShardEntry, ShardTextField, MAX_LIVE_ROUTINGS,
};
use crate::text::TextFields;
use crate::coord::paths::new_routing_key;
use crate::coord::{CoordError, Settings};
use crate::index::routing::{Routing, TARGET_CLUSTER_ROWS};
use crate::index::rabitq::ListCodes;
use crate::index::rabitq::ex::code_bits;
use crate::index::shard::routed::{build_routed, group_by_cluster, KnownCodes};
use crate::record::Prepared;
use crate::segment::deletions::DeletionVector;
use crate::segment::routed::{decode_routed, RoutedHead};
use crate::segment::{self, SegmentError, Shape};
use crate::store::{ByteRange, ObjectStore};

/// A new routing is trained once the index holds this many times the
/// rows its routing was sized for: clusters at most double before they
/// are cut again (meanwhile a query probes proportionally fewer of them,
/// `reader::routed`, so the codes it scans stay flat), and moving the
/// shards rewrites each row about once more over the index's growth (a
/// geometric series).
pub(super) const REGROW_FACTOR: u64 = 2;

/// The routing a round builds with, and the entry to list when the round
/// trained it.
pub(super) struct RoundRouting {
    pub routing: Arc<Routing>,
    pub new: Option<RoutingEntry>,
}

/// The routing for a round that adds `batch` to `index` while the tails
/// hold `pending` records (the batch's among them; later rounds take
/// the rest): the current one, or a new one when there is none or the
/// index with every tail outgrows it (or `retrain` asks for one: tests),
/// unless shards still move to the current one (written create-only;
/// listed by the round's commit). Sizing for every tail keeps a build
/// over long tails, taken a round at a time, on one routing.
pub(super) async fn routing_for_round(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    index: &IndexManifest,
    batch: &[Prepared],
    pending: u64,
    retrain: bool,
) -> Result<RoundRouting, CompactError> {
    let rows = index.live_rows() + pending.max(batch.len() as u64);
    if let Some(cur) = index.current_routing() {
        let fits = rows <= REGROW_FACTOR * cur.trained_rows.max(TARGET_CLUSTER_ROWS as u64);
        // Shards still move to the current routing: a new one waits
        // until they have (at most two routings are live).
        let moving = index.routings.len() >= MAX_LIVE_ROUTINGS;
        if (fits && !retrain) || moving {
            return Ok(RoundRouting {
                routing: load_routing(store, cur).await?,
                new: None,
            });
        }
    }
    let shape = super::indexer::shape_of(settings);
    let sample = sample_rows(store, index, shape, batch, Routing::sample_size(rows)).await?;
    let generation = index.current_routing().map_or(1, |r| r.generation + 1);
    let (d, metric) = (shape.dimensions, shape.metric);
    let routing =
        crate::cpu::run(move || Routing::train(&sample, d, metric, rows, generation)).await;
    let now = clock.now();
    let key = new_routing_key(generation, now);
    let bytes = routing.encode();
    let len = bytes.len() as u64;
    put_new_object(store, &key, bytes.into(), Backoff::default()).await?;
    tracing::info!(
        generation,
        clusters = routing.head.clusters,
        rows,
        "trained a routing"
    );
    let entry = RoutingEntry {
        key,
        generation,
        clusters: routing.head.clusters,
        trained_rows: rows,
        bytes: len,
        head_bytes: routing.head.region_len(),
        created_at: format_time(now),
        extra: Default::default(),
    };
    Ok(RoundRouting {
        routing: Arc::new(routing),
        new: Some(entry),
    })
}

/// A listed routing, read once per process (routings are immutable).
pub(super) async fn load_routing(
    store: &dyn ObjectStore,
    entry: &RoutingEntry,
) -> Result<Arc<Routing>, CompactError> {
    type Cache = moka::future::Cache<String, Arc<Routing>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| Cache::new(8));
    let cache_key = format!("{}\n{}", store.describe(), entry.key);
    if let Some(r) = cache.get(&cache_key).await {
        return Ok(r);
    }
    let got = store.get(&entry.key).await.map_err(CoordError::from)?;
    let (key, g) = (entry.key.clone(), entry.generation);
    let routing = crate::cpu::run(move || Routing::decode_listed(&got.bytes, g))
        .await
        .map_err(|e| SegmentError::Corrupt { key, reason: e.0 })?;
    let routing = Arc::new(routing);
    cache.insert(cache_key, routing.clone()).await;
    Ok(routing)
}

/// A uniform sample (at most `want` rows, flat) of `batch` and the live
/// rows of `index`'s shards, one shard loaded at a time.
async fn sample_rows(
    store: &dyn ObjectStore,
    index: &IndexManifest,
    shape: Shape,
    batch: &[Prepared],
    want: usize,
) -> Result<Vec<f32>, CompactError> {
    let d = shape.dimensions;
    let mut rng = StdRng::seed_from_u64(index.generation);
    let mut sample: Vec<f32> = Vec::with_capacity(want.min(batch.len() + 1) * d);
    let mut seen = 0usize;
    let mut offer = |v: &[f32], sample: &mut Vec<f32>| {
        if sample.len() < want * d {
            sample.extend_from_slice(v);
        } else {
            let j = rng.random_range(0..=seen);
            if j < want {
                sample[j * d..(j + 1) * d].copy_from_slice(v);
            }
        }
        seen += 1;
    };
    for r in batch.iter().filter(|r| !r.tombstone) {
        offer(&r.vector, &mut sample);
    }
    for shard in &index.shards {
        let seg = segment::load(store, &shard.key, shape).await?;
        let dv = super::indexer::load_deletions(store, shard).await?;
        for i in 0..seg.len() {
            if !dv.is_dead(i as u64) && !seg.is_tombstone(i) {
                offer(seg.vector(i), &mut sample);
            }
        }
    }
    Ok(sample)
}

/// Builds routed shards of `rows` (at most `cap` rows each) under
/// `routing` at `level` and PUTs them create-only, taking the code blocks
/// in `known` as they are. Returns their entries and when the first PUT
/// was sent.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_routed(
    store: &dyn ObjectStore,
    clock: &DynClock,
    clusters: Vec<(u32, Vec<Prepared>)>,
    known: KnownCodes,
    routing: Arc<Routing>,
    level: u32,
    cap: usize,
    text: &TextFields,
) -> Result<(Vec<ShardEntry>, SystemTime), CompactError> {
    let built = build_shards(clock, clusters, known, routing, cap, text).await;
    let written_at = clock.now();
    Ok((put_shards(store, built.at, level, built.outputs).await?, written_at))
}

/// Routed shards built and not yet written, keyed by the time they were
/// built at.
struct Built {
    at: SystemTime,
    outputs: Vec<ShardOut>,
}

/// Encodes `clusters` into routed shard objects (`build_routed`, off
/// the runtime).
async fn build_shards(
    clock: &DynClock,
    clusters: Vec<(u32, Vec<Prepared>)>,
    known: KnownCodes,
    routing: Arc<Routing>,
    cap: usize,
    text: &TextFields,
) -> Built {
    let now = clock.now();
    let generation = routing.head.generation;
    let fields = text.to_vec();
    let text_fields: Vec<ShardTextField> = text
        .iter()
        .map(|(key, a)| ShardTextField {
            key: key.to_string(),
            analyzer: a.as_str().to_string(),
        })
        .collect();
    let built = crate::cpu::run(move || {
        build_routed(clusters, known, &routing, unix_millis(now), "indexer", cap, &fields)
    })
    .await;
    let outputs = built
        .into_iter()
        .map(|b| ShardOut {
            bytes: b.bytes,
            rows: b.rows,
            head_bytes: Some(b.head_bytes),
            routing: Some(generation),
            text_fields: text_fields.clone(),
        })
        .collect();
    Built { at: now, outputs }
}

/// The rows of a routed shard holding one of `ids`, each with its field
/// lengths (per text field; none without a text index): its head, then only the id-index blocks whose fences
/// could hold them (ranged GETs).
pub(super) async fn routed_rows_of(
    store: &dyn ObjectStore,
    shard: &ShardEntry,
    ids: &HashSet<&str>,
) -> Result<Vec<(u64, Vec<u32>)>, CompactError> {
    let head = segment::load_routed_head(
        store,
        &shard.key,
        shard.head_bytes.unwrap_or(0),
        shard.bytes,
    )
    .await?;
    let mut blocks: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for id in ids {
        if let Some(b) = head.fence_for(id) {
            blocks.entry(b).or_default().push(id);
        }
    }
    let mut rows = Vec::new();
    for (b, wanted) in blocks {
        let r = head.fences[b].block.range();
        let got = store
            .get_range(&shard.key, ByteRange::new(r.start, r.end))
            .await;
        let got = got.map_err(CoordError::from)?;
        let block = head.id_block(&shard.key, b, &got)?;
        rows.extend(wanted.iter().filter_map(|id| {
            let i = block.find(id)?;
            Some((u64::from(block.rows[i]), block.lengths_of(i).collect()))
        }));
    }
    rows.sort_unstable();
    Ok(rows)
}

/// The live rows of `inputs`, each with the cluster it belongs to under
/// `routing`: a shard of that routing keeps its rows' clusters (its rows
/// were assigned by it) and their codes; any other shard's rows are
/// assigned now, and their clusters' codes encoded again.
pub(super) async fn live_rows_by_cluster(
    store: &dyn ObjectStore,
    inputs: &[ShardEntry],
    routing: &Arc<Routing>,
) -> Result<(Vec<(u32, Vec<Prepared>)>, KnownCodes), CompactError> {
    let mut by: BTreeMap<u32, Vec<Prepared>> = BTreeMap::new();
    let mut codes = Gathered::new(routing.head.dimensions);
    let mut strays: Vec<Prepared> = Vec::new();
    for shard in inputs {
        let got = store.get(&shard.key).await.map_err(CoordError::from)?;
        let dv = super::indexer::load_deletions(store, shard).await?;
        if shard.routing == Some(routing.head.generation) {
            let (head, seg, _) = decode_routed(&shard.key, &got.bytes)?;
            for (k, c) in head.clusters.iter().enumerate() {
                let live = (c.start..c.start + u64::from(c.rows)).filter(|r| !dv.is_dead(*r));
                by.entry(c.cluster)
                    .or_default()
                    .extend(live.map(|r| seg.prepared(r as usize)));
                let r = head.probe_range(k);
                let block = got.bytes.get(r.start as usize..r.end as usize).unwrap_or_default();
                codes.add(&shard.key, &head, k, block, |i| !dv.is_dead(c.start + i as u64))?;
            }
        } else {
            let seg = segment::decode_segment(&shard.key, &got.bytes)?;
            let resurrect = crate::mutation::active(crate::mutation::Mutation::MigrationResurrects);
            let dead = |i: usize| dv.is_dead(i as u64) && !resurrect; // broken on purpose when mutated
            let live = (0..seg.len()).filter(|i| !dead(*i) && !seg.is_tombstone(*i));
            strays.extend(live.map(|i| seg.prepared(i)));
        }
    }
    if !strays.is_empty() {
        let r = routing.clone();
        let grouped = crate::cpu::run(move || group_by_cluster(strays, &r)).await;
        for (c, rows) in grouped {
            // Its gathered codes no longer cover all its rows.
            codes.forget(c);
            by.entry(c).or_default().extend(rows);
        }
    }
    let clusters = by.into_iter().filter(|(_, rows)| !rows.is_empty()).collect();
    Ok((clusters, codes.into_known()))
}

/// Code blocks gathered per cluster from routed shards of one routing, a
/// live row at a time in the order its row is taken: what a merge writes
/// instead of encoding every row again.
struct Gathered {
    dims: usize,
    by: BTreeMap<u32, ListCodes>,
    /// Clusters whose codes must be encoded again: a row came from
    /// elsewhere, or a shard's codes have other bits than the encoder
    /// now gives.
    forgotten: HashSet<u32>,
}

impl Gathered {
    fn new(dims: usize) -> Self {
        Gathered {
            dims,
            by: BTreeMap::new(),
            forgotten: HashSet::new(),
        }
    }

    /// The rows `live` accepts of cluster `k` of the shard `head` heads,
    /// from its probe block `block`.
    fn add(
        &mut self,
        key: &str,
        head: &segment::routed::RoutedHead,
        k: usize,
        block: &[u8],
        live: impl Fn(usize) -> bool,
    ) -> Result<(), SegmentError> {
        let c = &head.clusters[k];
        if head.code_bits != code_bits(self.dims) || self.forgotten.contains(&c.cluster) {
            self.forget(c.cluster);
            return Ok(());
        }
        let (bytes, _) = head.open_probe(key, k, block)?;
        let rows = c.rows as usize;
        let codes = ListCodes::from_bytes(bytes, self.dims, rows, head.code_bits).map_err(|e| {
            SegmentError::Corrupt {
                key: key.to_string(),
                reason: format!("the codes of cluster {}: {e}", c.cluster),
            }
        })?;
        let out = self.by.entry(c.cluster).or_insert_with(|| codes.empty_like());
        for i in (0..rows).filter(|i| live(*i)) {
            out.push_row(&codes, i);
        }
        Ok(())
    }

    fn forget(&mut self, cluster: u32) {
        self.by.remove(&cluster);
        self.forgotten.insert(cluster);
    }

    fn into_known(self) -> KnownCodes {
        self.by
            .into_iter()
            .map(|(c, codes)| (c, codes.finish().to_bytes()))
            .collect()
    }
}

/// Rewrites `inputs` (routed shards of `routing`, e.g. the shards of one
/// unbudgeted call's rounds, each holding rows of every cluster) as shards
/// holding disjoint ranges of consecutive clusters, so a query's probed
/// clusters sit in few shards. One output range at a time: its clusters'
/// live rows are read from every input by ranged GETs (probe blocks,
/// rows, metadata), so memory holds one output's rows, not the inputs'.
pub(super) async fn write_by_cluster_range(
    store: &dyn ObjectStore,
    clock: &DynClock,
    inputs: &[ShardEntry],
    routing: Arc<Routing>,
    level: u32,
    cap: usize,
    text: &TextFields,
) -> Result<(Vec<ShardEntry>, SystemTime), CompactError> {
    let mut heads = Vec::with_capacity(inputs.len());
    for shard in inputs {
        let head = segment::load_routed_head(
            store,
            &shard.key,
            shard.head_bytes.unwrap_or(0),
            shard.bytes,
        )
        .await?;
        let dv = super::indexer::load_deletions(store, shard).await?;
        heads.push((shard, head, dv));
    }
    // Rows per cluster over every input; ranges of consecutive clusters
    // up to `cap` rows (a cluster is never split).
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, head, _) in &heads {
        for c in &head.clusters {
            *counts.entry(c.cluster).or_default() += u64::from(c.rows);
        }
    }
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut current: Option<(u32, u32, u64)> = None;
    for (&c, &n) in &counts {
        current = match current {
            Some((lo, _, rows)) if rows + n <= cap as u64 => Some((lo, c, rows + n)),
            Some((lo, hi, _)) => {
                ranges.push((lo, hi));
                Some((c, c, n))
            }
            None => Some((c, c, n)),
        };
    }
    ranges.extend(current.map(|(lo, hi, _)| (lo, hi)));
    // Each range is gathered and encoded while the one before it is
    // written: the two overlap (one built range waits at most), so the
    // rewrite costs about its reads and encoding, not those plus its PUTs.
    let (mut outputs, mut first_put) = (Vec::new(), None);
    let mut pending: Option<Built> = None;
    for (lo, hi) in ranges {
        let gather = gather_range(store, &heads, lo, hi, &routing);
        let put = put_built(store, clock, pending.take(), level, &mut first_put);
        let (written, gathered) = futures::join!(put, gather);
        outputs.extend(written?);
        let (clusters, known) = gathered?;
        if clusters.is_empty() {
            continue;
        }
        pending = Some(build_shards(clock, clusters, known, routing.clone(), cap, text).await);
    }
    outputs.extend(put_built(store, clock, pending, level, &mut first_put).await?);
    Ok((outputs, first_put.unwrap_or_else(|| clock.now())))
}

/// PUTs `built` (if any), noting when the first PUT was sent.
async fn put_built(
    store: &dyn ObjectStore,
    clock: &DynClock,
    built: Option<Built>,
    level: u32,
    first_put: &mut Option<SystemTime>,
) -> Result<Vec<ShardEntry>, CompactError> {
    let Some(built) = built else {
        return Ok(Vec::new());
    };
    first_put.get_or_insert_with(|| clock.now());
    put_shards(store, built.at, level, built.outputs).await
}

/// The live rows of clusters `lo..=hi` over every input shard, by
/// cluster, with the code blocks gathered from them (ranged GETs of each
/// shard's probe, row and metadata blocks for the range).
async fn gather_range(
    store: &dyn ObjectStore,
    heads: &[(&ShardEntry, RoutedHead, DeletionVector)],
    lo: u32,
    hi: u32,
    routing: &Routing,
) -> Result<(Vec<(u32, Vec<Prepared>)>, KnownCodes), CompactError> {
    let mut by: BTreeMap<u32, Vec<Prepared>> = BTreeMap::new();
    let mut codes = Gathered::new(routing.head.dimensions);
    for (shard, head, dv) in heads {
        let at = head.clusters.partition_point(|c| c.cluster < lo);
        let to = head.clusters.partition_point(|c| c.cluster <= hi);
        if at == to {
            continue;
        }
        let key = shard.key.as_str();
        let get = |r: std::ops::Range<u64>| async move {
            store
                .get_range(key, ByteRange::new(r.start, r.end))
                .await
                .map_err(CoordError::from)
        };
        let probes = head.probe_range(at).start..head.probe_range(to - 1).end;
        let last = &head.clusters[to - 1];
        let rows = head.rows_range(at, 0, 0).start
            ..head.rows_range(to - 1, 0, u64::from(last.rows)).end;
        let metas = head.clusters[at].metadata.offset..last.metadata.range().end;
        let (pb, rb, mb) = (
            get(probes.clone()).await?,
            get(rows.clone()).await?,
            get(metas.clone()).await?,
        );
        let slice = |b: &[u8], base: u64, r: std::ops::Range<u64>| -> Vec<u8> {
            b.get((r.start - base) as usize..(r.end - base) as usize)
                .unwrap_or_default()
                .to_vec()
        };
        let d = head.dimensions;
        for k in at..to {
            let c = &head.clusters[k];
            let probe = slice(&pb, probes.start, head.probe_range(k));
            let (_, ids) = head.open_probe(key, k, &probe)?;
            codes.add(key, head, k, &probe, |i| !dv.is_dead(c.start + i as u64))?;
            let vectors = head.cluster_rows(
                key,
                k,
                0,
                &slice(&rb, rows.start, head.rows_range(k, 0, u64::from(c.rows))),
            )?;
            let (offsets, meta) =
                head.cluster_metadata(key, k, &slice(&mb, metas.start, c.metadata.range()))?;
            let live = by.entry(c.cluster).or_default();
            for (i, id) in ids.ids.into_iter().enumerate() {
                if dv.is_dead(c.start + i as u64) {
                    continue;
                }
                live.push(Prepared {
                    id,
                    vector: vectors[i * d..(i + 1) * d].to_vec(),
                    metadata: meta[offsets[i] as usize..offsets[i + 1] as usize].to_vec(),
                    tombstone: false,
                });
            }
        }
    }
    let clusters: Vec<(u32, Vec<Prepared>)> =
        by.into_iter().filter(|(_, r)| !r.is_empty()).collect();
    Ok((clusters, codes.into_known()))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::index::rabitq::Rotation;
    use crate::index::shard::routed::cluster_codes;
    use crate::vocab::Metric;

    /// A merge carries each live row's code from its shard instead of
    /// encoding it again: the gathered blocks are, byte for byte, what
    /// encoding the live rows gives, across shards and with dead rows
    /// dropped; and a block gathered for the wrong rows is caught.
    #[test]
    fn gathered_codes_are_the_codes_of_the_live_rows() {
        let d = 24;
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let row = |i: usize, rng: &mut rand::rngs::StdRng| Prepared {
            id: format!("r{i}"),
            vector: (0..d).map(|_| rng.random_range(-1.0..1.0)).collect(),
            metadata: Vec::new(),
            tombstone: false,
        };
        let rows: Vec<Prepared> = (0..3000).map(|i| row(i, &mut rng)).collect();
        let sample: Vec<f32> = rows.iter().flat_map(|r| r.vector.clone()).collect();
        let routing = Routing::train(&sample, d, Metric::Euclidean, 3000, 1);
        let (a, b) = rows.split_at(1700);
        let shards: Vec<Vec<u8>> = [a, b]
            .iter()
            .map(|part| {
                let clusters = group_by_cluster(part.to_vec(), &routing);
                let built = build_routed(clusters, KnownCodes::new(), &routing, 1, "t", usize::MAX, &[]);
                assert_eq!(built.len(), 1);
                built[0].bytes.to_vec()
            })
            .collect();
        let dead = |shard: usize, row: u64| (row + shard as u64).is_multiple_of(5);
        let mut gathered = Gathered::new(d);
        let mut live: BTreeMap<u32, Vec<Prepared>> = BTreeMap::new();
        for (s, bytes) in shards.iter().enumerate() {
            let (head, seg, _) = decode_routed("t", bytes).unwrap();
            for (k, c) in head.clusters.iter().enumerate() {
                let r = head.probe_range(k);
                let block = &bytes[r.start as usize..r.end as usize];
                gathered.add("t", &head, k, block, |i| !dead(s, c.start + i as u64)).unwrap();
                let rows = (c.start..c.start + u64::from(c.rows)).filter(|r| !dead(s, *r));
                live.entry(c.cluster).or_default().extend(rows.map(|r| seg.prepared(r as usize)));
            }
        }
        let known = gathered.into_known();
        let rot = Rotation::new(d);
        let mut shared = 0;
        for (c, rows) in &live {
            let fresh = cluster_codes(&routing, &rot, *c, rows);
            assert_eq!(known[c], fresh, "cluster {c}");
            let vectors = rows.iter().map(|r| r.vector.as_slice());
            assert!(ListCodes::block_matches(&known[c], routing.centroid(*c), vectors, code_bits(d)));
            if rows.len() > 1 {
                // The same rows in another order are not these codes.
                let mut turned = rows.clone();
                turned.rotate_left(1);
                let vectors = turned.iter().map(|r| r.vector.as_slice());
                assert!(!ListCodes::block_matches(&known[c], routing.centroid(*c), vectors, code_bits(d)));
                shared += 1;
            }
        }
        assert_eq!(known.len(), live.len());
        assert!(shared > 10, "{shared} clusters of several rows");
    }

    /// The cluster-range rewrite (its ranges gathered and encoded while
    /// the one before is written) puts every live row of its inputs in
    /// exactly one output, drops the dead ones, and gives each output a
    /// range of clusters no other output holds, at most `cap` rows unless
    /// a single cluster is larger.
    #[tokio::test]
    async fn the_cluster_range_rewrite_writes_each_live_row_once_in_disjoint_ranges() {
        use crate::coord::clock::SystemClock;
        use crate::coord::paths::new_deletions_key;
        use crate::store::memory::MemoryStore;
        let d = 16;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let rows: Vec<Prepared> = (0..4000)
            .map(|i| Prepared {
                id: format!("r{i}"),
                vector: (0..d).map(|_| rng.random_range(-1.0..1.0)).collect(),
                metadata: format!("{{\"i\":{i}}}").into_bytes(),
                tombstone: false,
            })
            .collect();
        let sample: Vec<f32> = rows.iter().flat_map(|r| r.vector.clone()).collect();
        let routing = Arc::new(Routing::train(&sample, d, Metric::Euclidean, 4000, 1));
        let store = MemoryStore::unique();
        let clock: DynClock = Arc::new(SystemClock);
        let text = TextFields::default();
        // Three round-like shards, each with rows of every cluster; every
        // seventh row of the second is dead.
        let mut inputs = Vec::new();
        for part in rows.chunks(1400) {
            let clusters = group_by_cluster(part.to_vec(), &routing);
            let (written, _) = write_routed(&store, &clock, clusters, KnownCodes::new(), routing.clone(), 0, usize::MAX, &text)
                .await
                .unwrap();
            inputs.extend(written);
        }
        assert_eq!(inputs.len(), 3);
        let mut dv = DeletionVector::new(inputs[1].rows);
        let mut dead = HashSet::new();
        let bytes = store.get(&inputs[1].key).await.unwrap().bytes;
        let (_, seg, _) = decode_routed("t", &bytes).unwrap();
        for r in (0..inputs[1].rows).step_by(7) {
            dv.mark(r);
            dead.insert(seg.prepared(r as usize).id);
        }
        let key = new_deletions_key(clock.now());
        store.put(&key, dv.encode()).await.unwrap();
        inputs[1].deletions = Some(key);
        let cap = 600;
        let (outputs, _) = write_by_cluster_range(&store, &clock, &inputs, routing.clone(), 1, cap, &text)
            .await
            .unwrap();
        assert!(outputs.len() >= 5, "{} ranges", outputs.len());
        let (mut clusters_seen, mut ids_seen) = (HashSet::new(), HashSet::new());
        for out in &outputs {
            let bytes = store.get(&out.key).await.unwrap().bytes;
            let (head, seg, _) = decode_routed(&out.key, &bytes).unwrap();
            assert_eq!(head.rows, out.rows);
            let largest = head.clusters.iter().map(|c| c.rows as u64).max().unwrap();
            assert!(out.rows <= (cap as u64).max(largest), "{} rows", out.rows);
            for c in &head.clusters {
                assert!(clusters_seen.insert(c.cluster), "cluster {} in two outputs", c.cluster);
            }
            for r in 0..seg.len() {
                let row = seg.prepared(r);
                let i: usize = row.id[1..].parse().unwrap();
                assert_eq!((&row.vector, &row.metadata), (&rows[i].vector, &rows[i].metadata));
                assert!(ids_seen.insert(row.id), "a row twice");
            }
        }
        let live: HashSet<String> = rows.iter().map(|r| r.id.clone()).filter(|id| !dead.contains(id)).collect();
        assert!(dead.len() > 150, "{} dead", dead.len());
        let missing = live.difference(&ids_seen).count();
        let extra = ids_seen.difference(&live).count();
        assert_eq!((missing, extra), (0, 0), "live rows missing, dead rows kept");
    }
}
