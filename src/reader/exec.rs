//! Query execution: refresh what the consistency level asks for, load the
//! segments, score every partition on the rayon pool, merge the top-k.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::view::{self, CacheTally, PartitionView};
use super::{
    Consistency, Hit, LoadError, PartitionFailure, QueryStats, ReadError, SearchRequest,
    SearchResponse, Shared, MAX_K,
};
use crate::filter::{parse_filter, Filter};
use crate::index::{present, ExactScan, QueryParams, ScanStats, SegmentSearch, SegmentView, TopK};
use crate::record::{check_vector, StoredRecord};
use crate::segment::Segment;
use crate::store::{Counted, ObjectStore};

/// Checks a query and returns the vector ready to score (normalized for
/// cosine).
fn check_query(shared: &Shared, req: &SearchRequest) -> Result<Vec<f32>, ReadError> {
    if req.k == 0 || req.k > MAX_K {
        return Err(ReadError::Invalid(format!(
            "k must be between 1 and {MAX_K}, got {}",
            req.k
        )));
    }
    check_vector(
        0,
        "query",
        &req.vector,
        shared.shape.dimensions,
        shared.shape.metric,
    )
    .map_err(|e| {
        let msg = e.to_string();
        ReadError::Invalid(msg.replacen("record 0 (id \"query\"): ", "query ", 1))
    })
}

/// Returns a view of `p` as fresh as `consistency` asks for.
async fn ensure_view(
    shared: &Shared,
    store: &dyn ObjectStore,
    p: u32,
    consistency: Consistency,
    staleness: Duration,
    ticket: u64,
    tally: &CacheTally,
) -> Result<Arc<PartitionView>, LoadError> {
    let slot = &shared.views[p as usize];
    let fresh = || {
        let checked = slot.checked_at();
        match consistency {
            Consistency::Eventual => checked.is_some(),
            Consistency::Bounded => checked.is_some_and(|t| t.elapsed() < staleness),
            // Revalidated by a refresh that began after this query did
            // (ours or a concurrent query's).
            Consistency::Strong => slot.checked_ticket() > ticket,
        }
    };
    if fresh() {
        if let Some(v) = slot.current() {
            return Ok(v);
        }
    }
    let _one_refresh_at_a_time = slot.refresh.lock().await;
    if fresh() {
        if let Some(v) = slot.current() {
            return Ok(v);
        }
    }
    view::refresh(shared, store, p, false, tally).await
}

/// A partition's view and segments. A segment that vanished means our
/// manifest predates a compaction and GC: refresh once and retry.
async fn load_partition(
    shared: &Shared,
    store: &dyn ObjectStore,
    p: u32,
    consistency: Consistency,
    staleness: Duration,
    ticket: u64,
    tally: &CacheTally,
) -> Result<(Arc<PartitionView>, Vec<Arc<Segment>>), LoadError> {
    let view = ensure_view(shared, store, p, consistency, staleness, ticket, tally).await?;
    match view::segments_of(shared, store, &view, tally).await {
        Ok(segs) => Ok((view, segs)),
        Err(e) if e.missing_segment => {
            let _g = shared.views[p as usize].refresh.lock().await;
            let view = view::refresh(shared, store, p, true, tally).await?;
            let segs = view::segments_of(shared, store, &view, tally).await?;
            Ok((view, segs))
        }
        Err(e) => Err(e),
    }
}

/// One candidate carried out of a partition.
struct Found {
    distance: f32,
    id: String,
    partition: u32,
    segment: Arc<Segment>,
    position: usize,
}

fn search_partition(
    view: &PartitionView,
    segments: &[Arc<Segment>],
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
            Some(f) => {
                let maps = seg.metadata_maps();
                std::borrow::Cow::Owned(
                    view.live
                        .mask(j)
                        .iter()
                        .zip(maps)
                        .map(|(l, m)| *l && f.matches(m))
                        .collect(),
                )
            }
        })
        .collect();
    for (j, seg) in segments.iter().enumerate() {
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
            segment: segments[c.segment as usize].clone(),
            position: c.position as usize,
        })
        .collect();
    (found, stats)
}

pub(super) async fn search(
    shared: &Arc<Shared>,
    req: &SearchRequest,
) -> Result<SearchResponse, ReadError> {
    let query = check_query(shared, req)?;
    let filter = req.filter.as_ref().map(parse_filter).transpose()?;
    let qstore = Counted::new(shared.store.clone());
    let tally = CacheTally::default();
    let started = Instant::now();
    let ticket = shared.next_ticket();
    let staleness = req
        .max_staleness_ms
        .map(Duration::from_millis)
        .unwrap_or(shared.opts.max_staleness);
    let loads = (0..shared.views.len() as u32).map(|p| {
        let (qstore, tally) = (&qstore, &tally);
        async move {
            let r = load_partition(shared, qstore, p, req.consistency, staleness, ticket, tally);
            (p, r.await)
        }
    });
    let loaded: Vec<_> = futures::stream::iter(loads)
        .buffer_unordered(shared.opts.io_concurrency.max(1))
        .collect()
        .await;
    let mut ready = Vec::with_capacity(loaded.len());
    let mut failed = Vec::new();
    for (p, r) in loaded {
        match r {
            Ok(x) => ready.push(x),
            Err(e) if req.allow_partial => failed.push(PartitionFailure {
                partition: p,
                error: e.into_read_error(p).to_string(),
            }),
            Err(e) => return Err(e.into_read_error(p)),
        }
    }
    failed.sort_by_key(|f| f.partition);
    let fetch_ms = started.elapsed().as_secs_f64() * 1e3;

    // CPU phase on the rayon pool.
    let compute_start = std::time::Instant::now();
    let (metric, k) = (shared.shape.metric, req.k);
    let params = QueryParams {
        metric,
        k,
        nprobe: req.nprobe.unwrap_or(shared.nprobe).max(1),
        exact: req.exact,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        use rayon::prelude::*;
        let per: Vec<(Vec<Found>, ScanStats)> = ready
            .par_iter()
            .map(|(view, segs)| search_partition(view, segs, &params, &query, filter.as_ref()))
            .collect();
        let _ = tx.send((per, ready.len()));
    });
    let (per, searched) = rx
        .await
        .map_err(|_| ReadError::Invalid("search worker failed".into()))?;
    let mut stats = QueryStats {
        partitions_searched: searched as u64,
        ..Default::default()
    };
    let mut all: Vec<Found> = Vec::new();
    for (found, s) in per {
        stats.segments_scanned += s.segments;
        stats.vectors_compared += s.vectors_compared;
        all.extend(found);
    }
    all.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.id.cmp(&b.id))
    });
    all.truncate(k);
    let results = all
        .into_iter()
        .map(|f| {
            let (score, distance) = present(metric, f.distance);
            Hit {
                score,
                distance,
                metadata: req
                    .include_metadata
                    .then(|| f.segment.metadata(f.position).unwrap_or_default()),
                vector: req
                    .include_vectors
                    .then(|| f.segment.vector(f.position).to_vec()),
                partition: f.partition,
                id: f.id,
            }
        })
        .collect();
    stats.compute_ms = compute_start.elapsed().as_secs_f64() * 1e3;
    stats.fetch_ms = fetch_ms;
    stats.cache_hits = tally.hits.load(Relaxed);
    stats.cache_misses = tally.misses.load(Relaxed);
    stats.requests = qstore.counts();
    tracing::debug!(?stats, "search done");
    Ok(SearchResponse {
        results,
        partial: !failed.is_empty(),
        failed_partitions: failed,
        stats,
    })
}

pub(super) async fn get(
    shared: &Arc<Shared>,
    id: &str,
    consistency: Consistency,
) -> Result<Option<StoredRecord>, ReadError> {
    let n = shared.views.len() as u32;
    let p = crate::coord::partition_of(id, n);
    let tally = CacheTally::default();
    let store: &dyn ObjectStore = shared.store.as_ref();
    let staleness = shared.opts.max_staleness;
    let view = ensure_view(
        shared,
        store,
        p,
        consistency,
        staleness,
        shared.next_ticket(),
        &tally,
    )
    .await
    .map_err(|e| e.into_read_error(p))?;
    let Some(loc) = view.locate(id) else {
        return Ok(None);
    };
    let entry = &view.manifest.segments[loc.seg as usize];
    let seg = match view::load_segment(shared, store, &entry.key, &tally).await {
        Ok(s) => s,
        Err(e) if e.missing_segment => {
            // Compacted away since our manifest: look again with a fresh one.
            let _g = shared.views[p as usize].refresh.lock().await;
            let view = view::refresh(shared, store, p, true, &tally)
                .await
                .map_err(|e| e.into_read_error(p))?;
            drop(_g);
            let Some(loc) = view.locate(id) else {
                return Ok(None);
            };
            let entry = &view.manifest.segments[loc.seg as usize];
            let seg = view::load_segment(shared, store, &entry.key, &tally)
                .await
                .map_err(|e| e.into_read_error(p))?;
            return Ok(Some(stored(id, p, entry.seq, &seg, loc.pos as usize)));
        }
        Err(e) => return Err(e.into_read_error(p)),
    };
    Ok(Some(stored(id, p, entry.seq, &seg, loc.pos as usize)))
}

fn stored(id: &str, partition: u32, seq: u64, seg: &Segment, pos: usize) -> StoredRecord {
    StoredRecord {
        id: id.to_string(),
        vector: seg.vector(pos).to_vec(),
        metadata: seg.metadata(pos).unwrap_or_default(),
        partition,
        seq,
        position: pos,
    }
}

pub(super) async fn warm(shared: &Arc<Shared>) -> Result<u64, ReadError> {
    let tally = CacheTally::default();
    let store: &dyn ObjectStore = shared.store.as_ref();
    let ticket = shared.next_ticket();
    let loads = (0..shared.views.len() as u32).map(|p| {
        let tally = &tally;
        async move {
            let r = load_partition(
                shared,
                store,
                p,
                Consistency::Strong,
                Duration::ZERO,
                ticket,
                tally,
            )
            .await;
            (p, r)
        }
    });
    let loaded: Vec<_> = futures::stream::iter(loads)
        .buffer_unordered(shared.opts.io_concurrency.max(1))
        .collect()
        .await;
    let mut live = 0;
    for (p, r) in loaded {
        live += r.map_err(|e| e.into_read_error(p))?.0.live_count();
    }
    Ok(live)
}
