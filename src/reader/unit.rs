//! The search-unit seam: everything a query scores is a [`SearchUnit`]:
//! a partition's tail (its segments above the watermark), an index shard
//! in the segment format (read whole), or a range-read shard (read by
//! parts). Each unit owns its mask (live, not shadowed, not excluded,
//! passing the filter), its selectivity and its routing policy; the
//! pipeline (`search`) only plans units, runs them all at once and
//! merges what they found.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::ranged::{self, RangedShard, Wanted};
use super::text::{observe_segment, TextQuery, TextSearched};
use super::view::{CacheTally, PartitionView};
use super::{ReadError, Shared};
use crate::filter::Filter;
use crate::index::shard::{ShardQuery, PROBES_PER_NPROBE};
use crate::index::{
    AnnIndex, Candidate, ExactScan, QueryParams, ScanStats, SegmentSearch, SegmentView, TopK,
};
use crate::segment::Segment;
use crate::store::Counted;

/// What every unit of one query is asked (cheap to share with the pool).
pub(super) struct UnitQuery {
    pub params: QueryParams,
    /// The query vector, normalized for cosine.
    pub vector: Vec<f32>,
    pub filter: Option<Filter>,
    pub include_metadata: bool,
    /// Partitions of the index (a shard row's partition is its id's).
    pub partitions: u32,
    /// Whether a damaged shard part leaves its shard out of the result
    /// (named) instead of failing the query.
    pub allow_partial: bool,
}

/// Where a unit fetches what it has not got: the reader's caches, the
/// query's counting store and its tally.
pub(super) struct Io<'a> {
    pub shared: &'a Shared,
    pub store: &'a Counted,
    pub tally: &'a CacheTally,
}

/// One candidate carried out of a unit.
pub(super) struct Found {
    pub distance: f32,
    pub id: String,
    pub partition: u32,
    pub source: Source,
}

/// Where a candidate's vector and metadata are.
pub(super) enum Source {
    /// Position `position` of a segment (or whole-read shard).
    Segment {
        segment: Arc<Segment>,
        position: usize,
    },
    /// A row read from a range-read shard (metadata fetched only when
    /// the query asked for it).
    Row {
        vector: Vec<f32>,
        metadata: Option<Map<String, Value>>,
    },
    /// Row `row` of a routed shard's metadata block (a text match: its
    /// vector was not read).
    Block {
        block: Arc<super::ranged::Block>,
        row: usize,
    },
    /// Shard row `row` of a routed shard, found by its text index: its
    /// id and metadata are fetched once the query has ranked it
    /// (`routed::text::resolve`), and it becomes a [`Source::Block`].
    Pending {
        shard: Arc<super::routed::RoutedShard>,
        row: u32,
    },
}

/// What one unit found and what it touched.
#[derive(Default)]
pub(super) struct Searched {
    pub found: Vec<Found>,
    /// `segments` counts tail segments only; shards count in `shards`.
    pub stats: ScanStats,
    pub shards: u64,
    /// Shards a partial result left out (a unit over many shards names
    /// them itself; a one-shard unit fails and [`SearchUnit::shard`]
    /// names it).
    pub failed_shards: Vec<super::ShardFailure>,
}

/// Something a query scores.
#[async_trait]
pub(super) trait SearchUnit: Send + Sync {
    /// The unit's best `k` allowed, filter-passing records, best first.
    async fn search(&self, q: &Arc<UnitQuery>, io: &Io<'_>) -> Result<Searched, ReadError>;

    /// The unit's text statistics and its allowed, filter-passing records
    /// holding a query term (`reader::text`).
    async fn text(&self, q: &Arc<TextQuery>, io: &Io<'_>) -> Result<TextSearched, ReadError>;

    /// For a unit that reads a shard's parts as it searches: the shard's
    /// key and its live rows (what a partial result leaves out if a part
    /// cannot be read).
    fn shard(&self) -> Option<(&str, u64)> {
        None
    }
}

/// Rows a unit may return: its live mask, less the rows newer tail
/// records shadow and the rows of partitions a partial result leaves out.
pub(super) struct Allowed {
    pub hidden: Vec<u32>,
    pub excluded: Arc<[u32]>,
}

impl Allowed {
    pub(super) fn none_hidden() -> Self {
        Allowed {
            hidden: Vec::new(),
            excluded: Arc::from(Vec::new()),
        }
    }

    fn narrows(&self) -> bool {
        !self.hidden.is_empty() || !self.excluded.is_empty()
    }

    fn excludes(&self, id: &str, partitions: u32) -> bool {
        excludes(&self.excluded, id, partitions)
    }
}

/// Whether `id` belongs to a partition a partial result leaves out.
pub(super) fn excludes(excluded: &[u32], id: &str, partitions: u32) -> bool {
    !excluded.is_empty() && excluded.contains(&crate::coord::partition_of(id, partitions))
}

/// The candidates an in-memory search kept, best first: `segment(c)` is
/// the segment a candidate's position is in, `partition(c)` its partition.
fn found_in<'s>(
    top: TopK<'s>,
    segment: impl Fn(&Candidate<'s>) -> Arc<Segment>,
    partition: impl Fn(&Candidate<'s>) -> u32,
) -> Vec<Found> {
    top.into_sorted()
        .into_iter()
        .map(|c| Found {
            distance: c.distance,
            id: c.id.to_string(),
            partition: partition(&c),
            source: Source::Segment {
                segment: segment(&c),
                position: c.position as usize,
            },
        })
        .collect()
}

/// The mask a query scores a segment with, and the share of its live
/// records the filter keeps (its selectivity, which routes the search;
/// `index::route`). Written once for tails and whole shards.
fn admit<'a>(
    live: &'a [bool],
    live_count: usize,
    seg: &Segment,
    filter: Option<&Filter>,
    allowed: &Allowed,
    partitions: u32,
) -> (Cow<'a, [bool]>, f64) {
    if filter.is_none() && !allowed.narrows() {
        return (Cow::Borrowed(live), 1.0);
    }
    let mut m: Vec<bool> = match filter {
        None => live.to_vec(),
        Some(f) => live
            .iter()
            .zip(seg.metadata_maps())
            .map(|(l, md)| *l && f.matches(md))
            .collect(),
    };
    for &row in &allowed.hidden {
        m[row as usize] = false;
    }
    if !allowed.excluded.is_empty() {
        for (i, id) in seg.ids().iter().enumerate() {
            if m[i] && allowed.excludes(id, partitions) {
                m[i] = false;
            }
        }
    }
    let selectivity = match filter {
        None => 1.0,
        Some(_) => m.iter().filter(|x| **x).count() as f64 / live_count.max(1) as f64,
    };
    (Cow::Owned(m), selectivity)
}

/// A partition's tail: its segments from `from` on (seq > W[p]), scored
/// in memory with each segment's own ANN index, if any.
pub(super) struct TailUnit {
    pub view: Arc<PartitionView>,
    pub segments: Vec<Arc<Segment>>,
    pub from: usize,
}

/// An index shard in the segment format (HNSW or no index), read whole.
pub(super) struct WholeShardUnit {
    pub segment: Arc<Segment>,
    pub ann: Option<Arc<AnnIndex>>,
    pub live: Arc<ShardLive>,
    pub allowed: Allowed,
}

/// A shard's live rows (not tombstones, not marked dead).
pub(super) struct ShardLive {
    pub mask: Vec<bool>,
    pub count: usize,
}

/// One segment's search with its mask: its ANN index (which routes by
/// selectivity) or an exact scan.
fn search_segment<'s>(
    sv: &SegmentView<'s>,
    ann: Option<&AnnIndex>,
    q: &UnitQuery,
    top: &mut TopK<'s>,
    stats: &mut ScanStats,
) {
    match ann {
        Some(ann) => ann.search(sv, &q.params, &q.vector, top, stats),
        None => ExactScan.search(sv, &q.params, &q.vector, top, stats),
    }
}

impl TailUnit {
    fn score(&self, q: &UnitQuery) -> Searched {
        let (view, segments) = (&self.view, &self.segments);
        let mut top = TopK::new(q.params.k);
        let mut stats = ScanStats::default();
        let nothing = Allowed::none_hidden();
        // Masks must outlive `top`, which borrows ids from the segments.
        let masks: Vec<(Cow<'_, [bool]>, f64)> = (self.from..segments.len())
            .map(|j| {
                let live = view.live.mask(j);
                let seg = &segments[j];
                let n = view.live.live_in(j);
                admit(live, n, seg, q.filter.as_ref(), &nothing, q.partitions)
            })
            .collect();
        for (j, (mask, selectivity)) in (self.from..).zip(&masks) {
            let sv = SegmentView {
                segment: &segments[j],
                mask,
                selectivity: *selectivity,
                ordinal: j as u32,
            };
            search_segment(&sv, view.ann[j].as_deref(), q, &mut top, &mut stats);
        }
        let found = found_in(
            top,
            |c| segments[c.segment as usize].clone(),
            |_| view.partition,
        );
        Searched {
            found,
            stats,
            shards: 0,
            failed_shards: Vec::new(),
        }
    }
}

impl WholeShardUnit {
    fn score(&self, q: &UnitQuery) -> Searched {
        let seg = &self.segment;
        let (mask, selectivity) = admit(
            &self.live.mask,
            self.live.count,
            seg,
            q.filter.as_ref(),
            &self.allowed,
            q.partitions,
        );
        let mut top = TopK::new(q.params.k);
        let mut stats = ScanStats::default();
        let sv = SegmentView {
            segment: seg,
            mask: &mask,
            selectivity,
            ordinal: 0,
        };
        search_segment(&sv, self.ann.as_deref(), q, &mut top, &mut stats);
        let found = found_in(
            top,
            |_| seg.clone(),
            |c| crate::coord::partition_of(c.id, q.partitions),
        );
        stats.segments = 0;
        Searched {
            found,
            stats,
            shards: 1,
            failed_shards: Vec::new(),
        }
    }
}

impl TailUnit {
    fn text(&self, q: &TextQuery) -> TextSearched {
        let mut out = TextSearched::new(q);
        for j in self.from..self.segments.len() {
            let live = self.view.live.mask(j);
            observe_segment(&mut out, q, &self.segments[j], |i| live[i]);
        }
        out
    }
}

impl WholeShardUnit {
    fn text(&self, q: &TextQuery) -> TextSearched {
        let mut out = TextSearched::new(q);
        let mut mask = self.live.mask.clone();
        for &row in &self.allowed.hidden {
            mask[row as usize] = false;
        }
        let ids = self.segment.ids();
        observe_segment(&mut out, q, &self.segment, |i| {
            mask[i] && !self.allowed.excludes(&ids[i], q.partitions)
        });
        out.shards = 1;
        out
    }
}

/// Runs an in-memory unit's scoring on the CPU pool (`crate::cpu`); a
/// panic becomes an internal error for this query, never an abort.
pub(super) async fn on_pool<
    U: Send + Sync + 'static,
    Q: Send + Sync + 'static,
    T: Send + 'static,
>(
    unit: Arc<U>,
    q: &Arc<Q>,
    score: fn(&U, &Q) -> T,
) -> Result<T, ReadError> {
    let q = q.clone();
    crate::cpu::pooled(move || score(&unit, &q))
        .await
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "search worker panicked");
            ReadError::Internal(format!("search worker panicked: {what}"))
        })
}

#[async_trait]
impl SearchUnit for Arc<TailUnit> {
    async fn search(&self, q: &Arc<UnitQuery>, _io: &Io<'_>) -> Result<Searched, ReadError> {
        on_pool(self.clone(), q, TailUnit::score).await
    }

    async fn text(&self, q: &Arc<TextQuery>, _io: &Io<'_>) -> Result<TextSearched, ReadError> {
        on_pool(self.clone(), q, TailUnit::text).await
    }
}

#[async_trait]
impl SearchUnit for Arc<WholeShardUnit> {
    async fn search(&self, q: &Arc<UnitQuery>, _io: &Io<'_>) -> Result<Searched, ReadError> {
        on_pool(self.clone(), q, WholeShardUnit::score).await
    }

    async fn text(&self, q: &Arc<TextQuery>, _io: &Io<'_>) -> Result<TextSearched, ReadError> {
        on_pool(self.clone(), q, WholeShardUnit::text).await
    }
}

/// A shard that could not be read (its head, body or deletion vector is
/// damaged): searching it is its error; [`SearchUnit::shard`] lets a
/// partial search leave it out and name it.
pub(super) struct BrokenUnit {
    pub key: String,
    pub rows: u64,
    pub error: super::error::PartitionError,
}

#[async_trait]
impl SearchUnit for BrokenUnit {
    fn shard(&self) -> Option<(&str, u64)> {
        Some((&self.key, self.rows))
    }

    async fn search(&self, _q: &Arc<UnitQuery>, _io: &Io<'_>) -> Result<Searched, ReadError> {
        Err(self.failure())
    }

    async fn text(&self, _q: &Arc<TextQuery>, _io: &Io<'_>) -> Result<TextSearched, ReadError> {
        Err(self.failure())
    }
}

impl BrokenUnit {
    fn failure(&self) -> ReadError {
        ReadError::Index {
            key: self.key.clone(),
            source: self.error.clone(),
        }
    }
}

/// A range-read shard: it fetches the parts it needs (`ranged`) and
/// searches them with the shard index (`index::shard`).
pub(super) struct RangedUnit {
    pub shard: Arc<RangedShard>,
    pub live: Arc<ShardLive>,
    pub hidden: HashSet<u32>,
    pub excluded: Arc<[u32]>,
}

#[async_trait]
impl SearchUnit for RangedUnit {
    fn shard(&self) -> Option<(&str, u64)> {
        Some((&self.shard.key, self.live.count as u64))
    }

    /// Shards of this older format (each with its own IVF) move to the
    /// index's routing at the indexer's next rounds; text queries are
    /// answered once they have.
    async fn text(&self, _q: &Arc<TextQuery>, _io: &Io<'_>) -> Result<TextSearched, ReadError> {
        Err(ReadError::NotYet(format!(
            "index shard {} predates the routed layout and cannot answer a text query; the \
             indexer moves it to the index's routing in its next rounds (`shoal compact` runs \
             one now)",
            self.shard.key
        )))
    }

    async fn search(&self, q: &Arc<UnitQuery>, io: &Io<'_>) -> Result<Searched, ReadError> {
        let shard = &self.shard;
        let allowed = |row: u32| {
            self.live.mask[row as usize]
                && !self.hidden.contains(&row)
                && !excludes(&self.excluded, &shard.ids[row as usize], q.partitions)
        };
        let sq = ShardQuery {
            metric: q.params.metric,
            k: q.params.k,
            probes: q.params.nprobe.saturating_mul(PROBES_PER_NPROBE),
            exact: q.params.exact,
            vector: &q.vector,
        };
        let want = Wanted {
            filter: q.filter.as_ref(),
            include_metadata: q.include_metadata,
            allowed: &allowed,
        };
        let mut stats = ScanStats::default();
        let hits = ranged::search(
            &io.shared.blocks,
            io.store,
            io.tally,
            shard,
            sq,
            &want,
            &mut stats,
        )
        .await
        .map_err(|e| super::shards::index_error(&e))?;
        let found = hits
            .into_iter()
            .map(|h| {
                let id = shard.ids[h.row as usize].clone();
                Found {
                    distance: h.distance,
                    partition: crate::coord::partition_of(&id, q.partitions),
                    id,
                    source: Source::Row {
                        vector: h.vector,
                        metadata: h.metadata,
                    },
                }
            })
            .collect();
        stats.segments = 0;
        Ok(Searched {
            found,
            stats,
            shards: 1,
            failed_shards: Vec::new(),
        })
    }
}
