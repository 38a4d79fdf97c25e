//! The first query after many small writes (issue 30, item 4): `--calls`
//! upserts of `--batch` random-id records each (as 100 `PutVectors` of 100
//! vectors, a common client default), then a fresh reader's first query,
//! against an in-memory store with `--latency-ms` before every request.
//! Reports the objects written, the first query's time, requests and
//! sequential request rounds, for each partition count.
//!
//! ```sh
//! cargo bench --bench small_batches -- --partitions 8,100
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::{initialize_partitions, load_or_create};
use shoal::coord::{Metric, RequestedSettings};
use shoal::reader::{Reader, ReaderOptions, SearchRequest};
use shoal::record::Record;
use shoal::store::memory::MemoryStore;
use shoal::store::{Counted, ObjectStore};
use shoal::writer::{Writer, WriterOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "8,100")]
    partitions: Vec<u32>,
    #[arg(long, default_value_t = 100)]
    calls: usize,
    #[arg(long, default_value_t = 100)]
    batch: usize,
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
        "| partitions | writes | objects written | first query ms | its requests | its request rounds |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &args.partitions {
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
        let clock: DynClock = Arc::new(SystemClock);
        let writer = Writer::new(
            slow.clone(),
            &settings,
            "w",
            clock,
            WriterOptions::default(),
        );
        let dims = args.dims;
        // A pseudo-random vector per key (splitmix64 of key and dimension).
        let vector = |k: usize| -> Vec<f32> {
            (0..dims)
                .map(|d| {
                    let mut z = (k as u64) << 20 ^ d as u64;
                    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        };
        for c in 0..args.calls {
            let recs: Vec<Record> = (0..args.batch)
                .map(|i| {
                    let k = c * args.batch + i;
                    Record::new(format!("k{k}"), vector(k))
                })
                .collect();
            writer.upsert(&recs).await?;
        }
        let objects = base.list("vectors/").await?.len();
        let reader = Reader::new(slow.clone(), &settings, ReaderOptions::default());
        let before = base.counts();
        let rounds = slow.rounds();
        let start = Instant::now();
        let got = reader.search(&SearchRequest::new(vector(4321), 10)).await?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            got.results.first().map(|h| h.id.as_str()) == Some("k4321"),
            "the nearest vector must come first"
        );
        println!(
            "| {n} | {} x {} | {objects} | {ms:.0} | {} | {} |",
            args.calls,
            args.batch,
            base.counts().since(&before).total(),
            slow.rounds() - rounds,
        );
    }
    Ok(())
}
