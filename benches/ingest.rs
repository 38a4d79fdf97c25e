//! Ingest benchmark: the BatchWriter's throughput into any bucket.
//!
//! ```sh
//! cargo bench --bench ingest -- --bucket /tmp/shoal-bench --records 100000
//! cargo bench --bench ingest -- --bucket s3://bench --create-bucket --records 100000
//! ```
//!
//! Vectors come from `--base` (TEXMEX .fvecs; default: the shared real
//! dataset), cycled when more records are asked for than the file holds;
//! ids are row numbers `0..records`, so every record is distinct.

use clap::Parser;
use shoal::coord::{Metric, RequestedSettings, Role};
use shoal::store::ObjectStore;
use shoal::{Db, OpenOptions};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    #[arg(
        long,
        default_value = "../shared/datasets/debian-pkgdesc-minilm384/base.fvecs"
    )]
    base: String,
    #[arg(long, default_value_t = 100)]
    partitions: u32,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Create the S3 bucket first (for a fresh moto/MinIO server).
    #[arg(long)]
    create_bucket: bool,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = shoal::dataset::read_fvecs(&args.base)?;
    anyhow::ensure!(!base.is_empty(), "{} holds no vectors", args.base);
    let dims = base[0].len();
    if args.create_bucket {
        if let Some(spec) = args.bucket.strip_prefix("s3://") {
            let bucket = spec.split('/').next().unwrap_or(spec);
            let s3 =
                shoal::store::s3::S3Store::open(bucket, &shoal::store::s3::S3Options::from_env())
                    .await?;
            if let Err(e) = s3.create_bucket().await {
                eprintln!("create bucket: {e} (continuing)");
            }
        }
    }
    let store = shoal::store::open(&args.bucket).await?;
    let requested = RequestedSettings {
        partition_count: Some(args.partitions),
        dimensions: Some(dims as u32),
        distance_metric: Some(Metric::Cosine),
        ..Default::default()
    };
    // A writer with no background work: only the ingest's requests are
    // made while it runs.
    let db = Db::open_store(
        store.clone(),
        OpenOptions {
            cluster: shoal::api::JoinOptions {
                settings: requested,
                role: Some(Role::Writer),
                background_heartbeat: false,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let vectors: Vec<Vec<f32>> = (0..args.records)
        .map(|i| base[i % base.len()].clone())
        .collect();
    let metadata: Vec<serde_json::Value> = (0..args.records)
        .map(|i| serde_json::json!({ "row": i % base.len() }))
        .collect();
    let r = shoal::bench::ingest(&db, &vectors, Some(&metadata), args.batch_size).await?;
    db.close().await?;
    println!("ingest into {}", store.describe());
    println!("  records      {}", r.records);
    println!("  dimensions   {dims}");
    println!("  partitions   {}", args.partitions);
    println!("  batch size   {}", args.batch_size);
    println!("  seconds      {:.2}", r.seconds);
    println!("  records/s    {:.0}", r.records_per_s);
    println!("  MB/s (raw f32 vectors)  {:.1}", r.mb_per_s);
    println!("  MB/s (segment bytes)    {:.1}", r.stored_mb / r.seconds);
    println!("  segments     {}", r.segments);
    println!("  stored MB    {:.1}", r.stored_mb);
    println!("  PUT {}  conflicts {}", r.puts, r.conflicts);
    Ok(())
}
