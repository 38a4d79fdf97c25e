//! What keeping a reader fresh costs in requests (issue 30): for each
//! partition count, a warm reader's `strong` query when nothing changed and
//! after a one-record write, and `bounded` queries at `--qps` for
//! `--seconds` (requests per second, and how many queries waited for a
//! check). Request counts do not depend on the store's speed, so an
//! in-memory store gives the numbers an S3 bucket would be billed for.
//!
//! ```sh
//! cargo bench --bench freshness -- --partitions 1,8,100,1000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::{initialize_partitions, load_or_create};
use shoal::coord::{Metric, RequestedSettings};
use shoal::reader::{Consistency, Reader, ReaderOptions, SearchRequest};
use shoal::record::Record;
use shoal::store::memory::MemoryStore;
use shoal::store::Counted;
use shoal::writer::{Writer, WriterOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,8,100,1000")]
    partitions: Vec<u32>,
    /// Queries per second of the `bounded` run.
    #[arg(long, default_value_t = 10.0)]
    qps: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

const DIMS: usize = 8;

fn vector(i: usize) -> Vec<f32> {
    (0..DIMS).map(|d| ((i * 31 + d * 7) % 17) as f32).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| partitions | strong, nothing changed | strong, after a write | bounded at {} q/s: requests/s | queries that waited |",
        args.qps
    );
    println!("|---|---|---|---|---|");
    for &n in &args.partitions {
        let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
        let req = RequestedSettings {
            partition_count: Some(n),
            dimensions: Some(DIMS as u32),
            distance_metric: Some(Metric::Euclidean),
            ..Default::default()
        };
        let config = load_or_create(store.as_ref(), &req, &SystemClock).await?;
        let settings = initialize_partitions(store.as_ref(), &SystemClock, config)
            .await?
            .0
            .settings;
        let clock: DynClock = Arc::new(SystemClock);
        let w = Writer::new(
            store.clone(),
            &settings,
            "w",
            clock,
            WriterOptions::default(),
        );
        let recs: Vec<Record> = (0..(2 * n as usize).max(100))
            .map(|i| Record::new(format!("r{i}"), vector(i)))
            .collect();
        w.upsert(&recs).await?;
        let r = Reader::new(store.clone(), &settings, ReaderOptions::default());
        r.warm().await?;
        let mut strong = SearchRequest::new(vector(1), 10);
        strong.consistency = Consistency::Strong;
        r.search(&strong).await?; // the first check after warm-up
        let unchanged = r.search(&strong).await?.stats.requests.total();
        w.upsert(&[Record::new("new", vector(3))]).await?;
        let changed = r.search(&strong).await?.stats.requests;
        let bounded = SearchRequest::new(vector(2), 10);
        let before = r.stats().requests;
        let (start, mut waited, mut queries) = (Instant::now(), 0u64, 0u64);
        let every = Duration::from_secs_f64(1.0 / args.qps);
        while start.elapsed() < Duration::from_secs(args.seconds) {
            let got = r.search(&bounded).await?;
            waited += u64::from(got.stats.requests.total() > 0);
            queries += 1;
            tokio::time::sleep(every.saturating_sub(Duration::from_millis(1))).await;
        }
        let spent = r.stats().requests.since(&before);
        println!(
            "| {n} | {unchanged} | {} ({} LIST, {} GET) | {:.2} | {waited} of {queries} |",
            changed.total(),
            changed.list,
            changed.get,
            spent.total() as f64 / start.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}
