//! `verify`: reads every partition manifest and every segment it
//! references, then the index manifest with its shards and deletion
//! vectors, checks checksums, counts and references, and lists `index/`
//! and `vectors/` for orphans and stray objects. Retryable store errors
//! fail the call; everything else found wrong becomes a [`Problem`].

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::Problem;
use crate::coord::index_manifest::{missing_index_manifest, read_index_manifest, IndexManifest};
use crate::coord::manifest::{missing, partition_of_key, read_manifest};
use crate::coord::paths::{
    legacy_manifest_key, manifest_key, INDEX_MANIFEST_KEY, INDEX_PREFIX, LEGACY_INDEX_MANIFEST_KEY,
    VECTORS_PREFIX,
};
use crate::coord::{Config, CoordError};
use crate::segment::deletions::DeletionVector;
use crate::segment::{self, Shape};
use crate::store::ObjectStore;

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
    // Partitions whose manifest is missing -> objects found under them.
    let mut without_manifest = BTreeMap::new();
    let read = verify_partitions(
        store,
        s,
        shape,
        &mut report,
        &mut referenced,
        &mut without_manifest,
    )
    .await?;
    verify_index(store, s, shape, &read, &mut report, &mut referenced).await?;
    list_unreferenced(store, s, &referenced, &mut without_manifest, &mut report).await?;
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

/// Reads every partition manifest and checks every segment it references;
/// notes the keys referenced and the partitions without a manifest.
async fn verify_partitions(
    store: &dyn ObjectStore,
    s: &crate::coord::Settings,
    shape: Shape,
    report: &mut VerifyReport,
    referenced: &mut HashSet<String>,
    without_manifest: &mut BTreeMap<u32, usize>,
) -> Result<PartitionsRead, CoordError> {
    // What the index checks need from this pass: the readable manifests,
    // and the ids of every segment read.
    let mut manifests = Vec::new();
    let mut segment_ids: HashMap<String, Vec<String>> = Default::default();
    for p in 0..s.partition_count {
        referenced.insert(manifest_key(p));
        referenced.insert(legacy_manifest_key(p)); // a moved marker (see `layout`)
        let m = match read_partition_manifest(store, p).await? {
            Ok(Some(m)) => m,
            Ok(None) => {
                without_manifest.insert(p, 0usize);
                continue;
            }
            Err(problem) => {
                report.problems.push(problem);
                continue;
            }
        };
        report.manifests += 1;
        for entry in &m.segments {
            referenced.insert(entry.key.clone());
            report.segments += 1;
            if let Some(ids) = verify_segment(store, shape, p, entry, report).await? {
                segment_ids.insert(entry.locator(), ids);
            }
        }
        manifests.push((p, m));
    }
    Ok(PartitionsRead {
        manifests,
        segment_ids,
    })
}

/// Partition `p`'s manifest (`None`: missing), or the problem that makes
/// it unreadable; fails only on errors worth retrying.
async fn read_partition_manifest(
    store: &dyn ObjectStore,
    p: u32,
) -> Result<Result<Option<crate::coord::manifest::Manifest>, Problem>, CoordError> {
    match read_manifest(store, p).await {
        Ok(found) => Ok(Ok(found.map(|(m, _)| m))),
        Err(CoordError::Store(e)) if !e.is_retryable() => Ok(Err(Problem {
            key: manifest_key(p),
            message: e.to_string(),
        })),
        Err(CoordError::Corrupt { key, reason, found }) => Ok(Err(Problem {
            key,
            message: format!("{reason}; found: {found}"),
        })),
        Err(e) => Err(e),
    }
}

/// Loads one segment and checks it against its manifest entry (records,
/// tombstones, bytes, index flag); returns its ids when it loaded.
async fn verify_segment(
    store: &dyn ObjectStore,
    shape: Shape,
    p: u32,
    entry: &crate::coord::manifest::SegmentEntry,
    report: &mut VerifyReport,
) -> Result<Option<Vec<String>>, CoordError> {
    let problem = |message: String| Problem {
        key: entry.key.clone(),
        message,
    };
    let seg = match segment::load_at(store, &entry.key, entry.range(), shape).await {
        Ok(seg) => seg,
        Err(segment::LoadError::Store(e)) if e.is_retryable() => return Err(e.into()),
        Err(segment::LoadError::Store(e)) => {
            report
                .problems
                .push(problem(format!("referenced by {}: {e}", manifest_key(p))));
            return Ok(None);
        }
        Err(e) => {
            report.problems.push(problem(e.to_string()));
            return Ok(None);
        }
    };
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
    Ok(Some(seg.ids().to_vec()))
}

/// Lists `index/` and `vectors/`: unreferenced objects are orphans, or
/// (under a partition without a manifest) counted as unreachable; anything
/// else under `vectors/` that is not a segment or a batch object is a problem.
async fn list_unreferenced(
    store: &dyn ObjectStore,
    s: &crate::coord::Settings,
    referenced: &HashSet<String>,
    without_manifest: &mut BTreeMap<u32, usize>,
    report: &mut VerifyReport,
) -> Result<(), CoordError> {
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
    Ok(())
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
    let Some(index) = read_index_for_verify(store, s, report).await? else {
        return Ok(());
    };
    referenced.insert(INDEX_MANIFEST_KEY.to_string());
    referenced.insert(LEGACY_INDEX_MANIFEST_KEY.to_string());
    referenced.extend(index.retired.iter().map(|r| r.key.clone()));
    super::routings::verify_routings(store, &index, report, referenced).await?;
    let mut live = LiveRows::new();
    for shard in &index.shards {
        referenced.insert(shard.key.clone());
        referenced.extend(shard.deletions.iter().cloned());
        report.shards += 1;
        verify_shard(store, shape, shard, &mut live, report).await?;
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

/// The index manifest, or `None` when there is nothing to check (missing
/// or corrupt: a problem, when it should be there).
async fn read_index_for_verify(
    store: &dyn ObjectStore,
    s: &crate::coord::Settings,
    report: &mut VerifyReport,
) -> Result<Option<IndexManifest>, CoordError> {
    match read_index_manifest(store, s.partition_count).await {
        Ok(Some((m, _))) => Ok(Some(m)),
        Ok(None) => {
            if s.partitions_initialized {
                report.problems.push(Problem {
                    key: INDEX_MANIFEST_KEY.into(),
                    message: missing_index_manifest().to_string(),
                });
            }
            Ok(None)
        }
        Err(CoordError::Corrupt { key, reason, found }) => {
            report.problems.push(Problem {
                key,
                message: format!("{reason}; found: {found}"),
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Live index rows: id -> (shard, hash of its live row's vector).
type LiveRows = HashMap<String, (String, u64)>;

/// Checks one shard against its index manifest entry (rows, deletion
/// vector, dead rows) and adds its live rows to `live`, reporting ids
/// already live in another shard.
async fn verify_shard(
    store: &dyn ObjectStore,
    shape: Shape,
    shard: &crate::coord::index_manifest::ShardEntry,
    live: &mut LiveRows,
    report: &mut VerifyReport,
) -> Result<(), CoordError> {
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
            return Ok(());
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
        return Ok(());
    }
    let Some(dv) = load_deletions(store, shard, report).await? else {
        return Ok(());
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
    Ok(())
}

/// A shard's deletion vector (all rows live when it has none), or `None`
/// when it cannot be read or decoded (a problem).
async fn load_deletions(
    store: &dyn ObjectStore,
    shard: &crate::coord::index_manifest::ShardEntry,
    report: &mut VerifyReport,
) -> Result<Option<DeletionVector>, CoordError> {
    let Some(key) = &shard.deletions else {
        return Ok(Some(DeletionVector::new(shard.rows)));
    };
    let problem = |message: String| Problem {
        key: key.to_string(),
        message,
    };
    let got = match store.get(key).await {
        Ok(got) => got,
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => {
            report.problems.push(problem(e.to_string()));
            return Ok(None);
        }
    };
    match DeletionVector::decode(key, &got.bytes, shard.rows) {
        Ok(dv) => Ok(Some(dv)),
        Err(e) => {
            report.problems.push(problem(e.to_string()));
            Ok(None)
        }
    }
}

/// What `verify`'s pass over the partitions read, for the index checks.
struct PartitionsRead {
    manifests: Vec<(u32, crate::coord::manifest::Manifest)>,
    /// The ids of each segment read, by locator (a batch object holds one
    /// segment per partition under one key).
    segment_ids: HashMap<String, Vec<String>>,
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
    live: &LiveRows,
    report: &mut VerifyReport,
) -> Result<(), CoordError> {
    use crate::coord::paths::{segment_origin, SegmentOrigin};
    if w == 0 {
        return Ok(());
    }
    let output = |key: &str| segment_origin(key) == Some(SegmentOrigin::Compaction);
    // In commit order; a compaction's outputs after the inputs they share
    // a seq with.
    type Covered<'a> = (u64, bool, &'a str, Option<(u64, u64)>);
    let mut covered: Vec<Covered> = m
        .retired
        .iter()
        .filter_map(|r| {
            let range = r.section.map(|s| (s.offset, s.length));
            Some((r.seq.filter(|s| *s <= w)?, r.key.as_str(), range))
        })
        .chain(
            m.segments
                .iter()
                .filter(|e| e.seq <= w)
                .map(|e| (e.seq, e.key.as_str(), e.range())),
        )
        .map(|(seq, key, range)| (seq, output(key), key, range))
        .collect();
    covered.sort();
    let mut segs = Vec::new();
    for (_, _, key, range) in covered {
        match segment::load_at(store, key, range, shape).await {
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
        .filter_map(|e| read.segment_ids.get(&e.locator()))
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
