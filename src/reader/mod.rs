//! The read path (DESIGN sections 8 and 11): partition manifests and the
//! index manifest kept fresh with conditional GETs, a segment cache and a
//! part cache for range-read shards, and the services over them: search,
//! get, list, warm-up. Rooms:
//!
//! - `load`: how fresh a copy must be ([`Consistency`]; `Slot::fresh_for`
//!   is the one freshness rule) and the one retry when an object vanished
//!   under a stale manifest. `strong` revalidates before reading
//!   (read-your-writes across processes), `bounded` when the copy is older
//!   than `max_staleness`, `eventual` uses what is cached.
//! - `listing`: the freshness check itself, one LIST of the manifests
//!   whatever the partition count; `bounded` reads run it in the
//!   background.
//! - `view`: per-partition views (the manifest, live records computed
//!   when it changes, incrementally for appended segments) and the segment
//!   cache (moka, keyed by immutable key, weighted by decoded bytes,
//!   single flight).
//! - `shards`: the shard set (the read-optimized layer as of one index
//!   manifest); `ranged`: fetching parts of range-read shards through one
//!   byte-weighted cache (the shard index in `index::shard` decides what).
//! - `snapshot`: what one read sees: the partition views, the shard set
//!   covering them, and "a tail record hides its shard row".
//! - `unit`: the search-unit seam (tails, whole shards, range-read
//!   shards), each owning its mask, selectivity and routing.
//! - `search` (the query pipeline), `lookup` (get, list), `warm`.
//! - `error`, `budget`: the read errors; the memory caches may plan with.

mod budget;
mod error;
mod listing;
mod load;
mod lookup;
mod ranged;
mod routed;
mod search;
mod shards;
mod snapshot;
mod text;
mod unit;
mod view;
mod warm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use budget::{cache_budget_bytes, memory_budget_bytes};
pub use error::{PartitionError, ReadError};

use crate::coord::instance::InstanceMetrics;
use crate::coord::{Role, Settings};
use crate::record::StoredRecord;
use crate::segment::{Segment, Shape};
use crate::store::{Counted, DynStore, RequestCounts};

/// How fresh a query's view of the bucket must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Consistency {
    /// Use cached manifests (load a partition only the first time).
    Eventual,
    /// Data at most `max_staleness` old (the default). The freshness check
    /// (one LIST of every manifest, then only the changed ones fetched)
    /// runs in the background once the last one is half that old, so a
    /// reader under steady load does not wait for it.
    #[default]
    Bounded,
    /// Check every manifest before searching (one LIST, then only the
    /// changed ones fetched): sees every write acknowledged before the
    /// query began, from any process.
    Strong,
}

/// A search request (shared by the library, CLI, HTTP API and Lambda).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query vector; may be left out (empty) when `text` is given.
    #[serde(default)]
    pub vector: Vec<f32>,
    /// Full-text queries (BM25), each ranking the records by one
    /// searchable metadata key (`settings.textFields`). Alone, one text
    /// ranks by its BM25 score; several, or text with a vector (a hybrid
    /// search), are fused by reciprocal rank (RRF, k = 60).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<QueryText>,
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    #[serde(default)]
    pub consistency: Consistency,
    #[serde(default = "yes")]
    pub include_metadata: bool,
    #[serde(default)]
    pub include_vectors: bool,
    #[serde(default)]
    pub allow_partial: bool,
    /// Overrides the reader's `max_staleness` for `bounded` queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness_ms: Option<u64>,
    /// How widely to probe (default: the index settings'): IVF clusters
    /// per tail segment; in the index shards, 16 routing clusters for
    /// each (`reader::routed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nprobe: Option<usize>,
    /// Ignore ANN indexes: exact search.
    #[serde(default)]
    pub exact: bool,
    /// How long the query may take, transient store errors retried
    /// included (default: the reader's `deadline`, 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

fn default_k() -> usize {
    10
}
fn yes() -> bool {
    true
}

impl SearchRequest {
    /// A full-text search of `text` in the index's searchable key `key`
    /// (`None`: its only one), BM25-ranked.
    pub fn text(key: Option<&str>, text: &str, k: usize) -> Self {
        let mut req = SearchRequest::new(Vec::new(), k);
        req.text.push(QueryText {
            key: key.map(str::to_string),
            text: text.to_string(),
        });
        req
    }

    pub fn new(vector: Vec<f32>, k: usize) -> Self {
        SearchRequest {
            vector,
            text: Vec::new(),
            k,
            filter: None,
            consistency: Consistency::default(),
            include_metadata: true,
            include_vectors: false,
            allow_partial: false,
            max_staleness_ms: None,
            nprobe: None,
            exact: false,
            deadline_ms: None,
        }
    }
}

pub const MAX_K: usize = 1000;

/// How long a query may take unless it says otherwise.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// A full-text query: a text to rank records by, with BM25, in one
/// searchable metadata key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryText {
    /// The searchable key; may be left out when the index has only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// 1 to 1,024 characters, analyzed as the key's text is.
    pub text: String,
}

/// A hit's scores in a search with text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HitScores {
    /// The reciprocal-rank fusion score, when several lists were fused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused: Option<f32>,
    /// The BM25 score in each searched key whose text the hit matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bm25: Vec<KeyScore>,
    /// The distance to the query vector, when the hit was in the
    /// vector's ranked list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_distance: Option<f32>,
}

/// A BM25 score in one searchable key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyScore {
    pub key: String,
    pub score: f32,
}

/// One result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    /// Higher is better: the similarity to the query vector; for one text
    /// alone its BM25 score; for fused lists the fused score.
    pub score: f32,
    /// The distance to the query vector, lower is better (see
    /// `index::present`); absent for a hit found by text alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    pub partition: u32,
    /// Per-list scores, in a search with text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<HitScores>,
}

/// A partition left out of a partial result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionFailure {
    pub partition: u32,
    pub error: String,
}

/// An index shard left out of a partial result: one of its parts could
/// not be read (corrupt); its `rows` live rows were not searched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardFailure {
    pub shard: String,
    pub rows: u64,
    pub error: String,
}

/// What one query cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryStats {
    pub partitions_searched: u64,
    /// Tail segments searched (partition segments not yet in a shard).
    pub segments_scanned: u64,
    /// Index shards searched.
    #[serde(default)]
    pub shards_searched: u64,
    /// Full-precision distances computed.
    pub vectors_compared: u64,
    /// Rows estimated from quantized codes (range-read shards).
    #[serde(default)]
    pub codes_scanned: u64,
    /// Shard rows reranked with full precision (the rows the codes'
    /// error bounds could not rule out; part of `vectors_compared`).
    #[serde(default)]
    pub rows_reranked: u64,
    /// Shard rows fetched for the rerank: those the codes' bounds could
    /// not rule out (the rerank may stop before computing them all).
    #[serde(default)]
    pub rerank_candidates: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Object-store requests made by this query, by kind.
    pub requests: RequestCounts,
    /// Sequential rounds of requests this query waited for (parallel
    /// requests share one; see `Counted::rounds`).
    #[serde(default)]
    pub rounds: u64,
    pub fetch_ms: f64,
    pub compute_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<Hit>,
    /// Some partitions or shards could not be read (only with `allow_partial`).
    pub partial: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_partitions: Vec<PartitionFailure>,
    /// Index shards left out because a part of them is unreadable
    /// (issue 28 F4); their rows are unreachable until the shard is
    /// repaired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_shards: Vec<ShardFailure>,
    pub stats: QueryStats,
}

/// Reader settings.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// How old a `bounded` read's data may be (default 2 s); past half of
    /// it, queries start a freshness check in the background.
    pub max_staleness: Duration,
    /// Cache budget in bytes (decoded segments and parts of range-read
    /// shards together); see [`cache_budget_bytes`].
    pub cache_bytes: u64,
    /// Idle entries leave the cache after this long.
    pub cache_ttl: Duration,
    /// Partitions fetched at once.
    pub io_concurrency: usize,
    /// Load every partition in the background as soon as the reader is
    /// created through a cluster (on by default for the reader role).
    pub prefetch: bool,
    /// Default IVF probes per segment; `None`: the config's `index.nprobe`.
    pub nprobe: Option<usize>,
    /// How long a query may take by default; transient store errors are
    /// retried with jittered backoff until then.
    pub deadline: Duration,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions::for_role(Role::Reader)
    }
}

impl ReaderOptions {
    /// Options from a role's preset and the memory budget.
    pub fn for_role(role: Role) -> Self {
        let preset = role.preset();
        ReaderOptions {
            max_staleness: Duration::from_secs(2),
            cache_bytes: cache_budget_bytes(preset.segment_cache_fraction),
            cache_ttl: preset.cache_ttl,
            io_concurrency: 128,
            prefetch: preset.aggressive_prefetch,
            nprobe: None,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// What a warm-up fetched.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmReport {
    /// Live records across shards and tails.
    pub live_records: u64,
    pub shards: u64,
    /// Code lists fetched (or found cached) across range-read shards.
    pub code_lists: u64,
    /// Metadata and row chunk parts fetched (or found cached) once every
    /// code list was, while the cache's budget lasted.
    #[serde(default)]
    pub row_chunks: u64,
    /// The warm-up's time limit ended it before the cache's budget did
    /// (what it fetched stays cached; queries fetch the rest).
    #[serde(default)]
    pub cut_short: bool,
    /// Bytes the reader caches after the warm-up.
    pub cache_bytes: u64,
    /// Store requests the warm-up made.
    pub requests: RequestCounts,
    pub ms: f64,
}

/// Reader-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReaderStats {
    pub queries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub partitions_loaded: u64,
    pub live_records: u64,
    pub segments: u64,
    /// Index shards in the reader's shard set, and their live rows.
    pub shards: u64,
    pub shard_rows: u64,
    /// Bytes held outside the cache for the shard set: range-read
    /// shards' heads and ids (or whole shards in the segment format),
    /// live-row masks and the id → row map. Grows with the index's row
    /// count (about 100 bytes a row), not with its vector bytes.
    #[serde(default)]
    pub pinned_bytes: u64,
    /// Indexing lag, as of the manifests this reader holds: segments and
    /// records above their partition's watermark (not yet in index
    /// shards, so searched exactly), and the age in seconds of the oldest
    /// such segment (0 when there is none).
    #[serde(default)]
    pub unindexed_segments: u64,
    #[serde(default)]
    pub unindexed_records: u64,
    #[serde(default)]
    pub index_lag_seconds: f64,
    pub requests: RequestCounts,
}

impl Shared {
    pub(crate) fn next_ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }
}

pub(crate) struct Shared {
    store: Arc<Counted>,
    shape: Shape,
    /// Default IVF probes (the config's `index.nprobe` unless the reader
    /// options fix it); follows config changes.
    nprobe: std::sync::atomic::AtomicUsize,
    /// The index created every manifest at init: a missing one fails the
    /// partition instead of reading as empty.
    manifests_required: bool,
    opts: ReaderOptions,
    cache: moka::future::Cache<String, Arc<Segment>>,
    /// Batch objects fetched whole for their sections (see
    /// `segment::ObjectCache`); part of the segment budget.
    objects: crate::segment::ObjectCache,
    /// Parts of range-read shards (codes, rows, metadata).
    blocks: ranged::Blocks,
    views: Vec<load::Slot<view::PartitionView>>,
    shards: shards::ShardSlot,
    /// Held while a freshness check over every manifest runs (see `listing`).
    listing: listing::ListingLock,
    queries: AtomicU64,
    /// Orders queries and manifest refreshes. A `strong` query may reuse a
    /// refresh only if the refresh took its ticket after the query did
    /// (times are not enough: two instants can compare equal under a coarse
    /// or paused clock, which let a strong read miss a just-acknowledged
    /// write; the simulation found it).
    tickets: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    metrics: Option<Arc<InstanceMetrics>>,
    /// The full-text searchable keys; follows config changes.
    text: std::sync::RwLock<Arc<crate::text::TextFields>>,
}

impl Shared {
    pub(crate) fn text_fields(&self) -> Arc<crate::text::TextFields> {
        self.text.read().unwrap().clone()
    }
}

/// A handle that searches one index. Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
}

impl Reader {
    /// A reader over any store; it counts its own requests (see
    /// [`ReaderStats::requests`]).
    pub fn new(store: DynStore, settings: &Settings, opts: ReaderOptions) -> Self {
        Self::with_metrics(store, settings, opts, None)
    }

    /// A reader that also feeds an instance's published metrics.
    pub(crate) fn with_metrics(
        store: DynStore,
        settings: &Settings,
        opts: ReaderOptions,
        metrics: Option<Arc<InstanceMetrics>>,
    ) -> Self {
        let store = Arc::new(Counted::new(store));
        // One budget: a quarter for whole segments (tails, shards in the
        // segment format), the rest for parts of range-read shards.
        let segment_bytes = opts.cache_bytes / 4;
        let cache = moka::future::Cache::builder()
            .max_capacity(segment_bytes.max(1))
            .weigher(|_k: &String, v: &Arc<Segment>| {
                u32::try_from(v.memory_bytes()).unwrap_or(u32::MAX)
            })
            .time_to_idle(opts.cache_ttl)
            .build();
        let objects = crate::segment::ObjectCache::new((segment_bytes / 2).max(16 << 20));
        Reader {
            shared: Arc::new(Shared {
                store,
                shape: Shape {
                    dimensions: settings.dimensions as usize,
                    metric: settings.metric(),
                },
                nprobe: opts
                    .nprobe
                    .unwrap_or(settings.index().nprobe as usize)
                    .max(1)
                    .into(),
                manifests_required: settings.partitions_initialized,
                views: (0..settings.partition_count)
                    .map(|_| load::Slot::default())
                    .collect(),
                shards: shards::ShardSlot::default(),
                listing: listing::ListingLock::default(),
                blocks: ranged::Blocks::new(
                    opts.cache_bytes - segment_bytes,
                    opts.cache_ttl,
                    metrics.clone(),
                ),
                opts,
                cache,
                objects,
                queries: AtomicU64::new(0),
                tickets: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                metrics,
                text: std::sync::RwLock::new(Arc::new(settings.text_fields())),
            }),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn partition_count(&self) -> u32 {
        self.shared.views.len() as u32
    }

    /// Runs the caches' pending maintenance (evictions past the budget),
    /// so [`Reader::stats`] reports settled sizes.
    pub async fn run_cache_maintenance(&self) {
        self.shared.cache.run_pending_tasks().await;
        self.shared.blocks.run_pending_tasks().await;
    }

    /// Drops every cached segment (manifests stay): the next query fetches
    /// the segments it needs again. For tests that need a cache miss.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn evict_cached_segments(&self) {
        self.shared.cache.invalidate_all();
        self.shared.cache.run_pending_tasks().await;
        self.shared.blocks.clear().await;
    }

    /// Searches every partition and merges the top-k.
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchResponse, ReadError> {
        self.shared.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.shared.metrics {
            m.queries.fetch_add(1, Ordering::Relaxed);
        }
        use tracing::Instrument;
        let span = tracing::info_span!("search", k = req.k, consistency = ?req.consistency);
        search::search(&self.shared, req).instrument(span).await
    }

    /// The newest live version of `id` (bounded consistency), reading only
    /// its partition.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn get(&self, id: &str) -> Result<Option<StoredRecord>, ReadError> {
        self.get_with(id, Consistency::Bounded).await
    }

    pub async fn get_with(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<StoredRecord>, ReadError> {
        let mut found = self.get_many(&[id], consistency).await?;
        Ok(found.pop().flatten())
    }

    /// The newest live version of each of `ids` (`None` where it has
    /// none), in the order given; each partition is checked for freshness
    /// once for the whole batch.
    pub async fn get_many(
        &self,
        ids: &[&str],
        consistency: Consistency,
    ) -> Result<Vec<Option<StoredRecord>>, ReadError> {
        lookup::get_many(&self.shared, ids, consistency).await
    }

    /// Takes changed settings: the default `nprobe` (unless the reader
    /// options fixed one) and the full-text searchable keys.
    pub fn set_settings(&self, settings: &Settings) {
        *self.shared.text.write().unwrap() = Arc::new(settings.text_fields());
        if self.shared.opts.nprobe.is_none() {
            self.shared
                .nprobe
                .store((settings.index().nprobe as usize).max(1), Ordering::Relaxed);
        }
    }

    /// The ids live in partition `p`, in ascending byte order (for
    /// listing an index page by page).
    pub(crate) async fn list_ids(
        &self,
        p: u32,
        consistency: Consistency,
    ) -> Result<Vec<String>, ReadError> {
        lookup::list_ids(&self.shared, p, consistency).await
    }

    /// Loads every partition's manifest and segments now (bounded
    /// concurrency), so the first query is warm. Returns live records.
    pub async fn warm(&self) -> Result<u64, ReadError> {
        warm::warm(&self.shared).await
    }

    /// Everything a query plans with, fetched now: every partition (and
    /// its tail), the index manifest, every shard's head and deletion
    /// vector, then the routings' groups, the shards' codes and then their
    /// metadata and rows as far as the part cache's budget holds them
    /// (fetched a batch at a time, so a warm-up holds little more than the
    /// cache), so the first query fetches nothing the cache could hold.
    /// `POST /v1/warm` and a reader's prefetch run it; a Lambda's
    /// `SHOAL_WARM_ON_INIT` runs [`Reader::warm_up_within`].
    pub async fn warm_up(&self) -> Result<WarmReport, ReadError> {
        warm::warm_up(&self.shared, None).await
    }

    /// [`Reader::warm_up`], fetching no more once `limit` has passed
    /// since it started: a Lambda's init phase, for one, is cut off
    /// after 10 seconds. Loading the snapshot (manifests, shard heads)
    /// is not cut short.
    pub async fn warm_up_within(&self, limit: Duration) -> Result<WarmReport, ReadError> {
        warm::warm_up(&self.shared, Some(limit)).await
    }

    /// Starts [`Reader::warm_up`] in the background; a failure is logged,
    /// and queries load what they need as usual.
    pub(crate) fn spawn_warm(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            match me.warm_up().await {
                Ok(r) => tracing::info!(live = r.live_records, ms = r.ms, "prefetched"),
                Err(e) => {
                    tracing::warn!(error = %e, "prefetch failed; queries will load on demand")
                }
            }
        })
    }

    /// Live records (newest version of an id, not deleted) per partition,
    /// as of each partition's loaded view; `None` where none is loaded.
    pub(crate) fn live_counts(&self) -> Vec<Option<u64>> {
        self.shared
            .views
            .iter()
            .map(|slot| slot.current().map(|v| v.live_count()))
            .collect()
    }

    pub fn stats(&self) -> ReaderStats {
        let s = &self.shared;
        let (mut loaded, mut live, mut segments) = (0, 0, 0);
        let index = s.shards.current();
        let (mut lag_segments, mut lag_records) = (0, 0);
        let mut oldest: Option<std::time::SystemTime> = None;
        for slot in s.views.iter() {
            if let Some(v) = slot.current() {
                loaded += 1;
                live += v.live_count();
                segments += v.manifest.segments.len() as u64;
                let from = index.as_ref().map_or(0, |ix| snapshot::tail_start(&v, ix));
                for e in &v.manifest.segments[from..] {
                    lag_segments += 1;
                    lag_records += e.records;
                    if let Some(t) = crate::coord::clock::parse_time(&e.created_at) {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                }
            }
        }
        // The host's wall time, through the clock seam (a reader holds no
        // clock of its own).
        use crate::coord::clock::{Clock, SystemClock};
        let lag = oldest
            .and_then(|t| SystemClock.now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        ReaderStats {
            unindexed_segments: lag_segments,
            unindexed_records: lag_records,
            index_lag_seconds: lag,
            shards: index.as_ref().map_or(0, |v| v.shards.len() as u64),
            shard_rows: index.as_ref().map_or(0, |v| v.live_rows()),
            pinned_bytes: index.as_ref().map_or(0, |v| v.memory_bytes() as u64),
            queries: s.queries.load(Ordering::Relaxed),
            cache_hits: s.hits.load(Ordering::Relaxed) + s.blocks.hits.load(Ordering::Relaxed),
            cache_misses: s.misses.load(Ordering::Relaxed)
                + s.blocks.misses.load(Ordering::Relaxed),
            cache_entries: s.cache.entry_count() + s.blocks.entry_count(),
            cache_bytes: s.cache.weighted_size() + s.blocks.weighted_size(),
            partitions_loaded: loaded,
            live_records: live,
            segments,
            requests: s.store.counts(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
