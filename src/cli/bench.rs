//! `shoal bench`: ingest, compact, warm and cold queries against any
//! bucket, printed as a table and written as JSON (`--out`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::{read_config, update_config, IndexSettings};
use shoal::coord::{Metric, RequestedSettings};
use shoal::reader::{Consistency, Reader, ReaderOptions, SearchRequest};
use shoal::store::ObjectStore;
use shoal::writer::WriterOptions;

use super::Ctx;

#[derive(Args)]
pub struct BenchArgs {
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
    #[arg(long, default_value_t = 100)]
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
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let mem = shoal::reader::memory_budget_bytes() * 2 / (1 << 30);
    format!(
        "{cpu}, {} cores, ~{mem} GiB",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

pub async fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    let base = shoal::dataset::read_fvecs(&a.base)?;
    let queries = shoal::dataset::read_fvecs(&a.queries)?;
    let truth = shoal::dataset::read_ivecs(&a.truth)?;
    if base.is_empty() || queries.is_empty() {
        bail!("the base and query files must hold vectors");
    }
    if truth.len() < queries.len() {
        bail!(
            "{} has {} rows for {} queries",
            a.truth.display(),
            truth.len(),
            queries.len()
        );
    }
    if !["ivf", "hnsw", "none"].contains(&a.index.as_str()) {
        bail!("--index must be ivf, hnsw or none, not {:?}", a.index);
    }
    let store = ctx.store().await?;
    if read_config(store.as_ref()).await?.is_some() {
        bail!(
            "{} already holds an index; bench needs an empty bucket or prefix",
            store.describe()
        );
    }
    let dims = base[0].len() as u32;
    let metric: Metric = a.metric.into();
    let requested = RequestedSettings {
        partition_count: Some(a.partitions),
        dimensions: Some(dims),
        distance_metric: Some(metric),
        ..Default::default()
    };
    let cluster = ctx.join_writer(store.clone(), requested).await?;
    let clock: DynClock = Arc::new(SystemClock);
    let ix = IndexSettings {
        kind: a.index.clone(),
        min_records: a.index_min_records,
        nprobe: a.nprobe as u32,
        ..Default::default()
    };
    let config = update_config(store.as_ref(), clock.as_ref(), |c| {
        c.settings.index = Some(ix.clone());
        Ok(())
    })
    .await?;
    let writer = shoal::writer::Writer::new(
        store.clone(),
        &config.settings,
        cluster.instance_id(),
        clock.clone(),
        WriterOptions::default(),
    );

    eprintln!(
        "ingest: {} x {dims}-d into {}",
        base.len(),
        store.describe()
    );
    let ingest = shoal::bench::ingest(&store, &writer, &base, None, 1000).await?;
    eprintln!("compact: {} index", a.index);
    let t = Instant::now();
    let opts = shoal::compact::CompactOptions {
        force: true,
        upto_seq: None,
    };
    shoal::compact::compact_all(
        store.as_ref(),
        &config.settings,
        cluster.instance_id(),
        &clock,
        &opts,
    )
    .await?;
    let compact_s = t.elapsed().as_secs_f64();
    cluster.leave().await?;

    let warm_n = a.warm_queries.unwrap_or(queries.len()).min(queries.len());
    let reader = Reader::new(
        store.clone(),
        &config.settings,
        ReaderOptions::for_role(shoal::coord::Role::Reader),
    );
    reader.warm().await?;
    let template = SearchRequest {
        consistency: Consistency::Bounded,
        nprobe: Some(a.nprobe),
        ..SearchRequest::new(vec![], 10)
    };
    eprintln!(
        "warm: {warm_n} queries one at a time, then {} clients",
        a.clients
    );
    let warm = shoal::bench::run_queries(
        || reader.clone(),
        &queries[..warm_n],
        &truth,
        None,
        &template,
    )
    .await?;
    let qps_n =
        shoal::bench::concurrent_qps(&reader, &queries[..warm_n], &template, a.clients).await?;
    let cold_n = a.cold_queries.min(queries.len());
    eprintln!("cold: {cold_n} queries, each on a fresh reader");
    let settings = config.settings.clone();
    let cold = shoal::bench::run_queries(
        || {
            Reader::new(
                store.clone(),
                &settings,
                ReaderOptions::for_role(shoal::coord::Role::Reader),
            )
        },
        &queries[..cold_n],
        &truth,
        None,
        &template,
    )
    .await?;
    let results = json!({
        "ingest": {
            "records": ingest.records, "seconds": ingest.seconds, "records_per_s": ingest.records_per_s,
            "mb_per_s": ingest.mb_per_s, "puts": ingest.puts, "segments": ingest.segments,
        },
        "compact": {"seconds": compact_s},
        "warm": {
            "queries": warm.queries, "p50_ms": warm.p50_ms, "p95_ms": warm.p95_ms, "p99_ms": warm.p99_ms,
            "qps": warm.qps, "qps_concurrent": qps_n, "clients": a.clients, "recall_at_10": warm.recall_at_10,
        },
        "cold": {
            "queries": cold.queries, "p50_ms": cold.p50_ms, "p99_ms": cold.p99_ms,
            "s3_requests_per_query": cold.requests_per_query, "bytes_per_query": cold.bytes_per_query,
            "recall_at_10": cold.recall_at_10,
        },
        "settings": {
            "store": store.describe(), "partitions": a.partitions, "metric": metric.as_str(), "dimensions": dims,
            "records": base.len(), "index": {"kind": a.index, "min_records": a.index_min_records, "nprobe": a.nprobe},
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()), "machine": machine(),
        },
    });
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if ctx.json {
        return ctx.print_json(&results);
    }
    println!(
        "shoal bench: {} x {dims}-d {metric}, {} partitions, index {} (nprobe {}), {}",
        base.len(),
        a.partitions,
        a.index,
        a.nprobe,
        store.describe()
    );
    println!("machine: {}", machine());
    println!("| phase | metric | value |");
    println!("|---|---|---|");
    let rows: Vec<(&str, String, String)> = vec![
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
        ("compact", "seconds".into(), format!("{compact_s:.2}")),
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
            "cold",
            "p50 / p99 ms".into(),
            format!("{:.1} / {:.1}", cold.p50_ms, cold.p99_ms),
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
    ];
    for (phase, m, v) in rows {
        println!("| {phase} | {m} | {v} |");
    }
    Ok(())
}
