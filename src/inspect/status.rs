//! `status`: config, instances and per-partition numbers read from the
//! manifests (one LIST + GET per instance record, one GET per manifest),
//! the index shards and the indexing lag, and (with `--live`) live and dead
//! counts filled in from a reader.

use std::time::SystemTime;

use serde::Serialize;

use super::Problem;
use crate::coord::index_manifest::{missing_index_manifest, read_index_manifest, IndexManifest};
use crate::coord::instance::{list_records, InstanceRecord};
use crate::coord::manifest::{missing, read_manifest};
use crate::coord::paths::{manifest_key, INDEX_MANIFEST_KEY};
use crate::coord::{Config, CoordError};
use crate::index::routing::RoutingHead;
use crate::store::{ObjectStore, RequestCounts};

#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub segments: u64,
    /// Records written, tombstones included (from the manifest).
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    /// Share of records that sit in indexed segments.
    pub indexed_fraction: f64,
    /// Live records: the newest version of each id, not deleted. Only
    /// with [`Status::set_live_counts`] (`status --live`), which loads every segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<u64>,
    /// Records compaction would drop: shadowed versions and tombstones
    /// (`records - live`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead: Option<u64>,
    /// The index watermark `W[p]`: segments up to this seq are in the
    /// index shards; the ones listed here are the tail.
    #[serde(default)]
    pub watermark: u64,
}

/// The index shards (DESIGN section 11) as the index manifest has them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IndexStatus {
    pub generation: u64,
    pub shards: Vec<crate::coord::index_manifest::ShardEntry>,
    /// Rows live in the shards (tail records may still shadow some).
    pub live_rows: u64,
    pub bytes: u64,
    /// Records in the partitions' tails, not yet in a shard.
    pub tail_records: u64,
    /// Age of the oldest tail segment: how far indexing lags behind.
    pub lag_seconds: f64,
    /// Shards and deletion vectors waiting for GC.
    pub retired: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    /// Each full-text searchable key's text index: ACTIVE once every
    /// shard has it, BUILDING while the indexer backfills it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<TextIndexStatus>,
    /// The routing new rows are assigned under (DESIGN section 12), and
    /// what a query probes with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingStatus>,
}

/// The index's current routing, read from its head.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoutingStatus {
    pub key: String,
    pub generation: u64,
    pub clusters: u32,
    /// Rows the routing was sized for.
    pub trained_rows: u64,
    /// Clusters a query must probe on this data for recall@10 of 0.95,
    /// measured when the routing was trained (0: its sample was too
    /// small to measure; the default probes hold).
    pub calibrated_probes: u32,
    /// Live rows in shards under this routing.
    pub rows: u64,
    /// Clusters a query probes now at the default `nprobe` (all of
    /// them, when that is every cluster).
    pub probes_at_default_nprobe: u64,
    /// Routings listed: two while shards move to the newer one.
    pub live_routings: u64,
}

/// Whether a searchable key's text index covers the whole index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TextIndexStatus {
    pub key: String,
    pub analyzer: String,
    /// `ACTIVE` or `BUILDING`.
    pub status: String,
    /// Shards the indexer still rebuilds with this key's text index
    /// (text queries scan them meanwhile).
    pub shards_pending: u64,
}

/// The text index status of each of `settings`' searchable keys over the
/// shards `m` lists.
pub(crate) fn text_index_status(
    m: &IndexManifest,
    settings: &crate::coord::Settings,
) -> Vec<TextIndexStatus> {
    let routed = settings.index().kind == crate::vocab::AnnKind::Ivf;
    m.text_backfill(&settings.text_fields())
        .into_iter()
        .map(|(key, analyzer, pending)| {
            let pending = if routed { pending } else { 0 };
            TextIndexStatus {
                key,
                analyzer,
                status: if pending == 0 { "ACTIVE" } else { "BUILDING" }.into(),
                shards_pending: pending,
            }
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    #[serde(flatten)]
    pub record: InstanceRecord,
    pub alive: bool,
    pub heartbeat_age_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub store: String,
    pub config: Config,
    pub instances: Vec<InstanceStatus>,
    pub partitions: Vec<PartitionStatus>,
    pub totals: PartitionStatus,
    pub index: IndexStatus,
    /// What is wrong (missing partition manifests); `shoal status` exits
    /// non-zero when there is anything here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// Requests made by this process so far (including this status call).
    pub requests: RequestCounts,
}

/// Config, instances and per-partition numbers: one LIST + GET per
/// instance record, one GET per manifest.
pub(crate) async fn status(
    store: &crate::store::Counted,
    config: &Config,
    now: SystemTime,
) -> Result<Status, CoordError> {
    let instances = instance_statuses(store, config, now).await?;
    let mut partitions = Vec::new();
    let mut totals = PartitionStatus::default();
    let mut indexed_records = 0u64;
    let mut problems = Vec::new();
    let n = config.settings.partition_count;
    let index_manifest = index_manifest_or_empty(store, config, &mut problems).await?;
    let mut index = IndexStatus::of(&index_manifest);
    index.text = text_index_status(&index_manifest, &config.settings);
    index.routing = routing_status(store, &index_manifest, &mut problems).await?;
    for p in 0..n {
        let watermark = index_manifest.watermark(p);
        let found = read_manifest(store, p).await?;
        if found.is_none() && config.settings.partitions_initialized {
            problems.push(Problem {
                key: manifest_key(p),
                message: missing(p).to_string(),
            });
        }
        let ps = match found {
            Some((m, _)) => {
                index.add_tail(&m, watermark, now);
                let (ps, indexed) = partition_status(p, watermark, &m);
                indexed_records += indexed;
                ps
            }
            None => PartitionStatus {
                partition: p,
                watermark,
                ..Default::default()
            },
        };
        totals.segments += ps.segments;
        totals.records += ps.records;
        totals.tombstones += ps.tombstones;
        totals.bytes += ps.bytes;
        partitions.push(ps);
    }
    totals.partition = config.settings.partition_count;
    totals.indexed_fraction = fraction(indexed_records, totals.records);
    Ok(Status {
        store: store.describe(),
        config: config.clone(),
        instances,
        partitions,
        totals,
        index,
        problems,
        requests: store.counts(),
    })
}

/// Every registered instance, with whether it is alive and its heartbeat's age.
async fn instance_statuses(
    store: &crate::store::Counted,
    config: &Config,
    now: SystemTime,
) -> Result<Vec<InstanceStatus>, CoordError> {
    let timeout = std::time::Duration::from_secs(config.settings.instance_timeout_seconds);
    Ok(list_records(store)
        .await?
        .into_iter()
        .map(|r| InstanceStatus {
            alive: r.is_alive(now, timeout),
            heartbeat_age_s: r.heartbeat_age(now).map(|d| d.as_secs_f64()),
            record: r,
        })
        .collect())
}

/// The index manifest, or an empty one when there is none (a problem once
/// the index was initialized with one).
async fn index_manifest_or_empty(
    store: &crate::store::Counted,
    config: &Config,
    problems: &mut Vec<Problem>,
) -> Result<IndexManifest, CoordError> {
    let n = config.settings.partition_count;
    Ok(match read_index_manifest(store, n).await? {
        Some((m, _)) => m,
        None => {
            if config.settings.partitions_initialized {
                problems.push(Problem {
                    key: INDEX_MANIFEST_KEY.into(),
                    message: missing_index_manifest().to_string(),
                });
            }
            IndexManifest::empty(n)
        }
    })
}

/// The current routing's status from its head (one ranged GET); a head
/// that cannot be read is a problem naming its key.
async fn routing_status(
    store: &crate::store::Counted,
    m: &IndexManifest,
    problems: &mut Vec<Problem>,
) -> Result<Option<RoutingStatus>, CoordError> {
    let Some(entry) = m.current_routing() else {
        return Ok(None);
    };
    let got = store
        .get_range(
            &entry.key,
            crate::store::ByteRange::new(0, entry.head_bytes),
        )
        .await;
    let head = match got {
        Ok(bytes) => RoutingHead::parse(&bytes).map_err(|e| e.0),
        Err(crate::store::StoreError::NotFound { .. }) => {
            Err("the routing object is missing".into())
        }
        Err(e) => return Err(e.into()),
    };
    let head = match head {
        Ok(h) if h.generation == entry.generation => h,
        Ok(h) => {
            let message = format!(
                "routing generation {} where the index manifest lists {}",
                h.generation, entry.generation
            );
            problems.push(Problem {
                key: entry.key.clone(),
                message,
            });
            return Ok(None);
        }
        Err(message) => {
            problems.push(Problem {
                key: entry.key.clone(),
                message: format!("routing head unreadable: {message}"),
            });
            return Ok(None);
        }
    };
    let rows: u64 = m
        .shards
        .iter()
        .filter(|s| s.routing == Some(entry.generation))
        .map(|s| s.rows - s.dead.min(s.rows))
        .sum();
    Ok(Some(RoutingStatus {
        key: entry.key.clone(),
        generation: entry.generation,
        clusters: head.clusters,
        trained_rows: head.trained_rows,
        calibrated_probes: head.calibrated_probes,
        rows,
        probes_at_default_nprobe: head
            .probes(crate::vocab::DEFAULT_NPROBE as usize, rows)
            .min(head.clusters as usize) as u64,
        live_routings: m.routings.len() as u64,
    }))
}

impl IndexStatus {
    /// The index manifest's own numbers; the tails are added per partition.
    fn of(m: &IndexManifest) -> IndexStatus {
        IndexStatus {
            generation: m.generation,
            live_rows: m.live_rows(),
            bytes: m.shards.iter().map(|s| s.bytes).sum(),
            retired: m.retired.len() as u64,
            lease_holder: m.lease.as_ref().map(|l| l.holder.clone()),
            shards: m.shards.clone(),
            ..Default::default()
        }
    }

    /// Counts a partition's tail (its segments past the watermark) and its
    /// oldest tail segment's age into the indexing lag.
    fn add_tail(&mut self, m: &crate::coord::manifest::Manifest, watermark: u64, now: SystemTime) {
        for s in m.segments.iter().filter(|s| s.seq > watermark) {
            self.tail_records += s.records;
            let age = crate::coord::clock::parse_time(&s.created_at)
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.lag_seconds = self.lag_seconds.max(age);
        }
    }
}

/// One partition's numbers from its manifest, and how many of its records
/// sit in indexed segments.
fn partition_status(
    p: u32,
    watermark: u64,
    m: &crate::coord::manifest::Manifest,
) -> (PartitionStatus, u64) {
    let mut ps = PartitionStatus {
        partition: p,
        watermark,
        ..Default::default()
    };
    let mut indexed = 0;
    for s in &m.segments {
        ps.segments += 1;
        ps.records += s.records;
        ps.tombstones += s.tombstones;
        ps.bytes += s.bytes;
        if s.indexed {
            indexed += s.records;
        }
    }
    ps.indexed_fraction = fraction(indexed, ps.records);
    (ps, indexed)
}

/// `part / whole`, 0 for an empty whole.
fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Status {
    /// Fills in live and dead counts per partition and in total from a
    /// reader's live counts per partition (`None`: not loaded, counted as
    /// 0). Counts come from the manifests the reader loaded, which under
    /// concurrent writes may be newer than the ones this status read; dead
    /// counts never go below zero.
    pub fn set_live_counts(&mut self, counts: &[Option<u64>]) {
        let (mut live, mut dead) = (0, 0);
        for ps in &mut self.partitions {
            let l = counts
                .get(ps.partition as usize)
                .copied()
                .flatten()
                .unwrap_or(0);
            let d = ps.records.saturating_sub(l);
            (ps.live, ps.dead) = (Some(l), Some(d));
            live += l;
            dead += d;
        }
        self.totals.live = Some(live);
        self.totals.dead = Some(dead);
    }
}
