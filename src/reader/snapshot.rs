//! One snapshot per read (DESIGN section 11, reader snapshot): the
//! partition views an operation loaded, the shard set that covers them,
//! and the one rule that joins them: **a tail record hides its shard
//! row** (a record above its partition's watermark is newer than any
//! shard row of its id, whether an upsert or a tombstone). Search, get,
//! list, warm-up and live counts all ask a [`Snapshot`]; none of them
//! compares a seq with a watermark itself.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::load::{self, Freshness};
use super::shards::{self, ShardSet};
use super::unit::{Allowed, SearchUnit, TailUnit};
use super::view::{CacheTally, PartitionView};
use super::{PartitionError, PartitionFailure, ReadError, Shared};
use crate::record::StoredRecord;
use crate::segment::Loc;
use crate::segment::Segment;
use crate::store::Counted;

/// One loaded partition: its view and, when the operation asked for
/// them, its segments (in manifest order).
pub(super) struct Loaded {
    pub view: Arc<PartitionView>,
    pub segments: Option<Vec<Arc<Segment>>>,
}

/// What to load.
#[derive(Clone, Copy)]
pub(super) struct Want {
    pub fresh: Freshness,
    /// Load every segment of each partition too (search, warm-up).
    pub segments: bool,
    /// Report a partition that cannot be read instead of failing.
    pub allow_partial: bool,
}

/// The partitions one operation reads and the shard set covering them.
pub(super) struct Snapshot {
    pub loaded: Vec<Loaded>,
    pub failed: Vec<PartitionFailure>,
    /// The shard set covering `loaded`.
    pub shards: Arc<ShardSet>,
}

impl Snapshot {
    /// Loads `partitions` (bounded concurrency) and, alongside (one round
    /// for a cold reader), the shard set; a shard set that does not
    /// cover what the partitions retired is refreshed before use.
    pub(super) async fn load(
        shared: &Arc<Shared>,
        store: &Counted,
        partitions: impl Iterator<Item = u32>,
        want: Want,
        tally: &CacheTally,
    ) -> Result<Snapshot, ReadError> {
        // One LIST tells which held manifests are current.
        super::listing::check(shared, store, want.fresh).await;
        let loads: Vec<_> = partitions
            .map(|p| load_one(shared, store, p, want, tally))
            .collect();
        let partitions = async {
            let loaded = futures::stream::iter(loads)
                .buffer_unordered(shared.opts.io_concurrency.max(1))
                .collect::<Vec<_>>()
                .await;
            split_failures(loaded, want.allow_partial)
        };
        // A partition that fails the operation ends it at once (the
        // index refresh, detached, may go on retrying).
        let ((loaded, failed), early) = futures::future::try_join(
            partitions,
            shards::ensure_shards(shared, store, want.fresh, &[]),
        )
        .await?;
        let retired = covering(&loaded);
        // Fetched for this operation (as fresh as it asks): used as is
        // when it covers the partitions, else refreshed.
        let index = if early.covers(&retired) {
            early
        } else {
            shards::ensure_shards(shared, store, want.fresh, &retired).await?
        };
        Ok(Snapshot {
            loaded,
            failed,
            shards: index,
        })
    }

    /// Where `view`'s tail starts (see [`tail_start`]).
    pub(super) fn tail_start(&self, view: &PartitionView) -> usize {
        tail_start(view, &self.shards)
    }

    /// What the shards say of `id` (of partition `p`), for an id its
    /// partition's tail does not decide: its live row, if any.
    pub(super) async fn shard_record(
        &self,
        shared: &Shared,
        tally: &CacheTally,
        id: &str,
        p: u32,
    ) -> Result<Option<StoredRecord>, ReadError> {
        let store = Counted::new(shared.store.clone());
        let Some((s, row)) = self.shards.locate(shared, &store, tally, id).await? else {
            // Maybe in a damaged shard: an honest answer is its error.
            return self.shards.damage().map_or(Ok(None), Err);
        };
        let w = self.shards.watermark(p);
        let shard = &self.shards.shards[s as usize];
        shard.record(shared, tally, id, p, w, row).await.map(Some)
    }

    /// The newest location of every id in `view`'s tail (tombstones
    /// included): the ids whose shard rows the tail hides.
    pub(super) fn tail_newest<'v>(
        &self,
        view: &'v PartitionView,
    ) -> impl Iterator<Item = (&'v str, Loc)> + 'v {
        let from = self.tail_start(view) as u32;
        view.live.newest().filter(move |(_, loc)| loc.seg >= from)
    }

    /// What `view`'s tail says of `id`: `None` if nothing (the shards
    /// answer), else its newest location there.
    pub(super) fn tail_of(&self, view: &PartitionView, id: &str) -> Option<Loc> {
        let from = self.tail_start(view) as u32;
        view.live.newest_of(id).filter(|loc| loc.seg >= from)
    }

    /// What a search scores: every partition's tail, and every shard
    /// with the rows the tails hide (and, in a partial result, the rows
    /// of the partitions left out) masked off.
    pub(super) fn units(self) -> Vec<Box<dyn SearchUnit>> {
        let index = &self.shards;
        let shadowing = !crate::mutation::active(crate::mutation::Mutation::NoShadowing);
        let mut hidden: Vec<Vec<u32>> = vec![Vec::new(); index.shards.len()];
        // Routed shards hold no id map: they are handed the tails' ids.
        let mut tail_ids = HashSet::new();
        if !index.shards.is_empty() && shadowing {
            // The ids of the tail segments (a search loads them), not
            // the whole partition's id map: a view may still list indexed
            // segments its indexer has not yet retired.
            let routed = index.has_routed();
            for l in &self.loaded {
                let segments = l.segments.as_deref().unwrap_or_default();
                let tail = segments.get(self.tail_start(&l.view)..).unwrap_or_default();
                for id in tail.iter().flat_map(|seg| seg.ids()) {
                    if let Some((s, row)) = index.row_of(id) {
                        hidden[s as usize].push(row);
                    }
                    if routed {
                        tail_ids.insert(id.clone());
                    }
                }
            }
        }
        let excluded: Arc<[u32]> = self.failed.iter().map(|f| f.partition).collect();
        let mut units: Vec<Box<dyn SearchUnit>> = Vec::new();
        if index.has_routed() {
            units.extend(index.routed_units(&Arc::new(tail_ids), &excluded));
        }
        for l in &self.loaded {
            let from = self.tail_start(&l.view);
            let segments = l.segments.clone().unwrap_or_default();
            if from < segments.len() {
                units.push(Box::new(Arc::new(TailUnit {
                    view: l.view.clone(),
                    segments,
                    from,
                })));
            }
        }
        for (shard, hidden) in index.shards.iter().zip(hidden) {
            let allowed = Allowed {
                hidden,
                excluded: excluded.clone(),
            };
            units.extend(shard.unit(allowed));
        }
        units
    }

    /// Partition `p`'s live ids, sorted: the tail's newest versions
    /// (tombstones hide ids), then the shards' live rows of `p` the tail
    /// does not hide.
    pub(super) async fn list_ids(
        &self,
        shared: &Shared,
        tally: &CacheTally,
        p: u32,
        partitions: u32,
    ) -> Result<Vec<String>, ReadError> {
        let mut decided = HashSet::new();
        let mut ids = Vec::new();
        for l in self.loaded.iter().filter(|l| l.view.partition == p) {
            for (id, loc) in self.tail_newest(&l.view) {
                decided.insert(id);
                if !loc.tombstone {
                    ids.push(id.to_string());
                }
            }
        }
        let store = Counted::new(shared.store.clone());
        let in_shards = self.shards.live_ids(shared, &store, tally).await?;
        ids.extend(in_shards.into_iter().filter(|id| {
            !decided.contains(id.as_str()) && crate::coord::partition_of(id, partitions) == p
        }));
        ids.sort_unstable();
        Ok(ids)
    }

    /// Live records across the shards and the loaded tails: shard rows no
    /// tail record hides, plus the tails' live records.
    pub(super) async fn live_total(
        &self,
        shared: &Shared,
        store: &Counted,
        tally: &CacheTally,
    ) -> Result<u64, ReadError> {
        let mut tail_live = 0;
        let mut tail_ids = Vec::new();
        for l in &self.loaded {
            for (id, loc) in self.tail_newest(&l.view) {
                tail_live += u64::from(!loc.tombstone);
                tail_ids.push(id.to_string());
            }
        }
        let index = &self.shards;
        let lookups: Vec<_> = tail_ids
            .into_iter()
            .map(|id| async move { index.locate(shared, store, tally, &id).await })
            .collect();
        let hidden: Vec<_> = futures::stream::iter(lookups)
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let hidden = hidden.iter().filter(|at| at.is_some()).count() as u64;
        Ok(index.live_rows() - hidden + tail_live)
    }
}

/// Partition `p` as `want` asks.
async fn load_one(
    shared: &Shared,
    store: &Counted,
    p: u32,
    want: Want,
    tally: &CacheTally,
) -> (u32, Result<Loaded, PartitionError>) {
    let loaded = match load::ensure_view(shared, store, p, want.fresh, tally).await {
        Ok(view) if want.segments => {
            load::with_segments(shared, store, view, tally)
                .await
                .map(|(view, segs)| Loaded {
                    view,
                    segments: Some(segs),
                })
        }
        Ok(view) => Ok(Loaded {
            view,
            segments: None,
        }),
        Err(e) => Err(e),
    };
    (p, loaded)
}

/// Where `view`'s tail starts: its first segment above the partition's
/// watermark in `shards`. Every record from there on is newer than any
/// shard row; everything before it is in the shards. The one place a
/// segment's seq is compared with a watermark.
pub(super) fn tail_start(view: &PartitionView, shards: &ShardSet) -> usize {
    let w = shards.watermark(view.partition);
    view.manifest.segments.partition_point(|e| e.seq <= w)
}

/// `(partition, indexedThrough)` of every loaded partition: what an
/// shard set must cover to be paired with them.
fn covering(loaded: &[Loaded]) -> Vec<(u32, u64)> {
    loaded
        .iter()
        .map(|l| (l.view.partition, l.view.manifest.indexed_through))
        .collect()
}

/// Splits loads into the partitions read and, with `allow_partial`, the
/// failures (sorted by partition); without it the first failure fails.
fn split_failures(
    loaded: Vec<(u32, Result<Loaded, PartitionError>)>,
    allow_partial: bool,
) -> Result<(Vec<Loaded>, Vec<PartitionFailure>), ReadError> {
    let mut ready = Vec::with_capacity(loaded.len());
    let mut failed = Vec::new();
    for (p, r) in loaded {
        match r {
            Ok(x) => ready.push(x),
            Err(e) if allow_partial => failed.push(PartitionFailure {
                partition: p,
                error: e.into_read_error(p).to_string(),
            }),
            Err(e) => return Err(e.into_read_error(p)),
        }
    }
    ready.sort_by_key(|l| l.view.partition);
    failed.sort_by_key(|f| f.partition);
    Ok((ready, failed))
}
