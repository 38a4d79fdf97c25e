//! Compaction (DESIGN section 9): merge a *prefix* of a partition's
//! segments into fewer, indexed segments, dropping shadowed versions.
//!
//! **Why a prefix.** Compaction takes every segment with seq ≤ S. Any older
//! version of an id in it is then also in it, so dropping shadowed versions
//! cannot resurrect anything. Segments committed after the compaction
//! started (seq > S) are kept as they are and stay newer: the outputs take
//! seq S (they hold distinct ids, so sharing a seq is safe).
//!
//! **Tails only, tombstones kept** (DESIGN section 11). The partition's
//! segments are the tail above the index watermark `W[p]`: compaction
//! never merges a segment at or below it, and keeps the newest tombstone
//! of every deleted id, in an output segment of its own, because it may
//! hide a row of an index shard that the indexer built meanwhile. The
//! indexer consumes tombstones when it indexes them.
//!
//! **Finishing an indexer's retirement** (issue 28 F6). Segments at or
//! below `W[p]` still listed mean an indexer committed the index manifest
//! and stopped (crashed, killed, cut short) before retiring them. The
//! committed watermark says the shards cover them, and retiring through
//! it is idempotent, so compaction retires them itself
//! ([`retire_covered`]), without the indexer lease, and goes on with the
//! tail; it never waits for an indexer to come back.
//!
//! **Commit.** Outputs are written create-only under fresh keys, then the
//! manifest is compare-and-swapped: the inputs must still be its first
//! entries (else another compactor won and this one gives up, leaving its
//! outputs for GC); they are replaced by the outputs, everything committed
//! meanwhile is kept, and the inputs move to `retired` so GC waits a grace
//! period before deleting them. A lost race re-reads and rebases.
//!
//! **Indexes.** Outputs of at least `index.minRecords` records get the
//! configured ANN index (`ivf`: records grouped by cluster, one group of
//! sections per cluster; `hnsw`: an instant-distance graph, segments capped
//! at `hnswMaxSegmentRecords`); smaller ones stay exact-scan.

pub mod gc;
pub mod indexer;
pub mod lease;
pub mod repair;
mod routed;
pub mod schedule;
pub mod shard_repair;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::coord::cas::{put_new_object, Backoff};
use crate::coord::clock::{format_time, unix_millis, DynClock};
use crate::coord::index_manifest::read_index_manifest;
use crate::coord::manifest::{
    load_manifest, replace_prefix, retire_indexed, CommitRules, Manifest, Replaced, SegmentEntry,
    SegmentStats,
};
use crate::coord::paths::{new_segment_key, segment_origin, SegmentOrigin};
use crate::coord::{CoordError, Settings};
use crate::index;
use crate::record::Prepared;
use crate::segment::{
    self, encode_segment, encode_segment_groups, LiveSet, Segment, SegmentError, SegmentHeader,
    Shape, FORMAT_VERSION,
};
use crate::store::{ObjectStore, StoreError};
use crate::vocab::{AnnKind, IndexSettings, Metric};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

impl CompactError {
    /// What a caller can do about it.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        match self {
            CompactError::Coord(e) => e.kind(),
            CompactError::Store(e) => e.kind(),
            CompactError::Segment(_) => crate::vocab::ErrorKind::Corrupt,
        }
    }
}

impl From<segment::LoadError> for CompactError {
    fn from(e: segment::LoadError) -> Self {
        match e {
            segment::LoadError::Store(e) => CompactError::Store(e),
            segment::LoadError::Segment(e) => CompactError::Segment(e),
        }
    }
}

/// How to compact.
#[derive(Clone, Debug, Default)]
pub struct CompactOptions {
    /// Compact even if the policy says it is not needed.
    pub force: bool,
    /// Compact only segments with seq ≤ this (default: all current ones).
    pub upto_seq: Option<u64>,
}

/// What one partition's compaction did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompactReport {
    pub partition: u32,
    pub inputs: usize,
    pub outputs: usize,
    pub records_in: u64,
    pub records_out: u64,
    /// Shadowed versions dropped.
    pub dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub index: String,
    pub index_seconds: f64,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Compacted(CompactReport),
    /// The policy did not call for it (or the partition is empty).
    NotNeeded,
    /// Another compactor replaced the inputs first; our outputs are garbage.
    Superseded,
}

/// Whether the policy asks to compact this manifest (manifest data only:
/// segment count, writers' tombstones, unindexed records). Tombstones in a
/// compaction's output do not count: compacting again would keep them.
pub(crate) fn policy_wants(m: &Manifest, ix: &IndexSettings) -> bool {
    let segs = m.segments.len();
    if segs == 0 {
        return false;
    }
    let records: u64 = m.total_records();
    let tombstones: u64 = m
        .segments
        .iter()
        .filter(|s| segment_origin(&s.key) != Some(SegmentOrigin::Compaction))
        .map(|s| s.tombstones)
        .sum();
    let unindexed: u64 = m
        .segments
        .iter()
        .filter(|s| !s.indexed)
        .map(|s| s.records)
        .sum();
    segs >= ix.compact_min_segments as usize
        || (records > 0 && tombstones as f64 / records as f64 >= ix.compact_dead_fraction)
        || (ix.kind != AnnKind::None && unindexed >= ix.min_records)
}

/// The segments with seq ≤ `upto` (all when `None`): always a prefix of
/// the manifest, which is what makes dropping tombstones safe.
pub fn select_prefix(m: &Manifest, upto: Option<u64>) -> Vec<SegmentEntry> {
    // Broken on purpose: leave the oldest segment out of the "prefix".
    let skip = usize::from(
        crate::mutation::active(crate::mutation::Mutation::CompactionBeyondPrefix)
            && m.segments.len() > 2,
    );
    m.segments
        .iter()
        .skip(skip)
        .take_while(|s| upto.is_none_or(|u| s.seq <= u))
        .cloned()
        .collect()
}

/// The `upto_seq` of a piece of partition `partition`: its oldest
/// `1/2^shift` of segments (at least two), for a partition whose whole
/// compaction outran the time an invocation has (`None`: nothing to cut,
/// compact it whole).
pub(crate) async fn piece_upto(
    store: &dyn ObjectStore,
    settings: &Settings,
    partition: u32,
    shift: u32,
) -> Result<Option<u64>, CompactError> {
    let (m, _) = load_manifest(store, partition, settings.partitions_initialized).await?;
    let n = m.segments.len();
    let take = (n >> shift.min(31)).max(2);
    Ok((take < n).then(|| m.segments[take - 1].seq))
}

/// The newest record of each id in a prefix, oldest segment first,
/// shadowed versions dropped: the live records, and the tombstones of
/// deleted ids. Output order follows each record's newest position.
pub(crate) fn newest_records(segments: &[Arc<Segment>]) -> (Vec<Prepared>, Vec<Prepared>) {
    let mut live = LiveSet::default();
    for seg in segments {
        live.absorb(seg);
    }
    let mut newest: Vec<_> = live.newest().collect();
    newest.sort_by_key(|(_, loc)| (loc.seg, loc.pos));
    let (mut out, mut tombstones) = (Vec::new(), Vec::new());
    for (id, loc) in newest {
        let seg = &segments[loc.seg as usize];
        let i = loc.pos as usize;
        let rec = Prepared {
            id: id.to_string(),
            vector: seg.vector(i).to_vec(),
            metadata: seg.metadata_raw(i).to_vec(),
            tombstone: loc.tombstone,
        };
        if loc.tombstone {
            tombstones.push(rec);
        } else {
            out.push(rec);
        }
    }
    (out, tombstones)
}

/// One output segment, encoded.
struct Output {
    bytes: bytes::Bytes,
    records: u64,
    tombstones: u64,
    indexed: bool,
}

/// Encodes the live records into segments of at most the configured size,
/// with the configured index (see [`crate::index::SegmentAnn`]) on those
/// large enough for one.
fn build_outputs(
    records: Vec<Prepared>,
    dims: usize,
    metric: Metric,
    ix: &IndexSettings,
    header: &SegmentHeader,
    index_seconds: &mut f64,
) -> Vec<Output> {
    let cap = match ix.kind {
        AnnKind::Hnsw => ix.hnsw_max_segment_records.min(ix.max_segment_records),
        _ => ix.max_segment_records,
    }
    .max(1) as usize;
    let mut outs = Vec::new();
    for chunk in records.chunks(cap) {
        let h = SegmentHeader {
            record_count: chunk.len() as u64,
            has_index: false,
            ..header.clone()
        };
        let records = chunk.len() as u64;
        let built = (records >= ix.min_records.max(1))
            .then(|| {
                let t = Instant::now();
                let built = index::build(chunk.to_vec(), dims, metric, ix);
                *index_seconds += t.elapsed().as_secs_f64();
                built
            })
            .flatten();
        outs.push(match built {
            None => Output {
                bytes: encode_segment(&h, chunk, None),
                records,
                tombstones: 0,
                indexed: false,
            },
            Some(b) => {
                let groups: Vec<&[Prepared]> = b.groups.iter().map(|g| g.as_slice()).collect();
                Output {
                    bytes: encode_segment_groups(&h, &groups, Some(&b.bytes)),
                    records,
                    tombstones: 0,
                    indexed: true,
                }
            }
        });
    }
    outs
}

/// Compacts one partition (see the module docs).
pub async fn compact_partition(
    store: &dyn ObjectStore,
    settings: &Settings,
    partition: u32,
    writer_id: &str,
    clock: &DynClock,
    opts: &CompactOptions,
) -> Result<Outcome, CompactError> {
    let started = Instant::now();
    let ix = settings.index();
    let inputs = compaction_inputs(store, settings, partition, clock, &ix, opts).await?;
    let Some(inputs) = inputs else {
        return Ok(Outcome::NotNeeded);
    };
    let shape = Shape {
        dimensions: settings.dimensions as usize,
        metric: settings.metric(),
    };
    let mut segments = Vec::with_capacity(inputs.len());
    for e in &inputs {
        segments.push(Arc::new(
            segment::load_at(store, &e.key, e.range(), shape).await?,
        ));
    }
    let bytes_in = segments.iter().map(|s| s.stored_bytes()).sum();
    let records_in: u64 = segments.iter().map(|s| s.len() as u64).sum();
    let (live, mut tombstones) = newest_records(&segments);
    if crate::mutation::active(crate::mutation::Mutation::CompactionBeyondPrefix) {
        tombstones.clear(); // broken on purpose
    }
    let records_out = (live.len() + tombstones.len()) as u64;
    let now = clock.now();
    let header = SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: shape.dimensions as u32,
        metric: shape.metric,
        record_count: 0,
        created_at_ms: unix_millis(now),
        writer_id: writer_id.to_string(),
        has_index: false,
    };
    let (outputs, index_seconds) = encode_outputs(live, tombstones, &ix, header).await;
    // The outputs obey the commit age bound from their first PUT on.
    let written_at = clock.now();
    let (entries, bytes_out) = write_outputs(store, partition, outputs, now, writer_id).await?;
    // Retirements are stamped and pruned by the store's clock (F11).
    let store_now = crate::coord::skew::store_now(store, clock.as_ref()).await?;
    let retired_at = format_time(store_now);
    let rules = CommitRules::new(settings, written_at, clock.as_ref(), Backoff::default())
        .pruning_at(store_now);
    let replaced = replace_prefix(store, partition, &inputs, &entries, &retired_at, rules).await?;
    if replaced == Replaced::Superseded {
        tracing::info!(partition, "compaction superseded by another compactor");
        return Ok(Outcome::Superseded);
    }
    let report = CompactReport {
        partition,
        inputs: inputs.len(),
        outputs: entries.len(),
        records_in,
        records_out,
        dropped: records_in - records_out,
        bytes_in,
        bytes_out,
        index: if entries.iter().any(|e| e.indexed) {
            ix.kind.to_string()
        } else {
            "none".into()
        },
        index_seconds,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(?report, "compacted");
    Ok(Outcome::Compacted(report))
}

/// The prefix of the partition's segments to compact, or `None` when there
/// is nothing to do (policy, an empty prefix, or a prefix the index covers).
/// Segments the index covers are retired first (module docs).
async fn compaction_inputs(
    store: &dyn ObjectStore,
    settings: &Settings,
    partition: u32,
    clock: &DynClock,
    ix: &IndexSettings,
    opts: &CompactOptions,
) -> Result<Option<Vec<SegmentEntry>>, CompactError> {
    let init = settings.partitions_initialized;
    let (mut manifest, _) = load_manifest(store, partition, init).await?;
    if !opts.force && !policy_wants(&manifest, ix) {
        return Ok(None);
    }
    // Read after the partition manifest: a watermark at least as new as
    // any retirement it shows.
    let watermark = match read_index_manifest(store, settings.partition_count).await? {
        Some((m, _)) => m.watermark(partition),
        None => 0,
    };
    if manifest
        .segments
        .first()
        .is_some_and(|s| s.seq <= watermark)
    {
        // An indexer committed and stopped before retiring: finish it.
        if retire_covered(store, settings, clock, partition, watermark).await? {
            tracing::info!(
                partition,
                watermark,
                "retired segments an indexer left behind"
            );
        }
        manifest = load_manifest(store, partition, init).await?.0;
        if !opts.force && !policy_wants(&manifest, ix) {
            return Ok(None);
        }
    }
    let inputs = select_prefix(&manifest, opts.upto_seq);
    // Never merge what the index covers into the tail (after the
    // retirement above none is listed: a guard, not a path).
    if inputs.first().is_none_or(|s| s.seq <= watermark) {
        return Ok(None);
    }
    Ok(Some(inputs))
}

/// Retires partition `p`'s segments with seq <= `through` and records
/// `indexedThrough` (DESIGN section 11, commit order, step 7). `through`
/// must be a watermark read from a committed index manifest: then the
/// shards cover those segments, and retiring them is safe for anyone,
/// with or without the indexer lease, and idempotent (false: nothing
/// left to retire).
pub(crate) async fn retire_covered(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    p: u32,
    through: u64,
) -> Result<bool, CompactError> {
    // Retirements are stamped and pruned by the store's clock (F11).
    let store_now = crate::coord::skew::store_now(store, clock.as_ref()).await?;
    let rules = CommitRules::new(settings, clock.now(), clock.as_ref(), Backoff::default())
        .pruning_at(store_now);
    Ok(retire_indexed(store, p, through, &format_time(store_now), rules).await?)
}

/// Encodes the live records (indexed where large enough) and the
/// tombstones (in a segment of their own) off the async runtime; returns
/// the outputs and the seconds spent building indexes.
async fn encode_outputs(
    live: Vec<Prepared>,
    tombstones: Vec<Prepared>,
    ix: &IndexSettings,
    header: SegmentHeader,
) -> (Vec<Output>, f64) {
    let (dims, metric) = (header.dimensions as usize, header.metric);
    // Index builds are CPU-bound: keep them off the async runtime.
    crate::cpu::run({
        let ix = ix.clone();
        move || {
            let mut secs = 0.0;
            let mut outs = build_outputs(live, dims, metric, &ix, &header, &mut secs);
            if !tombstones.is_empty() {
                let h = SegmentHeader {
                    record_count: tombstones.len() as u64,
                    ..header
                };
                outs.push(Output {
                    records: tombstones.len() as u64,
                    tombstones: tombstones.len() as u64,
                    bytes: encode_segment(&h, &tombstones, None),
                    indexed: false,
                });
            }
            (outs, secs)
        }
    })
    .await
}

/// PUTs the outputs create-only under fresh keys; returns their manifest
/// entries and their total bytes.
async fn write_outputs(
    store: &dyn ObjectStore,
    partition: u32,
    outputs: Vec<Output>,
    now: std::time::SystemTime,
    writer_id: &str,
) -> Result<(Vec<SegmentEntry>, u64), CompactError> {
    let mut entries = Vec::with_capacity(outputs.len());
    let mut bytes_out = 0;
    for out in outputs {
        let key = new_segment_key(partition, now, SegmentOrigin::Compaction);
        let stats = SegmentStats {
            records: out.records,
            tombstones: out.tombstones,
            bytes: out.bytes.len() as u64,
            indexed: out.indexed,
        };
        bytes_out += stats.bytes;
        put_new_object(store, &key, out.bytes, Backoff::default()).await?;
        entries.push(SegmentEntry::new(key, stats, format_time(now), writer_id));
    }
    Ok((entries, bytes_out))
}

/// Compacts every partition (bounded concurrency), forced or by policy.
pub async fn compact_all(
    store: &dyn ObjectStore,
    settings: &Settings,
    writer_id: &str,
    clock: &DynClock,
    opts: &CompactOptions,
) -> Result<Vec<Outcome>, CompactError> {
    use futures::StreamExt;
    let jobs = (0..settings.partition_count).map(|p| async move {
        compact_partition(store, settings, p, writer_id, clock, opts).await
    });
    futures::stream::iter(jobs)
        .buffered(2)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
