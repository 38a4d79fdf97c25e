//! The indexer (DESIGN section 11): turns each partition's segments above
//! its watermark into index shards.
//!
//! One round, under the indexer lease in the index manifest:
//! 1. read the index manifest (generation `g`, watermarks `W`);
//! 2. per partition, read its manifest and take its tail, the segments
//!    with seq > `W[p]`; the new watermark is the tail's last seq;
//! 3. resolve the tails (newest version of each id wins, tombstones kept);
//! 4. mark dead, in new deletion vectors, every live shard row whose id
//!    the tails hold (a newer version or a delete);
//! 5. write the new shard(s) from the tails' live records (the segment
//!    format, with the configured ANN index) and the deletion vectors,
//!    create-only under fresh keys;
//! 6. commit the index manifest by compare-and-swap if its generation is
//!    still `g` (else another indexer won: this round's objects become
//!    orphans for GC): new watermarks, new shards, new deletion vectors,
//!    replaced ones to `retired`.
//!
//! Retiring the covered segments from the partition manifests, and
//! readers searching the shards, are the next steps of the index-shards
//! work; until then the shards are written and checked but not read.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{build_outputs, CompactError};
use crate::coord::cas::{put_new_object, Backoff};
use crate::coord::clock::{format_time, unix_millis, DynClock};
use crate::coord::index_manifest::{
    acquire_lease, read_index_manifest, release_lease, update_index, IndexManifest, LeaseHeld,
    RetiredObject, ShardEntry,
};
use crate::coord::manifest::load_manifest;
use crate::coord::paths::{new_deletions_key, new_shard_key};
use crate::coord::{CoordError, Settings};
use crate::record::Prepared;
use crate::segment::deletions::DeletionVector;
use crate::segment::{self, LiveSet, Segment, SegmentHeader, Shape, FORMAT_VERSION};
use crate::store::ObjectStore;

/// How long an indexer may hold the lease without renewing it.
pub const LEASE_TTL: Duration = Duration::from_secs(10 * 60);

/// What one indexing round did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexRound {
    /// The index manifest generation this round committed (`None`: it
    /// committed nothing).
    pub generation: Option<u64>,
    /// Partitions whose watermark moved, and to which seq.
    pub advanced: BTreeMap<u32, u64>,
    /// Records taken from the tails (versions and tombstones).
    pub records_in: u64,
    /// Rows in the new shards.
    pub rows_out: u64,
    pub shards_written: Vec<String>,
    /// Older shard rows marked dead.
    pub rows_killed: u64,
    /// Another indexer holds the lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_held_by: Option<String>,
    /// Another indexer committed first; this round's objects are orphans.
    pub superseded: bool,
}

/// Runs one indexing round as `holder` (see the module docs).
pub async fn index_round(
    store: &dyn ObjectStore,
    settings: &Settings,
    holder: &str,
    clock: &DynClock,
) -> Result<IndexRound, CompactError> {
    let n = settings.partition_count;
    let mut round = IndexRound::default();
    match acquire_lease(store, n, holder, clock.now(), LEASE_TTL).await? {
        Ok(_) => {}
        Err(LeaseHeld { holder, .. }) => {
            round.lease_held_by = Some(holder);
            return Ok(round);
        }
    }
    let result = run_round(store, settings, clock, &mut round).await;
    if let Err(e) = release_lease(store, n, holder).await {
        tracing::warn!(error = %e, "could not release the indexer lease; it expires by itself");
    }
    result.map(|()| round)
}

async fn run_round(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    round: &mut IndexRound,
) -> Result<(), CompactError> {
    let n = settings.partition_count;
    let shape = Shape {
        dimensions: settings.dimensions as usize,
        metric: settings.metric(),
    };
    let Some((index, _)) = read_index_manifest(store, n).await? else {
        return Err(crate::coord::index_manifest::missing_index_manifest().into());
    };
    // The tails, and where each partition's watermark will move.
    let mut batch: Vec<Prepared> = Vec::new();
    let mut advanced = BTreeMap::new();
    for p in 0..n {
        let (m, _) = load_manifest(store, p, settings.partitions_initialized).await?;
        let w = index.watermark(p);
        let tail: Vec<_> = m.segments.iter().filter(|s| s.seq > w).collect();
        let Some(last) = tail.last() else { continue };
        let mut segs = Vec::with_capacity(tail.len());
        for e in &tail {
            segs.push(Arc::new(segment::load(store, &e.key, shape).await?));
        }
        round.records_in += segs.iter().map(|s| s.len() as u64).sum::<u64>();
        batch.extend(newest_versions(&segs));
        advanced.insert(p, last.seq);
    }
    if advanced.is_empty() {
        return Ok(());
    }
    // Older shard rows the batch supersedes.
    let touched: HashSet<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    let mut deletions: Vec<(usize, DeletionVector)> = Vec::new();
    for (i, shard) in index.shards.iter().enumerate() {
        let seg = segment::load(store, &shard.key, shape).await?;
        let mut dv = match &shard.deletions {
            Some(key) => {
                let got = store.get(key).await.map_err(CoordError::from)?;
                DeletionVector::decode(key, &got.bytes, shard.rows)?
            }
            None => DeletionVector::new(shard.rows),
        };
        let mut killed = 0;
        for (row, id) in seg.ids().iter().enumerate() {
            if touched.contains(id.as_str()) && dv.mark(row as u64) {
                killed += 1;
            }
        }
        if killed > 0 {
            round.rows_killed += killed;
            deletions.push((i, dv));
        }
    }
    // The new shards: the batch's live records.
    let live: Vec<Prepared> = batch.into_iter().filter(|r| !r.tombstone).collect();
    round.rows_out = live.len() as u64;
    let now = clock.now();
    let header = SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: shape.dimensions as u32,
        metric: shape.metric,
        record_count: 0,
        created_at_ms: unix_millis(now),
        writer_id: "indexer".into(),
        has_index: false,
    };
    let ix = settings.index();
    let (dims, metric) = (shape.dimensions, shape.metric);
    let outputs = if live.is_empty() {
        Vec::new()
    } else {
        crate::cpu::run(move || {
            let mut secs = 0.0;
            build_outputs(live, dims, metric, &ix, &header, &mut secs)
        })
        .await
    };
    let backoff = Backoff::default();
    let mut new_shards = Vec::new();
    for out in outputs {
        let key = new_shard_key(now);
        let bytes = out.bytes.len() as u64;
        put_new_object(store, &key, out.bytes, backoff).await?;
        round.shards_written.push(key.clone());
        new_shards.push(ShardEntry {
            key,
            rows: out.records,
            dead: 0,
            bytes,
            level: 0,
            deletions: None,
            created_at: format_time(now),
            extra: Default::default(),
        });
    }
    let mut new_dvs = Vec::new();
    for (i, dv) in deletions {
        let key = new_deletions_key(now);
        put_new_object(store, &key, dv.encode(), backoff).await?;
        new_dvs.push((index.shards[i].key.clone(), key, dv.dead()));
    }
    // Commit, if nobody else did since we read the index manifest.
    let expected = index.generation;
    let retired_at = format_time(clock.now());
    let (m, wrote) = update_index(store, settings.partition_count, backoff, |m| {
        if m.generation != expected {
            return Ok(false);
        }
        apply(m, &advanced, &new_shards, &new_dvs, &retired_at)?;
        Ok(true)
    })
    .await?;
    if !wrote {
        round.superseded = true;
        return Ok(());
    }
    round.generation = Some(m.generation);
    round.advanced = advanced;
    Ok(())
}

/// The committed change: watermarks forward, shards added, deletion
/// vectors replaced (the old ones retired).
fn apply(
    m: &mut IndexManifest,
    advanced: &BTreeMap<u32, u64>,
    new_shards: &[ShardEntry],
    new_dvs: &[(String, String, u64)],
    retired_at: &str,
) -> Result<(), CoordError> {
    for (&p, &w) in advanced {
        m.advance(p, w)?;
    }
    for (shard, dv, dead) in new_dvs {
        let entry = m
            .shards
            .iter_mut()
            .find(|s| &s.key == shard)
            .expect("the generation did not change, so neither did the shards");
        if let Some(old) = entry.deletions.replace(dv.clone()) {
            m.retired.push(RetiredObject {
                key: old,
                retired_at: retired_at.to_string(),
            });
        }
        entry.dead = *dead;
    }
    m.shards.extend(new_shards.iter().cloned());
    Ok(())
}

/// The newest version of each id across `segments` (oldest first),
/// tombstones included: what the shards must end up agreeing with.
fn newest_versions(segments: &[Arc<Segment>]) -> Vec<Prepared> {
    let mut live = LiveSet::default();
    for seg in segments {
        live.absorb(seg);
    }
    let mut newest: Vec<_> = live.newest().collect();
    newest.sort_by_key(|(_, loc)| (loc.seg, loc.pos)); // write order, run to run
    newest
        .into_iter()
        .map(|(id, loc)| {
            let seg = &segments[loc.seg as usize];
            let i = loc.pos as usize;
            Prepared {
                id: id.to_string(),
                vector: seg.vector(i).to_vec(),
                metadata: seg.metadata_raw(i).to_vec(),
                tombstone: loc.tombstone,
            }
        })
        .collect()
}
