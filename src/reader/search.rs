//! The query pipeline (compare tantivy's `search_with_executor`):
//! validate, load a snapshot as fresh as the consistency level asks,
//! search every unit at once, merge their top-k, present the hits.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::load::{once_more_if_vanished, Freshness};
use super::snapshot::{Snapshot, Want};
use super::unit::{Found, Io, Searched, Source, UnitQuery};
use super::view::CacheTally;
use super::{
    Consistency, Hit, QueryStats, ReadError, SearchRequest, SearchResponse, ShardFailure, Shared,
    MAX_K,
};
use crate::filter::parse_filter;
use crate::index::{present, QueryParams, ScanStats};
use crate::record::check_vector;
use crate::store::Counted;

pub(super) async fn search(
    shared: &Arc<Shared>,
    req: &SearchRequest,
) -> Result<SearchResponse, ReadError> {
    let q = QueryContext::new(shared, req)?;
    let want = Want {
        fresh: q.want,
        segments: true,
        allow_partial: req.allow_partial,
    };
    // An object the snapshot names that has vanished (a shard merged away
    // or a segment compacted, then collected) means the snapshot was
    // stale, whatever consistency the query asked: search once more on a
    // snapshot revalidated now (DESIGN section 8).
    let again = || {
        let fresh = Freshness {
            consistency: Consistency::Strong,
            staleness: Duration::ZERO,
            ticket: shared.next_ticket(),
        };
        run(shared, &q, Want { fresh, ..want })
    };
    once_more_if_vanished(run(shared, &q, want), again).await
}

/// One pass of the pipeline on a snapshot loaded as `want` asks.
async fn run(
    shared: &Arc<Shared>,
    q: &QueryContext<'_>,
    want: Want,
) -> Result<SearchResponse, ReadError> {
    let partitions = 0..shared.views.len() as u32;
    let loading = Snapshot::load(shared, &q.store, partitions, want, &q.tally);
    let snapshot = match tokio::time::timeout_at(q.tally.deadline, loading).await {
        Ok(loaded) => loaded?,
        Err(_) => {
            let ms = q.tally.deadline.duration_since(q.started).as_millis() as u64;
            return Err(ReadError::Deadline { ms });
        }
    };
    let fetch_ms = q.started.elapsed().as_secs_f64() * 1e3;
    let compute = std::time::Instant::now();
    let searched = snapshot.loaded.len() as u64;
    let failed = snapshot.failed.clone();
    let units = snapshot.units();
    let io = Io {
        shared,
        store: &q.store,
        tally: &q.tally,
    };
    let runs: Vec<_> = units.iter().map(|u| u.search(&q.unit, &io)).collect();
    let mut scan = Scanned::default();
    let mut found = Vec::with_capacity(units.len());
    let mut failed_shards = Vec::new();
    for (unit, r) in units.iter().zip(futures::future::join_all(runs).await) {
        let s = match (r, unit.shard()) {
            (Ok(s), _) => s,
            // A corrupt shard part (a vanished one is retried instead):
            // with `allow_partial` the shard is left out and named.
            (Err(e), Some((key, rows))) if q.req.allow_partial && unreadable(&e) => {
                tracing::error!(shard = key, rows, error = %e, "a shard part is unreadable: left out of a partial result");
                failed_shards.push(ShardFailure {
                    shard: key.to_string(),
                    rows,
                    error: e.to_string(),
                });
                continue;
            }
            (Err(e), _) => return Err(e),
        };
        scan.add(&s);
        failed_shards.extend(s.failed_shards);
        found.push(s.found);
    }
    let top = merge(found, q.req.k);
    let mut stats = q.stats(scan, searched, fetch_ms);
    let results = present_hits(q, top);
    stats.compute_ms = compute.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(?stats, "search done");
    Ok(SearchResponse {
        results,
        partial: !failed.is_empty() || !failed_shards.is_empty(),
        failed_partitions: failed,
        failed_shards,
        stats,
    })
}

/// Whether `e` is an index part that was read and found damaged (not
/// one that vanished, which a fresher snapshot fixes).
fn unreadable(e: &ReadError) -> bool {
    matches!(e, ReadError::Index { source, .. } if source.kind() == crate::vocab::ErrorKind::Corrupt)
}

/// What one query carries through the pipeline.
pub(super) struct QueryContext<'a> {
    req: &'a SearchRequest,
    /// What every search unit is asked.
    pub unit: Arc<UnitQuery>,
    pub want: Freshness,
    /// Counts this query's store requests.
    pub store: Counted,
    pub tally: CacheTally,
    started: Instant,
}

impl<'a> QueryContext<'a> {
    /// Validates the request (nothing is fetched for a bad one).
    pub(super) fn new(shared: &'a Arc<Shared>, req: &'a SearchRequest) -> Result<Self, ReadError> {
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
        let params = QueryParams {
            metric: shared.shape.metric,
            k: req.k,
            nprobe: req.nprobe.unwrap_or(shared.nprobe.load(Relaxed)).max(1),
            exact: req.exact,
        };
        Ok(QueryContext {
            req,
            unit: Arc::new(UnitQuery {
                params,
                vector,
                filter,
                include_metadata: req.include_metadata,
                partitions: shared.views.len() as u32,
                allow_partial: req.allow_partial,
            }),
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
            segments_scanned: scan.stats.segments,
            shards_searched: scan.shards,
            vectors_compared: scan.stats.vectors_compared,
            codes_scanned: scan.stats.codes_scanned,
            rows_reranked: scan.stats.rows_reranked,
            rerank_candidates: scan.stats.rerank_candidates,
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

/// What the units touched, summed.
#[derive(Default)]
struct Scanned {
    stats: ScanStats,
    shards: u64,
}

impl Scanned {
    fn add(&mut self, s: &Searched) {
        self.stats.segments += s.stats.segments;
        self.stats.vectors_compared += s.stats.vectors_compared;
        self.stats.codes_scanned += s.stats.codes_scanned;
        self.stats.rows_reranked += s.stats.rows_reranked;
        self.stats.rerank_candidates += s.stats.rerank_candidates;
        self.shards += s.shards;
    }
}

/// The global top-k of the units' lists (ties broken by id).
fn merge(per_unit: Vec<Vec<Found>>, k: usize) -> Vec<Found> {
    let mut all: Vec<Found> = per_unit.into_iter().flatten().collect();
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
    let metric = q.unit.params.metric;
    let req = q.req;
    top.into_iter()
        .map(|f| {
            let (score, distance) = present(metric, f.distance);
            let (metadata, vector) = match f.source {
                Source::Segment { segment, position } => (
                    req.include_metadata
                        .then(|| segment.metadata(position).unwrap_or_default()),
                    req.include_vectors
                        .then(|| segment.vector(position).to_vec()),
                ),
                Source::Row { vector, metadata } => (
                    req.include_metadata.then(|| metadata.unwrap_or_default()),
                    req.include_vectors.then_some(vector),
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
        let want = Want {
            fresh: q.want,
            segments: true,
            allow_partial: false,
        };
        let mut snap = Snapshot::load(&reader.shared, &q.store, 0..2, want, &q.tally)
            .await
            .unwrap();
        assert!(snap.failed.is_empty());
        let l = snap
            .loaded
            .iter_mut()
            .find(|l| l.segments.as_ref().is_some_and(|s| !s.is_empty()))
            .expect("a partition with data");
        let mut broken = (*l.view).clone();
        broken.ann.clear();
        l.view = Arc::new(broken);
        let io = Io {
            shared: &reader.shared,
            store: &q.store,
            tally: &q.tally,
        };
        let units = snap.units();
        assert!(!units.is_empty());
        let mut outcome = Ok(());
        for u in &units {
            if let Err(e) = u.search(&q.unit, &io).await {
                outcome = Err(e);
            }
        }
        match outcome {
            Err(ReadError::Internal(msg)) => assert!(msg.contains("panicked"), "{msg}"),
            Err(e) => panic!("expected an internal error, got {e}"),
            Ok(_) => panic!("a broken view must not score"),
        }
        // The reader still answers.
        let resp = reader.search(&req).await.unwrap();
        assert_eq!(resp.results[0].id, "a");
    }
}
