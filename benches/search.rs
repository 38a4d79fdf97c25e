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
use shoal::coord::{Metric, RequestedSettings, Role};
use shoal::reader::{ReaderOptions, SearchRequest};
use shoal::store::ObjectStore;
use shoal::{Db, OpenOptions};

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
    /// Compact with this index kind before querying: none, ivf or hnsw.
    #[arg(long, default_value = "none")]
    index: String,
    /// Smallest segment that gets an index (a partition here holds ~625 records).
    #[arg(long, default_value_t = 500)]
    min_records: u64,
    /// IVF probes to measure, comma-separated.
    #[arg(long, default_value = "1,2,4,8")]
    nprobe: String,
    /// HNSW efSearch and efConstruction (fixed at build time).
    #[arg(long, default_value_t = 64)]
    ef: u32,
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
        let opts = OpenOptions {
            cluster: shoal::api::JoinOptions {
                settings: req.clone(),
                role: Some(Role::Writer),
                background_heartbeat: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let db = Db::open_store(store.clone(), opts).await?;
        let r = shoal::bench::ingest(&db, &base, None, 1000).await?;
        db.close().await?;
        println!("ingest: {}", serde_json::to_string(&r)?);
    }
    let mut cfg = cfg;
    if a.index != "none" {
        let ix = shoal::coord::config::IndexSettings {
            kind: a.index.parse().expect("--index: ivf, hnsw or none"),
            min_records: a.min_records,
            ef_search: a.ef,
            ef_construction: a.ef.max(40),
            ..Default::default()
        };
        cfg = shoal::coord::config::update_config(store.as_ref(), clock.as_ref(), |c| {
            c.settings.index = Some(ix.clone());
            Ok(())
        })
        .await?;
        let t = std::time::Instant::now();
        let opts = shoal::compact::CompactOptions {
            force: true,
            upto_seq: None,
        };
        let outs =
            shoal::compact::compact_all(store.as_ref(), &cfg.settings, "bench", &clock, &opts)
                .await?;
        let secs = t.elapsed().as_secs_f64();
        let (mut recs, mut ix_secs) = (0u64, 0.0);
        for o in &outs {
            if let shoal::compact::Outcome::Compacted(r) = o {
                recs += r.records_out;
                ix_secs += r.index_seconds;
            }
        }
        println!(
            "compact ({}): {recs} records in {secs:.2} s wall, index build {ix_secs:.2} s total = {:.3} s per 10,000 records",
            a.index,
            ix_secs / recs as f64 * 10_000.0
        );
    }
    let observer = Db::open_store(store.clone(), OpenOptions::observer()).await?;
    let reader = observer.reading_copy(ReaderOptions::default(), None);
    let t = std::time::Instant::now();
    let live = reader.warm().await?;
    println!(
        "warm: {live} live records in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    println!("store      {}", store.describe());
    println!("partitions {}", cfg.settings.partition_count);
    println!("threads    {}", rayon::current_num_threads());
    println!(
        "warm queries, {} one at a time (eventual consistency: no revalidation):",
        queries.len()
    );
    let mut runs: Vec<(String, SearchRequest)> = vec![(
        "exact".into(),
        SearchRequest {
            exact: true,
            ..SearchRequest::new(vec![], 10)
        },
    )];
    match a.index.as_str() {
        "ivf" => {
            for n in a
                .nprobe
                .split(',')
                .filter_map(|n| n.trim().parse::<usize>().ok())
            {
                runs.push((
                    format!("ivf nprobe={n}"),
                    SearchRequest {
                        nprobe: Some(n),
                        ..SearchRequest::new(vec![], 10)
                    },
                ));
            }
        }
        "hnsw" => runs.push((format!("hnsw ef={}", a.ef), SearchRequest::new(vec![], 10))),
        _ => {}
    }
    println!(
        "  {:<16} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9}",
        "mode", "p50 ms", "p95 ms", "p99 ms", "qps", "recall@10", "tie-aware", "fetch ms", "cpu ms"
    );
    for (label, mut template) in runs {
        template.consistency = shoal::reader::Consistency::Eventual;
        let r = shoal::bench::run_queries(
            || reader.clone(),
            &queries,
            &truth,
            Some(&sims),
            None,
            &template,
        )
        .await?;
        println!(
            "  {label:<16} {:>9.3} {:>9.3} {:>9.3} {:>7.0} {:>10.4} {:>10.4} {:>9.3} {:>9.3}",
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.qps,
            r.recall_at_10,
            r.recall_at_10_tie_aware.unwrap_or(0.0),
            r.fetch_ms,
            r.compute_ms
        );
    }
    Ok(())
}
