//! Soak: storage stays bounded under many tiny ingests (issue 17). A
//! writer with background compaction and GC (what `shoal serve` writers
//! run) takes `--writes` one-record upserts; a simulated clock advances
//! `--seconds-per-write` after each (the store stamps objects with the
//! same clock, as S3 follows real time, so GC's grace period passes), and
//! the indexer moves tails into shards every `--index-every` writes.
//! Every `--sample-every` writes it reports the objects in the bucket,
//! their bytes and the bytes of every manifest: after the first grace
//! period they should level off instead of growing with the writes.
//!
//! ```sh
//! cargo bench --bench soak -- --writes 3000 --partitions 8
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shoal::coord::clock::{Clock, ManualClock, SystemClock};
use shoal::coord::{JoinOptions, Metric, RequestedSettings, Role};
use shoal::record::Record;
use shoal::store::memory::MemoryStore;
use shoal::store::{Counted, ObjectStore};
use shoal::{Db, OpenOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 3000)]
    writes: u32,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value_t = 10)]
    seconds_per_write: u64,
    #[arg(long, default_value_t = 30)]
    index_every: u32,
    #[arg(long, default_value_t = 250)]
    sample_every: u32,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let time = {
        let c = clock.clone();
        Arc::new(move || shoal::coord::clock::Clock::now(c.as_ref()))
    };
    let store = Arc::new(Counted::new(Arc::new(
        MemoryStore::unique().with_time(time),
    )));
    let db = Db::open_store(
        store.clone(),
        OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    partition_count: Some(args.partitions),
                    dimensions: Some(16),
                    distance_metric: Some(Metric::Cosine),
                    ..Default::default()
                },
                role: Some(Role::Writer),
                clock: clock.clone(),
                ..Default::default()
            },
            compact_every: Some(Duration::from_millis(5)),
            gc_every: Some(Duration::from_millis(5)),
            ..Default::default()
        },
    )
    .await?;
    let grace = db.settings().gc_grace_seconds;
    println!(
        "soak: {} one-record upserts, {} partitions, {} s per write (grace period {} s = {} writes)",
        args.writes,
        args.partitions,
        args.seconds_per_write,
        grace,
        grace / args.seconds_per_write.max(1)
    );
    println!(
        "{:>7} {:>9} {:>8} {:>12} {:>15}",
        "writes", "sim time", "objects", "bytes", "manifest bytes"
    );
    let mut samples = Vec::new();
    for i in 1..=args.writes {
        let v: Vec<f32> = (0..16).map(|d| ((i * 31 + d) % 97) as f32 + 1.0).collect();
        db.upsert(&[Record::new(format!("r{i}"), v)]).await?;
        db.compact_dirty().await;
        clock.advance(Duration::from_secs(args.seconds_per_write));
        if i % args.index_every == 0 {
            db.index(false).await?;
        }
        if i % 10 == 0 {
            // Let the background compaction and GC task run.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        if i % args.sample_every == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let objects = store.list("").await?;
            let bytes: u64 = objects.iter().map(|o| o.size).sum();
            let manifests: u64 = objects
                .iter()
                .filter(|o| o.key.ends_with("manifest.json"))
                .map(|o| o.size)
                .sum();
            let sim = u64::from(i) * args.seconds_per_write;
            println!(
                "{i:>7} {:>8}s {:>8} {bytes:>12} {manifests:>15}",
                sim,
                objects.len()
            );
            samples.push(serde_json::json!({
                "writes": i, "simulatedSeconds": sim, "objects": objects.len(),
                "bytes": bytes, "manifestBytes": manifests,
            }));
        }
    }
    let live = db.status(true).await?.totals.live;
    println!(
        "live records at the end: {live:?} (of {} written)",
        args.writes
    );
    println!("{}", serde_json::json!({"soak": samples}));
    db.close().await?;
    Ok(())
}
