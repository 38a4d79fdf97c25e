//! Benchmark phases shared by `benches/` and the CLI: ingest a TEXMEX
//! base file through a [`Db`]'s batch writer, then run queries and
//! measure latency and recall against exact ground truth. Everything goes
//! through the handle: cold queries run on [`Db::reading_copy`]s.
//!
//! Record ids are the base file's row numbers (`"0"`, `"1"`, ...), so
//! results compare directly with `.ivecs` ground truth.

mod cost;
mod suite;

pub use cost::{run_cost, CostOptions, CostReport, QueryCost, Requests};
pub use suite::{machine, run_suite, FilteredOptions, SuiteOptions, SuiteResults};

use std::time::Instant;

use serde::Serialize;

use crate::db::Db;
use crate::error::Error;
use crate::reader::SearchRequest;
use crate::record::Record;

#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestResult {
    pub records: usize,
    pub seconds: f64,
    pub records_per_s: f64,
    /// Raw f32 vector bytes per second.
    pub mb_per_s: f64,
    /// Segment bytes written.
    pub stored_mb: f64,
    pub puts: u64,
    pub segments: u64,
    pub conflicts: u64,
    /// Bytes PUT to manifests (all PUT bytes but the segments'), and per
    /// commit.
    pub manifest_put_bytes: u64,
    pub manifest_put_bytes_per_commit: f64,
    /// Size of every partition manifest after the ingest, in all.
    pub manifest_bytes: u64,
}

/// Ingests `vectors` (ids = row numbers, optional per-row metadata)
/// through a batch writer of `db`'s and measures it.
pub async fn ingest(
    db: &Db,
    vectors: &[Vec<f32>],
    metadata: Option<&[serde_json::Value]>,
    batch_size: usize,
) -> Result<IngestResult, Error> {
    let bw = db.bulk_writer(batch_size, None);
    let before = db.store_counts();
    let stats_before = db.writer_stats();
    let start = Instant::now();
    for (chunk_no, chunk) in vectors.chunks(10_000).enumerate() {
        let base = chunk_no * 10_000;
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut r = Record::new((base + i).to_string(), v.clone());
                if let Some(m) = metadata {
                    r.metadata = Some(m[base + i].clone());
                }
                r
            })
            .collect();
        bw.add(&records).await?;
    }
    bw.close().await?;
    let seconds = start.elapsed().as_secs_f64();
    let reqs = db.store_counts().since(&before);
    let stats = db.writer_stats();
    let dims = vectors.first().map_or(0, Vec::len);
    let segments = stats.segments - stats_before.segments;
    let manifest_put_bytes = reqs.bytes_written - (stats.bytes - stats_before.bytes);
    let manifest_bytes = db.manifest_bytes().await?;
    Ok(IngestResult {
        records: vectors.len(),
        seconds,
        records_per_s: vectors.len() as f64 / seconds,
        mb_per_s: (vectors.len() * dims * 4) as f64 / 1e6 / seconds,
        stored_mb: (stats.bytes - stats_before.bytes) as f64 / 1e6,
        puts: reqs.put,
        segments,
        conflicts: stats.conflicts - stats_before.conflicts,
        manifest_put_bytes,
        manifest_put_bytes_per_commit: manifest_put_bytes as f64 / segments.max(1) as f64,
        manifest_bytes,
    })
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QueryResult {
    pub queries: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub qps: f64,
    pub recall_at_10: f64,
    /// Counts a returned id as correct when its true similarity ties the
    /// 10th neighbour's (within 1e-6); see the dataset's README.
    pub recall_at_10_tie_aware: Option<f64>,
    pub requests_per_query: f64,
    pub bytes_per_query: f64,
    /// Mean time per query in the I/O phase and the CPU phase.
    pub fetch_ms: f64,
    pub compute_ms: f64,
    /// Vectors whose distance a query computed, on average.
    pub vectors_compared_per_query: f64,
    /// Rows a query estimated from quantized codes, on average.
    pub codes_scanned_per_query: f64,
    /// Shard rows a query reranked with full precision, on average.
    pub rows_reranked_per_query: f64,
    /// Shard rows fetched for the rerank per query, on average.
    pub rerank_candidates_per_query: f64,
    /// Most sequential rounds of store requests any query waited for.
    pub rounds_max: u64,
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// recall@k of `got` against the first k of `truth`. Truth rows padded
/// with -1 (a filter that fewer than k rows match) count only their
/// real entries: recall over `min(k, matches)`.
pub fn recall(got: &[String], truth: &[i32], k: usize) -> f64 {
    let want: std::collections::HashSet<String> = truth
        .iter()
        .take(k)
        .filter(|&&i| i >= 0)
        .map(|i| i.to_string())
        .collect();
    if want.is_empty() {
        return 1.0;
    }
    got.iter().take(k).filter(|id| want.contains(*id)).count() as f64 / want.len() as f64
}

/// The ids of the `k` records nearest to `q` by brute force (ties broken
/// by id): exact ground truth for a recall figure.
pub fn exact_top_k(
    records: &[Record],
    q: &[f32],
    k: usize,
    metric: crate::vocab::Metric,
) -> Vec<String> {
    let mut scored: Vec<(f32, &str)> = records
        .iter()
        .map(|r| (crate::index::distance(metric, q, &r.vector), r.id.as_str()))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(k)
        .map(|(_, id)| id.to_string())
        .collect()
}

/// Runs every query one at a time through `make_reader()` (a fresh
/// [`Db::reading_copy`] per query measures cold queries; the same handle
/// measures warm ones);
/// `filters[i]`, when given, is query `i`'s metadata filter.
pub async fn run_queries<F>(
    mut make_reader: F,
    queries: &[Vec<f32>],
    truth: &[Vec<i32>],
    truth_sim: Option<&[Vec<f32>]>,
    filters: Option<&[serde_json::Value]>,
    template: &SearchRequest,
) -> Result<QueryResult, Error>
where
    F: FnMut() -> Db,
{
    let k = 10;
    let mut lat = Vec::with_capacity(queries.len());
    let (mut rec, mut rec_tie, mut reqs, mut bytes) = (0.0, 0.0, 0u64, 0u64);
    let (mut fetch, mut compute, mut compared, mut codes) = (0.0, 0.0, 0.0, 0.0);
    let (mut reranked, mut candidates) = (0.0, 0.0);
    let mut rounds = 0;
    let start = Instant::now();
    for (i, q) in queries.iter().enumerate() {
        let reader = make_reader();
        let req = SearchRequest {
            vector: q.clone(),
            k: template.k.max(k),
            filter: filters
                .map(|f| f[i].clone())
                .or_else(|| template.filter.clone()),
            ..template.clone()
        };
        let t = Instant::now();
        let resp = reader.search(&req).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        let ids: Vec<String> = resp.results.iter().map(|h| h.id.clone()).collect();
        rec += recall(&ids, &truth[i], k);
        if let Some(sims) = truth_sim {
            let tenth = sims[i][k - 1] - 1e-6;
            let ok = resp.results.iter().take(k).filter(|h| {
                truth[i].iter().take(k).any(|t| t.to_string() == h.id) || h.score >= tenth
            });
            rec_tie += ok.count() as f64 / k as f64;
        }
        reqs += resp.stats.requests.total();
        fetch += resp.stats.fetch_ms;
        compute += resp.stats.compute_ms;
        compared += resp.stats.vectors_compared as f64;
        codes += resp.stats.codes_scanned as f64;
        reranked += resp.stats.rows_reranked as f64;
        candidates += resp.stats.rerank_candidates as f64;
        rounds = rounds.max(resp.stats.rounds);
        bytes += resp.stats.requests.bytes_read;
    }
    let wall = start.elapsed().as_secs_f64();
    let n = queries.len().max(1) as f64;
    let mean = lat.iter().sum::<f64>() / n;
    lat.sort_by(f64::total_cmp);
    Ok(QueryResult {
        queries: queries.len(),
        p50_ms: percentile(&lat, 50.0),
        p95_ms: percentile(&lat, 95.0),
        p99_ms: percentile(&lat, 99.0),
        mean_ms: mean,
        qps: n / wall,
        recall_at_10: rec / n,
        recall_at_10_tie_aware: truth_sim.map(|_| rec_tie / n),
        requests_per_query: reqs as f64 / n,
        bytes_per_query: bytes as f64 / n,
        fetch_ms: fetch / n,
        compute_ms: compute / n,
        vectors_compared_per_query: compared / n,
        codes_scanned_per_query: codes / n,
        rows_reranked_per_query: reranked / n,
        rerank_candidates_per_query: candidates / n,
        rounds_max: rounds,
    })
}

/// Runs `queries` from `clients` concurrent tasks against one handle and
/// returns queries per second.
pub async fn concurrent_qps(
    reader: &Db,
    queries: &[Vec<f32>],
    template: &SearchRequest,
    clients: usize,
) -> Result<f64, Error> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let queries = std::sync::Arc::new(queries.to_vec());
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (r, q, n, t) = (
                reader.clone(),
                queries.clone(),
                next.clone(),
                template.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= q.len() {
                        return Ok::<(), Error>(());
                    }
                    let req = SearchRequest {
                        vector: q[i].clone(),
                        ..t.clone()
                    };
                    r.search(&req).await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("bench task")?;
    }
    Ok(queries.len() as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_recall() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        let got: Vec<String> = ["3", "1", "9"].iter().map(|s| s.to_string()).collect();
        assert!((recall(&got, &[1, 2, 3], 3) - 2.0 / 3.0).abs() < 1e-9);
        // Padded truth (a filter fewer than k rows match): recall over
        // the real entries.
        assert!((recall(&got, &[1, 3, -1], 3) - 1.0).abs() < 1e-9);
        assert!((recall(&got, &[2, -1, -1], 3) - 0.0).abs() < 1e-9);
    }
}
