//! The shards (the read-optimized layer, DESIGN section 11) as a reader
//! sees them.
//!
//! A [`ShardSet`] is one index manifest (the shard layer's manifest,
//! `_brainy/manifests/index.json`) with everything a query needs from it: each
//! shard's head or body and live rows (its deletion vector applied), and
//! the shard row of every live id, so a partition's tail can hide the
//! shard rows its ids supersede. Shard sets are immutable; a refresh
//! builds a new one, reusing the shards whose object and deletion vector
//! did not change. [`ShardView`] is the one place that asks which kind a
//! shard is (range-read or whole).
//!
//! **Snapshot rule.** A reader must never pair a partition manifest with
//! an index manifest older than what that partition has retired into the
//! shards (`indexedThrough <= W[p]`). A [`super::snapshot::Snapshot`]
//! asks [`ensure_shards`] for a set covering its partitions: a cached set
//! that does not is refreshed, and a fresh one that still does not is
//! corruption (the indexer retires only after its index commit).

use std::collections::HashMap;

use futures::StreamExt;
use std::sync::Arc;

use tokio::time::Instant;

use super::load::Freshness;
use super::ranged::{self, Blocks, Part, RangedShard, WarmBudget, WarmPhase};
use super::routed::search::RoutedUnit;
use super::routed::{RoutedShard, RoutingView};
use super::unit::{Allowed, BrokenUnit, RangedUnit, SearchUnit, ShardLive, WholeShardUnit};
use super::view::{load_segment, CacheTally};
use super::{PartitionError, ReadError, Shared};
use crate::coord::index_manifest::{parse_index_manifest, IndexManifest, ShardEntry};
use crate::coord::paths::INDEX_MANIFEST_KEY;
use crate::coord::watched::{retrying, revalidate, Revalidated};
use crate::coord::CoordError;
use crate::index::AnnIndex;
use crate::record::StoredRecord;
use crate::segment::deletions::DeletionVector;
use crate::segment::Segment;
use crate::store::{Counted, ETag, ObjectStore, StoreError};

/// One shard as a reader sees it.
pub(super) struct ShardView {
    pub key: String,
    /// The deletion vector applied (`None`: every row is live).
    deletions: Option<String>,
    body: ShardBody,
    /// Rows that are not tombstones and not marked dead.
    live: Arc<ShardLive>,
}

/// What the reader holds of a shard. Only [`ShardView`]'s methods ask
/// which kind a shard is.
enum ShardBody {
    /// A shard in the segment format (HNSW or no index), read whole.
    Whole {
        segment: Arc<Segment>,
        ann: Option<Arc<AnnIndex>>,
    },
    /// A range-readable shard: its head region; parts on demand.
    Ranged(Arc<RangedShard>),
    /// A shard grouped by the index's routing (DESIGN section 12): its
    /// head and deletion vector; parts on demand. Searched with the
    /// other shards of its routing ([`ShardSet::units`]).
    Routed(Arc<RoutedShard>),
    /// A shard whose head (or whole body, or deletion vector) is damaged
    /// (issue 28 F4): it serves nothing; a search fails naming it, or
    /// with `allow_partial` leaves it out; a get or listing fails naming
    /// it (its ids are unknown, so no answer could be trusted).
    Broken { error: PartitionError, rows: u64 },
}

impl ShardView {
    /// Every row's id, in row order.
    pub(super) fn ids(&self) -> &[String] {
        match &self.body {
            ShardBody::Whole { segment, .. } => segment.ids(),
            ShardBody::Ranged(r) => &r.ids,
            ShardBody::Routed(_) | ShardBody::Broken { .. } => &[],
        }
    }

    /// The error reading this shard gave, if it is damaged.
    pub(super) fn damage(&self) -> Option<ReadError> {
        match &self.body {
            ShardBody::Broken { error, .. } => Some(index_error(error)),
            _ => None,
        }
    }

    /// Bytes the reader holds for this shard outside the part cache.
    pub(super) fn memory_bytes(&self) -> usize {
        self.live.mask.len()
            + match &self.body {
                ShardBody::Whole { segment, .. } => segment.memory_bytes(),
                ShardBody::Ranged(r) => r.memory_bytes(),
                ShardBody::Routed(r) => r.memory_bytes(),
                ShardBody::Broken { .. } => 0,
            }
    }

    /// This shard as a query's search unit, `allowed` narrowing its live
    /// rows; `None` when no row is live, and for a routed shard (its
    /// routing's unit searches it).
    pub(super) fn unit(&self, allowed: Allowed) -> Option<Box<dyn SearchUnit>> {
        if let ShardBody::Broken { error, rows } = &self.body {
            return Some(Box::new(BrokenUnit {
                key: self.key.clone(),
                rows: *rows,
                error: error.clone(),
            }));
        }
        if self.live.count == 0 || matches!(self.body, ShardBody::Routed(_)) {
            return None;
        }
        let live = self.live.clone();
        Some(match &self.body {
            ShardBody::Whole { segment, ann } => Box::new(Arc::new(WholeShardUnit {
                segment: segment.clone(),
                ann: ann.clone(),
                live,
                allowed,
            })),
            ShardBody::Ranged(r) => Box::new(RangedUnit {
                shard: r.clone(),
                live,
                hidden: allowed.hidden.into_iter().collect(),
                excluded: allowed.excluded,
            }),
            ShardBody::Routed(_) | ShardBody::Broken { .. } => return None,
        })
    }

    /// Row `row` (of id `id`, partition `p`, indexed through `w`) as
    /// `get` returns it.
    pub(super) async fn record(
        &self,
        shared: &Shared,
        tally: &CacheTally,
        id: &str,
        p: u32,
        w: u64,
        row: u32,
    ) -> Result<StoredRecord, ReadError> {
        let mut rec = match &self.body {
            ShardBody::Broken { error, .. } => return Err(index_error(error)),
            ShardBody::Whole { segment, .. } => {
                super::lookup::stored(id, p, w, segment, row as usize)
            }
            ShardBody::Ranged(r) => {
                let counted = Counted::new(shared.store.clone());
                let got = ranged::row(&shared.blocks, &counted, tally, r, row).await;
                ranged_record(id, p, w, row, got)?
            }
            ShardBody::Routed(r) => {
                let counted = Counted::new(shared.store.clone());
                let got = r.row(&shared.blocks, &counted, tally, row).await;
                ranged_record(id, p, w, row, got)?
            }
        };
        rec.shard = Some(self.key.clone());
        Ok(rec)
    }

    /// Fetches the codes (or, for [`WarmPhase::Rows`], the metadata and
    /// row chunks) of its lists into the part cache while `budget` lasts
    /// (`Blocks::warm`); returns the parts fetched (0 for a whole shard,
    /// which loaded with its view).
    pub(super) async fn warm(
        &self,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
        budget: &mut WarmBudget,
        phase: WarmPhase,
    ) -> Result<u64, ReadError> {
        let warmed = match &self.body {
            ShardBody::Ranged(r) => {
                let rows = r.routing.head.lists.iter().map(|l| l.rows);
                let parts = ranged::warm_parts(phase, Part::Codes, rows);
                blocks.warm(store, r, parts, budget, phase, tally).await
            }
            ShardBody::Routed(r) => r.warm(blocks, store, tally, budget, phase).await,
            _ => return Ok(0),
        };
        warmed.map_err(|e| index_error(&e))
    }
}

/// Row `row` of a shard read by parts (`got`: its vector and metadata)
/// as `get` returns it.
fn ranged_record(
    id: &str,
    p: u32,
    w: u64,
    row: u32,
    got: Result<(Vec<f32>, serde_json::Map<String, serde_json::Value>), PartitionError>,
) -> Result<StoredRecord, ReadError> {
    let (vector, metadata) = got.map_err(|e| index_error(&e))?;
    Ok(StoredRecord {
        id: id.to_string(),
        vector,
        metadata,
        partition: p,
        seq: w,
        position: row as usize,
        shard: None,
    })
}

/// One index manifest, loaded.
pub(super) struct ShardSet {
    pub manifest: IndexManifest,
    pub(super) etag: Option<ETag>,
    pub shards: Vec<Arc<ShardView>>,
    /// The live row of every id in a shard of the older formats (shard
    /// ordinal, row); routed shards are asked through their id index.
    rows: HashMap<String, (u32, u32)>,
    /// The routings the manifest lists that could be read.
    routings: Vec<Arc<RoutingView>>,
}

impl ShardSet {
    pub(super) fn empty(partition_count: u32) -> Self {
        ShardSet {
            manifest: IndexManifest::empty(partition_count),
            etag: None,
            shards: Vec::new(),
            rows: HashMap::new(),
            routings: Vec::new(),
        }
    }

    /// `W[p]`: partition `p`'s segments with seq <= this are in the shards.
    pub(super) fn watermark(&self, p: u32) -> u64 {
        self.manifest.watermark(p)
    }

    /// The first damaged shard's error: while one is damaged, its ids are
    /// unknown, so "not in the shards" cannot be answered.
    pub(super) fn damage(&self) -> Option<ReadError> {
        self.shards.iter().find_map(|s| s.damage())
    }

    /// Where `id` is live in a shard of the older formats, if it is.
    pub(super) fn row_of(&self, id: &str) -> Option<(u32, u32)> {
        self.rows.get(id).copied()
    }

    /// The routed shards, with their ordinals.
    fn routed(&self) -> impl Iterator<Item = (u32, &Arc<RoutedShard>)> {
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(s, v)| match &v.body {
                ShardBody::Routed(r) => Some((s as u32, r)),
                _ => None,
            })
    }

    /// The routings held.
    pub(super) fn routings(&self) -> &[Arc<RoutingView>] {
        &self.routings
    }

    /// Whether any shard is routed (a search then needs the tails' ids).
    pub(super) fn has_routed(&self) -> bool {
        self.routed().next().is_some()
    }

    /// Where `id` is live in the shards, if it is: the id map of the
    /// older formats, then every routed shard's id index (one block each,
    /// cached).
    pub(super) async fn locate(
        &self,
        shared: &Shared,
        store: &Counted,
        tally: &CacheTally,
        id: &str,
    ) -> Result<Option<(u32, u32)>, ReadError> {
        if let Some(at) = self.row_of(id) {
            return Ok(Some(at));
        }
        let mut lookups = Vec::new();
        for (s, r) in self.routed() {
            let r = r.clone();
            lookups.push(async move {
                let row = r.row_of(&shared.blocks, store, tally, id).await?;
                Ok::<_, PartitionError>(row.map(|row| (s, row)))
            });
        }
        let found = futures::future::try_join_all(lookups)
            .await
            .map_err(|e| index_error(&e))?;
        Ok(found.into_iter().flatten().next())
    }

    /// Every id live in the shards (all partitions), in no order: the id
    /// map of the older formats and every routed shard's id index.
    pub(super) async fn live_ids(
        &self,
        shared: &Shared,
        store: &Counted,
        tally: &CacheTally,
    ) -> Result<Vec<String>, ReadError> {
        let mut ids: Vec<String> = self.rows.keys().cloned().collect();
        let mut lists = Vec::new();
        for (_, r) in self.routed() {
            let r = r.clone();
            lists.push(async move { r.live_ids(&shared.blocks, store, tally).await });
        }
        for more in futures::future::try_join_all(lists)
            .await
            .map_err(|e| index_error(&e))?
        {
            ids.extend(more);
        }
        Ok(ids)
    }

    /// Bytes this view holds: its shards, routings and the id → row map.
    pub(super) fn memory_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.memory_bytes()).sum::<usize>()
            + self
                .routings
                .iter()
                .map(|r| r.memory_bytes())
                .sum::<usize>()
            + self
                .rows
                .keys()
                .map(|k| k.len() + 24 + 8 + 16)
                .sum::<usize>()
    }

    /// Live shard rows.
    pub(super) fn live_rows(&self) -> u64 {
        self.rows.len() as u64 + self.routed().map(|(_, r)| r.live).sum::<u64>()
    }

    /// One search unit per routing: its shards with a live row, the rows
    /// of `hidden` ids (the tails') and of `excluded` partitions masked.
    pub(super) fn routed_units(
        &self,
        hidden: &Arc<std::collections::HashSet<String>>,
        excluded: &Arc<[u32]>,
    ) -> Vec<Box<dyn super::unit::SearchUnit>> {
        self.routings
            .iter()
            .filter_map(|routing| {
                let g = routing.head.generation;
                let shards: Vec<Arc<RoutedShard>> = self
                    .routed()
                    .filter(|(_, r)| r.head.generation == g && r.live > 0)
                    .map(|(_, r)| r.clone())
                    .collect();
                (!shards.is_empty()).then(|| {
                    Box::new(RoutedUnit {
                        routing: routing.clone(),
                        shards,
                        hidden: hidden.clone(),
                        excluded: excluded.clone(),
                    }) as Box<dyn super::unit::SearchUnit>
                })
            })
            .collect()
    }

    /// Whether this view may be paired with partitions that retired
    /// through `retired` (`(partition, indexedThrough)` pairs).
    pub(super) fn covers(&self, retired: &[(u32, u64)]) -> bool {
        retired.iter().all(|&(p, t)| self.watermark(p) >= t)
    }
}

/// The reader's shard set, as fresh as it was last checked.
pub(crate) type ShardSlot = super::load::Slot<ShardSet>;

/// How long a detached index refresh may keep retrying transient errors.
const REFRESH_BUDGET: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// A shard set as fresh as `want` asks for and covering `retired`
/// (`(partition, indexedThrough)` of the partition views the caller
/// holds; see the module docs).
///
/// The refresh runs as a task of its own: loading a large index can take
/// longer than one query's deadline, and a query that gives up must not
/// take the half-done load with it (the next query would start over, and
/// so would the one after). Queries waiting meanwhile share it. Its
/// requests are counted in `store` (the caller's counting view of the
/// reader's store).
pub(super) async fn ensure_shards(
    shared: &Arc<Shared>,
    store: &crate::store::Counted,
    want: Freshness,
    retired: &[(u32, u64)],
) -> Result<Arc<ShardSet>, ReadError> {
    let slot = &shared.shards;
    let usable = || {
        slot.current()
            .filter(|v| slot.fresh_for(want) && v.covers(retired))
    };
    if let Some(v) = usable() {
        return Ok(v);
    }
    let task = {
        let (shared, retired, store) = (shared.clone(), retired.to_vec(), store.clone());
        tokio::spawn(async move {
            let slot = &shared.shards;
            let _one_refresh_at_a_time = slot.refresh.lock().await;
            let current = slot.current();
            if let Some(v) = current.filter(|v| slot.fresh_for(want) && v.covers(&retired)) {
                return Ok(v);
            }
            let tally = CacheTally::until(Instant::now() + REFRESH_BUDGET);
            refresh(&shared, &store, &tally).await
        })
    };
    let view = match task.await {
        Ok(v) => v?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => return Err(ReadError::Internal(format!("index refresh cancelled: {e}"))),
    };
    if let Some(&(p, t)) = retired.iter().find(|&&(p, t)| view.watermark(p) < t) {
        return Err(ReadError::Coord(CoordError::Corrupt {
            key: INDEX_MANIFEST_KEY.into(),
            reason: format!(
                "partition {p} retired its segments through seq {t} into the index shards, \
                 but the index manifest's watermark for it is {}: records would be missing",
                view.watermark(p)
            ),
            found: format!("index manifest generation {}", view.manifest.generation),
        }));
    }
    Ok(view)
}

/// Revalidates the index manifest (conditional GET when a view is held)
/// and builds a new view if it changed. A shard that vanished (GC after
/// a newer manifest replaced it) means our manifest is stale: read it
/// again, once.
async fn refresh(
    shared: &Shared,
    store: &dyn ObjectStore,
    tally: &CacheTally,
) -> Result<Arc<ShardSet>, ReadError> {
    let slot = &shared.shards;
    let now = Instant::now();
    let ticket = shared.next_ticket();
    let current = slot.current();
    let held = current.as_ref().and_then(|v| v.etag.clone());
    let read = |held: Option<ETag>| async move {
        revalidate(
            store,
            INDEX_MANIFEST_KEY,
            held.as_ref(),
            Some(tally.deadline),
        )
        .await
        .map_err(CoordError::Store)
    };
    let n = shared.views.len() as u32;
    let view = match read(held).await? {
        Revalidated::Unchanged => {
            slot.touch(now, ticket);
            return Ok(current.expect("an etag implies a view"));
        }
        // An index from before index shards, or one whose manifest was
        // lost: nothing is indexed as far as this reader can tell. A
        // partition that retired segments into shards then fails the
        // snapshot rule in `ensure_shards`, naming this key.
        Revalidated::Missing => ShardSet::empty(n),
        Revalidated::Changed(got) => {
            let m = parse_index_manifest(n, &got.bytes)?;
            let first = build(shared, store, m, Some(got.etag), current.as_deref(), tally).await;
            // Shards we were told of are gone: a newer manifest replaced
            // them. Read it again, whole, once.
            let again = || async {
                let Revalidated::Changed(got) = read(None).await? else {
                    return Err(CoordError::Store(StoreError::NotFound {
                        key: INDEX_MANIFEST_KEY.into(),
                    })
                    .into());
                };
                let m = parse_index_manifest(n, &got.bytes)?;
                build(shared, store, m, Some(got.etag), current.as_deref(), tally)
                    .await
                    .map_err(|e| index_error(&e))
            };
            let first = async { first.map_err(|e| index_error(&e)) };
            super::load::once_more_if_vanished(first, again).await?
        }
    };
    let view = Arc::new(view);
    slot.set(view.clone(), now, ticket);
    Ok(view)
}

pub(super) fn index_error(e: &PartitionError) -> ReadError {
    ReadError::Index {
        key: e.key(),
        source: e.clone(),
    }
}

/// Loads the shards of `m` (reusing `old`'s where nothing changed) and
/// indexes their live rows by id.
async fn build(
    shared: &Shared,
    store: &dyn ObjectStore,
    manifest: IndexManifest,
    etag: Option<ETag>,
    old: Option<&ShardSet>,
    tally: &CacheTally,
) -> Result<ShardSet, PartitionError> {
    let old_shards: &[Arc<ShardView>] = old.map_or(&[], |v| &v.shards);
    // Every shard at once: a cold reader's heads are one round.
    let mut loads = Vec::with_capacity(manifest.shards.len());
    for entry in &manifest.shards {
        let kept = old_shards
            .iter()
            .find(|s| s.key == entry.key && s.deletions == entry.deletions)
            .cloned();
        loads.push(async move {
            match kept {
                Some(s) => Ok(s),
                None => match load_shard(shared, store, entry, tally).await {
                    // Damaged (not vanished: that is a stale manifest,
                    // refreshed by the caller): kept as a broken shard.
                    Err(error) if error.kind() == crate::vocab::ErrorKind::Corrupt => {
                        tracing::error!(shard = %entry.key, %error, "an index shard is unreadable");
                        Ok(Arc::new(broken(
                            &entry.key,
                            entry.deletions.clone(),
                            error,
                            entry.rows,
                        )))
                    }
                    loaded => loaded.map(Arc::new),
                },
            }
        });
    }
    let shards = futures::stream::iter(loads)
        .buffered(shared.opts.io_concurrency.max(1))
        .collect::<Vec<_>>();
    // The routings in the same round as the shards.
    let routings = manifest.routings.iter().map(|entry| async move {
        let kept = old
            .and_then(|o| o.routings.iter().find(|r| *r.key == *entry.key))
            .cloned();
        match kept {
            Some(r) => (entry.generation, Ok(r)),
            None => {
                let loaded = RoutingView::load(store, entry, shared.shape.dimensions, tally).await;
                (entry.generation, loaded.map(Arc::new))
            }
        }
    });
    let (shards, routings) =
        futures::future::join(shards, futures::future::join_all(routings)).await;
    let mut shards: Vec<Arc<ShardView>> = shards.into_iter().collect::<Result<_, _>>()?;
    // A routed shard whose routing cannot be read serves nothing: it is
    // damaged as far as a reader can tell (a vanished routing means a
    // stale manifest, refreshed by the caller).
    let mut held = Vec::new();
    for (g, loaded) in routings {
        match loaded {
            Ok(r) => held.push(r),
            Err(error) if error.kind() == crate::vocab::ErrorKind::Corrupt => {
                tracing::error!(routing = g, %error, "an index routing is unreadable");
                for v in shards.iter_mut() {
                    if matches!(&v.body, ShardBody::Routed(r) if r.head.generation == g) {
                        *v = Arc::new(broken(
                            &v.key,
                            v.deletions.clone(),
                            error.clone(),
                            v.live.count as u64,
                        ));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(v) = shards.iter().find(|v| {
        matches!(&v.body, ShardBody::Routed(r) if !held.iter().any(|h| h.head.generation == r.head.generation))
    }) {
        return Err(corrupt_shard(
            &v.key,
            "the shard's routing generation is not one the index manifest lists".into(),
        ));
    }
    let mut rows = HashMap::with_capacity(manifest.live_rows() as usize);
    for (s, shard) in shards.iter().enumerate() {
        for (i, id) in shard.ids().iter().enumerate() {
            if !shard.live.mask[i] {
                continue;
            }
            if let Some((other, _)) = rows.insert(id.clone(), (s as u32, i as u32)) {
                return Err(corrupt_shard(
                    &shard.key,
                    format!(
                        "id {id:?} is live here and in shard {}: the newest-wins rule of the \
                         index is broken",
                        shards[other as usize].key
                    ),
                ));
            }
        }
    }
    Ok(ShardSet {
        manifest,
        etag,
        shards,
        rows,
        routings: held,
    })
}

/// A shard that serves nothing but its error.
fn broken(key: &str, deletions: Option<String>, error: PartitionError, rows: u64) -> ShardView {
    ShardView {
        key: key.to_string(),
        deletions,
        body: ShardBody::Broken { error, rows },
        live: Arc::new(ShardLive {
            mask: Vec::new(),
            count: 0,
        }),
    }
}

async fn load_shard(
    shared: &Shared,
    store: &dyn ObjectStore,
    entry: &ShardEntry,
    tally: &CacheTally,
) -> Result<ShardView, PartitionError> {
    if let (Some(_), Some(head_bytes)) = (entry.routing, entry.head_bytes) {
        let dv = load_deletions(store, entry, tally).await?;
        let r = RoutedShard::load(store, entry, head_bytes, dv, tally).await?;
        let count = r.live as usize;
        return Ok(ShardView {
            key: entry.key.clone(),
            deletions: entry.deletions.clone(),
            body: ShardBody::Routed(Arc::new(r)),
            live: Arc::new(ShardLive {
                mask: Vec::new(),
                count,
            }),
        });
    }
    let body = async {
        match entry.head_bytes {
            Some(head_bytes) => {
                let r =
                    RangedShard::load(store, &entry.key, entry.bytes, head_bytes, tally).await?;
                let tombstones = r.tombstones.clone();
                Ok::<_, PartitionError>((ShardBody::Ranged(Arc::new(r)), tombstones))
            }
            None => {
                let at = super::view::SegRef::whole(&entry.key);
                let segment = load_segment(shared, store, &at, tally).await?;
                let ann = match segment.index_bytes() {
                    None => None,
                    Some(bytes) => Some(Arc::new(
                        AnnIndex::parse(bytes, segment.dimensions(), segment.len())
                            .map_err(|reason| PartitionError::bad_index(&entry.key, reason))?,
                    )),
                };
                let tombstones = (0..segment.len())
                    .map(|i| segment.is_tombstone(i))
                    .collect();
                Ok((ShardBody::Whole { segment, ann }, tombstones))
            }
        }
    };
    // The deletion vector in the same round as the shard.
    let (body, dv) = futures::future::join(body, load_deletions(store, entry, tally)).await;
    let ((body, tombstones), dv): ((ShardBody, Vec<bool>), _) = (body?, dv?);
    if tombstones.len() as u64 != entry.rows {
        return Err(corrupt_shard(
            &entry.key,
            format!(
                "the index manifest says {} rows, the shard holds {}",
                entry.rows,
                tombstones.len()
            ),
        ));
    }
    let live: Vec<bool> = tombstones
        .iter()
        .enumerate()
        .map(|(i, t)| !t && !dv.as_ref().is_some_and(|dv| dv.is_dead(i as u64)))
        .collect();
    let count = live.iter().filter(|l| **l).count();
    Ok(ShardView {
        key: entry.key.clone(),
        deletions: entry.deletions.clone(),
        body,
        live: Arc::new(ShardLive { mask: live, count }),
    })
}

/// The deletion vector `entry` names, if any.
async fn load_deletions(
    store: &dyn ObjectStore,
    entry: &ShardEntry,
    tally: &CacheTally,
) -> Result<Option<DeletionVector>, PartitionError> {
    let Some(key) = &entry.deletions else {
        return Ok(None);
    };
    let got = retrying(tally.deadline, StoreError::is_retryable, || store.get(key))
        .await
        .map_err(|e| PartitionError::from_load(crate::segment::LoadError::Store(e)))?;
    DeletionVector::decode(key, &got.bytes, entry.rows)
        .map(Some)
        .map_err(|e| PartitionError::from_load(crate::segment::LoadError::Segment(e)))
}

fn corrupt_shard(key: &str, reason: String) -> PartitionError {
    PartitionError::from_load(crate::segment::LoadError::Segment(
        crate::segment::SegmentError::Corrupt {
            key: key.to_string(),
            reason,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::indexer::{index_round, IndexOptions};
    use crate::coord::clock::{DynClock, SystemClock};
    use crate::reader::{Consistency, Reader, ReaderOptions, SearchRequest};
    use crate::record::Record;
    use crate::store::memory::MemoryStore;

    /// A reader whose partition views are newer than its cached shard set
    /// (a partition refreshed after the indexer retired its segments) must
    /// refresh the shard set before searching, whatever the consistency
    /// level: otherwise the retired records are in neither.
    #[tokio::test]
    async fn partitions_retired_past_the_cached_watermark_refresh_the_index_view() {
        let store: crate::store::DynStore = Arc::new(MemoryStore::unique());
        let (settings, w) = crate::reader::tests::index_with_writer(&store, 2, 2).await;
        let clock: DynClock = Arc::new(SystemClock);
        let recs: Vec<Record> = (0..20)
            .map(|i| Record::new(format!("r{i}"), vec![i as f32, 0.0]))
            .collect();
        w.upsert(&recs).await.unwrap();
        let reader = Reader::new(store.clone(), &settings, ReaderOptions::default());
        let mut req = SearchRequest::new(vec![0.0, 0.0], 20);
        req.consistency = Consistency::Eventual;
        assert_eq!(reader.search(&req).await.unwrap().results.len(), 20);
        let cached = reader.shared.shards.current().unwrap();
        assert!(cached.shards.is_empty());

        let round = index_round(
            store.as_ref(),
            &settings,
            "ix",
            &clock,
            IndexOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(round.retired_partitions, 2, "{round:?}");
        // The partitions are refreshed (as a get or a bounded query would),
        // the shard set is not due for one.
        let tally = CacheTally::until(Instant::now() + std::time::Duration::from_secs(5));
        for p in 0..2 {
            let v = super::super::view::refresh(&reader.shared, store.as_ref(), p, true, &tally)
                .await
                .unwrap();
            assert!(v.manifest.segments.is_empty() && v.manifest.indexed_through > 0);
        }
        let resp = reader.search(&req).await.unwrap();
        assert_eq!(resp.results.len(), 20, "every record, from the shards");
        assert_eq!(resp.stats.shards_searched, 1);
        assert!(!Arc::ptr_eq(
            &cached,
            &reader.shared.shards.current().unwrap()
        ));
    }
}
