//! Routed shards (DESIGN section 12) as a reader sees them: a shard's
//! head (cluster directory and id fences, no per-row data) and deletion
//! vector held for as long as it is listed; everything else fetched by
//! parts through the reader's byte-budgeted cache ([`super::ranged::Blocks`]):
//! a cluster's *probe block* (codes, ids), its rows and metadata, the id
//! index's blocks. The routing the shards share is held as its top level
//! (and, while small, all of it); its groups of centroids are parts too.
//!
//! A query routes once over the routing and reads, from every shard of
//! it, only the probed clusters' blocks ([`search`]); `get` finds an id
//! through each shard's sorted id index; a listing reads the id index
//! whole. Nothing here grows with the rows of the index but the
//! deletion vectors (a bit per row) and the cache, which is bounded.

pub(super) mod search;
pub(super) mod text;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::ranged::{
    chunk_of, warm_parts, Block, Blocks, PackedIds, Part, PartSource, WarmBudget, WarmPhase, ROW_CHUNK,
};
use super::view::CacheTally;
use super::PartitionError;
use crate::coord::index_manifest::{RoutingEntry, ShardEntry};
use crate::coord::watched::retrying;
use crate::index::{distance, KthBest};
use crate::index::rabitq::{ListCodes, Rotation};
use crate::index::routing::{keep_nearest, RankCodes, RankQuery, Routing, RoutingHead};
use crate::segment::deletions::DeletionVector;
use crate::segment::routed::RoutedHead;
use crate::segment::{LoadError, SegmentError};
use crate::store::{ByteRange, Counted, ObjectStore, StoreError};
use crate::vocab::Metric;

/// A routing whose centroids, as they are and rotated, take at most this
/// much memory is held whole (12 MB for 1M rows of 384 dimensions),
/// which saves a cold query the round that fetches its groups; a bigger
/// one is held as its top level, its groups fetched as parts. Decided
/// on the decoded size: a routing of `u8` blocks is a quarter of it.
pub(super) const HOLD_WHOLE_BYTES: u64 = 16 << 20;

#[cfg(test)]
thread_local! {
    /// Tests: a smaller [`HOLD_WHOLE_BYTES`] for routings loaded on this
    /// thread (a test's runtime), so a small routing is read by range.
    pub(super) static HOLD_WHOLE_LIMIT: std::cell::Cell<u64> =
        const { std::cell::Cell::new(HOLD_WHOLE_BYTES) };
}

fn hold_whole_limit() -> u64 {
    #[cfg(test)]
    return HOLD_WHOLE_LIMIT.with(|l| l.get());
    #[cfg(not(test))]
    HOLD_WHOLE_BYTES
}

/// A routing as a reader holds it.
pub(crate) struct RoutingView {
    pub key: Arc<str>,
    tag: u64,
    pub head: RoutingHead,
    /// The rotation codes are taken in (the same for every routing of
    /// these dimensions).
    pub rotation: Arc<Rotation>,
    /// Every centroid, by cluster, as a group part of them all, when the
    /// routing is small enough ([`HOLD_WHOLE_BYTES`] decoded).
    held: Option<Arc<Block>>,
}

/// A cluster a query may probe: its centroid is centroid `at` of `block`.
pub(super) struct Centroid {
    pub cluster: u32,
    block: Arc<Block>,
    at: usize,
}

impl Centroid {
    /// The centroid, as it is and rotated.
    pub(super) fn vectors(&self, d: usize) -> (&[f32], &[f32]) {
        self.block.centroid(self.at, d)
    }
}

/// A group part of `centroids` (rotating each), with its groups' rank
/// codes.
fn group_block(centroids: Vec<f32>, rotation: &Rotation, ranks: Vec<Option<RankCodes>>) -> Block {
    let mut rotated = centroids.clone();
    for c in rotated.chunks_exact_mut(rotation.dims().max(1)) {
        rotation.apply(c);
    }
    Block::Group {
        centroids,
        rotated,
        ranks,
    }
}

impl RoutingView {
    /// Fetches the routing `entry` lists for vectors of `dims`: whole
    /// while small, else its head region.
    pub(super) async fn load(
        store: &dyn ObjectStore,
        entry: &RoutingEntry,
        dims: usize,
        tally: &CacheTally,
    ) -> Result<Self, PartitionError> {
        let key = entry.key.as_str();
        let whole = u64::from(entry.clusters) * dims as u64 * 8 <= hold_whole_limit();
        let bytes = retrying(tally.deadline, StoreError::is_retryable, || async {
            if whole {
                store.get(key).await.map(|g| g.bytes)
            } else {
                store
                    .get_range(key, ByteRange::new(0, entry.head_bytes))
                    .await
            }
        })
        .await
        .map_err(|e| PartitionError::from_load(LoadError::Store(e)))?;
        let generation = entry.generation;
        let parsed = crate::cpu::run(move || {
            if whole {
                Routing::decode_listed(&bytes, generation).map(|r| {
                    let rotation = Rotation::new(r.head.dimensions);
                    let ranks = (r.head.groups.iter().enumerate())
                        .map(|(g, e)| {
                            let at = e.range();
                            r.head.group_rank_codes(g, &bytes[at.start as usize..at.end as usize])
                        })
                        .collect();
                    let held = Arc::new(group_block(r.centroids, &rotation, ranks));
                    (r.head, Some(held))
                })
            } else {
                let head = RoutingHead::parse(&bytes)?;
                if head.generation != generation {
                    return Err(crate::index::routing::RoutingError(format!(
                        "routing generation {} where the index manifest lists {generation}",
                        head.generation
                    )));
                }
                Ok((head, None))
            }
        })
        .await
        .map_err(|e| corrupt(key, format!("routing: {e}")))?;
        Ok(RoutingView {
            key: key.into(),
            tag: xxhash_rust::xxh3::xxh3_64(key.as_bytes()),
            rotation: Arc::new(Rotation::new(parsed.0.dimensions)),
            head: parsed.0,
            held: parsed.1,
        })
    }

    /// Bytes held for good.
    pub(super) fn memory_bytes(&self) -> usize {
        self.head.top.len() * 4
            + self.head.groups.len() * 40
            + self.held.as_ref().map_or(0, |b| b.memory_bytes())
    }

    /// The `take` clusters of `groups` (each with `q`'s distance from its
    /// top centroid) nearest `q` by `metric`, nearest first (ties by
    /// cluster), with their centroids. Distances are taken over the
    /// groups' blocks in place (from the `u8` codes of a snapped group,
    /// a quarter of the memory to read) and the nearest selected before
    /// sorting, so only the kept clusters become [`Centroid`]s: a wide
    /// beam costs its distances, not a sort and a handle per centroid.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn nearest_of(
        self: &Arc<Self>,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
        groups: &[(f32, u32)],
        q: &[f32],
        metric: Metric,
        take: usize,
    ) -> Result<Vec<Centroid>, PartitionError> {
        let fetched = match &self.held {
            Some(_) => HashMap::new(),
            None => {
                let parts: Vec<Part> = groups.iter().map(|&(_, g)| Part::Group(g)).collect();
                blocks.get(store, self, &parts, tally).await?
            }
        };
        // A group's part, where its centroids start in it, and which of
        // the part's groups it is.
        let block_of = |g: u32| match &self.held {
            Some(all) => (all, self.head.groups[g as usize].first as usize, g as usize),
            None => (&fetched[&Part::Group(g)], 0, 0),
        };
        let d = self.head.dimensions;
        let rq = RankQuery::new(q);
        // Bounds first, from the codes' integer products: a centroid
        // whose lower bound exceeds the `take`-th best upper bound cannot
        // be among the nearest `take` (DESIGN 12; `index::routing::rank`).
        // f32 blocks give their distance as both bounds.
        let mut kth = KthBest::new(take);
        // (lower, cluster, index in `groups`, index in the group)
        let mut by: Vec<(f32, u32, u32, u32)> = Vec::new();
        for (b, &(to_top, g)) in groups.iter().enumerate() {
            let e = &self.head.groups[g as usize];
            let (block, base, at) = block_of(g);
            let mut offer = |j: usize, lower: f32, upper: f32| {
                kth.offer(upper);
                if lower <= kth.bar() {
                    by.push((lower, e.first + j as u32, b as u32, j as u32));
                }
            };
            match block.rank_codes(at) {
                Some(codes) => codes.bounds(metric, &rq, to_top, &mut offer),
                None => (0..e.clusters as usize).for_each(|j| {
                    let dist = distance(metric, q, block.centroid(base + j, d).0);
                    offer(j, dist, dist);
                }),
            }
        }
        // The rest, exactly (a bar only falls, so what was kept early may
        // be out now; an f32 block's lower bound is its distance).
        let bar = kth.bar();
        by.retain(|e| e.0 <= bar);
        for e in &mut by {
            let (to_top, g) = groups[e.2 as usize];
            let (block, _, at) = block_of(g);
            if let Some(codes) = block.rank_codes(at) {
                e.0 = codes.distance(e.3 as usize, metric, &rq, to_top);
            }
        }
        keep_nearest(&mut by, take, |&(d, c, _, _)| (d, c));
        Ok(by
            .into_iter()
            .map(|(_, cluster, b, j)| {
                let (block, base, _) = block_of(groups[b as usize].1);
                Centroid {
                    cluster,
                    block: block.clone(),
                    at: base + j as usize,
                }
            })
            .collect())
    }

    /// Fetches every group's centroids into the cache (none when held).
    pub(super) async fn warm(
        self: &Arc<Self>,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
        budget: &mut WarmBudget,
    ) -> Result<(), PartitionError> {
        if self.held.is_none() {
            let parts = (0..self.head.groups() as u32).map(Part::Group);
            (blocks.warm(store, self, parts, budget, WarmPhase::Codes, tally)).await?;
        }
        Ok(())
    }
}

impl PartSource for RoutingView {
    fn key(&self) -> &str {
        &self.key
    }

    fn tag(&self) -> u64 {
        self.tag
    }

    fn range(&self, part: Part) -> Range<u64> {
        match part {
            Part::Group(g) => self.head.groups[g as usize].range(),
            _ => unreachable!("{part:?} is not a part of a routing"),
        }
    }

    fn parse(&self, part: Part, bytes: &[u8]) -> Result<Block, SegmentError> {
        let Part::Group(g) = part else {
            unreachable!("{part:?} is not a part of a routing")
        };
        self.head
            .group_centroids(g as usize, bytes)
            .map(|c| {
                let ranks = vec![self.head.group_rank_codes(g as usize, bytes)];
                group_block(c, &self.rotation, ranks)
            })
            .map_err(|e| SegmentError::Corrupt {
                key: self.key.to_string(),
                reason: format!("routing: {e}"),
            })
    }
}

/// A routed shard as a reader holds it.
pub(crate) struct RoutedShard {
    pub key: Arc<str>,
    tag: u64,
    pub head: RoutedHead,
    /// Its deletion vector (`None`: no row dead).
    dv: Option<DeletionVector>,
    /// Rows not marked dead (routed shards hold no tombstones).
    pub live: u64,
}

impl RoutedShard {
    /// Fetches the head region of the shard `entry` lists; `dv` is its
    /// deletion vector, read alongside.
    pub(super) async fn load(
        store: &dyn ObjectStore,
        entry: &ShardEntry,
        head_bytes: u64,
        dv: Option<DeletionVector>,
        tally: &CacheTally,
    ) -> Result<Self, PartitionError> {
        let key = entry.key.as_str();
        let region = retrying(tally.deadline, StoreError::is_retryable, || {
            store.get_range(key, ByteRange::new(0, head_bytes))
        })
        .await
        .map_err(|e| PartitionError::from_load(LoadError::Store(e)))?;
        let (k, total) = (key.to_string(), entry.bytes);
        let head = crate::cpu::run(move || RoutedHead::parse(&k, &region, total))
            .await
            .map_err(|e| PartitionError::from_load(LoadError::Segment(e)))?;
        if Some(head.generation) != entry.routing || head.rows != entry.rows {
            return Err(corrupt(
                key,
                format!(
                    "the shard holds {} rows of routing generation {}; the index manifest lists \
                     {} rows of generation {:?}",
                    head.rows, head.generation, entry.rows, entry.routing
                ),
            ));
        }
        let dead = dv.as_ref().map_or(0, DeletionVector::dead);
        Ok(RoutedShard {
            key: key.into(),
            tag: xxhash_rust::xxh3::xxh3_64(key.as_bytes()),
            live: head.rows - dead,
            head,
            dv,
        })
    }

    /// Bytes held for good: the head and the deletion vector.
    pub(super) fn memory_bytes(&self) -> usize {
        self.head.clusters.len() * 80
            + self
                .head
                .fences
                .iter()
                .map(|f| f.first.len() + 56)
                .sum::<usize>()
            + self.head.rows.div_ceil(8) as usize * usize::from(self.dv.is_some())
    }

    /// Whether shard row `row` is live (not marked dead).
    pub(super) fn is_live(&self, row: u64) -> bool {
        !self.dv.as_ref().is_some_and(|dv| dv.is_dead(row))
    }

    /// The live row holding `id`, if this shard has one: one id-index
    /// block, by the fences in the head.
    pub(super) async fn row_of(
        self: &Arc<Self>,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
        id: &str,
    ) -> Result<Option<u32>, PartitionError> {
        let Some(b) = self.head.fence_for(id) else {
            return Ok(None);
        };
        let got = blocks
            .get(store, self, &[Part::Ids(b as u32)], tally)
            .await?;
        let row = got[&Part::Ids(b as u32)].id_block().get(id);
        Ok(row.filter(|&r| self.is_live(u64::from(r))))
    }

    /// Every live id (from the whole id index, through the cache).
    pub(super) async fn live_ids(
        self: &Arc<Self>,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
    ) -> Result<Vec<String>, PartitionError> {
        let parts: Vec<Part> = (0..self.head.fences.len() as u32).map(Part::Ids).collect();
        let got = blocks.get(store, self, &parts, tally).await?;
        let mut ids = Vec::new();
        for p in &parts {
            let b = got[p].id_block();
            ids.extend(
                b.ids
                    .iter()
                    .zip(&b.rows)
                    .filter(|(_, r)| self.is_live(u64::from(**r)))
                    .map(|(id, _)| id.clone()),
            );
        }
        Ok(ids)
    }

    /// Shard row `row`'s vector and metadata (for `get`).
    pub(super) async fn row(
        self: &Arc<Self>,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
        row: u32,
    ) -> Result<(Vec<f32>, Map<String, Value>), PartitionError> {
        let (pos, i) = self.head.locate(u64::from(row));
        let (chunk, at) = row_slot(pos as u32, i as u32);
        let meta = Part::Meta(pos as u32);
        let got = blocks.get(store, self, &[chunk, meta], tally).await?;
        let d = self.head.dimensions;
        Ok((
            got[&chunk].rows()[at * d..(at + 1) * d].to_vec(),
            got[&meta].row_metadata(i as usize),
        ))
    }

    /// Fetches the clusters' probe blocks (or, for [`WarmPhase::Rows`],
    /// their metadata and row chunks) into the cache while `budget` lasts
    /// ([`Blocks::warm`]); returns how many parts.
    pub(super) async fn warm(
        self: &Arc<Self>,
        blocks: &Blocks,
        store: &Counted,
        tally: &CacheTally,
        budget: &mut WarmBudget,
        phase: WarmPhase,
    ) -> Result<u64, PartitionError> {
        let rows = self.head.clusters.iter().map(|c| u64::from(c.rows));
        let parts = warm_parts(phase, Part::Probe, rows);
        blocks.warm(store, self, parts, budget, phase, tally).await
    }
}

/// The row chunk holding row `i` of cluster `pos`, and the row's place
/// in it.
pub(super) fn row_slot(pos: u32, i: u32) -> (Part, usize) {
    let chunk = i / ROW_CHUNK as u32;
    (
        Part::Rows { list: pos, chunk },
        (i % ROW_CHUNK as u32) as usize,
    )
}

impl PartSource for RoutedShard {
    fn key(&self) -> &str {
        &self.key
    }

    fn tag(&self) -> u64 {
        self.tag
    }

    fn range(&self, part: Part) -> Range<u64> {
        let h = &self.head;
        match part {
            Part::Probe(i) => h.probe_range(i as usize),
            Part::Meta(i) => h.clusters[i as usize].metadata.range(),
            Part::Rows { list, chunk } => {
                let (first, count) = chunk_of(u64::from(h.clusters[list as usize].rows), chunk);
                h.rows_range(list as usize, first, count)
            }
            Part::Ids(b) => h.fences[b as usize].block.range(),
            Part::ClusterIds(i) => h.clusters[i as usize].ids.range(),
            Part::Terms { field, block } => h.text[field as usize].blocks[block as usize]
                .block
                .range(),
            _ => unreachable!("{part:?} is not a part of a routed shard"),
        }
    }

    fn parse(&self, part: Part, bytes: &[u8]) -> Result<Block, SegmentError> {
        let (key, h) = (&*self.key, &self.head);
        Ok(match part {
            Part::Probe(i) => {
                let i = i as usize;
                let (codes, ids) = h.open_probe(key, i, bytes)?;
                let c = &h.clusters[i];
                if ids.tombstones.iter().any(|t| *t) {
                    return Err(SegmentError::Corrupt {
                        key: key.to_string(),
                        reason: format!(
                            "cluster {} holds a tombstone; routed shards hold live rows only",
                            c.cluster
                        ),
                    });
                }
                let codes =
                    ListCodes::from_bytes(codes, h.dimensions, c.rows as usize, h.code_bits)
                        .map_err(|r| SegmentError::Corrupt {
                            key: key.to_string(),
                            reason: format!("codes of cluster {}: {r}", c.cluster),
                        })?;
                Block::Probe {
                    codes: Box::new(codes),
                    ids: PackedIds::new(&ids.ids),
                }
            }
            Part::Meta(i) => {
                let (offsets, bytes) = h.cluster_metadata(key, i as usize, bytes)?;
                Block::meta(offsets, bytes)
            }
            Part::Rows { list, chunk } => {
                let (first, _) = chunk_of(u64::from(h.clusters[list as usize].rows), chunk);
                Block::Rows(h.cluster_rows(key, list as usize, first, bytes)?)
            }
            Part::Ids(b) => Block::Ids(h.id_block(key, b as usize, bytes)?),
            Part::ClusterIds(i) => {
                Block::ClusterIds(PackedIds::new(&h.cluster_ids(key, i as usize, bytes)?.ids))
            }
            Part::Terms { field, block } => {
                Block::Terms(h.term_block(key, field as usize, block as usize, bytes)?)
            }
            _ => unreachable!("{part:?} is not a part of a routed shard"),
        })
    }
}

pub(super) fn corrupt(key: &str, reason: String) -> PartitionError {
    PartitionError::from_load(LoadError::Segment(SegmentError::Corrupt {
        key: key.to_string(),
        reason,
    }))
}

#[cfg(test)]
mod tests;
