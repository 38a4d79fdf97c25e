//! Joining a bucket: [`Cluster::join`] probes the store, loads or creates
//! the shared config, picks a role, registers this instance and starts its
//! heartbeat; [`Cluster::deregister`] stops the heartbeat and removes the
//! record.
//! [`Cluster::observe`] attaches read-only tools without registering.
//!
//! A cluster knows the protocol only: what readers and writers are built
//! on top of it is the handle's business (`crate::db`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::clock::{format_time, DynClock, SystemClock};
use super::config::{
    initialize_partitions, load_or_create, read_config, Config, RequestedSettings,
};
use super::error::CoordError;
use super::instance::{self, InstanceMetrics, InstanceRecord};
use super::role::{detect_role, preferred_role, Role, RoleEnv};
use crate::store::{probe_conditional_writes, Counted, ObjectStore};

pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How to join.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// Settings this instance needs; `None` fields adopt the bucket's. When
    /// joining a bucket without a config they create it (dimensions are
    /// then required).
    pub settings: RequestedSettings,
    /// Explicit role (beats `BRAINY_ROLE` and detection).
    pub role: Option<Role>,
    /// Instance id; defaults to `BRAINY_INSTANCE_ID`, else one is generated.
    pub instance_id: Option<String>,
    pub heartbeat_interval: Duration,
    /// Run the heartbeat as a background task. Lambda handlers turn this
    /// off and call [`Cluster::heartbeat_if_due`] per invocation instead,
    /// since a frozen sandbox runs no background work.
    pub background_heartbeat: bool,
    /// Check that the store enforces conditional writes before relying on it.
    pub probe: bool,
    /// Create the config when the bucket has none (the default). Off: a
    /// bucket without one is refused with [`CoordError::NoIndex`].
    pub create: bool,
    /// Write an instance record in the index and heartbeat it (the
    /// default). Off: the instance works as a member (its role, writes,
    /// compaction) but publishes nothing in the index; `shoal serve
    /// --s3vectors` keeps one record per process instead, at the root
    /// (issue 30: an index costs no heartbeats).
    pub register: bool,
    pub clock: DynClock,
    pub env: RoleEnv,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            settings: RequestedSettings::default(),
            role: None,
            instance_id: std::env::var("BRAINY_INSTANCE_ID")
                .ok()
                .filter(|v| !v.is_empty()),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            background_heartbeat: true,
            probe: true,
            create: true,
            register: true,
            clock: Arc::new(SystemClock),
            env: RoleEnv::from_process(),
        }
    }
}

struct Inner {
    store: Arc<Counted>,
    instance_id: String,
    config: Config,
    role: Role,
    clock: DynClock,
    metrics: Arc<InstanceMetrics>,
    /// The record as last written; heartbeats update it.
    record: tokio::sync::Mutex<InstanceRecord>,
    timeout: Duration,
    interval: Duration,
    last_cleanup: Mutex<Option<SystemTime>>,
    /// False for an observer: nothing is written for it.
    registered: bool,
}

/// A joined instance. Dropping it stops the heartbeat but leaves the
/// record to expire; call [`Cluster::deregister`] for a clean shutdown.
pub struct Cluster {
    inner: Arc<Inner>,
    heartbeat: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some((stop, _)) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
    }
}

impl Cluster {
    /// Probes the store, loads or creates the config, detects the role,
    /// registers this instance and starts heartbeating. Nothing is written
    /// when the requested settings are invalid or contradict the bucket.
    pub async fn join(store: Arc<Counted>, opts: JoinOptions) -> Result<Cluster, CoordError> {
        opts.settings.validate()?;
        let instance_id = instance::instance_id(opts.instance_id.as_deref())?;
        let embedded = !store.describe().starts_with("s3://");
        // Decided before anything is written, so a bad BRAINY_ROLE fails fast.
        let preferred = preferred_role(opts.role, &opts.env, embedded)?;
        // A joiner that contradicts an existing config is refused before it
        // writes anything, probe objects included.
        match read_config(store.as_ref()).await? {
            Some((existing, _)) => {
                if let Some(err) = opts.settings.contradiction(&existing.settings) {
                    return Err(err);
                }
            }
            None if !opts.create => {
                return Err(CoordError::NoIndex {
                    store: store.describe(),
                })
            }
            None => {}
        }
        if opts.probe {
            probe_conditional_writes(store.as_ref(), super::paths::probe_keys()).await?;
        }
        let config = load_or_create(store.as_ref(), &opts.settings, opts.clock.as_ref()).await?;
        let timeout = Duration::from_secs(config.settings.instance_timeout_seconds);
        let now = opts.clock.now();
        let role = match preferred {
            Some(role) => role,
            None => {
                let live = instance::live_records(store.as_ref(), now, timeout).await?;
                detect_role(None, &opts.env, &live, embedded)?
            }
        };
        // Writers make sure every partition manifest exists (creating them
        // for a new index, upgrading an older one once) before they write.
        let config = if role.writes() {
            initialize_partitions(store.as_ref(), opts.clock.as_ref(), config)
                .await?
                .0
        } else {
            config
        };
        let inner = Arc::new(Inner::new(
            store,
            instance_id,
            config,
            role,
            &opts,
            opts.register,
        ));
        let record = inner.record.lock().await.clone();
        if opts.register {
            instance::write_record(inner.store.as_ref(), &record).await?;
        }
        tracing::info!(instance = %record.instance_id, %role, store = %inner.store.describe(), registered = opts.register, "joined");
        if role.writes() && opts.register {
            inner.cleanup_if_due().await;
        }
        let cluster = Cluster {
            inner: inner.clone(),
            heartbeat: Mutex::new(None),
        };
        if opts.background_heartbeat && opts.register {
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(heartbeat_loop(inner, stopped));
            *cluster.heartbeat.lock().unwrap() = Some((stop, task));
        }
        Ok(cluster)
    }

    /// Attaches to the index in `store` without joining: reads its config
    /// (which must exist), registers nothing, writes nothing and starts no
    /// heartbeat. Read-only tools (search, get, status, verify, gc) use it
    /// so they never show up as instances. The role is `opts.role`, else
    /// reader.
    pub(crate) async fn observe(
        store: Arc<Counted>,
        opts: JoinOptions,
    ) -> Result<Cluster, CoordError> {
        opts.settings.validate()?;
        let Some((config, _)) = read_config(store.as_ref()).await? else {
            return Err(CoordError::NoIndex {
                store: store.describe(),
            });
        };
        if let Some(err) = opts.settings.contradiction(&config.settings) {
            return Err(err);
        }
        let instance_id = instance::instance_id(opts.instance_id.as_deref())?;
        let role = opts.role.unwrap_or(Role::Reader);
        Ok(Cluster {
            inner: Arc::new(Inner::new(store, instance_id, config, role, &opts, false)),
            heartbeat: Mutex::new(None),
        })
    }

    /// Whether this instance is registered (joined), not an observer.
    pub(crate) fn is_registered(&self) -> bool {
        self.inner.registered
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Another handle on this membership without the heartbeat task (the
    /// original keeps it): what a [`crate::Db::reading_copy`] holds.
    pub(crate) fn share(&self) -> Cluster {
        Cluster {
            inner: self.inner.clone(),
            heartbeat: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &Arc<Counted> {
        &self.inner.store
    }

    pub fn clock(&self) -> &DynClock {
        &self.inner.clock
    }

    /// Counters the read and write paths update; published by heartbeats.
    pub fn metrics(&self) -> &Arc<InstanceMetrics> {
        &self.inner.metrics
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// This instance's record as last written.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn record(&self) -> InstanceRecord {
        self.inner.record.lock().await.clone()
    }

    /// Instances whose last heartbeat is younger than the timeout
    /// (one LIST plus one GET per instance). For tests: `status` reads
    /// the registry itself.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn live_instances(&self) -> Result<Vec<InstanceRecord>, CoordError> {
        instance::live_records(
            self.inner.store.as_ref(),
            self.inner.clock.now(),
            self.inner.timeout,
        )
        .await
    }

    /// Writes one heartbeat now (and, for writers, removes stale records
    /// when due).
    pub async fn heartbeat_now(&self) -> Result<(), CoordError> {
        self.inner.beat().await
    }

    /// Heartbeats only if the last one is at least an interval old: what a
    /// Lambda handler calls at the start of each invocation.
    pub async fn heartbeat_if_due(&self) -> Result<bool, CoordError> {
        let last = self.inner.record.lock().await.last_heartbeat.clone();
        let due = match super::clock::parse_time(&last) {
            Some(t) => self
                .inner
                .clock
                .now()
                .duration_since(t)
                .map(|age| age >= self.inner.interval)
                .unwrap_or(false),
            None => true,
        };
        if due {
            self.inner.beat().await?;
        }
        Ok(due)
    }

    /// Stops the heartbeat task (waiting for it) without removing the
    /// record: what a crash looks like to other instances.
    pub async fn stop_heartbeat(&self) {
        let hb = self.heartbeat.lock().unwrap().take();
        if let Some((stop, task)) = hb {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// [`Cluster::deregister`], consuming the cluster (for tests).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn leave(self) -> Result<(), CoordError> {
        self.deregister().await
    }

    /// Clean shutdown: stops the heartbeat and removes this instance's
    /// record. Takes `&self`: the cluster may still be shared (e.g. by
    /// server tasks finishing their last requests).
    pub(crate) async fn deregister(&self) -> Result<(), CoordError> {
        self.stop_heartbeat().await;
        if !self.inner.registered {
            return Ok(());
        }
        let id = self.inner.instance_id.clone();
        instance::remove_record(self.inner.store.as_ref(), &id).await?;
        tracing::info!(instance = %id, "left");
        Ok(())
    }
}

impl Inner {
    /// A member's state (`registered`), or an observer's, with the record
    /// it publishes (an observer's is never written).
    fn new(
        store: Arc<Counted>,
        instance_id: String,
        config: Config,
        role: Role,
        opts: &JoinOptions,
        registered: bool,
    ) -> Inner {
        let metrics = Arc::new(InstanceMetrics::default());
        let stamp = format_time(opts.clock.now());
        let record = InstanceRecord {
            instance_id: instance_id.clone(),
            role,
            status: if registered { "active" } else { "observer" }.into(),
            host: instance::host_name(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: stamp.clone(),
            last_heartbeat: stamp,
            heartbeat_seq: u64::from(registered),
            metrics: metrics.snapshot(store.counts()),
            extra: Default::default(),
        };
        Inner {
            timeout: Duration::from_secs(config.settings.instance_timeout_seconds),
            store,
            instance_id,
            config,
            role,
            clock: opts.clock.clone(),
            metrics,
            record: tokio::sync::Mutex::new(record),
            interval: opts.heartbeat_interval,
            last_cleanup: Mutex::new(None),
            registered,
        }
    }

    async fn beat(&self) -> Result<(), CoordError> {
        if !self.registered {
            return Ok(());
        }
        let mut rec = self.record.lock().await;
        let mut next = rec.clone();
        next.last_heartbeat = format_time(self.clock.now());
        next.heartbeat_seq += 1;
        next.metrics = self.metrics.snapshot(self.store.counts());
        instance::write_record(self.store.as_ref(), &next).await?;
        *rec = next;
        drop(rec);
        if self.role.writes() {
            self.cleanup_if_due().await;
        }
        Ok(())
    }

    /// Writers remove stale records at most every half timeout: often
    /// enough that dead instances vanish within ~1.5 timeouts, rarely
    /// enough that the LIST + GETs stay cheap.
    async fn cleanup_if_due(&self) {
        let now = self.clock.now();
        {
            let mut last = self.last_cleanup.lock().unwrap();
            let due =
                last.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= self.timeout / 2);
            if !due {
                return;
            }
            *last = Some(now);
        }
        match instance::remove_stale(self.store.as_ref(), now, self.timeout, &self.instance_id)
            .await
        {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed stale instance records")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "stale instance cleanup failed; will retry"),
        }
    }
}

/// Heartbeats every interval until stopped. A failed heartbeat is logged
/// and retried sooner (1 s, doubling, capped at the interval); it never
/// stops the instance or its queries.
async fn heartbeat_loop(inner: Arc<Inner>, mut stop: oneshot::Receiver<()>) {
    let mut delay = inner.interval;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(delay) => {}
        }
        match inner.beat().await {
            Ok(()) => {
                failures = 0;
                delay = inner.interval;
            }
            Err(e) => {
                failures += 1;
                delay = (Duration::from_secs(1) * 2u32.saturating_pow(failures - 1))
                    .min(inner.interval);
                tracing::warn!(error = %e, failures, retry_in = ?delay, "heartbeat failed");
            }
        }
    }
}
