//! The query pipeline (compare tantivy's `search_with_executor`):
//! validate, load a snapshot as fresh as the consistency level asks,
//! search every unit at once, merge their top-k, present the hits.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::load::{once_more_if_vanished, Freshness};
use super::snapshot::{Snapshot, Want};
use super::text::{Scored, TextDoc, TextList, TextQuery};
use super::unit::{Found, Io, SearchUnit, Searched, Source, UnitQuery};
use super::view::CacheTally;
use super::{
    Consistency, Hit, HitScores, KeyScore, QueryStats, ReadError, SearchRequest, SearchResponse,
    ShardFailure, Shared, MAX_K,
};
use crate::filter::parse_filter;
use crate::index::{present, QueryParams, ScanStats};
use crate::record::check_vector;
use crate::store::Counted;
use crate::vocab::Metric;

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
    let mut scan = Scanned::default();
    let mut failed_shards = Vec::new();
    // A hybrid query's vector and text passes run at once.
    let vector_pass = async {
        match &q.unit {
            None => None,
            Some(unit) => {
                let runs = units.iter().map(|u| u.search(unit, &io));
                Some(futures::future::join_all(runs).await)
            }
        }
    };
    let text_pass = async {
        match &q.text {
            None => None,
            Some(tq) => {
                let runs = units.iter().map(|u| u.text(tq, &io));
                Some(futures::future::join_all(runs).await)
            }
        }
    };
    let (vector_results, text_results) = futures::join!(vector_pass, text_pass);
    let vector = match (&q.unit, vector_results) {
        (Some(unit), Some(results)) => {
            let mut found = Vec::with_capacity(units.len());
            for s in q.kept(&units, results, &mut failed_shards)? {
                scan.add(&s);
                failed_shards.extend(s.failed_shards);
                found.push(s.found);
            }
            Some(merge(found, unit.params.k))
        }
        _ => None,
    };
    let text = match (&q.text, text_results) {
        (Some(tq), Some(results)) => {
            let mut searched = q.kept(&units, results, &mut failed_shards)?;
            for s in &mut searched {
                scan.shards += s.shards;
                failed_shards.append(&mut s.failed_shards);
            }
            let mut ranking = super::text::score(tq, searched, q.depth);
            let pending = ranking.pending();
            super::routed::text::resolve(&mut ranking.docs, &pending, &io, tq.partitions).await?;
            Some(ranking.finish(q.depth))
        }
        _ => None,
    };
    let mut stats = q.stats(scan, searched, fetch_ms);
    let results = match text {
        None => present_hits(q, vector.unwrap_or_default()),
        Some((docs, lists)) => {
            let mut hits = present_fused(q, vector, docs, lists);
            if q.req.include_vectors {
                fill_vectors(shared, &mut hits).await?;
            }
            hits
        }
    };
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

/// The vectors of text hits whose unit read only metadata (a routed
/// shard scanned for text), fetched by id from the views just loaded.
async fn fill_vectors(shared: &Arc<Shared>, hits: &mut [Hit]) -> Result<(), ReadError> {
    let missing: Vec<String> = hits
        .iter()
        .filter(|h| h.vector.is_none())
        .map(|h| h.id.clone())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = missing.iter().map(String::as_str).collect();
    let got = super::lookup::get_many(shared, &ids, Consistency::Eventual).await?;
    let mut by_id: HashMap<String, Vec<f32>> = got
        .into_iter()
        .flatten()
        .map(|r| (r.id, r.vector))
        .collect();
    for h in hits.iter_mut().filter(|h| h.vector.is_none()) {
        h.vector = by_id.remove(&h.id);
    }
    Ok(())
}

/// Whether `e` is an index part that was read and found damaged (not
/// one that vanished, which a fresher snapshot fixes).
fn unreadable(e: &ReadError) -> bool {
    matches!(e, ReadError::Index { source, .. } if source.kind() == crate::vocab::ErrorKind::Corrupt)
}

/// What one query carries through the pipeline.
pub(super) struct QueryContext<'a> {
    req: &'a SearchRequest,
    metric: Metric,
    /// What every search unit is asked for the vector (`None`: no vector).
    pub unit: Option<Arc<UnitQuery>>,
    /// What every search unit is asked for the text (`None`: no text).
    pub text: Option<Arc<TextQuery>>,
    /// How deep each ranked list goes when lists are fused.
    depth: usize,
    pub want: Freshness,
    /// Counts this query's store requests.
    pub store: Counted,
    pub tally: CacheTally,
    started: Instant,
}

impl<'a> QueryContext<'a> {
    /// Validates the request (nothing is fetched for a bad one).
    pub(super) fn new(shared: &'a Arc<Shared>, req: &'a SearchRequest) -> Result<Self, ReadError> {
        check_k(req)?;
        let vector = (!req.vector.is_empty() || req.text.is_empty())
            .then(|| check_query(shared, req))
            .transpose()?;
        let lists = text_lists(shared, req)?;
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
        // One list ranks alone; fused lists each go deeper than k, so a
        // document ranked well in one list but past k in another is not
        // lost to the fusion.
        let fused = lists.len() + usize::from(vector.is_some()) > 1;
        let depth = if fused {
            (req.k * FUSION_DEPTH_PER_K).clamp(MIN_FUSION_DEPTH, MAX_K)
        } else {
            req.k
        };
        let partitions = shared.views.len() as u32;
        let metric = shared.shape.metric;
        let params = QueryParams {
            metric,
            k: depth.max(req.k),
            nprobe: req.nprobe.unwrap_or(shared.nprobe.load(Relaxed)).max(1),
            exact: req.exact,
        };
        Ok(QueryContext {
            req,
            metric,
            unit: vector.map(|vector| {
                Arc::new(UnitQuery {
                    params,
                    vector,
                    filter: filter.clone(),
                    include_metadata: req.include_metadata,
                    partitions,
                    allow_partial: req.allow_partial,
                })
            }),
            text: (!lists.is_empty()).then(|| {
                Arc::new(TextQuery {
                    lists,
                    filter,
                    partitions,
                    allow_partial: req.allow_partial,
                })
            }),
            depth,
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

    /// The units' answers; a shard whose part is unreadable (not one
    /// that vanished, which a fresher snapshot fixes) is left out and
    /// named when the query allows a partial result.
    fn kept<T>(
        &self,
        units: &[Box<dyn SearchUnit>],
        results: Vec<Result<T, ReadError>>,
        failed: &mut Vec<ShardFailure>,
    ) -> Result<Vec<T>, ReadError> {
        let mut out = Vec::with_capacity(results.len());
        for (unit, r) in units.iter().zip(results) {
            match (r, unit.shard()) {
                (Ok(s), _) => out.push(s),
                (Err(e), Some((key, rows))) if self.req.allow_partial && unreadable(&e) => {
                    tracing::error!(shard = key, rows, error = %e, "a shard part is unreadable: left out of a partial result");
                    if !failed.iter().any(|f| f.shard == key) {
                        failed.push(ShardFailure {
                            shard: key.to_string(),
                            rows,
                            error: e.to_string(),
                        });
                    }
                }
                (Err(e), _) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A hit's metadata and vector, as far as the request asked for them.
    fn shown(&self, source: Source) -> (Option<Map<String, Value>>, Option<Vec<f32>>) {
        let req = self.req;
        match source {
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
            // Filled in afterwards when asked for (`fill_vectors`).
            Source::Block { block, row } => (
                req.include_metadata.then(|| block.row_metadata(row)),
                None,
            ),
            // Never shown: `routed::text::resolve` turns every kept one
            // into a `Source::Block`.
            Source::Pending { .. } => (None, None),
        }
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

/// Each fused list holds this many documents per hit asked for ...
const FUSION_DEPTH_PER_K: usize = 4;
/// ... and at least this many.
const MIN_FUSION_DEPTH: usize = 100;

fn check_k(req: &SearchRequest) -> Result<(), ReadError> {
    if req.k == 0 || req.k > MAX_K {
        return Err(ReadError::Invalid(format!(
            "k must be between 1 and {MAX_K}, got {}",
            req.k
        )));
    }
    Ok(())
}

/// Checks a query and returns the vector ready to score (normalized for
/// cosine).
fn check_query(shared: &Shared, req: &SearchRequest) -> Result<Vec<f32>, ReadError> {
    let shape = shared.shape;
    check_vector(0, "query", &req.vector, shape.dimensions, shape.metric).map_err(|e| {
        let msg = e.to_string();
        ReadError::Invalid(msg.replacen("record 0 (id \"query\"): ", "query ", 1))
    })
}

/// The request's text queries as ranked lists, each checked against the
/// index's full-text searchable keys.
fn text_lists(shared: &Shared, req: &SearchRequest) -> Result<Vec<TextList>, ReadError> {
    if req.text.is_empty() {
        return Ok(Vec::new());
    }
    let fields = shared.text_fields();
    let asked = req.text.iter().map(|t| (t.key.as_deref(), t.text.as_str()));
    crate::text::check_queries(&fields, asked)
        .map(|checked| {
            checked
                .into_iter()
                .map(|(key, analyzer, text)| TextList::new(&key, analyzer, text))
                .collect()
        })
        .map_err(ReadError::Invalid)
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
    top.into_iter()
        .map(|f| {
            let (score, distance) = present(q.metric, f.distance);
            let (metadata, vector) = q.shown(f.source);
            Hit {
                score,
                distance: Some(distance),
                metadata,
                vector,
                partition: f.partition,
                id: f.id,
                scores: None,
            }
        })
        .collect()
}

/// The hits of a query with text: one text list alone ranks by its BM25
/// score; anything more (several keys, or a vector too) is fused by
/// reciprocal rank (`text::fuse`), the vector's list first.
fn present_fused(
    q: &QueryContext<'_>,
    vector: Option<Vec<Found>>,
    docs: Vec<TextDoc>,
    lists: Vec<Vec<Scored>>,
) -> Vec<Hit> {
    let tq = q.text.as_ref().expect("a text query");
    let mut ranked: Vec<Vec<String>> = Vec::new();
    let mut sources: HashMap<String, (Source, u32)> = HashMap::new();
    let mut distances: HashMap<String, f32> = HashMap::new();
    if let Some(found) = vector.as_ref() {
        ranked.push(found.iter().map(|f| f.id.clone()).collect());
    }
    for list in &lists {
        ranked.push(list.iter().map(|s| docs[s.doc].id.clone()).collect());
    }
    let mut bm25: HashMap<String, Vec<KeyScore>> = HashMap::new();
    for (l, list) in lists.iter().enumerate() {
        for s in list {
            bm25.entry(docs[s.doc].id.clone())
                .or_default()
                .push(KeyScore {
                    key: tq.lists[l].key.clone(),
                    score: s.score as f32,
                });
        }
    }
    let alone = vector.is_none() && lists.len() == 1;
    for f in vector.into_iter().flatten() {
        distances.insert(f.id.clone(), present(q.metric, f.distance).1);
        sources.insert(f.id, (f.source, f.partition));
    }
    for d in docs {
        sources.entry(d.id).or_insert((d.source, d.partition));
    }
    crate::text::fuse::rrf(&ranked)
        .into_iter()
        .take(q.req.k)
        .filter_map(
            |crate::text::fuse::Fused {
                 doc: id,
                 score: fused,
                 ..
             }| {
                let (source, partition) = sources.remove(&id)?;
                let (metadata, vector) = q.shown(source);
                let bm25 = bm25.remove(&id).unwrap_or_default();
                let distance = distances.get(&id).copied();
                let score = if alone { bm25[0].score } else { fused as f32 };
                Some(Hit {
                    score,
                    distance,
                    metadata,
                    vector,
                    partition,
                    scores: Some(HitScores {
                        fused: (!alone).then_some(fused as f32),
                        bm25,
                        vector_distance: distance,
                    }),
                    id,
                })
            },
        )
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
            if let Err(e) = u.search(q.unit.as_ref().unwrap(), &io).await {
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
