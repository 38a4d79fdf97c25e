//! The instance registry (DESIGN section 3): one heartbeat record per
//! instance at `_brainy/instances/<id>.json`, so there is no write
//! contention however many instances run. Each instance only ever writes
//! its own record; writers also delete records of instances whose last
//! heartbeat is older than the config's `instanceTimeoutSeconds`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cas::parse_json;
use super::clock::parse_time;
use super::error::CoordError;
use super::paths::{instance_id_from_key, instance_key, INSTANCES_PREFIX};
use super::role::Role;
use crate::store::{ObjectStore, RequestCounts, StoreError};

/// What an instance publishes about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub instance_id: String,
    pub role: Role,
    /// `active` while running, `stopping` during a clean shutdown.
    pub status: String,
    pub host: String,
    pub pid: u32,
    /// shoal version of the instance.
    pub version: String,
    pub started_at: String,
    pub last_heartbeat: String,
    /// Heartbeats written so far (1 = the registration itself).
    #[serde(default)]
    pub heartbeat_seq: u64,
    pub metrics: MetricsSnapshot,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl InstanceRecord {
    /// Alive while the last heartbeat is younger than `timeout`. A record
    /// whose time cannot be parsed counts as not alive.
    pub(crate) fn is_alive(&self, now: SystemTime, timeout: Duration) -> bool {
        match parse_time(&self.last_heartbeat) {
            // A heartbeat from the future (clock skew) counts as fresh.
            Some(t) => now
                .duration_since(t)
                .map(|age| age < timeout)
                .unwrap_or(true),
            None => false,
        }
    }

    /// How long ago the last heartbeat was, if its time parses.
    pub(crate) fn heartbeat_age(&self, now: SystemTime) -> Option<Duration> {
        parse_time(&self.last_heartbeat).map(|t| now.duration_since(t).unwrap_or_default())
    }
}

/// The metrics part of an instance record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    pub vector_count: u64,
    pub cache_hit_rate: f64,
    /// Resident memory in bytes (0 where unknown).
    pub memory_usage: u64,
    pub queries: u64,
    pub writes: u64,
    /// Cache lookups (segments and shard parts) answered from memory, and
    /// not; `cacheHitRate` is their ratio (0 before any lookup).
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub cache_misses: u64,
    /// Manifest commits that lost a compare-and-swap race, and commits
    /// retried after a transient error.
    #[serde(default)]
    pub cas_conflicts: u64,
    #[serde(default)]
    pub cas_retries: u64,
    /// Object-store requests made by this instance.
    pub requests: RequestCounts,
}

/// Live counters that the read and write paths bump and the heartbeat
/// publishes.
#[derive(Debug, Default)]
pub struct InstanceMetrics {
    pub vector_count: AtomicU64,
    pub queries: AtomicU64,
    pub writes: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cas_conflicts: AtomicU64,
    pub cas_retries: AtomicU64,
}

impl InstanceMetrics {
    pub fn snapshot(&self, requests: RequestCounts) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (hits, misses) = (l(&self.cache_hits), l(&self.cache_misses));
        MetricsSnapshot {
            vector_count: l(&self.vector_count),
            cache_hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            memory_usage: resident_memory_bytes(),
            queries: l(&self.queries),
            writes: l(&self.writes),
            cache_hits: hits,
            cache_misses: misses,
            cas_conflicts: l(&self.cas_conflicts),
            cas_retries: l(&self.cas_retries),
            requests,
        }
    }
}

/// Resident set size from /proc (Linux, including Lambda); 0 elsewhere.
pub(crate) fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// This machine's host name, for instance records.
pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether `id` may name an instance (and so a key under
/// `_brainy/instances/`).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

/// A fresh instance id, unique per process: `<host>-<pid>-<random>`,
/// prefixed by `BRAINY_INSTANCE_PREFIX` when set (so an IAM policy can
/// let a function write only records named `<prefix>-*`), or
/// `override_id` (from `BRAINY_INSTANCE_ID`) when given.
pub fn instance_id(override_id: Option<&str>) -> Result<String, CoordError> {
    let expected = "1 to 200 characters from A-Z a-z 0-9 - _ . (not starting with .)";
    if let Some(id) = override_id {
        if !valid_id(id) {
            return Err(CoordError::InvalidSetting {
                setting: "BRAINY_INSTANCE_ID",
                value: format!("{id:?}"),
                expected: expected.into(),
            });
        }
        return Ok(id.to_string());
    }
    let host: String = host_name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let id = format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        crate::coord::entropy::random_u64() as u32
    );
    match std::env::var("BRAINY_INSTANCE_PREFIX") {
        Ok(prefix) if !prefix.is_empty() => {
            if !valid_id(&prefix) || prefix.len() > 120 {
                return Err(CoordError::InvalidSetting {
                    setting: "BRAINY_INSTANCE_PREFIX",
                    value: format!("{prefix:?}"),
                    expected: expected.replace("200", "120"),
                });
            }
            Ok(format!("{prefix}-{id}"))
        }
        _ => Ok(id),
    }
}

/// Where instance records live: an index's registry
/// (`_brainy/instances/`, [`INDEX_REGISTRY`]) or the one of
/// `shoal serve --s3vectors` processes at the root of a store of S3
/// Vectors indexes (`_s3vectors/instances/`, see `catalog`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registry(pub &'static str);

/// An index's instance registry.
pub(crate) const INDEX_REGISTRY: Registry = Registry(INSTANCES_PREFIX);

impl Registry {
    fn key(self, instance_id: &str) -> String {
        if self == INDEX_REGISTRY {
            return instance_key(instance_id);
        }
        format!("{}{instance_id}.json", self.0)
    }

    fn id_of(self, key: &str) -> Option<&str> {
        if self == INDEX_REGISTRY {
            return instance_id_from_key(key);
        }
        key.strip_prefix(self.0)?.strip_suffix(".json")
    }
}

/// Writes (creates or replaces) an instance's own record.
pub(crate) async fn write_record(
    store: &dyn ObjectStore,
    rec: &InstanceRecord,
) -> Result<(), CoordError> {
    write_record_in(store, INDEX_REGISTRY, rec).await
}

/// [`write_record`] in `registry`.
pub(crate) async fn write_record_in(
    store: &dyn ObjectStore,
    registry: Registry,
    rec: &InstanceRecord,
) -> Result<(), CoordError> {
    let bytes = serde_json::to_vec_pretty(rec).expect("serializable");
    store
        .put(&registry.key(&rec.instance_id), Bytes::from(bytes))
        .await?;
    Ok(())
}

/// Removes an instance's record (Ok if already gone).
pub(crate) async fn remove_record(
    store: &dyn ObjectStore,
    instance_id: &str,
) -> Result<(), CoordError> {
    remove_record_in(store, INDEX_REGISTRY, instance_id).await
}

/// [`remove_record`] in `registry`.
pub(crate) async fn remove_record_in(
    store: &dyn ObjectStore,
    registry: Registry,
    instance_id: &str,
) -> Result<(), CoordError> {
    store.delete(&registry.key(instance_id)).await?;
    Ok(())
}

/// Every parsable instance record. Corrupt records are logged (with their
/// key) and skipped: one bad object must not stop an instance from
/// joining. Records deleted between LIST and GET are skipped too.
pub async fn list_records(store: &dyn ObjectStore) -> Result<Vec<InstanceRecord>, CoordError> {
    list_records_in(store, INDEX_REGISTRY).await
}

/// [`list_records`] of `registry`.
pub(crate) async fn list_records_in(
    store: &dyn ObjectStore,
    registry: Registry,
) -> Result<Vec<InstanceRecord>, CoordError> {
    let mut out = Vec::new();
    for meta in store.list(registry.0).await? {
        if registry.id_of(&meta.key).is_none() {
            continue;
        }
        match store.get(&meta.key).await {
            Ok(got) => match parse_json::<InstanceRecord>(&meta.key, &got.bytes) {
                Ok(rec) => out.push(rec),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable instance record"),
            },
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Records of instances alive at `now`.
pub async fn live_records(
    store: &dyn ObjectStore,
    now: SystemTime,
    timeout: Duration,
) -> Result<Vec<InstanceRecord>, CoordError> {
    Ok(list_records(store)
        .await?
        .into_iter()
        .filter(|r| r.is_alive(now, timeout))
        .collect())
}

/// Deletes the records of instances silent for longer than `timeout`
/// (writers do this). Returns the removed ids. If a stale instance comes
/// back between our read and our delete, its next heartbeat recreates its
/// record, so the race costs at most one heartbeat interval of visibility.
pub(crate) async fn remove_stale(
    store: &dyn ObjectStore,
    now: SystemTime,
    timeout: Duration,
    keep: &str,
) -> Result<Vec<String>, CoordError> {
    remove_stale_in(store, INDEX_REGISTRY, now, timeout, keep).await
}

/// [`remove_stale`] in `registry`.
pub(crate) async fn remove_stale_in(
    store: &dyn ObjectStore,
    registry: Registry,
    now: SystemTime,
    timeout: Duration,
    keep: &str,
) -> Result<Vec<String>, CoordError> {
    let mut removed = Vec::new();
    for rec in list_records_in(store, registry).await? {
        if rec.instance_id != keep && !rec.is_alive(now, timeout) {
            remove_record_in(store, registry, &rec.instance_id).await?;
            removed.push(rec.instance_id);
        }
    }
    Ok(removed)
}
