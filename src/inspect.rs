//! Looking at a bucket from outside the query path: `status` (config,
//! instances, per-partition numbers from the manifests) and `verify`
//! (reads every manifest and segment, checks checksums, counts and
//! references, lists orphans). Both are administrative: `verify` reads
//! everything and lists `vectors/`.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;

use crate::coord::index_manifest::{missing_index_manifest, read_index_manifest, IndexManifest};
use crate::coord::instance::{list_records, InstanceRecord};
use crate::coord::manifest::{missing, partition_of_key, read_manifest};
use crate::coord::paths::{manifest_key, INDEX_MANIFEST_KEY, INDEX_PREFIX, VECTORS_PREFIX};
use crate::coord::{Config, CoordError};
use crate::segment::{self, Shape};
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
    let timeout = std::time::Duration::from_secs(config.settings.instance_timeout_seconds);
    let instances = list_records(store)
        .await?
        .into_iter()
        .map(|r| InstanceStatus {
            alive: r.is_alive(now, timeout),
            heartbeat_age_s: r.heartbeat_age(now).map(|d| d.as_secs_f64()),
            record: r,
        })
        .collect();
    let mut partitions = Vec::new();
    let mut totals = PartitionStatus::default();
    let mut indexed_records = 0u64;
    let mut problems = Vec::new();
    let n = config.settings.partition_count;
    let index_manifest = match read_index_manifest(store, n).await? {
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
    };
    let mut index = IndexStatus {
        generation: index_manifest.generation,
        live_rows: index_manifest.live_rows(),
        bytes: index_manifest.shards.iter().map(|s| s.bytes).sum(),
        retired: index_manifest.retired.len() as u64,
        lease_holder: index_manifest.lease.as_ref().map(|l| l.holder.clone()),
        shards: index_manifest.shards.clone(),
        ..Default::default()
    };
    for p in 0..n {
        let mut ps = PartitionStatus {
            partition: p,
            watermark: index_manifest.watermark(p),
            ..Default::default()
        };
        let found = read_manifest(store, p).await?;
        if found.is_none() && config.settings.partitions_initialized {
            problems.push(Problem {
                key: manifest_key(p),
                message: missing(p).to_string(),
            });
        }
        if let Some((m, _)) = found {
            let mut indexed = 0;
            for s in m.segments.iter().filter(|s| s.seq > ps.watermark) {
                index.tail_records += s.records;
                let age = crate::coord::clock::parse_time(&s.created_at)
                    .and_then(|t| now.duration_since(t).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                index.lag_seconds = index.lag_seconds.max(age);
            }
            for s in &m.segments {
                ps.segments += 1;
                ps.records += s.records;
                ps.tombstones += s.tombstones;
                ps.bytes += s.bytes;
                if s.indexed {
                    indexed += s.records;
                }
            }
            indexed_records += indexed;
            ps.indexed_fraction = if ps.records == 0 {
                0.0
            } else {
                indexed as f64 / ps.records as f64
            };
        }
        totals.segments += ps.segments;
        totals.records += ps.records;
        totals.tombstones += ps.tombstones;
        totals.bytes += ps.bytes;
        partitions.push(ps);
    }
    totals.partition = config.settings.partition_count;
    totals.indexed_fraction = if totals.records == 0 {
        0.0
    } else {
        indexed_records as f64 / totals.records as f64
    };
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

/// One thing wrong in the bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub manifests: u64,
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Index shards read, and their live rows.
    pub shards: u64,
    pub shard_rows: u64,
    /// Corrupt, missing or inconsistent objects.
    pub problems: Vec<Problem>,
    /// Objects under `vectors/` that no manifest references (left by
    /// crashed or losing writers and compactors; GC removes them).
    pub orphans: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every manifest and every segment it references and checks them;
/// lists `vectors/` to find orphans and stray objects.
pub(crate) async fn verify(
    store: &dyn ObjectStore,
    config: &Config,
) -> Result<VerifyReport, CoordError> {
    let s = &config.settings;
    let shape = Shape {
        dimensions: s.dimensions as usize,
        metric: s.metric(),
    };
    let mut report = VerifyReport::default();
    let mut referenced = HashSet::new();
    let mut without_manifest = std::collections::BTreeMap::new();
    // What the index checks need from this pass: the readable manifests,
    // and the ids of every segment read.
    let mut manifests = Vec::new();
    let mut segment_ids: std::collections::HashMap<String, Vec<String>> = Default::default();
    for p in 0..s.partition_count {
        referenced.insert(manifest_key(p));
        let m = match read_manifest(store, p).await {
            Ok(Some((m, _))) => m,
            Ok(None) => {
                without_manifest.insert(p, 0usize);
                continue;
            }
            Err(CoordError::Store(e)) if !e.is_retryable() => {
                report.problems.push(Problem {
                    key: manifest_key(p),
                    message: e.to_string(),
                });
                continue;
            }
            Err(CoordError::Corrupt { key, reason, found }) => {
                report.problems.push(Problem {
                    key,
                    message: format!("{reason}; found: {found}"),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        report.manifests += 1;
        for entry in &m.segments {
            referenced.insert(entry.key.clone());
            report.segments += 1;
            let problem = |message: String| Problem {
                key: entry.key.clone(),
                message,
            };
            let seg = match segment::load(store, &entry.key, shape).await {
                Ok(seg) => seg,
                Err(segment::LoadError::Store(e)) if e.is_retryable() => return Err(e.into()),
                Err(segment::LoadError::Store(e)) => {
                    report
                        .problems
                        .push(problem(format!("referenced by {}: {e}", manifest_key(p))));
                    continue;
                }
                Err(e) => {
                    report.problems.push(problem(e.to_string()));
                    continue;
                }
            };
            segment_ids.insert(entry.key.clone(), seg.ids().to_vec());
            let stored = seg.stored_bytes();
            report.records += seg.len() as u64;
            report.bytes += stored;
            let tombs = seg.tombstone_count() as u64;
            if seg.len() as u64 != entry.records || tombs != entry.tombstones {
                report.problems.push(problem(format!(
                    "holds {} records / {tombs} tombstones; the manifest says {} / {}",
                    seg.len(),
                    entry.records,
                    entry.tombstones
                )));
            }
            if stored != entry.bytes {
                report.problems.push(problem(format!(
                    "is {stored} bytes; the manifest says {}",
                    entry.bytes
                )));
            }
            if seg.header().has_index != entry.indexed {
                report.problems.push(problem(format!(
                    "index flag {} disagrees with the manifest ({})",
                    seg.header().has_index,
                    entry.indexed
                )));
            }
        }
        manifests.push((p, m));
    }
    let read = PartitionsRead {
        manifests,
        segment_ids,
    };
    verify_index(store, s, shape, &read, &mut report, &mut referenced).await?;
    for obj in store.list(INDEX_PREFIX).await? {
        if !referenced.contains(&obj.key) {
            report.orphans.push(obj.key);
        }
    }
    for obj in store.list(VECTORS_PREFIX).await? {
        if referenced.contains(&obj.key) {
            continue;
        }
        let partition = partition_of_key(&obj.key).filter(|&p| p < s.partition_count);
        if let Some(n) = partition.and_then(|p| without_manifest.get_mut(&p)) {
            // Unreachable, not orphaned: the manifest that named it is gone.
            *n += 1;
            continue;
        }
        if partition.is_some() && obj.key.ends_with(".seg") {
            report.orphans.push(obj.key);
        } else {
            report.problems.push(Problem {
                key: obj.key,
                message: "unexpected object under vectors/ (not a partition's manifest or segment)"
                    .into(),
            });
        }
    }
    for (p, objects) in without_manifest {
        if objects == 0 && !s.partitions_initialized {
            continue; // an index from before manifests were created at init
        }
        report.problems.push(Problem {
            key: manifest_key(p),
            message: format!(
                "{}; {objects} object(s) under its partition are unreachable",
                missing(p)
            ),
        });
    }
    Ok(report)
}

/// Checks the index manifest and everything it names: every shard decodes
/// (checksums) and has the rows the manifest says, every deletion vector
/// decodes and marks the dead rows it says, no id is live in two shards
/// (newest wins), and no partition retired segments past its watermark.
/// Adds the keys it references (retired ones included) to `referenced`.
async fn verify_index(
    store: &dyn ObjectStore,
    s: &crate::coord::Settings,
    shape: Shape,
    read: &PartitionsRead,
    report: &mut VerifyReport,
    referenced: &mut HashSet<String>,
) -> Result<(), CoordError> {
    let index = match read_index_manifest(store, s.partition_count).await {
        Ok(Some((m, _))) => m,
        Ok(None) => {
            if s.partitions_initialized {
                report.problems.push(Problem {
                    key: INDEX_MANIFEST_KEY.into(),
                    message: missing_index_manifest().to_string(),
                });
            }
            return Ok(());
        }
        Err(CoordError::Corrupt { key, reason, found }) => {
            report.problems.push(Problem {
                key,
                message: format!("{reason}; found: {found}"),
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    referenced.insert(INDEX_MANIFEST_KEY.to_string());
    referenced.extend(index.retired.iter().map(|r| r.key.clone()));
    // id -> (shard, hash of its live row's vector)
    let mut live: std::collections::HashMap<String, (String, u64)> =
        std::collections::HashMap::new();
    for shard in &index.shards {
        referenced.insert(shard.key.clone());
        referenced.extend(shard.deletions.iter().cloned());
        report.shards += 1;
        let problem = |key: &str, message: String| Problem {
            key: key.to_string(),
            message,
        };
        let seg = match segment::load(store, &shard.key, shape).await {
            Ok(seg) => seg,
            Err(segment::LoadError::Store(e)) if e.is_retryable() => return Err(e.into()),
            Err(e) => {
                report
                    .problems
                    .push(problem(&shard.key, format!("index shard: {e}")));
                continue;
            }
        };
        if seg.len() as u64 != shard.rows {
            report.problems.push(problem(
                &shard.key,
                format!(
                    "holds {} rows; the index manifest says {}",
                    seg.len(),
                    shard.rows
                ),
            ));
            continue;
        }
        let dv = match &shard.deletions {
            None => crate::segment::deletions::DeletionVector::new(shard.rows),
            Some(key) => {
                let got = match store.get(key).await {
                    Ok(got) => got,
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(e) => {
                        report.problems.push(problem(key, e.to_string()));
                        continue;
                    }
                };
                match crate::segment::deletions::DeletionVector::decode(key, &got.bytes, shard.rows)
                {
                    Ok(dv) => dv,
                    Err(e) => {
                        report.problems.push(problem(key, e.to_string()));
                        continue;
                    }
                }
            }
        };
        if dv.dead() != shard.dead {
            report.problems.push(problem(
                &shard.key,
                format!(
                    "its deletion vector marks {} dead rows; the index manifest says {}",
                    dv.dead(),
                    shard.dead
                ),
            ));
        }
        for (i, id) in seg.ids().iter().enumerate() {
            if dv.is_dead(i as u64) {
                continue;
            }
            report.shard_rows += 1;
            let row = (shard.key.clone(), vector_hash(seg.vector(i)));
            if let Some((other, _)) = live.insert(id.clone(), row) {
                report.problems.push(problem(
                    &shard.key,
                    format!("id {id:?} is live here and in {other}"),
                ));
            }
        }
    }
    for (p, m) in &read.manifests {
        let p = *p;
        if m.indexed_through > index.watermark(p) {
            report.problems.push(Problem {
                key: manifest_key(p),
                message: format!(
                    "retired segments through seq {} into the index, whose watermark for it \
                     is {}: records are missing",
                    m.indexed_through,
                    index.watermark(p)
                ),
            });
        }
        let w = index.watermark(p);
        account(store, shape, p, m, w, read, &live, report).await?;
    }
    Ok(())
}

/// What `verify`'s pass over the partitions read, for the index checks.
struct PartitionsRead {
    manifests: Vec<(u32, crate::coord::manifest::Manifest)>,
    /// The ids of each segment read, by key.
    segment_ids: std::collections::HashMap<String, Vec<String>>,
}

fn vector_hash(v: &[f32]) -> u64 {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Checks that partition `p`'s records committed at or below the
/// watermark `w`, as far as their segments are still in the bucket (live,
/// or retired and not yet collected), are accounted for in the shards:
/// the newest record of each id among them is live in a shard row with
/// its vector (an upsert) or live nowhere (a delete), unless the id has a
/// newer record in the tail.
#[allow(clippy::too_many_arguments)]
async fn account(
    store: &dyn ObjectStore,
    shape: Shape,
    p: u32,
    m: &crate::coord::manifest::Manifest,
    w: u64,
    read: &PartitionsRead,
    live: &std::collections::HashMap<String, (String, u64)>,
    report: &mut VerifyReport,
) -> Result<(), CoordError> {
    use crate::coord::paths::{segment_origin, SegmentOrigin};
    if w == 0 {
        return Ok(());
    }
    let output = |key: &str| segment_origin(key) == Some(SegmentOrigin::Compaction);
    // In commit order; a compaction's outputs after the inputs they share
    // a seq with.
    let mut covered: Vec<(u64, bool, &str)> = m
        .retired
        .iter()
        .filter_map(|r| Some((r.seq.filter(|s| *s <= w)?, r.key.as_str())))
        .chain(
            m.segments
                .iter()
                .filter(|e| e.seq <= w)
                .map(|e| (e.seq, e.key.as_str())),
        )
        .map(|(seq, key)| (seq, output(key), key))
        .collect();
    covered.sort();
    let mut segs = Vec::new();
    for (_, _, key) in covered {
        match segment::load(store, key, shape).await {
            Ok(seg) => segs.push(seg),
            Err(e) if e.is_missing() => {} // collected after its grace period
            Err(segment::LoadError::Store(e)) if e.is_retryable() => return Err(e.into()),
            Err(_) => {} // a damaged live segment is reported by the main pass
        }
    }
    let tail_ids: HashSet<&str> = m
        .segments
        .iter()
        .filter(|e| e.seq > w)
        .filter_map(|e| read.segment_ids.get(&e.key))
        .flatten()
        .map(String::as_str)
        .collect();
    let mut newest = crate::segment::LiveSet::default();
    for seg in &segs {
        newest.absorb(seg);
    }
    let key = manifest_key(p);
    for (id, loc) in newest.newest() {
        if tail_ids.contains(id) {
            continue;
        }
        let seg = &segs[loc.seg as usize];
        let message = match (loc.tombstone, live.get(id)) {
            (false, None) => format!(
                "record {id:?}, committed at or below the index watermark {w}, is in no index \
                 shard"
            ),
            (false, Some((shard, h))) if *h != vector_hash(seg.vector(loc.pos as usize)) => {
                format!("index shard {shard} holds an older version of {id:?} than partition {p}")
            }
            (true, Some((shard, _))) => format!(
                "{id:?} was deleted at or below the index watermark {w} but is live in {shard}"
            ),
            _ => continue,
        };
        report.problems.push(Problem {
            key: key.clone(),
            message,
        });
    }
    Ok(())
}
