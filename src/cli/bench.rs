//! `shoal bench`: ingest, compact, warm and cold queries against any
//! bucket, printed as a table and written as JSON (`--out`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use shoal::api::{
    run_cost, run_suite, CostOptions, CostReport, FilteredOptions, Metric, SuiteOptions,
    SuiteResults,
};

use super::Ctx;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Base vectors (TEXMEX .fvecs); ids are row numbers.
    #[arg(long)]
    pub base: PathBuf,
    /// Query vectors (.fvecs).
    #[arg(long)]
    pub queries: PathBuf,
    /// Exact neighbours of each query (.ivecs), for recall.
    #[arg(long)]
    pub truth: PathBuf,
    /// Partitions (for a new index).
    #[arg(long, default_value_t = shoal::api::DEFAULT_PARTITION_COUNT)]
    pub partitions: u32,
    /// Metric (for a new index).
    #[arg(long, value_enum, default_value = "cosine")]
    pub metric: super::MetricArg,
    /// Index built by the compact phase: ivf, hnsw or none.
    #[arg(long, default_value = "ivf")]
    pub index: String,
    /// Smallest segment that gets an index.
    #[arg(long, default_value_t = 500)]
    pub index_min_records: u64,
    /// IVF probes per segment for the query phases.
    #[arg(long, default_value_t = 8)]
    pub nprobe: usize,
    /// How many queries to run warm (default: all).
    #[arg(long)]
    pub warm_queries: Option<usize>,
    /// How many queries to run cold (each on a fresh reader with an empty cache).
    #[arg(long, default_value_t = 20)]
    pub cold_queries: usize,
    /// Concurrent clients for the throughput measurement.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Skip building index shards (measure per-partition indexes only).
    #[arg(long)]
    pub no_index_shards: bool,
    /// Add this latency (ms) before every store request of the query
    /// phases, as S3's first byte costs (use 20 for honest cold numbers
    /// on a local directory or loopback server).
    #[arg(long, default_value_t = 0)]
    pub store_latency_ms: u64,
    /// Query the index already in the bucket (from an earlier bench run):
    /// no ingest, compaction or indexing.
    #[arg(long)]
    pub skip_ingest: bool,
    /// The reader's cache budget, e.g. 256MiB, 1GiB or a number of bytes
    /// (default: SHOAL_CACHE_BYTES, the container's memory limit, ...).
    #[arg(long, value_parser = shoal::api::parse_bytes)]
    pub cache_bytes: Option<u64>,
    /// Base metadata for filtered queries: JSONL, one object per base row
    /// (the shared dataset's docs.jsonl, decompressed).
    #[arg(long, requires = "filtered_truth")]
    pub metadata: Option<PathBuf>,
    /// Per query (JSONL, in query order) the value its filter asks for.
    #[arg(long, requires = "filtered_truth")]
    pub query_metadata: Option<PathBuf>,
    /// Exact neighbours among the rows matching each query's filter
    /// (.ivecs, -1 padded): measures warm filtered queries.
    #[arg(long, requires = "query_metadata")]
    pub filtered_truth: Option<PathBuf>,
    /// The metadata field filtered queries match on.
    #[arg(long, default_value = "domain")]
    pub filter_field: String,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Instead of the suite: what the requests cost. Writes the base
    /// vectors in 500-record batches, compacts and indexes, then queries
    /// at 10/s under each consistency level, and prices the requests at
    /// S3 Standard list prices next to Amazon S3 Vectors' charges.
    #[arg(long)]
    pub cost: bool,
    /// With --cost: seconds of queries per consistency level.
    #[arg(long, default_value_t = 20)]
    pub cost_seconds: u64,
    /// With --cost: partitions of the new index (default: the default).
    #[arg(long)]
    pub cost_partitions: Option<u32>,
}

pub(super) async fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    if a.cost {
        return run_cost_report(ctx, &a).await;
    }
    let opts = suite_options(&a);
    eprintln!(
        "bench: ingest, compact ({} index), warm and cold queries",
        a.index
    );
    let r = run_suite(&ctx.bucket, &opts).await?;
    let results = results_json(&a, &r)?;
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if ctx.json {
        return ctx.print_json(&results);
    }
    print_table(&a, &r);
    Ok(())
}

/// The library suite's options, as the command line asked for them.
fn suite_options(a: &BenchArgs) -> SuiteOptions {
    SuiteOptions {
        base: a.base.clone(),
        queries: a.queries.clone(),
        truth: a.truth.clone(),
        partitions: a.partitions,
        metric: a.metric.into(),
        index: a.index.clone(),
        index_min_records: a.index_min_records,
        nprobe: a.nprobe,
        warm_queries: a.warm_queries,
        cold_queries: a.cold_queries,
        clients: a.clients,
        shards: !a.no_index_shards,
        store_latency_ms: a.store_latency_ms,
        skip_ingest: a.skip_ingest,
        cache_bytes: a.cache_bytes,
        filtered: a.filtered_truth.clone().map(|truth| FilteredOptions {
            metadata: a.metadata.clone(),
            query_metadata: a.query_metadata.clone().expect("clap requires it"),
            truth,
            field: a.filter_field.clone(),
        }),
    }
}

/// The results as one JSON document (what `--out` writes and `--json` prints).
fn results_json(a: &BenchArgs, r: &SuiteResults) -> Result<serde_json::Value> {
    let metric: Metric = a.metric.into();
    let (ingest, warm, cold) = (&r.ingest, &r.warm, &r.cold);
    let (compact_s, qps_n, dims) = (r.compact_seconds, r.warm_qps_concurrent, r.dimensions);
    // The indexing phase's keys (when it ran) and the index's bytes.
    let mut index = serde_json::to_value(&r.index)?;
    match index.as_object_mut() {
        Some(o) => {
            o.insert("bytes".into(), r.index_bytes.into());
        }
        None => index = json!({ "bytes": r.index_bytes }),
    }
    Ok(json!({
        "ingest": {
            "records": ingest.records, "seconds": ingest.seconds, "records_per_s": ingest.records_per_s,
            "mb_per_s": ingest.mb_per_s, "puts": ingest.puts, "segments": ingest.segments,
            "manifest_put_bytes": ingest.manifest_put_bytes,
            "manifest_put_bytes_per_commit": ingest.manifest_put_bytes_per_commit,
            "manifest_bytes": ingest.manifest_bytes,
        },
        "compact": {"seconds": compact_s},
        "index": index,
        "memory": {"reader_peak_rss_bytes": r.reader_peak_rss_bytes},
        "warm": {
            "queries": warm.queries, "p50_ms": warm.p50_ms, "p95_ms": warm.p95_ms, "p99_ms": warm.p99_ms,
            "qps": warm.qps, "qps_concurrent": qps_n, "clients": a.clients, "recall_at_10": warm.recall_at_10,
            "vectors_compared_per_query": warm.vectors_compared_per_query,
            "codes_scanned_per_query": warm.codes_scanned_per_query,
            "rows_reranked_per_query": warm.rows_reranked_per_query,
            "rerank_candidates_per_query": warm.rerank_candidates_per_query,
            "vectors_scored_per_query": warm.vectors_compared_per_query + warm.codes_scanned_per_query,
            "fetch_ms": warm.fetch_ms, "compute_ms": warm.compute_ms,
        },
        "warm_filtered": r.warm_filtered.as_ref().map(|f| json!({
            "queries": f.queries, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
            "recall_at_10": f.recall_at_10, "field": a.filter_field,
            "vectors_compared_per_query": f.vectors_compared_per_query,
            "codes_scanned_per_query": f.codes_scanned_per_query,
            "rows_reranked_per_query": f.rows_reranked_per_query,
            "rerank_candidates_per_query": f.rerank_candidates_per_query,
        })),
        "cold": {
            "queries": cold.queries, "p50_ms": cold.p50_ms, "p99_ms": cold.p99_ms,
            "s3_requests_per_query": cold.requests_per_query, "bytes_per_query": cold.bytes_per_query,
            "rounds": cold.rounds_max, "recall_at_10": cold.recall_at_10,
        },
        "settings": {
            "store": r.store, "partitions": a.partitions, "metric": metric.as_str(), "dimensions": dims,
            "records": r.records, "index": {"kind": a.index, "min_records": a.index_min_records, "nprobe": a.nprobe},
            "threads": r.threads, "machine": r.machine, "store_latency_ms": a.store_latency_ms,
        },
    }))
}

/// The human-readable report: a heading and a markdown table of the results.
fn print_table(a: &BenchArgs, r: &SuiteResults) {
    let metric: Metric = a.metric.into();
    println!(
        "shoal bench: {} x {}-d {metric}, {} partitions, index {} (nprobe {}), {}",
        r.records, r.dimensions, a.partitions, a.index, a.nprobe, r.store
    );
    println!("machine: {}", r.machine);
    println!("| phase | metric | value |");
    println!("|---|---|---|");
    for (phase, m, v) in build_rows(r).into_iter().chain(query_rows(a, r)) {
        println!("| {phase} | {m} | {v} |");
    }
}

/// One table row: phase, what is measured, the value as printed.
type Row = (&'static str, String, String);

/// The rows of the phases that build the index: ingest, compaction, indexing.
fn build_rows(r: &SuiteResults) -> Vec<Row> {
    let (ingest, compact_s) = (&r.ingest, r.compact_seconds);
    vec![
        (
            "ingest",
            "records/s".into(),
            format!("{:.0}", ingest.records_per_s),
        ),
        (
            "ingest",
            "MB/s (raw vectors)".into(),
            format!("{:.1}", ingest.mb_per_s),
        ),
        ("ingest", "PUTs".into(), ingest.puts.to_string()),
        (
            "ingest",
            "manifest PUT bytes per commit".into(),
            format!("{:.0}", ingest.manifest_put_bytes_per_commit),
        ),
        (
            "ingest",
            "manifest bytes after (all partitions)".into(),
            ingest.manifest_bytes.to_string(),
        ),
        ("compact", "seconds".into(), format!("{compact_s:.2}")),
        (
            "index",
            "MB a query may read (shards + tails)".into(),
            format!("{:.1}", r.index_bytes as f64 / 1e6),
        ),
        (
            "reader",
            "index MB held (shard heads, routings, deletion vectors)".into(),
            format!("{:.2}", r.reader_index_bytes as f64 / 1e6),
        ),
        (
            "reader",
            "warm-up: code lists / metadata and row parts cached".into(),
            format!("{} / {}", r.warm_code_lists, r.warm_row_parts),
        ),
        (
            "reader",
            "peak resident MB (--skip-ingest runs only)".into(),
            r.reader_peak_rss_bytes
                .map_or("not measured".into(), |b| format!("{:.0}", b as f64 / 1e6)),
        ),
        (
            "index shards",
            "seconds / records/s / shards".into(),
            r.index.as_ref().map_or("skipped".into(), |i| {
                format!("{:.2} / {:.0} / {}", i.seconds, i.records_per_s, i.shards)
            }),
        ),
        (
            "index shards",
            "indexer peak resident MB (above the bench's own)".into(),
            r.index.as_ref().map_or("skipped".into(), |i| {
                i.indexer_peak_rss_bytes
                    .map_or("not measured".into(), |b| format!("{:.0}", b as f64 / 1e6))
            }),
        ),
    ]
}

/// The rows of the query phases: warm, warm filtered and cold.
fn query_rows(a: &BenchArgs, r: &SuiteResults) -> Vec<Row> {
    let (warm, cold, qps_n) = (&r.warm, &r.cold, r.warm_qps_concurrent);
    vec![
        (
            "warm",
            "codes estimated / rerank candidates / rows reranked / vectors compared per query"
                .into(),
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0}",
                warm.codes_scanned_per_query,
                warm.rerank_candidates_per_query,
                warm.rows_reranked_per_query,
                warm.vectors_compared_per_query
            ),
        ),
        (
            "warm",
            "p50 / p95 / p99 ms".into(),
            format!(
                "{:.3} / {:.3} / {:.3}",
                warm.p50_ms, warm.p95_ms, warm.p99_ms
            ),
        ),
        ("warm", "QPS, 1 client".into(), format!("{:.0}", warm.qps)),
        (
            "warm",
            format!("QPS, {} clients", a.clients),
            format!("{qps_n:.0}"),
        ),
        (
            "warm",
            "recall@10".into(),
            format!("{:.4}", warm.recall_at_10),
        ),
        (
            "warm, filtered",
            "p50 ms / recall@10".into(),
            r.warm_filtered.as_ref().map_or("not measured".into(), |f| {
                format!("{:.3} / {:.4}", f.p50_ms, f.recall_at_10)
            }),
        ),
        (
            "cold",
            "p50 / p99 ms".into(),
            format!("{:.1} / {:.1}", cold.p50_ms, cold.p99_ms),
        ),
        (
            "cold",
            "sequential request rounds (max)".into(),
            cold.rounds_max.to_string(),
        ),
        (
            "cold",
            "store requests per query".into(),
            format!("{:.1}", cold.requests_per_query),
        ),
        (
            "cold",
            "MB fetched per query".into(),
            format!("{:.1}", cold.bytes_per_query / 1e6),
        ),
        (
            "cold",
            "recall@10".into(),
            format!("{:.4}", cold.recall_at_10),
        ),
    ]
}

/// `--cost`: runs the cost measurement and prints it.
async fn run_cost_report(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    let opts = CostOptions {
        base: a.base.clone(),
        queries: a.queries.clone(),
        partitions: a.cost_partitions,
        metric: a.metric.into(),
        batch: 500,
        qps: 10.0,
        seconds: a.cost_seconds,
    };
    eprintln!(
        "bench --cost: write in 500-record batches, compact, index, then {} s of queries at 10/s \
         per consistency level",
        a.cost_seconds
    );
    let r = run_cost(&ctx.bucket, &opts).await?;
    let results = serde_json::to_value(&r)?;
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if ctx.json {
        return ctx.print_json(&results);
    }
    print_cost(&r);
    Ok(())
}

fn print_cost(r: &CostReport) {
    println!(
        "{} records x {}-d, {} partitions, batches of {}, store {}",
        r.records, r.dimensions, r.partitions, r.batch, r.store
    );
    println!();
    println!(
        "| work | GET | PUT | LIST | HEAD | DELETE | shoal at S3 list prices | Amazon S3 Vectors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |name: &str, q: &shoal::api::Requests, usd: String, s3v: String| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {usd} | {s3v} |",
            q.get, q.put, q.list, q.head, q.delete
        );
    };
    row(
        "write 1M vectors: write calls",
        &r.write_per_million,
        format!("${:.3}", r.write_per_million.usd()),
        String::new(),
    );
    row(
        "write 1M vectors: compaction and indexing",
        &r.compact_index_per_million,
        format!("${:.3}", r.compact_index_per_million.usd()),
        String::new(),
    );
    println!(
        "| write 1M vectors: total | | | | | | ${:.3} | ${:.3} |",
        r.write_usd_per_million, r.s3v_write_usd_per_million
    );
    for q in &r.queries {
        row(
            &format!(
                "1M queries, {} ({} measured at {}/s)",
                q.consistency, q.queries, r.qps
            ),
            &q.per_million,
            format!("${:.2}", q.usd_per_million),
            format!("${:.2}", r.s3v_query_usd_per_million),
        );
    }
}
