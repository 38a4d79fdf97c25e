//! Compaction (DESIGN section 9): merge a *prefix* of a partition's
//! segments into fewer, indexed segments, dropping dead records.
//!
//! **Why a prefix.** Compaction takes every segment with seq ≤ S. Any older
//! version of an id in it is then also in it, so dropping shadowed versions
//! and tombstones cannot resurrect anything: a tombstone is only dropped
//! together with every version it hides. Segments committed after the
//! compaction started (seq > S) are kept as they are and stay newer: the
//! outputs take seq S (they hold distinct ids, so sharing a seq is safe).
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::coord::cas::{update_json, Backoff, Step};
use crate::coord::clock::{format_time, unix_millis, DynClock};
use crate::coord::config::IndexSettings;
use crate::coord::manifest::{read_manifest, Manifest, RetiredEntry, SegmentEntry};
use crate::coord::paths::{manifest_key, segment_key};
use crate::coord::{CoordError, Metric, Settings};
use crate::index::hnsw::{HnswIndex, HnswParams};
use crate::index::ivf::{self, IvfIndex, IvfParams};
use crate::record::Prepared;
use crate::segment::{
    decode_segment, encode_segment, encode_segment_groups, Segment, SegmentError, SegmentHeader,
    FORMAT_VERSION,
};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
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
    /// Shadowed versions and tombstones dropped.
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
/// segment count, tombstones, unindexed records).
pub fn policy_wants(m: &Manifest, ix: &IndexSettings) -> bool {
    let segs = m.segments.len();
    if segs == 0 {
        return false;
    }
    let records: u64 = m.total_records();
    let tombstones: u64 = m.segments.iter().map(|s| s.tombstones).sum();
    let unindexed: u64 = m
        .segments
        .iter()
        .filter(|s| !s.indexed)
        .map(|s| s.records)
        .sum();
    segs >= ix.compact_min_segments as usize
        || (records > 0 && tombstones as f64 / records as f64 >= ix.compact_dead_fraction)
        || (ix.kind != "none" && unindexed >= ix.min_records)
}

/// The segments with seq ≤ `upto` (all when `None`): always a prefix of
/// the manifest, which is what makes dropping tombstones safe.
pub fn select_prefix(m: &Manifest, upto: Option<u64>) -> Vec<SegmentEntry> {
    m.segments
        .iter()
        .take_while(|s| upto.is_none_or(|u| s.seq <= u))
        .cloned()
        .collect()
}

/// The live records of a prefix, oldest segment first: the newest version
/// of each id, tombstones and shadowed versions dropped. Output order
/// follows each record's newest position.
pub fn live_records(segments: &[Arc<Segment>]) -> Vec<Prepared> {
    let mut newest: HashMap<&str, (usize, usize)> = HashMap::new();
    for (j, seg) in segments.iter().enumerate() {
        for (i, id) in seg.ids.iter().enumerate() {
            newest.insert(id.as_str(), (j, i));
        }
    }
    let mut out = Vec::with_capacity(newest.len());
    for (j, seg) in segments.iter().enumerate() {
        for (i, id) in seg.ids.iter().enumerate() {
            if newest.get(id.as_str()) == Some(&(j, i)) && !seg.is_tombstone(i) {
                out.push(Prepared {
                    id: id.clone(),
                    vector: seg.vector(i).to_vec(),
                    metadata: seg.metadata_raw(i).to_vec(),
                    tombstone: false,
                });
            }
        }
    }
    out
}

/// One output segment, encoded.
struct Output {
    bytes: bytes::Bytes,
    records: u64,
    indexed: bool,
}

fn build_outputs(
    records: Vec<Prepared>,
    dims: usize,
    metric: Metric,
    ix: &IndexSettings,
    header: &SegmentHeader,
    index_seconds: &mut f64,
) -> Vec<Output> {
    let cap = match ix.kind.as_str() {
        "hnsw" => ix.hnsw_max_segment_records.min(ix.max_segment_records),
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
        let wants_index = ix.kind != "none" && chunk.len() as u64 >= ix.min_records.max(1);
        if !wants_index {
            outs.push(Output {
                bytes: encode_segment(&h, chunk, None),
                records: chunk.len() as u64,
                indexed: false,
            });
            continue;
        }
        let t = Instant::now();
        let vectors: Vec<f32> = chunk
            .iter()
            .flat_map(|r| r.vector.iter().copied())
            .collect();
        let bytes = if ix.kind == "hnsw" {
            let p = HnswParams {
                ef_construction: ix.ef_construction as usize,
                ef_search: ix.ef_search as usize,
                ..Default::default()
            };
            let graph = HnswIndex::build(&vectors, dims, metric, &p).to_bytes();
            *index_seconds += t.elapsed().as_secs_f64();
            encode_segment(&h, chunk, Some(&graph))
        } else {
            let p = IvfParams {
                nlist: ix.nlist.map(|n| n as usize),
                ..Default::default()
            };
            let (centroids, assign) = ivf::train(&vectors, dims, metric, &p);
            let nlist = centroids.len() / dims;
            let mut groups: Vec<Vec<Prepared>> = vec![Vec::new(); nlist];
            for (r, c) in chunk.iter().zip(&assign) {
                groups[*c as usize].push(r.clone());
            }
            let mut starts = vec![0u32];
            for g in &groups {
                starts.push(starts.last().unwrap() + g.len() as u32);
            }
            let index = IvfIndex {
                dims,
                centroids,
                starts,
            }
            .to_bytes();
            *index_seconds += t.elapsed().as_secs_f64();
            let slices: Vec<&[Prepared]> = groups.iter().map(|g| g.as_slice()).collect();
            encode_segment_groups(&h, &slices, Some(&index))
        };
        outs.push(Output {
            bytes,
            records: chunk.len() as u64,
            indexed: true,
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
    let Some((manifest, _)) = read_manifest(store, partition).await? else {
        return Ok(Outcome::NotNeeded);
    };
    if !opts.force && !policy_wants(&manifest, &ix) {
        return Ok(Outcome::NotNeeded);
    }
    let inputs = select_prefix(&manifest, opts.upto_seq);
    if inputs.is_empty() {
        return Ok(Outcome::NotNeeded);
    }
    let dims = settings.dimensions as usize;
    let metric = settings.metric();
    let mut segments = Vec::with_capacity(inputs.len());
    let mut bytes_in = 0;
    for e in &inputs {
        let got = store.get(&e.key).await?;
        bytes_in += got.bytes.len() as u64;
        let seg = decode_segment(&e.key, &got.bytes)?;
        crate::writer::check_segment_matches(&e.key, &seg.header, dims, metric)?;
        segments.push(Arc::new(seg));
    }
    let records_in: u64 = segments.iter().map(|s| s.len() as u64).sum();
    let live = live_records(&segments);
    let records_out = live.len() as u64;
    let now = clock.now();
    let header = SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: dims as u32,
        metric,
        record_count: 0,
        created_at_ms: unix_millis(now),
        writer_id: writer_id.to_string(),
        has_index: false,
    };
    // Index builds are CPU-bound: keep them off the async runtime.
    let (outputs, index_seconds) = tokio::task::spawn_blocking({
        let ix = ix.clone();
        move || {
            let mut secs = 0.0;
            let outs = build_outputs(live, dims, metric, &ix, &header, &mut secs);
            (outs, secs)
        }
    })
    .await
    .expect("index build task");
    let seq = inputs.last().expect("non-empty").seq;
    let mut entries = Vec::with_capacity(outputs.len());
    let mut bytes_out = 0;
    for out in outputs {
        let key = segment_key(
            partition,
            &format!(
                "{:013}-c{:016x}{:016x}",
                unix_millis(now),
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
        );
        bytes_out += out.bytes.len() as u64;
        let size = out.bytes.len() as u64;
        store.put_if_absent(&key, out.bytes).await?;
        entries.push(SegmentEntry {
            key,
            seq,
            records: out.records,
            tombstones: 0,
            bytes: size,
            created_at: format_time(now),
            writer_id: writer_id.to_string(),
            indexed: out.indexed,
            extra: Default::default(),
        });
    }
    let input_keys: Vec<String> = inputs.iter().map(|e| e.key.clone()).collect();
    let retired_at = format_time(clock.now());
    let mut superseded = false;
    let result =
        update_json::<Manifest, _>(store, &manifest_key(partition), Backoff::default(), |cur| {
            let mut m = cur.ok_or_else(|| {
                CoordError::MissingSetting(format!("{} vanished", manifest_key(partition)))
            })?;
            let still_prefix = m.segments.len() >= input_keys.len()
                && m.segments.iter().zip(&input_keys).all(|(s, k)| &s.key == k);
            if !still_prefix {
                superseded = true;
                return Ok(Step::Keep(m));
            }
            superseded = false;
            let rest = m.segments.split_off(input_keys.len());
            m.segments = entries.iter().cloned().chain(rest).collect();
            m.retired.extend(input_keys.iter().map(|k| RetiredEntry {
                key: k.clone(),
                retired_at: retired_at.clone(),
            }));
            Ok(Step::Write(m))
        })
        .await?;
    if superseded || !result.wrote {
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
            ix.kind.clone()
        } else {
            "none".into()
        },
        index_seconds,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(?report, "compacted");
    Ok(Outcome::Compacted(report))
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

/// Compacts, by policy, the partitions `writer` committed to since the
/// last call. What a writer runs in the background and after an ingest.
pub async fn compact_dirty(writer: &crate::writer::Writer) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for p in writer.take_dirty() {
        let r = compact_partition(
            writer.store().as_ref(),
            writer.settings(),
            p,
            writer.writer_id(),
            writer.clock(),
            &CompactOptions::default(),
        )
        .await;
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                writer.mark_dirty(p);
                tracing::warn!(partition = p, error = %e, "background compaction failed; will retry");
            }
        }
    }
    outcomes
}

/// Runs [`compact_dirty`] every `interval` until the handle is aborted:
/// writers compact in the background by default.
pub fn spawn_background(
    writer: crate::writer::Writer,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            compact_dirty(&writer).await;
        }
    })
}
