//! What the partition count buys writers (issue 30 item 2): for each
//! partition count and number of concurrent writers, each writer upserts
//! batches of `--batch` records with random ids for `--seconds` against an
//! in-memory store with `--latency-ms` added to every request (S3's
//! first-byte latency). Reports records/s, batches/s, the requests one
//! batch costs (PUT and GET) and compare-and-swap conflicts per batch.
//!
//! ```sh
//! cargo bench --bench partitions -- --partitions 1,4,16,100 --writers 1,4,16
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::{initialize_partitions, load_or_create};
use shoal::coord::{Metric, RequestedSettings};
use shoal::record::Record;
use shoal::store::memory::MemoryStore;
use shoal::store::Counted;
use shoal::writer::{Writer, WriterOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,100")]
    partitions: Vec<u32>,
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    writers: Vec<usize>,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    #[arg(long, default_value_t = 384)]
    dims: usize,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| partitions | writers | records/s | batches/s | PUTs per batch | GETs per batch | CAS conflicts per batch |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.partitions {
        for &writers in &args.writers {
            let base = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
            let req = RequestedSettings {
                partition_count: Some(n),
                dimensions: Some(args.dims as u32),
                distance_metric: Some(Metric::Cosine),
                ..Default::default()
            };
            let config = load_or_create(base.as_ref(), &req, &SystemClock).await?;
            let settings = initialize_partitions(base.as_ref(), &SystemClock, config)
                .await?
                .0
                .settings;
            let slow = Arc::new(base.with_latency(Duration::from_millis(args.latency_ms)));
            let before = base.counts();
            let start = Instant::now();
            let until = start + Duration::from_secs(args.seconds);
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let (store, settings, batch, dims) =
                        (slow.clone(), settings.clone(), args.batch, args.dims);
                    tokio::spawn(async move {
                        let clock: DynClock = Arc::new(SystemClock);
                        let writer = Writer::new(
                            store,
                            &settings,
                            format!("w{w}"),
                            clock,
                            WriterOptions::default(),
                        );
                        let mut batches = 0u64;
                        while Instant::now() < until {
                            let recs: Vec<Record> = (0..batch)
                                .map(|i| {
                                    let id = format!("w{w}-b{batches}-{i}");
                                    let v = (0..dims).map(|d| ((i + d) % 7) as f32 + 1.0).collect();
                                    Record::new(id, v)
                                })
                                .collect();
                            writer.upsert(&recs).await?;
                            batches += 1;
                        }
                        anyhow::Ok(batches)
                    })
                })
                .collect();
            let mut batches = 0u64;
            for t in tasks {
                batches += t.await??;
            }
            let secs = start.elapsed().as_secs_f64();
            let c = base.counts().since(&before);
            let per = |x: u64| x as f64 / batches.max(1) as f64;
            println!(
                "| {n} | {writers} | {:.0} | {:.2} | {:.1} | {:.1} | {:.2} |",
                (batches * args.batch as u64) as f64 / secs,
                batches as f64 / secs,
                per(c.put),
                per(c.get),
                per(c.precondition_failed),
            );
        }
    }
    Ok(())
}
