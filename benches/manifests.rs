//! Manifest growth under many tiny writes (issue 14, defect 6): `--writes`
//! single-record upserts, each followed by the writer's compaction by
//! policy (what `serve` writers do in the background), with a simulated
//! clock advancing `--seconds-per-write` so retired entries age past the
//! grace period. GC never runs: the manifests must stay small on their
//! own. Reports PUT bytes (all, manifests only, per commit), the final
//! size of every manifest and the retired entries they still hold.
//!
//! ```sh
//! cargo bench --bench manifests -- --writes 2000 --partitions 100
//! cargo bench --bench manifests -- --writes 2000 --partitions 1
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shoal::api::Outcome;
use shoal::coord::clock::{Clock, ManualClock, SystemClock};
use shoal::coord::{JoinOptions, Metric, RequestedSettings, Role};
use shoal::record::Record;
use shoal::store::memory::MemoryStore;
use shoal::store::{Counted, ObjectStore};
use shoal::{Db, OpenOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    #[arg(long, default_value_t = 100)]
    partitions: u32,
    #[arg(long, default_value_t = 1)]
    seconds_per_write: u64,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let db = Db::open_store(
        store.clone(),
        OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    partition_count: Some(args.partitions),
                    dimensions: Some(8),
                    distance_metric: Some(Metric::Cosine),
                    ..Default::default()
                },
                role: Some(Role::Writer),
                background_heartbeat: false,
                clock: clock.clone(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    // Everything PUT after opening is a segment (a writer's or a
    // compaction's) or a manifest: manifests are the rest.
    let before = store.counts();
    let (mut output_bytes, mut outputs) = (0, 0);
    for i in 0..args.writes {
        let v: Vec<f32> = (0..8).map(|d| ((i * 7 + d) % 13) as f32 + 1.0).collect();
        db.upsert(&[Record::new(format!("doc-{i}"), v)]).await?;
        for o in db.compact_dirty().await {
            if let Outcome::Compacted(r) = o {
                output_bytes += r.bytes_out;
                outputs += r.outputs as u64;
            }
        }
        clock.advance(Duration::from_secs(args.seconds_per_write));
    }
    let reqs = store.counts().since(&before);
    let written = db.writer_stats();
    let manifest_bytes = reqs.bytes_written - written.bytes - output_bytes;
    let manifest_puts = reqs.put - written.segments - outputs;
    let mut final_bytes = 0;
    let mut largest = 0;
    for m in store.list("vectors/").await? {
        if m.key.ends_with("/manifest.json") {
            final_bytes += m.size;
            largest = largest.max(m.size);
        }
    }
    let status = db.status(false).await?;
    let segments = status.totals.segments;
    db.close().await?;
    println!(
        "{} one-record writes, {} partitions, clock +{} s per write (grace {} s), compaction by policy, no GC:",
        args.writes,
        args.partitions,
        args.seconds_per_write,
        status.config.settings.gc_grace_seconds
    );
    println!(
        "  PUT bytes: {:.2} MB in all, {:.2} MB to manifests ({} manifest PUTs, {:.0} bytes each)",
        reqs.bytes_written as f64 / 1e6,
        manifest_bytes as f64 / 1e6,
        manifest_puts,
        manifest_bytes as f64 / manifest_puts.max(1) as f64
    );
    println!(
        "  manifests now: {final_bytes} bytes in all, largest {largest} bytes; {segments} live segments"
    );
    Ok(())
}
