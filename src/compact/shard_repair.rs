//! Repairing a damaged index shard (issue 28 F4): `shoal repair --shard
//! KEY`. A shard is immutable and its rows' segments are gone once GC has
//! collected them, so the repair rebuilds the shard from what of it is
//! still readable, and says exactly what is lost:
//!
//! - its deletion vector must be readable (it alone says which rows were
//!   superseded or deleted; without it no row can be trusted, and the
//!   repair refuses);
//! - with the head readable, every live row whose vector and metadata pass
//!   their checksums goes into new shards at the same level (a routed
//!   shard's under its own routing); each live row that does not is lost,
//!   by id (a routed shard's row whose id neither its cluster nor the id
//!   index gives is lost, id unknown);
//! - with the head unreadable (or a whole-read shard that does not
//!   decode), the shard is dropped and its live rows are lost, ids
//!   unknown (their count is the manifest's).
//!
//! The new shards replace the damaged one in one index-manifest
//! compare-and-swap (a merge of one input); the watermarks do not move,
//! and the damaged shard is retired like any merge input. Nothing else
//! (no segment) is needed, so GC has nothing to keep for it.

use serde::Serialize;

use super::indexer::{current_index, load_deletions, too_late, write_shards};
use super::CompactError;
use crate::coord::cas::Backoff;
use crate::coord::clock::{format_time, DynClock};
use crate::coord::index_manifest::{replace_merged, MergeCommit};
use crate::coord::{CoordError, Settings};
use crate::index::shard::routed::{group_by_cluster, KnownCodes};
use crate::record::Prepared;
use crate::segment::routed::salvage_routed;
use crate::segment::shard::{is_shard, salvage_shard};
use crate::store::{ObjectStore, StoreError};

/// What a shard repair found and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardRepair {
    pub shard: String,
    /// Rows in the shard, and how many were live.
    pub rows: u64,
    pub live: u64,
    /// Live rows rebuilt into the new shards.
    pub kept: u64,
    /// Ids whose live row could not be read: gone from the index.
    pub lost_ids: Vec<String>,
    /// Live rows lost whose ids are unknown (the head was unreadable).
    pub lost_unknown: u64,
    /// The shards that replace it (none when nothing was kept).
    pub replaced_by: Vec<String>,
    pub dry_run: bool,
    /// Whether the index manifest now lists the repair.
    pub written: bool,
}

pub async fn repair_shard(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    key: &str,
    dry_run: bool,
) -> Result<ShardRepair, CompactError> {
    let n = settings.partition_count;
    let index = current_index(store, n).await?;
    let Some(entry) = index.shards.iter().find(|s| s.key == key).cloned() else {
        return Err(CoordError::BadChange(format!(
            "{key} is not a shard of the index manifest (see `shoal verify`)"
        ))
        .into());
    };
    let dv = load_deletions(store, &entry).await?;
    let bytes = match store.get(key).await {
        Ok(got) => Some(got.bytes),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut report = ShardRepair {
        shard: key.to_string(),
        rows: entry.rows,
        dry_run,
        ..Default::default()
    };
    let mut keep = Vec::new();
    let salvaged = bytes
        .as_deref()
        .filter(|b| is_shard(b))
        .and_then(|b| match entry.routing {
            Some(_) => salvage_routed(key, b).ok(),
            None => salvage_shard(key, b).ok(),
        });
    match salvaged {
        Some(s) => {
            let live = |row: u64| !s.ids.tombstones[row as usize] && !dv.is_dead(row);
            report.live = (0..entry.rows).filter(|&r| live(r)).count() as u64;
            for &row in s.lost.iter().filter(|&&r| live(r)) {
                report.lost_ids.push(s.ids.ids[row as usize].clone());
            }
            report.lost_unknown = s.unknown.iter().filter(|&&r| live(r)).count() as u64;
            for (row, vector, metadata) in s.rows {
                if live(row) {
                    keep.push(Prepared {
                        id: s.ids.ids[row as usize].clone(),
                        vector,
                        metadata,
                        tombstone: false,
                    });
                }
            }
        }
        None => {
            // Not salvageable row by row: a whole-read shard decodes whole
            // or not at all.
            let shape = super::indexer::shape_of(settings);
            match crate::segment::load(store, key, shape).await {
                Ok(seg) => {
                    for i in 0..seg.len() {
                        if !seg.is_tombstone(i) && !dv.is_dead(i as u64) {
                            keep.push(seg.prepared(i));
                        }
                    }
                    report.live = keep.len() as u64;
                }
                Err(_) => {
                    report.live = entry.rows.saturating_sub(dv.dead());
                    report.lost_unknown = report.live;
                }
            }
        }
    }
    report.kept = keep.len() as u64;
    for id in &report.lost_ids {
        tracing::error!(shard = key, id = %id, "lost: its row in the damaged shard is unreadable");
    }
    if dry_run {
        return Ok(report);
    }
    let (outputs, written_at) = match index.routing(entry.routing.unwrap_or(u64::MAX)) {
        // A routed shard is rebuilt under its own routing.
        Some(r) => {
            let routing = super::routed::load_routing(store, r).await?;
            let r2 = routing.clone();
            let clusters = crate::cpu::run(move || group_by_cluster(keep, &r2)).await;
            let cap = super::indexer::shard_target_rows(settings) as usize;
            let text = settings.text_fields();
            let known = KnownCodes::new();
            super::routed::write_routed(store, clock, clusters, known, routing, entry.level, cap, &text)
                .await?
        }
        None => write_shards(store, settings, clock, keep, entry.level).await?,
    };
    let store_now = crate::coord::skew::store_now(store, clock.as_ref()).await?;
    let merge = MergeCommit {
        inputs: std::slice::from_ref(&entry),
        outputs: &outputs,
    };
    let late = || too_late(clock, written_at, settings);
    let committed = replace_merged(
        store,
        n,
        Backoff::default(),
        index.generation,
        late,
        merge,
        &format_time(store_now),
    )
    .await?;
    if committed.is_none() {
        return Err(CoordError::Contention {
            key: crate::coord::paths::INDEX_MANIFEST_KEY.to_string(),
            attempts: 1,
        }
        .into());
    }
    report.replaced_by = outputs.into_iter().map(|s| s.key).collect();
    report.written = true;
    Ok(report)
}
