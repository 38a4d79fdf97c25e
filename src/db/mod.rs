//! The one door: [`Db`], a handle on one index in a bucket.
//!
//! Every front end (the CLI, `shoal serve`, the Lambda handlers, `shoal
//! bench`, `shoal demo`) opens a `Db` and calls its methods, the way
//! lancedb's `connect(uri)` hands out a table and slatedb hands out a
//! `Db`. Opening joins the cluster (probe the store, load or create the
//! config, pick a role, register, heartbeat) or, for read-only tools,
//! only observes it (see [`OpenOptions::join`]); the handle then builds
//! its reader and writer on top. Nothing above this module touches the
//! store, the protocol, readers or writers directly.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal::Error> {
//! use shoal::api::{Record, SearchRequest};
//! let db = shoal::Db::open("file:///tmp/shoal-doc", shoal::OpenOptions::default()).await?;
//! db.upsert(&[Record::new("a", vec![1.0, 0.0, 0.0])]).await?;
//! let hits = db.search(&SearchRequest::new(vec![1.0, 0.0, 0.0], 10)).await?;
//! db.close().await?;
//! # Ok(()) }
//! ```

mod measure;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compact::gc::{GcOptions, GcReport};
use crate::compact::indexer::{index_round, IndexOptions, IndexRound};
use crate::compact::repair::{RepairOptions, RepairReport};
use crate::compact::schedule::{self, CompactRound, Worker, DEFAULT_GC_EVERY};
use crate::compact::shard_repair::ShardRepair;
use crate::compact::{CompactOptions, Outcome};
use crate::coord::index_manifest::IndexManifest;
use crate::coord::{paths, Cluster, Config, JoinOptions, Role, Settings};
use crate::error::Error;
use crate::inspect::{Status, TextIndexStatus, VerifyReport};
use crate::reader::{
    Consistency, Reader, ReaderOptions, ReaderStats, SearchRequest, SearchResponse,
};
use crate::record::{Record, StoredRecord};
use crate::store::{Counted, ObjectStore, RequestCounts};
use crate::vocab::IndexSettings;
use crate::writer::{
    BatchWriter, BatchWriterOptions, FlushReport, WriteReceipt, Writer, WriterOptions,
    WriterStatsSnapshot,
};

/// How to open a [`Db`].
#[derive(Clone)]
pub struct OpenOptions {
    /// How to join (or observe) the cluster: requested settings, role,
    /// instance id, heartbeat, probe, whether to create the config, clock
    /// and role environment. With `background_heartbeat` off (Lambda
    /// handlers) the config is not re-read by a task either:
    /// [`Db::heartbeat_if_due`] does both per invocation.
    pub cluster: JoinOptions,
    /// Join the cluster: probe the store, create the config if missing,
    /// register and heartbeat (the default). Off: observe only, for
    /// read-only tools: the config must exist and nothing is written.
    pub join: bool,
    /// Writers compact the partitions they wrote every this often in the
    /// background (`None`: only when asked).
    pub compact_every: Option<Duration>,
    /// With background compaction on, writers also collect garbage
    /// (`compact::gc`, the config's grace period) every this often, so
    /// storage stays bounded without a separate compactor (`None`: never).
    pub gc_every: Option<Duration>,
    /// How often a joined instance re-reads the config and takes the
    /// settings that may change (index, compaction, GC grace, domain
    /// rules) without a restart (`None`: never). Lambda handlers check it
    /// per invocation ([`Db::heartbeat_if_due`]) instead of a task.
    pub config_refresh: Option<Duration>,
    /// Reader settings; `None`: the preset of the role.
    pub reader: Option<ReaderOptions>,
    pub writer: WriterOptions,
    /// Records per partition per segment for [`Db::add`].
    pub batch_size: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cluster: JoinOptions::default(),
            join: true,
            compact_every: None,
            gc_every: Some(DEFAULT_GC_EVERY),
            config_refresh: Some(DEFAULT_CONFIG_REFRESH),
            reader: None,
            writer: WriterOptions::default(),
            batch_size: BatchWriterOptions::default().batch_size,
        }
    }
}

impl OpenOptions {
    /// Observe without joining (read-only tools): see [`OpenOptions::join`].
    pub fn observer() -> Self {
        OpenOptions {
            join: false,
            ..Default::default()
        }
    }
}

/// Which partitions [`Db::compact`] compacts, and whether the policy may
/// skip them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactRequest {
    /// Compact even partitions the policy would leave alone.
    pub force: bool,
    /// Only this partition (default: all).
    pub partition: Option<u32>,
}

/// What [`probe`] found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub store: String,
    pub conditional_writes: &'static str,
    pub requests: RequestCounts,
}

struct Inner {
    cluster: Cluster,
    reader: Reader,
    writer: Writer,
    /// [`Db::add`]'s buffer, created on first use.
    bulk: tokio::sync::Mutex<Option<BatchWriter>>,
    batch_size: usize,
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When [`Db::ready`] last found the store answering.
    ready_at: Mutex<Option<Instant>>,
    /// The config in force (replaced when the bucket's changes), its
    /// ETag, and when it was last checked.
    live: Mutex<LiveConfig>,
    /// Re-reads the config every [`OpenOptions::config_refresh`].
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    config_refresh: Option<Duration>,
}

struct LiveConfig {
    config: Arc<Config>,
    etag: Option<crate::store::ETag>,
    checked: Instant,
}

/// How often a running instance re-reads the config by default (one
/// conditional GET), so `shoal config set` reaches every instance within
/// about this long.
pub(crate) const DEFAULT_CONFIG_REFRESH: Duration = Duration::from_secs(30);

/// How long a successful readiness check is reused: probes arrive every
/// few seconds from every load balancer and kubelet, and each would cost a
/// store GET.
pub(crate) const READY_CACHE: Duration = Duration::from_secs(5);

/// A handle on one index. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// Opens the index at `url` (`s3://bucket/prefix`, `file:///dir`, a
    /// path, or `memory://name`).
    pub async fn open(url: &str, opts: OpenOptions) -> Result<Db, Error> {
        let store = crate::store::open(url).await.map_err(Error::Store)?;
        Db::open_store(store, opts).await
    }

    /// Opens the index in an already opened store.
    pub async fn open_store(store: Arc<Counted>, opts: OpenOptions) -> Result<Db, Error> {
        let cluster = if opts.join {
            Cluster::join(store, opts.cluster.clone()).await?
        } else {
            Cluster::observe(store, opts.cluster.clone()).await?
        };
        let role = cluster.role();
        let settings = &cluster.config().settings;
        let reader_opts = opts
            .reader
            .clone()
            .unwrap_or_else(|| ReaderOptions::for_role(role));
        let prefetch = reader_opts.prefetch && cluster.is_registered();
        let reader = Reader::with_metrics(
            cluster.store().clone(),
            settings,
            reader_opts,
            Some(cluster.metrics().clone()),
        );
        if prefetch {
            reader.spawn_warm();
        }
        let writer = Writer::new(
            cluster.store().clone(),
            settings,
            cluster.instance_id().to_string(),
            cluster.clock().clone(),
            opts.writer.clone(),
        );
        let background = opts
            .compact_every
            .filter(|_| role.writes())
            .map(|every| schedule::spawn_background(writer.clone(), every, opts.gc_every));
        let live = LiveConfig {
            config: Arc::new(cluster.config().clone()),
            etag: None,
            checked: Instant::now(),
        };
        let refresh = opts.config_refresh.filter(|_| opts.join);
        let db = Db {
            inner: Arc::new(Inner {
                cluster,
                reader,
                writer,
                bulk: tokio::sync::Mutex::new(None),
                batch_size: opts.batch_size.max(1),
                background: Mutex::new(background),
                ready_at: Mutex::new(None),
                live: Mutex::new(live),
                watcher: Mutex::new(None),
                config_refresh: refresh,
            }),
        };
        if let Some(every) = refresh.filter(|_| opts.cluster.background_heartbeat) {
            let weak = Arc::downgrade(&db.inner);
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let db = Db { inner };
                    match db.refresh_config().await {
                        Ok(_) => {}
                        Err(Error::Coord(e @ crate::coord::CoordError::Deleted { .. })) => {
                            // Deleted (S3 Vectors DeleteIndex): stop
                            // writing anything into it, heartbeats too.
                            tracing::warn!(error = %e, "the index was deleted; this handle stops its background work");
                            let _ = db.wind_down().await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-reading the config failed; keeping the one in force")
                        }
                    }
                }
            });
            *db.inner.watcher.lock().unwrap() = Some(task);
        }
        Ok(db)
    }

    /// Re-reads the config (a conditional GET) and, if it changed, puts
    /// the new settings in force: the writer's domain rules, grace period
    /// and compaction settings, the reader's default `nprobe`, and what
    /// [`Db::config`] answers. Returns whether it changed. A config whose
    /// shape (dimensions, metric, partitions) differs from the one this
    /// handle opened with is refused (it cannot change under data).
    pub async fn refresh_config(&self) -> Result<bool, Error> {
        use crate::coord::watched::{revalidate, Revalidated};
        let store = self.inner.cluster.store().as_ref();
        let etag = self.inner.live.lock().unwrap().etag.clone();
        let got = match revalidate(store, paths::CONFIG_KEY, etag.as_ref(), None).await? {
            Revalidated::Missing => {
                let key = paths::CONFIG_KEY.to_string();
                return Err(crate::store::StoreError::NotFound { key }.into());
            }
            got => got,
        };
        let now = Instant::now();
        // The store answered with the config: that is what readiness asks.
        *self.inner.ready_at.lock().unwrap() = Some(now);
        let Revalidated::Changed(got) = got else {
            self.inner.live.lock().unwrap().checked = now;
            return Ok(false);
        };
        let config = crate::coord::config::parse_config(paths::CONFIG_KEY, &got.bytes)?;
        let old = self.config();
        let (a, b) = (&old.settings, &config.settings);
        if (a.dimensions, &a.distance_metric, a.partition_count)
            != (b.dimensions, &b.distance_metric, b.partition_count)
        {
            return Err(Error::InvalidInput(format!(
                "the config at {} now says {} dimensions, metric {}, {} partitions; this \
                 instance opened with {}, {}, {}: restart it",
                paths::CONFIG_KEY,
                b.dimensions,
                b.distance_metric,
                b.partition_count,
                a.dimensions,
                a.distance_metric,
                a.partition_count
            )));
        }
        let changed = *old != config;
        if changed {
            self.inner.writer.set_settings(&config.settings);
            self.inner.reader.set_settings(&config.settings);
            tracing::info!("config changed in the bucket; new settings in force");
        }
        *self.inner.live.lock().unwrap() = LiveConfig {
            config: Arc::new(config),
            etag: Some(got.etag),
            checked: now,
        };
        Ok(changed)
    }

    /// [`Db::refresh_config`] if the last check is older than the refresh
    /// interval (for handlers without background tasks).
    pub async fn refresh_config_if_due(&self) {
        let Some(every) = self.inner.config_refresh else {
            return;
        };
        if self.inner.live.lock().unwrap().checked.elapsed() < every {
            return;
        }
        if let Err(e) = self.refresh_config().await {
            tracing::warn!(error = %e, "re-reading the config failed; keeping the one in force");
        }
    }

    pub fn role(&self) -> Role {
        self.inner.cluster.role()
    }

    /// The bucket's config as this handle last read it (at open, then
    /// every [`OpenOptions::config_refresh`]).
    pub fn config(&self) -> Arc<Config> {
        self.inner.live.lock().unwrap().config.clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.config().settings.clone()
    }

    pub fn instance_id(&self) -> &str {
        self.inner.cluster.instance_id()
    }

    /// Where the index lives, e.g. `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        self.inner.cluster.store().describe()
    }

    /// Store requests this handle made so far, by kind.
    pub fn store_counts(&self) -> RequestCounts {
        self.inner.cluster.store().counts()
    }

    pub fn reader_stats(&self) -> ReaderStats {
        self.inner.reader.stats()
    }

    pub fn writer_stats(&self) -> WriterStatsSnapshot {
        self.inner.writer.stats()
    }

    /// Inserts or replaces records; returns once they are committed.
    pub async fn upsert(&self, records: &[Record]) -> Result<WriteReceipt, Error> {
        let receipt = self.inner.writer.upsert(records).await?;
        self.count_writes(receipt.records);
        Ok(receipt)
    }

    /// Deletes ids (deleting an absent id is fine); returns once committed.
    pub async fn delete(&self, ids: &[String]) -> Result<WriteReceipt, Error> {
        let receipt = self.inner.writer.delete(ids).await?;
        self.count_writes(receipt.records);
        Ok(receipt)
    }

    /// Validates and buffers records for bulk ingest. **Not acknowledged**
    /// until a [`Db::flush`] (or [`Db::close`]) that covers them returns Ok;
    /// a full partition buffer is flushed on the way (reported here).
    pub async fn add(&self, records: &[Record]) -> Result<FlushReport, Error> {
        let mut bulk = self.inner.bulk.lock().await;
        let bw = bulk.get_or_insert_with(|| self.bulk_writer(self.inner.batch_size, None));
        let report = bw.add(records).await?;
        self.count_writes(report.records);
        Ok(report)
    }

    /// Commits everything [`Db::add`] buffered.
    pub async fn flush(&self) -> Result<FlushReport, Error> {
        let bulk = self.inner.bulk.lock().await;
        let Some(bw) = bulk.as_ref() else {
            return Ok(FlushReport::default());
        };
        let report = bw.flush().await?;
        self.count_writes(report.records);
        Ok(report)
    }

    /// A batch writer of its own (for ingest pipelines that validate and
    /// report record by record).
    pub(crate) fn bulk_writer(
        &self,
        batch_size: usize,
        on_durable: Option<crate::writer::DurableHook>,
    ) -> BatchWriter {
        BatchWriter::new(
            self.inner.writer.clone(),
            BatchWriterOptions {
                batch_size: batch_size.max(1),
                on_durable,
                ..Default::default()
            },
        )
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    pub(crate) fn count_writes(&self, n: usize) {
        let m = self.inner.cluster.metrics();
        m.writes.fetch_add(n as u64, Ordering::Relaxed);
        let w = self.inner.writer.stats();
        m.cas_conflicts.store(w.conflicts, Ordering::Relaxed);
        m.cas_retries.store(w.retries, Ordering::Relaxed);
    }

    /// Settles the caches' sizes (pending evictions and insertions), so
    /// [`Db::reader_stats`] reports what they hold now.
    pub async fn settle_caches(&self) {
        self.inner.reader.run_cache_maintenance().await;
    }

    /// Searches every partition and merges the top-k.
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchResponse, Error> {
        Ok(self.inner.reader.search(req).await?)
    }

    /// The newest live version of `id`, reading only its partition.
    pub async fn get(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<StoredRecord>, Error> {
        Ok(self.inner.reader.get_with(id, consistency).await?)
    }

    /// The newest live version of each of `ids` (`None` where it has
    /// none), in the order given, checking each partition's freshness once.
    pub async fn get_many(
        &self,
        ids: &[&str],
        consistency: Consistency,
    ) -> Result<Vec<Option<StoredRecord>>, Error> {
        Ok(self.inner.reader.get_many(ids, consistency).await?)
    }

    /// The ids live in partition `p`, in ascending byte order.
    pub async fn list_ids(&self, p: u32, consistency: Consistency) -> Result<Vec<String>, Error> {
        Ok(self.inner.reader.list_ids(p, consistency).await?)
    }

    /// Fetches what queries plan with (manifests, shard heads, deletion
    /// vectors, every list's codes, then rows while the cache holds them),
    /// so the next query is warm; see
    /// [`crate::reader::Reader::warm_up`].
    pub async fn warm_up(&self) -> Result<crate::reader::WarmReport, Error> {
        Ok(self.inner.reader.warm_up().await?)
    }

    /// [`Db::warm_up`], fetching no more once `limit` has passed.
    pub async fn warm_up_within(
        &self,
        limit: std::time::Duration,
    ) -> Result<crate::reader::WarmReport, Error> {
        Ok(self.inner.reader.warm_up_within(limit).await?)
    }

    /// Loads every partition now, so the next query is warm. Returns the
    /// live records.
    pub async fn warm(&self) -> Result<u64, Error> {
        Ok(self.inner.reader.warm().await?)
    }

    /// Compacts partitions (see `compact` for what compaction does).
    pub async fn compact(&self, req: CompactRequest) -> Result<Vec<Outcome>, Error> {
        let settings = &self.settings();
        let opts = CompactOptions {
            force: req.force,
            upto_seq: None,
        };
        let (store, clock) = (self.inner.cluster.store(), self.inner.cluster.clock());
        let id = self.instance_id();
        Ok(match req.partition {
            Some(p) if p >= settings.partition_count => {
                return Err(Error::InvalidInput(format!(
                    "partition {p} does not exist (the index has {})",
                    settings.partition_count
                )))
            }
            Some(p) => vec![
                crate::compact::compact_partition(store.as_ref(), settings, p, id, clock, &opts)
                    .await?,
            ],
            None => crate::compact::compact_all(store.as_ref(), settings, id, clock, &opts).await?,
        })
    }

    /// One indexer round (see `compact::indexer`): builds index shards
    /// from the partitions' tails and merges shards; by policy unless
    /// `force`.
    pub async fn index(&self, force: bool) -> Result<IndexRound, Error> {
        let (store, clock) = (self.inner.cluster.store(), self.inner.cluster.clock());
        let opts = IndexOptions {
            force,
            ..Default::default()
        };
        Ok(index_round(
            store.as_ref(),
            &self.settings(),
            self.instance_id(),
            clock,
            opts,
        )
        .await?)
    }

    /// Compacts, by policy, the partitions this handle wrote to since the
    /// last call (what a writer runs after an ingest).
    pub async fn compact_dirty(&self) -> Vec<Outcome> {
        schedule::compact_dirty(&self.inner.writer).await
    }

    /// One scheduled compactor round (the compactor Lambda): compacts
    /// partitions by policy, resuming where the last round stopped, until
    /// `deadline - margin`; runs the indexer and GC after each full pass.
    /// See `compact::schedule::compact_round` for what happens to a
    /// partition (or an indexer round) that outruns the time left.
    pub async fn compact_round(
        &self,
        deadline: Instant,
        margin: Duration,
        gc: &GcOptions,
    ) -> Result<CompactRound, Error> {
        let worker = Worker {
            store: self.inner.cluster.store().as_ref(),
            settings: &self.settings(),
            id: self.instance_id(),
            clock: self.inner.cluster.clock(),
        };
        Ok(schedule::compact_round(worker, deadline, margin, gc).await?)
    }

    /// Changes settings by JSON path (`gcGraceSeconds`, `index.nprobe`,
    /// ...; see `coord::config::set_settings`): compare-and-swap, with
    /// the library's refusals (layout settings once data exists, invalid
    /// values). Returns the config as stored. Instances opened earlier
    /// take the new settings within their `config_refresh` (30 s by
    /// default; see [`Db::refresh_config`]).
    pub async fn set_settings(
        &self,
        changes: &[(String, serde_json::Value)],
    ) -> Result<crate::coord::Config, Error> {
        let store = self.inner.cluster.store();
        let clock = self.inner.cluster.clock();
        Ok(crate::coord::config::set_settings(store.as_ref(), clock.as_ref(), changes).await?)
    }

    /// Deletes what no manifest needs any more (see `compact::gc`).
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, Error> {
        let store = self.inner.cluster.store();
        let clock = self.inner.cluster.clock();
        Ok(crate::compact::gc::gc(store.as_ref(), &self.settings(), clock, opts).await?)
    }

    /// Rebuilds partition `partition`'s lost manifest from its segments
    /// (see `compact::repair`).
    pub async fn repair(&self, partition: u32, opts: RepairOptions) -> Result<RepairReport, Error> {
        let store = self.inner.cluster.store();
        Ok(
            crate::compact::repair::repair(store.as_ref(), &self.settings(), partition, opts)
                .await?,
        )
    }

    /// Rebuilds the damaged index shard `key` from its readable rows, or
    /// drops it when its head is unreadable, and says exactly what is lost
    /// (`shoal repair --shard`; see `compact::shard_repair`). With
    /// `dry_run`, only reports.
    pub async fn repair_shard(&self, key: &str, dry_run: bool) -> Result<ShardRepair, Error> {
        let store = self.inner.cluster.store();
        let clock = self.inner.cluster.clock();
        let settings = self.settings();
        Ok(crate::compact::shard_repair::repair_shard(
            store.as_ref(),
            &settings,
            clock,
            key,
            dry_run,
        )
        .await?)
    }

    /// Config, instances, partitions and request counters; with `live`,
    /// also live and dead records per partition (loads every segment, like
    /// a cold reader's warm-up).
    pub async fn status(&self, live: bool) -> Result<Status, Error> {
        let store = self.inner.cluster.store();
        let now = self.inner.cluster.clock().now();
        let mut st = crate::inspect::status(store, &self.config(), now).await?;
        // Live counts read every partition: not with one known unreadable.
        if live && st.problems.is_empty() {
            let total = self.inner.reader.warm().await?;
            st.set_live_counts(&self.inner.reader.live_counts());
            // Shards included (the per-partition counts are the tails').
            st.totals.live = Some(total);
            st.requests = store.counts();
        }
        Ok(st)
    }

    /// Each full-text searchable key's text index status (one GET of the
    /// index manifest): `ACTIVE` when every shard has it, `BUILDING`
    /// while the indexer backfills it (text queries are exact meanwhile,
    /// scanning the shards without it).
    pub async fn text_index_status(&self) -> Result<Vec<TextIndexStatus>, Error> {
        let store = self.inner.cluster.store();
        let settings = self.settings();
        let index = crate::coord::index_manifest::read_index_manifest(
            store.as_ref(),
            settings.partition_count,
        )
        .await?
        .map(|(m, _)| m)
        .unwrap_or_else(|| IndexManifest::empty(settings.partition_count));
        Ok(crate::inspect::text_index_status(&index, &settings))
    }

    /// Reads every manifest and segment and checks them.
    pub async fn verify(&self) -> Result<VerifyReport, Error> {
        let store = self.inner.cluster.store();
        Ok(crate::inspect::verify(store.as_ref(), &self.config()).await?)
    }

    /// Ready when the store answers and the config is still there (one
    /// GET, reused for [`READY_CACHE`] after a success; failures are never
    /// reused).
    pub async fn ready(&self) -> Result<(), Error> {
        let fresh = |t: &Option<Instant>| t.is_some_and(|t| t.elapsed() < READY_CACHE);
        if fresh(&self.inner.ready_at.lock().unwrap()) {
            return Ok(());
        }
        let store = self.inner.cluster.store();
        match crate::coord::config::read_config(store.as_ref()).await? {
            Some(_) => {
                *self.inner.ready_at.lock().unwrap() = Some(Instant::now());
                Ok(())
            }
            None => {
                *self.inner.ready_at.lock().unwrap() = None;
                Err(Error::Coord(crate::coord::CoordError::NoIndex {
                    store: store.describe(),
                }))
            }
        }
    }

    /// Writes one heartbeat now.
    pub async fn heartbeat_now(&self) -> Result<(), Error> {
        Ok(self.inner.cluster.heartbeat_now().await?)
    }

    /// This instance's record as last written (what `status` shows of it;
    /// for tests).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn instance_record(&self) -> crate::coord::instance::InstanceRecord {
        self.inner.cluster.record().await
    }

    /// Heartbeats if one is due (what a Lambda invocation calls first; a
    /// frozen sandbox runs no background task). A failure is logged.
    pub async fn heartbeat_if_due(&self) {
        if let Err(e) = self.inner.cluster.heartbeat_if_due().await {
            tracing::warn!(error = %e, "heartbeat failed; continuing");
        }
        self.refresh_config_if_due().await;
    }

    /// Clean shutdown: commits what [`Db::add`] buffered, stops background
    /// compaction and deregisters this instance. Takes `&self` because
    /// server tasks may still hold clones while they finish.
    pub async fn close(&self) -> Result<(), Error> {
        let flushed = self.flush().await;
        let watcher = self.inner.watcher.lock().unwrap().take();
        if let Some(task) = watcher {
            task.abort();
        }
        self.wind_down().await?;
        flushed.map(|_| ())
    }

    /// Whether this is the only clone of the handle (nothing else holds
    /// it: closing it interrupts nobody).
    pub(crate) fn is_unshared(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// Stops the background work and the heartbeat, and removes this
    /// instance's record.
    async fn wind_down(&self) -> Result<(), Error> {
        let background = self.inner.background.lock().unwrap().take();
        if let Some(task) = background {
            task.abort();
        }
        self.inner.cluster.deregister().await?;
        Ok(())
    }
}

/// Checks that the store at `url` enforces conditional writes
/// (create-only and compare-and-swap), which every multi-writer guarantee
/// depends on. Needs no index in the bucket.
pub async fn probe(url: &str) -> Result<ProbeReport, Error> {
    let store = crate::store::open(url).await?;
    crate::store::probe_conditional_writes(store.as_ref(), paths::probe_keys()).await?;
    Ok(ProbeReport {
        store: store.describe(),
        conditional_writes: "enforced",
        requests: store.counts(),
    })
}
