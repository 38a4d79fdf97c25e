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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use shoal::coord::clock::ManualClock;
use shoal::coord::{Metric, RequestedSettings, Role};
use shoal::record::Record;
use shoal::store::memory::MemoryStore;
use shoal::store::{
    ByteRange, Conditional, Counted, DynStore, ETag, GetResult, ObjectMeta, ObjectStore, Result,
};
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

/// Counts the bytes PUT to manifests.
#[derive(Debug)]
struct ManifestBytes {
    inner: DynStore,
    bytes: AtomicU64,
    puts: AtomicU64,
}

impl ManifestBytes {
    fn note(&self, key: &str, n: usize) {
        if key.ends_with("/manifest.json") {
            self.bytes.fetch_add(n as u64, Relaxed);
            self.puts.fetch_add(1, Relaxed);
        }
    }
}

#[async_trait]
impl ObjectStore for ManifestBytes {
    async fn get(&self, key: &str) -> Result<GetResult> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        self.inner.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.note(key, bytes.len());
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.note(key, bytes.len());
        self.inner.put_if_absent(key, bytes).await
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        self.note(key, bytes.len());
        self.inner.put_if_match(key, bytes, etag).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counter = Arc::new(ManifestBytes {
        inner: Arc::new(MemoryStore::unique()),
        bytes: AtomicU64::new(0),
        puts: AtomicU64::new(0),
    });
    let store = Arc::new(Counted::new(counter.clone()));
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let db = Db::open_store(
        store.clone(),
        OpenOptions {
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
    )
    .await?;
    let (bytes0, puts0) = (counter.bytes.load(Relaxed), counter.puts.load(Relaxed));
    let before = store.counts();
    for i in 0..args.writes {
        let v: Vec<f32> = (0..8).map(|d| ((i * 7 + d) % 13) as f32 + 1.0).collect();
        db.upsert(&[Record::new(format!("doc-{i}"), v)]).await?;
        db.compact_dirty().await;
        clock.advance(Duration::from_secs(args.seconds_per_write));
    }
    let reqs = store.counts().since(&before);
    let manifest_bytes = counter.bytes.load(Relaxed) - bytes0;
    let manifest_puts = counter.puts.load(Relaxed) - puts0;
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
