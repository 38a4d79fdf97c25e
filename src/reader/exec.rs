//! Query execution as a pipeline (compare tantivy's
//! `search_with_executor`): build the query context (validate), load every
//! partition as fresh as the consistency level asks, score each partition
//! on the rayon pool, merge the per-partition top-k, present the hits.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::load::{self, Freshness};
use super::ranged;
use super::shards::{self, IndexView, ShardBody, ShardView};
use super::view::{self, CacheTally, PartitionView};
use super::{
    Consistency, Hit, PartitionFailure, QueryStats, ReadError, SearchRequest, SearchResponse,
    Shared, MAX_K,
};
use crate::filter::{parse_filter, Filter};
use crate::index::{
    codes, present, route, AnnIndex, ExactScan, QueryParams, Route, ScanStats, SegmentSearch,
    SegmentView, TopK,
};
use crate::record::{check_vector, StoredRecord};
use crate::segment::Segment;
use crate::store::{Counted, ObjectStore};

pub(super) async fn search(
    shared: &Arc<Shared>,
    req: &SearchRequest,
) -> Result<SearchResponse, ReadError> {
    let q = QueryContext::new(shared, req)?;
    let loading = async {
        // The index manifest is fetched alongside the partitions (one
        // round for a cold reader), then checked against them: an index
        // view that does not cover what they retired is refreshed before
        // use (DESIGN section 11, reader snapshot).
        let ((ready, failed), early) = futures::future::try_join(
            load_all(&q),
            shards::ensure_index(shared, &q.store, q.want, &[]),
        )
        .await?;
        let retired: Vec<(u32, u64)> = ready
            .iter()
            .map(|(v, _)| (v.partition, v.manifest.indexed_through))
            .collect();
        // Fetched for this query (as fresh as it asks): used as is when
        // it covers the partitions, else refreshed.
        let index = if early.covers(&retired) {
            early
        } else {
            shards::ensure_index(shared, &q.store, q.want, &retired).await?
        };
        Ok::<_, ReadError>((ready, failed, index))
    };
    let (ready, failed, index) = match tokio::time::timeout_at(q.tally.deadline, loading).await {
        Ok(loaded) => loaded?,
        Err(_) => {
            let ms = q.tally.deadline.duration_since(q.started).as_millis() as u64;
            return Err(ReadError::Deadline { ms });
        }
    };
    let fetch_ms = q.started.elapsed().as_secs_f64() * 1e3;
    let compute = std::time::Instant::now();
    let searched = ready.len() as u64;
    let excluded: Vec<u32> = failed.iter().map(|f| f.partition).collect();
    let (work, ranged) = plan(ready, &index, &excluded);
    let (scored, searched_ranged) =
        futures::future::join(score(&q, work), search_ranged(&q, ranged, &excluded)).await;
    let ((mut found, mut scan), (more, more_scan)) = (scored?, searched_ranged?);
    found.extend(more);
    scan.absorb(more_scan);
    let top = merge(found, req.k);
    let mut stats = q.stats(scan, searched, fetch_ms);
    let results = present_hits(&q, top);
    stats.compute_ms = compute.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(?stats, "search done");
    Ok(SearchResponse {
        results,
        partial: !failed.is_empty(),
        failed_partitions: failed,
        stats,
    })
}

/// What one query carries through the pipeline.
struct QueryContext<'a> {
    shared: &'a Shared,
    req: &'a SearchRequest,
    /// The query vector, normalized for cosine.
    vector: Vec<f32>,
    filter: Option<Filter>,
    params: QueryParams,
    want: Freshness,
    /// Counts this query's store requests.
    store: Counted,
    tally: CacheTally,
    started: Instant,
}

impl<'a> QueryContext<'a> {
    /// Validates the request (nothing is fetched for a bad one).
    fn new(shared: &'a Arc<Shared>, req: &'a SearchRequest) -> Result<Self, ReadError> {
        let vector = check_query(shared, req)?;
        let filter = req.filter.as_ref().map(parse_filter).transpose()?;
        let staleness = req
            .max_staleness_ms
            .map(Duration::from_millis)
            .unwrap_or(shared.opts.max_staleness);
        let started = Instant::now();
        let budget = req
            .deadline_ms
            .map(Duration::from_millis)
            .unwrap_or(shared.opts.deadline);
        Ok(QueryContext {
            shared,
            req,
            vector,
            filter,
            params: QueryParams {
                metric: shared.shape.metric,
                k: req.k,
                nprobe: req
                    .nprobe
                    .unwrap_or(shared.nprobe.load(std::sync::atomic::Ordering::Relaxed))
                    .max(1),
                exact: req.exact,
            },
            want: Freshness {
                consistency: req.consistency,
                staleness,
                ticket: shared.next_ticket(),
            },
            store: Counted::new(shared.store.clone()),
            tally: CacheTally::until(started + budget),
            started,
        })
    }

    fn stats(&self, scan: Scanned, searched: u64, fetch_ms: f64) -> QueryStats {
        QueryStats {
            partitions_searched: searched,
            segments_scanned: scan.segments,
            shards_searched: scan.shards,
            vectors_compared: scan.vectors_compared,
            codes_scanned: scan.codes_scanned,
            cache_hits: self.tally.hits.load(Relaxed),
            cache_misses: self.tally.misses.load(Relaxed),
            requests: self.store.counts(),
            rounds: self.store.rounds(),
            fetch_ms,
            compute_ms: 0.0,
        }
    }
}

/// Checks a query and returns the vector ready to score (normalized for
/// cosine).
fn check_query(shared: &Shared, req: &SearchRequest) -> Result<Vec<f32>, ReadError> {
    if req.k == 0 || req.k > MAX_K {
        return Err(ReadError::Invalid(format!(
            "k must be between 1 and {MAX_K}, got {}",
            req.k
        )));
    }
    let shape = shared.shape;
    check_vector(0, "query", &req.vector, shape.dimensions, shape.metric).map_err(|e| {
        let msg = e.to_string();
        ReadError::Invalid(msg.replacen("record 0 (id \"query\"): ", "query ", 1))
    })
}

type Loaded = (Arc<PartitionView>, Vec<Arc<Segment>>);

/// Loads every partition (bounded concurrency). A partition that cannot
/// be read fails the query, or with `allow_partial` is reported instead.
async fn load_all(q: &QueryContext<'_>) -> Result<(Vec<Loaded>, Vec<PartitionFailure>), ReadError> {
    let loads = (0..q.shared.views.len() as u32).map(|p| async move {
        let r = load::partition(q.shared, &q.store, p, q.want, &q.tally).await;
        (p, r)
    });
    let loaded: Vec<_> = futures::stream::iter(loads)
        .buffer_unordered(q.shared.opts.io_concurrency.max(1))
        .collect()
        .await;
    let mut ready = Vec::with_capacity(loaded.len());
    let mut failed = Vec::new();
    for (p, r) in loaded {
        match r {
            Ok(x) => ready.push(x),
            Err(e) if q.req.allow_partial => failed.push(PartitionFailure {
                partition: p,
                error: e.into_read_error(p).to_string(),
            }),
            Err(e) => return Err(e.into_read_error(p)),
        }
    }
    failed.sort_by_key(|f| f.partition);
    Ok((ready, failed))
}

/// One candidate carried out of a partition's tail or a shard.
struct Found {
    distance: f32,
    id: String,
    partition: u32,
    source: Source,
}

/// Where a candidate's vector and metadata are.
enum Source {
    /// Position `position` of a segment (or whole-read shard).
    Segment {
        segment: Arc<Segment>,
        position: usize,
    },
    /// A row read from a range-read shard (metadata fetched only when
    /// the query asked for it).
    Row {
        vector: Vec<f32>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

/// One unit of scoring work.
enum Work {
    /// A partition's tail: its segments from `from` on (seq > W[p]).
    Tail {
        view: Arc<PartitionView>,
        segments: Vec<Arc<Segment>>,
        from: usize,
    },
    /// An index shard, less the rows newer tail records shadow (and, in a
    /// partial result, the rows of partitions left out).
    Shard {
        shard: Arc<ShardView>,
        hidden: Vec<u32>,
        excluded: Arc<Vec<u32>>,
    },
}

/// What to score: every partition's tail, and every shard with the rows
/// the tails shadow hidden (DESIGN section 11, newest wins: a tail record
/// is newer than any shard row of its id, whether it is an upsert or a
/// tombstone).
fn plan(ready: Vec<Loaded>, index: &IndexView, excluded: &[u32]) -> (Vec<Work>, Vec<RangedWork>) {
    let mut hidden: Vec<Vec<u32>> = vec![Vec::new(); index.shards.len()];
    let mut work = Vec::with_capacity(ready.len() + index.shards.len());
    let shadowing = !crate::mutation::active(crate::mutation::Mutation::NoShadowing);
    for (view, segments) in ready {
        let w = index.watermark(view.partition);
        let from = view.manifest.segments.partition_point(|e| e.seq <= w);
        if !index.shards.is_empty() && shadowing {
            for seg in &segments[from..] {
                for id in seg.ids() {
                    if let Some((s, row)) = index.row_of(id) {
                        hidden[s as usize].push(row);
                    }
                }
            }
        }
        if from < segments.len() {
            work.push(Work::Tail {
                view,
                segments,
                from,
            });
        }
    }
    let excluded = Arc::new(excluded.to_vec());
    let mut ranged = Vec::new();
    for (shard, hidden) in index.shards.iter().zip(hidden) {
        if shard.live_count == 0 {
            continue;
        }
        match &shard.body {
            ShardBody::Ranged(_) => ranged.push((shard.clone(), hidden)),
            ShardBody::Whole { .. } => work.push(Work::Shard {
                shard: shard.clone(),
                hidden,
                excluded: excluded.clone(),
            }),
        }
    }
    (work, ranged)
}

/// A range-read shard and the rows the tails shadow in it.
type RangedWork = (Arc<ShardView>, Vec<u32>);

/// Searches the range-read shards, all at once (each fetches what it
/// needs in its own rounds, so the rounds of all of them overlap).
async fn search_ranged(
    q: &QueryContext<'_>,
    ranged: Vec<RangedWork>,
    excluded: &[u32],
) -> Result<(Vec<Vec<Found>>, Scanned), ReadError> {
    let partitions = q.shared.views.len() as u32;
    let sq = ranged::ShardQuery {
        metric: q.params.metric,
        k: q.params.k,
        probes: q.params.nprobe.saturating_mul(codes::PROBES_PER_NPROBE),
        exact: q.params.exact,
        vector: &q.vector,
        filter: q.filter.as_ref(),
        include_metadata: q.req.include_metadata,
    };
    let one = |(view, hidden): RangedWork| {
        let sq = &sq;
        async move {
            let ShardBody::Ranged(shard) = &view.body else {
                unreachable!("planned as ranged")
            };
            let hidden: std::collections::HashSet<u32> = hidden.into_iter().collect();
            let allowed = |row: u32| {
                view.live[row as usize]
                    && !hidden.contains(&row)
                    && (excluded.is_empty()
                        || !excluded.contains(&crate::coord::partition_of(
                            &shard.ids[row as usize],
                            partitions,
                        )))
            };
            let mut stats = ScanStats::default();
            let hits = ranged::search(
                &q.shared.blocks,
                &q.store,
                &q.tally,
                shard,
                &allowed,
                sq,
                &mut stats,
            )
            .await
            .map_err(|e| shards::index_error(&e))?;
            let found: Vec<Found> = hits
                .into_iter()
                .map(|h| {
                    let id = shard.ids[h.row as usize].clone();
                    Found {
                        distance: h.distance,
                        partition: crate::coord::partition_of(&id, partitions),
                        id,
                        source: Source::Row {
                            vector: h.vector,
                            metadata: h.metadata,
                        },
                    }
                })
                .collect();
            Ok::<_, ReadError>((found, stats))
        }
    };
    let results = futures::future::join_all(ranged.into_iter().map(one)).await;
    let mut total = Scanned::default();
    let mut found = Vec::with_capacity(results.len());
    for r in results {
        let (f, s) = r?;
        total.add(&s, true);
        found.push(f);
    }
    Ok((found, total))
}

/// Scores the work on the rayon pool, off the async runtime
/// (`crate::cpu`). A panicking worker becomes an internal error for this
/// query; it never takes the process down.
async fn score(
    q: &QueryContext<'_>,
    work: Vec<Work>,
) -> Result<(Vec<Vec<Found>>, Scanned), ReadError> {
    let (params, vector, filter) = (q.params, q.vector.clone(), q.filter.clone());
    let partitions = q.shared.views.len() as u32;
    let scored = crate::cpu::run(move || {
        let one = |w: &Work| match w {
            Work::Tail {
                view,
                segments,
                from,
            } => {
                let (found, s) =
                    search_tail(view, segments, *from, &params, &vector, filter.as_ref());
                (found, s, false)
            }
            Work::Shard {
                shard,
                hidden,
                excluded,
            } => {
                let (found, s) = search_shard(
                    shard,
                    hidden,
                    excluded,
                    partitions,
                    &params,
                    &vector,
                    filter.as_ref(),
                );
                (found, s, true)
            }
        };
        let run = std::panic::AssertUnwindSafe(|| {
            use rayon::prelude::*;
            // One item (a single shard, nothing in the tails): handing it
            // to the pool would only add a thread switch.
            if work.len() <= 1 {
                work.iter().map(one).collect::<Vec<_>>()
            } else {
                work.par_iter().map(one).collect::<Vec<_>>()
            }
        });
        std::panic::catch_unwind(run)
    });
    let per = match scored.await {
        Ok(per) => per,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "search worker panicked");
            return Err(ReadError::Internal(format!(
                "search worker panicked: {what}"
            )));
        }
    };
    let mut total = Scanned::default();
    let found = per
        .into_iter()
        .map(|(found, s, shard)| {
            total.add(&s, shard);
            found
        })
        .collect();
    Ok((found, total))
}

/// What scoring touched.
#[derive(Default)]
struct Scanned {
    segments: u64,
    shards: u64,
    vectors_compared: u64,
    codes_scanned: u64,
}

impl Scanned {
    /// One work item's counts: a shard counts once, a tail its segments.
    fn add(&mut self, s: &ScanStats, shard: bool) {
        if shard {
            self.shards += 1;
        } else {
            self.segments += s.segments;
        }
        self.vectors_compared += s.vectors_compared;
        self.codes_scanned += s.codes_scanned;
    }

    fn absorb(&mut self, o: Scanned) {
        self.segments += o.segments;
        self.shards += o.shards;
        self.vectors_compared += o.vectors_compared;
        self.codes_scanned += o.codes_scanned;
    }
}

/// The best `params.k` live (and filter-passing) records of one
/// partition's tail, `segments[from..]`.
fn search_tail(
    view: &PartitionView,
    segments: &[Arc<Segment>],
    from: usize,
    params: &QueryParams,
    query: &[f32],
    filter: Option<&Filter>,
) -> (Vec<Found>, ScanStats) {
    let mut top = TopK::new(params.k);
    let mut stats = ScanStats::default();
    // Masks must outlive `top`, which borrows ids from the segments only.
    let masks: Vec<std::borrow::Cow<'_, [bool]>> = segments
        .iter()
        .enumerate()
        .map(|(j, seg)| match filter {
            None => std::borrow::Cow::Borrowed(view.live.mask(j)),
            Some(f) => std::borrow::Cow::Owned(
                view.live
                    .mask(j)
                    .iter()
                    .zip(seg.metadata_maps())
                    .map(|(l, m)| *l && f.matches(m))
                    .collect(),
            ),
        })
        .collect();
    for (j, seg) in segments.iter().enumerate().skip(from) {
        let mask: &[bool] = &masks[j];
        let selectivity = match filter {
            None => 1.0,
            Some(_) => {
                let live = view.live.live_in(j).max(1);
                mask.iter().filter(|m| **m).count() as f64 / live as f64
            }
        };
        let sv = SegmentView {
            segment: seg,
            mask,
            selectivity,
            ordinal: j as u32,
        };
        match &view.ann[j] {
            Some(ann) => ann.search(&sv, params, query, &mut top, &mut stats),
            None => ExactScan.search(&sv, params, query, &mut top, &mut stats),
        }
    }
    let found = top
        .into_sorted()
        .into_iter()
        .map(|c| Found {
            distance: c.distance,
            id: c.id.to_string(),
            partition: view.partition,
            source: Source::Segment {
                segment: segments[c.segment as usize].clone(),
                position: c.position as usize,
            },
        })
        .collect();
    (found, stats)
}

/// The best `params.k` allowed rows of one shard: live, not `hidden`, not
/// of an `excluded` partition, passing the filter.
fn search_shard(
    shard: &ShardView,
    hidden: &[u32],
    excluded: &[u32],
    partitions: u32,
    params: &QueryParams,
    query: &[f32],
    filter: Option<&Filter>,
) -> (Vec<Found>, ScanStats) {
    let ShardBody::Whole {
        segment: seg,
        ann: shard_ann,
        codes: shard_codes,
    } = &shard.body
    else {
        unreachable!("range-read shards are searched by ranged::search")
    };
    let narrowed = filter.is_some() || !hidden.is_empty() || !excluded.is_empty();
    let mask: std::borrow::Cow<'_, [bool]> = if narrowed {
        let mut m = match filter {
            None => shard.live.clone(),
            Some(f) => shard
                .live
                .iter()
                .zip(seg.metadata_maps())
                .map(|(l, md)| *l && f.matches(md))
                .collect(),
        };
        for &row in hidden {
            m[row as usize] = false;
        }
        if !excluded.is_empty() {
            for (i, id) in seg.ids().iter().enumerate() {
                if m[i] && excluded.contains(&crate::coord::partition_of(id, partitions)) {
                    m[i] = false;
                }
            }
        }
        std::borrow::Cow::Owned(m)
    } else {
        std::borrow::Cow::Borrowed(&shard.live)
    };
    let selectivity = match filter {
        None => 1.0,
        Some(_) => mask.iter().filter(|m| **m).count() as f64 / shard.live_count.max(1) as f64,
    };
    let mut top = TopK::new(params.k);
    let mut stats = ScanStats::default();
    let sv = SegmentView {
        segment: seg,
        mask: &mask,
        selectivity,
        ordinal: 0,
    };
    match (
        route(params, selectivity),
        shard_codes,
        shard_ann.as_deref(),
    ) {
        (Route::Exact, _, _) => ExactScan.search(&sv, params, query, &mut top, &mut stats),
        (Route::Ann(p), Some(codes), ann) => {
            let ivf = match ann {
                Some(AnnIndex::Ivf(ix)) => Some(ix),
                _ => None,
            };
            let probes = p.nprobe.saturating_mul(codes::PROBES_PER_NPROBE);
            if !codes::search(codes, ivf, probes, &sv, &p, query, &mut top, &mut stats) {
                ExactScan.search(&sv, params, query, &mut top, &mut stats);
            }
        }
        (Route::Ann(_), None, Some(ann)) => ann.search(&sv, params, query, &mut top, &mut stats),
        (Route::Ann(_), None, None) => ExactScan.search(&sv, params, query, &mut top, &mut stats),
    }
    let found = top
        .into_sorted()
        .into_iter()
        .map(|c| Found {
            distance: c.distance,
            id: c.id.to_string(),
            partition: crate::coord::partition_of(c.id, partitions),
            source: Source::Segment {
                segment: seg.clone(),
                position: c.position as usize,
            },
        })
        .collect();
    (found, stats)
}

/// The global top-k of the per-partition lists (ties broken by id).
fn merge(per_partition: Vec<Vec<Found>>, k: usize) -> Vec<Found> {
    let mut all: Vec<Found> = per_partition.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.id.cmp(&b.id))
    });
    all.truncate(k);
    all
}

/// Hits as users see them: score and distance, metadata and vector on
/// request.
fn present_hits(q: &QueryContext<'_>, top: Vec<Found>) -> Vec<Hit> {
    let metric = q.params.metric;
    top.into_iter()
        .map(|f| {
            let (score, distance) = present(metric, f.distance);
            let (metadata, vector) = match f.source {
                Source::Segment { segment, position } => (
                    q.req
                        .include_metadata
                        .then(|| segment.metadata(position).unwrap_or_default()),
                    q.req
                        .include_vectors
                        .then(|| segment.vector(position).to_vec()),
                ),
                Source::Row { vector, metadata } => (
                    q.req.include_metadata.then(|| metadata.unwrap_or_default()),
                    q.req.include_vectors.then_some(vector),
                ),
            };
            Hit {
                score,
                distance,
                metadata,
                vector,
                partition: f.partition,
                id: f.id,
            }
        })
        .collect()
}

/// Partition `p`'s view and an index view that covers it (its watermark
/// at least the partition's `indexedThrough`), as fresh as `consistency`
/// asks.
async fn view_and_index(
    shared: &Arc<Shared>,
    p: u32,
    consistency: Consistency,
    tally: &CacheTally,
) -> Result<(Arc<view::PartitionView>, Arc<shards::IndexView>), ReadError> {
    let want = Freshness {
        consistency,
        staleness: shared.opts.max_staleness,
        ticket: shared.next_ticket(),
    };
    let view = load::ensure_view(shared, shared.store.as_ref(), p, want, tally)
        .await
        .map_err(|e| e.into_read_error(p))?;
    let retired = [(p, view.manifest.indexed_through)];
    let index = shards::ensure_index(shared, &shared.store, want, &retired).await?;
    Ok((view, index))
}

/// The newest live version of each of `ids` (`None` where it has none), in
/// the order given. Each partition the ids fall in is viewed once, so a
/// batch costs one freshness check per partition, not one per id.
pub(super) async fn get_many(
    shared: &Arc<Shared>,
    ids: &[&str],
    consistency: Consistency,
) -> Result<Vec<Option<StoredRecord>>, ReadError> {
    let n = shared.views.len() as u32;
    let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, id) in ids.iter().enumerate() {
        by_partition
            .entry(crate::coord::partition_of(id, n))
            .or_default()
            .push(i);
    }
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let want = Freshness {
        consistency,
        staleness: shared.opts.max_staleness,
        ticket: shared.next_ticket(),
    };
    // The partitions' views, then one index view that covers them all, as
    // a search loads them.
    let store: &dyn ObjectStore = shared.store.as_ref();
    let views: Vec<Arc<PartitionView>> = futures::stream::iter(by_partition.keys().copied())
        .map(|p| {
            let tally = &tally;
            async move {
                load::ensure_view(shared, store, p, want, tally)
                    .await
                    .map_err(|e| e.into_read_error(p))
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let retired: Vec<(u32, u64)> = views
        .iter()
        .map(|v| (v.partition, v.manifest.indexed_through))
        .collect();
    let index = shards::ensure_index(shared, &shared.store, want, &retired).await?;
    let answers: Vec<(Vec<usize>, Vec<Option<StoredRecord>>)> =
        futures::stream::iter(by_partition.into_values().zip(views))
            .map(|(at, view)| {
                let (index, tally) = (index.clone(), &tally);
                async move {
                    let wanted: Vec<&str> = at.iter().map(|&i| ids[i]).collect();
                    let found = get_in_partition(shared, view, index, &wanted, tally).await?;
                    Ok::<_, ReadError>((at, found))
                }
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
    let mut out = vec![None; ids.len()];
    for (at, found) in answers {
        for (i, rec) in at.into_iter().zip(found) {
            out[i] = rec;
        }
    }
    Ok(out)
}

/// [`get_many`] for ids that all hash to `view`'s partition.
async fn get_in_partition(
    shared: &Arc<Shared>,
    view: Arc<PartitionView>,
    index: Arc<IndexView>,
    ids: &[&str],
    tally: &CacheTally,
) -> Result<Vec<Option<StoredRecord>>, ReadError> {
    let p = view.partition;
    let (index, in_tail) = match tail_lookup(shared, &view, &index, ids, tally).await {
        Ok(found) => (index, found),
        Err(e) if e.is_missing_segment() => {
            // A segment of this view was collected: the partition moved
            // on, and its records may now be in shards this index view
            // does not cover. Look again in fresh views of both.
            let (view, index) = view_and_index(shared, p, Consistency::Strong, tally).await?;
            let found = tail_lookup(shared, &view, &index, ids, tally)
                .await
                .map_err(|e| e.into_read_error(p))?;
            (index, found)
        }
        Err(e) => return Err(e.into_read_error(p)),
    };
    drop(view);
    let index = &index;
    // What the tail does not decide, the shards do (row reads in parallel).
    let pending: Vec<_> = ids
        .iter()
        .zip(in_tail)
        .map(|(id, tail)| async move {
            match tail {
                Some(answer) => Ok(answer),
                None => from_shards(shared, index, p, id, tally).await,
            }
        })
        .collect();
    futures::stream::iter(pending)
        .buffered(16)
        .try_collect()
        .await
}

/// `id`'s row in the index shards of partition `p`, if it has one.
async fn from_shards(
    shared: &Arc<Shared>,
    index: &IndexView,
    p: u32,
    id: &str,
    tally: &CacheTally,
) -> Result<Option<StoredRecord>, ReadError> {
    let w = index.watermark(p);
    let Some((s, row)) = index.row_of(id) else {
        return Ok(None);
    };
    let shard = &index.shards[s as usize];
    let mut rec = match &shard.body {
        ShardBody::Whole { segment, .. } => stored(id, p, w, segment, row as usize),
        ShardBody::Ranged(r) => {
            let counted = Counted::new(shared.store.clone());
            let (vector, metadata) = ranged::row(&shared.blocks, &counted, tally, r, row)
                .await
                .map_err(|e| shards::index_error(&e))?;
            StoredRecord {
                id: id.to_string(),
                vector,
                metadata,
                partition: p,
                seq: w,
                position: row as usize,
                shard: None,
            }
        }
    };
    rec.shard = Some(shard.key.clone());
    Ok(Some(rec))
}

/// What the partition's tail (above the index watermark) says of each id:
/// `None` if nothing (the shards answer), `Some(None)` if deleted there,
/// else its newest record.
async fn tail_lookup(
    shared: &Arc<Shared>,
    view: &PartitionView,
    index: &IndexView,
    ids: &[&str],
    tally: &CacheTally,
) -> Result<Vec<Option<Option<StoredRecord>>>, super::PartitionError> {
    let p = view.partition;
    let w = index.watermark(p);
    // Each id's newest record in the partition, tombstones included; at
    // or below the watermark the shards answer.
    let newest: Vec<_> = ids
        .iter()
        .map(|id| {
            view.live
                .newest_of(id)
                .filter(|loc| view.manifest.segments[loc.seg as usize].seq > w)
        })
        .collect();
    let mut keys: Vec<String> = newest
        .iter()
        .flatten()
        .filter(|loc| !loc.tombstone)
        .map(|loc| view.manifest.segments[loc.seg as usize].key.clone())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let segs = view::load_segments(shared, shared.store.as_ref(), keys.clone(), tally).await?;
    let out = ids
        .iter()
        .zip(newest)
        .map(|(id, loc)| {
            let loc = loc?;
            if loc.tombstone {
                return Some(None);
            }
            let entry = &view.manifest.segments[loc.seg as usize];
            let at = keys
                .binary_search(&entry.key)
                .expect("every needed segment was loaded");
            Some(Some(stored(id, p, entry.seq, &segs[at], loc.pos as usize)))
        })
        .collect();
    Ok(out)
}

/// The ids live in partition `p`, sorted: the tail's newest versions above
/// the watermark (tombstones hide ids), then the shards' live rows of the
/// partition that the tail does not override.
pub(super) async fn list_ids(
    shared: &Arc<Shared>,
    p: u32,
    consistency: Consistency,
) -> Result<Vec<String>, ReadError> {
    let n = shared.views.len() as u32;
    if p >= n {
        return Err(ReadError::Invalid(format!(
            "partition {p} does not exist; the index has {n} (0..={})",
            n - 1
        )));
    }
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let (view, index) = view_and_index(shared, p, consistency, &tally).await?;
    let w = index.watermark(p);
    let mut decided = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for (id, loc) in view.live.newest() {
        if view.manifest.segments[loc.seg as usize].seq > w {
            decided.insert(id);
            if !loc.tombstone {
                ids.push(id.to_string());
            }
        }
    }
    ids.extend(
        index
            .live_ids()
            .filter(|id| !decided.contains(id) && crate::coord::partition_of(id, n) == p)
            .map(str::to_string),
    );
    ids.sort_unstable();
    Ok(ids)
}

fn stored(id: &str, partition: u32, seq: u64, seg: &Segment, pos: usize) -> StoredRecord {
    StoredRecord {
        id: id.to_string(),
        vector: seg.vector(pos).to_vec(),
        metadata: seg.metadata(pos).unwrap_or_default(),
        partition,
        seq,
        position: pos,
        shard: None,
    }
}

/// [`warm`], then the codes of every list of every range-read shard.
pub(super) async fn warm_up(shared: &Arc<Shared>) -> Result<super::WarmReport, ReadError> {
    let started = Instant::now();
    let counted = Counted::new(shared.store.clone());
    let (live, index) = warm_with(shared, &counted).await?;
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let mut lists = 0;
    let fetches = index.shards.iter().filter_map(|s| match &s.body {
        ShardBody::Ranged(r) => Some(r.clone()),
        ShardBody::Whole { .. } => None,
    });
    let mut pending = Vec::new();
    for r in fetches {
        let parts: Vec<ranged::Part> = (0..r.head.nlist() as u32)
            .map(ranged::Part::Codes)
            .collect();
        lists += parts.len() as u64;
        let (counted, tally) = (&counted, &tally);
        pending.push(async move {
            shared
                .blocks
                .get(counted, &r, &parts, tally)
                .await
                .map(|_| ())
                .map_err(|e| shards::index_error(&e))
        });
    }
    futures::future::try_join_all(pending).await?;
    Ok(super::WarmReport {
        live_records: live,
        shards: index.shards.len() as u64,
        code_lists: lists,
        cache_bytes: shared.cache.weighted_size() + shared.blocks.weighted_size(),
        requests: counted.counts(),
        ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Loads every partition now, so the first query is warm. Returns the
/// live records.
pub(super) async fn warm(shared: &Arc<Shared>) -> Result<u64, ReadError> {
    let (live, _) = warm_with(shared, &Counted::new(shared.store.clone())).await?;
    Ok(live)
}

/// [`warm`] through `counted`; also returns the index view it loaded.
async fn warm_with(
    shared: &Arc<Shared>,
    counted: &Counted,
) -> Result<(u64, Arc<IndexView>), ReadError> {
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let store: &dyn ObjectStore = counted;
    let want = Freshness {
        consistency: Consistency::Strong,
        staleness: Duration::ZERO,
        ticket: shared.next_ticket(),
    };
    let loads = (0..shared.views.len() as u32).map(|p| {
        let tally = &tally;
        async move { (p, load::partition(shared, store, p, want, tally).await) }
    });
    let loaded: Vec<_> = futures::stream::iter(loads)
        .buffer_unordered(shared.opts.io_concurrency.max(1))
        .collect()
        .await;
    let mut views = Vec::with_capacity(loaded.len());
    for (p, r) in loaded {
        views.push(r.map_err(|e| e.into_read_error(p))?.0);
    }
    let retired: Vec<(u32, u64)> = views
        .iter()
        .map(|v| (v.partition, v.manifest.indexed_through))
        .collect();
    let index = shards::ensure_index(shared, counted, want, &retired).await?;
    Ok((live_total(&index, &views), index))
}

/// Live records across the shards and the tails: shard rows no tail
/// record shadows, plus the tails' live records.
fn live_total(index: &IndexView, views: &[Arc<PartitionView>]) -> u64 {
    let (mut tail_live, mut hidden) = (0, 0);
    for view in views {
        let w = index.watermark(view.partition);
        for (id, loc) in view.live.newest() {
            if view.manifest.segments[loc.seg as usize].seq <= w {
                continue;
            }
            tail_live += u64::from(!loc.tombstone);
            hidden += u64::from(index.row_of(id).is_some());
        }
    }
    index.live_rows() - hidden + tail_live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::clock::{DynClock, SystemClock};
    use crate::coord::config::load_or_create;
    use crate::coord::RequestedSettings;
    use crate::reader::{Reader, ReaderOptions};
    use crate::record::Record;
    use crate::store::memory::MemoryStore;
    use crate::vocab::Metric;
    use crate::writer::{Writer, WriterOptions};

    /// A search worker that panics (here: a view whose index list is
    /// shorter than its segment list, which indexes out of bounds) ends
    /// the query with an internal error; the process and the reader live on.
    #[tokio::test]
    async fn a_panicking_search_worker_is_an_internal_error_not_an_abort() {
        let store: crate::store::DynStore = Arc::new(MemoryStore::unique());
        let req = RequestedSettings {
            partition_count: Some(2),
            dimensions: Some(2),
            distance_metric: Some(Metric::Dot),
            ..Default::default()
        };
        let settings = load_or_create(store.as_ref(), &req, &SystemClock)
            .await
            .unwrap()
            .settings;
        let clock: DynClock = Arc::new(SystemClock);
        let w = Writer::new(
            store.clone(),
            &settings,
            "w",
            clock,
            WriterOptions::default(),
        );
        w.upsert(&[
            Record::new("a", vec![1.0, 0.0]),
            Record::new("b", vec![0.0, 1.0]),
        ])
        .await
        .unwrap();
        let reader = Reader::new(store, &settings, ReaderOptions::default());
        let req = SearchRequest::new(vec![1.0, 0.0], 2);
        let q = QueryContext::new(&reader.shared, &req).unwrap();
        let (mut ready, failed) = load_all(&q).await.unwrap();
        assert!(failed.is_empty());
        let (view, segs) = ready
            .iter_mut()
            .find(|(_, segs)| !segs.is_empty())
            .expect("a partition with data");
        let mut broken = (**view).clone();
        broken.ann.clear();
        *view = Arc::new(broken);
        assert!(!segs.is_empty());
        let index = IndexView::empty(2);
        match score(&q, plan(ready, &index, &[]).0).await {
            Err(ReadError::Internal(msg)) => assert!(msg.contains("panicked"), "{msg}"),
            Err(e) => panic!("expected an internal error, got {e}"),
            Ok(_) => panic!("a broken view must not score"),
        }
        // The reader still answers.
        let resp = reader.search(&req).await.unwrap();
        assert_eq!(resp.results[0].id, "a");
    }
}
