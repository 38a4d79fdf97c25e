//! Search benchmark: warm exact-search latency and recall@10 on a TEXMEX
//! dataset (default: the shared real dataset), against any bucket.
//!
//! ```sh
//! cargo bench --bench search -- --bucket /tmp/shoal-search --partitions 100
//! cargo bench --bench search -- --bucket s3://search --create-bucket --partitions 100
//! ```
//!
//! Ingests the base file first when the bucket has no config yet (ids are
//! row numbers), warms a reader, then runs every query one at a time.

use std::sync::Arc;

use clap::Parser;
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::{load_or_create, read_config};
use shoal::coord::{Metric, RequestedSettings};
use shoal::reader::{Reader, ReaderOptions, SearchRequest};
use shoal::store::ObjectStore;
use shoal::writer::{Writer, WriterOptions};

const DATA: &str = "../shared/datasets/debian-pkgdesc-minilm384";

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value = DATA)]
    data: String,
    #[arg(long, default_value_t = 100)]
    partitions: u32,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    #[arg(long)]
    create_bucket: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let base = shoal::dataset::read_fvecs(format!("{}/base.fvecs", a.data))?;
    let mut queries = shoal::dataset::read_fvecs(format!("{}/query.fvecs", a.data))?;
    let truth = shoal::dataset::read_ivecs(format!("{}/groundtruth.ivecs", a.data))?;
    let sims = shoal::dataset::read_fvecs(format!("{}/groundtruth_sim.fvecs", a.data))?;
    queries.truncate(a.queries);
    if a.create_bucket {
        if let Some(spec) = a.bucket.strip_prefix("s3://") {
            let bucket = spec.split('/').next().unwrap_or(spec);
            let s3 =
                shoal::store::s3::S3Store::open(bucket, &shoal::store::s3::S3Options::from_env())
                    .await?;
            let _ = s3.create_bucket().await;
        }
    }
    let store = shoal::store::open(&a.bucket).await?;
    let clock: DynClock = Arc::new(SystemClock);
    let fresh = read_config(store.as_ref()).await?.is_none();
    let req = RequestedSettings {
        partition_count: Some(a.partitions),
        dimensions: Some(base[0].len() as u32),
        distance_metric: Some(Metric::Cosine),
        ..Default::default()
    };
    let cfg = load_or_create(store.as_ref(), &req, clock.as_ref()).await?;
    if fresh {
        let w = Writer::new(
            store.clone(),
            &cfg.settings,
            "bench",
            clock,
            WriterOptions::default(),
        );
        let r = shoal::bench::ingest(&store, &w, &base, None, 1000).await?;
        println!("ingest: {}", serde_json::to_string(&r)?);
    }
    let reader = Reader::new(store.clone(), &cfg.settings, ReaderOptions::default());
    let t = std::time::Instant::now();
    let live = reader.warm().await?;
    println!(
        "warm: {live} live records in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let template = SearchRequest::new(vec![], 10);
    let warm =
        shoal::bench::run_queries(|| reader.clone(), &queries, &truth, Some(&sims), &template)
            .await?;
    println!("store      {}", store.describe());
    println!("partitions {}", cfg.settings.partition_count);
    println!("threads    {}", rayon::current_num_threads());
    println!(
        "warm exact search, {} queries, one at a time:",
        warm.queries
    );
    println!(
        "  p50 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  mean {:.3} ms  qps {:.0}",
        warm.p50_ms, warm.p95_ms, warm.p99_ms, warm.mean_ms, warm.qps
    );
    println!(
        "  recall@10 {:.4}  (tie-aware {:.4})",
        warm.recall_at_10,
        warm.recall_at_10_tie_aware.unwrap_or(0.0)
    );
    println!("  requests/query {:.2}", warm.requests_per_query);
    Ok(())
}
