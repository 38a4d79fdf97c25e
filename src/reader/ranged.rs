//! Range-read index shards (`segment::shard`): a reader holds a shard's
//! head region (centroids, list table, ids) and fetches the parts a query
//! needs (probed lists' codes, the rows it reranks, metadata for filters
//! and results) with ranged GETs, through one byte-weighted cache.
//!
//! A query on a shard runs in two fetch rounds after the head: the codes
//! (and, with a filter, the metadata) of the lists it probes, then the
//! row chunks of the candidates its code estimates cannot rule out.
//! Parts near each other are fetched in one request, at most
//! [`MAX_REQUESTS_PER_FETCH`] per shard and round; concurrent queries
//! share a part that is already being fetched (single flight), so a
//! burst of cold queries costs one fetch per part.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::view::CacheTally;
use super::PartitionError;
use crate::coord::watched::retrying;
use crate::index::rabitq::ListCodes;
use crate::index::routing::RankCodes;
use crate::index::shard::{ShardQuery, ShardRouting, ShardSearch};
use crate::index::ScanStats;
use crate::segment::routed::text::TermBlock;
use crate::segment::routed::IdBlock;
use crate::segment::shard::decode_head_region;
use crate::segment::{LoadError, SegmentError};
use crate::store::{ByteRange, Counted, ObjectStore, StoreError};

/// Rows per cached row chunk: a rerank fetches a candidate's chunk.
pub(super) const ROW_CHUNK: u64 = 16;
/// Most ranged GETs one shard's fetch round issues.
pub(super) const MAX_REQUESTS_PER_FETCH: usize = 16;
/// Parts closer together than this are fetched in one request: reading
/// the gap costs less than another round trip.
const MERGE_GAP: u64 = 64 << 10;

/// A shard's head region, parsed: all a reader holds of it for good.
pub(crate) struct RangedShard {
    pub key: Arc<str>,
    /// A hash of the key: the cache key of its parts (cheaper to hash
    /// on every lookup than the key itself).
    tag: u64,
    /// The shard's index: head and rotated centroids.
    pub routing: ShardRouting,
    pub ids: Vec<String>,
    pub tombstones: Vec<bool>,
}

impl RangedShard {
    /// Fetches and parses the first `head_bytes` bytes of `key`.
    pub(super) async fn load(
        store: &dyn ObjectStore,
        key: &str,
        total: u64,
        head_bytes: u64,
        tally: &CacheTally,
    ) -> Result<Self, PartitionError> {
        let region = retrying(tally.deadline, StoreError::is_retryable, || {
            store.get_range(key, ByteRange::new(0, head_bytes))
        })
        .await
        .map_err(|e| PartitionError::from_load(LoadError::Store(e)))?;
        let key2 = key.to_string();
        let parsed = crate::cpu::run(move || {
            let (head, ids) = decode_head_region(&key2, &region, total)?;
            Ok::<_, SegmentError>((ShardRouting::new(head), ids))
        })
        .await
        .map_err(|e| PartitionError::from_load(LoadError::Segment(e)))?;
        let (routing, ids) = parsed;
        Ok(RangedShard {
            key: key.into(),
            tag: xxhash_rust::xxh3::xxh3_64(key.as_bytes()),
            routing,
            ids: ids.ids,
            tombstones: ids.tombstones,
        })
    }

    /// Bytes held for good (head, ids, rotated centroids).
    pub(super) fn memory_bytes(&self) -> usize {
        self.ids.iter().map(|s| s.len() + 24).sum::<usize>()
            + self.tombstones.len()
            + self.routing.memory_bytes()
    }

    /// First row (within the list) and row count of a chunk.
    fn chunk_rows(&self, list: u32, chunk: u32) -> (u64, u64) {
        chunk_of(self.routing.head.lists[list as usize].rows, chunk)
    }
}

/// First row and row count of chunk `chunk` of a list of `rows` rows.
pub(super) fn chunk_of(rows: u64, chunk: u32) -> (u64, u64) {
    let first = u64::from(chunk) * ROW_CHUNK;
    (first, ROW_CHUNK.min(rows.saturating_sub(first)))
}

/// Something the reader fetches by parts through [`Blocks`]: a shard
/// (either format) or a routing object.
pub(crate) trait PartSource: Send + Sync + 'static {
    /// The object's key (requests and errors name it).
    fn key(&self) -> &str;
    /// A hash of the key: its parts' cache key.
    fn tag(&self) -> u64;
    /// Where `part` is in the object.
    fn range(&self, part: Part) -> Range<u64>;
    /// Checks and parses `part` from exactly its bytes.
    fn parse(&self, part: Part, bytes: &[u8]) -> Result<Block, SegmentError>;
}

impl PartSource for RangedShard {
    fn key(&self) -> &str {
        &self.key
    }

    fn tag(&self) -> u64 {
        self.tag
    }

    fn range(&self, part: Part) -> Range<u64> {
        match part {
            Part::Codes(l) => self.routing.head.lists[l as usize].codes.range(),
            Part::Meta(l) => self.routing.head.lists[l as usize].metadata.range(),
            Part::Rows { list, chunk } => {
                let (first, count) = self.chunk_rows(list, chunk);
                self.routing.head.rows_range(list as usize, first, count)
            }
            _ => unreachable!("{part:?} is not a part of a range-read shard"),
        }
    }

    fn parse(&self, part: Part, bytes: &[u8]) -> Result<Block, SegmentError> {
        let key = &*self.key;
        Ok(match part {
            Part::Codes(l) => {
                let l = l as usize;
                self.routing.head.check_codes(key, l, bytes)?;
                let head = &self.routing.head;
                let rows = head.lists[l].rows as usize;
                Block::Codes(Box::new(
                    ListCodes::from_bytes(bytes, head.dimensions, rows, head.code_bits).map_err(
                        |r| SegmentError::Corrupt {
                            key: key.to_string(),
                            reason: format!("codes of list {l}: {r}"),
                        },
                    )?,
                ))
            }
            Part::Meta(l) => {
                let (offsets, bytes) = self.routing.head.list_metadata(key, l as usize, bytes)?;
                Block::meta(offsets, bytes)
            }
            Part::Rows { list, chunk } => {
                let (first, _) = self.chunk_rows(list, chunk);
                Block::Rows(
                    self.routing
                        .head
                        .list_rows(key, list as usize, first, bytes)?,
                )
            }
            _ => unreachable!("{part:?} is not a part of a range-read shard"),
        })
    }
}

/// The part holding row `i` of list `list`, and the row's place in it.
fn row_slot(list: u32, i: u32) -> (Part, usize) {
    let chunk = i / ROW_CHUNK as u32;
    (Part::Rows { list, chunk }, (i % ROW_CHUNK as u32) as usize)
}

/// A fetched row chunk's row `at`, as [`row_slot`] places it.
fn row_in(parts: &HashMap<Part, Arc<Block>>, slot: (Part, usize), d: usize) -> &[f32] {
    let (part, at) = slot;
    &parts[&part].rows()[at * d..(at + 1) * d]
}

/// A fetchable part of a shard or routing. Lists of a range-read shard
/// and clusters of a routed shard (by their index in its head) share
/// `Meta` and `Rows`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    Codes(u32),
    Meta(u32),
    Rows {
        list: u32,
        chunk: u32,
    },
    /// A routed shard's cluster: codes, ids and tombstone flags.
    Probe(u32),
    /// A routed shard's id-index block.
    Ids(u32),
    /// A routed shard's cluster's ids alone (the end of its probe block).
    ClusterIds(u32),
    /// Term block `block` of a routed shard's text field `field`.
    Terms { field: u32, block: u32 },
    /// A routing's group of cluster centroids.
    Group(u32),
}

/// A cluster's ids in one buffer: two allocations per cluster instead of
/// one per id, so the part cache's weight is what the ids take and the
/// parts it evicts leave no scatter of small holes in the heap.
pub(crate) struct PackedIds {
    /// Where each id ends in `bytes`.
    ends: Vec<u32>,
    bytes: String,
}

impl PackedIds {
    pub(crate) fn new(ids: &[String]) -> Self {
        let mut bytes = String::with_capacity(ids.iter().map(String::len).sum());
        let ends = ids
            .iter()
            .map(|id| {
                bytes.push_str(id);
                u32::try_from(bytes.len()).expect("a cluster's ids fit 4 GiB")
            })
            .collect();
        PackedIds { ends, bytes }
    }

    /// Id `i`.
    pub(crate) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    fn memory_bytes(&self) -> usize {
        self.ends.len() * 4 + self.bytes.len()
    }
}

/// A fetched part, parsed.
pub(crate) enum Block {
    Codes(Box<ListCodes>),
    Meta {
        offsets: Vec<u64>,
        bytes: Vec<u8>,
        maps: OnceLock<Vec<Map<String, Value>>>,
    },
    Rows(Vec<f32>),
    /// A routed shard's cluster: its codes and its rows' ids.
    Probe {
        codes: Box<ListCodes>,
        ids: PackedIds,
    },
    Ids(IdBlock),
    /// A routed shard's cluster's ids.
    ClusterIds(PackedIds),
    /// A term block of a routed shard's text index.
    Terms(TermBlock),
    /// Centroids of consecutive clusters of a routing (a group, or all
    /// of them), as they are and rotated for the codes, and each of its
    /// groups' `u8` codes to rank them by (`None`: an f32 group).
    Group {
        centroids: Vec<f32>,
        rotated: Vec<f32>,
        ranks: Vec<Option<RankCodes>>,
    },
}

impl Block {
    /// A metadata part: per row, its encoded JSON object (empty: none),
    /// as offsets into `bytes`; parsed on first use.
    pub(super) fn meta(offsets: Vec<u64>, bytes: Vec<u8>) -> Self {
        Block::Meta {
            offsets,
            bytes,
            maps: OnceLock::new(),
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        64 + match self {
            Block::Codes(c) => c.memory_bytes(),
            Block::Meta { offsets, bytes, .. } => offsets.len() * 8 + bytes.len() * 3,
            Block::Rows(v) => v.len() * 4,
            Block::Group {
                centroids, ranks, ..
            } => {
                centroids.len() * 8
                    + ranks
                        .iter()
                        .flatten()
                        .map(RankCodes::memory_bytes)
                        .sum::<usize>()
            }
            Block::Probe { codes, ids } => codes.memory_bytes() + ids.memory_bytes(),
            Block::Ids(b) => b.memory_bytes(),
            Block::ClusterIds(ids) => ids.memory_bytes(),
            Block::Terms(t) => t.memory_bytes(),
        }
    }

    /// A cluster's ids (from its probe part or its ids part).
    pub(super) fn cluster_ids(&self) -> &PackedIds {
        match self {
            Block::Probe { ids, .. } | Block::ClusterIds(ids) => ids,
            _ => unreachable!("a cluster-ids part holds ids"),
        }
    }

    pub(super) fn terms(&self) -> &TermBlock {
        match self {
            Block::Terms(t) => t,
            _ => unreachable!("a terms part holds a term block"),
        }
    }

    pub(super) fn codes(&self) -> &ListCodes {
        match self {
            Block::Codes(c) | Block::Probe { codes: c, .. } => c,
            _ => unreachable!("a codes part holds codes"),
        }
    }

    pub(super) fn id_block(&self) -> &IdBlock {
        match self {
            Block::Ids(b) => b,
            _ => unreachable!("an id-index part holds an id block"),
        }
    }

    /// Centroid `j` of a group part, as it is and rotated.
    pub(super) fn centroid(&self, j: usize, d: usize) -> (&[f32], &[f32]) {
        match self {
            Block::Group {
                centroids, rotated, ..
            } => (&centroids[j * d..(j + 1) * d], &rotated[j * d..(j + 1) * d]),
            _ => unreachable!("a group part holds centroids"),
        }
    }

    /// The rank codes of the `i`-th group a group part holds, if stored
    /// as `u8`.
    pub(super) fn rank_codes(&self, i: usize) -> Option<&RankCodes> {
        match self {
            Block::Group { ranks, .. } => ranks.get(i).and_then(Option::as_ref),
            _ => unreachable!("a group part holds centroids"),
        }
    }

    pub(super) fn rows(&self) -> &[f32] {
        match self {
            Block::Rows(v) => v,
            _ => unreachable!("a rows part holds rows"),
        }
    }

    /// Row `i`'s metadata, parsed (the whole block once, on first use:
    /// a filter reads every row's).
    pub(super) fn metadata(&self, i: usize) -> &Map<String, Value> {
        match self {
            Block::Meta {
                offsets,
                bytes,
                maps,
            } => &maps.get_or_init(|| {
                offsets
                    .windows(2)
                    .map(|w| row_map(&bytes[w[0] as usize..w[1] as usize]))
                    .collect()
            })[i],
            _ => unreachable!("a metadata part holds metadata"),
        }
    }

    /// Row `i`'s metadata, owned: from the parsed block when a filter
    /// has parsed it, else parsed alone. A result's few rows then cost
    /// their own objects, not their clusters' (at 4M rows nearly every
    /// result lies in a cluster no earlier query returned, and parsing
    /// each of those ~250-row blocks whole was a warm query's largest
    /// allocation).
    pub(super) fn row_metadata(&self, i: usize) -> Map<String, Value> {
        match self {
            Block::Meta {
                offsets,
                bytes,
                maps,
            } => match maps.get() {
                Some(maps) => maps[i].clone(),
                None => row_map(&bytes[offsets[i] as usize..offsets[i + 1] as usize]),
            },
            _ => unreachable!("a metadata part holds metadata"),
        }
    }
}

/// A row's encoded metadata (empty: none) as its object.
fn row_map(raw: &[u8]) -> Map<String, Value> {
    if raw.is_empty() {
        Map::new()
    } else {
        serde_json::from_slice(raw).unwrap_or_default()
    }
}

type PartKey = (u64, Part);

/// Most stored bytes a warm-up fetches at once ([`Blocks::warm`]).
const WARM_BATCH_BYTES: u64 = 16 << 20;
type Fetched = Result<Arc<Vec<Arc<Block>>>, PartitionError>;
type Pending = SharedFuture<BoxFuture<'static, Fetched>>;

/// The reader's cache of shard parts, weighed in bytes, and the fetches
/// in flight.
pub(crate) struct Blocks {
    cache: moka::future::Cache<PartKey, Arc<Block>>,
    inflight: Mutex<HashMap<PartKey, (Pending, usize)>>,
    /// Lookups answered from the cache, and not: once per part a query
    /// asked for (the reader's totals and the instance record's).
    pub(crate) hits: std::sync::atomic::AtomicU64,
    pub(crate) misses: std::sync::atomic::AtomicU64,
    metrics: Option<Arc<crate::coord::instance::InstanceMetrics>>,
}

impl Blocks {
    pub(crate) fn new(
        capacity: u64,
        ttl: std::time::Duration,
        metrics: Option<Arc<crate::coord::instance::InstanceMetrics>>,
    ) -> Self {
        Blocks {
            hits: Default::default(),
            misses: Default::default(),
            metrics,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity.max(1))
                .weigher(|_k: &PartKey, v: &Arc<Block>| {
                    u32::try_from(v.memory_bytes()).unwrap_or(u32::MAX)
                })
                .time_to_idle(ttl)
                .build(),
            inflight: Mutex::default(),
        }
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Fetches `parts` of `source` into the cache, in order, while
    /// `budget` lasts (its bytes, charged each part's stored length, and
    /// its time), at most [`WARM_BATCH_BYTES`] at a time: a warm-up never
    /// holds more than a batch beyond what the cache keeps, however large
    /// the index. The first part that does not fit spends the budget. For
    /// [`WarmPhase::Rows`] the budget is instead half the room the cache
    /// has left by weight, measured again after each batch (a quarter of
    /// it at most), so parts that weigh up to twice their stored bytes
    /// fill the cache without evicting what it holds. Returns how many
    /// parts it fetched (or found cached).
    pub(super) async fn warm<S: PartSource>(
        &self,
        store: &Counted,
        source: &Arc<S>,
        parts: impl IntoIterator<Item = Part>,
        budget: &mut WarmBudget,
        phase: WarmPhase,
        tally: &CacheTally,
    ) -> Result<u64, PartitionError> {
        let by_room = phase == WarmPhase::Rows;
        // By room, a batch takes at most a quarter of what may still be
        // fetched, so the room is measured again well before it runs out.
        let limit = |budget: u64| match by_room {
            true => WARM_BATCH_BYTES.min(budget / 4),
            false => WARM_BATCH_BYTES,
        };
        let (mut batch, mut batch_bytes, mut done) = (Vec::new(), 0u64, 0u64);
        let mut batch_limit = limit(budget.bytes);
        for part in parts {
            let r = source.range(part);
            let len = r.end - r.start;
            if batch_bytes + len > batch_limit && !batch.is_empty() {
                self.get(store, source, &batch, tally).await?;
                done += batch.len() as u64;
                (batch_bytes, batch) = (0, Vec::new());
                if by_room {
                    self.hold_to_room(&mut budget.bytes).await;
                    batch_limit = limit(budget.bytes);
                }
            }
            if budget.out_of_time() {
                // What is cached stays; nothing more is fetched.
                budget.bytes = 0;
                budget.timed_out = true;
                break;
            }
            if len > budget.bytes {
                // Spent: parts are warmed in priority order, so nothing
                // after this one is fetched either (not this shard's
                // next parts, nor another's, nor rows before codes).
                budget.bytes = 0;
                break;
            }
            budget.bytes -= len;
            batch.push(part);
            batch_bytes += len;
        }
        if !batch.is_empty() {
            self.get(store, source, &batch, tally).await?;
            done += batch.len() as u64;
        }
        Ok(done)
    }

    /// Sets `budget` to half the room the cache has left by weight.
    pub(super) async fn hold_to_room(&self, budget: &mut u64) {
        self.cache.run_pending_tasks().await;
        *budget = self.capacity().saturating_sub(self.weighted_size()) / 2;
    }

    /// The bytes the cache may hold.
    pub(crate) fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(u64::MAX)
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub(crate) async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Drops every cached part (for `Reader::evict_cached_segments`).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) async fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
    }

    /// The parts of `shard`, from the cache or fetched (nearby parts in
    /// one ranged GET, parts another query is fetching awaited).
    pub(super) async fn get<S: PartSource>(
        &self,
        store: &Counted,
        shard: &Arc<S>,
        parts: &[Part],
        tally: &CacheTally,
    ) -> Result<HashMap<Part, Arc<Block>>, PartitionError> {
        let mut got = HashMap::with_capacity(parts.len());
        let mut wanted: Vec<Part> = parts.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut missing = Vec::new();
        for p in wanted {
            match self.cache.get(&(shard.tag(), p)).await {
                Some(b) => {
                    got.insert(p, b);
                }
                None => missing.push(p),
            }
        }
        let (hits, misses) = (got.len() as u64, missing.len() as u64);
        {
            use std::sync::atomic::Ordering::Relaxed;
            tally.hits.fetch_add(hits, Relaxed);
            tally.misses.fetch_add(misses, Relaxed);
            self.hits.fetch_add(hits, Relaxed);
            self.misses.fetch_add(misses, Relaxed);
            if let Some(m) = &self.metrics {
                m.cache_hits.fetch_add(hits, Relaxed);
                m.cache_misses.fetch_add(misses, Relaxed);
            }
        }
        if missing.is_empty() {
            return Ok(got);
        }
        // Join fetches in flight; plan requests for the rest. Each wait
        // names its parts and where each sits in the request's blocks.
        let mut waits: Vec<(Vec<(Part, usize)>, Pending)> = Vec::new();
        {
            let mut inflight = self.inflight.lock().unwrap();
            let mut mine = Vec::new();
            for p in missing {
                match inflight.get(&(shard.tag(), p)) {
                    Some((fut, i)) => waits.push((vec![(p, *i)], fut.clone())),
                    None => mine.push(p),
                }
            }
            mine.sort_by_key(|p| shard.range(*p).start);
            let ranges: Vec<Range<u64>> = mine.iter().map(|p| shard.range(*p)).collect();
            for (range, members) in coalesce(&ranges, MAX_REQUESTS_PER_FETCH, MERGE_GAP) {
                let parts: Vec<Part> = mine[members].to_vec();
                let fut = fetch(
                    store.clone(),
                    shard.clone(),
                    range,
                    parts.clone(),
                    tally.deadline,
                )
                .boxed()
                .shared();
                for (i, p) in parts.iter().enumerate() {
                    inflight.insert((shard.tag(), *p), (fut.clone(), i));
                }
                waits.push((parts.into_iter().zip(0..).collect(), fut));
            }
        }
        let results = futures::future::join_all(waits.iter().map(|(_, f)| f.clone())).await;
        let mut first_error = None;
        for ((parts, fut), result) in waits.iter().zip(results) {
            match result {
                Ok(blocks) => {
                    for &(p, i) in parts {
                        let b = blocks[i].clone();
                        self.cache.insert((shard.tag(), p), b.clone()).await;
                        got.insert(p, b);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            let mut inflight = self.inflight.lock().unwrap();
            inflight.retain(|_, (f, _)| !f.ptr_eq(fut));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(got),
        }
    }
}

/// What a warm-up fetches of a shard, in this order: the codes every
/// query scans, then the metadata and rows it returns and reranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WarmPhase {
    Codes,
    Rows,
}

/// What a warm-up may still fetch: stored bytes, until a time.
pub(super) struct WarmBudget {
    pub bytes: u64,
    pub until: Option<Instant>,
    /// The time ran out before the bytes did.
    pub timed_out: bool,
}

impl WarmBudget {
    fn out_of_time(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() >= t)
    }
}

/// The parts a warm-up's `phase` fetches of a shard whose lists (or
/// clusters) hold `list_rows` rows each: every list's code part (`code`:
/// `Part::Codes` or `Part::Probe`), or every list's metadata part and row
/// chunks.
pub(super) fn warm_parts(
    phase: WarmPhase,
    code: fn(u32) -> Part,
    list_rows: impl Iterator<Item = u64>,
) -> Vec<Part> {
    let lists = (0u32..).zip(list_rows);
    match phase {
        WarmPhase::Codes => lists.map(|(list, _)| code(list)).collect(),
        WarmPhase::Rows => lists
            .flat_map(|(list, rows)| {
                let chunks = rows.div_ceil(ROW_CHUNK) as u32;
                let row_chunks = (0..chunks).map(move |chunk| Part::Rows { list, chunk });
                std::iter::once(Part::Meta(list)).chain(row_chunks)
            })
            .collect(),
    }
}

/// One ranged GET covering `parts`, split and parsed.
async fn fetch<S: PartSource>(
    store: Counted,
    shard: Arc<S>,
    range: Range<u64>,
    parts: Vec<Part>,
    deadline: Instant,
) -> Fetched {
    let bytes = retrying(deadline, StoreError::is_retryable, || {
        store.get_range(shard.key(), ByteRange::new(range.start, range.end))
    })
    .await
    .map_err(|e| PartitionError::from_load(LoadError::Store(e)))?;
    let mut blocks = Vec::with_capacity(parts.len());
    for p in &parts {
        let r = shard.range(*p);
        let slice = bytes
            .get((r.start - range.start) as usize..(r.end - range.start) as usize)
            .ok_or_else(|| {
                PartitionError::from_load(LoadError::Segment(SegmentError::Corrupt {
                    key: shard.key().to_string(),
                    reason: format!(
                        "a ranged read of bytes {}..{} returned {} bytes: the shard is shorter \
                         than its head says",
                        range.start,
                        range.end,
                        bytes.len()
                    ),
                }))
            })?;
        let block = shard
            .parse(*p, slice)
            .map_err(|e| PartitionError::from_load(LoadError::Segment(e)))?;
        blocks.push(Arc::new(block));
    }
    Ok(Arc::new(blocks))
}

/// Groups sorted, non-overlapping `ranges` into requests: every gap
/// shorter than `gap` is read through (a round trip costs more than
/// those bytes), then the shortest gaps while more than `max` requests
/// remain, as long as the gaps read stay within the bytes wanted (at
/// most twice the bytes, so a query never reads a whole shard to save
/// requests). Returns each request's byte range and the indexes of the
/// ranges it covers.
pub(super) fn coalesce(
    ranges: &[Range<u64>],
    max: usize,
    gap: u64,
) -> Vec<(Range<u64>, Range<usize>)> {
    if ranges.is_empty() {
        return Vec::new();
    }
    let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let gaps: Vec<u64> = ranges
        .windows(2)
        .map(|w| w[1].start.saturating_sub(w[0].end))
        .collect();
    let mut order: Vec<usize> = (0..gaps.len()).collect();
    order.sort_by_key(|&i| (gaps[i], i));
    let mut merged = vec![false; gaps.len()];
    let (mut groups, mut extra) = (ranges.len(), 0u64);
    for i in order {
        let small = gaps[i] < gap;
        let affordable = groups > max.max(1) && extra + gaps[i] <= wanted;
        if !(small || affordable) {
            break;
        }
        merged[i] = true;
        groups -= 1;
        extra += gaps[i];
    }
    let mut out = Vec::with_capacity(groups);
    let mut start = 0;
    for i in 0..ranges.len() {
        if i + 1 == ranges.len() || !merged[i] {
            out.push((ranges[start].start..ranges[i].end, start..i + 1));
            start = i + 1;
        }
    }
    out
}

/// A reranked row of a ranged shard.
pub(super) struct RowHit {
    pub distance: f32,
    pub row: u32,
    pub vector: Vec<f32>,
    pub metadata: Option<Map<String, Value>>,
}

/// What a query needs of a ranged shard beyond the shard index's own
/// question ([`ShardQuery`]).
pub(super) struct Wanted<'a> {
    pub filter: Option<&'a crate::filter::Filter>,
    pub include_metadata: bool,
    /// Whether a row may be returned (live, not shadowed, not excluded).
    pub allowed: &'a (dyn Fn(u32) -> bool + Sync),
}

/// Searches one ranged shard (`index::shard` decides, this fetches): the
/// probed lists' codes (and, to filter, metadata) in one round, widened
/// while the filter policy asks, then the candidates' row chunks (and
/// metadata for results) in a second. Best first.
pub(super) async fn search(
    blocks: &Blocks,
    store: &Counted,
    tally: &CacheTally,
    shard: &Arc<RangedShard>,
    q: ShardQuery<'_>,
    want: &Wanted<'_>,
    stats: &mut ScanStats,
) -> Result<Vec<RowHit>, PartitionError> {
    let routing = &shard.routing;
    let mut search = ShardSearch::new(routing, q);
    stats.segments += 1;
    let mut got: HashMap<Part, Arc<Block>> = HashMap::new();
    loop {
        let mut parts: Vec<Part> = search.lists().iter().map(|&l| Part::Codes(l)).collect();
        if want.filter.is_some() {
            parts.extend(search.lists().iter().map(|&l| Part::Meta(l)));
        }
        parts.retain(|p| !got.contains_key(p));
        got.extend(blocks.get(store, shard, &parts, tally).await?);
        let Some(f) = want.filter else { break };
        if !search.can_widen() {
            break;
        }
        let (mut live, mut matching) = (0usize, 0usize);
        for &l in search.lists() {
            let meta = &got[&Part::Meta(l)];
            for i in 0..routing.head.lists[l as usize].rows as u32 {
                if (want.allowed)(routing.row_of(l, i)) {
                    live += 1;
                    matching += usize::from(f.matches(meta.metadata(i as usize)));
                }
            }
        }
        if !search.widen(live, matching) {
            break;
        }
    }
    // Each probed list's metadata, found once per list rather than per row.
    let meta: Vec<Option<&Arc<Block>>> = match want.filter {
        None => Vec::new(),
        Some(_) => (0..routing.head.nlist() as u32)
            .map(|l| got.get(&Part::Meta(l)))
            .collect(),
    };
    let keep = |l: u32, i: usize| {
        (want.allowed)(routing.row_of(l, i as u32))
            && match (want.filter, meta.get(l as usize).copied().flatten()) {
                (Some(f), Some(m)) => f.matches(m.metadata(i)),
                _ => true,
            }
    };
    let cands = search.estimate(|l| got[&Part::Codes(l)].codes(), keep, stats);
    if cands.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts: Vec<Part> = cands.iter().map(|c| row_slot(c.list, c.i).0).collect();
    if want.include_metadata {
        parts.extend(cands.iter().map(|c| Part::Meta(c.list)));
    }
    got.extend(blocks.get(store, shard, &parts, tally).await?);
    let d = routing.head.dimensions;
    let best = search.rerank(
        &cands,
        |l, i| row_in(&got, row_slot(l, i), d),
        |row| shard.ids[row as usize].as_str(),
        stats,
    );
    // Vectors and metadata for the k kept only.
    let hits = best
        .into_iter()
        .map(|(distance, list, i)| RowHit {
            distance,
            row: routing.row_of(list, i),
            vector: row_in(&got, row_slot(list, i), d).to_vec(),
            metadata: want
                .include_metadata
                .then(|| got[&Part::Meta(list)].row_metadata(i as usize)),
        })
        .collect();
    Ok(hits)
}

/// Shard row `row`: its vector and metadata (for `get`).
pub(super) async fn row(
    blocks: &Blocks,
    store: &Counted,
    tally: &CacheTally,
    shard: &Arc<RangedShard>,
    row: u32,
) -> Result<(Vec<f32>, Map<String, Value>), PartitionError> {
    let (l, i) = shard.routing.list_of(row);
    let slot = row_slot(l, i);
    let got = blocks
        .get(store, shard, &[slot.0, Part::Meta(l)], tally)
        .await?;
    Ok((
        row_in(&got, slot, shard.routing.head.dimensions).to_vec(),
        got[&Part::Meta(l)].row_metadata(i as usize),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result's row metadata is parsed alone, leaving its block
    /// unparsed; once a filter has parsed the block, rows come from it.
    /// Either way each row gets its own object (none: empty).
    #[test]
    fn a_rows_metadata_is_parsed_without_its_whole_block() {
        let rows = [r#"{"a":1}"#, "", r#"{"b":"x","c":[2]}"#];
        let mut offsets = vec![0u64];
        let mut bytes = Vec::new();
        for r in rows {
            bytes.extend_from_slice(r.as_bytes());
            offsets.push(bytes.len() as u64);
        }
        let block = Block::meta(offsets, bytes);
        let want: Vec<Map<String, Value>> = rows.iter().map(|r| row_map(r.as_bytes())).collect();
        assert_eq!(want[0]["a"], 1);
        assert!(want[1].is_empty());
        for (i, w) in want.iter().enumerate().rev() {
            assert_eq!(&block.row_metadata(i), w, "row {i}");
        }
        let Block::Meta { maps, .. } = &block else {
            unreachable!()
        };
        assert!(maps.get().is_none(), "a row's metadata parsed its whole block");
        assert_eq!(block.metadata(2), &want[2]);
        assert!(maps.get().is_some());
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&block.row_metadata(i), w, "row {i}, block parsed");
        }
    }

    #[test]
    fn packed_ids_give_back_each_id_and_weigh_what_they_hold() {
        let ids: Vec<String> = ["a", "", "ünïcode-id", "r12345", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let packed = PackedIds::new(&ids);
        let back: Vec<&str> = (0..ids.len()).map(|i| packed.get(i)).collect();
        assert_eq!(back, ids);
        let bytes: usize = ids.iter().map(String::len).sum();
        assert_eq!(packed.memory_bytes(), bytes + 4 * ids.len());
    }

    #[test]
    fn coalescing_reads_small_gaps_through_and_caps_the_requests() {
        let r = |s: u64, e: u64| s..e;
        // Small gaps merge; a big one stays apart.
        let got = coalesce(&[r(0, 10), r(20, 30), r(1_000_000, 1_000_010)], 8, 100);
        assert_eq!(got, vec![(r(0, 30), 0..2), (r(1_000_000, 1_000_010), 2..3)]);
        // The cap merges the smallest gaps first...
        let ranges = [r(0, 400), r(500, 900), r(1100, 1500), r(9000, 9400)];
        let got = coalesce(&ranges, 2, 10);
        assert_eq!(got, vec![(r(0, 1500), 0..3), (r(9000, 9400), 3..4)]);
        assert_eq!(coalesce(&ranges, 10, 10).len(), 4);
        // ...but never reads more gap than the bytes it wants.
        assert_eq!(coalesce(&ranges, 1, 10).len(), 2);
        assert!(coalesce(&[], 4, 10).is_empty());
    }
}
