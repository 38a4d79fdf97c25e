//! Reads by id: batch gets and per-partition id listings, each through a
//! [`Snapshot`] of the partitions they touch.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::load::{once_more_if_vanished, Freshness};
use super::snapshot::{Snapshot, Want};
use super::view::{self, CacheTally, PartitionView};
use super::{Consistency, PartitionError, ReadError, Shared};
use crate::record::StoredRecord;
use crate::segment::Segment;

/// A snapshot of `partitions` (views only), as fresh as `consistency` asks.
async fn snapshot_of(
    shared: &Arc<Shared>,
    partitions: impl Iterator<Item = u32>,
    consistency: Consistency,
    tally: &CacheTally,
) -> Result<Snapshot, ReadError> {
    let want = Want {
        fresh: Freshness {
            consistency,
            staleness: shared.opts.max_staleness,
            ticket: shared.next_ticket(),
        },
        segments: false,
        allow_partial: false,
    };
    Snapshot::load(shared, &shared.store, partitions, want, tally).await
}

/// The newest live version of each of `ids` (`None` where it has none), in
/// the order given. Each partition the ids fall in is viewed once, so a
/// batch costs one freshness check per partition, not one per id.
pub(super) async fn get_many(
    shared: &Arc<Shared>,
    ids: &[&str],
    consistency: Consistency,
) -> Result<Vec<Option<StoredRecord>>, ReadError> {
    // An object the snapshot names that vanished (a tail segment
    // compacted, a shard merged away, then collected) means the snapshot
    // was stale: look once more in a fresh one.
    let again = || get_many_once(shared, ids, Consistency::Strong);
    once_more_if_vanished(get_many_once(shared, ids, consistency), again).await
}

/// [`get_many`] on one snapshot.
async fn get_many_once(
    shared: &Arc<Shared>,
    ids: &[&str],
    consistency: Consistency,
) -> Result<Vec<Option<StoredRecord>>, ReadError> {
    let n = shared.views.len() as u32;
    let mut by_partition: BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, id) in ids.iter().enumerate() {
        by_partition
            .entry(crate::coord::partition_of(id, n))
            .or_default()
            .push(i);
    }
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let snap = snapshot_of(shared, by_partition.keys().copied(), consistency, &tally).await?;
    // `loaded` is sorted by partition, as `by_partition`'s keys are.
    let views: Vec<Arc<PartitionView>> = snap.loaded.iter().map(|l| l.view.clone()).collect();
    let answers: Vec<(Vec<usize>, Vec<Option<StoredRecord>>)> =
        futures::stream::iter(by_partition.into_values().zip(views))
            .map(|(at, view)| {
                let (snap, tally) = (&snap, &tally);
                async move {
                    let wanted: Vec<&str> = at.iter().map(|&i| ids[i]).collect();
                    let found = get_in_partition(shared, snap, &view, &wanted, tally).await?;
                    Ok::<_, ReadError>((at, found))
                }
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
    let mut out = vec![None; ids.len()];
    for (at, found) in answers {
        for (i, rec) in at.into_iter().zip(found) {
            out[i] = rec;
        }
    }
    Ok(out)
}

/// [`get_many`] for ids that all hash to `view`'s partition.
async fn get_in_partition(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    view: &PartitionView,
    ids: &[&str],
    tally: &CacheTally,
) -> Result<Vec<Option<StoredRecord>>, ReadError> {
    let p = view.partition;
    let in_tail = tail_lookup(shared, snap, view, ids, tally)
        .await
        .map_err(|e| e.into_read_error(p))?;
    // What the tail does not decide, the shards do (row reads in parallel).
    let pending: Vec<_> = ids
        .iter()
        .zip(in_tail)
        .map(|(id, tail)| async move {
            match tail {
                Some(answer) => Ok(answer),
                None => snap.shard_record(shared, tally, id, p).await,
            }
        })
        .collect();
    futures::stream::iter(pending)
        .buffered(16)
        .try_collect()
        .await
}

/// What the partition's tail says of each id: `None` if nothing (the
/// shards answer), `Some(None)` if deleted there, else its newest record.
async fn tail_lookup(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    view: &PartitionView,
    ids: &[&str],
    tally: &CacheTally,
) -> Result<Vec<Option<Option<StoredRecord>>>, PartitionError> {
    let p = view.partition;
    let newest: Vec<_> = ids.iter().map(|id| snap.tail_of(view, id)).collect();
    let mut keys: Vec<view::SegRef> = newest
        .iter()
        .flatten()
        .filter(|loc| !loc.tombstone)
        .map(|loc| view::SegRef::of(&view.manifest.segments[loc.seg as usize]))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let segs = view::load_segments(shared, shared.store.as_ref(), keys.clone(), tally).await?;
    let out = ids
        .iter()
        .zip(newest)
        .map(|(id, loc)| {
            let loc = loc?;
            if loc.tombstone {
                return Some(None);
            }
            let entry = &view.manifest.segments[loc.seg as usize];
            let at = keys
                .binary_search(&view::SegRef::of(entry))
                .expect("every needed segment was loaded");
            Some(Some(stored(id, p, entry.seq, &segs[at], loc.pos as usize)))
        })
        .collect();
    Ok(out)
}

/// Record `pos` of `seg` as `get` returns it.
pub(super) fn stored(
    id: &str,
    partition: u32,
    seq: u64,
    seg: &Segment,
    pos: usize,
) -> StoredRecord {
    StoredRecord {
        id: id.to_string(),
        vector: seg.vector(pos).to_vec(),
        metadata: seg.metadata(pos).unwrap_or_default(),
        partition,
        seq,
        position: pos,
        shard: None,
    }
}

/// The ids live in partition `p`, sorted.
pub(super) async fn list_ids(
    shared: &Arc<Shared>,
    p: u32,
    consistency: Consistency,
) -> Result<Vec<String>, ReadError> {
    let n = shared.views.len() as u32;
    if p >= n {
        return Err(ReadError::Invalid(format!(
            "partition {p} does not exist; the index has {n} (0..={})",
            n - 1
        )));
    }
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let snap = snapshot_of(shared, std::iter::once(p), consistency, &tally).await?;
    if let Some(damaged) = snap.shards.damage() {
        return Err(damaged);
    }
    snap.list_ids(shared, &tally, p, n).await
}
